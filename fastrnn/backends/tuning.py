"""Every tuning threshold of the CPU side, in one place.

Each knob says what it switches and how its value was chosen. The NumbaBackend knobs are read
per call from the backend instance (``NumbaBackend`` copies them as class attributes, so a test
or a user can override one on an instance); the packing threshold is read per call from this
module; ``KC`` is a compile-time constant of the Numba kernels (after changing it, clear the
Numba cache: the __pycache__ folders of backends/numba_cpu).

Thread split of the Numba recurrence. Split by rows, every thread streams all of W_hh through
its cache each step for its own rows, with no barrier between steps; split by units, a thread
streams half of W_hh for all rows, and the threads meet at a barrier every step. Measured on an
AMD EPYC with 1 MB of L2 cache per core, 2 threads (ms, forward, rows vs units): LSTM (T, B, I,
H) = (50, 4, 1024, 1024) 57 vs 33, (50, 8, 512, 512) 11.8 vs 12.1, (100, 32, 256, 256) 21.9 vs
23.0; training, (100, 32, 256, 256) 96 vs 108 and (100, 64, 512, 512) 500 vs 526; at (50, 64,
1024, 1024) either way within the noise (LSTM training 1095 vs 1074, GRU inference 311 vs 292).
"""

# Where no measurement is quoted, the value was set by hand from the reason given and no
# measurement of it was kept: a candidate for `fastrnn bench`.

# A call uses several threads when its recurrent products have at least this many
# multiply-adds in all (T*B*G*H*H): below it, starting the threads costs more than they save.
parallel_min_work = 1 << 20

# With row groups, at least this many batch rows per thread.
parallel_min_rows = 1

# The threads split the hidden units when one step's product has at least this many
# multiply-adds (B*G*H*H): from the measurements above, units win only once W_hh no longer fits
# a core's cache together with the rows' work (the (50, 4, 1024, 1024) case, 57 vs 33 ms).
unit_split_min = 1 << 27

# ... or at least this many when the batch has fewer than ``few_rows`` rows per thread: with
# few rows a thread's product is too narrow to hide the stream of W_hh, so units win earlier.
few_rows_unit_split_min = 1 << 23
few_rows = 4

# The GEMMs above the recurrence (input projection, dx, dW) run on the Numba threads, each
# calling single-threaded BLAS on a block of rows, from this many multiply-adds; below it one
# plain call is faster than starting the threads.
matmul_min_work = 1 << 21

# The recurrent products read W_hh as it is, unpacked (numba_cpu/direct.py), when a block of
# the call's plan runs at most this many rows in all (T times its batch rows): packing costs a
# pass over W_hh per call, which only pays when the packed panels serve many rows.
direct_max_rows = 4

# The decoding step of a batch whose state has at least this many elements (B*H) runs as a
# forward of one step per layer (the input GEMM and the packed recurrent product on the
# threads) instead of the one-call serial step kernel (step.py), whose per-row products read W
# as it is. `python benchmarks/step.py --rows` (kernel / forward-path time, 2 threads, float32,
# I = H/2): LSTM H = 64: B = 64 0.87, 128 1.30; H = 256: B = 16 0.94, 32 1.33; GRU H = 64:
# B = 64 0.80, 128 1.02; H = 256: B = 16 0.58, 32 0.81, 64 1.57. The crossing sits near
# B*H = 6-10 thousand for both sizes: the kernel's time grows with B*H^2, the forward path's
# fixed cost (packing W_hh, the threads) with H^2.
step_forward_min_state = 8192

# Above this many elements of W_hh (a 256 x 256 matrix), the threads share the packing of the
# panels; below it the packing takes less than starting them.
PACK_PARALLEL_MIN = 1 << 16

# Depth of the slices of a panel that the packed gemm runs through all rows before the next
# slice: KC * NR elements are 32 KB (NR = 4 vectors of 64 bytes), which stay in the L1 cache
# while every row group reads them.
KC = 128

# Fused backends project the input of an inference in chunks of time steps above this many
# elements (T*B*D*G*H), so memory does not grow with T beyond the output (4 Mi elements: 16 MB
# in float32, while the chunks stay few).
chunk_elements = 1 << 22

# The CUDA backend runs each direction's time loop as a CUDA Graph, captured once per shape and
# replayed (cupy_cuda/graphs.py), instead of launching one or more kernels and GEMMs per step,
# whose launch cost (a few microseconds each) exceeds the work of a small batch. Off: the graph
# path is validated only on the CPU emulation of the device and has never been timed on a GPU;
# until it has (`fastrnn bench` on a GPU, with and without), the per-step launches stay the
# default. CupyBackend copies both knobs as class attributes (set them on an instance).
cuda_graphs = False

# At most this many captured loops per backend (each direction, forward and backward, and each
# shape is one), the least recently used dropped first: an entry keeps device buffers of the
# size of its call's inputs and saved state.
cuda_graph_cache = 8

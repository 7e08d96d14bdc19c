// Device helpers shared by rnn.cu, lstm.cu and gru.cu: the activations, the unit a thread owns
// and its length mask, and the steps every cell takes around its own math (reading the gate
// inputs, keeping the gates, writing the masked state and output, and the gradient that enters
// a backward step). A cell's .cu file then holds only its equations.
//
// Every kernel of fastrnn but the layer-normalised ones runs one thread per (batch row b, hidden
// unit j) of one time step: the thread reads the gate pre-activations of its unit, writes its
// unit's outputs and touches no other thread's data. No shared memory, no warp shuffles, no
// atomics, so the kernels give the same result in any thread order (the CPU emulation in
// tests/cuda_emulation runs them one thread at a time). The layer-normalised kernels run one
// block per batch row: their threads share the row's sums through `block_sum` (shared memory
// and barriers, in a fixed order, so the result still does not depend on the thread order).
//
// This file includes nothing: NVRTC (through cupy.RawModule) compiles without host headers, and
// its math functions (expf, exp, tanhf, tanh, sqrtf, sqrt) are built in. The loader pastes this
// file in place of its #include line, so the code CuPy hashes for its kernel cache is the whole
// source.

#ifndef FASTRNN_COMMON_CUH
#define FASTRNN_COMMON_CUH

namespace fastrnn {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }

// sigmoid(x) = 1 / (1 + exp(-x)), evaluated through exp(-|x|) <= 1 so it never overflows.
// A NaN input gives NaN.
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  const T e = exp_(x >= T(0) ? -x : x);
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

// relu keeps a NaN input (NaN < 0 is false).
template <typename T>
__device__ __forceinline__ T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// Derivatives written from the activation's output y, which is what the forward keeps.
template <typename T>
__device__ __forceinline__ T d_sigmoid(T y) {
  return y * (T(1) - y);
}

template <typename T>
__device__ __forceinline__ T d_tanh(T y) {
  return T(1) - y * y;
}

template <typename T>
__device__ __forceinline__ T d_relu(T y) {
  return y > T(0) ? T(1) : T(0);
}

// Step t of sequence b is valid when t < lengths[b]; lengths == nullptr means every step is.
__device__ __forceinline__ bool valid_step(const long long* lengths, int b, int t) {
  return lengths == nullptr || t < lengths[b];
}

// The unit one thread owns in a launch over the B*H units of step t. Gate block k of a
// [B, ld] matrix holds unit j of gate k at column k*H + j, so at(a, ld)[k * H] is this unit's
// element of gate k.
struct Unit {
  int b, j;     // batch row and hidden unit
  int H;        // hidden units, the width of a gate block
  long long u;  // offset of (b, j) in a dense [B, H] matrix
  bool valid;   // step t lies within sequence b (valid_step)

  template <typename P>
  __device__ __forceinline__ P* at(P* a, int ld) const {
    return a + (long long)b * ld + j;
  }
};

// Fills `me` for this thread and returns true; false for the threads past the end of the last
// block, which own no unit. Kernels that apply no mask pass lengths = nullptr.
__device__ __forceinline__ bool unit_of_thread(int B, int H, const long long* lengths, int t,
                                               Unit& me) {
  const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (long long)B * H) return false;
  me.b = (int)(k / H);
  me.j = (int)(k - (long long)me.b * H);
  me.H = H;
  me.u = k;  // == b * H + j
  me.valid = valid_step(lengths, me.b, t);
  return true;
}

// This unit's inputs to its gates in a forward step: gate k's pre-activation is
// input(k) + recurrent(k), the column k*H + j of x_proj (W_ih x_t + b_ih) plus that of the
// recurrent GEMM (W_hh h_prev) and of b_hh, summed in this order.
template <typename T>
struct GateInputs {
  const T* x;     // x_proj at (b, j)
  const T* h;     // the recurrent GEMM's output at (b, j)
  const T* bias;  // b_hh at j
  int H;

  __device__ __forceinline__ T input(int k) const { return x[k * H]; }
  __device__ __forceinline__ T recurrent(int k) const { return h[k * H] + bias[k * H]; }
  __device__ __forceinline__ T pre(int k) const { return input(k) + recurrent(k); }
};

// x_proj is [B, ld_x]; gh is [B, ld_h], ld_h = H times the gates it holds; b_hh holds at
// least ld_h elements.
template <typename T>
__device__ __forceinline__ GateInputs<T> gate_inputs(const Unit& me, const T* x_proj, int ld_x,
                                                     const T* gh, int ld_h, const T* b_hh) {
  return GateInputs<T>{me.at(x_proj, ld_x), me.at(gh, ld_h), b_hh + me.j, me.H};
}

// What a training forward keeps of a step: the activated gates v..., in order, into the
// [B, (number of gates) * H] matrix gates; nothing in inference (gates == nullptr).
template <typename T, typename... V>
__device__ __forceinline__ void keep_gates(const Unit& me, T* gates, V... v) {
  if (gates == nullptr) return;
  T* s = me.at(gates, (int)sizeof...(V) * me.H);
  int k = 0;
  ((s[k++ * me.H] = v), ...);
}

// End of a forward step for the state h: an invalid step keeps the entering state and outputs
// 0 (fastrnn/cells.py, lengths). h_next and h_prev are [B, H]; y is [B, ld_y]. With zoneout
// (cells.Variant.zoneout), `zoneout` is M of step t, [B, ld_z] (nullptr without): the state
// and output become h_prev + M (h - h_prev), M 0 or 1 in training, 1 - p in evaluation.
template <typename T>
__device__ __forceinline__ void leave_step(const Unit& me, T h, const T* h_prev, T* h_next,
                                           T* y, int ld_y, const T* zoneout, int ld_z) {
  const T kept = h_prev[me.u];
  if (zoneout != nullptr) h = kept + *me.at(zoneout, ld_z) * (h - kept);
  h_next[me.u] = me.valid ? h : kept;
  *me.at(y, ld_y) = me.valid ? h : T(0);
}

// The clip of a gate's input to [-bound, bound] (cells.Variant.clip), a compile-time switch:
// Clamp<T, false> leaves every value as it is and keeps nothing. A training forward keeps one
// byte per gate input, 1 where it lay within the bounds (the clamp's derivative), in `inside`,
// this unit's element of a [B, G*H] uint8 matrix (nullptr in inference and in backward, which
// reads the bytes through Unclamp). A NaN input stays NaN and counts as outside.
template <typename T, bool Clip>
struct Clamp {
  T bound;
  unsigned char* inside;  // at (b, j) of [B, G*H], or nullptr
  int H;

  __device__ __forceinline__ T operator()(T a, int k) const {
    if (!Clip) return a;
    if (inside != nullptr) inside[k * H] = (-bound <= a && a <= bound) ? 1 : 0;
    return a < -bound ? -bound : (a > bound ? bound : a);
  }
};

template <typename T, bool Clip>
__device__ __forceinline__ Clamp<T, Clip> clamp_of(const Unit& me, T bound,
                                                   unsigned char* inside, int gates) {
  return Clamp<T, Clip>{bound, inside == nullptr ? nullptr : me.at(inside, gates * me.H), me.H};
}

// Backward of Clamp: the gradient of gate k's input times the kept byte (a product, not a
// select, so that a NaN gradient stays NaN).
template <typename T, bool Clip>
struct Unclamp {
  const unsigned char* inside;  // at (b, j) of [B, G*H]
  int H;

  __device__ __forceinline__ T operator()(T d, int k) const {
    if (!Clip) return d;
    return d * (inside[k * H] ? T(1) : T(0));
  }
};

template <typename T, bool Clip>
__device__ __forceinline__ Unclamp<T, Clip> unclamp_of(const Unit& me,
                                                       const unsigned char* inside, int gates) {
  return Unclamp<T, Clip>{Clip ? me.at(inside, gates * me.H) : nullptr, me.H};
}

// The sum of v over the threads of the block, returned to every thread: a tree over shared
// memory, the pairs summed in a fixed order. Every thread of the block must call it (barriers).
// blockDim.x <= 1024.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[1024];
  const int me = threadIdx.x, n = blockDim.x;
  partial[me] = v;
  __syncthreads();
  for (int stride = 1; stride < n; stride *= 2) {
    if (me % (2 * stride) == 0 && me + stride < n) partial[me] += partial[me + stride];
    __syncthreads();
  }
  const T total = partial[0];
  __syncthreads();  // every thread has read it before the next call writes partial
  return total;
}

// Layer norm of the row v[0, n) (cells.LN_EPS as eps) in place, by the block that owns the row:
// v becomes (v - mean) * inv_std. Returns inv_std = 1 / sqrt(var + eps).
template <typename T>
__device__ __forceinline__ T normalise_row(T* v, int n, T eps) {
  T s = T(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) s += v[k];
  const T mean = block_sum(s) / T(n);
  T q = T(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) q += (v[k] - mean) * (v[k] - mean);
  const T inv_std = T(1) / sqrt_(block_sum(q) / T(n) + eps);
  for (int k = threadIdx.x; k < n; k += blockDim.x) v[k] = (v[k] - mean) * inv_std;
  __syncthreads();  // the row is read across threads next
  return inv_std;
}

// The unit (b, j) of a kernel that runs one block per row b, its threads stepping over j.
__device__ __forceinline__ Unit unit_of_row(int b, int j, int H, bool valid) {
  return Unit{b, j, H, (long long)b * H + j, valid};
}

// Start of a backward step: the gradient reaching the state that leaves step t. Besides dy it
// has two parts, dh_carry (what bypassed W_hh: all of it after an invalid step, dh z for the
// GRU) and dh_rec (the recurrent GEMM's output), both [B, H].
// An invalid step passed its entering state through unchanged, so that gradient carries on
// whole into dh_carry; the step's gate gradients, gate blocks [first, first + count) of d_gx
// ([B, ld_g]), are zero. Returns false then. A valid step adds dy ([B, ld_dy]) and returns true
// with the sum in dh; the kernel then writes the gate gradients and the new carry, which starts
// from `kept`. With zoneout (M of step t in `zoneout`, [B, ld_z], nullptr without) the cell's
// new state gets dh = M times the sum, and kept = (1 - M) times it goes straight to h_prev;
// without, kept = 0. dh_carry and dh_rec are nullptr where dy is the whole gradient (the LSTM's
// behind its projection, which lstm_projection_backward started), d_gx where count is 0.
template <typename T>
__device__ __forceinline__ bool gradient_leaving(const Unit& me, const T* dy, int ld_dy,
                                                 const T* dh_rec, T* dh_carry, T* d_gx, int ld_g,
                                                 int first, int count, const T* zoneout,
                                                 int ld_z, T& dh, T& kept) {
  const T dh_out = dh_carry == nullptr ? T(0) : dh_carry[me.u] + dh_rec[me.u];
  if (!me.valid) {
    for (int k = first; k < first + count; ++k) me.at(d_gx, ld_g)[k * me.H] = T(0);
    if (dh_carry != nullptr) dh_carry[me.u] = dh_out;
    return false;
  }
  dh = dh_out + *me.at(dy, ld_dy);
  kept = T(0);
  if (zoneout != nullptr) {
    const T m = *me.at(zoneout, ld_z);
    kept = (T(1) - m) * dh;
    dh = m * dh;
  }
  return true;
}

}  // namespace fastrnn

#endif  // FASTRNN_COMMON_CUH

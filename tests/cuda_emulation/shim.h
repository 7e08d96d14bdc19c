// What CUDA C++ gives a kernel source, for the host C++ compiler: the execution-space
// keywords, the built-in index variables and the math functions fastrnn's kernels call.
// Included before kernels/*.cu to run them on the CPU, one thread at a time (launch.h).
#ifndef FASTRNN_CUDA_SHIM_H
#define FASTRNN_CUDA_SHIM_H

#include <math.h>  // expf, exp, tanhf, tanh, sqrtf, sqrt: the device math functions' names
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// A block's threads run as fibers of one host thread (launch.h), so a static variable of that
// host thread is what the block shares.
#define __shared__ static thread_local
// __restrict__ is a GNU C++ keyword already.

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

// Set by the launcher (launch.h) before it runs each thread; one set per host thread, so
// launches from several host threads at once (ctypes releases the GIL) do not interfere.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// The fibers of the block being run (launch.h): __syncthreads() hands control back to the
// scheduler, which resumes every thread of the block once all have reached the barrier.
struct BlockFibers {
  ucontext_t scheduler;
  ucontext_t* threads;  // one context per thread of the block
  int* at_barrier;      // per thread: 0 running, 1 waiting at a barrier, 2 returned
  int current;
};
inline thread_local BlockFibers* block_fibers = nullptr;

inline void __syncthreads() {
  BlockFibers& f = *block_fibers;
  f.at_barrier[f.current] = 1;
  swapcontext(&f.threads[f.current], &f.scheduler);
}

#endif  // FASTRNN_CUDA_SHIM_H

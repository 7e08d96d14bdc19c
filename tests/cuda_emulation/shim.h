// What CUDA C++ gives a kernel source, for the host C++ compiler: the execution-space
// keywords, the built-in index variables and the math functions fastrnn's kernels call.
// Included before kernels/*.cu to run them on the CPU, one thread at a time (launch.h).
#ifndef FASTRNN_CUDA_SHIM_H
#define FASTRNN_CUDA_SHIM_H

#include <math.h>  // expf, exp, tanhf, tanh: the device math functions have the same names

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
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

#endif  // FASTRNN_CUDA_SHIM_H

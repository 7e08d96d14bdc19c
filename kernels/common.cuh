// Device helpers shared by rnn.cu, lstm.cu and gru.cu.
//
// Every kernel of fastrnn runs one thread per (batch row b, hidden unit j) of one time step: the
// thread reads the gate pre-activations of its unit, writes its unit's outputs and touches no
// other thread's data. No shared memory, no warp shuffles, no atomics, so the kernels give the
// same result in any thread order (the CPU emulation in tests/cuda_emulation runs them serially).
//
// This file includes nothing: NVRTC (through cupy.RawModule) compiles without host headers, and
// its math functions (expf, exp, tanhf, tanh) are built in. The loader pastes this file in place
// of its #include line, so the code CuPy hashes for its kernel cache is the whole source.

#ifndef FASTRNN_COMMON_CUH
#define FASTRNN_COMMON_CUH

namespace fastrnn {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

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

// The (b, j) this thread owns in a launch over B*H elements; false for the threads past the end
// of the last block.
__device__ __forceinline__ bool unit_of_thread(int B, int H, int& b, int& j) {
  const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (long long)B * H) return false;
  b = (int)(k / H);
  j = (int)(k - (long long)b * H);
  return true;
}

// Step t of sequence b is valid when t < lengths[b]; lengths == nullptr means every step is.
__device__ __forceinline__ bool valid_step(const long long* lengths, int b, int t) {
  return lengths == nullptr || t < lengths[b];
}

// Offset of row b in a matrix whose rows are ld elements apart (ld >= the row's width).
__device__ __forceinline__ long long row(int b, int ld) { return (long long)b * ld; }

}  // namespace fastrnn

#endif  // FASTRNN_COMMON_CUH

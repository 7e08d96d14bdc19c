// Host side of the emulation: run a kernel over its grid one thread at a time, with its
// arguments given as cudaLaunchKernel takes them (an array of pointers to each argument's value),
// and describe its parameter types so the Python stand-in can check what it passes.
#ifndef FASTRNN_CUDA_LAUNCH_H
#define FASTRNN_CUDA_LAUNCH_H

#include <stddef.h>

#include <type_traits>
#include <utility>

#include "shim.h"

// One parameter: kind 'p' (pointer) or 's' (scalar by value); element 'f' (floating point),
// 'i' (signed integer) or 'u' (unsigned); size of the scalar or of the pointed-to element;
// writable 1 for a pointer to non-const.
struct ArgSpec {
  char kind;
  char element;
  int size;
  int writable;
};

template <typename E>
constexpr char element_kind() {
  return std::is_floating_point<E>::value ? 'f' : (std::is_signed<E>::value ? 'i' : 'u');
}

template <typename A>
constexpr ArgSpec arg_spec() {
  if constexpr (std::is_pointer<A>::value) {
    using P = std::remove_pointer_t<A>;
    using E = std::remove_cv_t<P>;
    return ArgSpec{'p', element_kind<E>(), (int)sizeof(E), std::is_const<P>::value ? 0 : 1};
  } else {
    return ArgSpec{'s', element_kind<A>(), (int)sizeof(A), 0};
  }
}

template <typename... A, size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

// Every block in turn, every thread of it in turn; reverse = 1 runs both in the opposite order,
// which must give the same result for kernels whose threads do not interact.
template <typename... A>
void run_grid(void (*kernel)(A...), const unsigned* g, const unsigned* b, void** args,
              int reverse) {
  gridDim = dim3{g[0], g[1], g[2]};
  blockDim = dim3{b[0], b[1], b[2]};
  const unsigned long long blocks = 1ull * g[0] * g[1] * g[2];
  const unsigned long long threads = 1ull * b[0] * b[1] * b[2];
  for (unsigned long long nb = 0; nb < blocks; ++nb) {
    const unsigned long long kb = reverse ? blocks - 1 - nb : nb;
    blockIdx = uint3{(unsigned)(kb % g[0]), (unsigned)(kb / g[0] % g[1]),
                     (unsigned)(kb / g[0] / g[1])};
    for (unsigned long long nt = 0; nt < threads; ++nt) {
      const unsigned long long kt = reverse ? threads - 1 - nt : nt;
      threadIdx = uint3{(unsigned)(kt % b[0]), (unsigned)(kt / b[0] % b[1]),
                        (unsigned)(kt / b[0] / b[1])};
      call_with(kernel, args, std::index_sequence_for<A...>{});
    }
  }
}

template <typename... A>
int describe(void (*)(A...), ArgSpec* out, int capacity) {
  const ArgSpec specs[] = {arg_spec<A>()..., ArgSpec{0, 0, 0, 0}};
  const int n = (int)sizeof...(A);
  for (int i = 0; i < n && i < capacity; ++i) out[i] = specs[i];
  return n;
}

// One instantiation, as the generated table lists it.
struct Entry {
  const char* name;
  void (*run)(const unsigned*, const unsigned*, void**, int);
  int (*describe)(ArgSpec*, int);
};

template <auto K>
void run_entry(const unsigned* g, const unsigned* b, void** args, int reverse) {
  run_grid(K, g, b, args, reverse);
}

template <auto K>
int describe_entry(ArgSpec* out, int capacity) {
  return describe(K, out, capacity);
}

#endif  // FASTRNN_CUDA_LAUNCH_H

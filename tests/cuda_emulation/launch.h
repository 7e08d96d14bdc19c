// Host side of the emulation: run a kernel over its grid one block at a time, with its
// arguments given as cudaLaunchKernel takes them (an array of pointers to each argument's value),
// and describe its parameter types so the Python stand-in can check what it passes.
//
// A block's threads run as fibers (ucontext) of the host thread, one at a time: each runs until
// it returns or reaches __syncthreads() (shim.h), and once every thread of the block waits at
// the barrier they all go on. A block where some threads return while others wait at a barrier
// is an error (CUDA leaves it undefined), and the launch aborts.
#ifndef FASTRNN_CUDA_LAUNCH_H
#define FASTRNN_CUDA_LAUNCH_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <type_traits>
#include <utility>
#include <vector>

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

// The call every fiber of a launch makes, and its entry function.
template <typename... A>
struct Call {
  void (*kernel)(A...);
  void** args;
  static void run(void* self) {
    const Call& c = *static_cast<const Call*>(self);
    call_with(c.kernel, c.args, std::index_sequence_for<A...>{});
  }
};

inline thread_local void (*fiber_call)(void*) = nullptr;
inline thread_local void* fiber_data = nullptr;

inline void fiber_entry() {
  fiber_call(fiber_data);
  block_fibers->at_barrier[block_fibers->current] = 2;
}  // returning resumes uc_link, the scheduler

constexpr size_t kFiberStack = 64 * 1024;

// Every block in turn, every thread of it in turn up to the next barrier; reverse = 1 runs both
// in the opposite order, which must give the same result (the threads of fastrnn's kernels
// share nothing, or only through barriers).
template <typename... A>
void run_grid(void (*kernel)(A...), const unsigned* g, const unsigned* b, void** args,
              int reverse) {
  gridDim = dim3{g[0], g[1], g[2]};
  blockDim = dim3{b[0], b[1], b[2]};
  const unsigned long long blocks = 1ull * g[0] * g[1] * g[2];
  const unsigned long long threads = 1ull * b[0] * b[1] * b[2];
  Call<A...> call{kernel, args};
  fiber_call = &Call<A...>::run;
  fiber_data = &call;
  static thread_local std::vector<ucontext_t> contexts;
  static thread_local std::vector<int> state;
  static thread_local std::vector<char> stacks;
  contexts.resize(threads);
  state.resize(threads);
  stacks.resize(threads * kFiberStack);
  BlockFibers fibers{};
  fibers.threads = contexts.data();
  fibers.at_barrier = state.data();
  block_fibers = &fibers;
  for (unsigned long long nb = 0; nb < blocks; ++nb) {
    const unsigned long long kb = reverse ? blocks - 1 - nb : nb;
    blockIdx = uint3{(unsigned)(kb % g[0]), (unsigned)(kb / g[0] % g[1]),
                     (unsigned)(kb / g[0] / g[1])};
    for (unsigned long long kt = 0; kt < threads; ++kt) {
      getcontext(&contexts[kt]);
      contexts[kt].uc_stack.ss_sp = &stacks[kt * kFiberStack];
      contexts[kt].uc_stack.ss_size = kFiberStack;
      contexts[kt].uc_link = &fibers.scheduler;
      makecontext(&contexts[kt], fiber_entry, 0);
      state[kt] = 0;
    }
    for (;;) {
      for (unsigned long long nt = 0; nt < threads; ++nt) {
        const unsigned long long kt = reverse ? threads - 1 - nt : nt;
        if (state[kt] != 0) continue;
        fibers.current = (int)kt;
        threadIdx = uint3{(unsigned)(kt % b[0]), (unsigned)(kt / b[0] % b[1]),
                          (unsigned)(kt / b[0] / b[1])};
        swapcontext(&fibers.scheduler, &contexts[kt]);
      }
      unsigned long long waiting = 0, returned = 0;
      for (unsigned long long kt = 0; kt < threads; ++kt) {
        waiting += state[kt] == 1;
        returned += state[kt] == 2;
      }
      if (returned == threads) break;
      if (waiting != threads) {
        fprintf(stderr, "emulated launch: %llu threads of a block wait at a barrier that %llu "
                "others returned without reaching\n", waiting, returned);
        abort();
      }
      for (unsigned long long kt = 0; kt < threads; ++kt) state[kt] = 0;
    }
  }
  block_fibers = nullptr;
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

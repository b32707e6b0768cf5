// OpenMP helpers shared by the kernel sources (compiled into each ISA variant's namespace).
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstdlib>

namespace bertrt::cpu::BERTRT_NS {

// Threads worth starting for `work` units of roughly `grain` cost each: small calls stay serial,
// so a few-token request does not pay the fork/join of a parallel region.
inline int threads_for(int64_t work, int64_t grain, int requested) {
  int64_t useful = work / (grain > 0 ? grain : 1);
  if (useful < 1) useful = 1;
  return int(useful < requested ? useful : requested);
}

// 64-byte aligned scratch, freed by the owner; plain C allocation (see the ODR note in simd.h).
inline float* alloc_floats(int64_t n) {
  size_t bytes = (size_t(n) * sizeof(float) + 63) & ~size_t(63);
  return static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
}

// A buffer that grows and is kept across calls: declared thread_local at each use, so every thread
// (the caller, each OpenMP worker) reuses its own. Scratch taken afresh on every call is faulted in
// again whenever glibc has returned it to the system (mmap, heap trimming; see
// bertrt.runtime.memory for torch's own tensors), page by page.
struct Scratch {
  void* data = nullptr;
  size_t capacity = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data); }
  // >= bytes, 64-byte aligned; the contents of an earlier get are not kept
  template <class T = unsigned char>
  T* get(size_t bytes) {
    if (bytes > capacity) {
      std::free(data);
      capacity = (bytes + 63) & ~size_t(63);
      data = std::aligned_alloc(64, capacity);
    }
    return static_cast<T*>(data);
  }
};

}  // namespace bertrt::cpu::BERTRT_NS

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

}  // namespace bertrt::cpu::BERTRT_NS

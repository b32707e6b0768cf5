// LayerNorm of one fp32 row held in scratch (L1-resident), written out in the storage type.
// Statistics in fp32: the mean first, then the centred variance (two cheap passes over scratch;
// the caller made the one pass over memory that filled it). beta may be null (bias-free LayerNorm).
#pragma once

#include "simd.h"

namespace bertrt::cpu::BERTRT_NS {

template <class T, class P>
BERTRT_INLINE void normalize_row(const float* y, float row_sum, int64_t hidden, const P* weight,
                                 const P* beta, float eps, T* out) {
  // Corrected two-pass (Chan, Golub, LeVeque): sum the deviations from the first-pass mean too, so a
  // mean that is large next to the spread loses nothing to the rounding of the first sum.
  const float mean0 = row_sum / float(hidden);
  const Vec vmean0 = vset1(mean0);
  Vec sq0 = vzero(), sq1 = vzero(), dev0 = vzero(), dev1 = vzero();
  int64_t c = 0;
  for (; c + 2 * W <= hidden; c += 2 * W) {
    Vec d0 = vsub(vload(y + c), vmean0), d1 = vsub(vload(y + c + W), vmean0);
    dev0 = vadd(dev0, d0);
    dev1 = vadd(dev1, d1);
    sq0 = vfmadd(d0, d0, sq0);
    sq1 = vfmadd(d1, d1, sq1);
  }
  float sq = vreduce_add(vadd(sq0, sq1)), dev = vreduce_add(vadd(dev0, dev1));
  for (; c < hidden; ++c) {
    const float d = y[c] - mean0;
    dev += d;
    sq += d * d;
  }
  const float shift = dev / float(hidden);
  const float mean = mean0 + shift;
  float var = sq / float(hidden) - shift * shift;
  var = var > 0.0f ? var : 0.0f;
  const Vec vmean = vset1(mean);
  const float rstd = 1.0f / __builtin_sqrtf(var + eps);
  const Vec vrstd = vset1(rstd);
  c = 0;
  for (; c + W <= hidden; c += W) {
    Vec n = vmul(vsub(vload(y + c), vmean), vrstd);
    vstore(out + c, beta ? vfmadd(n, vload(weight + c), vload(beta + c)) : vmul(n, vload(weight + c)));
  }
  if (c < hidden) {
    const int64_t rest = hidden - c;
    Vec n = vmul(vsub(vload_partial(y + c, rest), vmean), vrstd);
    Vec w = vload_partial(weight + c, rest);
    vstore_partial(out + c, beta ? vfmadd(n, w, vload_partial(beta + c, rest)) : vmul(n, w), rest);
  }
}

}  // namespace bertrt::cpu::BERTRT_NS

// One SIMD vocabulary for the kernels, compiled once per ISA variant.
//
// Every kernel source (attention.cpp, bias_gelu.cpp, ...) is built three times: with
// BERTRT_ISA_SCALAR (no extra flags, runs on any x86-64), BERTRT_ISA_AVX2 (-mavx2 -mfma -mf16c)
// and BERTRT_ISA_AVX512 (-mavx512f/bw/vl/dq ...). This header picks the register type `Vec` for
// the variant and opens the matching namespace (bertrt::cpu::scalar / avx2 / avx512).
//
// ODR hazard: an inline function or template instantiated in two variants is one weak symbol, and
// the linker keeps one copy, possibly the AVX-512 one, for every caller. So these sources use no
// standard-library templates and keep every helper inside the variant's namespace.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(BERTRT_ISA_AMX) && defined(BERTRT_AMX_EMULATE)  // amx_emulation_test.cpp: scalar lanes
#define BERTRT_NS amx
#elif defined(BERTRT_ISA_AMX)  // AVX-512 registers, own namespace (attention_amx.cpp)
#include <immintrin.h>
#define BERTRT_NS amx
#define BERTRT_VEC512 1
#elif defined(BERTRT_ISA_AVX512)
#include <immintrin.h>
#define BERTRT_NS avx512
#define BERTRT_VEC512 1
#elif defined(BERTRT_ISA_AVX2)
#include <immintrin.h>
#define BERTRT_NS avx2
#elif defined(BERTRT_ISA_SCALAR)
#define BERTRT_NS scalar
#else
#error "define one of BERTRT_ISA_SCALAR, BERTRT_ISA_AVX2, BERTRT_ISA_AVX512, BERTRT_ISA_AMX"
#endif

#define BERTRT_INLINE inline __attribute__((always_inline))

namespace bertrt::cpu::BERTRT_NS {

// ---- storage element types -------------------------------------------------------------------
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

BERTRT_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
BERTRT_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

BERTRT_INLINE float to_float(float x) { return x; }
BERTRT_INLINE float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
BERTRT_INLINE float to_float(f16 h) {
  // IEEE half -> float, subnormals included (scalar path; vector paths use F16C).
  uint32_t sign = uint32_t(h.bits & 0x8000) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float f = float(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

BERTRT_INLINE uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                 // round to nearest even
}

BERTRT_INLINE uint16_t float_to_f16_bits(float f) {
  // float -> IEEE half, round to nearest even, overflow to inf, subnormals included.
  uint32_t u = float_to_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                  // below 2^-14: subnormal half
    // value * 2^24 rounded to an integer, nearest even (the FPU does it in the current mode).
    float scaled = bits_to_float(a) * 16777216.0f;
    float r = __builtin_rintf(scaled);
    return uint16_t(sign | uint32_t(r));
  }
  uint32_t m = a + 0xfffu + ((a >> 13) & 1u);
  return uint16_t(sign | ((m - 0x38000000u) >> 13));
}

BERTRT_INLINE void from_float(float x, float* p) { *p = x; }
BERTRT_INLINE void from_float(float x, bf16* p) { p->bits = float_to_bf16_bits(x); }
BERTRT_INLINE void from_float(float x, f16* p) { p->bits = float_to_f16_bits(x); }

// ---- vector registers -------------------------------------------------------------------------
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_VEC512)

#if defined(BERTRT_VEC512)
constexpr int W = 16;
using Vec = __m512;
using IVec = __m512i;
BERTRT_INLINE Vec vzero() { return _mm512_setzero_ps(); }
BERTRT_INLINE Vec vset1(float x) { return _mm512_set1_ps(x); }
BERTRT_INLINE Vec vload(const float* p) { return _mm512_loadu_ps(p); }
BERTRT_INLINE void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
BERTRT_INLINE Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
BERTRT_INLINE Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
BERTRT_INLINE Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
BERTRT_INLINE Vec vdiv(Vec a, Vec b) { return _mm512_div_ps(a, b); }
BERTRT_INLINE Vec vfmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
BERTRT_INLINE Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
BERTRT_INLINE Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
BERTRT_INLINE Vec vabs(Vec a) { return _mm512_abs_ps(a); }
BERTRT_INLINE Vec vround(Vec a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
BERTRT_INLINE Vec vselect_lt(Vec a, Vec b, Vec if_true, Vec if_false) {  // a < b ? if_true : if_false
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), if_false, if_true);
}
BERTRT_INLINE Vec vcopysign(Vec magnitude, Vec sign) {
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
      _mm512_castps_si512(magnitude), _mm512_castps_si512(sign), _mm512_set1_epi32(0x80000000), 0xd8));
}
BERTRT_INLINE Vec vpow2i(Vec n) {  // 2^n for integral n in [-126, 127]
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
BERTRT_INLINE float vreduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
BERTRT_INLINE float vreduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
BERTRT_INLINE Vec vload(const bf16* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
BERTRT_INLINE void vstore(bf16* p, Vec v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
                        16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
}
BERTRT_INLINE Vec vload(const f16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
BERTRT_INLINE void vstore(f16* p, Vec v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else  // AVX2
constexpr int W = 8;
using Vec = __m256;
using IVec = __m256i;
BERTRT_INLINE Vec vzero() { return _mm256_setzero_ps(); }
BERTRT_INLINE Vec vset1(float x) { return _mm256_set1_ps(x); }
BERTRT_INLINE Vec vload(const float* p) { return _mm256_loadu_ps(p); }
BERTRT_INLINE void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
BERTRT_INLINE Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
BERTRT_INLINE Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
BERTRT_INLINE Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
BERTRT_INLINE Vec vdiv(Vec a, Vec b) { return _mm256_div_ps(a, b); }
BERTRT_INLINE Vec vfmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
BERTRT_INLINE Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
BERTRT_INLINE Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
BERTRT_INLINE Vec vabs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
BERTRT_INLINE Vec vround(Vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
BERTRT_INLINE Vec vselect_lt(Vec a, Vec b, Vec if_true, Vec if_false) {
  return _mm256_blendv_ps(if_false, if_true, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
BERTRT_INLINE Vec vcopysign(Vec magnitude, Vec sign) {
  const Vec mask = _mm256_set1_ps(-0.0f);
  return _mm256_or_ps(_mm256_andnot_ps(mask, magnitude), _mm256_and_ps(mask, sign));
}
BERTRT_INLINE Vec vpow2i(Vec n) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
BERTRT_INLINE float vreduce_add(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
BERTRT_INLINE float vreduce_max(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
BERTRT_INLINE Vec vload(const bf16* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
BERTRT_INLINE void vstore(bf16* p, Vec v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                         _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))),
                        16);
  __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, quiet, nan);
  // Values are < 2^16, so the signed-saturating pack keeps them; it packs within 128-bit lanes.
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
BERTRT_INLINE Vec vload(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
BERTRT_INLINE void vstore(f16* p, Vec v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

#else  // scalar: one lane, same code shape as the vector variants

constexpr int W = 1;
using Vec = float;
BERTRT_INLINE Vec vzero() { return 0.0f; }
BERTRT_INLINE Vec vset1(float x) { return x; }
BERTRT_INLINE Vec vload(const float* p) { return *p; }
BERTRT_INLINE void vstore(float* p, Vec v) { *p = v; }
BERTRT_INLINE Vec vadd(Vec a, Vec b) { return a + b; }
BERTRT_INLINE Vec vsub(Vec a, Vec b) { return a - b; }
BERTRT_INLINE Vec vmul(Vec a, Vec b) { return a * b; }
BERTRT_INLINE Vec vdiv(Vec a, Vec b) { return a / b; }
BERTRT_INLINE Vec vfmadd(Vec a, Vec b, Vec c) { return a * b + c; }
BERTRT_INLINE Vec vmax(Vec a, Vec b) { return a > b ? a : b; }
BERTRT_INLINE Vec vmin(Vec a, Vec b) { return a < b ? a : b; }
BERTRT_INLINE Vec vabs(Vec a) { return __builtin_fabsf(a); }
BERTRT_INLINE Vec vround(Vec a) { return __builtin_rintf(a); }
BERTRT_INLINE Vec vselect_lt(Vec a, Vec b, Vec if_true, Vec if_false) { return a < b ? if_true : if_false; }
BERTRT_INLINE Vec vcopysign(Vec magnitude, Vec sign) { return __builtin_copysignf(magnitude, sign); }
BERTRT_INLINE Vec vpow2i(Vec n) { return bits_to_float(uint32_t(int32_t(n) + 127) << 23); }
BERTRT_INLINE float vreduce_add(Vec v) { return v; }
BERTRT_INLINE float vreduce_max(Vec v) { return v; }
template <class T>
BERTRT_INLINE Vec vload(const T* p) {
  return to_float(*p);
}
template <class T>
BERTRT_INLINE void vstore(T* p, Vec v) {
  from_float(v, p);
}

#endif

// Up to W elements (n < W): through a zero-filled staging buffer, so every variant shares one tail path.
template <class T>
BERTRT_INLINE Vec vload_partial(const T* p, int64_t n) {
  T tmp[W];
  std::memset(static_cast<void*>(tmp), 0, sizeof(tmp));
  std::memcpy(static_cast<void*>(tmp), p, size_t(n) * sizeof(T));
  return vload(static_cast<const T*>(tmp));
}
template <class T>
BERTRT_INLINE void vstore_partial(T* p, Vec v, int64_t n) {
  T tmp[W];
  vstore(tmp, v);
  std::memcpy(static_cast<void*>(p), tmp, size_t(n) * sizeof(T));
}

// ---- transcendental functions -----------------------------------------------------------------
// 2^x: x = n + f with n = round(x), f in [-0.5, 0.5]; 2^f by its degree-7 Taylor polynomial
// (truncation error < 6e-9 relative), 2^n through the exponent bits. Underflows to exactly 0 below
// -126 and saturates near 2^128 (inf above), which keeps masked and huge scores harmless.
BERTRT_INLINE Vec vexp2(Vec x) {
  const Vec lo = vset1(-126.0f);
  Vec xc = vmin(vmax(x, lo), vset1(127.99f));
  Vec n = vround(xc);
  Vec f = vsub(xc, n);
  Vec p = vset1(1.5252733804059840e-05f);            // ln2^7/7!
  p = vfmadd(p, f, vset1(1.5403530393381609e-04f));  // ln2^6/6!
  p = vfmadd(p, f, vset1(1.3333558146428443e-03f));  // ln2^5/5!
  p = vfmadd(p, f, vset1(9.6181291076284772e-03f));  // ln2^4/4!
  p = vfmadd(p, f, vset1(5.5504108664821580e-02f));  // ln2^3/3!
  p = vfmadd(p, f, vset1(2.4022650695910071e-01f));  // ln2^2/2!
  p = vfmadd(p, f, vset1(6.9314718055994531e-01f));  // ln2
  p = vfmadd(p, f, vset1(1.0f));
  Vec r = vmul(p, vpow2i(n));
  Vec big = vset1(128.0f);
  r = vselect_lt(x, big, r, vset1(__builtin_inff()));
  return vselect_lt(x, lo, vzero(), r);
}

// 2^x for x <= 0 (softmax numerators after the max is subtracted): no overflow handling, and a degree-5
// fit (relative error <= 2.3e-7 on [-0.5, 0.5], near fp32 rounding) instead of vexp2's degree 7. Below
// -125 (and at -inf: masked keys) it returns about 2^-125 rather than 0: a weight of ~1e-38 beside the
// row maximum's 1, and no select in the loop (measured ~6% of the attention kernel's time).
BERTRT_INLINE Vec vexp2_nonpositive(Vec x) {
  const Vec xc = vmax(x, vset1(-125.0f));
  const Vec n = vround(xc);
  const Vec f = vsub(xc, n);
  Vec p = vset1(1.3267e-03f);
  p = vfmadd(p, f, vset1(9.67546e-03f));
  p = vfmadd(p, f, vset1(5.550743e-02f));
  p = vfmadd(p, f, vset1(2.4022122e-01f));
  p = vfmadd(p, f, vset1(6.9314695e-01f));
  p = vfmadd(p, f, vset1(1.00000007f));
  return vmul(p, vpow2i(n));
}

constexpr float kLog2e = 1.4426950408889634f;

#if !defined(BERTRT_ISA_AVX2) && !defined(BERTRT_VEC512)
BERTRT_INLINE Vec vexp(Vec x) {
  // No hardware FMA on baseline x86-64: take the reduction in double instead of the split below.
  double t = double(x) * 1.4426950408889634;
  if (t >= 127.5) return __builtin_inff();
  if (t < -126.0) return 0.0f;
  double n = __builtin_rint(t);
  return vexp2(float(t - n)) * vpow2i(float(n));
}
#else
BERTRT_INLINE Vec vexp(Vec x) {
  // Split x*log2(e) into a high part and a correction so large |x| keep their accuracy.
  Vec t = vmul(x, vset1(kLog2e));
  Vec err = vfmadd(x, vset1(kLog2e), vsub(vzero(), t));  // exact rounding error of the product
  err = vfmadd(x, vset1(1.925963033500011e-08f), err);   // log2(e) - float(log2(e))
  Vec n = vround(t);
  Vec f = vadd(vsub(t, n), err);
  Vec r = vmul(vexp2(f), vpow2i(vmax(vmin(n, vset1(127.0f)), vset1(-126.0f))));
  // 2^n with n clamped to 127: results from 2^127.5 up to FLT_MAX are reported as inf.
  r = vselect_lt(t, vset1(127.5f), r, vset1(__builtin_inff()));
  return vselect_lt(t, vset1(-126.0f), vzero(), r);
}
#endif

// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), the form ATen's vectorised erf uses.
BERTRT_INLINE Vec verf(Vec x) {
  Vec a = vabs(x);
  Vec t = vdiv(vset1(1.0f), vfmadd(vset1(0.3275911f), a, vset1(1.0f)));
  Vec p = vset1(1.061405429f);
  p = vfmadd(p, t, vset1(-1.453152027f));
  p = vfmadd(p, t, vset1(1.421413741f));
  p = vfmadd(p, t, vset1(-0.284496736f));
  p = vfmadd(p, t, vset1(0.254829592f));
  p = vmul(p, t);
  Vec e = vexp(vsub(vzero(), vmul(a, a)));
  Vec y = vsub(vset1(1.0f), vmul(p, e));
  return vcopysign(y, x);
}

// erf(x) = x P(x^2) / Q(x^2) on |x| <= 3.92 (erf(3.92) rounds to 1 in float), a least-squares
// minimax fit made for bertrt: |error| < 4e-7 in float (verf: 1.5e-7) for about half the work (no
// exp, one division). GEMM epilogues use it: there GELU cost 23% of the FFN-in GEMM with verf, 6% with
// this, and its error is far below the GEMM's own.
BERTRT_INLINE Vec verf_rational(Vec x) {
  x = vmax(vset1(-3.92f), vmin(vset1(3.92f), x));  // this operand order keeps NaN
  Vec z = vmul(x, x);
  Vec p = vset1(2.034733370e-06f);
  p = vfmadd(p, z, vset1(2.874781785e-04f));
  p = vfmadd(p, z, vset1(3.868294181e-03f));
  p = vfmadd(p, z, vset1(5.306037515e-02f));
  p = vfmadd(p, z, vset1(1.927633435e-01f));
  p = vfmadd(p, z, vset1(1.128378987e+00f));
  Vec q = vset1(3.807056419e-05f);
  q = vfmadd(q, z, vset1(1.188106253e-03f));
  q = vfmadd(q, z, vset1(1.517222822e-02f));
  q = vfmadd(q, z, vset1(1.150843129e-01f));
  q = vfmadd(q, z, vset1(5.041637421e-01f));
  q = vfmadd(q, z, vset1(1.0f));
  return vdiv(vmul(x, p), q);
}

// GELU(x) = 0.5 x (1 + erf(x / sqrt 2)).
BERTRT_INLINE Vec vgelu_erf(Vec x) {
  Vec half_x = vmul(x, vset1(0.5f));
  return vfmadd(half_x, verf(vmul(x, vset1(0.70710678118654752f))), half_x);
}

// GELU for GEMM epilogues: the rational erf; |error| <= 0.5 |x| 4e-7.
BERTRT_INLINE Vec vgelu_erf_fast(Vec x) {
  Vec half_x = vmul(x, vset1(0.5f));
  return vfmadd(half_x, verf_rational(vmul(x, vset1(0.70710678118654752f))), half_x);
}

// GELU_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
BERTRT_INLINE Vec vgelu_tanh(Vec x) {
  Vec x2 = vmul(x, x);
  Vec u = vmul(vmul(x, vset1(0.7978845608028654f)), vfmadd(x2, vset1(0.044715f), vset1(1.0f)));
  Vec e = vexp(vmul(u, vset1(-2.0f)));
  return vdiv(x, vadd(vset1(1.0f), e));
}

}  // namespace bertrt::cpu::BERTRT_NS

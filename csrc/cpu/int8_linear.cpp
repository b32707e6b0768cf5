// INT8 GEMM y = epilogue(x_q @ w_q^T) with exact int32 accumulation and a fused fp32 epilogue:
// y = acc * x_scale[m] * w_scale[n] (+ bias[n]) (-> GELU), stored in out_dtype.
#include <cmath>
#include <cstring>

#include "simd.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

// Kept across calls (parallel.h): the calling thread's (packed weights, quantized rows) and each
// OpenMP worker's (row chunks, accumulators).
thread_local Scratch call_scratch, worker_scratch;

// Epilogue for one output row from its int32 accumulators.
template <class O, class B>
void epilogue_row(const int32_t* acc, float x_scale, const float* w_scale, const B* bias, int activation,
                  int64_t n, O* out) {
  const Vec xs = vset1(x_scale);
  int64_t j = 0;
  float tmp[W];
  for (; j < n; j += W) {
    const int64_t cnt = n - j < W ? n - j : W;
    for (int64_t t = 0; t < cnt; ++t) tmp[t] = float(acc[j + t]);
    for (int64_t t = cnt; t < W; ++t) tmp[t] = 0.0f;
    Vec y = vload(static_cast<const float*>(tmp));
    Vec ws = cnt == W ? vload(w_scale + j) : vload_partial(w_scale + j, cnt);
    y = vmul(vmul(y, xs), ws);
    if (bias) y = vadd(y, cnt == W ? vload(bias + j) : vload_partial(bias + j, cnt));
    if (activation == 1)
      y = vgelu_erf_fast(y);
    else if (activation == 2)
      y = vgelu_tanh(y);
    if (cnt == W)
      vstore(out + j, y);
    else
      vstore_partial(out + j, y, cnt);
  }
}

#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
// AVX2 u8 x s8 path (the AVX-512 variant runs it too). vpmaddubsw multiplies unsigned by signed
// bytes and adds pairs into int16 with saturation, so the operands are made saturation-free:
//   a = |w| (u8, <= 128),  b = sign(x, w) = x * sgn(w) (s8),  a * b = w * x
// and |pair| <= 2 * 128 * 127 = 32512 < 32767, exact, unless x = -128 (whose negation wraps).
// Rows of x holding -128 take the plain int32 loop instead. vpmaddwd with ones widens pairs to
// int32: each lane then holds 4 consecutive k of one output column.
//
// W is packed per call: panels of 8 columns, k in groups of 4 -> 32 bytes per (panel, group);
// zero padding to N % 8 and K % 4. The micro-kernel is 4 rows x 16 columns (8 ymm accumulators).
constexpr int64_t kRows = 4, kPanel = 8, kCols = 16, kRowChunk = 48, kColChunk = 128;

void pack_weights(const int8_t* w, int64_t n, int64_t k, int64_t k_groups, int8_t* packed, int threads) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n * k > (1 << 16))
  for (int64_t p = 0; p < panels; ++p) {
    int8_t* dst = packed + p * k_groups * 32;
    for (int64_t g = 0; g < k_groups; ++g)
      for (int64_t c = 0; c < kPanel; ++c)
        for (int64_t t = 0; t < 4; ++t) {
          const int64_t col = p * kPanel + c, kk = g * 4 + t;
          dst[g * 32 + c * 4 + t] = (col < n && kk < k) ? w[col * k + kk] : int8_t(0);
        }
  }
}

// acc[r][0..16) = sum_k x[r][k] * w[col0 + ...][k] for 4 rows of padded x (stride k_padded).
BERTRT_INLINE void int8_tile(const int8_t* x, int64_t k_padded, const int8_t* panel0, const int8_t* panel1,
                             int64_t k_groups, int32_t* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
          c31 = c00;
  for (int64_t g = 0; g < k_groups; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel0 + g * 32));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel1 + g * 32));
    const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
#define BERTRT_INT8_ROW(r, acc0, acc1)                                                                       \
  {                                                                                                          \
    int32_t x4;                                                                                              \
    std::memcpy(&x4, x + (r) * k_padded + g * 4, 4);                                                         \
    const __m256i xb = _mm256_set1_epi32(x4);                                                                \
    acc0 =                                                                                                   \
        _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones)); \
    acc1 =                                                                                                   \
        _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones)); \
  }
    BERTRT_INT8_ROW(0, c00, c01)
    BERTRT_INT8_ROW(1, c10, c11)
    BERTRT_INT8_ROW(2, c20, c21)
    BERTRT_INT8_ROW(3, c30, c31)
#undef BERTRT_INT8_ROW
  }
  __m256i* out = reinterpret_cast<__m256i*>(acc);
  _mm256_storeu_si256(out + 0, c00);
  _mm256_storeu_si256(out + 1, c01);
  _mm256_storeu_si256(out + 2, c10);
  _mm256_storeu_si256(out + 3, c11);
  _mm256_storeu_si256(out + 4, c20);
  _mm256_storeu_si256(out + 5, c21);
  _mm256_storeu_si256(out + 6, c30);
  _mm256_storeu_si256(out + 7, c31);
}

template <class O, class B>
void run_simd(const Int8LinearArgs& a) {
  const int64_t m = a.m, n = a.n, k = a.k;
  const int64_t k_groups = (k + 3) / 4, k_padded = k_groups * 4;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  // Two panels per tile: an odd panel count gets one zero panel at the end.
  const int64_t panels_padded = (panels + 1) / 2 * 2;
  int8_t* packed = call_scratch.get<int8_t>(size_t(panels_padded * k_groups * 32 + 64));
  pack_weights(a.w, n, k, k_groups, packed, a.threads);
  std::memset(packed + panels * k_groups * 32, 0, size_t((panels_padded - panels) * k_groups * 32));

  const B* bias = static_cast<const B*>(a.bias);
  O* out = static_cast<O*>(a.out);
  const int64_t row_chunks = (m + kRowChunk - 1) / kRowChunk, col_chunks = (n + kColChunk - 1) / kColChunk;
  const int threads = threads_for(m * n * k, 1 << 20, a.threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int8_t* xs = worker_scratch.get<int8_t>(size_t(kRowChunk * k_padded + 64));
    alignas(32) int32_t acc[kRows * kCols];
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t rc = 0; rc < row_chunks; ++rc)
      for (int64_t cc = 0; cc < col_chunks; ++cc) {
        const int64_t r0 = rc * kRowChunk, r1 = r0 + kRowChunk < m ? r0 + kRowChunk : m;
        const int64_t c0 = cc * kColChunk, c1 = c0 + kColChunk < n ? c0 + kColChunk : n;
        // Rows padded to a multiple of 4 (k) and of kRows (zero rows); flag rows holding -128.
        const int64_t rows = r1 - r0, rows_padded = (rows + kRows - 1) / kRows * kRows;
        bool has_min[kRowChunk];
        for (int64_t r = 0; r < rows_padded; ++r) {
          int8_t* dst = xs + r * k_padded;
          has_min[r] = false;
          if (r < rows) {
            const int8_t* src = a.x + (r0 + r) * k;
            std::memcpy(dst, src, size_t(k));
            for (int64_t t = 0; t < k; ++t) has_min[r] |= src[t] == -128;
            std::memset(dst + k, 0, size_t(k_padded - k));
          } else {
            std::memset(dst, 0, size_t(k_padded));
          }
        }
        for (int64_t col = c0; col < c1; col += kCols) {
          const int64_t panel = col / kPanel;
          const int64_t cols = c1 - col < kCols ? c1 - col : kCols;
          for (int64_t r = 0; r < rows; r += kRows) {
            int8_tile(xs + r * k_padded, k_padded, packed + panel * k_groups * 32,
                      packed + (panel + 1) * k_groups * 32, k_groups, acc);
            for (int64_t i = 0; i < kRows && r + i < rows; ++i) {
              const int64_t row = r0 + r + i;
              if (has_min[r + i]) {  // exact int32 loop for a row the u8 x s8 trick cannot take
                for (int64_t j = 0; j < cols; ++j) {
                  const int8_t* wr = a.w + (col + j) * k;
                  int32_t s = 0;
                  for (int64_t t = 0; t < k; ++t) s += int32_t(a.x[row * k + t]) * int32_t(wr[t]);
                  acc[i * kCols + j] = s;
                }
              }
              epilogue_row(acc + i * kCols, a.x_scale[row], a.w_scale + col, bias ? bias + col : nullptr,
                           a.activation, cols, out + row * n + col);
            }
          }
        }
      }
  }
}
#endif

template <class O, class B>
void run(const Int8LinearArgs& a) {
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
  return run_simd<O, B>(a);
#endif
  const int64_t m = a.m, n = a.n, k = a.k;
  const int threads = threads_for(m * n * k, 1 << 18, a.threads);
  const B* bias = static_cast<const B*>(a.bias);
  O* out = static_cast<O*>(a.out);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int32_t* acc = worker_scratch.get<int32_t>(size_t((n + 15) / 16 * 16) * 4);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xr = a.x + i * k;
      for (int64_t j = 0; j < n; ++j) {
        const int8_t* wr = a.w + j * k;
        int32_t s = 0;
        for (int64_t t = 0; t < k; ++t) s += int32_t(xr[t]) * int32_t(wr[t]);
        acc[j] = s;
      }
      epilogue_row(acc, a.x_scale[i], a.w_scale, bias, a.activation, n, out + i * n);
    }
  }
}

template <class O>
void run_out(const Int8LinearArgs& a) {
  return dispatch_dtype<float, bf16, f16>(a.bias_dtype,
                                          [&](auto tag) { return run<O, typename decltype(tag)::type>(a); });
}

// ---- packed dynamic/static path: float x in, weights packed once ---------------------------------
//
// x is quantized inside the call (per token, or with the static scale and zero point) and multiplied
// by weights packed once. Two schemes, both exact in int32:
//
// act_bits 8: u8 = q + 128 is vpmaddubsw's unsigned operand, the weight its signed one. u8 x s8 pair
//   sums stay below 2^15 only for |w| <= 63, so the weights are 7-bit (the Python side requantizes
//   them when it packs). vpmaddwd widens the pairs to int32: 3 instructions per 32 multiply-adds, and
//   two of them use the integer multiplier, so this runs at about the FP32 FMA rate on AVX2 cores.
//     sum_k (q + 128) w = sum_k q w + 128 colsum,  y = s_x s_w (acc - (128 + z) colsum) + bias.
// act_bits 7: u = q + 64 in [0, 127] meets the same signed 7-bit weights. A pair sum is then at most
//   2 * 127 * 63 = 16002 in magnitude, so two of them (8 k) add in int16 without overflow, and one
//   vpmaddwd with ones widens the four products' pairs to int32: per 64 multiply-adds 5 instructions
//   (two vpmaddubsw, vpaddw, vpmaddwd, vpaddd) and one accumulator per 8 columns, against 6 for
//   act_bits 8; measured in L1 on Zen 3, 1.2-1.3x the act_bits 8 tile. The offset comes back out as
//     sum_k (u - 64 - z) w = S - (64 + z) colsum(w),
//   zero padding (u = 0, w = 0) adding nothing to S or colsum(w).
// Packed layout: panels of 16 columns, k in quads: [panel][quad][column 0..15][4 bytes].
constexpr int kQ8Panel = 16, kQ8Rows = 4, kQ7Rows = 3;
constexpr int64_t kQ8Mc = 128;

// Quantizes rows of x (times x_multiplier when given) into xq (row stride k_padded); fills x_scale and
// x_zero (asymmetric dynamic only).
void quantize_rows(const Int8PackedLinearArgs& a, int64_t k_padded, uint8_t* xq, float* x_scale,
                   int32_t* x_zero, float* scratch) {
  const bool dynamic = a.input_scale == nullptr, seven = a.act_bits == 7;
  const float offset = seven ? 64.0f : 128.0f, qmax = seven ? 63.0f : 127.0f;
#pragma omp for schedule(static)
  for (int64_t r = 0; r < a.m; ++r) {
    const float* xr = a.x + r * a.ldx;
    if (a.x_multiplier) {  // one product per element, rounded once, as x * multiplier in torch
      float* dst = scratch + int64_t(omp_get_thread_num()) * a.k;
      int64_t t = 0;
      for (; t + W <= a.k; t += W) vstore(dst + t, vmul(vload(xr + t), vload(a.x_multiplier + t)));
      for (; t < a.k; ++t) dst[t] = xr[t] * a.x_multiplier[t];
      xr = dst;
    }
    uint8_t* dst = xq + r * k_padded;
    float scale, zero_point = 0.0f, lo = -qmax;
    if (dynamic &&
        a.asymmetric) {  // as quantize_per_token_asym: the row's range (holding 0) on 2 qmax + 1 steps
      Vec vlo_x = vzero(), vhi_x = vzero();
      int64_t t = 0;
      for (; t + W <= a.k; t += W) {
        const Vec v = vload(xr + t);
        vlo_x = vmin(vlo_x, v);
        vhi_x = vmax(vhi_x, v);
      }
      float x_lo = -vreduce_max(vsub(vzero(), vlo_x)), x_hi = vreduce_max(vhi_x);
      for (; t < a.k; ++t) {
        x_lo = std::fmin(x_lo, xr[t]);
        x_hi = std::fmax(x_hi, xr[t]);
      }
      scale = std::fmax(x_hi - x_lo, 1e-8f) / (2.0f * qmax + 1.0f);
      zero_point = std::nearbyint(-x_lo / scale) - (qmax + 1.0f);
      lo = -qmax - 1.0f;
      x_zero[r] = int32_t(zero_point);
    } else if (dynamic) {  // symmetric per token, as quantize_per_token: scale = max|x| / qmax (>= 1e-8 /
                           // qmax)
      float amax = 0.0f;
      int64_t t = 0;
      Vec vmax_abs = vzero();
      for (; t + W <= a.k; t += W) vmax_abs = vmax(vmax_abs, vabs(vload(xr + t)));
      amax = vreduce_max(vmax_abs);
      for (; t < a.k; ++t) amax = std::fmax(amax, std::fabs(xr[t]));
      scale = std::fmax(amax, 1e-8f) / qmax;
    } else {
      scale = *a.input_scale;
      zero_point = float(a.input_zero_point);
      lo = -qmax - 1.0f;
    }
    x_scale[r] = scale;
    int64_t t = 0;
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
    // 32 values a step: divide (not multiply by 1/scale: torch divides), round to even, shift to
    // unsigned, then pack 4 x 8 int32 -> 32 bytes and undo the packs' lane interleave.
    const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(zero_point + offset);
    const __m256 vlo = _mm256_set1_ps(lo + offset), vhi = _mm256_set1_ps(qmax + offset);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; t + 32 <= a.k; t += 32) {
      __m256i q[4];
      for (int v = 0; v < 4; ++v) {
        __m256 f = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xr + t + 8 * v), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        f = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(f, vz), vlo), vhi);
        q[v] = _mm256_cvtps_epi32(f);
      }
      const __m256i bytes =
          _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + t), _mm256_permutevar8x32_epi32(bytes, order));
    }
#endif
    for (; t < a.k; ++t) {
      float q = std::nearbyint(xr[t] / scale) + zero_point;  // ties to even, like torch.round
      q = std::fmin(std::fmax(q, lo), qmax);
      dst[t] = uint8_t(int(q + offset));
    }
    for (int64_t t = a.k; t < k_padded; ++t) dst[t] = 0;  // meets zero weights
  }
}

template <int MR>
void q8_tile(const uint8_t* x, int64_t k_padded, const int8_t* panel, int64_t quads,
             int32_t (*acc)[kQ8Panel]) {
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < quads; ++g) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + g * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + g * 64 + 32));
    for (int i = 0; i < MR; ++i) {
      int32_t x4;
      std::memcpy(&x4, x + i * k_padded + g * 4, 4);
      const __m256i xb = _mm256_set1_epi32(x4);
      c[i][0] = _mm256_add_epi32(c[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w0), ones));
      c[i][1] = _mm256_add_epi32(c[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w1), ones));
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[i]), c[i][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[i] + 8), c[i][1]);
  }
#else
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kQ8Panel; ++j) {
      int32_t s = 0;
      for (int64_t g = 0; g < quads; ++g)
        for (int t = 0; t < 4; ++t)
          s += int32_t(x[i * k_padded + g * 4 + t]) * int32_t(panel[g * 64 + j * 4 + t]);
      acc[i][j] = s;
    }
#endif
}

// act_bits 7: S = sum_k u w for MR rows x 16 columns; quads is even (see the layout note above).
template <int MR>
void q7_tile(const uint8_t* x, int64_t k_padded, const int8_t* panel, int64_t quads,
             int32_t (*acc)[kQ8Panel]) {
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < quads; g += 2) {
    const __m256i* w = reinterpret_cast<const __m256i*>(panel + g * 64);
    const __m256i w0[2] = {_mm256_loadu_si256(w), _mm256_loadu_si256(w + 1)};
    const __m256i w1[2] = {_mm256_loadu_si256(w + 2), _mm256_loadu_si256(w + 3)};
    for (int i = 0; i < MR; ++i) {
      int32_t x4[2];
      std::memcpy(x4, x + i * k_padded + g * 4, 8);
      const __m256i xb0 = _mm256_set1_epi32(x4[0]), xb1 = _mm256_set1_epi32(x4[1]);
      for (int h = 0; h < 2; ++h) {
        const __m256i pairs =
            _mm256_add_epi16(_mm256_maddubs_epi16(xb0, w0[h]), _mm256_maddubs_epi16(xb1, w1[h]));
        c[i][h] = _mm256_add_epi32(c[i][h], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc[i] + 8 * h), c[i][h]);
#else
  q8_tile<MR>(x, k_padded, panel, quads, acc);
#endif
}

template <int MR>
BERTRT_INLINE void packed_tile(bool seven, const uint8_t* x, int64_t k_padded, const int8_t* panel,
                               int64_t quads, int32_t (*acc)[kQ8Panel]) {
  if (seven)
    q7_tile<MR>(x, k_padded, panel, quads, acc);
  else
    q8_tile<MR>(x, k_padded, panel, quads, acc);
}

#if defined(BERTRT_ISA_AVX512)
// VNNI (dispatch.cpp picks int8_linear_packed_vnni where the CPU has AVX512-VNNI): vpdpbusd adds
// each lane's four u8 x s8 products to its int32 accumulator exactly, with no int16 step, so both
// act_bits take it. A zmm of the packed layout is one (panel, quad): one instruction per 64
// multiply-adds, against 3 per 32 (act_bits 8) or 5 per 64 (act_bits 7) on the AVX2 tiles. NP panels
// (kPanelStride bytes apart) share each row's broadcast quad.
// 8 x 2 measured best of 4x4, 8x2, 6x4, 12x2 on Zen 4 (the 24-accumulator shapes ran at 0.55x)
constexpr int kVnniRows = 8, kVnniPanels = 2;

template <int MR, int NP>
void vnni_tile(const uint8_t* x, int64_t k_padded, const int8_t* panel, int64_t panel_stride, int64_t quads,
               int32_t (*acc)[kVnniRows][kQ8Panel]) {
  __m512i c[MR][NP];
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < NP; ++p) c[i][p] = _mm512_setzero_si512();
  for (int64_t g = 0; g < quads; ++g) {
    __m512i w[NP];
    for (int p = 0; p < NP; ++p) w[p] = _mm512_loadu_si512(panel + p * panel_stride + g * 64);
    for (int i = 0; i < MR; ++i) {
      int32_t x4;
      std::memcpy(&x4, x + i * k_padded + g * 4, 4);
      const __m512i xb = _mm512_set1_epi32(x4);
      for (int p = 0; p < NP; ++p) c[i][p] = _mm512_dpbusd_epi32(c[i][p], xb, w[p]);
    }
  }
  for (int p = 0; p < NP; ++p)
    for (int i = 0; i < MR; ++i) _mm512_storeu_si512(acc[p][i], c[i][p]);
}

// The full 8 x 2 tile in asm: GCC 12 compiles vnni_tile<8, 2>'s accumulator array into two register
// sets with 32 zmm copies per 16 vpdpbusd (0.55-0.65x this loop). zmm0-15 accumulate (row i, panel p
// in zmm(2i + p)), zmm16/17 hold the two panels' quad, zmm18 a row's broadcast quad.
void vnni_tile_8x2(const uint8_t* x, int64_t k_padded, const int8_t* panel, int64_t panel_stride,
                   int64_t quads, int32_t (*acc)[kVnniRows][kQ8Panel]) {
  const uint8_t* x4 = x + 4 * k_padded;
  const int64_t ld3 = 3 * k_padded;
  // clang-format off
#define BERTRT_VNNI_ROW(addr, a0, a1)                \
  "vpbroadcastd " addr ", %%zmm18\n\t"               \
  "vpdpbusd %%zmm16, %%zmm18, %%zmm" #a0 "\n\t"      \
  "vpdpbusd %%zmm17, %%zmm18, %%zmm" #a1 "\n\t"
  __asm__ volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovdqa64 %%zmm0, %%zmm1\n\t vmovdqa64 %%zmm0, %%zmm2\n\t vmovdqa64 %%zmm0, %%zmm3\n\t"
      "vmovdqa64 %%zmm0, %%zmm4\n\t vmovdqa64 %%zmm0, %%zmm5\n\t vmovdqa64 %%zmm0, %%zmm6\n\t"
      "vmovdqa64 %%zmm0, %%zmm7\n\t vmovdqa64 %%zmm0, %%zmm8\n\t vmovdqa64 %%zmm0, %%zmm9\n\t"
      "vmovdqa64 %%zmm0, %%zmm10\n\t vmovdqa64 %%zmm0, %%zmm11\n\t vmovdqa64 %%zmm0, %%zmm12\n\t"
      "vmovdqa64 %%zmm0, %%zmm13\n\t vmovdqa64 %%zmm0, %%zmm14\n\t vmovdqa64 %%zmm0, %%zmm15\n\t"
      "1:\n\t"
      "vmovdqu64 (%[w]), %%zmm16\n\t"
      "vmovdqu64 (%[w], %[ws]), %%zmm17\n\t"
      BERTRT_VNNI_ROW("(%[x0])", 0, 1)
      BERTRT_VNNI_ROW("(%[x0], %[ld])", 2, 3)
      BERTRT_VNNI_ROW("(%[x0], %[ld], 2)", 4, 5)
      BERTRT_VNNI_ROW("(%[x0], %[ld3])", 6, 7)
      BERTRT_VNNI_ROW("(%[x4])", 8, 9)
      BERTRT_VNNI_ROW("(%[x4], %[ld])", 10, 11)
      BERTRT_VNNI_ROW("(%[x4], %[ld], 2)", 12, 13)
      BERTRT_VNNI_ROW("(%[x4], %[ld3])", 14, 15)
      "add $64, %[w]\n\t"
      "add $4, %[x0]\n\t"
      "add $4, %[x4]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vmovdqu64 %%zmm0, 0(%[acc])\n\t vmovdqu64 %%zmm2, 64(%[acc])\n\t vmovdqu64 %%zmm4, 128(%[acc])\n\t"
      "vmovdqu64 %%zmm6, 192(%[acc])\n\t vmovdqu64 %%zmm8, 256(%[acc])\n\t vmovdqu64 %%zmm10, 320(%[acc])\n\t"
      "vmovdqu64 %%zmm12, 384(%[acc])\n\t vmovdqu64 %%zmm14, 448(%[acc])\n\t"
      "vmovdqu64 %%zmm1, 512(%[acc])\n\t vmovdqu64 %%zmm3, 576(%[acc])\n\t vmovdqu64 %%zmm5, 640(%[acc])\n\t"
      "vmovdqu64 %%zmm7, 704(%[acc])\n\t vmovdqu64 %%zmm9, 768(%[acc])\n\t vmovdqu64 %%zmm11, 832(%[acc])\n\t"
      "vmovdqu64 %%zmm13, 896(%[acc])\n\t vmovdqu64 %%zmm15, 960(%[acc])\n\t"
      : [w] "+r"(panel), [x0] "+r"(x), [x4] "+r"(x4), [n] "+r"(quads)
      : [ws] "r"(panel_stride), [ld] "r"(k_padded), [ld3] "r"(ld3), [acc] "r"(&acc[0][0][0])
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18");
// clang-format on
#undef BERTRT_VNNI_ROW
}

// rows (1..kVnniRows) as a compile-time tile height
template <int NP, int MR = kVnniRows>
BERTRT_INLINE void vnni_tile_rows(int rows, const uint8_t* x, int64_t k_padded, const int8_t* panel,
                                  int64_t panel_stride, int64_t quads, int32_t (*acc)[kVnniRows][kQ8Panel]) {
  if constexpr (MR > 1)
    if (rows < MR) return vnni_tile_rows<NP, MR - 1>(rows, x, k_padded, panel, panel_stride, quads, acc);
  if constexpr (MR == 8 && NP == 2)
    vnni_tile_8x2(x, k_padded, panel, panel_stride, quads, acc);
  else
    vnni_tile<MR, NP>(x, k_padded, panel, panel_stride, quads, acc);
}

// panels (1..kVnniPanels) likewise
template <int NP = kVnniPanels>
BERTRT_INLINE void vnni_tile_panels(int panels, int rows, const uint8_t* x, int64_t k_padded,
                                    const int8_t* panel, int64_t panel_stride, int64_t quads,
                                    int32_t (*acc)[kVnniRows][kQ8Panel]) {
  if constexpr (NP > 1)
    if (panels < NP)
      return vnni_tile_panels<NP - 1>(panels, rows, x, k_padded, panel, panel_stride, quads, acc);
  vnni_tile_rows<NP>(rows, x, k_padded, panel, panel_stride, quads, acc);
}
#endif

template <int kAct>
void q8_epilogue(const int32_t (*acc)[kQ8Panel], int rows, int cols, const float* x_scale,
                 const int32_t* x_zero, const Int8PackedLinearArgs& a, int64_t c0, float* y) {
  const int32_t zero_point = a.input_scale ? a.input_zero_point : 0, base = a.act_bits == 7 ? 64 : 128;
  const int32_t offset = base + zero_point;  // per row when x_zero holds per-token zero points
#if defined(BERTRT_VEC512)
  // a panel is one zmm: correct, convert, scale and store it without a trip through memory
  const __m512i cs = _mm512_loadu_si512(a.col_sums + c0);
  __m512i oc = _mm512_mullo_epi32(_mm512_set1_epi32(offset), cs);
  const Vec ws = vload(a.w_scale + c0), bias = a.bias ? vload(a.bias + c0) : vzero();
  for (int i = 0; i < rows; ++i) {
    if (x_zero) oc = _mm512_mullo_epi32(_mm512_set1_epi32(base + x_zero[i]), cs);
    Vec o = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(acc[i]), oc));
    o = vmul(vmul(o, vset1(x_scale[i])), ws);
    if (a.bias) o = vadd(o, bias);
    if constexpr (kAct == 1) o = vgelu_erf_fast(o);
    if constexpr (kAct == 2) o = vgelu_tanh(o);
    if (cols == kQ8Panel)
      vstore(y + i * a.n, o);
    else
      vstore_partial(y + i * a.n, o, cols);
  }
#else
  alignas(64) float f[kQ8Panel];
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
  // offset * colsum once per tile; the per-row correction and the conversion are 8 lanes at a time
  // (measured: the scalar form cost ~5 cycles an output, 13% of a K = 768 GEMM).
  const __m256i* cs = reinterpret_cast<const __m256i*>(a.col_sums + c0);
  const __m256i cs0 = _mm256_loadu_si256(cs), cs1 = _mm256_loadu_si256(cs + 1);
  __m256i oc0 = _mm256_mullo_epi32(_mm256_set1_epi32(offset), cs0);
  __m256i oc1 = _mm256_mullo_epi32(_mm256_set1_epi32(offset), cs1);
#endif
  for (int i = 0; i < rows; ++i) {
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_ISA_AVX512)
    // the correction in int32 (exact, wrapping like the scalar form), then one rounding to float
    if (x_zero) {
      const __m256i off = _mm256_set1_epi32(base + x_zero[i]);
      oc0 = _mm256_mullo_epi32(off, cs0);
      oc1 = _mm256_mullo_epi32(off, cs1);
    }
    const __m256i* s = reinterpret_cast<const __m256i*>(acc[i]);
    _mm256_store_ps(f, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_load_si256(s), oc0)));
    _mm256_store_ps(f + 8, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_load_si256(s + 1), oc1)));
#else
    const int32_t row_offset = x_zero ? base + x_zero[i] : offset;
    for (int j = 0; j < kQ8Panel; ++j)  // the correction in int32 (exact), then one rounding to float
      f[j] = float(acc[i][j] - row_offset * a.col_sums[c0 + j]);
#endif
    const Vec xs = vset1(x_scale[i]);
    float* dst = cols == kQ8Panel ? y + i * a.n : f;  // a full panel goes straight to the output
    for (int v = 0; v < kQ8Panel / W; ++v) {
      Vec o = vmul(vmul(vload(f + v * W), xs), vload(a.w_scale + c0 + v * W));
      if (a.bias) o = vadd(o, vload(a.bias + c0 + v * W));
      if constexpr (kAct == 1) o = vgelu_erf_fast(o);
      if constexpr (kAct == 2) o = vgelu_tanh(o);
      vstore(dst + v * W, o);
    }
    if (cols < kQ8Panel)
      for (int j = 0; j < cols; ++j) y[i * a.n + j] = f[j];
  }
#endif
}

template <int kAct, bool kVnni>
void run_packed(const Int8PackedLinearArgs& a) {
  const bool seven = a.act_bits == 7;
  const int64_t m = a.m, n = a.n, quads = seven ? (a.k + 7) / 8 * 2 : (a.k + 3) / 4, k_padded = quads * 4;
  const int64_t panels = (n + kQ8Panel - 1) / kQ8Panel;
  const int tile_rows = seven ? kQ7Rows : kQ8Rows;
  const bool asym = a.asymmetric && a.input_scale == nullptr;
  const int threads = threads_for(m * n * a.k, int64_t(1) << 18, a.threads);
  // One kept buffer of the calling thread: quantized rows, then x_scale and zero points (m each)
  // and the multiplied rows (k per thread), each part 64-byte aligned.
  const size_t xq_bytes = size_t(m * k_padded + 63) / 64 * 64, m_bytes = size_t(m * 4 + 63) / 64 * 64;
  const size_t mult_bytes = a.x_multiplier ? size_t(threads) * size_t(a.k) * 4 : 0;
  unsigned char* mem = call_scratch.get(xq_bytes + 2 * m_bytes + mult_bytes);
  uint8_t* xq = mem;
  float* x_scale = reinterpret_cast<float*>(mem + xq_bytes);
  int32_t* x_zero = asym ? reinterpret_cast<int32_t*>(mem + xq_bytes + m_bytes) : nullptr;
  float* scratch = a.x_multiplier ? reinterpret_cast<float*>(mem + xq_bytes + 2 * m_bytes) : nullptr;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    quantize_rows(a, k_padded, xq, x_scale, x_zero, scratch);  // ends in the omp for's barrier
    // Items of (panel, row block), panel-major so that a thread's next item mostly reuses the panel in
    // L1; dealt out dynamically: on a shared VM one core often runs slower than the other, and a
    // static split leaves the faster one waiting at the barrier.
    const int64_t row_blocks = (m + kQ8Mc - 1) / kQ8Mc;
#if defined(BERTRT_ISA_AVX512)
    if constexpr (kVnni) {
      const int64_t groups = (panels + kVnniPanels - 1) / kVnniPanels, stride = quads * 64;
      alignas(64) int32_t vacc[kVnniPanels][kVnniRows][kQ8Panel];
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < groups * row_blocks; ++item) {
        const int64_t p0 = item / row_blocks * kVnniPanels, m0 = item % row_blocks * kQ8Mc;
        const int64_t mb = m - m0 < kQ8Mc ? m - m0 : kQ8Mc;
        const int np = int(panels - p0 < kVnniPanels ? panels - p0 : kVnniPanels);
        const int8_t* panel = a.packed_weight + p0 * stride;
        for (int64_t r = m0; r < m0 + mb; r += kVnniRows) {
          const int rows = int(m0 + mb - r < kVnniRows ? m0 + mb - r : kVnniRows);
          const uint8_t* xr = xq + r * k_padded;
          vnni_tile_panels(np, rows, xr, k_padded, panel, stride, quads, vacc);
          for (int p = 0; p < np; ++p) {
            const int64_t c0 = (p0 + p) * kQ8Panel;
            const int cols = int(n - c0 < kQ8Panel ? n - c0 : kQ8Panel);
            q8_epilogue<kAct>(vacc[p], rows, cols, x_scale + r, x_zero ? x_zero + r : nullptr, a, c0,
                              a.out + r * n + c0);
          }
        }
      }
    } else
#endif
    {
      alignas(64) int32_t acc[kQ8Rows][kQ8Panel];
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < panels * row_blocks; ++item) {
        const int64_t p = item / row_blocks, m0 = item % row_blocks * kQ8Mc;
        const int64_t mb = m - m0 < kQ8Mc ? m - m0 : kQ8Mc;
        {
          const int8_t* panel = a.packed_weight + p * quads * 64;
          const int64_t c0 = p * kQ8Panel;
          const int cols = int(n - c0 < kQ8Panel ? n - c0 : kQ8Panel);
          for (int64_t r = m0; r < m0 + mb; r += tile_rows) {
            const int rows = int(m0 + mb - r < tile_rows ? m0 + mb - r : tile_rows);
            const uint8_t* xr = xq + r * k_padded;
            switch (rows) {
              case 4:
                packed_tile<4>(seven, xr, k_padded, panel, quads, acc);
                break;
              case 3:
                packed_tile<3>(seven, xr, k_padded, panel, quads, acc);
                break;
              case 2:
                packed_tile<2>(seven, xr, k_padded, panel, quads, acc);
                break;
              default:
                packed_tile<1>(seven, xr, k_padded, panel, quads, acc);
                break;
            }
            q8_epilogue<kAct>(acc, rows, cols, x_scale + r, x_zero ? x_zero + r : nullptr, a, c0,
                              a.out + r * n + c0);
          }
        }
      }
    }
  }
}

template <bool kVnni>
void run_packed_act(const Int8PackedLinearArgs& a) {
  switch (a.activation) {
    case 1:
      return run_packed<1, kVnni>(a);
    case 2:
      return run_packed<2, kVnni>(a);
    default:
      return run_packed<0, kVnni>(a);
  }
}

}  // namespace

void int8_linear(const Int8LinearArgs& a) {
  return dispatch_dtype<float, bf16, f16>(a.out_dtype,
                                          [&](auto tag) { return run_out<typename decltype(tag)::type>(a); });
}

void int8_linear_packed(const Int8PackedLinearArgs& a) { return run_packed_act<false>(a); }

#if defined(BERTRT_ISA_AVX512)
void int8_linear_packed_vnni(const Int8PackedLinearArgs& a) { return run_packed_act<true>(a); }
#endif

}  // namespace bertrt::cpu::BERTRT_NS

// Fused variable-length attention over packed QKV, online softmax, fp32 accumulation.
//
// Work item: (sequence, head, block of query rows); items run in parallel (OpenMP, dynamic).
// Per item, Q (its rows, scaled) and V are packed row-major, V's rows padded to a multiple of W,
// and K transposed (Kt[d][key], keys padded to a multiple of kNR), all in fp32, so the two products
// are register-blocked FMA micro-kernels without tails:
//   scores  S[MR x kNR] += Q[r][d] (broadcast) * Kt[d][keys]   over d
//   output  O[MR x W*c] += P[r][j] (broadcast) * V[j][dims]     over keys j
// Keys go in blocks of kKeyBlock with the online-softmax rescale between blocks; a sequence no
// longer than kKeyBlock takes the exact one-block softmax. Scores live in the log2 domain (Q is
// pre-multiplied by scale * log2(e)) so the exponential is exp2. Padding is never computed on:
// only the real tokens of each sequence are touched.
// Options: rotary is applied to each Q and K row as it is packed (fp32, before the products); a
// window packs only the item's band of keys and, per block of query rows, runs only the key tiles
// that overlap the rows' windows (tiles aligned to kNR from position 0, so results do not depend on
// the work split); the relative bias (times log2(e)) is added to the scores and keys outside the
// window get -inf, in one pass over each block's scores.
#include "simd.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

#if defined(BERTRT_ISA_AVX512)
constexpr int kMR = 8, kNV = 2;  // 16 accumulators of 32 zmm
#elif defined(BERTRT_ISA_AVX2)
constexpr int kMR = 6, kNV = 2;  // 12 accumulators of 16 ymm
#else
constexpr int kMR = 4, kNV = 4;
#endif
constexpr int kNR = kNV * W;        // keys per score tile
constexpr int64_t kKeyBlock = 256;  // multiple of kNR for every variant
static_assert(kKeyBlock % kNR == 0, "key block must hold whole score tiles");

BERTRT_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

thread_local Scratch tls_scratch;  // one per OpenMP thread, kept across calls (no mmap per call)

// S[r][jt + 0 .. kNR) = sum_d Q[r][d] * Kt[d][jt + ...]
BERTRT_INLINE void score_tile(const float* q, int64_t d_count, const float* kt, int64_t kt_stride, float* s,
                              int64_t s_stride) {
  Vec acc[kMR][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = vzero();
  for (int64_t d = 0; d < d_count; ++d) {
    Vec k[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) k[v] = vload(kt + d * kt_stride + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      Vec qv = vset1(q[r * d_count + d]);
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] = vfmadd(qv, k[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) vstore(s + r * s_stride + v * W, acc[r][v]);
}

// O[r][0 .. kC*W) += sum_j P[r][j] * V[j][...], j < keys
template <int kC>
BERTRT_INLINE void value_tile(const float* p, int64_t p_stride, int64_t keys, const float* v,
                              int64_t v_stride, float* o, int64_t o_stride) {
  Vec acc[kMR][kC];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kC; ++c) acc[r][c] = vload(o + r * o_stride + c * W);
  for (int64_t j = 0; j < keys; ++j) {
    Vec vv[kC];
#pragma GCC unroll 4
    for (int c = 0; c < kC; ++c) vv[c] = vload(v + j * v_stride + c * W);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      Vec pv = vset1(p[r * p_stride + j]);
#pragma GCC unroll 4
      for (int c = 0; c < kC; ++c) acc[r][c] = vfmadd(pv, vv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kC; ++c) vstore(o + r * o_stride + c * W, acc[r][c]);
}

// Row r of a packed QKV token: q at +0, k at +heads*dim, v at +2*heads*dim.
template <class T>
void convert_row(const T* src, float* dst, int64_t n, float factor) {
  const Vec f = vset1(factor);
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(dst + i, vmul(vload(src + i), f));
  if (i < n) vstore_partial(dst + i, vmul(vload_partial(src + i, n - i), f), n - i);
}

// Every cache line of a head's row slice, kPrefetchRows tokens ahead: the slices sit 3 * heads * dim
// elements apart, a stride the hardware prefetchers do not follow, and a slice spans several lines.
constexpr int64_t kPrefetchRows = 4;
template <class T>
BERTRT_INLINE void prefetch_slice(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * int64_t(sizeof(T)); b += 64) __builtin_prefetch(c + b);
}

// dst[c * ld_dst + r] = src[r * ld_src + c] for r, c < 8.
BERTRT_INLINE void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
#if defined(BERTRT_ISA_AVX2) || defined(BERTRT_VEC512)
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
#else
  for (int i = 0; i < 8; ++i)
    for (int c = 0; c < 8; ++c) dst[c * ld_dst + i] = src[i * ld_src + c];
#endif
}

// Rotate-half rotary embedding of one row x[0 .. 2 * half) in place, cos/sin at the row's position.
BERTRT_INLINE void rotate_row(float* x, int64_t half, const float* cos, const float* sin) {
  int64_t k = 0;
  for (; k + W <= half; k += W) {
    const Vec x1 = vload(x + k), x2 = vload(x + half + k), c = vload(cos + k), s = vload(sin + k);
    vstore(x + k, vsub(vmul(x1, c), vmul(x2, s)));
    vstore(x + half + k, vfmadd(x1, s, vmul(x2, c)));
  }
  for (; k < half; ++k) {
    const float x1 = x[k], x2 = x[half + k];
    x[k] = x1 * cos[k] - x2 * sin[k];
    x[half + k] = x2 * cos[k] + x1 * sin[k];
  }
}

// Scores s[0 .. keys) of query i against keys k0 + j: -inf outside the window (window >= 0), plus
// log2(e) * bias[k0 + j - i] (bias already offset to the diagonal, or null) inside it.
BERTRT_INLINE void bias_and_mask(float* s, int64_t keys, int64_t k0, int64_t i, const float* bias,
                                 int64_t window) {
  int64_t lo = 0, hi = keys;
  if (window >= 0) {
    lo = i - window - k0;
    hi = i + window + 1 - k0;
    lo = lo < 0 ? 0 : (lo > keys ? keys : lo);
    hi = hi < lo ? lo : (hi > keys ? keys : hi);
    for (int64_t j = 0; j < lo; ++j) s[j] = -__builtin_inff();
    for (int64_t j = hi; j < keys; ++j) s[j] = -__builtin_inff();
  }
  if (bias == nullptr) return;
  const float* b = bias + k0 - i;
  const Vec log2e = vset1(kLog2e);
  int64_t j = lo;
  for (; j + W <= hi; j += W) vstore(s + j, vfmadd(vload(b + j), log2e, vload(s + j)));
  for (; j < hi; ++j) s[j] += b[j] * kLog2e;
}

template <class T>
void attend(const AttentionArgs& a, int64_t start, int64_t len, int64_t head, int64_t q_begin,
            int64_t q_end) {
  const int64_t dim = a.head_dim, heads = a.heads;
  const int64_t token_stride = 3 * heads * dim;
  const int64_t dim_padded = round_up(dim, W);
  const T* base = static_cast<const T*>(a.qkv) + start * token_stride + head * dim;
  T* out = static_cast<T*>(a.out) + start * heads * dim + head * dim;

  // Keys this item can see: all of them, or the band around its query rows (aligned down to kNR).
  const int64_t window = a.window;
  int64_t kbase = 0, kend = len;
  if (window >= 0) {
    kbase = q_begin - window > 0 ? (q_begin - window) / kNR * kNR : 0;
    kend = q_end + window < len ? q_end + window : len;
  }
  const int64_t band = kend - kbase, band_padded = round_up(band, kNR);
  const int64_t q_rows = q_end - q_begin;
  const int64_t scratch_floats = dim * band_padded + band * dim_padded + (q_rows + kMR) * dim +
                                 kMR * kKeyBlock + kMR * dim_padded + 2 * kMR;
  float* kt = tls_scratch.get<float>(sizeof(float) * size_t(scratch_floats));
  float* vp = kt + dim * band_padded;
  float* qp = vp + band * dim_padded;  // this item's query rows, scaled
  float* qb = qp + q_rows * dim;       // staging for the last, partial block of rows
  float* sb = qb + kMR * dim;
  float* ob = sb + kMR * kKeyBlock;
  float* row_max = ob + kMR * dim_padded;
  float* row_sum = row_max + kMR;
  const int64_t half = dim / 2;
  const float* cos = a.rotary_cos;
  const float* sin = a.rotary_sin;
  const float* bias =
      a.rel_bias ? a.rel_bias + head * (2 * a.bias_max_seqlen - 1) + a.bias_max_seqlen - 1 : nullptr;

  // Pack Q (scaled into the log2 domain), K transposed and V padded, converting to fp32 once for the
  // whole item; the rows kPrefetchRows tokens ahead are prefetched.
  const float q_factor = a.scale * kLog2e;
  for (int64_t i = q_begin; i < q_end; ++i) {
    prefetch_slice(base + (i + kPrefetchRows) * token_stride, dim);
    float* qrow = qp + (i - q_begin) * dim;
    convert_row(base + i * token_stride, qrow, dim, q_factor);
    if (cos) rotate_row(qrow, half, cos + i * half, sin + i * half);  // linear: scaling first is the same
  }
  // K rows go through a block of 8 so that whole 8 x 8 tiles are transposed in registers (one
  // scattered store per element measured ~7% of the kernel).
  alignas(64) float kblock[8 * kMaxHeadDim];
  for (int64_t j = kbase; j < kend; ++j) {
    prefetch_slice(base + (j + kPrefetchRows) * token_stride + heads * dim, dim);
    prefetch_slice(base + (j + kPrefetchRows) * token_stride + 2 * heads * dim, dim);
    const int64_t b = (j - kbase) % 8, j0 = j - b;
    float* krow = kblock + b * dim;
    convert_row(base + j * token_stride + heads * dim, krow, dim, 1.0f);
    if (cos) rotate_row(krow, half, cos + j * half, sin + j * half);
    if (b == 7 && dim % 8 == 0) {
      for (int64_t d0 = 0; d0 < dim; d0 += 8)
        transpose8x8(kblock + d0, dim, kt + d0 * band_padded + j0 - kbase, band_padded);
    } else if (j == kend - 1 || (b == 7 && dim % 8 != 0)) {
      for (int64_t r = 0; r <= b; ++r)
        for (int64_t d = 0; d < dim; ++d) kt[d * band_padded + j0 + r - kbase] = kblock[r * dim + d];
    }
    float* vrow = vp + (j - kbase) * dim_padded;
    convert_row(base + j * token_stride + 2 * heads * dim, vrow, dim, 1.0f);
    for (int64_t d = dim; d < dim_padded; ++d) vrow[d] = 0.0f;
  }
  for (int64_t d = 0; d < dim; ++d)
    for (int64_t j = band; j < band_padded; ++j) kt[d * band_padded + j] = 0.0f;

  for (int64_t q0 = q_begin; q0 < q_end; q0 += kMR) {
    const int64_t rows = q_end - q0 < kMR ? q_end - q0 : kMR;
    const float* q = qp + (q0 - q_begin) * dim;
    if (rows < kMR) {  // pad the last block with zero rows (their scores are discarded)
      for (int64_t i = 0; i < rows * dim; ++i) qb[i] = q[i];
      for (int64_t i = rows * dim; i < kMR * dim; ++i) qb[i] = 0.0f;
      q = qb;
    }
    for (int64_t r = 0; r < kMR; ++r) {
      row_max[r] = -__builtin_inff();
      row_sum[r] = 0.0f;
    }
    for (int64_t i = 0; i < kMR * dim_padded; ++i) ob[i] = 0.0f;

    // The key tiles these rows' windows overlap; tiles outside are never computed.
    int64_t k_lo = kbase, k_hi = kend;
    if (window >= 0) {
      k_lo = q0 - window > kbase ? (q0 - window) / kNR * kNR : kbase;
      k_hi = q0 + rows + window < kend ? q0 + rows + window : kend;
    }
    for (int64_t k0 = k_lo; k0 < k_hi; k0 += kKeyBlock) {
      const int64_t keys = k_hi - k0 < kKeyBlock ? k_hi - k0 : kKeyBlock;
      const int64_t keys_padded = round_up(keys, kNR);
      for (int64_t jt = 0; jt < keys_padded; jt += kNR)
        score_tile(q, dim, kt + k0 - kbase + jt, band_padded, sb + jt, kKeyBlock);

      // Online softmax: new running max, rescale of the old sum and output, p = 2^(s - max).
      for (int64_t r = 0; r < kMR; ++r) {
        float* s = sb + r * kKeyBlock;
        // padded rows (r >= rows) may sit past the sequence: no bias (its index would be out of range)
        if (bias || window >= 0) bias_and_mask(s, keys, k0, q0 + r, r < rows ? bias : nullptr, window);
        Vec mx = vset1(-__builtin_inff());
        int64_t j = 0;
        for (; j + W <= keys; j += W) mx = vmax(mx, vload(s + j));
        float m_block = vreduce_max(mx);
        for (; j < keys; ++j) m_block = s[j] > m_block ? s[j] : m_block;
        const float m_old = row_max[r];
        const float m_new = m_block > m_old ? m_block : m_old;
        if (m_new == -__builtin_inff()) {  // every key so far is outside this row's window
          for (j = 0; j < keys; ++j) s[j] = 0.0f;
          continue;
        }
        const Vec vm = vset1(m_new);
        Vec sum = vzero();
        j = 0;
        for (; j + W <= keys; j += W) {
          Vec pv = vexp2_nonpositive(vsub(vload(s + j), vm));
          vstore(s + j, pv);
          sum = vadd(sum, pv);
        }
        float block_sum = vreduce_add(sum);
        if (j < keys) {
          Vec pv = vexp2(vsub(vload_partial(s + j, keys - j), vm));
          vstore_partial(s + j, pv, keys - j);
          float tail[W];
          vstore(tail, pv);
          for (int64_t t = 0; t < keys - j; ++t) block_sum += tail[t];
        }
        if (m_old == -__builtin_inff()) {
          row_sum[r] = block_sum;
        } else {
          const float alpha = vreduce_max(vexp2(vset1(m_old - m_new)));  // all lanes equal
          row_sum[r] = row_sum[r] * alpha + block_sum;
          if (alpha != 1.0f) {
            const Vec va = vset1(alpha);
            for (int64_t d = 0; d < dim_padded; d += W)
              vstore(ob + r * dim_padded + d, vmul(vload(ob + r * dim_padded + d), va));
          }
        }
        row_max[r] = m_new;
      }

      const float* vblock = vp + (k0 - kbase) * dim_padded;
      int64_t d0 = 0;
      for (; d0 + kNV * W <= dim_padded; d0 += kNV * W)
        value_tile<kNV>(sb, kKeyBlock, keys, vblock + d0, dim_padded, ob + d0, dim_padded);
      for (; d0 < dim_padded; d0 += W)
        value_tile<1>(sb, kKeyBlock, keys, vblock + d0, dim_padded, ob + d0, dim_padded);
    }

    for (int64_t r = 0; r < rows; ++r) {
      const Vec inv = vset1(1.0f / row_sum[r]);
      T* o = out + (q0 + r) * heads * dim;
      const float* src = ob + r * dim_padded;
      int64_t d = 0;
      for (; d + W <= dim; d += W) vstore(o + d, vmul(vload(src + d), inv));
      if (d < dim) vstore_partial(o + d, vmul(vload(src + d), inv), dim - d);
    }
  }
}

struct Item {
  int32_t seq, head, q_begin, q_end;
};

template <class T>
void run(const AttentionArgs& a) {
  const int32_t* cu = a.cu_seqlens;
  const int threads = a.threads > 0 ? a.threads : 1;
  int64_t live = 0, max_len = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    int64_t len = cu[b + 1] - cu[b];
    if (len > 0) ++live;
    if (len > max_len) max_len = len;
  }
  if (live == 0) return;
  // Enough items for the threads: split the query rows of a (sequence, head) when the pairs alone
  // are too few (long sequences, small batches); each split re-packs K and V, so keep chunks long.
  const int64_t pairs = live * a.heads;
  const int64_t want = 4 * int64_t(threads);
  int64_t chunks = pairs >= want ? 1 : (want + pairs - 1) / pairs;
  int64_t min_rows = 4 * kMR > 32 ? 4 * kMR : 32;
  int64_t max_chunks = (max_len + min_rows - 1) / min_rows;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks < 1) chunks = 1;

  int64_t capacity = pairs * chunks;
  Item* items = static_cast<Item*>(std::malloc(size_t(capacity) * sizeof(Item)));
  int64_t count = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t len = cu[b + 1] - cu[b];
    if (len <= 0) continue;
    int64_t rows = round_up((len + chunks - 1) / chunks, kMR);
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t q = 0; q < len; q += rows)
        items[count++] = Item{int32_t(b), int32_t(h), int32_t(q), int32_t(q + rows < len ? q + rows : len)};
  }
  const int used = int(count < threads ? count : threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(used) if (used > 1)
  for (int64_t i = 0; i < count; ++i) {
    const Item& it = items[i];
    attend<T>(a, cu[it.seq], cu[it.seq + 1] - cu[it.seq], it.head, it.q_begin, it.q_end);
  }
  std::free(items);
}

}  // namespace

void attention(const AttentionArgs& a) {
  return dispatch_dtype<float, bf16, f16>(a.dtype,
                                          [&](auto tag) { return run<typename decltype(tag)::type>(a); });
}

}  // namespace bertrt::cpu::BERTRT_NS

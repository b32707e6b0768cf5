// AMX variant of the fused variable-length attention (bf16 input); fp32/fp16 inputs and the other
// ops use the AVX-512 code. Built with the AVX-512 flags plus -mamx-tile -mamx-bf16 -mamx-int8.
//
// Same work split and online softmax as attention.cpp, with both products on AMX-BF16 tiles
// (every tile 16 rows x 64 bytes, fp32 accumulation):
//   scores  S[16 x 32] : tmm0, tmm1 += Q[16 x 32 dims] (tmm2) . K^T VNNI-packed (tmm3, tmm4)
//   output  O[16 x 16] : tmm5 += P[16 x 32 keys] (tmm6, bf16) . V VNNI-packed (tmm7)
// Q and K go in as the bf16 they are; P is rounded to bf16 (flash-attention's choice on GPUs);
// the softmax itself (max, exp2, sums, rescale) stays fp32 on AVX-512. Head dims pad with zeros to
// 32 (scores) and 16 (output); keys pad to 32 and their probabilities are zeroed.
// Options as in attention.cpp: rotary on Q and K rows as they are packed (fp32, rounded to bf16 for
// the tiles), a window packs and visits only the key tiles (32-aligned from position 0) that the
// rows' windows overlap, and the relative bias and window mask go into the scores before the softmax.
//
// UNVERIFIED on hardware so far: the development machine has no AMX. tests/test_cpu_isa.py runs
// this variant against attention_ref wherever supported_isas() lists "amx".
#include <sys/syscall.h>
#include <unistd.h>

#include "simd.h"
#include "parallel.h"
#if defined(BERTRT_AMX_EMULATE)
#include "amx_emulation.h"
#endif

namespace bertrt::cpu::amx {

bool request_tile_permission() {
#if defined(__linux__)
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

namespace {

constexpr int kRows = 16;           // query rows per block = tile rows
constexpr int64_t kKeyBlock = 256;  // keys per online-softmax step, a multiple of 32

BERTRT_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "AMX tile configuration is 64 bytes");

void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

thread_local Scratch tls_scratch;

// Scores s[0 .. keys) (log2 domain) of query i against keys k0 + j: -inf outside the window
// (window >= 0), plus log2(e) * bias[k0 + j - i] (bias offset to the diagonal, or null) inside it.
void bias_and_mask(float* s, int64_t keys, int64_t k0, int64_t i, const float* bias, int64_t window) {
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
  for (int64_t j = lo; j < hi; ++j) s[j] += b[j] * kLog2e;
}

BERTRT_INLINE float bf16_to_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

BERTRT_INLINE uint16_t float_to_bf16(float f) {  // round to nearest even (inputs are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// One bf16 row of head_dim values, rotated (rotate-half rotary at the row's position) in fp32 and
// rounded back to bf16 into dst; without rotary (cos null) a copy.
void load_row(const uint16_t* src, uint16_t* dst, int64_t dim, const float* cos, const float* sin) {
  if (cos == nullptr) {
    std::memcpy(dst, src, size_t(dim) * 2);
    return;
  }
  const int64_t half = dim / 2;
  for (int64_t k = 0; k < half; ++k) {
    const float x1 = bf16_to_float(src[k]), x2 = bf16_to_float(src[half + k]);
    dst[k] = float_to_bf16(x1 * cos[k] - x2 * sin[k]);
    dst[half + k] = float_to_bf16(x2 * cos[k] + x1 * sin[k]);
  }
}

void attend(const AttentionArgs& a, int64_t start, int64_t len, int64_t head, int64_t q_begin,
            int64_t q_end) {
  const int64_t dim = a.head_dim, heads = a.heads, token_stride = 3 * heads * dim;
  const int64_t dim32 = round_up(dim, 32), dim16 = round_up(dim, 16);
  const int64_t d_chunks = dim32 / 32, d_tiles = dim16 / 16;
  // Keys this item can see: all, or the band around its query rows (aligned down to 32).
  const int64_t window = a.window;
  int64_t kbase = 0, kend = len;
  if (window >= 0) {
    kbase = q_begin - window > 0 ? (q_begin - window) / 32 * 32 : 0;
    kend = q_end + window < len ? q_end + window : len;
  }
  const int64_t len32 = round_up(kend - kbase, 32);
  const float* cos = a.rotary_cos;
  const float* sin = a.rotary_sin;
  const int64_t half = dim / 2;
  const float* bias =
      a.rel_bias ? a.rel_bias + head * (2 * a.bias_max_seqlen - 1) + a.bias_max_seqlen - 1 : nullptr;
  const bool adjust = bias != nullptr || window >= 0;
  const uint16_t* base = static_cast<const uint16_t*>(a.qkv) + start * token_stride + head * dim;
  bf16* out = static_cast<bf16*>(a.out) + start * heads * dim + head * dim;

  // Scratch: packed K and V (bf16), the Q block, scores, probabilities, output, row statistics.
  const int64_t k_bytes = round_up(len32 * dim32 * 2, 64), v_bytes = round_up(len32 * dim16 * 2, 64);
  const int64_t q_bytes = round_up(kRows * dim32 * 2, 64), s_bytes = kRows * kKeyBlock * 4;
  const int64_t p_bytes = kRows * kKeyBlock * 2, o_bytes = round_up(kRows * dim16 * 4, 64);
  unsigned char* mem = tls_scratch.get(k_bytes + v_bytes + q_bytes + s_bytes + p_bytes + o_bytes + 2 * 64);
  uint16_t* kpack = reinterpret_cast<uint16_t*>(mem);
  uint16_t* vpack = reinterpret_cast<uint16_t*>(mem + k_bytes);
  uint16_t* qb = reinterpret_cast<uint16_t*>(mem + k_bytes + v_bytes);
  float* sb = reinterpret_cast<float*>(mem + k_bytes + v_bytes + q_bytes);
  uint16_t* pb = reinterpret_cast<uint16_t*>(mem + k_bytes + v_bytes + q_bytes + s_bytes);
  float* ob = reinterpret_cast<float*>(mem + k_bytes + v_bytes + q_bytes + s_bytes + p_bytes);
  float* row_max = reinterpret_cast<float*>(mem + k_bytes + v_bytes + q_bytes + s_bytes + p_bytes + o_bytes);
  float* row_sum = row_max + kRows;

  // VNNI packing. K tile (16 keys, 32 dims): row r = dim pair, column n = key.
  // V tile (32 keys, 16 dims): row r = key pair, column n = dim.
  std::memset(kpack, 0, size_t(k_bytes));
  std::memset(vpack, 0, size_t(v_bytes));
  uint16_t krow[kMaxHeadDim];
  for (int64_t j = kbase; j < kend; ++j) {
    const uint16_t* v = base + j * token_stride + 2 * heads * dim;
    load_row(base + j * token_stride + heads * dim, krow, dim, cos ? cos + j * half : nullptr,
             sin ? sin + j * half : nullptr);
    const int64_t jj = j - kbase;
    uint16_t* kdst = kpack + (jj / 16) * d_chunks * 512 + (jj % 16) * 2;
    uint16_t* vdst = vpack + (jj / 32) * d_tiles * 512 + ((jj % 32) / 2) * 32 + (jj % 2);
    for (int64_t d = 0; d < dim; ++d) {
      kdst[(d / 32) * 512 + ((d % 32) / 2) * 32 + (d % 2)] = krow[d];
      vdst[(d / 16) * 512 + (d % 16) * 2] = v[d];
    }
  }

  const float q_factor = a.scale * kLog2e;
  for (int64_t q0 = q_begin; q0 < q_end; q0 += kRows) {
    const int64_t rows = q_end - q0 < kRows ? q_end - q0 : kRows;
    std::memset(qb, 0, size_t(q_bytes));
    for (int64_t r = 0; r < rows; ++r)
      load_row(base + (q0 + r) * token_stride, qb + r * dim32, dim, cos ? cos + (q0 + r) * half : nullptr,
               sin ? sin + (q0 + r) * half : nullptr);
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -__builtin_inff();
      row_sum[r] = 0.0f;
    }
    std::memset(ob, 0, size_t(o_bytes));

    // The key tiles these rows' windows overlap; tiles outside are never computed.
    int64_t k_first = kbase, k_last = kend;
    if (window >= 0) {
      k_first = q0 - window > kbase ? (q0 - window) / 32 * 32 : kbase;
      k_last = q0 + rows + window < kend ? q0 + rows + window : kend;
    }
    for (int64_t k0 = k_first; k0 < k_last; k0 += kKeyBlock) {
      const int64_t keys = k_last - k0 < kKeyBlock ? k_last - k0 : kKeyBlock;
      const int64_t keys32 = round_up(keys, 32);
      for (int64_t jt = 0; jt < keys32; jt += 32) {
        _tile_zero(0);
        _tile_zero(1);
        const uint16_t* k_lo = kpack + ((k0 - kbase + jt) / 16) * d_chunks * 512;
        const uint16_t* k_hi = k_lo + d_chunks * 512;
        for (int64_t c = 0; c < d_chunks; ++c) {
          _tile_loadd(2, qb + c * 32, dim32 * 2);
          _tile_loadd(3, k_lo + c * 512, 64);
          _tile_loadd(4, k_hi + c * 512, 64);
          _tile_dpbf16ps(0, 2, 3);
          _tile_dpbf16ps(1, 2, 4);
        }
        _tile_stored(0, sb + jt, kKeyBlock * 4);
        _tile_stored(1, sb + jt + 16, kKeyBlock * 4);
      }

      // With options the scores are first scaled into the log2 domain, biased and masked in place.
      const float row_factor = adjust ? 1.0f : q_factor;
      const Vec factor = vset1(row_factor);
      for (int r = 0; r < kRows; ++r) {
        float* s = sb + r * kKeyBlock;
        int64_t j = 0;
        if (adjust) {
          const Vec qf = vset1(q_factor);
          for (; j + W <= keys; j += W) vstore(s + j, vmul(vload(s + j), qf));
          for (; j < keys; ++j) s[j] *= q_factor;
          // padded rows (r >= rows) may sit past the sequence: no bias (its index would be out of range)
          bias_and_mask(s, keys, k0, q0 + r, r < rows ? bias : nullptr, window);
          j = 0;
        }
        Vec mx = vset1(-__builtin_inff());
        for (; j + W <= keys; j += W) mx = vmax(mx, vmul(vload(s + j), factor));
        float m_block = vreduce_max(mx);
        for (; j < keys; ++j) m_block = s[j] * row_factor > m_block ? s[j] * row_factor : m_block;
        const float m_old = row_max[r];
        const float m_new = m_block > m_old ? m_block : m_old;
        if (m_new == -__builtin_inff()) {  // every key so far is outside this row's window
          for (j = 0; j < keys32; ++j) s[j] = 0.0f;
          for (j = 0; j < keys32; j += W)
            vstore(reinterpret_cast<bf16*>(pb + r * kKeyBlock + j), vload(s + j));
          continue;
        }
        const Vec neg_m = vset1(-m_new);
        Vec sum = vzero();
        for (j = 0; j + W <= keys; j += W) {
          Vec p = vexp2(vfmadd(vload(s + j), factor, neg_m));
          vstore(s + j, p);
          sum = vadd(sum, p);
        }
        float block_sum = vreduce_add(sum);
        for (; j < keys; ++j) {
          s[j] = vreduce_max(vexp2(vset1(s[j] * row_factor - m_new)));
          block_sum += s[j];
        }
        for (j = keys; j < keys32; ++j) s[j] = 0.0f;  // padded keys: probability 0
        for (j = 0; j < keys32; j += W) vstore(reinterpret_cast<bf16*>(pb + r * kKeyBlock + j), vload(s + j));
        if (m_old == -__builtin_inff()) {
          row_sum[r] = block_sum;
        } else {
          const float alpha = vreduce_max(vexp2(vset1(m_old - m_new)));
          row_sum[r] = row_sum[r] * alpha + block_sum;
          const Vec va = vset1(alpha);
          for (int64_t d = 0; d < dim16; d += W)
            vstore(ob + r * dim16 + d, vmul(vload(ob + r * dim16 + d), va));
        }
        row_max[r] = m_new;
      }

      for (int64_t dt = 0; dt < d_tiles; ++dt) {
        _tile_loadd(5, ob + dt * 16, dim16 * 4);
        for (int64_t kc = 0; kc < keys32 / 32; ++kc) {
          _tile_loadd(6, pb + kc * 32, kKeyBlock * 2);
          _tile_loadd(7, vpack + (((k0 - kbase) / 32 + kc) * d_tiles + dt) * 512, 64);
          _tile_dpbf16ps(5, 6, 7);
        }
        _tile_stored(5, ob + dt * 16, dim16 * 4);
      }
    }

    for (int64_t r = 0; r < rows; ++r) {
      const Vec inv = vset1(1.0f / row_sum[r]);
      bf16* o = out + (q0 + r) * heads * dim;
      const float* src = ob + r * dim16;
      int64_t d = 0;
      for (; d + W <= dim; d += W) vstore(o + d, vmul(vload(src + d), inv));
      if (d < dim) vstore_partial(o + d, vmul(vload(src + d), inv), dim - d);
    }
  }
}

struct Item {
  int32_t seq, head, q_begin, q_end;
};

void run_bf16(const AttentionArgs& a) {
  const int32_t* cu = a.cu_seqlens;
  const int threads = a.threads > 0 ? a.threads : 1;
  int64_t live = 0, max_len = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t len = cu[b + 1] - cu[b];
    if (len > 0) ++live;
    if (len > max_len) max_len = len;
  }
  if (live == 0) return;
  const int64_t pairs = live * a.heads, want = 4 * int64_t(threads);
  int64_t chunks = pairs >= want ? 1 : (want + pairs - 1) / pairs;
  const int64_t max_chunks = (max_len + 63) / 64;  // keep >= 64 query rows per item
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks < 1) chunks = 1;
  Item* items = static_cast<Item*>(std::malloc(size_t(pairs * chunks) * sizeof(Item)));
  int64_t count = 0;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t len = cu[b + 1] - cu[b];
    if (len <= 0) continue;
    const int64_t rows = round_up((len + chunks - 1) / chunks, kRows);
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t q = 0; q < len; q += rows)
        items[count++] = Item{int32_t(b), int32_t(h), int32_t(q), int32_t(q + rows < len ? q + rows : len)};
  }
  const int used = int(count < threads ? count : threads);
#pragma omp parallel num_threads(used) if (used > 1)
  {
    configure_tiles();  // tile configuration is per thread
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) {
      const Item& it = items[i];
      attend(a, cu[it.seq], cu[it.seq + 1] - cu[it.seq], it.head, it.q_begin, it.q_end);
    }
    _tile_release();
  }
  std::free(items);
}

}  // namespace

void attention(const AttentionArgs& args) {
  if (args.dtype == DType::BF16) run_bf16(args);
#if !defined(BERTRT_AMX_EMULATE)
  else
    avx512::attention(args);
#endif
}

}  // namespace bertrt::cpu::amx

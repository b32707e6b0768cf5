// Fused variable-length (padding-free) self-attention for BERT-sized sequences.
//
//   qkv (total, 3, heads, D), cu_seqlens (batch + 1) int32  ->  out (total, heads, D)
//
// Grid: x = sequence * heads + head, y = query-tile slot. A CTA walks the query tiles
// blockIdx.y, blockIdx.y + gridDim.y, ... of its sequence until it passes the sequence's length, so
// the result is complete whatever max_seqlen says (max_seqlen only sizes the grid) and no tile is
// spent on padding: the sequence boundaries come from cu_seqlens.
//
// Two paths:
//  * attention_mma_kernel (fp16 on sm_75+, bf16 on sm_80+): FlashAttention-2 style. 4 warps, a 64-row
//    query tile (16 rows per warp), K/V tiles of BN keys in shared memory, S = Q K^T and O += P V with
//    mma.sync m16n8k16 (fp32 accumulate; on sm_75 each k16 step is two m16n8k8), fragments read with
//    ldmatrix, online softmax in registers (exp2 with log2(e) folded into the scale). The head dim is
//    padded to DP in {32, 64, 96, 128} with zeros (any D <= 128 works).
//  * attention_simt_kernel (fp32 everywhere, bf16 on sm_75 which has no bf16 mma): the same online
//    softmax in fp32 CUDA-core math; 16-row query tiles, 32-key K/V tiles in shared memory.
//
// Options (AttentionOptions; runtime switches, so one instance per tile shape serves every model):
// rotary rotates the Q and K tiles in shared memory right after they are loaded (fp32 math, rounded
// back to T in the mma path); a window makes a query tile visit only the key tiles overlapping
// [m0 - window, m0 + BM + window) and masks the keys outside |i - j| <= window (a row whose keys are
// all masked so far exponentiates against 0, not -inf, so nothing becomes NaN); the relative bias is
// read from global memory (L1/L2-resident: heads * (2 L - 1) floats) and added to the base-2 scores.
// UNVERIFIED ON A GPU: the options compile spill-free for sm_75..90 (tests/test_cuda_build.py), but
// no GPU has run them yet; tests/test_attention.py compares them with attention_ref where one exists.
#include <cfloat>
#include <cmath>
#include <tuple>

#include "common.cuh"

namespace bertrt::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------
// Shared-memory tile loader: ROWS rows of D elements (zero-filled to DP columns and past valid_rows).
// vec: 16-byte copies (D % 8 == 0 and 16-byte aligned global rows), else element by element.
// ---------------------------------------------------------------------------------------------
template <typename T, int ROWS, int DP, int LD, int THREADS>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, const T* __restrict__ src, int64_t src_stride,
                                          int valid_rows, int D, bool vec) {
  if (vec) {
    constexpr int kChunks = DP / 8;
    for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += THREADS) {
      const int r = idx / kChunks;
      const int c = (idx % kChunks) * 8;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (r < valid_rows && c < D) v = *reinterpret_cast<const uint4*>(src + r * src_stride + c);
      *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * DP; idx += THREADS) {
      const int r = idx / DP;
      const int c = idx % DP;
      T v = from_float<T>(0.0f);
      if (r < valid_rows && c < D) v = src[r * src_stride + c];
      dst[r * LD + c] = v;
    }
  }
}

// Rotate-half rotary embedding of a shared tile in place: rows [0, valid_rows) at positions
// first_pos + row, columns k and k + D / 2 paired. Callers sync before (the tile is loaded) and after.
template <typename T, int LD, int THREADS>
__device__ __forceinline__ void rotate_tile(T* tile, int valid_rows, int first_pos, int D, const float* cos,
                                            const float* sin) {
  const int half = D / 2;
  for (int idx = threadIdx.x; idx < valid_rows * half; idx += THREADS) {
    const int r = idx / half;
    const int k = idx % half;
    const float c = cos[(first_pos + r) * half + k], s = sin[(first_pos + r) * half + k];
    const float x1 = to_float(tile[r * LD + k]), x2 = to_float(tile[r * LD + half + k]);
    tile[r * LD + k] = from_float<T>(x1 * c - x2 * s);
    tile[r * LD + half + k] = from_float<T>(x2 * c + x1 * s);
  }
}

// Score of query row `row` against key `key` (both inside the sequence of length len), base 2:
// -inf for padding keys and keys outside the window, plus log2(e) * the relative bias.
__device__ __forceinline__ float adjust_score(float s, int row, int key, int len, const float* bias,
                                              int bias_max_seqlen, int window) {
  if (key >= len) return -INFINITY;
  if (window >= 0 && abs(key - row) > window) return -INFINITY;
  if (bias != nullptr && row < len) s += bias[key - row + bias_max_seqlen - 1] * kLog2e;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators. Fragment layout (g = lane / 4, t = lane % 4):
//   a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   b0 = B[2t..2t+1][g], b1 = B[2t+8..][g];  d0,d1 = D[g][2t..2t+1], d2,d3 = D[g+8][2t..2t+1]
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                  uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  // sm_75: m16n8k16 = m16n8k8 on k 0..7 (a0, a1, b0) then on k 8..15 (a2, a3, b1).
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b0));
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[2]), "r"(a[3]), "r"(b1));
#else
  __trap();
#endif
}

// (unreferenced when compiling for sm_75, where bf16 goes to the SIMT kernel)
#pragma nv_diag_suppress 177
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: the host sends bf16 on sm < 80 to the SIMT kernel
#endif
}
#pragma nv_diag_default 177

// Two fp32 values -> one 32-bit register of two T (lo in the low half, as mma expects).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const typename Pair<T>::type p = Pair<T>::from_float2(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&p);
}

template <typename T>
__host__ __device__ constexpr bool kMmaSupported() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return std::is_same<T, __half>::value;
#else
  return true;
#endif
}

template <typename T, int DP, int BN>
__global__ void __launch_bounds__(128, 1)  // min blocks 1: lets ptxas use up to 255 registers (no spills)
    attention_mma_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ cu_seqlens,
                         T* __restrict__ out, int heads, int D, float scale_log2, bool vec_in, bool vec_out,
                         AttentionOptions opt) {
  if constexpr (!kMmaSupported<T>()) {
    __trap();
  } else {
    constexpr int kWarps = 4;
    constexpr int kThreads = 32 * kWarps;
    constexpr int BM = 16 * kWarps;
    constexpr int LD = DP + 8;  // +16 bytes per row: conflict-free ldmatrix, rows stay 16-byte aligned
    static_assert(DP % 16 == 0 && BN % 16 == 0, "tile sizes must be multiples of 16");
    __shared__ __align__(16) T sQ[BM * LD];
    __shared__ __align__(16) T sK[BN * LD];
    __shared__ __align__(16) T sV[BN * LD];

    const int seq = blockIdx.x / heads;
    const int head = blockIdx.x % heads;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int64_t tok_stride = 3LL * heads * D;
    const T* q_base = qkv + start * tok_stride + static_cast<int64_t>(head) * D;
    const T* k_base = q_base + static_cast<int64_t>(heads) * D;
    const T* v_base = k_base + static_cast<int64_t>(heads) * D;
    const int64_t out_stride = static_cast<int64_t>(heads) * D;
    T* out_base = out + start * out_stride + static_cast<int64_t>(head) * D;

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    // ldmatrix row addresses: lane supplies row (lane % 8) of 8x8 matrix (lane / 8).
    const int lm_row = (lane & 7) + ((lane >> 3) & 1) * 8;  // A operand (Q) and V (trans)
    const int lm_col = (lane >> 4) * 8;
    const int lk_row = (lane & 7) + (lane >> 4) * 8;  // K operand
    const int lk_col = ((lane >> 3) & 1) * 8;
    const float* bias =
        opt.rel_bias ? opt.rel_bias + static_cast<int64_t>(head) * (2 * opt.bias_max_seqlen - 1) : nullptr;
    const bool masked = bias != nullptr || opt.window >= 0;

    for (int m0 = blockIdx.y * BM; m0 < len; m0 += gridDim.y * BM) {
      __syncthreads();  // the previous tile's readers of sQ / sK / sV are done
      load_tile<T, BM, DP, LD, kThreads>(sQ, q_base + m0 * tok_stride, tok_stride, len - m0, D, vec_in);
      if (opt.rotary_cos) {
        __syncthreads();
        rotate_tile<T, LD, kThreads>(sQ, min(BM, len - m0), m0, D, opt.rotary_cos, opt.rotary_sin);
      }

      float o[DP / 8][4];
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
      float row_max[2] = {-INFINITY, -INFINITY};
      float row_sum[2] = {0.0f, 0.0f};  // this thread's partial sums; reduced over the quad at the end

      // the key tiles this query tile's windows overlap (all of them without a window)
      const int n_first = opt.window >= 0 ? max(0, m0 - opt.window) / BN * BN : 0;
      const int n_last = opt.window >= 0 ? min(len, m0 + BM + opt.window) : len;
      for (int n0 = n_first; n0 < n_last; n0 += BN) {
        __syncthreads();  // everyone is done with the previous K / V tile
        load_tile<T, BN, DP, LD, kThreads>(sK, k_base + n0 * tok_stride, tok_stride, len - n0, D, vec_in);
        load_tile<T, BN, DP, LD, kThreads>(sV, v_base + n0 * tok_stride, tok_stride, len - n0, D, vec_in);
        if (opt.rotary_cos) {
          __syncthreads();
          rotate_tile<T, LD, kThreads>(sK, min(BN, len - n0), n0, D, opt.rotary_cos, opt.rotary_sin);
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x BN keys.
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
          uint32_t a[4];
          ldmatrix_x4(a, &sQ[(warp * 16 + lm_row) * LD + kk * 16 + lm_col]);
#pragma unroll
          for (int nn = 0; nn < BN / 16; ++nn) {
            uint32_t b[4];
            ldmatrix_x4(b, &sK[(nn * 16 + lk_row) * LD + kk * 16 + lk_col]);
            mma_16816<T>(s[2 * nn], a, b[0], b[1]);
            mma_16816<T>(s[2 * nn + 1], a, b[2], b[3]);
          }
        }

        // Online softmax. Element e of s[j] is row g + 8 * (e / 2), key n0 + 8 j + 2 t + e % 2.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = n0 + 8 * j + 2 * t + (e & 1);
            if (masked) {
              const int row = m0 + warp * 16 + g + 8 * (e >> 1);
              s[j][e] =
                  adjust_score(s[j][e] * scale_log2, row, key, len, bias, opt.bias_max_seqlen, opt.window);
            } else {
              s[j][e] = key < len ? s[j][e] * scale_log2 : -INFINITY;
            }
            tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[j][e]);
          }
        }
        float alpha[2], row_ref[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // the four threads of a quad hold one row
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
          // without a window key n0 < len is valid, so the new max is finite; with one a row may have
          // seen no key yet (-inf): exponentiate against 0 then
          const float new_max = fmaxf(row_max[r], tile_max[r]);
          const float ref = new_max == -INFINITY ? 0.0f : new_max;
          alpha[r] = exp2f(row_max[r] - ref);  // 0 on the first tile (row_max = -inf)
          row_max[r] = new_max;
          row_ref[r] = ref;
          row_sum[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[j][e] = exp2f(s[j][e] - row_ref[e >> 1]);  // masked keys: exp2(-inf) = 0
            row_sum[e >> 1] += s[j][e];
          }
        }
#pragma unroll
        for (int j = 0; j < DP / 8; ++j) {
          o[j][0] *= alpha[0];
          o[j][1] *= alpha[0];
          o[j][2] *= alpha[1];
          o[j][3] *= alpha[1];
        }

        // O += P V. P's A fragment for keys 16 kk .. 16 kk + 15 is made of S tiles 2 kk and 2 kk + 1.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          uint32_t a[4];
          a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
          a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
          a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
          a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
          for (int nn = 0; nn < DP / 16; ++nn) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, &sV[(kk * 16 + lm_row) * LD + nn * 16 + lm_col]);
            mma_16816<T>(o[2 * nn], a, b[0], b[1]);
            mma_16816<T>(o[2 * nn + 1], a, b[2], b[3]);
          }
        }
      }

      // Normalize and stage this warp's 16 rows in its own rows of sQ (only this warp read them).
      float inv[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float l = row_sum[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = l > 0.0f ? 1.0f / l : 0.0f;  // l >= 1 for real rows: the row's maximum contributes exp2(0)
      }
      __syncwarp();
      T* stage = sQ + warp * 16 * LD;
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) {
        const int c = 8 * j + 2 * t;
        *reinterpret_cast<uint32_t*>(&stage[g * LD + c]) = pack2<T>(o[j][0] * inv[0], o[j][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(&stage[(g + 8) * LD + c]) = pack2<T>(o[j][2] * inv[1], o[j][3] * inv[1]);
      }
      __syncwarp();
      const int row0 = m0 + warp * 16;
      const int rows = min(16, len - row0);  // may be <= 0 for the last tile
      if (vec_out) {
        const int chunks = D / 8;
        for (int idx = lane; idx < rows * chunks; idx += 32) {
          const int r = idx / chunks;
          const int c = (idx % chunks) * 8;
          *reinterpret_cast<uint4*>(out_base + (row0 + r) * out_stride + c) =
              *reinterpret_cast<const uint4*>(&stage[r * LD + c]);
        }
      } else {
        for (int idx = lane; idx < rows * D; idx += 32) {
          const int r = idx / D;
          const int c = idx % D;
          out_base[(row0 + r) * out_stride + c] = stage[r * LD + c];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SIMT fp32 path. 4 warps x 4 query rows; a K/V tile has 32 keys, one per lane for the scores; for
// P V each lane owns the dims lane, lane + 32, ... (DC = ceil(D / 32) of them).
// ---------------------------------------------------------------------------------------------
template <typename T, int DC>
__global__ void __launch_bounds__(128,
                                  1)  // min blocks 1: without it ptxas caps DC = 1 at 64 registers and spills
    attention_simt_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ cu_seqlens,
                          T* __restrict__ out, int heads, int D, float scale_log2, AttentionOptions opt) {
  constexpr int kWarps = 4;
  constexpr int kThreads = 32 * kWarps;
  constexpr int RPW = 4;  // query rows per warp
  constexpr int BM = RPW * kWarps;
  constexpr int BN = 32;
  constexpr int DM = 32 * DC;
  __shared__ float sQ[BM][DM];
  __shared__ float sK[BN][DM + 1];  // +1: lane-per-key reads sK[lane][d] are conflict-free
  __shared__ float sV[BN][DM];

  const int seq = blockIdx.x / heads;
  const int head = blockIdx.x % heads;
  const int start = cu_seqlens[seq];
  const int len = cu_seqlens[seq + 1] - start;
  const int64_t tok_stride = 3LL * heads * D;
  const T* q_base = qkv + start * tok_stride + static_cast<int64_t>(head) * D;
  const T* k_base = q_base + static_cast<int64_t>(heads) * D;
  const T* v_base = k_base + static_cast<int64_t>(heads) * D;
  const int64_t out_stride = static_cast<int64_t>(heads) * D;
  T* out_base = out + start * out_stride + static_cast<int64_t>(head) * D;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const float* bias =
      opt.rel_bias ? opt.rel_bias + static_cast<int64_t>(head) * (2 * opt.bias_max_seqlen - 1) : nullptr;

  for (int m0 = blockIdx.y * BM; m0 < len; m0 += gridDim.y * BM) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < BM * DM; idx += kThreads) {
      const int r = idx / DM;
      const int c = idx % DM;
      sQ[r][c] = (m0 + r < len && c < D) ? to_float(q_base[(m0 + r) * tok_stride + c]) * scale_log2 : 0.0f;
    }
    if (opt.rotary_cos) {  // scaling first is the same: the rotation is linear
      __syncthreads();
      rotate_tile<float, DM, kThreads>(&sQ[0][0], min(BM, len - m0), m0, D, opt.rotary_cos, opt.rotary_sin);
    }
    float acc[RPW][DC];
    float row_max[RPW], row_sum[RPW];
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.0f;  // per-lane partial
#pragma unroll
      for (int c = 0; c < DC; ++c) acc[r][c] = 0.0f;
    }

    const int n_first = opt.window >= 0 ? max(0, m0 - opt.window) / BN * BN : 0;
    const int n_last = opt.window >= 0 ? min(len, m0 + BM + opt.window) : len;
    for (int n0 = n_first; n0 < n_last; n0 += BN) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < BN * DM; idx += kThreads) {
        const int r = idx / DM;
        const int c = idx % DM;
        const bool ok = n0 + r < len && c < D;
        sK[r][c] = ok ? to_float(k_base[(n0 + r) * tok_stride + c]) : 0.0f;
        sV[r][c] = ok ? to_float(v_base[(n0 + r) * tok_stride + c]) : 0.0f;
      }
      if (opt.rotary_cos) {
        __syncthreads();
        rotate_tile<float, DM + 1, kThreads>(&sK[0][0], min(BN, len - n0), n0, D, opt.rotary_cos,
                                             opt.rotary_sin);
      }
      __syncthreads();

      float s[RPW];
#pragma unroll
      for (int r = 0; r < RPW; ++r) s[r] = 0.0f;
#pragma unroll 8
      for (int d = 0; d < DM; ++d) {
        const float k = sK[lane][d];
#pragma unroll
        for (int r = 0; r < RPW; ++r) s[r] = fmaf(sQ[warp * RPW + r][d], k, s[r]);
      }
#pragma unroll
      for (int r = 0; r < RPW; ++r) {
        const float sv =
            adjust_score(s[r], m0 + warp * RPW + r, n0 + lane, len, bias, opt.bias_max_seqlen, opt.window);
        // finite without a window (lane 0's key is valid); with one a row may have seen no key yet
        const float new_max = fmaxf(row_max[r], warp_max(sv));
        const float ref = new_max == -INFINITY ? 0.0f : new_max;
        const float alpha = exp2f(row_max[r] - ref);
        row_max[r] = new_max;
        s[r] = exp2f(sv - ref);
        row_sum[r] = row_sum[r] * alpha + s[r];
#pragma unroll
        for (int c = 0; c < DC; ++c) acc[r][c] *= alpha;
      }
#pragma unroll 4
      for (int k = 0; k < BN; ++k) {
        float p[RPW];
#pragma unroll
        for (int r = 0; r < RPW; ++r) p[r] = __shfl_sync(0xffffffffu, s[r], k);
#pragma unroll
        for (int c = 0; c < DC; ++c) {
          const float v = sV[k][lane + 32 * c];
#pragma unroll
          for (int r = 0; r < RPW; ++r) acc[r][c] = fmaf(p[r], v, acc[r][c]);
        }
      }
    }

#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      const float l = warp_sum(row_sum[r]);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // 0 only for rows past the sequence (not stored)
      const int row = m0 + warp * RPW + r;
      if (row < len) {
#pragma unroll
        for (int c = 0; c < DC; ++c) {
          const int d = lane + 32 * c;
          if (d < D) out_base[row * out_stride + d] = from_float<T>(acc[r][c] * inv);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host dispatch
// ---------------------------------------------------------------------------------------------
constexpr int kMaxGridY = 65535;

template <typename T, int DP, int BN>
cudaError_t launch_mma(const void* qkv, const int32_t* cu, void* out, int batch, int heads, int D,
                       int max_seqlen, float scale_log2, cudaStream_t stream, const AttentionOptions& opt) {
  constexpr int BM = 64;
  const int tiles = max_seqlen > 0 ? ceil_div(max_seqlen, BM) : 1;
  const dim3 grid(static_cast<unsigned>(batch) * static_cast<unsigned>(heads),
                  static_cast<unsigned>(tiles < kMaxGridY ? tiles : kMaxGridY));
  const bool vec_in = D % 8 == 0 && aligned16(qkv);
  const bool vec_out = D % 8 == 0 && aligned16(out);
  attention_mma_kernel<T, DP, BN><<<grid, 128, 0, stream>>>(
      static_cast<const T*>(qkv), cu, static_cast<T*>(out), heads, D, scale_log2, vec_in, vec_out, opt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_mma(const void* qkv, const int32_t* cu, void* out, int batch, int heads, int D,
                         int max_seqlen, float scale_log2, cudaStream_t stream, const AttentionOptions& opt) {
  const auto args = std::make_tuple(qkv, cu, out, batch, heads, D, max_seqlen, scale_log2, stream, opt);
  if (D <= 32) return std::apply(launch_mma<T, 32, 64>, args);
  if (D <= 64) return std::apply(launch_mma<T, 64, 64>, args);
  if (D <= 96) return std::apply(launch_mma<T, 96, 32>, args);
  return std::apply(launch_mma<T, 128, 32>, args);
}

template <typename T, int DC>
cudaError_t launch_simt(const void* qkv, const int32_t* cu, void* out, int batch, int heads, int D,
                        int max_seqlen, float scale_log2, cudaStream_t stream, const AttentionOptions& opt) {
  constexpr int BM = 16;
  const int tiles = max_seqlen > 0 ? ceil_div(max_seqlen, BM) : 1;
  const dim3 grid(static_cast<unsigned>(batch) * static_cast<unsigned>(heads),
                  static_cast<unsigned>(tiles < kMaxGridY ? tiles : kMaxGridY));
  attention_simt_kernel<T, DC><<<grid, 128, 0, stream>>>(static_cast<const T*>(qkv), cu, static_cast<T*>(out),
                                                         heads, D, scale_log2, opt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_simt(const void* qkv, const int32_t* cu, void* out, int batch, int heads, int D,
                          int max_seqlen, float scale_log2, cudaStream_t stream,
                          const AttentionOptions& opt) {
  const auto args = std::make_tuple(qkv, cu, out, batch, heads, D, max_seqlen, scale_log2, stream, opt);
  if (D <= 32) return std::apply(launch_simt<T, 1>, args);
  if (D <= 64) return std::apply(launch_simt<T, 2>, args);
  if (D <= 96) return std::apply(launch_simt<T, 3>, args);
  return std::apply(launch_simt<T, 4>, args);
}

}  // namespace

AttentionPath attention_auto_path(DType dtype, int sm) {
  if (dtype == DType::F16 && sm >= 75) return AttentionPath::kTensorCore;
  if (dtype == DType::BF16 && sm >= 80) return AttentionPath::kTensorCore;
  return AttentionPath::kSimt;
}

cudaError_t launch_attention(const void* qkv, const int32_t* cu_seqlens, void* out, int batch, int heads,
                             int head_dim, int max_seqlen, float scale, DType dtype, AttentionPath path,
                             cudaStream_t stream, const AttentionOptions& options) {
  if (batch == 0 || heads == 0) return cudaSuccess;
  const int sm = current_device_sm();
  const AttentionPath best = attention_auto_path(dtype, sm);
  if (path == AttentionPath::kAuto) path = best;
  if (path == AttentionPath::kTensorCore && best != AttentionPath::kTensorCore) return cudaErrorNotSupported;
  const float scale_log2 = scale * kLog2e;
  if (path == AttentionPath::kTensorCore) {
    if (dtype == DType::F16)
      return dispatch_mma<__half>(qkv, cu_seqlens, out, batch, heads, head_dim, max_seqlen, scale_log2,
                                  stream, options);
    return dispatch_mma<__nv_bfloat16>(qkv, cu_seqlens, out, batch, heads, head_dim, max_seqlen, scale_log2,
                                       stream, options);
  }
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return dispatch_simt<T>(qkv, cu_seqlens, out, batch, heads, head_dim, max_seqlen, scale_log2, stream,
                            options);
  });
}

int current_device_sm() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major * 10 + minor;
}

}  // namespace bertrt::cuda

// y = act(x @ W^T + bias) in fp32 with W prepacked once: the GEMM of every BERT linear layer.
//
// Why our own GEMM: MKL's sgemm takes slow paths on AMD CPUs, and a per-call GEMM cannot fuse the
// bias and GELU into its epilogue. The weight (N, K) is packed at load time into column panels of
// kPanel = 16 outputs, each stored k-major: panel p holds W[p*16 + j][k] at [p][k][j], zero padded
// in N. One panel row is then one contiguous 64-byte load for every k, whatever the ISA.
//
// Blocking (Goto/BLIS style, sized for 32 KiB L1 and 512 KiB L2 per core):
//   threads split the panels (N), so each thread reads all of x and only its share of W;
//   an MC-row block of x (MC x KC floats, <= 192 KiB) stays in L2 while every panel of the thread
//   streams by, and a panel's KC x 16 slice (<= 24 KiB) stays in L1 across the block's row tiles;
//   the micro-kernel keeps an MR x 16 tile of y in registers (AVX2: 6 x 2 ymm = 12 accumulators)
//   and reads x in place: packing x measured no faster on this shape range (M <= a few thousand,
//   K <= 3072) and costs a copy per call.
#include <array>
#include <utility>

#include "simd.h"
// after simd.h, which names the variant namespace
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

constexpr int kPanel = 16;             // outputs per packed panel (fixed, so packing is ISA-independent)
constexpr int kVecs = kPanel / W;      // vectors per tile row
constexpr int kMr = W == 16 ? 12 : 6;  // rows per register tile: 12 accumulators on AVX2
constexpr int64_t kMc = 128;           // rows of x per L2 block (x block <= 192 KiB)
constexpr int64_t kKcMax = 384;        // depth per L1 block (panel slice <= 24 KiB)

template <int kAct>
BERTRT_INLINE Vec activate(Vec v) {
  if constexpr (kAct == 1)
    return vgelu_erf_fast(v);
  else if constexpr (kAct == 2)
    return vgelu_tanh(v);
  else
    return v;
}

// One MR x 16 tile over depth kb (x: the tile's first row, rows ldx apart): acc = (first ? 0 : y) + x[:,
// k0:k0+kb] @ panel; on the last depth block the epilogue adds the bias and applies the activation. `cols` <
// 16 only in the last panel.
template <int MR, int kAct>
void tile(const float* x, int64_t ldx, const float* panel, int64_t kb, float* y, int64_t ldy, int cols,
          const float* bias, bool first, bool last) {
  Vec acc[MR][kVecs];
  alignas(64) float spill[MR][kPanel];
  if (first) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < kVecs; ++v) acc[i][v] = vzero();
  } else if (cols == kPanel) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < kVecs; ++v) acc[i][v] = vload(y + i * ldy + v * W);
  } else {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < kPanel; ++j) spill[i][j] = j < cols ? y[i * ldy + j] : 0.0f;
      for (int v = 0; v < kVecs; ++v) acc[i][v] = vload(&spill[i][v * W]);
    }
  }
  for (int64_t k = 0; k < kb; ++k) {
    Vec b[kVecs];
    for (int v = 0; v < kVecs; ++v) b[v] = vload(panel + k * kPanel + v * W);
    for (int i = 0; i < MR; ++i) {
      const Vec a = vset1(x[i * ldx + k]);
      for (int v = 0; v < kVecs; ++v) acc[i][v] = vfmadd(a, b[v], acc[i][v]);
    }
  }
  if (last) {
    for (int v = 0; v < kVecs; ++v) {
      const Vec bv = bias ? vload(bias + v * W) : vzero();
      for (int i = 0; i < MR; ++i) acc[i][v] = activate<kAct>(vadd(acc[i][v], bv));
    }
  }
  if (cols == kPanel) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < kVecs; ++v) vstore(y + i * ldy + v * W, acc[i][v]);
  } else {
    for (int i = 0; i < MR; ++i) {
      for (int v = 0; v < kVecs; ++v) vstore(&spill[i][v * W], acc[i][v]);
      for (int j = 0; j < cols; ++j) y[i * ldy + j] = spill[i][j];
    }
  }
}

template <int kAct>
using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int, const float*,
                        bool, bool);

template <int kAct, int... Rows>
constexpr auto make_tiles(std::integer_sequence<int, Rows...>) {
  return std::array<TileFn<kAct>, sizeof...(Rows)>{&tile<Rows + 1, kAct>...};
}

template <int kAct>
void run(const LinearArgs& a) {
  static constexpr auto tiles = make_tiles<kAct>(std::make_integer_sequence<int, kMr>{});
  const float* x = static_cast<const float*>(a.x);
  const float* packed = a.packed_weight;
  float* y = static_cast<float*>(a.out);
  const int64_t m = a.m, n = a.n, k = a.k;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const int64_t depth_blocks = (k + kKcMax - 1) / kKcMax;
  // Equal depth blocks, a multiple of 8 deep: K = 1000 runs as 3 x 336, not 384 + 384 + 232.
  const int64_t kc = ((k + depth_blocks - 1) / depth_blocks + 7) / 8 * 8;
  const int threads = threads_for(m * n * k, int64_t(1) << 18, a.threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t p_begin = panels * t / nt, p_end = panels * (t + 1) / nt;
    for (int64_t m0 = 0; m0 < m; m0 += kMc) {
      const int64_t mb = m - m0 < kMc ? m - m0 : kMc;
      for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kb = k - k0 < kc ? k - k0 : kc;
        const bool first = k0 == 0, last = k0 + kb == k;
        for (int64_t p = p_begin; p < p_end; ++p) {
          const float* panel = packed + p * k * kPanel + k0 * kPanel;
          const int64_t c0 = p * kPanel;
          const int cols = int(n - c0 < kPanel ? n - c0 : kPanel);
          const float* bias = a.padded_bias ? a.padded_bias + c0 : nullptr;
          for (int64_t r = 0; r < mb; r += kMr) {
            const int rows = int(mb - r < kMr ? mb - r : kMr);
            tiles[rows - 1](x + (m0 + r) * a.ldx + k0, a.ldx, panel, kb, y + (m0 + r) * a.ldy + c0, a.ldy,
                            cols, bias, first, last);
          }
        }
      }
    }
  }
}

}  // namespace

void linear(const LinearArgs& a) {
  switch (a.activation) {
    case 1:
      return run<1>(a);
    case 2:
      return run<2>(a);
    default:
      return run<0>(a);
  }
}

}  // namespace bertrt::cpu::BERTRT_NS

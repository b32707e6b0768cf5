// Row-wise LayerNorm shared by bias_residual_layer_norm.cu and embedding_layer_norm.cu.
//
// One CTA normalizes one row. A "loader" produces the row's pre-normalization values in fp32:
//     struct Loader { __device__ void operator()(int64_t col, float (&v)[VEC]) const; };
// Two variants:
//   * layer_norm_row_regs<T, VEC, VPT>: each thread keeps VPT packs of VEC elements in registers
//     (VEC = 16 / sizeof(T) gives 128-bit loads/stores), so the row is read from global memory once
//     and the variance is the exact two-pass sum((y - mean)^2).
//   * layer_norm_row_loop<T>: any hidden size, one element per step, reloading the row three times.
// Statistics are fp32, like the reference (F.layer_norm on the fp32 sum). beta may be null (bias-free
// LayerNorm); sum_row, when not null, receives the pre-normalization values rounded to T (the residual
// stream of a pre-norm layer).
#pragma once

#include "common.cuh"

namespace bertrt::cuda {

constexpr int kLayerNormMaxThreads = 512;

template <typename T, int VEC, int VPT, typename Loader>
__device__ __forceinline__ void layer_norm_row_regs(const Loader& load, int hidden,
                                                    const T* __restrict__ gamma, const T* __restrict__ beta,
                                                    T* __restrict__ out_row, float eps, float* scratch,
                                                    T* __restrict__ sum_row) {
  const int nvec = hidden / VEC;
  float vals[VPT][VEC];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
      load(static_cast<int64_t>(v) * VEC, vals[k]);
      if (sum_row != nullptr) store_float<T, VEC>(sum_row + static_cast<int64_t>(v) * VEC, vals[k]);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += vals[k][i];
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) vals[k][i] = 0.0f;
    }
  }
  const float mean = block_sum(sum, scratch) / static_cast<float>(hidden);
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float d = vals[k][i] - mean;
        sq += d * d;
      }
    }
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
      const int64_t col = static_cast<int64_t>(v) * VEC;
      float g[VEC], b[VEC], y[VEC];
      load_float<T, VEC>(gamma + col, g);
      if (beta != nullptr) {
        load_float<T, VEC>(beta + col, b);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) b[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) y[i] = (vals[k][i] - mean) * rstd * g[i] + b[i];
      store_float<T, VEC>(out_row + col, y);
    }
  }
}

template <typename T, typename Loader>
__device__ __forceinline__ void layer_norm_row_loop(const Loader& load, int hidden,
                                                    const T* __restrict__ gamma, const T* __restrict__ beta,
                                                    T* __restrict__ out_row, float eps, float* scratch,
                                                    T* __restrict__ sum_row) {
  float sum = 0.0f;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v[1];
    load(c, v);
    if (sum_row != nullptr) sum_row[c] = from_float<T>(v[0]);
    sum += v[0];
  }
  const float mean = block_sum(sum, scratch) / static_cast<float>(hidden);
  float sq = 0.0f;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v[1];
    load(c, v);
    const float d = v[0] - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / static_cast<float>(hidden) + eps);
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v[1];
    load(c, v);
    const float b = beta != nullptr ? to_float(beta[c]) : 0.0f;
    out_row[c] = from_float<T>((v[0] - mean) * rstd * to_float(gamma[c]) + b);
  }
}

// Launch shape for one row of `hidden` elements: vec (1 or 16 / elem_size), values-per-thread
// (1, 2 or 4; 0 selects the loop kernel) and threads (a multiple of 32, at most 512).
struct LayerNormConfig {
  int vec;
  int vpt;
  int threads;
};

inline LayerNormConfig pick_layer_norm_config(long long hidden, int elem_size, bool pointers_aligned) {
  int vec = 16 / elem_size;
  if (!pointers_aligned || hidden % vec != 0) vec = 1;
  const long long packs = hidden / vec;
  for (int vpt = 1; vpt <= 4; vpt *= 2) {
    const long long threads = (packs + vpt - 1) / vpt;
    const long long rounded = (threads + 31) / 32 * 32;
    if (rounded <= kLayerNormMaxThreads) return {vec, vpt, static_cast<int>(rounded)};
  }
  return {1, 0, kLayerNormMaxThreads};
}

// Calls f(std::integral_constant<int, VEC>, std::integral_constant<int, VPT>) for the config; VEC is
// one of {1, V} (V = 16 / sizeof(T)), VPT one of {0, 1, 2, 4}.
template <int V, typename F>
inline void dispatch_layer_norm_config(const LayerNormConfig& cfg, F&& f) {
  using I1 = std::integral_constant<int, 1>;
  using IV = std::integral_constant<int, V>;
  if (cfg.vpt == 0) return f(I1{}, std::integral_constant<int, 0>{});
  if (cfg.vec == 1) {
    if (cfg.vpt == 1) return f(I1{}, std::integral_constant<int, 1>{});
    if (cfg.vpt == 2) return f(I1{}, std::integral_constant<int, 2>{});
    return f(I1{}, std::integral_constant<int, 4>{});
  }
  if (cfg.vpt == 1) return f(IV{}, std::integral_constant<int, 1>{});
  if (cfg.vpt == 2) return f(IV{}, std::integral_constant<int, 2>{});
  return f(IV{}, std::integral_constant<int, 4>{});
}

}  // namespace bertrt::cuda

// bias_residual_layer_norm: out = LayerNorm(x + residual + bias) * weight + beta, fp32 statistics.
// residual, bias and beta may be null; sum_out (may be null) receives x + residual + bias in T.
// One CTA per row; 128-bit loads when every pointer is 16-byte aligned and hidden % (16 / sizeof(T)) == 0.
#include <type_traits>

#include "layer_norm.cuh"

namespace bertrt::cuda {
namespace {

template <typename T, int VEC>
struct ResidualLoader {
  const T* __restrict__ x;
  const T* __restrict__ residual;  // may be null
  const T* __restrict__ bias;      // may be null
  __device__ __forceinline__ void operator()(int64_t col, float (&v)[VEC]) const {
    load_float<T, VEC>(x + col, v);
    if (residual != nullptr) {
      float r[VEC];
      load_float<T, VEC>(residual + col, r);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += r[i];  // (x + residual) + bias, the reference's order
    }
    if (bias != nullptr) {
      float b[VEC];
      load_float<T, VEC>(bias + col, b);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += b[i];
    }
  }
};

template <typename T, int VEC, int VPT>
__global__ void __launch_bounds__(kLayerNormMaxThreads)
    bias_residual_layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                    const T* __restrict__ residual, const T* __restrict__ weight,
                                    const T* __restrict__ beta, T* __restrict__ out, T* __restrict__ sum_out,
                                    int hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * hidden;
  const ResidualLoader<T, VEC> load{x + offset, residual != nullptr ? residual + offset : nullptr, bias};
  T* sum_row = sum_out != nullptr ? sum_out + offset : nullptr;
  if constexpr (VPT == 0) {
    layer_norm_row_loop<T>(load, hidden, weight, beta, out + offset, eps, scratch, sum_row);
  } else {
    layer_norm_row_regs<T, VEC, VPT>(load, hidden, weight, beta, out + offset, eps, scratch, sum_row);
  }
}

template <typename T>
cudaError_t launch_typed(const void* x, const void* bias, const void* residual, const void* weight,
                         const void* beta, void* out, void* sum_out, int64_t tokens, int64_t hidden, float eps,
                         cudaStream_t stream) {
  const auto aligned_or_null = [](const void* p) { return p == nullptr || aligned16(p); };
  const bool aligned = aligned16(x) && aligned_or_null(residual) && aligned16(weight) && aligned_or_null(beta) &&
                       aligned16(out) && aligned_or_null(bias) && aligned_or_null(sum_out);
  const LayerNormConfig cfg = pick_layer_norm_config(hidden, sizeof(T), aligned);
  dispatch_layer_norm_config<16 / sizeof(T)>(cfg, [&](auto vec, auto vpt) {
    bias_residual_layer_norm_kernel<T, decltype(vec)::value, decltype(vpt)::value>
        <<<static_cast<unsigned>(tokens), cfg.threads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<const T*>(residual),
            static_cast<const T*>(weight), static_cast<const T*>(beta), static_cast<T*>(out),
            static_cast<T*>(sum_out), static_cast<int>(hidden), eps);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_residual_layer_norm(const void* x, const void* bias, const void* residual,
                                            const void* weight, const void* beta, void* out, void* sum_out,
                                            int64_t tokens, int64_t hidden, float eps, DType dtype,
                                            cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed<T>(x, bias, residual, weight, beta, out, sum_out, tokens, hidden, eps, stream);
  });
}

}  // namespace bertrt::cuda

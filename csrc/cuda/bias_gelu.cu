// bias_gelu: out = GELU(x + bias), exact (erf) or tanh approximation, computed in fp32; gated (GeGLU):
// out (tokens, features / 2) = GELU(x[:, :half] + bias[:half]) * (x[:, half:] + bias[half:]).
// Grid-stride over packs of VEC output elements; VEC = 16 / sizeof(T) (128-bit loads/stores) when x, out and
// bias are 16-byte aligned and the output width % VEC == 0 (so a pack never crosses a row), else VEC = 1.
#include "common.cuh"

namespace bertrt::cuda {
namespace {

template <bool TANH>
__device__ __forceinline__ float gelu(float y) {
  if constexpr (TANH) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    return 0.5f * y * (1.0f + tanhf(kSqrt2OverPi * (y + 0.044715f * y * y * y)));
  } else {
    constexpr float kInvSqrt2 = 0.7071067811865476f;
    return 0.5f * y * (1.0f + erff(y * kInvSqrt2));
  }
}

template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(256)
    bias_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, int64_t packs,
                     int64_t features) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    const int64_t e = p * VEC;
    float v[VEC];
    load_float<T, VEC>(x + e, v);
    if (bias != nullptr) {
      float b[VEC];
      load_float<T, VEC>(bias + e % features, b);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += b[i];
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = gelu<TANH>(v[i]);
    store_float<T, VEC>(out + e, v);
  }
}

template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(256)
    gated_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, int64_t packs,
                      int64_t half) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    const int64_t e = p * VEC;  // output element
    const int64_t row = e / half, col = e % half;
    const T* xr = x + row * 2 * half;
    float v[VEC], g[VEC];
    load_float<T, VEC>(xr + col, v);
    load_float<T, VEC>(xr + half + col, g);
    if (bias != nullptr) {
      float b[VEC], c[VEC];
      load_float<T, VEC>(bias + col, b);
      load_float<T, VEC>(bias + half + col, c);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        v[i] += b[i];
        g[i] += c[i];
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = gelu<TANH>(v[i]) * g[i];
    store_float<T, VEC>(out + e, v);
  }
}

template <typename T, bool TANH>
cudaError_t launch_gated(const void* x, const void* bias, void* out, int64_t tokens, int64_t half,
                         cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t n = tokens * half;
  const bool vec = aligned16(x) && aligned16(out) && (bias == nullptr || aligned16(bias)) && half % V == 0;
  const int64_t packs = vec ? n / V : n;
  constexpr int kThreads = 256;
  const int64_t blocks = (packs + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  if (vec) {
    gated_gelu_kernel<T, V, TANH><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), packs, half);
  } else {
    gated_gelu_kernel<T, 1, TANH><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), packs, half);
  }
  return cudaGetLastError();
}

template <typename T, bool TANH>
cudaError_t launch_typed(const void* x, const void* bias, void* out, int64_t tokens, int64_t features,
                         cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t n = tokens * features;
  const bool vec =
      aligned16(x) && aligned16(out) && (bias == nullptr || aligned16(bias)) && features % V == 0;
  const int64_t packs = vec ? n / V : n;
  constexpr int kThreads = 256;
  const int64_t blocks = (packs + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
  if (vec) {
    bias_gelu_kernel<T, V, TANH><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), packs, features);
  } else {
    bias_gelu_kernel<T, 1, TANH><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), packs, features);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_approx(const void* x, const void* bias, void* out, int64_t tokens, int64_t features,
                          bool tanh_approx, bool gated, cudaStream_t stream) {
  if (gated)
    return tanh_approx ? launch_gated<T, true>(x, bias, out, tokens, features / 2, stream)
                       : launch_gated<T, false>(x, bias, out, tokens, features / 2, stream);
  return tanh_approx ? launch_typed<T, true>(x, bias, out, tokens, features, stream)
                     : launch_typed<T, false>(x, bias, out, tokens, features, stream);
}

}  // namespace

cudaError_t launch_bias_gelu(const void* x, const void* bias, void* out, int64_t tokens, int64_t features,
                             bool tanh_approx, bool gated, DType dtype, cudaStream_t stream) {
  if (tokens == 0 || features == 0) return cudaSuccess;
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto tag) {
    return launch_approx<typename decltype(tag)::type>(x, bias, out, tokens, features, tanh_approx, gated,
                                                       stream);
  });
}

}  // namespace bertrt::cuda

// Shared device helpers for bertrt._cuda: dtype traits, 128-bit packs, conversions and reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels.h"

namespace bertrt::cuda {

// ---------------------------------------------------------------------------------------------
// Conversions. All arithmetic is done in fp32; storage types are float, __half and __nv_bfloat16.
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements of T, aligned to their total size: with sizeof(T) * N == 16 a load/store of a Pack is a
// single 128-bit LDG/STG. Pointers must be aligned accordingly (the host checks before choosing N > 1).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Pairs use the half2 / bfloat162 conversion intrinsics.
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_float2(type p) { return __half22float2(p); }
  static __device__ __forceinline__ type from_float2(float a, float b) { return __floats2half2_rn(a, b); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(type p) { return __bfloat1622float2(p); }
  static __device__ __forceinline__ type from_float2(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

// Load N contiguous elements (one Pack) and widen to fp32.
template <typename T, int N>
__device__ __forceinline__ void load_float(const T* __restrict__ p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
  if constexpr (sizeof(T) == 2 && N % 2 == 0) {
    using P = Pair<T>;
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      typename P::type two;
      two.x = pk.v[i];
      two.y = pk.v[i + 1];
      const float2 f = P::to_float2(two);
      out[i] = f.x;
      out[i + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(pk.v[i]);
  }
}

// Narrow N fp32 values to T (round to nearest even) and store them as one Pack.
template <typename T, int N>
__device__ __forceinline__ void store_float(T* __restrict__ p, const float (&in)[N]) {
  Pack<T, N> pk;
  if constexpr (sizeof(T) == 2 && N % 2 == 0) {
    using P = Pair<T>;
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const typename P::type two = P::from_float2(in[i], in[i + 1]);
      pk.v[i] = two.x;
      pk.v[i + 1] = two.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) pk.v[i] = from_float<T>(in[i]);
  }
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32 and
// every thread of the block must call it. `scratch` is 32 floats of shared memory; consecutive calls
// may reuse it (the leading barrier orders them).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// ---------------------------------------------------------------------------------------------
// Host-side helpers
// ---------------------------------------------------------------------------------------------
inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace bertrt::cuda

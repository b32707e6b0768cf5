// GELU(x + bias), exact (erf) or tanh approximation, fp32 math on fp32/bf16/fp16 storage; gated (GeGLU):
// gelu(first half + bias) * (second half + bias), read in one pass over the row.
#include "simd.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

template <bool kTanh>
BERTRT_INLINE Vec gelu(Vec v) {
  if constexpr (kTanh)
    return vgelu_tanh(v);
  else
    return vgelu_erf(v);
}

template <class T, class B, bool kTanh>
void run(const BiasGeluArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const B* bias = static_cast<const B*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t rows = a.rows, cols = a.cols;
  const int threads = threads_for(rows * cols, 16384, a.threads);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = out + r * cols;
    int64_t c = 0;
    for (; c + W <= cols; c += W) {
      Vec v = vload(xr + c);
      if (bias) v = vadd(v, vload(bias + c));
      vstore(yr + c, gelu<kTanh>(v));
    }
    if (c < cols) {
      Vec v = vload_partial(xr + c, cols - c);
      if (bias) v = vadd(v, vload_partial(bias + c, cols - c));
      vstore_partial(yr + c, gelu<kTanh>(v), cols - c);
    }
  }
}

template <class T, class B, bool kTanh>
void run_gated(const BiasGeluArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const B* bias = static_cast<const B*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t rows = a.rows, cols = a.cols, half = a.cols / 2;
  const int threads = threads_for(rows * cols, 16384, a.threads);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = out + r * half;
    int64_t c = 0;
    for (; c + W <= half; c += W) {
      Vec v = vload(xr + c), g = vload(xr + half + c);
      if (bias) {
        v = vadd(v, vload(bias + c));
        g = vadd(g, vload(bias + half + c));
      }
      vstore(yr + c, vmul(gelu<kTanh>(v), g));
    }
    if (c < half) {
      const int64_t rest = half - c;
      Vec v = vload_partial(xr + c, rest), g = vload_partial(xr + half + c, rest);
      if (bias) {
        v = vadd(v, vload_partial(bias + c, rest));
        g = vadd(g, vload_partial(bias + half + c, rest));
      }
      vstore_partial(yr + c, vmul(gelu<kTanh>(v), g), rest);
    }
  }
}

template <class T, class B>
void run_bias(const BiasGeluArgs& a) {
  if (a.gated) {
    if (a.tanh_approximation)
      run_gated<T, B, true>(a);
    else
      run_gated<T, B, false>(a);
  } else if (a.tanh_approximation) {
    run<T, B, true>(a);
  } else {
    run<T, B, false>(a);
  }
}

template <class T>
void run_typed(const BiasGeluArgs& a) {
  if (a.bias_dtype == DType::F32)
    run_bias<T, float>(a);
  else
    run_bias<T, T>(a);
}

}  // namespace

void bias_gelu(const BiasGeluArgs& a) {
  return dispatch_dtype<float, bf16, f16>(
      a.dtype, [&](auto tag) { return run_typed<typename decltype(tag)::type>(a); });
}

void vector_exp(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(out + i, vexp(vload(x + i)));
  if (i < n) vstore_partial(out + i, vexp(vload_partial(x + i, n - i)), n - i);
}

}  // namespace bertrt::cpu::BERTRT_NS

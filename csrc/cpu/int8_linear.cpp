// INT8 GEMM y = epilogue(x_q @ w_q^T) with exact int32 accumulation and a fused fp32 epilogue:
// y = acc * x_scale[m] * w_scale[n] (+ bias[n]) (-> GELU), stored in out_dtype.
#include "simd.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

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
    if (activation == 1) y = vgelu_erf(y);
    else if (activation == 2) y = vgelu_tanh(y);
    if (cnt == W) vstore(out + j, y); else vstore_partial(out + j, y, cnt);
  }
}

template <class O, class B>
void run(const Int8LinearArgs& a) {
  const int64_t m = a.m, n = a.n, k = a.k;
  const int threads = threads_for(m * n * k, 1 << 18, a.threads);
  const B* bias = static_cast<const B*>(a.bias);
  O* out = static_cast<O*>(a.out);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int32_t* acc = static_cast<int32_t*>(std::aligned_alloc(64, size_t((n + 15) / 16 * 16) * 4));
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
    std::free(acc);
  }
}

template <class O>
void run_out(const Int8LinearArgs& a) {
  switch (a.bias_dtype) {
    case DType::F32: return run<O, float>(a);
    case DType::BF16: return run<O, bf16>(a);
    case DType::F16: return run<O, f16>(a);
  }
}

}  // namespace

void int8_linear(const Int8LinearArgs& a) {
  switch (a.out_dtype) {
    case DType::F32: return run_out<float>(a);
    case DType::BF16: return run_out<bf16>(a);
    case DType::F16: return run_out<f16>(a);
  }
}

}  // namespace bertrt::cpu::BERTRT_NS

// LayerNorm(x + bias + residual): one pass over x and residual, fp32 statistics, rows in parallel.
// Residual and beta may be absent; the sum itself is written too when asked (pre-norm layers carry it
// on as the residual stream).
#include "layer_norm_row.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

template <class T, class P>
void run(const LayerNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* residual = static_cast<const T*>(a.residual);
  const P* bias = static_cast<const P*>(a.bias);
  const P* weight = static_cast<const P*>(a.weight);
  const P* beta = static_cast<const P*>(a.beta);
  T* out = static_cast<T*>(a.out);
  T* sum_out = static_cast<T*>(a.sum_out);
  const int64_t rows = a.rows, hidden = a.hidden;
  const int threads = threads_for(rows * hidden, 16384, a.threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* y = alloc_floats(hidden);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * hidden;
      const T* rr = residual ? residual + r * hidden : nullptr;
      T* sr = sum_out ? sum_out + r * hidden : nullptr;
      Vec sum = vzero();
      int64_t c = 0;
      for (; c + W <= hidden; c += W) {
        Vec v = vload(xr + c);
        if (rr) v = vadd(v, vload(rr + c));
        if (bias) v = vadd(v, vload(bias + c));
        vstore(y + c, v);
        if (sr) vstore(sr + c, v);
        sum = vadd(sum, v);
      }
      float row_sum = vreduce_add(sum);
      if (c < hidden) {
        const int64_t rest = hidden - c;
        Vec v = vload_partial(xr + c, rest);
        if (rr) v = vadd(v, vload_partial(rr + c, rest));
        if (bias) v = vadd(v, vload_partial(bias + c, rest));
        vstore_partial(y + c, v, rest);
        if (sr) vstore_partial(sr + c, v, rest);
        row_sum += vreduce_add(v);  // the zero-filled lanes add nothing
      }
      normalize_row(y, row_sum, hidden, weight, beta, a.eps, out + r * hidden);
    }
    std::free(y);
  }
}

template <class T>
void run_typed(const LayerNormArgs& a) {
  if (a.param_dtype == DType::F32)
    run<T, float>(a);
  else
    run<T, T>(a);
}

}  // namespace

void bias_residual_layer_norm(const LayerNormArgs& a) {
  return dispatch_dtype<float, bf16, f16>(
      a.dtype, [&](auto tag) { return run_typed<typename decltype(tag)::type>(a); });
}

}  // namespace bertrt::cpu::BERTRT_NS

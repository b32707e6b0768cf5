// LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]): gather the three
// rows, add in fp32, normalise, in one pass per token; tokens in parallel. Ids were range-checked
// by the binding before this runs. The position and token-type tables may be absent (rotary
// positions, no token types): their ids are then not read.
#include "layer_norm_row.h"
#include "parallel.h"

namespace bertrt::cpu::BERTRT_NS {
namespace {

template <class T, class P, class Id>
void run(const EmbeddingArgs& a) {
  const Id* input_ids = static_cast<const Id*>(a.input_ids);
  const Id* type_ids = static_cast<const Id*>(a.token_type_ids);
  const Id* position_ids = static_cast<const Id*>(a.position_ids);
  const T* word = static_cast<const T*>(a.word);
  const T* position = static_cast<const T*>(a.position);
  const T* token_type = static_cast<const T*>(a.token_type);
  const P* weight = static_cast<const P*>(a.weight);
  const P* bias = static_cast<const P*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t tokens = a.tokens, hidden = a.hidden;
  const int threads = threads_for(tokens * hidden, 16384, a.threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* y = alloc_floats(hidden);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* wr = word + int64_t(input_ids[t]) * hidden;
      const T* pr = position ? position + int64_t(position_ids[t]) * hidden : nullptr;
      const T* tr = token_type ? token_type + int64_t(type_ids[t]) * hidden : nullptr;
      Vec sum = vzero();
      int64_t c = 0;
      for (; c + W <= hidden; c += W) {
        Vec v = vload(wr + c);
        if (pr) v = vadd(v, vload(pr + c));
        if (tr) v = vadd(v, vload(tr + c));
        vstore(y + c, v);
        sum = vadd(sum, v);
      }
      float row_sum = vreduce_add(sum);
      if (c < hidden) {
        const int64_t rest = hidden - c;
        Vec v = vload_partial(wr + c, rest);
        if (pr) v = vadd(v, vload_partial(pr + c, rest));
        if (tr) v = vadd(v, vload_partial(tr + c, rest));
        vstore_partial(y + c, v, rest);
        row_sum += vreduce_add(v);
      }
      normalize_row(y, row_sum, hidden, weight, bias, a.eps, out + t * hidden);
    }
    std::free(y);
  }
}

template <class T, class P>
void run_ids(const EmbeddingArgs& a) {
  if (a.ids_int64)
    run<T, P, int64_t>(a);
  else
    run<T, P, int32_t>(a);
}

template <class T>
void run_typed(const EmbeddingArgs& a) {
  if (a.param_dtype == DType::F32)
    run_ids<T, float>(a);
  else
    run_ids<T, T>(a);
}

}  // namespace

void embedding_layer_norm(const EmbeddingArgs& a) {
  return dispatch_dtype<float, bf16, f16>(
      a.dtype, [&](auto tag) { return run_typed<typename decltype(tag)::type>(a); });
}

}  // namespace bertrt::cpu::BERTRT_NS

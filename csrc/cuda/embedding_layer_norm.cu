// embedding_layer_norm: out = LayerNorm(word[input_ids] + position[position_ids] +
// token_type[token_type_ids]). One CTA per token; 128-bit loads when the tables, weight, bias and out are
// 16-byte aligned and hidden % (16 / sizeof(T)) == 0. Ids are int32 or int64 (a flag per tensor). The Python
// glue rejects out-of-range ids before the launch (ValueError, as the reference does); the kernel also clamps
// every id into its table so that a bad id can never read outside it. The position and token-type tables
// may be null (rotary positions, no token types): their ids are then never read; bias may be null.
#include <type_traits>

#include "layer_norm.cuh"

namespace bertrt::cuda {
namespace {

struct IdArray {
  const void* ptr;
  int64_t rows;
  bool is64;
  __device__ __forceinline__ int64_t row(int64_t i) const {
    int64_t id = is64 ? static_cast<const int64_t*>(ptr)[i]
                      : static_cast<int64_t>(static_cast<const int32_t*>(ptr)[i]);
    id = id < 0 ? 0 : id;
    return id >= rows ? rows - 1 : id;
  }
};

template <typename T, int VEC>
struct EmbeddingLoader {
  const T* __restrict__ word;
  const T* __restrict__ position;    // may be null
  const T* __restrict__ token_type;  // may be null
  __device__ __forceinline__ void operator()(int64_t col, float (&v)[VEC]) const {
    load_float<T, VEC>(word + col, v);
    if (position != nullptr) {  // (word + position) + token_type, the reference's order
      float p[VEC];
      load_float<T, VEC>(position + col, p);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += p[i];
    }
    if (token_type != nullptr) {
      float t[VEC];
      load_float<T, VEC>(token_type + col, t);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] += t[i];
    }
  }
};

template <typename T, int VEC, int VPT>
__global__ void __launch_bounds__(kLayerNormMaxThreads)
    embedding_layer_norm_kernel(IdArray input_ids, IdArray token_type_ids, IdArray position_ids,
                                const T* __restrict__ word, const T* __restrict__ position,
                                const T* __restrict__ token_type, const T* __restrict__ weight,
                                const T* __restrict__ bias, T* __restrict__ out, int hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t token = blockIdx.x;
  const EmbeddingLoader<T, VEC> load{
      word + input_ids.row(token) * hidden,
      position != nullptr ? position + position_ids.row(token) * hidden : nullptr,
      token_type != nullptr ? token_type + token_type_ids.row(token) * hidden : nullptr};
  T* out_row = out + token * hidden;
  if constexpr (VPT == 0) {
    layer_norm_row_loop<T>(load, hidden, weight, bias, out_row, eps, scratch, static_cast<T*>(nullptr));
  } else {
    layer_norm_row_regs<T, VEC, VPT>(load, hidden, weight, bias, out_row, eps, scratch, static_cast<T*>(nullptr));
  }
}

template <typename T>
cudaError_t launch_typed(const IdArray& input_ids, const IdArray& token_type_ids, const IdArray& position_ids,
                         const void* word, const void* position, const void* token_type, const void* weight,
                         const void* bias, void* out, int64_t tokens, int64_t hidden, float eps,
                         cudaStream_t stream) {
  const auto aligned_or_null = [](const void* p) { return p == nullptr || aligned16(p); };
  const bool aligned = aligned16(word) && aligned_or_null(position) && aligned_or_null(token_type) &&
                       aligned16(weight) && aligned_or_null(bias) && aligned16(out);
  const LayerNormConfig cfg = pick_layer_norm_config(hidden, sizeof(T), aligned);
  dispatch_layer_norm_config<16 / sizeof(T)>(cfg, [&](auto vec, auto vpt) {
    embedding_layer_norm_kernel<T, decltype(vec)::value, decltype(vpt)::value>
        <<<static_cast<unsigned>(tokens), cfg.threads, 0, stream>>>(
            input_ids, token_type_ids, position_ids, static_cast<const T*>(word),
            static_cast<const T*>(position), static_cast<const T*>(token_type), static_cast<const T*>(weight),
            static_cast<const T*>(bias), static_cast<T*>(out), static_cast<int>(hidden), eps);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_embedding_layer_norm(const void* input_ids, bool input_ids_64, const void* token_type_ids,
                                        bool token_type_ids_64, const void* position_ids,
                                        bool position_ids_64, const void* word, int64_t vocab,
                                        const void* position, int64_t max_positions, const void* token_type,
                                        int64_t type_vocab, const void* weight, const void* bias, void* out,
                                        int64_t tokens, int64_t hidden, float eps, DType dtype,
                                        cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const IdArray ids{input_ids, vocab, input_ids_64};
  const IdArray types{token_type_ids, type_vocab, token_type_ids_64};
  const IdArray positions{position_ids, max_positions, position_ids_64};
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed<T>(ids, types, positions, word, position, token_type, weight, bias, out, tokens,
                           hidden, eps, stream);
  });
}

}  // namespace bertrt::cuda

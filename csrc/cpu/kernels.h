// Arguments and per-ISA entry points of the bertrt CPU kernels.
//
// The bindings (module.cpp) validate shapes and dtype codes and fill these structs; dispatch.cpp
// picks the variant. Tensors are raw, contiguous, row-major pointers: no torch headers in csrc/.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace bertrt::cpu {

using bertrt::DType;  // codes shared with engine/ops/cpu_kernels.py (csrc/common/dtype.h)

// Variants, best last; the Python side lists them best first.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };
constexpr int kIsaCount = 4;

constexpr int64_t kMaxHeadDim = 128;

struct AttentionArgs {
  const void* qkv;            // (total_tokens, 3, heads, head_dim)
  void* out;                  // (total_tokens, heads, head_dim)
  const int32_t* cu_seqlens;  // (batch + 1,)
  int64_t batch, heads, head_dim, max_seqlen;
  float scale;
  DType dtype;
  int threads;
  // Options (see engine/ops/attention.py); i, j = query / key positions inside their sequence.
  const float* rel_bias;    // (heads, 2 * bias_max_seqlen - 1) or null; [h][j - i + bias_max_seqlen - 1]
  int64_t bias_max_seqlen;  // the max_seqlen the table was built for (>= every length)
  int64_t window;           // < 0: none; else query i sees key j only if |i - j| <= window
  const float* rotary_cos;  // (positions, head_dim / 2) or null: rotate-half rotary of q and k
  const float* rotary_sin;  // (positions, head_dim / 2), null with rotary_cos
};

struct BiasGeluArgs {
  const void* x;     // (rows, cols)
  const void* bias;  // (cols,) or null
  void* out;         // (rows, cols), or (rows, cols / 2) when gated
  int64_t rows, cols;
  bool tanh_approximation;
  bool gated;  // GeGLU: out = gelu(x[:, :cols/2] + b[:cols/2]) * (x[:, cols/2:] + b[cols/2:]); cols even
  DType dtype, bias_dtype;  // bias_dtype is dtype or F32
  int threads;
};

struct LayerNormArgs {
  const void* x;         // (rows, hidden)
  const void* residual;  // (rows, hidden) or null (LayerNorm of x + bias)
  const void* bias;      // (hidden,) or null
  const void* weight;    // (hidden,)
  const void* beta;      // (hidden,) or null (bias-free LayerNorm)
  void* out;             // (rows, hidden)
  void* sum_out;         // (rows, hidden) x + bias + residual in x's dtype, or null
  int64_t rows, hidden;
  float eps;
  DType dtype, param_dtype;  // param_dtype (bias, weight, beta) is dtype or F32
  int threads;
};

struct EmbeddingArgs {
  const void* input_ids;       // (tokens,) int32 or int64, all three alike
  const void* token_type_ids;  // null when token_type is null
  const void* position_ids;    // null when position is null
  bool ids_int64;
  const void* word;        // (vocab, hidden)
  const void* position;    // (max_positions, hidden) or null
  const void* token_type;  // (type_vocab, hidden) or null
  const void* weight;      // (hidden,)
  const void* bias;        // (hidden,) or null (bias-free LayerNorm)
  void* out;               // (tokens, hidden)
  int64_t tokens, hidden;
  float eps;
  DType dtype, param_dtype;  // param_dtype (weight, bias) is dtype or F32
  int threads;
};

struct Int8LinearArgs {
  const int8_t* x;       // (tokens, in_features)
  const float* x_scale;  // (tokens,)
  const int8_t* w;       // (out_features, in_features)
  const float* w_scale;  // (out_features,)
  const void* bias;      // (out_features,) or null, in bias_dtype
  void* out;             // (tokens, out_features) in out_dtype
  int64_t m, n, k;
  int activation;  // 0 none, 1 gelu (erf), 2 gelu_tanh
  DType bias_dtype, out_dtype;
  int threads;
};

struct LinearArgs {
  const void* x;               // (m, k) fp32, rows ldx apart
  const float* packed_weight;  // (ceil(n / 16), k, 16): see linear.cpp
  const float* padded_bias;    // (ceil(n / 16) * 16,) or null
  void* out;                   // (m, n) fp32, rows ldy apart
  int64_t m, n, k, ldx, ldy;
  int activation;  // 0 none, 1 gelu (erf), 2 gelu_tanh
  int threads;
};

struct Int8PackedLinearArgs {
  const float* x;               // (m, k) fp32, rows ldx apart
  const int8_t* packed_weight;  // (ceil(n / 16), quads, 16, 4), 7-bit values (8-bit: VNNI loop only)
                                // act_bits 7: quads even
  const int32_t* col_sums;      // (ceil(n / 16) * 16,) sum over k of each packed column
  const float* w_scale;         // (ceil(n / 16) * 16,)
  const float* bias;            // (ceil(n / 16) * 16,) or null
  const float* input_scale;     // null: dynamic per-token scales; else the static scale (1,)
  int32_t input_zero_point;     // static only, in the act_bits range
  const float* x_multiplier;    // (k,) or null: x * multiplier is quantized (SmoothQuant's 1 / s)
  int asymmetric;               // dynamic only: per-token min/max scale and zero point (act_bits 7)
  float* out;                   // (m, n) fp32, contiguous
  int64_t m, n, k, ldx;
  int activation;  // 0 none, 1 gelu (erf), 2 gelu_tanh
  int act_bits;    // 8: u8 activations x 7-bit weights; 7: u7 activations x the same weights (faster)
  int threads;
};

#define BERTRT_DECLARE_VARIANT(ns)                           \
  namespace ns {                                             \
  void attention(const AttentionArgs& args);                 \
  void bias_gelu(const BiasGeluArgs& args);                  \
  void bias_residual_layer_norm(const LayerNormArgs& args);  \
  void embedding_layer_norm(const EmbeddingArgs& args);      \
  void int8_linear(const Int8LinearArgs& args);              \
  void linear(const LinearArgs& args);                       \
  void int8_linear_packed(const Int8PackedLinearArgs& args); \
  void vector_exp(const float* x, float* out, int64_t n);    \
  }

BERTRT_DECLARE_VARIANT(scalar)
BERTRT_DECLARE_VARIANT(avx2)
BERTRT_DECLARE_VARIANT(avx512)
namespace avx512 {
void int8_linear_packed_vnni(const Int8PackedLinearArgs& args);  // needs AVX512-VNNI (dispatch.cpp)
}

// AMX variant: tile-based bf16 attention; the other ops reuse the AVX-512 code.
namespace amx {
void attention(const AttentionArgs& args);
bool request_tile_permission();  // Linux arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
}  // namespace amx

}  // namespace bertrt::cpu

// Host entry points of bertrt._cuda's kernels. Plain C++ (no device code) so that module.cpp, the
// pybind11 binding, is compiled by the host compiler. Every function enqueues its kernel(s) on
// `stream` and returns the launch status; arguments are validated by the caller (module.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace bertrt::cuda {

using bertrt::DType;  // one enum for both extensions (csrc/common/dtype.h)

// Device capability used for dispatch: major * 10 + minor of the current device (0 if unknown).
int current_device_sm();

// attention: qkv (total, 3, heads, head_dim), cu_seqlens (batch + 1) int32, out (total, heads, head_dim).
// path: 0 = auto, 1 = tensor cores (mma.sync), 2 = SIMT fp32. Returns cudaErrorNotSupported when the
// requested path cannot run this dtype on this device (bf16 tensor cores need sm_80).
enum class AttentionPath : int { kAuto = 0, kTensorCore = 1, kSimt = 2 };
// Options (see engine/ops/attention.py); i, j = query / key positions inside their sequence.
struct AttentionOptions {
  const float* rel_bias = nullptr;    // (heads, 2 * bias_max_seqlen - 1); [h][j - i + bias_max_seqlen - 1]
  int bias_max_seqlen = 0;            // >= every sequence length
  int window = -1;                    // < 0: none; else query i sees key j only if |i - j| <= window
  const float* rotary_cos = nullptr;  // (positions, head_dim / 2) or null: rotate-half rotary of q and k
  const float* rotary_sin = nullptr;
};
cudaError_t launch_attention(const void* qkv, const int32_t* cu_seqlens, void* out, int batch, int heads,
                             int head_dim, int max_seqlen, float scale, DType dtype, AttentionPath path,
                             cudaStream_t stream, const AttentionOptions& options = {});
// Which path `auto` picks for (dtype, sm): 1 tensor cores, 2 SIMT.
AttentionPath attention_auto_path(DType dtype, int sm);

// bias_gelu: out = gelu(x + bias), x/out (tokens, features); bias (features) or null. gated (GeGLU):
// features even, out (tokens, features / 2) = gelu(x[:, :half] + bias[:half]) * (x[:, half:] + bias[half:]).
cudaError_t launch_bias_gelu(const void* x, const void* bias, void* out, int64_t tokens, int64_t features,
                             bool tanh_approx, bool gated, DType dtype, cudaStream_t stream);

// bias_residual_layer_norm: out = LayerNorm(x + bias + residual) * weight + beta; bias, residual and beta
// may be null; sum_out (tokens, hidden), when not null, receives x + bias + residual.
cudaError_t launch_bias_residual_layer_norm(const void* x, const void* bias, const void* residual,
                                            const void* weight, const void* beta, void* out, void* sum_out,
                                            int64_t tokens, int64_t hidden, float eps, DType dtype,
                                            cudaStream_t stream);

// embedding_layer_norm: ids are int32 (ids_are_64 false) or int64, one flag per id tensor. position and
// token_type (and their ids) may be null; bias may be null.
cudaError_t launch_embedding_layer_norm(const void* input_ids, bool input_ids_64, const void* token_type_ids,
                                        bool token_type_ids_64, const void* position_ids,
                                        bool position_ids_64, const void* word, int64_t vocab,
                                        const void* position, int64_t max_positions, const void* token_type,
                                        int64_t type_vocab, const void* weight, const void* bias, void* out,
                                        int64_t tokens, int64_t hidden, float eps, DType dtype,
                                        cudaStream_t stream);

}  // namespace bertrt::cuda

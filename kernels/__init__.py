"""Triton kernels (GPU; CPU only under TRITON_INTERPRET=1 for tests). One module per op.

Each ``bertrt.kernels.<op>`` module exposes ``<op>`` with exactly the signature of
``bertrt.ops.<op>.<op>_ref``; the registry (``bertrt.ops.registry``, implementation ``"triton"``) imports
them lazily, so importing this package does not import Triton.

    attention                 flash-style varlen attention forward over cu_seqlens (fp16/bf16/fp32)
    bias_gelu                 GELU(x + bias), erf or tanh
    bias_residual_layer_norm  LayerNorm(x + bias + residual), fp32 statistics
    embedding_layer_norm      LayerNorm(word + position + token_type embeddings)
    int8_linear               INT8 GEMM, per-token/per-channel scales, fused dequant + bias (+ GELU)

GPU speed unmeasured until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
"""

KERNELS = ("attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm", "int8_linear")

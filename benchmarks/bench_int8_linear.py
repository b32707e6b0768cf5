"""INT8 GEMM with fused dequant + bias (+ GELU): Triton kernel vs torch._int_mm (+ torch epilogue) vs a
bf16 matmul, at bert-base linear shapes. GPU only (``triton.testing.do_bench``); skipped with a reason on CPU.

    pytest benchmarks/bench_int8_linear.py --benchmark-columns=median,iqr,ops
    python benchmarks/bench_int8_linear.py          # plain table of do_bench medians, no pytest-benchmark

GPU speed unmeasured until run on a GPU: no numbers from this file have been recorded yet.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

# bert-base encoder linears: (name, in_features, out_features, activation)
LINEARS = {
    "qkv": (768, 2304, "none"),
    "attn_out": (768, 768, "none"),
    "ffn_in": (768, 3072, "gelu"),
    "ffn_out": (3072, 768, "none"),
}
TOKENS = {"t16": 16, "t1024": 1024, "t8192": 8192}  # one short request, a batch, a large packed batch
IMPLS = ("triton", "torch_int_mm", "bf16_matmul")


def make_case(tokens: int, in_features: int, out_features: int, device: str = "cuda"):
    from bertrt.ops.int8_linear import quantize_per_token

    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g) * 0.05
    bias = torch.randn(out_features, generator=g)
    x_q, x_scale = quantize_per_token(x)
    w_q, w_scale = quantize_per_token(w)
    on = lambda *ts: tuple(t.to(device) for t in ts)
    return on(x_q, x_scale, w_q, w_scale, bias), on(x.bfloat16(), w.bfloat16(), bias.bfloat16())


def implementation(impl: str, tokens: int, linear: str):
    """A zero-argument callable running one linear with ``impl`` on CUDA tensors (pytest.skip on CPU)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: triton.testing.do_bench times GPU kernels; GPU speed unmeasured")
    in_features, out_features, activation = LINEARS[linear]
    (x_q, x_scale, w_q, w_scale, bias), (x, w, b) = make_case(tokens, in_features, out_features)
    if impl == "triton":
        from bertrt.kernels.int8_linear import int8_linear

        return lambda: int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, torch.bfloat16)
    if impl == "torch_int_mm":
        from bertrt.ops.int8_linear import int8_linear_torch

        # torch._int_mm needs tokens > 16; int8_linear_torch falls back to an fp32 product below that
        return lambda: int8_linear_torch(x_q, x_scale, w_q, w_scale, bias, activation, torch.bfloat16)
    if impl == "bf16_matmul":
        if activation == "gelu":  # unfused: the plain bf16 baseline
            return lambda: F.gelu(F.linear(x, w, b))
        return lambda: F.linear(x, w, b)
    raise ValueError(impl)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", list(TOKENS))
@pytest.mark.parametrize("linear", list(LINEARS))
@pytest.mark.parametrize("impl", IMPLS)
def test_int8_linear_gpu(benchmark, impl, linear, tokens):
    from conftest import time_gpu

    fn = implementation(impl, TOKENS[tokens], linear)
    in_features, out_features, _ = LINEARS[linear]
    benchmark.group = f"int8_linear gpu bert-base {linear} {tokens}"
    time_gpu(benchmark, fn)
    ms = benchmark.extra_info["do_bench_median_ms"]
    benchmark.extra_info["tflops_at_median"] = 2 * TOKENS[tokens] * in_features * out_features / (ms * 1e-3) / 1e12


def main() -> int:
    if not torch.cuda.is_available():
        print("skipped: needs a CUDA device (triton.testing.do_bench times GPU kernels); GPU speed unmeasured")
        return 0
    import triton.testing

    print(f"{torch.cuda.get_device_name()}  (do_bench median ms; TFLOP/s or TOP/s)")
    for linear, (k, n, _) in LINEARS.items():
        for label, tokens in TOKENS.items():
            row = []
            for impl in IMPLS:
                ms = triton.testing.do_bench(implementation(impl, tokens, linear), return_mode="median")
                row.append(f"{impl} {ms:.4f} ms {2 * tokens * k * n / (ms * 1e-3) / 1e12:.1f}")
            print(f"{linear:9s} {label:6s} | " + " | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""INT8 GEMM with fused dequant + bias (+ GELU).

GPU: Triton kernel vs torch._int_mm (+ torch epilogue) vs a bf16 matmul, at bert-base linear shapes
(``triton.testing.do_bench``; skipped with a reason on CPU). GPU speed unmeasured until run on a GPU:
no GPU numbers from this file have been recorded yet.

CPU: bertrt's packed int8 kernel with 8-bit and 7-bit activations (float input, quantized inside the
call) against bertrt's FP32 GEMM, at MiniLM and bert-base linear shapes for 576 tokens (a serving
batch of 16 short requests). One thread and thread CPU time give stable numbers on a shared machine:

    OMP_NUM_THREADS=1 pytest benchmarks/bench_int8_linear.py -k cpu --benchmark-timer=time.thread_time \
        --benchmark-columns=median,iqr --benchmark-group-by=group
    pytest benchmarks/bench_int8_linear.py --benchmark-columns=median,iqr,ops   # GPU section
    python benchmarks/bench_int8_linear.py          # plain table of do_bench medians, no pytest-benchmark
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


CPU_TOKENS = 576
CPU_IMPLS = ("fp32", "packed-a8", "packed-a7")


def _cpu_layers(hidden: int) -> dict[str, tuple[int, int, str]]:
    return {"qkv": (3 * hidden, hidden, "none"), "attn_out": (hidden, hidden, "none"),
            "ffn_in": (4 * hidden, hidden, "gelu"), "ffn_out": (hidden, 4 * hidden, "none")}


@pytest.mark.parametrize("layer", ["qkv", "attn_out", "ffn_in", "ffn_out"])
@pytest.mark.parametrize("model", ["minilm", "bert-base"])
@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_int8_linear_packed_cpu(benchmark, impl, model, layer):
    from bertrt.ops import registry

    reason = registry.availability("int8_linear")["cpu"]
    if reason:
        pytest.skip(f"int8_linear/cpu: {reason}")
    from bertrt import ops
    from bertrt.ops import cpu_kernels
    from bertrt.ops.int8_linear import pack_int8_weight, quantize_per_token
    from conftest import MODELS

    n, k, activation = _cpu_layers(MODELS[model]["hidden"])[layer]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CPU_TOKENS, k, generator=g)
    weight, bias = torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g)
    if impl == "fp32":
        packed = ops.pack_weight(weight, bias)
        fn = lambda: ops.linear(x, packed, None, activation)  # noqa: E731
    else:
        w_q, w_scale = quantize_per_token(weight)
        packed = pack_int8_weight(w_q, w_scale, bias, act_bits=8 if impl == "packed-a8" else 7)
        fn = lambda: cpu_kernels.int8_linear_packed(x, packed, activation)  # noqa: E731
    benchmark.group = f"int8_linear cpu {model} {layer} {CPU_TOKENS}x{n}x{k} {activation}"
    benchmark.extra_info["gflop"] = 2 * CPU_TOKENS * n * k / 1e9
    benchmark(fn)


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

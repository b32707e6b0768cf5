"""One small run of the CUDA and Triton attention and INT8 GEMM kernels, for compute-sanitizer memcheck
(``make gpu-check`` runs it as ``compute-sanitizer --tool memcheck python tools/gpu_sanitize_run.py``).

Shapes are awkward on purpose: packed sequences of 1, 7 and 33 tokens, 3 heads of 24; an INT8 GEMM of
13 x 40 x 72 with bias and GELU. Each result is compared with its reference so a wrong answer fails too.
``--dry-run`` checks the imports and the shapes on the CPU reference only.
"""

from __future__ import annotations

import sys

import torch
from bertrt import ops
from bertrt.ops import registry


def attention_case(device: str):
    lengths = [1, 7, 33]
    cu = torch.tensor([0, 1, 8, 41], dtype=torch.int32, device=device)
    qkv = torch.randn(sum(lengths), 3, 3, 24, generator=torch.Generator().manual_seed(0)).to(device)
    return qkv, cu, max(lengths)


def int8_case(device: str):
    g = torch.Generator().manual_seed(1)
    x_q = torch.randint(-127, 128, (13, 72), generator=g, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (40, 72), generator=g, dtype=torch.int8)
    x_scale, w_scale = torch.rand(13, generator=g) * 0.02 + 1e-3, torch.rand(40, generator=g) * 0.02 + 1e-3
    bias = torch.randn(40, generator=g)
    return [t.to(device) for t in (x_q, x_scale, w_q, w_scale, bias)]


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    device = "cpu" if dry else "cuda"
    impls = ["ref"] if dry else ["cuda", "triton"]
    failures = 0
    for impl in impls:
        for dtype in (torch.float32,) if dry else (torch.float16, torch.bfloat16):
            qkv, cu, max_len = attention_case(device)
            got = ops.attention(qkv.to(dtype), cu, max_len, impl=impl).float()
            want = ops.attention_ref(qkv.to(dtype).float(), cu, max_len)
            error = float((got - want).abs().max())
            ok = error < 2e-2
            failures += not ok
            print(f"attention {impl} {dtype}: max |err| {error:.2e} {'ok' if ok else 'FAIL'}")
        reason = registry.availability("int8_linear").get(impl) if impl != "ref" else None
        if reason:
            print(f"int8_linear {impl}: skipped: {reason}")
            continue
        x_q, x_scale, w_q, w_scale, bias = int8_case(device)
        got = ops.int8_linear(x_q, x_scale, w_q, w_scale, bias, "gelu", impl=impl)
        want = ops.int8_linear_ref(x_q, x_scale, w_q, w_scale, bias, "gelu")
        error = float((got.float() - want.float()).abs().max())
        ok = error < 1e-3
        failures += not ok
        print(f"int8_linear {impl}: max |err| {error:.2e} {'ok' if ok else 'FAIL'}")
    if not dry:
        torch.cuda.synchronize()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

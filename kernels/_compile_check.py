"""Compile every Triton kernel for NVIDIA targets without a GPU, and report registers and spills.

    python -m bertrt.kernels._compile_check [--arch 80,90] [--all-configs] [--kernel attention,int8_linear]

Runs Triton's full compiler pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the ptxas bundled in the
triton wheel) for representative dtypes/shapes and each autotune config the kernel's pruning keeps, so a
kernel that only the GPU backend rejects (dot shape limits, layouts, unsupported ops) fails here on a
CPU-only machine; registers and stack (spill) bytes are read from the cubin with the bundled cuobjdump.
Signature entries carry Triton's launch-time specializations, as the JIT would see them for typical BERT
shapes: ``:16`` marks a pointer/int divisible by 16, ``:1`` an int equal to 1 (a unit stride, compiled in
as a constant). It proves compilation, not speed or numerics: GPU speed is unmeasured until run on a GPU.
Must run without TRITON_INTERPRET=1 (it exits with a message otherwise). Exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings


def _resource_usage(cubin: bytes) -> dict:
    """Registers and stack (spill) bytes of the cubin Triton built, read with the bundled cuobjdump."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return {}
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        info = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"REG:(\d+) STACK:(\d+)", info)
    return {"regs": int(found.group(1)), "stack_bytes": int(found.group(2))} if found else {}


def _cases():
    """(kernel name, autotuner, runtime signature, constexprs, prune kwargs/named args) to compile."""
    from . import attention, bias_gelu, bias_residual_layer_norm, embedding_layer_norm, int8_linear
    from ._utils import next_pow2

    # plain attention at every head dim, and (named "attention+options") MPNet's relative bias and
    # ModernBERT's rotary + local window at head_dim 64
    attention_cases = [(dt, d, False) for dt in ("fp16", "bf16", "fp32") for d in (32, 64, 80, 128)]
    attention_cases += [(dt, 64, True) for dt in ("fp16", "bf16", "fp32")]
    for dt, head_dim, options in attention_cases:
        sig = {"qkv_ptr": f"*{dt}:16", "out_ptr": f"*{dt}:16", "cu_seqlens_ptr": "*i32:16", "max_seqlen": "i32",
               "qk_scale": "fp32", "stride_qkv_t": "i32:16", "stride_qkv_s": "i32:16", "stride_qkv_h": "i32:16",
               "stride_out_t": "i32:16", "stride_out_h": "i32:16", "SEQ_BUCKET": "i32:16",
               "bias_ptr": "*fp32:16", "bias_max_seqlen": "i32", "window": "i32", "cos_ptr": "*fp32:16",
               "sin_ptr": "*fp32:16"}
        const = {"HEADS": 12, "HEAD_DIM": head_dim, "BLOCK_D": max(16, next_pow2(head_dim)), "UPCAST": False,
                 "DOT_PRECISION": "ieee" if dt == "fp32" else "tf32",
                 "HAS_BIAS": options, "HAS_WINDOW": options, "HAS_ROTARY": options}
        name = f"attention{'+options' if options else ''} {dt} d={head_dim}"
        yield name, attention._attention_fwd_kernel, sig, const, {"SEQ_BUCKET": 512, "window": 64}
    for dt in ("fp16", "bf16", "fp32"):
        for tanh in (False, True):
            sig = {"x_ptr": f"*{dt}:16", "bias_ptr": f"*{dt}:16", "out_ptr": f"*{dt}:16", "M": "i32", "N": "i32:16",
                   "stride_xm": "i32:16", "stride_om": "i32:16", "M_BUCKET": "i32:16", "N_BUCKET": "i32:16"}
            yield (f"bias_gelu {dt} tanh={tanh}", bias_gelu._bias_gelu_kernel, sig,
                   {"HAS_BIAS": True, "TANH": tanh}, {})
    for dt in ("fp16", "bf16", "fp32"):
        for hidden in (768, 1024, 4096):
            sig = {"x_ptr": f"*{dt}:16", "bias_ptr": f"*{dt}:16", "res_ptr": f"*{dt}:16", "w_ptr": f"*{dt}:16",
                   "beta_ptr": f"*{dt}:16", "out_ptr": f"*{dt}:16", "M": "i32", "hidden": "i32:16",
                   "stride_xm": "i32:16", "stride_rm": "i32:16", "stride_om": "i32:16", "eps": "fp32",
                   "M_BUCKET": "i32:16"}
            const = {"HAS_BIAS": True, "BLOCK_H": next_pow2(hidden)}
            kernel = bias_residual_layer_norm._bias_residual_layer_norm_kernel
            yield (f"bias_residual_layer_norm {dt} h={hidden}", kernel, sig, const, {"BLOCK_H": next_pow2(hidden)})
            sig = {"ids_ptr": "*i64:16", "type_ids_ptr": "*i64:16", "pos_ids_ptr": "*i64:16", "word_ptr": f"*{dt}:16",
                   "pos_ptr": f"*{dt}:16", "type_ptr": f"*{dt}:16", "w_ptr": f"*{dt}:16", "b_ptr": f"*{dt}:16",
                   "out_ptr": f"*{dt}:16", "M": "i32", "hidden": "i32:16", "stride_word": "i32:16",
                   "stride_pos": "i32:16", "stride_type": "i32:16", "stride_om": "i32:16", "eps": "fp32",
                   "M_BUCKET": "i32:16"}
            yield (f"embedding_layer_norm {dt} h={hidden}", embedding_layer_norm._embedding_layer_norm_kernel,
                   sig, {"BLOCK_H": next_pow2(hidden)}, {"BLOCK_H": next_pow2(hidden)})
    for out in ("fp32", "fp16", "bf16"):
        for act in (0, 1, 2):
            sig = {"x_ptr": "*i8:16", "w_ptr": "*i8:16", "x_scale_ptr": "*fp32:16", "w_scale_ptr": "*fp32:16",
                   "bias_ptr": "*fp32:16", "out_ptr": f"*{out}:16", "M": "i32", "N": "i32:16", "K": "i32:16",
                   "stride_xm": "i32:16", "stride_xk": "i32:1", "stride_wn": "i32:16", "stride_wk": "i32:1",
                   "stride_om": "i32:16", "M_BUCKET": "i32:16"}
            yield (f"int8_linear out={out} act={act}", int8_linear._int8_linear_kernel, sig,
                   {"HAS_BIAS": True, "ACTIVATION": act}, {"M_BUCKET": 4096})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    parser.add_argument("--all-configs", action="store_true", help="every kept config (default: first only)")
    parser.add_argument("--kernel", default="", help="only cases whose name starts with one of these (comma-separated)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler this check exercises")
        return 2
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for arch in (int(a) for a in args.arch.split(",")):
        for name, tuner, sig, const, prune_args in _cases():
            if not name.startswith(tuple(args.kernel.split(","))):
                continue
            configs = tuner.configs
            if tuner.early_config_prune is not None:
                configs = tuner.early_config_prune(configs, prune_args, **{**const, **prune_args})
            for cfg in configs if args.all_configs else configs[:1]:
                constexprs = {**const, **cfg.kwargs}
                signature, attrs = {}, {}
                for arg, spec in sig.items():
                    ty, _, hint = spec.partition(":")
                    if hint == "1":
                        constexprs[arg] = 1
                    else:
                        signature[arg] = ty
                        if hint == "16":
                            attrs[(tuner.fn.arg_names.index(arg),)] = [["tt.divisibility", 16]]
                signature.update({k: "constexpr" for k in constexprs})
                label = f"sm_{arch} {name} {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}"
                try:
                    start = time.time()
                    compiled = triton.compile(
                        ASTSource(tuner.fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                    )
                    info = _resource_usage(compiled.asm["cubin"])
                    print(f"ok   {label} {time.time() - start:.1f}s shared={compiled.metadata.shared} {info}",
                          flush=True)
                except Exception as exc:  # report every failure, then exit non-zero
                    failures += 1
                    print(f"FAIL {label}: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

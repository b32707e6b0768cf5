"""Shared pieces of the op benchmarks (pytest-benchmark).

Run: ``pytest benchmarks/ --benchmark-columns=median,iqr,ops --benchmark-sort=name``; add
``--benchmark-json=bench-results/ops.json`` to keep the numbers. CPU timings use perf_counter after
warm-up (pytest-benchmark); the GPU sections use ``triton.testing.do_bench`` and skip without CUDA.
On a shared, oversubscribed machine wall-clock times of multi-threaded kernels are dominated by
descheduled threads; compare with one thread and CPU time instead:
``OMP_NUM_THREADS=1 pytest benchmarks/ --benchmark-timer=time.thread_time`` (torch and the cpu
kernels then both run single-threaded in the calling thread).

Short mode (``--bench-short``, what ``make test`` runs): two rounds per benchmark without warm-up or
calibration time, the scalar ISA variants and tests marked ``slow`` deselected: it checks that every
benchmark still runs, and asserts nothing about time. ``make bench-ops`` times them properly and
compares with the saved baseline (``--benchmark-compare``).

Every implementation that ``bertrt.ops.registry.availability(op)`` lists is a parameter; those that
cannot run here are skipped with the registry's reason. The ``cpu`` implementation is timed once per
ISA variant this CPU supports (``cpu-avx2``, ``cpu-scalar``, ...).
"""

from __future__ import annotations

import contextlib
import platform

import pytest
import torch
from bertrt.ops import registry

# BERT-ish shapes: MiniLM-L6/L12 (hidden 384, 12 heads x 32) and bert-base (hidden 768, 12 x 64).
MODELS = {"minilm": dict(hidden=384, heads=12, head_dim=32), "bert-base": dict(hidden=768, heads=12, head_dim=64)}
BATCHES = {"8x128": [128] * 8, "mixed": [5, 17, 64, 100, 128, 200, 33, 77]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cpu_isas() -> list[str]:
    try:
        from bertrt.ops import cpu_kernels
    except Exception:  # unbuilt extension: the cpu parameter is skipped with the registry's reason
        return []
    return cpu_kernels.supported_isas()


def cpu_implementations(op: str) -> list:
    """pytest params: every implementation of ``op``, skipped with a reason where it cannot run on CPU."""
    params = []
    for impl, reason in registry.availability(op).items():
        if impl == "cuda":
            reason = "runs on CUDA only (see the GPU section)"
        elif impl == "triton" and reason is None:
            reason = "Triton on CPU is the TRITON_INTERPRET test interpreter, not worth timing"
        if impl == "cpu" and reason is None:
            params += [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in _cpu_isas()]
            continue
        marks = [pytest.mark.skip(reason=f"{op}/{impl}: {reason}")] if reason else []
        params.append(pytest.param((impl, None), id=impl, marks=marks))
    return params


def gpu_implementations(op: str) -> list:
    return [pytest.param(impl, id=impl) for impl in ("cuda", "triton")]


def resolve_cpu(op: str, impl_isa: tuple[str, str | None]):
    """(function, context manager) for a cpu_implementations() parameter."""
    impl, isa = impl_isa
    fn = registry.resolve(op, impl)
    if isa is None:
        return fn, contextlib.nullcontext()
    from bertrt.ops import cpu_kernels

    return fn, cpu_kernels.use_isa(isa)


def resolve_gpu(op: str, impl: str):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    found = registry.availability(op)[impl]
    if found is not None:
        pytest.skip(f"{op}/{impl}: {found}")
    return registry.resolve(op, impl)


def time_gpu(benchmark, fn) -> None:
    """Time fn on the GPU with triton.testing.do_bench (median ms in extra_info) and a synchronised round."""
    import triton.testing

    benchmark.extra_info["do_bench_median_ms"] = triton.testing.do_bench(fn, return_mode="median")
    benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=20, warmup_rounds=3)


def packed_qkv(lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype, device: str = "cpu"):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    qkv = torch.randn(int(cu[-1]), 3, heads, head_dim, device=device).to(dtype)
    return qkv, cu, max(lengths)


def pytest_addoption(parser):
    parser.addoption("--bench-short", action="store_true",
                     help="smoke mode: 2 rounds each, no warm-up; scalar ISA variants and slow tests deselected")


def pytest_configure(config):
    if config.getoption("bench_short"):
        config.option.benchmark_min_rounds = 2
        config.option.benchmark_max_time = 0.0
        config.option.benchmark_min_time = 0.0
        config.option.benchmark_warmup = False
        config.option.benchmark_calibration_precision = 1


def pytest_collection_modifyitems(config, items):
    if not config.getoption("bench_short"):
        return
    # The scalar fallback is timed ~30x slower than AVX2 and runs the same benchmark code.
    keep = [i for i in items if "cpu-scalar" not in i.nodeid and i.get_closest_marker("slow") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py when the folder is given (``pytest benchmarks/``); named files collect anyway."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine_info["processor_detail"] = platform.processor()
    try:
        from bertrt.ops import cpu_kernels

        machine_info["bertrt_cpu_isas"] = cpu_kernels.supported_isas()
    except Exception as exc:
        machine_info["bertrt_cpu_isas"] = f"unavailable: {exc}"

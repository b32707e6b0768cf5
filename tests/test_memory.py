"""Steady-state CPU calls fault no pages: the kernels keep their scratch across calls, and loading an
engine on the CPU sets glibc's thresholds so that torch's freed activations stay in the heap
(bertrt.runtime.memory). Each check runs in a fresh interpreter, so the malloc state is its own."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the malloc settings are glibc's")


def _run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@glibc
def test_loading_on_the_cpu_keeps_freed_memory(minilm_dir):
    out = json.loads(_run(f"""
        import json, bertrt
        from bertrt.runtime import memory, probe
        before = memory.state()
        bertrt.load({str(minilm_dir)!r}, device="cpu")
        print(json.dumps([before, memory.state(), probe.report()["malloc"]]))
    """))
    assert out[0].startswith("not set")
    assert out[1].startswith("glibc mmap_threshold, trim_threshold set") and out[2] == out[1]


@glibc
def test_bertrt_malloc_system_leaves_malloc_alone():
    out = _run("from bertrt.runtime import memory; print(memory.keep_freed_memory())", BERTRT_MALLOC="system")
    assert out == "left as it is (BERTRT_MALLOC=system)"


STEPS = """
    import json, os, resource, torch
    from bertrt.ops import cpu_kernels
    from bertrt.ops.gemm_choice import packed_available
    from bertrt.ops.int8_linear import pack_int8_weight
    from bertrt.runtime import memory
    if packed_available() is not None:
        print(json.dumps(None)); raise SystemExit
    if os.environ["TUNE"] == "1":
        memory.keep_freed_memory()
    torch.empty(30 << 18)  # a freed 30 MiB block: glibc's thresholds rise to 30 / 60 MiB, as after loading
    torch.manual_seed(0)
    x = torch.randn(1024, 384)
    packed = pack_int8_weight(torch.randint(-127, 128, (1536, 384), dtype=torch.int8), torch.rand(1536) * 0.01,
                              torch.randn(1536), act_bits=7)
    multiplier = torch.rand(384) + 0.5
    qkv = torch.randn(1024, 3, 12, 32)
    cu = torch.arange(0, 1025, 128, dtype=torch.int32)
    def step():  # like a forward: 12 layers' outputs (~90 MiB) alive until the end, then freed together
        outs = []
        for _ in range(12):
            outs.append(cpu_kernels.int8_linear_packed(x, packed, "gelu", multiplier=multiplier, asymmetric=True))
            outs.append(cpu_kernels.attention(qkv, cu, 128))
    for _ in range(2):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3))
"""


@glibc
def test_steady_state_kernel_calls_fault_no_pages():
    """MiniLM's FFN-in GEMM at 8x128 (INT8, 7-bit, per-token zero points, SmoothQuant multiplier) and
    attention, 12 of each per step. Left alone, glibc trims the ~90 MiB a step frees at the top of the
    heap, and every step faults it back in; with the settings, steady-state steps fault (almost) nothing."""
    untuned = json.loads(_run(STEPS, TUNE="0"))
    if untuned is None:
        pytest.skip("bertrt._C's packed INT8 kernel is not available here")
    if untuned < 5000:
        pytest.skip(f"this glibc does not trim between steps ({untuned:.0f} faults a step untuned): nothing to fix")
    tuned = json.loads(_run(STEPS, TUNE="1"))
    assert tuned < 100, f"{tuned:.0f} page faults a steady-state step with the settings ({untuned:.0f} without)"

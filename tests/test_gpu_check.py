"""`make gpu-check` stays runnable before a GPU appears: without a GPU it says so in one line; the dry
run builds bertrt._cuda for sm_90 with nvcc, collects the GPU test selection and checks the bench
arguments (tools/gpu_check.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "gpu-check"), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_without_a_gpu_one_line_and_exit_0(tmp_path):
    done = _run(tmp_path, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == ["gpu-check: no GPU on this machine (nvidia-smi lists none); "
                                                "nothing to check"]


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="nvcc not found: the dry run builds the CUDA module")
def test_dry_run_builds_collects_and_checks_bench_arguments(tmp_path):
    done = _run(tmp_path, "--dry-run", timeout=600)
    out = tmp_path / "gpu-check"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    steps = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines())
    assert steps == {"build": "0", "tests": "0", "sanitize": "0", "bench-minilm": "0", "bench-bert-base": "0"}
    assert list((out / "pkg" / "bertrt").glob("_cuda*.so"))
    assert "device_count 0" in (out / "build.log").read_text()
    collected = (out / "tests.log").read_text()
    assert "tests/test_gpu_encoder.py::test_padding_free_encoder_on_gpu_matches_transformers[cuda-float16]" in collected
    assert "tests/test_cuda_kernels.py::" in collected and "test_gpu_backends[tensorrt-int8]" in collected
    for name in ("bench-minilm", "bench-bert-base"):
        assert "bench plan:" in (out / f"{name}.log").read_text() and "on cuda" in (out / f"{name}.log").read_text()

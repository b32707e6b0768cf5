"""The policy table on simulated devices, the device probe, and `bertrt info`'s "would pick and why"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bertrt.runtime import policy, probe
from bertrt.runtime.backends import BackendUnavailable
from bertrt.runtime.probe import CpuInfo, GpuInfo

T4 = GpuInfo(0, "Tesla T4", (7, 5), 15.0)
A10 = GpuInfo(0, "NVIDIA A10", (8, 6), 22.0)
A100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", (8, 0), 79.2)
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 79.1)
V100 = GpuInfo(0, "Tesla V100-SXM2-16GB", (7, 0), 15.8)
P100 = GpuInfo(0, "Tesla P100-PCIE-16GB", (6, 0), 15.9)

AVX512 = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
CASCADE_LAKE = CpuInfo("Intel(R) Xeon(R) Platinum 8280 CPU", 28, AVX512)  # AVX-512, no AMX, no BF16
SAPPHIRE_RAPIDS = CpuInfo("Intel(R) Xeon(R) Platinum 8480+", 56, AVX512 | {"avx512_bf16", "amx_tile", "amx_bf16",
                                                                          "amx_int8"})
ZEN4 = CpuInfo("AMD EPYC 9654", 96, AVX512 | {"avx512_bf16"})
HASWELL = CpuInfo("Intel(R) Xeon(R) CPU E5-2690 v3", 12, frozenset({"avx2", "fma"}))
GRAVITON = CpuInfo("ARM Neoverse-V1", 64, frozenset())

EVERYTHING = policy.simulated({"tensorrt": None, "onnxruntime": None, "torch": None, "openvino": None})
NO_TENSORRT = policy.simulated({"tensorrt": "tensorrt not installed", "onnxruntime": None, "torch": None})
TORCH_ONLY = policy.simulated({"tensorrt": "tensorrt not installed", "onnxruntime": "onnxruntime not installed",
                               "torch": None})


@pytest.mark.parametrize("gpu,everything,no_tensorrt,torch_only", [
    (T4, ("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "float16")),
    (A10, ("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "bfloat16")),
    (A100, ("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "bfloat16")),
    (H100, ("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "bfloat16")),
    (V100, ("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "float16")),
    (P100, ("tensorrt", "float32"), ("onnxruntime", "float32"), ("torch", "float32")),
], ids=["T4", "A10", "A100", "H100", "V100", "P100"])
def test_gpu_picks(gpu, everything, no_tensorrt, torch_only):
    for available, expected in ((EVERYTHING, everything), (NO_TENSORRT, no_tensorrt), (TORCH_ONLY, torch_only)):
        choice = policy.pick("cuda", gpu=gpu, available=available)
        assert (choice.backend, choice.precision) == expected, (gpu.name, choice.reason)
    fallback = policy.pick("cuda", gpu=gpu, available=TORCH_ONLY)
    assert "tensorrt not installed" in fallback.reason and "onnxruntime not installed" in fallback.reason


@pytest.mark.parametrize("cpu,expected", [
    (SAPPHIRE_RAPIDS, ("torch", "bfloat16")),
    (ZEN4, ("torch", "bfloat16")),
    (CASCADE_LAKE, ("torch", "float32")),
    (HASWELL, ("torch", "float32")),
    (GRAVITON, ("torch", "float32")),
], ids=["AMX", "AVX512-BF16", "AVX512-no-AMX", "AVX2", "ARM"])
def test_cpu_picks(cpu, expected):
    for available in (EVERYTHING, TORCH_ONLY):
        choice = policy.pick("cpu", cpu=cpu, available=available)
        assert (choice.backend, choice.precision) == expected


def test_rule_families():
    assert policy.rule_for("cuda", gpu=H100).family == "Ada, Hopper, Blackwell"
    assert policy.rule_for("cuda", gpu=A100).family == policy.rule_for("cuda", gpu=A10).family == "Ampere"
    assert policy.rule_for("cuda", gpu=T4).family == "Turing"
    assert policy.rule_for("cpu", cpu=SAPPHIRE_RAPIDS).family == "AMX"
    assert policy.rule_for("cpu", cpu=CASCADE_LAKE).family == "AVX-512"
    assert policy.rule_for("cpu", cpu=ZEN4).family == "AVX-512 with BF16"


def test_tune_candidates_follow_the_hardware():
    h100, _ = policy.tune_candidates("cuda", gpu=H100, available=EVERYTHING)
    t4, _ = policy.tune_candidates("cuda", gpu=T4, available=EVERYTHING)
    assert ("tensorrt", "fp8") in h100 and ("tensorrt", "bfloat16") in h100
    assert not any(p in ("fp8", "bfloat16") for _, p in t4)  # no FP8 or BF16 hardware on Turing
    assert ("tensorrt", "int8") in t4
    assert ("torch", "float32") in t4  # the accuracy reference is always measured
    amx, _ = policy.tune_candidates("cpu", cpu=SAPPHIRE_RAPIDS, available=EVERYTHING)
    assert ("openvino", "bfloat16") in amx and ("onnxruntime", "int8") in amx
    cascade, skipped = policy.tune_candidates("cpu", cpu=CASCADE_LAKE, available=TORCH_ONLY)
    assert cascade == [("torch", "float32")]
    assert any("onnxruntime not installed" in s for s in skipped)


def test_fixed_precision_filters_picks():
    choice = policy.pick("cuda", gpu=H100, available=EVERYTHING, precision="fp8")
    assert (choice.backend, choice.precision) == ("tensorrt", "fp8")
    choice = policy.pick("cuda", gpu=T4, available=TORCH_ONLY, precision="float32")
    assert (choice.backend, choice.precision) == ("torch", "float32")
    choice = policy.pick("cpu", cpu=HASWELL, available=EVERYTHING, precision="int8")
    assert (choice.backend, choice.precision) == ("onnxruntime", "int8")
    with pytest.raises(BackendUnavailable, match="no backend runs int8"):
        policy.pick("cpu", cpu=HASWELL, available=TORCH_ONLY, precision="int8")


def test_every_policy_row_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text()
    for rule in (*policy.GPU_POLICY, *policy.CPU_POLICY):
        assert rule.family in doc, rule.family
        for backend, precision in rule.picks:
            assert f"{backend} {precision}" in doc


def test_choose_precision_knows_quantized_names():
    assert policy.choose_precision("cpu", "int8") == "int8"
    assert policy.choose_precision("cpu", "fp8") == "fp8"
    assert policy.choose_precision("cpu", "fp16") == "float16"
    with pytest.raises(ValueError):
        policy.choose_precision("cpu", "int4")


def test_resolve_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path))
    choice = policy.resolve(None, "cpu", "float32", "torch")
    assert (choice.backend, choice.precision, choice.source) == ("torch", "float32", "explicit")
    with pytest.raises(BackendUnavailable):
        policy.resolve(None, "cpu", "auto", "tensorrt")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        policy.resolve(None, "cpu", "auto", "nonesuch")


def test_resolve_auto_without_tune_uses_the_table(tmp_path, monkeypatch, tiny_model_dirs):
    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path))
    choice = policy.resolve(tiny_model_dirs["embed"], "cpu")
    assert choice.source == "policy"
    assert (choice.backend, choice.precision) in policy.rule_for("cpu").picks + (("torch", "float32"),)
    assert choice.candidates[0] == (choice.backend, choice.precision)


def test_checkpoint_placement():
    assert policy.checkpoint_placement(policy.Choice("torch", "bfloat16", ""), "cuda") == (torch.bfloat16, "cuda")
    assert policy.checkpoint_placement(policy.Choice("tensorrt", "int8", ""), "cuda") == (torch.float32, "cpu")


def test_fingerprint_changes_with_hardware():
    assert probe.fingerprint("cpu", cpu_info=HASWELL) != probe.fingerprint("cpu", cpu_info=CASCADE_LAKE)
    assert probe.fingerprint("cpu", cpu_info=HASWELL) == probe.fingerprint("cpu", cpu_info=HASWELL)
    assert probe.fingerprint("cuda", gpu=A100).startswith("gpu-")
    assert probe.fingerprint("cuda", gpu=A100) != probe.fingerprint("cuda", gpu=H100)


def test_report_says_what_would_be_picked(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path))
    report = probe.report()
    cpu = report["auto"]["cpu"]
    assert cpu["backend"] in ("torch", "onnxruntime", "openvino") and cpu["precision"] in policy.PRECISIONS
    assert cpu["reason"].startswith("policy row") and cpu["source"] == "policy"
    assert set(report["backends"]) >= {"torch", "onnxruntime", "tensorrt", "openvino"}

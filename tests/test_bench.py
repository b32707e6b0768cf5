"""bertrt bench: shape parsing, seeded inputs, and the CLI end to end on a tiny random model."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch
from bertrt.bench.runner import COLUMNS, Row, _ratios, summarize, time_calls
from bertrt.bench.shapes import ShapeSpec, make_inputs, parse_shape, parse_shapes
from bertrt.errors import InputError


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_parse_shapes():
    assert parse_shape("1x128") == ShapeSpec(1, 128, 128)
    assert parse_shape(" 32 x 16-128 ") == ShapeSpec(32, 16, 128)
    specs = parse_shapes("1x128,8x128,32x16-128,8x128")
    assert [s.name for s in specs] == ["1x128", "8x128", "32x16-128"]
    assert parse_shapes(["1x8", "2x4-6"]) == [ShapeSpec(1, 8, 8), ShapeSpec(2, 4, 6)]
    assert not specs[1].variable and specs[2].variable


@pytest.mark.parametrize("bad", ["", "128", "0x128", "8x1", "8x64-32", "axb", "8x16-"])
def test_parse_shapes_rejects(bad):
    with pytest.raises(InputError):
        parse_shapes(bad)


def test_seeded_lengths_reproducible():
    spec = ShapeSpec(32, 16, 128)
    first = spec.lengths(seed=0)
    assert first == spec.lengths(seed=0)
    assert first != spec.lengths(seed=1)
    assert len(first) == 32 and all(16 <= n <= 128 for n in first)
    assert len(set(first)) > 1
    assert ShapeSpec(8, 128, 128).lengths() == [128] * 8


def test_inputs_packed_and_padded_agree(minilm_dir):
    spec = ShapeSpec(5, 4, 30)
    a = make_inputs(spec, minilm_dir / "vocab.txt", seed=3)
    b = make_inputs(spec, minilm_dir / "vocab.txt", seed=3)
    assert a.ids == b.ids
    assert a.lengths == spec.lengths(seed=3)
    valid = a.attention_mask.bool()
    assert torch.equal(a.input_ids[valid], a.packed.input_ids)
    assert a.packed.cu_seqlens[-1].item() == a.tokens == int(valid.sum())
    assert all(seq[0] == 101 and seq[-1] == 102 for seq in a.ids)
    assert a.input_ids.shape == (5, max(a.lengths))
    clipped = make_inputs(ShapeSpec(2, 100, 100), minilm_dir / "vocab.txt", max_length=64)
    assert clipped.lengths == [64, 64]


def test_timing_and_ratios():
    cpu = []
    times, out = time_calls(lambda: 7, warmup=1, repeats=5, cpu_times=cpu)
    assert len(times) == 5 and len(cpu) == 5 and out == 7
    median, p90, fastest = summarize([0.001, 0.002, 0.003, 0.004, 0.010])
    assert median == pytest.approx(3.0) and fastest == pytest.approx(1.0) and p90 > median
    rows = [Row("m", "1x8", "bertrt", "fp32", 2.0, 2.0, 2.0, 2.0, 1, 1.0, peer=False),
            Row("m", "1x8", "onnxruntime", "fp32", 4.0, 4.0, 4.0, 4.0, 1, 1.0),
            Row("m", "1x8", "openvino", "default", 5.0, 5.0, 5.0, 5.0, 1, 1.0)]
    _ratios(rows)
    assert [r.vs_best_peer for r in rows] == [0.5, 1.0, 1.25]
    assert rows[0].best_peer == "onnxruntime fp32"


def _peers() -> list[str]:
    peers = []
    if installed("transformers"):
        peers.append("transformers-fp32")
    if installed("transformers", "onnx", "onnxruntime"):
        peers.append("ort-fp32")
    if installed("transformers", "onnx", "onnxruntime", "openvino"):
        peers.append("openvino")
    return peers


@pytest.fixture(scope="module")
def bench_run(tiny_model_dirs, tmp_path_factory):
    from bertrt.cli import main

    root = tmp_path_factory.mktemp("bench")
    out, cache = root / "out", root / "cache"
    peers = _peers()
    rc = main(["bench", "--model", str(tiny_model_dirs["embed"]), "--shapes", "2x16,3x8-24", "--repeats", "2",
               "--warmup", "0", "--threads", "1", "--precisions", "fp32,bf16,int8a7",
               "--peers", ",".join(peers) or "none",
               "--out", str(out), "--cache-dir", str(cache), "--no-progress"])
    return rc, out, cache, peers


def test_bench_cli_writes_results(bench_run):
    rc, out, _, peers = bench_run
    assert rc == 0
    stem = out / "bench-embed"
    with open(stem.with_suffix(".csv")) as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    expected_engines = {"bertrt"} | {p.split("-")[0].replace("ort", "onnxruntime") for p in peers}
    assert {r["engine"] for r in rows} == expected_engines
    assert {r["shape"] for r in rows} == {"2x16", "3x8-24"}
    assert len(rows) == 2 * (3 + len(peers))
    assert {r["precision"] for r in rows if r["engine"] == "bertrt"} == {"fp32", "bf16", "int8a7"}
    for r in rows:
        assert float(r["cpu_ms"]) >= 0
        assert float(r["median_ms"]) > 0 and float(r["p90_ms"]) >= float(r["median_ms"]) - 1e-9
        # fidelity: pooled-embedding cosine to the FP32 reference, real tokens only
        limit = (0.9999 if r["precision"] in ("fp32", "default (float32)")
                 else 0.98 if "int8" in r["precision"] else 0.99)
        assert float(r["fidelity_min"]) > limit, r
        assert float(r["fidelity_mean"]) >= float(r["fidelity_min"])
        if peers:
            assert r["vs_best_peer"] and r["best_peer"]
    data = json.loads(stem.with_suffix(".json").read_text())
    meta = data["meta"]
    assert meta["machine"]["cpu_model"] and meta["machine"]["isa"] in ("amx", "avx512", "avx2", "scalar")
    assert meta["versions"]["torch"] == torch.__version__.split("-")[0]
    assert meta["shapes"]["3x8-24"]["tokens"] == sum(meta["shapes"]["3x8-24"]["lengths"])
    assert len(data["rows"]) == len(rows)
    if installed("matplotlib"):
        png = stem.with_suffix(".png")
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_bench_interleaved_with_a_second_kernel_setting(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    """--interleave times every subject in rounds (a turn each, rotating order); --kernels auto,torch
    adds bertrt[kernels=torch] rows to the same run, with the same fidelity check."""
    from bertrt.bench import runner
    from bertrt.cli import main

    order = []
    real_call = runner._call

    def recording_call(subject, inp, config):
        call = real_call(subject, inp, config)
        return lambda: (order.append(subject.label), call())[1]

    monkeypatch.setattr(runner, "_call", recording_call)
    peers = ["transformers-fp32"] if installed("transformers") else ["none"]
    rc = main(["bench", "--model", str(tiny_model_dirs["embed"]), "--shapes", "3x5-17", "--repeats", "3",
               "--warmup", "1", "--threads", "1", "--precisions", "fp32,int8a7", "--kernels", "auto,torch",
               "--interleave", "--peers", ",".join(peers), "--out", str(tmp_path), "--no-progress", "--no-plot"])
    assert rc == 0
    assert "bertrt[kernels=torch]" in capsys.readouterr().out  # the table prints the name, not rich markup
    data = json.loads((tmp_path / "bench-embed.json").read_text())
    assert data["meta"]["interleaved"] is True
    rows = {(r["engine"], r["precision"]): r for r in data["rows"]}
    ours = {("bertrt", "fp32"), ("bertrt", "int8a7"), ("bertrt[kernels=torch]", "fp32"),
            ("bertrt[kernels=torch]", "int8a7")}
    assert ours <= set(rows) and len(rows) == 4 + (peers != ["none"])
    for key in ours:
        assert rows[key]["repeats"] == 3 and not rows[key]["peer"]
        assert rows[key]["fidelity_min"] > (0.9999 if key[1] == "fp32" else 0.98)
    labels = sorted({label for label in order})
    assert len(labels) == len(rows)
    turns = order[len(labels):]  # after one warm-up call each: rounds of one turn per subject, rotating
    assert turns[0::2] == turns[1::2]  # a turn: one untimed call, then the timed one, of the same subject
    rounds = [turns[0::2][i:i + len(labels)] for i in range(0, len(turns) // 2, len(labels))]
    assert len(rounds) == 3 and all(sorted(r) == labels for r in rounds)
    assert rounds[1][0] == rounds[0][1] and rounds[2][0] == rounds[0][2]


def test_bench_rejects_bad_kernel_lists(tiny_model_dirs, tmp_path):
    from bertrt.cli import main

    args = ["bench", "--model", str(tiny_model_dirs["embed"]), "--out", str(tmp_path), "--no-progress", "--dry-run"]
    assert main([*args, "--kernels", "auto,auto"]) == 2
    assert main([*args, "--kernels", "auto,fast"]) == 2
    assert main([*args, "--kernels", "auto,torch"]) == 0


@pytest.mark.skipif(not installed("transformers", "onnx", "onnxruntime"), reason="onnxruntime/onnx not installed")
def test_onnx_export_keeps_masking(bench_run):
    """The peers' graphs come from bertrt's one exporter, in the cache the backends share; each is
    checked on a padded batch against transformers on each sequence alone, and ONNX Runtime's
    optimizer fuses attention in every layer."""
    _, out, cache, _ = bench_run
    graphs = sorted(p.name for p in (cache / "onnx").glob("*/embed-*.onnx"))
    assert graphs == ["embed-fp32-ort.onnx", "embed-fp32.onnx"]
    assert all((cache / "onnx").glob("*/embed-fp32-ort.onnx.json"))
    notes = json.loads((out / "bench-embed.json").read_text())["meta"]["notes"]["onnxruntime fp32"]
    assert notes["plain_check"]["max_abs_diff"] < 1e-4
    assert notes["check"]["max_abs_diff"] < 1e-4
    assert notes["fused_ops"].get("Attention") == 2  # the tiny model's 2 layers
    assert "fusion_warning" not in notes


def test_bench_cli_rejects_bad_arguments(tiny_model_dirs, tmp_path):
    from bertrt.cli import main

    args = ["bench", "--model", str(tiny_model_dirs["embed"]), "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--peers", "tensorflow"]) == 2
    assert main([*args, "--shapes", "8by128"]) == 2
    assert main([*args, "--precisions", "fp8"]) == 2


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_profile_times_every_gemm(tiny_model_dirs, precision):
    """Each layer's four GEMMs land in the GEMM row, the int8 FFN-in (GEMM+GELU in one call) included."""
    import bertrt
    from bertrt.bench.profile import profile_run
    from bertrt.quant.api import quantize_
    from bertrt.quant.configs import Int8DynamicConfig

    model_dir = tiny_model_dirs["embed"]
    engine = bertrt.load(model_dir, device="cpu")
    if precision == "int8":
        quantize_(engine, Int8DynamicConfig())
    inputs = make_inputs(ShapeSpec(3, 5, 17), model_dir / "vocab.txt", seed=1)
    result = profile_run(engine, inputs.packed, repeats=2, warmup=1)
    layers = engine.config.num_hidden_layers
    assert result["ops"]["linear"]["calls_per_run"] == 4 * layers
    assert result["ops"]["attention"]["calls_per_run"] == layers
    model = engine.checkpoint.model
    assert not any("forward_activation" in vars(m) for m in model.modules())  # the timing wrappers are gone

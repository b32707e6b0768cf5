"""`bertrt tune`: measure under an accuracy gate, store per (device, model, bucket), reuse; corrupt
or stale cache entries (tune results, exported ONNX files) are detected and rebuilt."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from bertrt.runtime import cache, onnx_export, policy, tune
from bertrt.runtime.backends import BACKENDS, Backend, TorchRunner

FAST = {"repeats": 1, "warmup": 0, "progress": False}
ONE_BUCKET = {**FAST, "buckets": ("1x128",)}


class NoisyRunner(TorchRunner):
    """torch, plus noise big enough to fail the accuracy gate; counts its runs."""

    runs = 0

    def run(self, batch, task):
        NoisyRunner.runs += 1
        out = super().run(batch, task)
        return out + 10 * torch.randn_like(out.float())


class CountingRunner(TorchRunner):
    runs = 0

    def run(self, batch, task):
        CountingRunner.runs += 1
        return super().run(batch, task)


@pytest.fixture
def fake_backends(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path / "cache"))
    for name, runner in (("noisy", NoisyRunner), ("counting", CountingRunner)):
        monkeypatch.setitem(BACKENDS, name, Backend(name, ("cpu",), ("float32",), lambda: None, runner))
    NoisyRunner.runs = CountingRunner.runs = 0


CANDIDATES = [("torch", "float32"), ("noisy", "float32"), ("counting", "float32")]


def test_tune_gates_measures_and_stores(fake_backends, tiny_model_dirs):
    record = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=CANDIDATES, **FAST)
    assert set(record["results"]) == {"torch/float32", "noisy/float32", "counting/float32"}
    assert record["results"]["noisy/float32"]["passed"] is False  # cosine far below 0.99
    assert record["results"]["torch/float32"]["agreement"] == {b: 1.0 for b in tune.BUCKETS}
    for bucket in (*tune.BUCKETS, "overall"):
        assert record["winners"][bucket]["backend"] in ("torch", "counting")
        assert all(ms > 0 for ms in record["results"]["counting/float32"]["ms"].values())
    path = tune.result_path(record["fingerprint"], record["model_hash"], "embed")
    assert path.is_file() and path.parent.name == record["fingerprint"]
    winner = tune.lookup(tiny_model_dirs["embed"], "cpu", "embed", "8x128")
    assert winner[:2] == (record["winners"]["8x128"]["backend"], "float32")


def test_load_auto_uses_the_tuned_winner(fake_backends, tiny_model_dirs, monkeypatch):
    record = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=[("torch", "float32"), ("counting", "float32")],
                       **ONE_BUCKET)
    choice = policy.resolve(tiny_model_dirs["embed"], "cpu", "auto", "auto")
    overall = record["winners"]["overall"]
    assert (choice.backend, choice.precision, choice.source) == (overall["backend"], "float32", "tuned")
    assert "bertrt tune" in choice.reason
    # a dtype the winner does not have sends resolve back to the table
    assert policy.resolve(tiny_model_dirs["embed"], "cpu", "bfloat16", "auto").source == "policy"


def test_stored_result_is_reused(fake_backends, tiny_model_dirs):
    pair = [("torch", "float32"), ("counting", "float32")]
    tune.tune(tiny_model_dirs["embed"], "cpu", candidates=pair, **ONE_BUCKET)
    runs = CountingRunner.runs
    again = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=pair, **ONE_BUCKET)
    assert again["cached"] is True and CountingRunner.runs == runs
    forced = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=pair, force=True, **ONE_BUCKET)
    assert not forced.get("cached") and CountingRunner.runs > runs


def test_corrupt_result_is_detected_and_remeasured(fake_backends, tiny_model_dirs, caplog):
    pair = [("torch", "float32"), ("counting", "float32")]
    record = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=pair, **ONE_BUCKET)
    path = tune.result_path(record["fingerprint"], record["model_hash"], "embed")
    text = path.read_text().replace('"1x128"', '"1x129"', 1)  # a flipped byte: valid JSON, bad checksum
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="bertrt.runtime"):
        assert tune.lookup(tiny_model_dirs["embed"], "cpu") is None
        assert "corrupt" in caplog.text
        path.write_text("{ not json")
        assert tune.lookup(tiny_model_dirs["embed"], "cpu") is None
    runs = CountingRunner.runs
    fresh = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=pair, **ONE_BUCKET)
    assert not fresh.get("cached") and CountingRunner.runs > runs  # re-measured
    assert cache.read_record(path) is not None and tune.lookup(tiny_model_dirs["embed"], "cpu") is not None


def test_stale_result_is_detected_and_remeasured(fake_backends, tiny_model_dirs, caplog):
    record = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=CANDIDATES[:1], **ONE_BUCKET)
    path = tune.result_path(record["fingerprint"], record["model_hash"], "embed")
    stale = {k: v for k, v in record.items() if k not in ("schema", "checksum")}
    stale["versions"] = {**stale["versions"], "onnxruntime": "0.0.1"}  # made under another onnxruntime
    cache.write_record(path, stale)
    with caplog.at_level(logging.WARNING, logger="bertrt.runtime"):
        assert tune.lookup(tiny_model_dirs["embed"], "cpu") is None
    assert "stale" in caplog.text
    old_schema = json.loads(path.read_text())
    old_schema["schema"] = cache.SCHEMA_VERSION - 1
    old_schema["checksum"] = cache.canonical_checksum(old_schema)
    path.write_text(json.dumps(old_schema))
    assert cache.read_record(path) is None
    fresh = tune.tune(tiny_model_dirs["embed"], "cpu", candidates=CANDIDATES[:1], **ONE_BUCKET)
    assert fresh["versions"] == tune.versions()


def test_model_change_misses_the_cache(tmp_path, tiny_model_dirs):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["embed"], copy)
    before = cache.model_hash(copy)
    assert cache.model_hash(copy) == before
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert cache.model_hash(copy) != before


def test_corrupt_onnx_export_is_rebuilt(tmp_path, monkeypatch, tiny_model_dirs, caplog):
    pytest.importorskip("onnxruntime")
    from bertrt.model import load_checkpoint

    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path))
    checkpoint = load_checkpoint(tiny_model_dirs["embed"])
    path = onnx_export.cached_onnx(checkpoint, "embed", "fp32")
    good = path.read_bytes()
    path.write_bytes(good[:-100] + b"\0" * 100)  # truncated / damaged on disk
    with caplog.at_level(logging.WARNING, logger="bertrt.runtime"):
        again = onnx_export.cached_onnx(checkpoint, "embed", "fp32")
    assert "corrupt" in caplog.text and again == path
    assert cache.verified_artifact(path) == path
    assert onnx_export.check_against_torch(path, checkpoint.model, "embed") <= 1e-4


def test_tensorrt_engine_key_covers_what_an_engine_depends_on():
    from bertrt.runtime.tensorrt_backend import Profile, engine_key

    base = ("NVIDIA A100", (8, 0), "10.3.0", "abcd", "embed", "float16", Profile())
    key = engine_key(*base)
    assert engine_key(*base) == key
    for i, other in enumerate(("NVIDIA A10", (8, 6), "10.4.0", "abce", "qa", "int8", Profile(max_batch=32))):
        changed = list(base)
        changed[i] = other
        assert engine_key(*changed) != key


def test_cli_tune(fake_backends, tiny_model_dirs, capsys):
    from bertrt.cli import main

    assert main(["tune", str(tiny_model_dirs["classify"]), "--device", "cpu", "--candidates",
                 "torch/float32,counting/float32", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"torch/float32", "counting/float32"}
    assert report["task"] == "classify" and set(report["winners"]) == {*tune.BUCKETS, "overall"}

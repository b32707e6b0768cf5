"""Every backend available here matches the reference on padded and mixed-length batches; GPU-only
paths skip with the reason; explicit bad choices raise, automatic ones fall back and say why."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from bertrt.api import Engine
from bertrt.batching import pack
from bertrt.model import load_checkpoint
from bertrt.ops.plan import plan_for
from bertrt.runtime import backends
from bertrt.runtime.backends import BACKENDS, Backend, BackendUnavailable, create_runner, select_backend

FP32_ATOL = 1e-4
TASKS = ("embed", "classify", "ner", "qa")
# (backend, precision) pairs that run on a CPU; each skips with its reason when unavailable here
CPU_PAIRS = [("torch", "float32"), ("onnxruntime", "float32"), ("openvino", "float32")]
INT8_PAIRS = [("onnxruntime", "int8"), ("openvino", "int8")]


@pytest.fixture(scope="module", autouse=True)
def bertrt_cache(tmp_path_factory):
    old = os.environ.get("BERTRT_CACHE_DIR")
    os.environ["BERTRT_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "bertrt-cache")
    yield
    if old is None:
        os.environ.pop("BERTRT_CACHE_DIR", None)
    else:
        os.environ["BERTRT_CACHE_DIR"] = old


def skip_unless_runs(name: str, device: str, precision: str) -> None:
    reason = BACKENDS[name].unavailable(device, precision)
    if reason:
        pytest.skip(f"{name}/{precision} on {device}: {reason}")


def mixed_batch(lengths, vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = [[101] + torch.randint(1000, vocab, (n - 2,), generator=generator).tolist() + [102] if n > 2 else
           [101, 102][:n] for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return pack(ids, types, list(range(len(lengths))))


def reference(model, batch, task: str) -> torch.Tensor:
    """Each sequence alone (no padding, no packing) through our padded forward in fp32."""
    outs = []
    cu = batch.cu_seqlens.tolist()
    for i in range(len(batch.indices)):
        ids = batch.input_ids[cu[i]:cu[i + 1]][None]
        types = batch.token_type_ids[cu[i]:cu[i + 1]][None]
        with torch.no_grad():
            out = model.forward_padded(ids, torch.ones_like(ids), types, task=task)
        outs.append(out[0])
    return torch.cat(outs) if task in ("ner", "qa") else torch.stack(outs)


@pytest.fixture(scope="module")
def reference_models(tiny_model_dirs):
    models = {}
    for task, path in tiny_model_dirs.items():
        model = load_checkpoint(path).model
        model.encoder.plan = plan_for("cpu", "float32", "ref")
        models[task] = model
    return models


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name,precision", CPU_PAIRS)
def test_backend_matches_reference_on_mixed_lengths(tiny_model_dirs, reference_models, name, precision, task):
    skip_unless_runs(name, "cpu", precision)
    checkpoint = load_checkpoint(tiny_model_dirs[task])
    runner, chosen, _ = create_runner(checkpoint, "cpu", [(name, precision)], explicit=True)
    assert chosen == name
    # a single token, odd lengths, and one long sequence that pads the others in padded backends
    batch = mixed_batch([1, 7, 30, 2, 13], checkpoint.config.vocab_size)
    got = runner.run(batch, task).float()
    want = reference(reference_models[task], batch, task)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-4)
    if task != "embed":  # a head checkpoint also embeds
        got = runner.run(batch, "embed").float()
        torch.testing.assert_close(got, reference(reference_models[task], batch, "embed"), atol=FP32_ATOL, rtol=1e-4)


@pytest.mark.parametrize("name,precision", INT8_PAIRS)
def test_int8_backends_keep_embeddings(tiny_model_dirs, reference_models, name, precision):
    skip_unless_runs(name, "cpu", precision)
    checkpoint = load_checkpoint(tiny_model_dirs["embed"])
    runner, _, _ = create_runner(checkpoint, "cpu", [(name, precision)], explicit=True)
    batch = mixed_batch([5, 16, 9, 24], checkpoint.config.vocab_size)
    cosine = torch.nn.functional.cosine_similarity(runner.run(batch, "embed").float(),
                                                   reference(reference_models["embed"], batch, "embed"))
    assert cosine.min() > 0.99


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_engine_on_graph_backend_matches_torch(tiny_model_dirs, name):
    skip_unless_runs(name, "cpu", "float32")
    texts = ["a short one", "a somewhat longer sentence about the weather in Paris", "x"]
    engines = {}
    for backend in ("torch", name):
        checkpoint = load_checkpoint(tiny_model_dirs["ner"])
        runner, _, _ = create_runner(checkpoint, "cpu", [(backend, "float32")], explicit=True)
        engines[backend] = Engine(checkpoint, runner, "ner", "cpu", "float32", backend)
    torch.testing.assert_close(torch.from_numpy(engines[name].embed(texts)),
                               torch.from_numpy(engines["torch"].embed(texts)), atol=FP32_ATOL, rtol=1e-4)
    encodings = engines["torch"].tokenizer.encode_batch(texts, "truncate")
    ids, types = [e.ids for e in encodings], [e.type_ids for e in encodings]
    wanted = engines["torch"].run_encodings(ids, types, "ner")
    for got, want in zip(engines[name].run_encodings(ids, types, "ner"), wanted):
        torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-4)
    assert len(engines[name].ner(texts)) == len(texts)


# -- GPU-only paths --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name,precision", [("onnxruntime", "float16"), ("tensorrt", "float16"),
                                            ("tensorrt", "int8"), ("torch", "bfloat16")])
def test_gpu_backends(tiny_model_dirs, reference_models, name, precision):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    skip_unless_runs(name, "cuda", precision)
    checkpoint = load_checkpoint(tiny_model_dirs["embed"], dtype=torch.float32, device="cpu")
    runner, _, _ = create_runner(checkpoint, "cuda", [(name, precision)], explicit=True)
    batch = mixed_batch([1, 7, 30, 2, 13], checkpoint.config.vocab_size)
    cosine = torch.nn.functional.cosine_similarity(runner.run(batch, "embed").float().cpu(),
                                                   reference(reference_models["embed"], batch, "embed"))
    assert cosine.min() > 0.99


def test_unavailable_backends_say_why():
    for name, backend in BACKENDS.items():
        reason = backend.available()
        assert reason is None or isinstance(reason, str) and reason, name
    if not torch.cuda.is_available():
        assert BACKENDS["tensorrt"].available() in ("tensorrt not installed (pip install tensorrt)", "no CUDA device")


# -- choosing --------------------------------------------------------------------------------------

def test_explicit_bad_choices_raise():
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        select_backend("cpu", "float32", "nonesuch")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        select_backend("cpu", "float32", "tensorrt")
    if BACKENDS["onnxruntime"].available() is None:
        with pytest.raises(BackendUnavailable, match="fp16"):
            select_backend("cpu", "float16", "onnxruntime")
    with pytest.raises(BackendUnavailable, match="int8"):
        select_backend("cpu", "int8", "torch")


def test_explicit_failure_in_create_raises(tiny_model_dirs, monkeypatch):
    monkeypatch.setitem(BACKENDS, "broken", _broken_backend())
    checkpoint = load_checkpoint(tiny_model_dirs["embed"])
    with pytest.raises(RuntimeError, match="engine build failed"):
        create_runner(checkpoint, "cpu", [("broken", "float32")], explicit=True)


def test_automatic_choice_falls_back_and_logs(tiny_model_dirs, monkeypatch, caplog):
    monkeypatch.setitem(BACKENDS, "broken", _broken_backend())
    checkpoint = load_checkpoint(tiny_model_dirs["embed"])
    with caplog.at_level(logging.WARNING, logger="bertrt.runtime"):
        runner, name, precision = create_runner(checkpoint, "cpu", [("broken", "float32"), ("tensorrt", "float16")])
    assert (name, precision) == ("torch", "float32")
    assert "engine build failed" in caplog.text
    if BACKENDS["tensorrt"].available():
        assert BACKENDS["tensorrt"].available() in caplog.text
    batch = mixed_batch([4, 9], checkpoint.config.vocab_size)
    assert runner.run(batch, "embed").shape == (2, checkpoint.config.hidden_size)


def test_select_backend_auto_skips_with_reason(caplog):
    with caplog.at_level(logging.INFO, logger="bertrt.runtime"):
        chosen = select_backend("cuda", "float16", "auto")
    assert chosen.name in BACKENDS
    if BACKENDS["tensorrt"].available():
        assert "tensorrt skipped" in caplog.text


def _broken_backend() -> Backend:
    def create(*args, **kwargs):
        raise RuntimeError("engine build failed: simulated")

    return Backend("broken", ("cpu", "cuda"), ("float32",), lambda: None, create)


def test_registry_keeps_public_names():
    assert {"torch", "onnxruntime", "tensorrt", "openvino"} <= set(BACKENDS)
    assert backends.TorchRunner.name == "torch"
    assert callable(backends.register)

"""ONNX export: the mask survives tracing, dynamic axes, opset, and full fusion by ORT's optimizer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from bertrt.model import load_checkpoint  # noqa: E402
from bertrt.runtime import onnx_export  # noqa: E402

FP32_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def bertrt_cache(tmp_path_factory):
    """One cache for the module (exports are the slow part); restored afterwards."""
    old = os.environ.get("BERTRT_CACHE_DIR")
    os.environ["BERTRT_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "bertrt-cache")
    yield
    if old is None:
        os.environ.pop("BERTRT_CACHE_DIR", None)
    else:
        os.environ["BERTRT_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dirs):
    return {task: load_checkpoint(path) for task, path in tiny_model_dirs.items()}


@pytest.fixture(scope="module")
def optimized(checkpoints):
    """task -> (fused-op statistics, path) of the fp32-ort variant."""
    out = {}
    for task, checkpoint in checkpoints.items():
        path = onnx_export.cached_onnx(checkpoint, task, "fp32-ort")
        record = json.loads((path.parent / (path.name + ".json")).read_text())
        out[task] = (record["fused"], path)
    return out


@pytest.mark.parametrize("task", ["embed", "classify", "ner", "qa"])
def test_optimizer_fuses_every_layer(optimized, checkpoints, task):
    fused, path = optimized[task]
    layers = checkpoints[task].config.num_hidden_layers
    gelu = "FastGelu" if checkpoints[task].config.gelu_approximation == "tanh" else "BiasGelu"
    assert fused["Attention"] == layers
    assert fused[gelu] == layers
    assert fused["SkipLayerNormalization"] == 2 * layers  # after attention and after the FFN
    assert fused["EmbedLayerNormalization"] == 1
    left = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not left & {"Softmax", "Erf", "LayerNormalization"}  # nothing of the encoder left unfused


def test_plain_graph_has_dynamic_axes_and_opset(checkpoints):
    path = onnx_export.cached_onnx(checkpoints["ner"], "ner", "fp32")
    model = onnx.load(str(path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == list(onnx_export.INPUT_NAMES)
    for tensor in model.graph.input:
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "sequence"]
    output = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in output[:2]] == ["batch", "sequence"]
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)  # standard ops only


@pytest.mark.parametrize("task", ["embed", "classify", "ner", "qa"])
@pytest.mark.parametrize("variant", ["fp32", "fp32-ort"])
def test_matches_torch_on_padded_mixed_batch(checkpoints, task, variant):
    checkpoint = checkpoints[task]
    path = onnx_export.cached_onnx(checkpoint, task, variant)
    assert onnx_export.check_against_torch(path, checkpoint.model, task) <= FP32_ATOL


@pytest.mark.parametrize("task", ["embed", "ner"])
def test_padding_does_not_change_outputs(checkpoints, task):
    """The mask survived tracing: extra padding columns leave real tokens' outputs unchanged."""
    checkpoint = checkpoints[task]
    session = ort.InferenceSession(str(onnx_export.cached_onnx(checkpoint, task, "fp32-ort")),
                                   providers=["CPUExecutionProvider"])
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    alone = session.run(None, feeds)[0]
    padded_ids = np.concatenate([ids, np.full((1, 9), 7592, dtype=np.int64)], axis=1)  # junk under the mask
    mask = np.concatenate([np.ones_like(ids), np.zeros((1, 9), dtype=np.int64)], axis=1)
    padded = session.run(None, {"input_ids": padded_ids, "attention_mask": mask,
                                "token_type_ids": np.zeros_like(padded_ids)})[0]
    if task == "ner":
        padded = padded[:, :ids.shape[1]]
    np.testing.assert_allclose(padded, alone, atol=FP32_ATOL)


def test_fp16_and_int8_variants(checkpoints):
    checkpoint = checkpoints["embed"]
    fp16 = onnx_export.cached_onnx(checkpoint, "embed", "fp16-ort")
    assert onnx_export.check_against_torch(fp16, checkpoint.model, "embed") < 5e-3
    int8 = onnx_export.cached_onnx(checkpoint, "embed", "int8")
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    ids, mask, types = (t.numpy() for t in onnx_export.dummy_inputs(3, 12, checkpoint.config.vocab_size))
    got = torch.from_numpy(session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0])
    with torch.no_grad():
        want = checkpoint.model.forward_padded(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
                                               task="embed")
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99


def test_cli_export(tiny_model_dirs, tmp_path, capsys):
    from bertrt.cli import main

    out = tmp_path / "classify.onnx"
    assert main(["export", str(tiny_model_dirs["classify"]), "--format", "onnx", "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["output"] == str(out)
    assert report["fused_operators"]["Attention"] == 2
    assert report["max_abs_diff_vs_torch"] <= FP32_ATOL
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["bertrt.task"] == "classify" and metadata["bertrt.variant"] == "fp32-ort"


@pytest.mark.slow
def test_minilm_fuses_all_six_layers(minilm_dir, tmp_path):
    checkpoint = load_checkpoint(minilm_dir)
    result = onnx_export.export(checkpoint, tmp_path / "minilm.onnx", "embed", "fp32-ort")
    assert {k: result.fused[k] for k in ("Attention", "BiasGelu", "SkipLayerNormalization",
                                         "EmbedLayerNormalization")} == {
        "Attention": 6, "BiasGelu": 6, "SkipLayerNormalization": 12, "EmbedLayerNormalization": 1}
    assert result.max_abs_diff <= FP32_ATOL

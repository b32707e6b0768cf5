"""bertrt.quant: configs, quantize_ on tiny models (SQNR per layer, agreement, filters), calibration
methods, checkpoints and the errors bad input gets. Never asserts speed."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from bertrt.errors import InputError, ModelLoadError
from bertrt.model import load_checkpoint
from bertrt.ops.int8_linear import int8_linear_ref, quantize_per_token
from bertrt.quant import (
    Bf16Config,
    Fp16Config,
    Int8DynamicConfig,
    Int8Linear,
    Int8StaticConfig,
    KeepPrecision,
    load_quantized,
    quantize_,
    save_quantized,
)
from bertrt.quant import calibration as calib
from bertrt.quant import report as rep
from bertrt.quant.configs import config_from_dict
from bertrt.quant.modules import has_int8_dot, onednn_available, packed_available
from torch import nn
from torch.nn import functional as F

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization stores weights in eight bits and keeps most of the accuracy.",
    "Paris is the capital of France and its largest city.",
    "A list comprehension creates a new list from an iterable.",
    "The meeting was moved to Thursday afternoon because of the storm.",
    "Exceptions propagate up the call stack until a handler catches them.",
    "She bought three apples, two pears and a melon at the market.",
    "Neural networks learn representations from data.",
]
HELD_OUT = [
    "The with statement wraps a block in methods defined by a context manager.",
    "Rain is expected over the weekend in most northern regions.",
    "He plays the violin in a small orchestra on Sundays.",
    "Integers have unlimited precision in Python.",
    "The museum opens at nine and closes at five.",
    "Dictionaries map hashable keys to arbitrary values.",
]
KERNELS = (["op"] + (["onednn"] if onednn_available() is None else [])
           + (["packed"] if packed_available() is None else []))
# Per-layer SQNR floors (dB) on random tiny models, each layer on the fp32 model's input. Int8 with
# per-channel weights gives ~40 dB per layer with per-token activations; one per-tensor static scale
# (asymmetric minmax) loses some on layers with wide inputs. Measured minima sit ~5 dB above these.
DYNAMIC_FLOOR_DB = 30.0
STATIC_FLOOR_DB = 20.0


@pytest.fixture(scope="module")
def classify_ckpt(tiny_model_dirs):
    return load_checkpoint(tiny_model_dirs["classify"])


@pytest.fixture(scope="module")
def embed_ckpt(tiny_model_dirs):
    return load_checkpoint(tiny_model_dirs["embed"])


def _quantized(ckpt, config, calibration=TEXTS):
    model = copy.deepcopy(ckpt.model)
    quantize_(model, config, calibration=calibration, tokenizer=ckpt.tokenizer)
    return model


def _outputs(model, ckpt, texts, task):
    return rep.run_outputs(model, calib.text_batches(texts, ckpt.tokenizer), task, len(texts))


# -- configs ----------------------------------------------------------------------------------------------


def test_config_roundtrip_and_validation():
    for config in (Bf16Config(keep=("head",)), Fp16Config(), Int8DynamicConfig(keep=("layer.0", "qkv")),
                   Int8StaticConfig(method="entropy", smoothquant_alpha=0.5, symmetric=True),
                   Int8DynamicConfig(act_bits=7), Int8StaticConfig(act_bits=7)):
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="calibration method"):
        Int8StaticConfig(method="mse")
    with pytest.raises(InputError, match="smoothquant_alpha"):
        Int8StaticConfig(smoothquant_alpha=1.5)
    with pytest.raises(InputError, match="kernel"):
        Int8DynamicConfig(kernel="amx")
    for bad in (6, 8.5, True, "7"):
        with pytest.raises(InputError, match="act_bits"):
            Int8DynamicConfig(act_bits=bad)
    with pytest.raises(InputError, match="unknown fields"):
        config_from_dict({"type": "int8-dynamic", "bogus": 1})
    assert Int8DynamicConfig(keep="head").keep == ("head",)


# -- the module -------------------------------------------------------------------------------------------


def _seven_bit_weights(kernel: str) -> bool:
    """Whether ``kernel`` runs 7-bit weights on this CPU: the packed kernel off the VNNI loop (its AVX2
    pair sums would saturate on 8-bit ones) and oneDNN without VNNI/AMX."""
    if kernel == "packed":
        from bertrt.ops import cpu_kernels  # only where the packed kernel is built

        return cpu_kernels.packed_weight_bits() == 7
    return kernel == "onednn" and not has_int8_dot()



@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_dynamic_matches_reference(kernel):
    """Exact int32 product: the same as int8_linear_ref on per-token int8 activations (the packed kernel,
    and oneDNN on CPUs without VNNI/AMX, run 7-bit weights, where 8-bit ones would saturate: compare
    with those)."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    x = torch.randn(13, 64) * 3
    q = Int8Linear.from_float(linear, mode="dynamic", kernel=kernel)
    x_q, x_scale = quantize_per_token(x)
    w_q, w_scale = q.weight, q.weight_scale
    if _seven_bit_weights(kernel):
        w_q, w_scale = torch.round(w_q.float() * (63 / 127)).to(torch.int8), w_scale * (127 / 63)
    expected = int8_linear_ref(x_q, x_scale, w_q, w_scale, q.bias)
    torch.testing.assert_close(q(x), expected, atol=1e-5, rtol=1e-5)
    assert rep.sqnr_db(linear(x).detach(), q(x)) > 30


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_linear_7bit_activations_agree_across_kernels(kernel, mode):
    """act_bits 7 puts the activations on a 7-bit grid in every kernel: each kernel matches the
    packed kernel's reference (same grid, 7-bit weights where the kernel uses them) and keeps a
    7-bit SQNR (~6 dB below 8-bit) against the float layer."""
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight, static_params_for

    torch.manual_seed(2)
    linear = nn.Linear(72, 40)
    x = torch.rand(11, 72) * 4 - 1.0
    static = dict(input_scale=4.0 / 255, input_zero_point=-64) if mode == "static" else {}
    q = Int8Linear.from_float(linear, mode=mode, kernel=kernel, act_bits=7, **static)
    assert "act_bits=7" in repr(q)
    y = q(x)
    assert rep.sqnr_db(linear(x).detach(), y) > 24
    args = static_params_for(7, static["input_scale"], static["input_zero_point"]) if static else (None, 0)
    if static:
        assert args[1] == round(-64 * 127 / 255) and args[0] == pytest.approx(4.0 / 127)
    if _seven_bit_weights(kernel):  # the packed kernel's own reference: exact integer product, float epilogue
        expected = int8_linear_packed_ref(x, pack_int8_weight(q.weight, q.weight_scale, q.bias, 7), "none", *args)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    else:  # 8-bit weights, the same 7-bit activations
        scale, zp = args if static else (None, 0)
        if static:
            x_q = torch.round(x / scale).add_(zp).clamp_(-64, 63)
            expected = ((x_q - zp) * scale) @ (q.weight.float() * q.weight_scale[:, None]).t() + q.bias
        else:
            x_q, x_scale = quantize_per_token(x, 63)
            expected = int8_linear_ref(x_q, x_scale, q.weight, q.weight_scale, q.bias)
        torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    q8 = Int8Linear.from_float(linear, mode=mode, kernel=kernel, **static)
    assert rep.sqnr_db(linear(x).detach(), q8(x)) > rep.sqnr_db(linear(x).detach(), y)  # the bit it costs


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_asymmetric_dynamic_agrees_across_kernels(kernel):
    """act_symmetric=False: per-token zero points over each token's range, in every kernel the same
    centred integers (x_q - z fits int8 at 7 bits), and more SQNR than symmetric 7-bit on one-sided
    inputs (GELU outputs), where a symmetric grid leaves its negative half unused."""
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight, quantize_per_token_asym

    torch.manual_seed(3)
    linear = nn.Linear(96, 24)
    x = F.gelu(torch.randn(9, 96) * 2)
    q = Int8Linear.from_float(linear, mode="dynamic", kernel=kernel, act_bits=7, act_symmetric=False)
    assert "act_symmetric=False" in repr(q)
    y = q(x)
    if _seven_bit_weights(kernel):
        packed = pack_int8_weight(q.weight, q.weight_scale, q.bias, 7)
        torch.testing.assert_close(y, int8_linear_packed_ref(x, packed, asymmetric=True), atol=1e-5, rtol=1e-5)
    else:
        x_c, x_scale, _ = quantize_per_token_asym(x)
        torch.testing.assert_close(y, int8_linear_ref(x_c, x_scale, q.weight, q.weight_scale, q.bias),
                                   atol=1e-4, rtol=1e-4)
    symmetric = Int8Linear.from_float(linear, mode="dynamic", kernel=kernel, act_bits=7)
    reference = linear(x).detach()
    assert rep.sqnr_db(reference, y) > rep.sqnr_db(reference, symmetric(x)) + 2
    with pytest.raises(ValueError, match="7-bit only"):
        Int8Linear.from_float(linear, mode="dynamic", act_bits=8, act_symmetric=False)


def test_dynamic_smoothquant_needs_calibration_and_moves_the_outliers(embed_ckpt):
    with pytest.raises(InputError, match="calibration"):
        _quantized(embed_ckpt, Int8DynamicConfig(smoothquant_alpha=0.5), calibration=None)
    with pytest.raises(InputError, match="act_bits=7"):
        Int8DynamicConfig(act_symmetric=False)
    with pytest.raises(InputError, match="smoothquant_alpha"):
        Int8DynamicConfig(smoothquant_alpha=1.5)
    model = _quantized(embed_ckpt, Int8DynamicConfig(act_bits=7, act_symmetric=False, smoothquant_alpha=0.5))
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert linears and all(m.input_multiplier is not None and not m.act_symmetric for m in linears)
    assert model.quantization["calibration"]["tokens"] > 0
    fp32 = torch.stack(_outputs(embed_ckpt.model, embed_ckpt, HELD_OUT, "embed"))
    got = torch.stack(_outputs(model, embed_ckpt, HELD_OUT, "embed"))
    assert rep.sqnr_db(fp32, got) > 20


def test_int8_linear_static_asymmetric_paths_agree():
    """The op path folds the zero point into the bias; oneDNN takes it natively: same numbers."""
    torch.manual_seed(1)
    linear = nn.Linear(48, 24)
    x = torch.rand(10, 48) * 4 - 0.5  # asymmetric range, like GELU outputs
    smooth = torch.rand(48) + 1.0  # x / smooth stays inside [-0.5, 3.5]
    q = Int8Linear.from_float(linear, mode="static", input_scale=4.0 / 255, input_zero_point=-96, smooth=smooth,
                              kernel="op")
    y_op = q(x)
    assert rep.sqnr_db(linear(x).detach(), y_op) > 30
    if onednn_available() is None:
        q.kernel = "onednn"
        if has_int8_dot():
            torch.testing.assert_close(q(x), y_op, atol=1e-5, rtol=1e-5)
        else:  # 7-bit weights: a coarser step, still close
            assert rep.sqnr_db(y_op, q(x)) > 25
    if packed_available() is None:  # the zero point handled in the kernel; 7-bit weights off the VNNI loop
        q.kernel = "packed"
        assert rep.sqnr_db(y_op, q(x)) > 25
        assert rep.sqnr_db(linear(x).detach(), q(x)) > 25


def test_int8_linear_keeps_int8_under_dtype_casts():
    q = Int8Linear.from_float(nn.Linear(16, 8), mode="dynamic")
    q.to(torch.bfloat16)
    assert q.weight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert q(x).dtype == torch.bfloat16
    torch.testing.assert_close(copy.deepcopy(q)(x), q(x))  # after a forward (prepacked weight cached)


# -- quantize_ on tiny models -----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_dynamic_sqnr_per_layer(embed_ckpt, kernel):
    model = _quantized(embed_ckpt, Int8DynamicConfig(kernel=kernel))
    batches = calib.text_batches(HELD_OUT, embed_ckpt.tokenizer)
    sqnr = rep.layer_sqnr(embed_ckpt.model, model, batches, "embed")
    assert len(sqnr) == 4 * embed_ckpt.config.num_hidden_layers
    assert min(sqnr.values()) >= DYNAMIC_FLOOR_DB, sqnr


@pytest.mark.parametrize("kernel", KERNELS)
def test_dynamic_7bit_sqnr_per_layer(embed_ckpt, kernel):
    """A 7-bit activation grid costs ~6 dB per layer against 8 bits."""
    model = _quantized(embed_ckpt, Int8DynamicConfig(kernel=kernel, act_bits=7))
    batches = calib.text_batches(HELD_OUT, embed_ckpt.tokenizer)
    sqnr = rep.layer_sqnr(embed_ckpt.model, model, batches, "embed")
    assert len(sqnr) == 4 * embed_ckpt.config.num_hidden_layers
    assert min(sqnr.values()) >= DYNAMIC_FLOOR_DB - 6, sqnr
    fid = rep.fidelity(embed_ckpt.model, model, HELD_OUT, embed_ckpt.tokenizer, "embed")
    assert fid["cosine_min"] > 0.98


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_sqnr_per_layer(embed_ckpt, method):
    model = _quantized(embed_ckpt, Int8StaticConfig(method=method, percentile=99.999))
    batches = calib.text_batches(HELD_OUT, embed_ckpt.tokenizer)
    sqnr = rep.layer_sqnr(embed_ckpt.model, model, batches, "embed")
    floor = STATIC_FLOOR_DB if method == "minmax" else STATIC_FLOOR_DB - 5  # clipping trades range for steps
    assert min(sqnr.values()) >= floor, sqnr
    fid = rep.fidelity(embed_ckpt.model, model, HELD_OUT, embed_ckpt.tokenizer, "embed")
    assert fid["cosine_min"] > 0.98


def test_classifier_agreement(classify_ckpt):
    texts = TEXTS + HELD_OUT
    for config in (Int8DynamicConfig(), Int8StaticConfig(), Int8StaticConfig(smoothquant_alpha=0.5)):
        model = _quantized(classify_ckpt, config)
        fid = rep.fidelity(classify_ckpt.model, model, texts, classify_ckpt.tokenizer, "classify")
        assert fid["agreement"] >= 0.85, (config, fid)
        assert fid["output_sqnr_db"] > 15


def test_static_differs_from_dynamic_and_records_scales(embed_ckpt):
    dyn = _quantized(embed_ckpt, Int8DynamicConfig())
    sta = _quantized(embed_ckpt, Int8StaticConfig())
    q_dyn, q_sta = dyn.encoder.layers[0].qkv, sta.encoder.layers[0].qkv
    assert q_dyn.mode == "dynamic" and not hasattr(q_dyn, "input_scale")
    assert q_sta.mode == "static" and q_sta.input_scale.item() > 0
    torch.testing.assert_close(q_dyn.weight, q_sta.weight)  # same weights, different activations
    assert sta.quantization["calibration"]["tokens"] > 0


@pytest.mark.parametrize("dtype,config", [(torch.bfloat16, Bf16Config()), (torch.float16, Fp16Config())])
def test_low_precision_casts(embed_ckpt, dtype, config):
    model = _quantized(embed_ckpt, config)
    assert model.encoder.layers[0].qkv.weight.dtype == dtype
    ref = torch.stack(_outputs(embed_ckpt.model, embed_ckpt, HELD_OUT, "embed"))
    out = torch.stack(_outputs(model, embed_ckpt, HELD_OUT, "embed"))
    assert torch.nn.functional.cosine_similarity(ref, out).min() > 0.999


def test_keep_filters_int8(classify_ckpt):
    model = _quantized(classify_ckpt, Int8DynamicConfig(keep=("head", "layer.0", "ffn_out")))
    assert type(model.head.classifier) is nn.Linear and type(model.head.pooler.dense) is nn.Linear
    assert all(type(m) is nn.Linear for m in model.encoder.layers[0].modules() if isinstance(m, nn.Linear))
    layer1 = model.encoder.layers[1]
    assert isinstance(layer1.qkv, Int8Linear) and type(layer1.ffn_out) is nn.Linear
    assert model.quantization["kept"] == ["head", "encoder.layers.0", "encoder.layers.1.ffn_out"]


def test_keep_filters_bf16(classify_ckpt):
    model = _quantized(classify_ckpt, Bf16Config(keep=("embeddings", "head", "layer.1")))
    assert isinstance(model.encoder.embeddings, KeepPrecision)
    assert model.encoder.embeddings.inner.word.weight.dtype == torch.float32
    assert model.head.inner.classifier.weight.dtype == torch.float32
    assert model.encoder.layers[1].inner.qkv.weight.dtype == torch.float32
    assert model.encoder.layers[0].qkv.weight.dtype == torch.bfloat16
    out = torch.stack(_outputs(model, classify_ckpt, HELD_OUT, "classify"))
    ref = torch.stack(_outputs(classify_ckpt.model, classify_ckpt, HELD_OUT, "classify"))
    assert (out.argmax(-1) == ref.argmax(-1)).all()


# -- calibration ------------------------------------------------------------------------------------------


def test_calibration_methods_on_known_data():
    torch.manual_seed(0)
    stats = calib.ChannelStats()
    x = torch.randn(20000, 8)
    x[0, 0] = 40.0  # one outlier
    stats.update_minmax(x)
    stats.start_histograms(2048)
    stats.update_histograms(x)
    s_minmax, z = calib.activation_qparams(stats, "minmax", True, 99.99)
    assert s_minmax == pytest.approx(40.0 / 127) and z == 0
    s_full, _ = calib.activation_qparams(stats, "percentile", True, 100.0)
    assert s_full == pytest.approx(s_minmax, rel=1e-3)
    s_pct, _ = calib.activation_qparams(stats, "percentile", True, 99.9)
    assert 3.0 / 127 < s_pct < 4.5 / 127  # |N(0,1)| 99.9th percentile is 3.29
    s_kl, _ = calib.activation_qparams(stats, "entropy", True, 99.99)
    assert 2.0 / 127 < s_kl < 10.0 / 127
    scale, zp = calib.activation_qparams(stats, "minmax", False, 99.99)
    lo, hi = float(x.min()), 40.0
    assert scale == pytest.approx((hi - lo) / 255) and -128 <= zp <= 127
    assert (-128 - zp) * scale == pytest.approx(lo, abs=scale)


def test_smoothquant_factors():
    act = torch.tensor([8.0, 1.0, 0.0])
    weight = torch.tensor([[0.5, 2.0, 1.0], [-1.0, 0.25, 1.0]])
    s = calib.smoothquant_factors(act, weight, 0.5)
    torch.testing.assert_close(s, torch.tensor([math.sqrt(8.0) / 1.0, 1.0 / math.sqrt(2.0), 1.0]))


def test_read_texts(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "a b", "label": "x"}\n\n{"text": "c", "label": "y"}\n')
    assert calib.read_texts(f) == (["a b", "c"], ["x", "y"])
    f.write_text("plain line\nanother\n")
    assert calib.read_texts(f) == (["plain line", "another"], None)


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_calibration_inputs(embed_ckpt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=empty)
    with pytest.raises(InputError, match="not found"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=tmp_path / "nope.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(InputError, match="cannot be read"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=binary)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"txt": "no text field"}\n')
    with pytest.raises(InputError, match="line 1"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=bad_json)
    with pytest.raises(InputError, match="needs calibration"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=None)
    with pytest.raises(InputError, match="empty"):
        _quantized(embed_ckpt, Int8StaticConfig(), calibration=[])


def test_config_that_does_not_fit(embed_ckpt, classify_ckpt):
    with pytest.raises(InputError, match="'layer.7' matches no module"):
        _quantized(embed_ckpt, Int8DynamicConfig(keep=("layer.7",)))
    with pytest.raises(InputError, match="matches no module"):
        _quantized(embed_ckpt, Int8DynamicConfig(keep=("head",)))  # an embedding model has no head
    with pytest.raises(InputError, match="no linear layer"):
        _quantized(classify_ckpt, Int8DynamicConfig(keep=("encoder", "head")))
    with pytest.raises(InputError, match="cannot keep"):
        _quantized(embed_ckpt, Bf16Config(keep=("encoder.layers.0.attn_norm",)))
    model = _quantized(embed_ckpt, Int8DynamicConfig())
    with pytest.raises(InputError, match="already quantized"):
        quantize_(model, Int8DynamicConfig())
    with pytest.raises(InputError, match="quantization config"):
        quantize_(copy.deepcopy(embed_ckpt.model), "int8")


# -- checkpoints ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [Int8StaticConfig(smoothquant_alpha=0.5), Int8DynamicConfig(keep=("head",)),
                                    Int8DynamicConfig(act_bits=7), Bf16Config(keep=("embeddings",)),
                                    Int8DynamicConfig(act_bits=7, act_symmetric=False, smoothquant_alpha=0.5)],
                         ids=["static", "dynamic", "dynamic-a7", "bf16", "dynamic-a7-asym-smooth"])
def test_save_load_roundtrip(classify_ckpt, tiny_model_dirs, tmp_path, config):
    model = _quantized(classify_ckpt, config)
    out = save_quantized(model, tmp_path / "q", tiny_model_dirs["classify"])
    assert (out / "quantization.json").exists() and (out / "tokenizer.json").exists()
    loaded = load_quantized(out)
    assert loaded.model.quantization["config"] == config.to_dict()
    a = torch.stack(_outputs(model, classify_ckpt, HELD_OUT, "classify"))
    b = torch.stack(_outputs(loaded.model, loaded, HELD_OUT, "classify"))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_load_rejects_broken_checkpoints(embed_ckpt, tiny_model_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    out = save_quantized(_quantized(embed_ckpt, Int8StaticConfig()), tmp_path / "q", tiny_model_dirs["embed"])
    state = load_file(str(out / "model.safetensors"))
    scale = state.pop("encoder.layers.1.ffn_out.input_scale")
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensor encoder\.layers\.1\.ffn_out\.input_scale"):
        load_quantized(out)
    state["encoder.layers.1.ffn_out.input_scale"] = -scale
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="non-positive"):
        load_quantized(out)
    state["encoder.layers.1.ffn_out.input_scale"] = scale
    state["encoder.layers.0.qkv.weight"] = state["encoder.layers.0.qkv.weight"].float()
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"encoder\.layers\.0\.qkv\.weight is torch.float32"):
        load_quantized(out)
    (out / "quantization.json").unlink()
    with pytest.raises(ModelLoadError, match="no quantization.json"):
        load_quantized(out)
    with pytest.raises(ModelLoadError, match="not found"):
        load_quantized(tmp_path / "missing")


# -- command line -----------------------------------------------------------------------------------------


def test_cli_quantize(tiny_model_dirs, tmp_path, capsys):
    from bertrt.cli import main

    calib_file = tmp_path / "calib.txt"
    calib_file.write_text("\n".join(TEXTS) + "\n")
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(json.dumps({"text": t, "label": "positive"}) for t in HELD_OUT) + "\n")
    out = tmp_path / "out"
    code = main(["quantize", str(tiny_model_dirs["classify"]), "--config", "int8-static", "--calib", str(calib_file),
                 "--eval", str(eval_file), "--keep", "head", "--no-latency", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["fidelity"]["agreement"] >= 0.8 and "accuracy_quantized" in report["fidelity"]
    assert report["layer_sqnr_db_min"] >= STATIC_FLOOR_DB
    assert report["size_bytes"]["quantized"] > 0
    assert (out / "quantization_report.md").read_text().startswith("# Quantization report: int8-static")
    load_quantized(out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["quantize", str(tiny_model_dirs["classify"]), "--config", "int8-static", "--calib", str(empty),
                 "--no-latency", "--out", str(tmp_path / "out2")])
    assert code == 2
    assert "is empty" in capsys.readouterr().err
    code = main(["quantize", str(tiny_model_dirs["classify"]), "--act-bits", "7", "--no-latency",
                 "--out", str(tmp_path / "out3")])
    assert code == 0
    loaded = load_quantized(tmp_path / "out3")
    assert loaded.model.quantization["config"]["act_bits"] == 7
    assert {m.act_bits for m in loaded.model.modules() if isinstance(m, Int8Linear)} == {7}
    base = ["quantize", str(tiny_model_dirs["classify"]), "--act-bits", "7", "--act-asymmetric", "--smoothquant", "0.5",
            "--no-latency"]
    assert main([*base, "--out", str(tmp_path / "out4")]) == 2  # SmoothQuant without --calib
    assert "needs --calib" in capsys.readouterr().err
    assert main([*base, "--calib", str(calib_file), "--out", str(tmp_path / "out4")]) == 0
    loaded = load_quantized(tmp_path / "out4")
    assert loaded.model.quantization["config"]["smoothquant_alpha"] == 0.5
    assert all(not m.act_symmetric and m.input_multiplier is not None
               for m in loaded.model.modules() if isinstance(m, Int8Linear))


def test_qdq_export(embed_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort
    from bertrt.quant.onnx_qdq import TextReader, export_qdq

    path = export_qdq(embed_ckpt, tmp_path / "qdq.onnx", TEXTS)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    feed = TextReader(HELD_OUT, embed_ckpt.tokenizer, batch_size=len(HELD_OUT)).get_next()
    got = session.run(None, feed)[0]
    ref = torch.stack(_outputs(embed_ckpt.model, embed_ckpt, HELD_OUT, "embed")).numpy()
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.98


def test_bertrt_load_runs_a_quantized_directory(classify_ckpt, tiny_model_dirs, tmp_path):
    """bertrt.load recognises a `bertrt quantize` output and classifies like the FP32 model."""
    import bertrt
    from bertrt.runtime.backends import BackendUnavailable

    out = save_quantized(_quantized(classify_ckpt, Int8DynamicConfig()), tmp_path / "q", tiny_model_dirs["classify"])
    engine = bertrt.load(out)
    assert engine.backend == "torch" and engine.task == "classify"
    texts = [f"review number {i}: {'good ' * (i % 5)}{'bad ' * (i % 3)}" for i in range(24)]
    reference = bertrt.load(tiny_model_dirs["classify"], dtype="float32").classify(texts)
    agreement = np.mean([a["label"] == b["label"] for a, b in zip(engine.classify(texts), reference, strict=True)])
    assert agreement >= 0.9
    with pytest.raises(BackendUnavailable, match="bertrt-quantized checkpoint"):
        bertrt.load(out, backend="onnxruntime")

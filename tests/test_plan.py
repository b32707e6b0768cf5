"""The kernel plan and measured dispatch (bertrt.ops.plan / measure): one immutable plan per engine,
candidates self-checked and timed on this machine, broken or slow candidates never chosen, batch
invariance bit-identical in every precision."""

from __future__ import annotations

import dataclasses
import json
import time

import bertrt
import numpy as np
import pytest
import torch
from bertrt.ops import measure, plan, registry
from bertrt.ops.plan import KernelPlan, plan_for

SHAPE = {"hidden": 48, "heads": 3, "intermediate": 72, "eps": 1e-12, "gelu": "none"}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty dispatch cache: every check and timing is made anew in this test."""
    monkeypatch.setenv("BERTRT_CACHE_DIR", str(tmp_path))
    measure.forget()
    yield tmp_path
    measure.forget()


def broken_bias_gelu(x, bias, approximate="none"):
    return registry.resolve("bias_gelu", "torch")(x, bias, approximate) + 1e-2  # wrong on every element


def slow_bias_gelu(x, bias, approximate="none"):
    time.sleep(0.005)
    return registry.resolve("bias_gelu", "ref")(x, bias, approximate)


@pytest.fixture
def fake_candidates():
    registry.register_candidate("bias_gelu", "broken", broken_bias_gelu)
    registry.register_candidate("bias_gelu", "slow", slow_bias_gelu)
    yield
    registry.unregister_candidate("bias_gelu", "broken")
    registry.unregister_candidate("bias_gelu", "slow")


def test_broken_candidate_is_disabled_with_one_warning_and_slow_one_is_never_picked(fresh_cache, fake_candidates):
    with pytest.warns(UserWarning, match="bias_gelu implementation 'broken' failed its self-check") as caught:
        kernel_plan = plan_for("cpu", "float32", "auto", SHAPE)
    assert sum("'broken'" in str(w.message) for w in caught) == 1
    choice = kernel_plan.choice("bias_gelu")
    assert "broken" not in choice.impls and "slow" not in choice.impls
    assert "failed self-check: broken" in choice.reason
    record = measure.store("cpu").get("check|bias_gelu|broken|float32|h48|n3")
    assert record["passed"] is False and record["error"] > record["bound"]
    assert measure.store("cpu").get("check|bias_gelu|slow|float32|h48|n3")["passed"] is True
    # the measurements are cached: the next plan is built without a warning and without timing anything
    measure.forget()
    calls = []
    original = measure.time_op
    try:
        measure.time_op = lambda *a, **k: calls.append(a) or original(*a, **k)
        with warnings_as_errors():
            again = plan_for("cpu", "float32", "auto", SHAPE)
    finally:
        measure.time_op = original
    assert calls == [] and again == kernel_plan
    assert json.loads(measure.cache_path("cpu").read_text())["schema"] == measure.SCHEMA


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


# ModernBERT: GeGLU MLP, pre-norm LayerNorms returning the residual sum, no LayerNorm beta, embeddings
# without position (rotary) or token-type tables
MODERN_SHAPE = {**SHAPE, "gated": True, "prenorm": True, "norm_bias": False, "position_table": False,
                "type_table": False}


def test_family_options_are_checked_and_an_implementation_without_them_is_never_picked(fresh_cache, fake_candidates):
    # "slow" takes no gated= option: for BERT it passes, for a GeGLU model its check fails and it is disabled
    with pytest.warns(UserWarning, match="'slow' failed its self-check") as caught:
        kernel_plan = plan_for("cpu", "float32", "auto", MODERN_SHAPE)
    assert not any("'cpu:" in str(w.message) or "'torch'" in str(w.message) for w in caught)
    for op in plan.PLANNED_OPS:
        choice = kernel_plan.choice(op)
        assert choice.reason.startswith("measured"), (op, choice.reason)
        assert "slow" not in choice.impls and "broken" not in choice.impls
    store = measure.store("cpu")
    options = "gated=True,norm_bias=False,position_table=False,prenorm=True,type_table=False"
    for op in ("bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm"):
        record = store.get(f"check|{op}|torch|float32|h48|n3|{options}")
        assert record is not None and record["passed"] is True, (op, record)
    assert store.get(f"check|bias_gelu|slow|float32|h48|n3|{options}")["passed"] is False
    # the BERT records are separate: the same candidate still passes there
    assert measure.store("cpu").get("check|bias_gelu|slow|float32|h48|n3") is None


def test_model_shape_of_names_what_the_family_needs():
    from types import SimpleNamespace

    bert = SimpleNamespace(hidden_size=48, num_attention_heads=3, intermediate_size=72, layer_norm_eps=1e-12)
    assert plan.model_shape_of(bert) == SHAPE  # a BERT's shape, hence its cached records, are unchanged
    modern_family = SimpleNamespace(modern=True, position_embeddings=False, token_type_table=False)
    modern = SimpleNamespace(**vars(bert), family=modern_family, norm_bias=False)
    assert plan.model_shape_of(modern) == MODERN_SHAPE
    distil = SimpleNamespace(**vars(bert), family=SimpleNamespace(token_type_table=False))
    assert plan.model_shape_of(distil) == {**SHAPE, "type_table": False}


def test_measured_inputs_follow_the_family_options():
    args = measure.inputs("bias_gelu", torch.float32, {**MODERN_SHAPE, "tokens": 3}, "cpu")
    assert args[0].shape == (3, 2 * 72) and measure.options("bias_gelu", MODERN_SHAPE) == {"gated": True}
    args = measure.inputs("embedding_layer_norm", torch.float32, {**MODERN_SHAPE, "tokens": 3}, "cpu")
    assert args[2] is None and args[4] is None and args[1] is None and args[5] is None and args[7] is None
    args = measure.inputs("bias_residual_layer_norm", torch.float32, {**MODERN_SHAPE, "tokens": 3}, "cpu")
    assert args[4] is None and measure.options("bias_residual_layer_norm", MODERN_SHAPE) == {"return_sum": True}


def test_the_fastest_passing_candidate_wins_per_bucket(fresh_cache, monkeypatch):
    fake = {"torch": (1.0, 1.0, 3.0), "cpu": (2.0, 0.5, 0.5)}

    def fake_time(op, impl, dtype, shape, device):
        index = measure.BUCKETS.index(next(b for b in measure.BUCKETS if shape["tokens"] <= b))
        return fake["cpu" if impl.startswith("cpu") else impl][index]

    monkeypatch.setattr(measure, "time_op", fake_time)
    kernel_plan = plan_for("cpu", "float32", "auto", SHAPE)
    choice = kernel_plan.choice("bias_gelu")
    if registry.availability("bias_gelu")["cpu"] is not None:
        assert choice.impls == ["torch"]
        return
    assert choice.impl_for(1) == "torch"  # smallest bucket: torch was faster
    assert choice.impl_for(300).startswith("cpu:") and choice.impl_for(10**6).startswith("cpu:")
    assert kernel_plan.impl("bias_gelu", 10**6) == choice.impl_for(10**6)


def test_dispatch_off_uses_the_static_order_and_says_so(fresh_cache, monkeypatch):
    monkeypatch.setenv("BERTRT_DISPATCH", "off")
    kernel_plan = plan_for("cpu", "float32", "auto", SHAPE)
    assert kernel_plan.source == "static"
    assert "static order" in kernel_plan.choice("attention").reason
    assert not measure.cache_path("cpu").exists()


def test_plan_is_immutable_printable_and_validated():
    kernel_plan = plan_for("cpu", "float32", "torch", SHAPE)
    assert kernel_plan.source == "explicit" and kernel_plan.impl("attention", 100) == "torch"
    with pytest.raises(dataclasses.FrozenInstanceError):
        kernel_plan.gemm = None  # type: ignore[misc]
    text = str(kernel_plan)
    for op in plan.PLANNED_OPS:
        assert op in text
    json.dumps(kernel_plan.as_dict())
    with pytest.raises(bertrt.InputError, match="kernels must be one of"):
        plan_for("cpu", "float32", "fastest", SHAPE)
    with pytest.raises(bertrt.InputError, match="kernels must be one of"):
        bertrt.load(kernels="tritonn")
    with pytest.raises(bertrt.InputError, match="not batch-invariant"):
        plan_for("cpu", "float32", "torch", SHAPE, batch_invariant=True)


def test_engine_plan_is_read_by_the_encoder(tiny_model_dirs):
    engine = bertrt.load(tiny_model_dirs["embed"], device="cpu", dtype="float32", kernels="torch")
    assert isinstance(engine.plan, KernelPlan) and engine.plan is engine.runner.model.encoder.plan
    assert engine.plan.gemm_for(10) == "torch" and not engine.plan.shares_cores
    auto = bertrt.load(tiny_model_dirs["embed"], device="cpu", dtype="float32")
    assert auto.plan.source in ("measured", "static")
    np.testing.assert_allclose(auto.embed(["a short text", "x"]), engine.embed(["a short text", "x"]), atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_invariant_engine_is_bit_identical_alone_and_in_a_batch(minilm_dir, dtype):
    if registry.availability("linear")["cpu"] is not None:
        pytest.skip(f"batch invariance needs bertrt's CPU GEMM: {registry.availability('linear')['cpu']}")
    engine = bertrt.load(minilm_dir, device="cpu", dtype=dtype, batch_invariant=True)
    assert engine.plan.batch_invariant and engine.precision == dtype
    described = engine.plan.as_dict()
    assert all(entry["batch_invariant"] for entry in described["ops"].values()) and described["gemm"]["batch_invariant"]
    texts = [f"sentence number {i} " + "with more words " * (i % 5) for i in range(16)]
    together = engine.embed(texts)
    for i in (0, 3, 15):
        alone = engine.embed([texts[i]])[0]
        assert np.array_equal(alone, together[i]), f"text {i}: max diff {np.abs(alone - together[i]).max()}"
    # and in another batch composition
    np.testing.assert_array_equal(engine.embed(texts[8:] + texts[:2])[-1], together[1])


def test_batch_invariant_plan_holds_one_implementation_at_every_size(fresh_cache, monkeypatch):
    # Timings where the winner changes with the token count (as cpu:avx2 / cpu:avx512 do on an AVX-512
    # machine): the measured plan switches by bucket, the batch-invariant plan must not.
    def timed(op, impl, precision, shape, device):
        order = sorted(plan.candidates(op, device))
        return 1.0 + (order.index(impl) + shape["tokens"].bit_length() + len(shape["lengths"])) % len(order)

    monkeypatch.setattr(measure, "timed", timed)
    free = plan_for("cpu", "float32", "auto", SHAPE)
    assert any(len(free.choice(op).impls) > 1 for op in plan.PLANNED_OPS if len(plan.candidates(op, "cpu")) > 1)
    fixed = plan_for("cpu", "float32", "auto", SHAPE, batch_invariant=True)
    for op in plan.PLANNED_OPS:
        choice = fixed.choice(op)
        assert len(choice.impls) == 1, f"{op}: {choice.impls}"
        assert {choice.impl_for(t, r) for t in (1, 64, 65, 600, 5000) for r in (False, True)} == set(choice.impls)
        assert plan.invariant(op, choice.impls[0]) and "one implementation at every size" in choice.reason


def test_batch_invariant_refuses_graph_backends(minilm_dir):
    with pytest.raises(bertrt.InputError, match="batch_invariant=True runs on the torch backend"):
        bertrt.load(minilm_dir, backend="onnxruntime", batch_invariant=True)


def test_doctor_lists_every_candidate_with_its_result(fresh_cache, fake_candidates, tiny_model_dirs, capsys):
    from bertrt.cli import main

    with pytest.warns(UserWarning, match="'broken' failed its self-check"):
        assert main(["doctor", "--model", str(tiny_model_dirs["embed"]), "--dtype", "float32"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["op", "impl", "isa", "dtype", "inv", "result"]
    broken = next(line for line in lines if line.split()[:2] == ["bias_gelu", "broken"])
    assert "FAIL" in broken
    assert any(line.split()[:2] == ["bias_gelu", "torch"] and "pass" in line for line in lines)
    assert "bias_gelu/broken/float32" in err


def test_an_implementation_limit_is_the_reason_it_is_not_a_candidate(fresh_cache, monkeypatch):
    """head_dim 160 is over the cpu attention kernels' 128 (their glue's LIMITS): the plan says so and
    takes the next candidate; asking for those kernels is an InputError naming the limit."""
    wide = {**SHAPE, "hidden": 480, "heads": 3}  # head_dim 160
    assert registry.limit_reason("attention", "cpu", head_dim=160) == \
        "head_dim 160 is outside the cpu kernel's range [1, 128]"
    assert registry.limit_reason("attention", "cpu", head_dim=64) is None
    assert registry.limit_reason("attention", "torch", head_dim=4096) is None
    kernel_plan = plan_for("cpu", "float32", "auto", wide)
    assert kernel_plan.choice("attention").impls == ["torch"]
    assert "head_dim 160 is outside the cpu kernel's range" in kernel_plan.choice("attention").reason
    assert kernel_plan.impl("bias_gelu", 10).startswith(("cpu", "torch"))  # other ops are not limited
    with pytest.raises(bertrt.InputError, match=r"kernels='cpu' cannot run this model: attention: head_dim 160"):
        plan_for("cpu", "float32", "cpu", wide)
    monkeypatch.setenv("BERTRT_DISPATCH", "off")
    assert plan_for("cpu", "float32", "auto", wide).impl("attention", 10) == "torch"


def test_a_rebuilt_extension_gets_its_own_measurements(monkeypatch):
    """The dispatch cache key holds a digest of the compiled extensions: a kernel rebuilt under the same
    version string is self-checked and timed again, not trusted on the old binary's verdict."""
    from bertrt.ops import measure

    first = measure.build_identity()
    assert len(first) == 16 and first == measure.build_identity()
    keys = set()
    for build in ("old build", "new build"):
        monkeypatch.setattr(measure, "build_identity", lambda build=build: build)
        keys.add(measure.machine_key("cpu"))
    assert len(keys) == 2

"""bertrt distill: student init from teacher layers, the losses fall, resume is exact, the output loads in
transformers (and as a sentence-transformers embedder), and the report is written."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from bertrt.train import cli  # noqa: E402
from bertrt.train.distill import (  # noqa: E402
    DistillConfig,
    LossWeights,
    attention_kl,
    default_layer_map,
    distill,
    init_from_teacher,
    similarity_correlation_loss,
    similarity_mse,
    similarity_pairs_mse,
    soft_label_kl,
    student_config,
)
from bertrt.train.finetune import FinetuneConfig, finetune  # noqa: E402
from bertrt.train.loop import TrainConfig, TrainingInterrupted  # noqa: E402
from bertrt.train.report import spearman  # noqa: E402
from bertrt.train.testing import make_tiny_model, write_sequence_csv  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-layer tiny embedder and a 4-layer classification teacher fine-tuned from it."""
    root = tmp_path_factory.mktemp("distill")
    embedder = make_tiny_model(root / "embedder", layers=4)
    train, dev = write_sequence_csv(root / "train.csv", 160, seed=1), write_sequence_csv(root / "dev.csv", 60, seed=2)
    teacher = root / "teacher"
    finetune(FinetuneConfig(model_dir=str(embedder), train_file=str(train), max_length=32, train=TrainConfig(
        out_dir=str(teacher), batch_size=16, learning_rate=5e-3, max_steps=60, threads=1, progress=False)))
    return {"root": root, "embedder": embedder, "teacher": teacher, "train": train, "dev": dev}


def _config(setup, teacher, out, layers=2, hidden=None, eval_file=None, latency=False, weights=None, **train):
    train = {"batch_size": 16, "learning_rate": 2e-3, "max_steps": 24, "checkpoint_every": 8, "threads": 1,
             "progress": False, **train}
    return DistillConfig(teacher_dir=str(teacher), train_file=str(setup["train"]), student_layers=layers,
                         hidden_size=hidden, eval_file=str(eval_file) if eval_file else None, max_length=32,
                         weights=weights or LossWeights(), latency=latency,
                         train=TrainConfig(out_dir=str(out), **train))


def _history(out_dir):
    return json.loads((out_dir / "training_log.json").read_text())["history"]


def test_default_layer_map():
    assert default_layer_map(6, 3) == [1, 3, 5]
    assert default_layer_map(12, 4) == [2, 5, 8, 11]
    assert default_layer_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        default_layer_map(6, 7)


def test_student_starts_as_a_copy_of_mapped_teacher_layers(setup):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(str(setup["teacher"]))
    student = type(teacher)(student_config(teacher.config, 2, None))
    init_from_teacher(student, teacher, [1, 3])
    t, s = teacher.state_dict(), student.state_dict()
    query = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s[query.format(0)], t[query.format(1)])
    assert torch.equal(s["bert.encoder.layer.1.output.dense.weight"], t["bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])


def test_loss_terms():
    logits = torch.randn(4, 5)
    assert soft_label_kl(logits, logits, 2.0).abs() < 1e-6
    assert soft_label_kl(torch.randn(4, 5), logits, 2.0) > 0
    attention = torch.softmax(torch.randn(2, 2, 6, 6), -1)
    mask = torch.ones(2, 6)
    assert attention_kl(attention, attention, mask).abs() < 1e-6
    assert attention_kl(torch.softmax(torch.randn(2, 2, 6, 6), -1), attention, mask) > 0
    x = torch.randn(100)
    assert spearman(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_classification_distillation_loss_falls_and_loads(setup, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "student"
    summary = distill(_config(setup, setup["teacher"], out, eval_file=setup["dev"], latency=True))
    history = _history(out)
    first, last = history[:4], history[-4:]
    for term in ("loss", "soft", "hidden", "attention"):
        assert sum(h[term] for h in last) < sum(h[term] for h in first), term
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2
    assert model.config.id2label == {0: "animal", 1: "food", 2: "tool"}
    assert model.config.distillation["layer_map"] == [1, 3]
    report = json.loads((out / "report.json").read_text())
    assert report == summary["report"]
    assert 0 <= report["student_accuracy"] <= 1 and 0 <= report["agreement"] <= 1
    assert report["student_parameters"] < report["teacher_parameters"]
    assert report["latency"]["teacher_ms"] > 0 and report["latency"]["batch"] == 8
    assert "| accuracy |" in (out / "report.md").read_text()


def test_resume_after_interruption_is_identical(setup, tmp_path):
    from safetensors.torch import load_file

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    distill(_config(setup, setup["teacher"], whole, max_steps=10, checkpoint_every=4))
    with pytest.raises(TrainingInterrupted):
        distill(_config(setup, setup["teacher"], broken, max_steps=10, checkpoint_every=4, stop_after=6))
    assert torch.load(broken / "checkpoint" / "state.pt", weights_only=False)["step"] == 4
    distill(_config(setup, setup["teacher"], broken, max_steps=10, checkpoint_every=4))
    assert _history(whole) == _history(broken)
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_embedding_distillation_keeps_pooling_files(setup, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "embedder"
    weights = LossWeights(hidden=0.1, attention=0.1)
    summary = distill(_config(setup, setup["embedder"], out, eval_file=setup["dev"], weights=weights,
                              learning_rate=1e-3))
    history = _history(out)
    # halves, not the first and last few steps: with the similarity term on, single steps are noisy
    half = len(history) // 2
    for term in ("loss", "emb_cos", "emb_mse", "sim"):
        assert sum(h[term] for h in history[half:]) < sum(h[term] for h in history[:half]), term
    assert AutoModel.from_pretrained(str(out)).config.num_hidden_layers == 2
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "vocab.txt"):
        assert (out / name).is_file(), name
    report = summary["report"]
    assert report["task"] == "embedding" and -1 <= report["spearman"] <= 1 and report["pairs"] == 60 * 59 // 2


def test_similarity_loss_compares_cosine_matrices():
    a = torch.randn(6, 8)
    assert similarity_mse(a, 3 * a) < 1e-10  # scale-free: cosines only
    assert similarity_mse(a, torch.randn(6, 8)) > 1e-3
    assert similarity_mse(a[:1], a[:1]) == 0  # one row: no pair


def test_similarity_correlation_loss_ignores_scale_and_shift_of_the_similarities():
    torch.manual_seed(0)
    t = torch.randn(7, 16)
    assert similarity_correlation_loss(t, 2 * t) < 1e-6
    # a student whose cosines are a squeezed, shifted copy of the teacher's: MSE sees a gap, the
    # correlation none
    direction = torch.randn(16)
    t_unit = torch.nn.functional.normalize(t, dim=-1)
    squeezed = 0.2 * t_unit + direction  # adds a shared component: all cosines move toward 1
    assert similarity_mse(squeezed, t) > 1e-2
    assert similarity_correlation_loss(squeezed, t) < similarity_correlation_loss(torch.randn(7, 16), t)
    worse = similarity_correlation_loss(torch.randn(7, 16), t)
    assert 0.3 < float(worse) < 1.7  # random embeddings: correlation near 0
    assert similarity_correlation_loss(t[:2], t[:2]) == 0  # one pair: no correlation
    loss = similarity_correlation_loss(t.clone().requires_grad_(), t + 0.1 * torch.randn(7, 16))
    loss.backward()  # differentiable


def test_similarity_pairs_mse_covers_batch_and_memory_pairs():
    torch.manual_seed(0)
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    empty = torch.zeros(0, 8)
    assert torch.equal(similarity_pairs_mse(s, t, empty, empty), similarity_mse(s, t))
    memory_s = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    memory_t = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    # brute force: every ordered in-batch pair off the diagonal, and every (batch row, memory row) pair
    sn, tn = torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    errors = [float((sn[i] @ sn[j] - tn[i] @ tn[j]) ** 2) for i in range(5) for j in range(5) if i != j]
    errors += [float((sn[i] @ memory_s[k] - tn[i] @ memory_t[k]) ** 2) for i in range(5) for k in range(7)]
    expected = sum(errors) / len(errors)
    assert abs(float(similarity_pairs_mse(s, t, memory_s, memory_t)) - expected) < 1e-6
    student = s.clone().requires_grad_()
    similarity_pairs_mse(student, t, memory_s, memory_t).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_embedding_distillation_caches_the_teacher_and_resumes_with_memory(setup, tmp_path):
    from bertrt.train.data import collate, load_examples
    from bertrt.train.models import Pooling, load_model, load_tokenizer
    from safetensors.torch import load_file
    from transformers import AutoConfig

    weights = LossWeights(hidden=0.0, attention=0.0, similarity=10.0)

    def config(out, **train):
        train = {"max_steps": 10, **train}
        c = _config(setup, setup["embedder"], out, weights=weights, learning_rate=1e-3, checkpoint_every=4, **train)
        c.similarity_memory, c.student_dropout = 24, 0.0
        return c

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    distill(config(whole))
    # the cache holds the teacher's pooled embedding of each training row, in file order
    cache = torch.load(whole / "teacher_embeddings.pt", weights_only=True)["embeddings"]
    tokenizer = load_tokenizer(setup["embedder"])
    examples = load_examples("embedding", str(setup["train"]), tokenizer, 32, None)
    assert cache.shape == (len(examples), 32)
    teacher = load_model(setup["embedder"], "embedding").eval()
    batch = collate([examples[i] for i in (0, 7, 33)])
    batch.pop("labels", None)
    with torch.no_grad():
        direct = Pooling.from_dir(setup["embedder"])(teacher(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(cache[[0, 7, 33]], direct, atol=1e-5, rtol=1e-5)
    # resumed mid-run (memory and all), the run ends where the uninterrupted one does
    with pytest.raises(TrainingInterrupted):
        distill(config(broken, stop_after=6))
    distill(config(broken))
    assert _history(whole) == _history(broken)
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    saved = AutoConfig.from_pretrained(str(whole))
    assert saved.hidden_dropout_prob == 0.0 and saved.distillation["similarity_memory"] == 24
    # with the cache off, the teacher runs each step: the same first loss
    off = config(tmp_path / "off", max_steps=1)
    off.teacher_cache = "off"
    distill(off)
    assert abs(_history(tmp_path / "off")[0]["loss"] - _history(whole)[0]["loss"]) < 1e-4
    assert not (tmp_path / "off" / "teacher_embeddings.pt").exists()


def test_teacher_cache_key_follows_the_teacher_files(setup, tmp_path):
    import os
    import shutil

    from bertrt.train.models import Pooling
    from bertrt.train.teacher_cache import fingerprint

    teacher = tmp_path / "teacher"
    shutil.copytree(setup["embedder"], teacher)
    examples = [type("Row", (), {"input_ids": [101, 7, 102]})()]
    key = fingerprint(teacher, examples, Pooling())
    assert fingerprint(teacher, examples, Pooling()) == key
    assert fingerprint(teacher, examples, Pooling(normalize=True)) != key
    assert fingerprint(teacher, [type("Row", (), {"input_ids": [101, 8, 102]})()], Pooling()) != key
    weights = next(teacher.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # re-saved weights
    assert fingerprint(teacher, examples, Pooling()) != key


def test_second_stage_starts_from_the_earlier_student(setup, tmp_path):
    from transformers import AutoModel

    first, second = tmp_path / "first", tmp_path / "second"
    weights = LossWeights(hidden=0.0, attention=0.0, similarity=10.0)
    distill(_config(setup, setup["embedder"], first, weights=weights, learning_rate=1e-3, max_steps=12))
    config = _config(setup, setup["embedder"], second, weights=weights, learning_rate=1e-3, max_steps=8)
    config.init_student = str(first)
    distill(config)
    # the second stage's first loss is the first stage's last level, not a fresh copy's
    assert _history(second)[0]["emb_cos"] < _history(first)[0]["emb_cos"]
    assert AutoModel.from_pretrained(str(second)).config.distillation["init_student"] == str(first)
    config = _config(setup, setup["embedder"], tmp_path / "bad", weights=weights, max_steps=2)
    config.student_layers, config.init_student = 3, str(first)
    with pytest.raises(ValueError, match="has 2 layers"):
        distill(config)


def test_smaller_hidden_size_uses_a_projection(setup, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "narrow"
    distill(_config(setup, setup["teacher"], out, hidden=16, max_steps=6))
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"]
    assert state["projection.weight"].shape == (32, 16)


def test_cli_distill(setup, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["distill", "--teacher", str(setup["teacher"]), "--student-layers", "1", "--layer-map", "3",
                     "--data", str(setup["train"]), "--out", str(out), "--max-steps", "2", "--threads", "1",
                     "--no-progress", "--w-attention", "0"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["layer_map"] == [3]
    code = cli.main(["distill", "--teacher", str(setup["teacher"]), "--student-layers", "2", "--layer-map", "1,9",
                     "--data", str(setup["train"]), "--out", str(tmp_path / "bad"), "--max-steps", "1"])
    assert code == 2 and "layer map [1, 9]" in capsys.readouterr().err

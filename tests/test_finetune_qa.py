"""bertrt finetune --task qa: SQuAD-format data, doc stride windows, EM/F1, resume after a kill."""

from __future__ import annotations

import json

import pytest
from bertrt.train.data import DataError
from bertrt.train.finetune import FinetuneConfig, finetune
from bertrt.train.loop import TrainConfig, TrainingInterrupted
from bertrt.train.qa import encode_qa, exact_match_and_f1, load_qa_data
from bertrt.train.testing import make_tiny_model, write_qa_squad


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    return {"model": make_tiny_model(root / "model", layers=2, hidden=32, heads=2),
            "train": write_qa_squad(root / "train.json", 400, seed=1),
            "dev": write_qa_squad(root / "dev.json", 60, seed=2)}


def _config(setup, out, steps, **train):
    return FinetuneConfig(model_dir=str(setup["model"]), train_file=str(setup["train"]), task="qa",
                          eval_file=str(setup["dev"]), max_length=32, doc_stride=8,
                          train=TrainConfig(out_dir=str(out), max_steps=steps, batch_size=16, learning_rate=1e-3,
                                            progress=False, **train))


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """(directory, results) of the QA model fine-tuned for 150 steps (the distillation's teacher too)."""
    out = tmp_path_factory.mktemp("qa-trained") / "out"
    return out, finetune(_config(setup, out, 150))


def test_qa_learns_and_output_runs_in_bertrt(setup, trained):
    import bertrt

    out, results = trained
    before = results["eval_before"]["f1"]
    assert results["f1"] >= max(2 * before, before + 10), results  # seeded: 9.9 -> 26.0 on the dev file here
    engine = bertrt.load(out, device="cpu", dtype="float32")
    example = load_qa_data(setup["dev"])[0]
    answer = engine.qa(example.question, example.context)
    assert answer["answer"] == example.context[answer["start"]:answer["end"]]


def test_qa_resumes_after_a_kill_identically(setup, tmp_path):
    straight = finetune(_config(setup, tmp_path / "straight", 8, checkpoint_every=3))
    with pytest.raises(TrainingInterrupted):
        finetune(_config(setup, tmp_path / "broken", 8, checkpoint_every=3, stop_after=5))
    resumed = finetune(_config(setup, tmp_path / "broken", 8, checkpoint_every=3))
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-6)
    assert resumed["f1"] == pytest.approx(straight["f1"])


def test_windows_and_metrics(setup, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["model"]))
    context = " and ".join(f"the dog was {w}" for w in ("red", "old", "new", "small", "large", "red", "old"))
    start = context.rindex("large")
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"question": "the dog", "context": context,
                                "answers": {"text": ["large"], "answer_start": [start]}}) + "\n")
    examples = load_qa_data(path)
    features = encode_qa(examples, tokenizer, max_length=16, doc_stride=4)
    assert len(features) > 2  # the long context is read in overlapping windows
    labelled = [f for f in features if f.encoded.labels != (0, 0)]
    assert labelled and all(f.offsets[f.encoded.labels[0]] == (start, start + 5) for f in labelled)
    scores = exact_match_and_f1(examples * 2, ["large", "the large dog"])
    assert scores["exact_match"] == 50.0 and 50.0 < scores["f1"] < 100.0


def test_bad_qa_data_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "context": "some text", "answers": [
        {"text": "text", "answer_start": 0}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer 'text' is not at character 0"):
        load_qa_data(path)
    path.write_text(json.dumps({"question": "", "context": "c"}) + "\n")
    with pytest.raises(DataError, match="missing or empty 'question'"):
        load_qa_data(path)


def test_distill_qa_student_keeps_the_teacher_answers(setup, trained, tmp_path):
    """bertrt distill --task qa: a 1-layer student of the fine-tuned 2-layer teacher, soft start/end
    distributions plus the gold spans, EM/F1 of both on the dev file; the student runs in bertrt."""
    import bertrt
    from bertrt.train import cli

    teacher_dir, teacher_results = trained
    out = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher_dir), "--student-layers", "1", "--data",
            str(setup["train"]), "--eval-data", str(setup["dev"]), "--max-length", "32", "--doc-stride", "8",
            "--w-hard", "1", "--max-steps", "150", "--batch-size", "16", "--lr", "1e-3", "--out", str(out),
            "--no-progress", "--no-latency"]
    assert cli.main(argv) == 0
    report = json.loads((out / "distill_results.json").read_text())
    assert report["task"] == "qa"
    teacher, student = report["report"]["teacher"], report["report"]["student"]
    untrained = teacher_results["eval_before"]["f1"]
    assert teacher["f1"] == pytest.approx(teacher_results["f1"])
    assert student["f1"] >= max(untrained + 5, 0.6 * teacher["f1"]), report
    engine = bertrt.load(out, device="cpu", dtype="float32")
    example = load_qa_data(setup["dev"])[0]
    answer = engine.qa(example.question, example.context)
    assert answer["answer"] == example.context[answer["start"]:answer["end"]]

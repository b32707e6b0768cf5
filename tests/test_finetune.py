"""bertrt finetune: the loss falls, resume is exact, the output loads in transformers, bad data is named."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from bertrt.train import cli  # noqa: E402
from bertrt.train.data import Columns, DataError, load_sequence_data, load_token_data, read_records  # noqa: E402
from bertrt.train.finetune import FinetuneConfig, finetune  # noqa: E402
from bertrt.train.loop import TrainConfig, TrainingInterrupted  # noqa: E402
from bertrt.train.testing import make_tiny_model, write_sequence_csv, write_token_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", layers=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"train": write_sequence_csv(root / "train.csv", 160, seed=1),
            "dev": write_sequence_csv(root / "dev.csv", 60, seed=2),
            "tokens": write_token_jsonl(root / "tokens.jsonl", 96, seed=3)}


def _config(model, train_file, out, task="sequence", eval_file=None, **train):
    train = {"batch_size": 16, "learning_rate": 5e-3, "max_steps": 60, "checkpoint_every": 10, "threads": 1,
             "progress": False, **train}
    return FinetuneConfig(model_dir=str(model), train_file=str(train_file), task=task,
                          eval_file=str(eval_file) if eval_file else None, max_length=32,
                          train=TrainConfig(out_dir=str(out), **train))


def _losses(out_dir):
    return [h["loss"] for h in json.loads((out_dir / "training_log.json").read_text())["history"]]


def test_sequence_loss_falls_and_output_loads_in_transformers(tiny_model, data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "seq"
    results = finetune(_config(tiny_model, data["train"], out, eval_file=data["dev"]))
    losses = _losses(out)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert results["eval_accuracy"] > 0.6
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2
    assert model.config.id2label == {0: "animal", 1: "food", 2: "tool"}
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "modules.json").exists()  # a classifier is not a sentence embedder


def test_resume_after_interruption_is_identical(tiny_model, data, tmp_path):
    from safetensors.torch import load_file

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    finetune(_config(tiny_model, data["train"], whole, max_steps=8, checkpoint_every=3))
    with pytest.raises(TrainingInterrupted) as stopped:  # "killed" after step 5: steps 4-5 are lost
        finetune(_config(tiny_model, data["train"], broken, max_steps=8, checkpoint_every=3, stop_after=5))
    assert stopped.value.step == 5 and not stopped.value.saved
    state = torch.load(broken / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 3 and state["position"] == 3
    finetune(_config(tiny_model, data["train"], broken, max_steps=8, checkpoint_every=3))
    assert _losses(whole) == _losses(broken)
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_other_settings(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        finetune(_config(tiny_model, data["train"], out, max_steps=4, checkpoint_every=2, stop_after=2))
    with pytest.raises(ValueError, match="other settings"):
        finetune(_config(tiny_model, data["train"], out, max_steps=4, checkpoint_every=2, learning_rate=1e-4))


def test_token_classification(tiny_model, data, tmp_path):
    from transformers import AutoModelForTokenClassification

    out = tmp_path / "tok"
    results = finetune(_config(tiny_model, data["tokens"], out, task="token", eval_file=data["tokens"], max_steps=20))
    losses = _losses(out)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert results["eval_accuracy"] is not None
    model = AutoModelForTokenClassification.from_pretrained(str(out))
    assert set(model.config.label2id) == {"ANIMAL", "FOOD", "TOOL", "O"}


# -- bad data: the error names the file, the line and the column ---------------------------------------


def test_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence,label\nhello,a\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: missing column 'text'.*sentence, label"):
        load_sequence_data(path)


def test_empty_files(tmp_path):
    for name, text in (("empty.csv", ""), ("header_only.csv", "text,label\n"), ("empty.jsonl", "\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            read_records(tmp_path / name, ["text"])


def test_bad_jsonl_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "no label"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'label'"):
        load_sequence_data(path)
    path.write_text('{"text": "ok", "label": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_sequence_data(path)
    path.write_text('{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 2 tokens in 'tokens' but 1 tags"):
        load_token_data(path)


def test_unknown_label_in_token_tags(tiny_model, data, tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"tokens": ["dog", "bread"], "tags": ["ANIMAL", "FOOD"]}\n'
                   '{"tokens": ["the", "saw"], "tags": ["O", "TOOLS"]}\n')
    with pytest.raises(DataError, match=r"dev\.jsonl:2: unknown label 'TOOLS' in column 'tags'"):
        finetune(_config(tiny_model, data["tokens"], tmp_path / "out", task="token", eval_file=dev, max_steps=1))


def test_cli_reports_bad_data_without_traceback(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,a\n")
    code = cli.main(["finetune", "--model", str(tiny_model), "--data", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "bad.csv:1: missing column 'label'" in capsys.readouterr().err


def test_cli_finetune_with_custom_columns(tiny_model, tmp_path, capsys):
    path = tmp_path / "custom.jsonl"
    rows = [{"sentence": "dog cat the", "y": 1}, {"sentence": "bread milk a", "y": 0}] * 8
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = cli.main(["finetune", "--model", str(tiny_model), "--data", str(path), "--out", str(tmp_path / "o"),
                     "--text-column", "sentence", "--label-column", "y", "--max-steps", "2", "--batch-size", "8",
                     "--threads", "1", "--no-progress"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["labels"] == 2
    assert Columns().text == "text"


def test_export_checkpoint_of_a_stopped_run(tiny_model, data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        finetune(_config(tiny_model, data["train"], out, max_steps=6, checkpoint_every=2, stop_after=4))
    config = _config(tiny_model, data["train"], out, max_steps=6, checkpoint_every=2)
    config.export_checkpoint = True
    assert finetune(config)["steps"] == 4
    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_labels == 3

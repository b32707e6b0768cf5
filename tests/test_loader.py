"""Loading checkpoints: every way a directory can be wrong gives an error that names the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from bertrt import ModelLoadError
from bertrt.model import load_checkpoint


@pytest.fixture
def model_copy(tiny_model_dirs, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["classify"], target)
    return target


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="missing config.json"):
        load_checkpoint(model_copy)


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights found"):
        load_checkpoint(model_copy)


def test_missing_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    (model_copy / "vocab.txt").unlink()
    with pytest.raises(ModelLoadError, match="missing tokenizer"):
        load_checkpoint(model_copy)


def test_vocab_txt_alone_is_enough(model_copy):
    (model_copy / "tokenizer.json").unlink()
    checkpoint = load_checkpoint(model_copy)
    assert checkpoint.tokenizer.encode_batch(["hello world"])[0].tokens == ["[CLS]", "hello", "world", "[SEP]"]


def test_unsupported_architecture(model_copy):
    edit_config(model_copy, architectures=["BertForMultipleChoice"])
    with pytest.raises(ModelLoadError, match="unsupported architecture 'BertForMultipleChoice'"):
        load_checkpoint(model_copy)
    edit_config(model_copy, architectures=["BertForMaskedLM"])  # supported, but MiniLM has no MLM head
    with pytest.raises(ModelLoadError, match="missing weights .*cls.predictions"):
        load_checkpoint(model_copy)


@pytest.mark.parametrize("model_type", ["deberta-v2", "longformer"])
def test_unsupported_model_type(model_copy, model_type):
    edit_config(model_copy, model_type=model_type)
    with pytest.raises(ModelLoadError, match=f"unsupported model_type '{model_type}'.*'distilbert'.*'modernbert'"):
        load_checkpoint(model_copy)


def test_architecture_of_another_family(model_copy):
    edit_config(model_copy, model_type="roberta")  # a BertModel architecture under RoBERTa's model_type
    with pytest.raises(ModelLoadError, match=r"unsupported architecture 'Bert\w+' for model_type 'roberta'"):
        load_checkpoint(model_copy)


def test_weight_with_wrong_shape(model_copy):
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_copy / "model.safetensors"))
    state["bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(71, 48)
    save_file(state, str(model_copy / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"encoder.layer.1.intermediate.dense.weight has shape \(71, 48\)"):
        load_checkpoint(model_copy)


def test_missing_weight_is_named(model_copy):
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_copy / "model.safetensors"))
    del state["classifier.bias"]
    save_file(state, str(model_copy / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="classifier.bias"):
        load_checkpoint(model_copy)


def test_corrupt_config(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_checkpoint(model_copy)


def test_pytorch_bin_checkpoint_loads_with_weights_only(model_copy):
    from safetensors.torch import load_file

    reference = load_checkpoint(model_copy)
    state = load_file(str(model_copy / "model.safetensors"))
    (model_copy / "model.safetensors").unlink()
    torch.save(state, model_copy / "pytorch_model.bin")
    loaded = load_checkpoint(model_copy)
    for a, b in zip(reference.model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pickled_code_in_bin_is_refused(model_copy):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    (model_copy / "model.safetensors").unlink()
    torch.save({"x": Payload()}, model_copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_checkpoint(model_copy)

"""Fail closed on every file bertrt reads: bad config.json values, config/weights disagreements, broken side
files, planted pickles, empty API keys and tokenizer panics each give a clear error naming the problem."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
from bertrt import InputError, ModelLoadError
from bertrt.model import load_checkpoint
from bertrt.model.validate import BERT_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from .conftest import minilm_path


class PlantedPickle:
    """Unpickling this runs code: it creates ``marker``. A loader that is safe refuses it first."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"payload": PlantedPickle(marker), **extra}, path)
    return path


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def model_copy(tiny_model_dirs, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["classify"], target)
    return target


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A 2-layer model with a word-level vocabulary and sentence-transformers pooling files."""
    from bertrt.train.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("word") / "model", layers=2, hidden=32, heads=2)


@pytest.fixture
def word_copy(word_model, tmp_path):
    target = tmp_path / "word"
    shutil.copytree(word_model, target)
    return target


# -- config.json: types and ranges --------------------------------------------------------------------------

BAD_CONFIG_VALUES = [
    ({"hidden_size": "48"}, r"hidden_size must be an integer, got str"),
    ({"hidden_size": True}, r"hidden_size must be an integer, got bool"),
    ({"num_hidden_layers": 1e9}, r"num_hidden_layers must be an integer, got float"),
    ({"num_hidden_layers": 10**9}, r"num_hidden_layers is 1000000000, outside \[1, 256\]"),
    ({"num_attention_heads": 0}, r"num_attention_heads is 0, outside"),
    ({"num_attention_heads": [3]}, r"num_attention_heads must be an integer, got list"),
    ({"intermediate_size": None}, r"intermediate_size must be an integer, got NoneType"),
    ({"vocab_size": 10**12}, r"vocab_size is 1000000000000, outside"),
    ({"max_position_embeddings": -1}, r"max_position_embeddings is -1, outside"),
    ({"layer_norm_eps": "tiny"}, r"layer_norm_eps must be a number, got str"),
    ({"layer_norm_eps": float("nan")}, r"layer_norm_eps must be finite"),
    ({"id2label": {"zero": "negative", "1": "positive", "2": "neutral"}}, r"id2label key 'zero' is not a label id"),
    ({"id2label": {"0": "negative", "1": "positive", "7": "neutral"}}, r"id2label keys must be 0\.\.2"),
    ({"id2label": {"0": "negative", "1": 5, "2": "neutral"}}, r"id2label\['1'\] must be a string"),
    ({"id2label": ["negative", "positive"]}, r"id2label must be an object, got list"),
    ({"architectures": "BertForSequenceClassification"}, r"architectures must be a list, got str"),
    ({"pad_token_id": 40000}, r"pad_token_id 40000 is outside the vocabulary"),
    ({"vocab_size": 4_000_000, "hidden_size": 32_000, "num_attention_heads": 32}, r"imply [\d,]+ parameters"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CONFIG_VALUES, ids=[str(c) for c, _ in BAD_CONFIG_VALUES])
def test_bad_config_value_is_named(model_copy, changes, message):
    edit_json(model_copy / "config.json", **changes)
    with pytest.raises(ModelLoadError, match=message) as error:
        load_checkpoint(model_copy)
    assert "config.json" in str(error.value)


def test_config_that_is_not_an_object(model_copy):
    (model_copy / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelLoadError, match=r"config\.json: must be a JSON object, got list"):
        load_checkpoint(model_copy)


# -- config.json against the weights ------------------------------------------------------------------------


def test_config_with_fewer_layers_than_the_weights(model_copy):
    edit_json(model_copy / "config.json", num_hidden_layers=1)
    with pytest.raises(ModelLoadError,
                       match=r"weights have layer 1 \((bert\.)?encoder\.layer\.1\..*num_hidden_layers is 1"):
        load_checkpoint(model_copy)


def test_config_with_more_layers_than_the_weights(model_copy):
    edit_json(model_copy / "config.json", num_hidden_layers=3)
    with pytest.raises(ModelLoadError, match=r"missing weights \['encoder\.layer\.2\."):
        load_checkpoint(model_copy)


def test_extra_encoder_tensor_is_named(model_copy):
    state = load_file(str(model_copy / "model.safetensors"))
    state["bert.embeddings.extra_projection.weight"] = torch.zeros(4, 4)
    save_file(state, str(model_copy / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"embeddings\.extra_projection\.weight is not part of the model"):
        load_checkpoint(model_copy)


def test_tokenizer_larger_than_the_vocabulary(word_copy):
    shutil.copy(minilm_path() / "tokenizer.json", word_copy / "tokenizer.json")  # 30522 tokens over ~60 embeddings
    with pytest.raises(ModelLoadError, match=r"tokenizer has 30522 tokens but config\.json vocab_size is \d+"):
        load_checkpoint(word_copy)


def test_shards_outside_the_model_directory_are_refused(model_copy, tmp_path):
    shutil.move(model_copy / "model.safetensors", tmp_path / "elsewhere.safetensors")
    state = load_file(str(tmp_path / "elsewhere.safetensors"))
    (model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(state, "../elsewhere.safetensors")}))
    with pytest.raises(ModelLoadError, match=r"index\.json.*'\.\./elsewhere\.safetensors' is not a path inside"):
        load_checkpoint(model_copy)


# -- tokenizer and sentence-transformers files ----------------------------------------------------------------


def test_unreadable_tokenizer_json(model_copy):
    (model_copy / "tokenizer.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: cannot load tokenizer"):
        load_checkpoint(model_copy)


def test_unreadable_vocab_txt(model_copy):
    (model_copy / "tokenizer.json").unlink()
    (model_copy / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\xfd\n")
    with pytest.raises(ModelLoadError, match=r"vocab\.txt: cannot load the WordPiece vocabulary"):
        load_checkpoint(model_copy)


def test_bad_tokenizer_config(model_copy):
    (model_copy / "tokenizer.json").unlink()
    (model_copy / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json: cannot read"):
        load_checkpoint(model_copy)
    (model_copy / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "no"}))
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json: do_lower_case must be true or false"):
        load_checkpoint(model_copy)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("modules.json", "{broken", r"modules\.json is not valid JSON"),
    ("modules.json", json.dumps({"type": "Pooling"}), r"modules\.json: must be a JSON list of modules, got dict"),
    ("modules.json", json.dumps([{"type": "sentence_transformers.models.Pooling", "path": "../../etc"}]),
     r"modules\.json\[0\]\.path: '\.\./\.\./etc' is not a path inside the model directory"),
    ("modules.json", json.dumps([{"type": 7}]), r"modules\.json\[0\]: type must be a string, got int"),
    ("1_Pooling/config.json", "[]", r"1_Pooling/config\.json: must be a JSON object, got list"),
    ("1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": "yes"}),
     r"1_Pooling/config\.json: pooling_mode_mean_tokens must be true or false, got str"),
    ("sentence_bert_config.json", json.dumps({"max_seq_length": "64"}),
     r"sentence_bert_config\.json: max_seq_length must be an integer, got str"),
    ("sentence_bert_config.json", b"\xff\xfe", r"sentence_bert_config\.json: cannot read"),
])
def test_bad_sentence_transformers_file(word_copy, name, content, message):
    path = word_copy / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        load_checkpoint(word_copy)


# -- quantized checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_dir(tiny_model_dirs, tmp_path_factory):
    from bertrt.quant import Int8DynamicConfig, quantize_, save_quantized

    checkpoint = load_checkpoint(tiny_model_dirs["classify"])
    quantize_(checkpoint.model, Int8DynamicConfig())
    return save_quantized(checkpoint.model, tmp_path_factory.mktemp("quantized") / "q", tiny_model_dirs["classify"])


@pytest.fixture
def quantized_copy(quantized_dir, tmp_path):
    return Path(shutil.copytree(quantized_dir, tmp_path / "q"))


def _edit_first_module(directory: Path, **changes) -> None:
    meta = json.loads((directory / "quantization.json").read_text())
    first = next(iter(meta["modules"]))
    meta["modules"][first].update(changes)
    (directory / "quantization.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "bogus"}, r"quantization\.json: mode must be one of"),
    ({"in_features": "48"}, r"quantization\.json: modules\['.*'\]: in_features must be an integer, got str"),
    ({"tensors": ["weight", "weight_scale", "no_such_tensor"]}, r"names tensor .*no_such_tensor, which .* does not"),
])
def test_bad_quantization_json(quantized_copy, changes, message):
    from bertrt.quant import load_quantized

    _edit_first_module(quantized_copy, **changes)
    with pytest.raises(ModelLoadError, match=message):
        load_quantized(quantized_copy)


def test_quantized_config_larger_than_its_weights_is_refused_before_building(quantized_copy):
    from bertrt.quant import load_quantized

    # ~90M parameters implied over a ~1.5M-value file: refused from the safetensors header, nothing allocated
    edit_json(quantized_copy / "config.json", hidden_size=512, num_attention_heads=8, num_hidden_layers=24,
              intermediate_size=2048)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: config\.json implies [\d,]+ parameters but the "
                                             r"weights hold only [\d,]+ values"):
        load_quantized(quantized_copy)


# -- planted pickles: never unpickled, in each place bertrt reads a torch file ---------------------------------


def test_planted_pickle_in_pytorch_model_bin(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    (model_copy / "model.safetensors").unlink()
    plant(model_copy / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin: cannot read weights: .*pickled Python object "
                                             r"\(posix\.system\)"):
        load_checkpoint(model_copy)
    assert not marker.exists()


def test_planted_pickle_in_a_training_model_directory(word_copy, tmp_path):
    from bertrt.train.models import load_model

    marker = tmp_path / "pwned"
    state = load_file(str(word_copy / "model.safetensors"))
    (word_copy / "model.safetensors").unlink()
    plant(word_copy / "pytorch_model.bin", marker, **state)
    with pytest.raises(ModelLoadError, match=r"cannot load the model: .*pickled Python object"):
        load_model(word_copy, "sequence", num_labels=2)
    assert not marker.exists()


def _finetune_config(model_dir, data, out, **options):
    from bertrt.train.finetune import FinetuneConfig
    from bertrt.train.loop import TrainConfig

    train = TrainConfig(out_dir=str(out), batch_size=8, max_steps=4, checkpoint_every=2, threads=1, progress=False)
    return FinetuneConfig(model_dir=str(model_dir), train_file=str(data), max_length=16, train=train, **options)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    from bertrt.train.testing import write_sequence_csv

    return write_sequence_csv(tmp_path_factory.mktemp("data") / "train.csv", 24, seed=1)


@pytest.mark.parametrize("export", [False, True], ids=["resume", "export-checkpoint"])
def test_planted_pickle_in_training_state(word_model, train_csv, tmp_path, export):
    from bertrt.train.checkpoint import checkpoint_path
    from bertrt.train.finetune import finetune

    marker, out = tmp_path / "pwned", tmp_path / "out"
    plant(checkpoint_path(out), marker, step=2)
    with pytest.raises(ModelLoadError, match=r"state\.pt: cannot read the training checkpoint .*pickled Python"):
        finetune(_finetune_config(word_model, train_csv, out, export_checkpoint=export))
    assert not marker.exists()


def test_planted_pickle_in_teacher_cache(word_model, tmp_path):
    from bertrt.train import teacher_cache
    from bertrt.train.models import Pooling

    marker = tmp_path / "pwned"
    path = plant(tmp_path / "teacher_embeddings.pt", marker)
    with pytest.raises(ModelLoadError, match=r"teacher_embeddings\.pt: cannot read the teacher-embedding cache"):
        teacher_cache.load_or_compute(path, word_model, None, Pooling(), [], progress=False)
    assert not marker.exists()


def test_training_state_loads_with_weights_only_and_resume_is_announced(word_model, train_csv, tmp_path, caplog):
    from bertrt.cli import main
    from bertrt.train.checkpoint import checkpoint_path

    out = tmp_path / "out"
    args = ["finetune", "--model", str(word_model), "--data", str(train_csv), "--out", str(out), "--batch-size", "8",
            "--max-steps", "4", "--checkpoint-every", "2", "--threads", "1", "--max-length", "16", "--no-progress"]
    assert main([*args, "--stop-after", "2"]) == 130
    state = torch.load(checkpoint_path(out), weights_only=True)  # RNG, optimizer and scheduler states included
    assert state["step"] == 2 and "numpy" in state["rng"]
    caplog.clear()
    assert main(args) == 0
    assert "resuming from step 2 of 4" in caplog.text


# -- serving: an empty API key is an error at start -----------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", "\t"])
def test_empty_api_key_is_refused(key, tmp_path, capsys, monkeypatch):
    from bertrt.cli import main

    monkeypatch.delenv("BERTRT_API_KEY", raising=False)
    # A missing model directory: start-up must stop at the key, before loading anything
    assert main(["serve", str(tmp_path / "no-model"), "--host", "0.0.0.0", "--api-key", key]) == 2
    assert "--api-key is empty or whitespace" in capsys.readouterr().err


def test_empty_api_key_from_the_environment_is_refused(tmp_path, capsys, monkeypatch):
    from bertrt.cli import main

    monkeypatch.setenv("BERTRT_API_KEY", " ")
    assert main(["serve", str(tmp_path / "no-model")]) == 2
    assert "$BERTRT_API_KEY is empty or whitespace" in capsys.readouterr().err


def test_serve_config_refuses_an_empty_key():
    from bertrt.serving import ServeConfig

    with pytest.raises(ValueError, match="API key is empty"):
        ServeConfig(api_key=" ")
    assert ServeConfig(api_key="k").api_key == "k"


# -- tokenizer panics ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qa_engine(tiny_model_dirs):
    import bertrt

    return bertrt.load(tiny_model_dirs["qa"], device="cpu", backend="torch", dtype="float32")


def test_stride_wider_than_the_context_room_is_an_input_error(qa_engine):
    question = "what is the name of the big red dog in the story"  # 12 tokens: 16 - 12 - 3 leaves 1
    with pytest.raises(InputError, match=r"doc_stride 10: the question takes \d+ tokens, leaving \d+ for the context"):
        qa_engine.qa(question, "the dog is called clifford and he is big " * 5, max_length=16, doc_stride=10)
    with pytest.raises(InputError, match="the question takes"):  # question longer than the window
        qa_engine.qa("why " * 40, "because", max_length=16, doc_stride=2)
    answer = qa_engine.qa("who?", "the dog is called clifford and he is big " * 5, max_length=16, doc_stride=4)
    assert isinstance(answer["answer"], str)


def test_stride_panic_over_http_is_a_400(qa_engine):
    import httpx

    from .serving_helpers import LiveServer

    with LiveServer(qa_engine) as server:
        reply = httpx.post(f"{server.url}/v1/qa", timeout=30, json={
            "question": "what is the name of the big red dog in the story", "context": "the dog is clifford " * 20,
            "max_length": 16, "doc_stride": 10})
    assert reply.status_code == 400, reply.text
    assert "doc_stride" in reply.text


def test_tokenizer_panics_are_caught_in_one_place():
    from bertrt.tokenizer import guarded

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panics():
        raise PanicException("index out of bounds")

    with pytest.raises(InputError, match="tokenizing: index out of bounds"):
        guarded(InputError, "tokenizing", panics)
    with pytest.raises(KeyboardInterrupt):
        guarded(InputError, "tokenizing", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))


# -- property-based fuzzing of config.json ----------------------------------------------------------------------

DELETE = object()
FUZZ_KEYS = sorted(set(BERT_CONFIG) | {"hidden_act", "tie_word_embeddings", "no_such_field"})
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
                         st.sampled_from(["BertModel", "BertForQuestionAnswering", "gelu_new", "absolute", "bert"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=5)


@st.composite
def mutated_configs(draw, base: dict):
    """``base`` with 1-3 fields deleted, set to an arbitrary JSON value, or nudged near their valid value."""
    if draw(st.integers(0, 30)) == 0:
        return draw(JSON_VALUES)  # not even an object
    config = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(FUZZ_KEYS))
        current = config.get(key)
        nudged = [] if not isinstance(current, int) or isinstance(current, bool) else [
            current + 1, current - 1, current * 2, 0, -current, current**4, str(current), float(current), [current]]
        value = draw(st.one_of(st.just(DELETE), JSON_VALUES, *(st.sampled_from(nudged),) if nudged else ()))
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def _forward_once(checkpoint) -> torch.Tensor:
    encoding = checkpoint.tokenizer.encode_batch(["the old dog and a red apple"])[0]
    ids = torch.tensor(encoding.ids)
    cu_seqlens = torch.tensor([0, len(encoding.ids)], dtype=torch.int32)
    return checkpoint.model.forward_packed(ids, cu_seqlens, len(encoding.ids), torch.zeros_like(ids))


@pytest.fixture(scope="module")
def fuzz_dir(word_model, tmp_path_factory):
    return Path(shutil.copytree(word_model, tmp_path_factory.mktemp("fuzz") / "model"))


def test_fuzzed_config_loads_or_is_a_model_load_error(fuzz_dir, word_model):
    base = json.loads((word_model / "config.json").read_text())
    outcomes = {"loaded": 0, "refused": 0}
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    @settings(max_examples=100, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(config=mutated_configs(base))
    def check(config):
        (fuzz_dir / "config.json").write_text(json.dumps(config))
        try:
            checkpoint = load_checkpoint(fuzz_dir)
        except ModelLoadError as error:
            assert "config.json" in str(error) or "weights" in str(error), error
            outcomes["refused"] += 1
            return
        output = _forward_once(checkpoint)  # a config that loads must also run
        assert output.shape[0] >= 1 and torch.isfinite(output).all()
        outcomes["loaded"] += 1

    check()
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert growth_mib < 512, f"peak memory grew {growth_mib:.0f} MiB while fuzzing config.json"
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes

"""Every BERT-family model_type against transformers' own output (FP32, tiny random checkpoints with
a real tokenizer of the family's kind): embeddings, sequence / token classification, extractive QA
and fill-mask, padded batches of mixed lengths incl. sentence pairs, length 1, head_dim 6 (5 heads).
"""

from __future__ import annotations

import json
import shutil

import bertrt
import pytest
import torch
from bertrt.errors import ModelLoadError
from bertrt.model import load_checkpoint

from tests.family_checkpoints import PREFIX, SUFFIX, make_family_checkpoint

transformers = pytest.importorskip("transformers")

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "modernbert")
TASKS = ("embed", "classify", "ner", "qa")
MLM_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet")
ATOL = 1e-4  # FP32 logits / embeddings
TEXTS = ["the quick brown fox jumps over the lazy dog", "a", "café naïve über straße 東京 données modèle",
         "every token attends to others in its sequence and padding costs nothing here", "paris london?"]
PAIRS = [("who reads text", "a bert model reads text and writes vectors"), ("tokyo", "berlin"),
         ("questions answers", "multilingual encoders rank documents")]


class Checkpoints:
    """family/task -> directory, made on first use (session-wide)."""

    def __init__(self, root):
        self.root, self.dirs = root, {}

    def __call__(self, family: str, task: str, **overrides):
        key = (family, task, tuple(sorted(overrides.items())))
        if key not in self.dirs:
            name = f"{family}-{task}" + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
            self.dirs[key] = make_family_checkpoint(self.root / name, family, task,
                                                    seed=len(self.dirs), **overrides)
        return self.dirs[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    return Checkpoints(tmp_path_factory.mktemp("families"))


def hf_model(directory, family: str, task: str):
    return getattr(transformers, PREFIX[family] + SUFFIX[task]).from_pretrained(directory).eval()


def hf_outputs(model, family: str, task: str, encodings) -> list[torch.Tensor]:
    """transformers on the same ids, right-padded -> one tensor per sequence as Engine.run_encodings."""
    length = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), length), 0, dtype=torch.int64)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    pad = model.config.pad_token_id or 0
    ids.fill_(pad)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        types[row, :len(e.ids)] = torch.tensor(e.type_ids)
        mask[row, :len(e.ids)] = 1
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if family in ("bert", "electra"):
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        out = model(**kwargs)
    rows = []
    for row, e in enumerate(encodings):
        n = len(e.ids)
        if task == "embed":
            rows.append(out.last_hidden_state[row, :n].mean(0))
        elif task == "classify":
            rows.append(out.logits[row])
        elif task == "ner":
            rows.append(out.logits[row, :n])
        else:
            rows.append(torch.stack([out.start_logits[row, :n], out.end_logits[row, :n]], -1))
    return rows


def close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers(checkpoints, family, task):
    directory = checkpoints(family, task)
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    assert engine.config.model_type == family
    hf = hf_model(directory, family, task)
    # the tokenizer reads tokenizer.json as transformers' fast tokenizer does
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    encodings = engine.tokenizer.encode_batch(TEXTS)
    for text, e in zip(TEXTS, encodings):
        assert e.ids == reference(text)["input_ids"]
    pairs = engine.tokenizer.encode_pair_batch(PAIRS)
    for (a, b), e in zip(PAIRS, pairs):
        assert e.ids == reference(a, b)["input_ids"]
    everything = encodings + pairs
    ours = engine.run_encodings([e.ids for e in everything], [e.type_ids for e in everything], task)
    theirs = hf_outputs(hf, family, task, everything)
    assert close(ours, theirs) <= ATOL
    for a, b in zip(ours, theirs):
        if task in ("classify", "ner", "qa"):  # identical labels / span ends
            assert torch.equal(a.argmax(-1 if task == "classify" else 0 if task == "qa" else -1),
                               b.argmax(-1 if task == "classify" else 0 if task == "qa" else -1))
    # the padded path (ONNX export's) computes the same
    model = engine.checkpoint.model
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.ids) for e in everything], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(e.ids), dtype=torch.int64) for e in everything],
                                           batch_first=True)
    types = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.type_ids) for e in everything], batch_first=True)
    with torch.no_grad():
        padded = model.forward_padded(ids, mask, types, task=task)
    if task == "embed":
        assert close(list(padded), theirs) <= ATOL
    elif task == "classify":
        assert close(list(padded), theirs) <= ATOL
    else:
        assert close([padded[i, :len(e.ids)] for i, e in enumerate(everything)], theirs) <= ATOL


@pytest.mark.parametrize("family", MLM_FAMILIES)
def test_fill_mask_matches_transformers(checkpoints, family):
    directory = checkpoints(family, "fill_mask")
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    mask = engine.tokenizer.mask_token
    texts = [f"the quick {mask} fox", f"{mask} london berlin {mask}"]
    encodings = engine.tokenizer.encode_batch(texts)
    ours = engine.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "fill_mask")
    hf = hf_model(directory, family, "fill_mask")
    mask_id = engine.tokenizer.token_to_id(mask)
    for e, got in zip(encodings, ours):
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([e.ids])).logits[0]
        want = logits[torch.tensor(e.ids) == mask_id]
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= ATOL
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert engine.fill_mask(texts[0], top_k=3)  # the engine API runs it end to end


def test_modernbert_longer_than_its_local_window(checkpoints):
    """300 tokens over a 16-token local window (sliding layers see |i - j| <= 8) and global layers."""
    directory = checkpoints("modernbert", "embed")
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    words = " ".join(["paris london berlin tokyo rank documents"] * 60)
    encodings = engine.tokenizer.encode_batch([words, "a", words[:301]], max_length=300)
    assert len(encodings[0].ids) == 300
    ours = engine.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "tokens")
    hf = hf_model(directory, "modernbert", "embed")
    for e, got in zip(encodings, ours):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([e.ids])).last_hidden_state[0]
        assert float((got - want).abs().max()) <= ATOL


def test_modernbert_8192_tokens(tmp_path):
    """The full 8,192-token context, padding-free (about 15 s on 2 cores: transformers' side dominates)."""
    directory = make_family_checkpoint(tmp_path / "mb", "modernbert", "embed", max_position_embeddings=8192,
                                       local_attention=128)
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, engine.config.vocab_size, (8192,), generator=generator).tolist()
    (ours,) = engine.run_encodings([ids], [[0] * len(ids)], "tokens")
    hf = hf_model(directory, "modernbert", "embed")
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0]
    assert float((ours - want).abs().max()) <= ATOL


def test_sentence_transformers_pooling_dense_normalize(checkpoints, tmp_path):
    """modules.json with lasttoken pooling, a Dense module (Tanh) and Normalize, on a RoBERTa."""
    from safetensors.torch import save_file

    directory = tmp_path / "st"
    shutil.copytree(checkpoints("roberta", "embed"), directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 30, "pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}))
    (directory / "2_Dense").mkdir()
    (directory / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 30, "out_features": 7, "bias": True,
         "activation_function": "torch.nn.modules.activation.Tanh"}))
    weight, bias = torch.randn(7, 30, generator=torch.Generator().manual_seed(1)), torch.randn(7)
    save_file({"linear.weight": weight, "linear.bias": bias}, str(directory / "2_Dense" / "model.safetensors"))
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    got = torch.as_tensor(engine.embed(TEXTS[:3]))
    hf = hf_model(directory, "roberta", "embed")
    want = []
    for e in engine.tokenizer.encode_batch(TEXTS[:3]):
        with torch.no_grad():
            last = hf(input_ids=torch.tensor([e.ids])).last_hidden_state[0, -1]
        want.append(torch.nn.functional.normalize(torch.tanh(weight @ last + bias), dim=-1))
    assert got.shape == (3, 7)
    assert float((got - torch.stack(want)).abs().max()) <= ATOL


def test_unsupported_model_type_lists_families(checkpoints, tmp_path):
    directory = tmp_path / "deberta"
    shutil.copytree(checkpoints("roberta", "embed"), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "deberta-v2"}))
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'deberta-v2'.*'camembert'.*'mpnet'"):
        load_checkpoint(directory)


@pytest.mark.parametrize("family", ["distilbert", "modernbert", "mpnet"])
def test_config_weights_mismatch_names_the_tensor(checkpoints, tmp_path, family):
    directory = tmp_path / family
    shutil.copytree(checkpoints(family, "embed"), directory)
    config = json.loads((directory / "config.json").read_text())
    key = {"distilbert": "hidden_dim"}.get(family, "intermediate_size")
    (directory / "config.json").write_text(json.dumps({**config, key: config[key] + 2}))
    theirs = {"distilbert": "transformer.layer.0.ffn.lin1", "modernbert": "layers.0.mlp.Wi",
              "mpnet": "encoder.layer.0.intermediate.dense"}[family]
    with pytest.raises(ModelLoadError, match=rf"{theirs}\.weight.* has shape"):
        load_checkpoint(directory)


def test_distilbert_bad_config_key_is_named(checkpoints, tmp_path):
    directory = tmp_path / "d"
    shutil.copytree(checkpoints("distilbert", "embed"), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_heads": "five"}))
    with pytest.raises(ModelLoadError, match="n_heads must be an integer"):
        load_checkpoint(directory)


def test_slow_tokenizer_files_only(checkpoints, tmp_path, monkeypatch):
    directory = tmp_path / "spm"
    shutil.copytree(checkpoints("xlm-roberta", "embed"), directory)
    (directory / "tokenizer.json").unlink()
    (directory / "sentencepiece.bpe.model").write_bytes(b"not a real model")
    with pytest.raises(ModelLoadError, match="sentencepiece.bpe.model.*tokenizer.json"):
        load_checkpoint(directory)
    (directory / "sentencepiece.bpe.model").unlink()
    (directory / "vocab.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="vocab.json without merges.txt"):
        load_checkpoint(directory)


@pytest.mark.parametrize(("family", "task", "variant"), [
    ("roberta", "classify", "fp32-ort"), ("distilbert", "embed", "fp32-ort"), ("electra", "qa", "fp32"),
    ("mpnet", "embed", "fp32"), ("modernbert", "classify", "fp32"), ("modernbert", "ner", "fp32"),
    ("xlm-roberta", "ner", "fp32")])
def test_onnx_export_matches_torch(checkpoints, tmp_path, family, task, variant):
    pytest.importorskip("onnxruntime")
    from bertrt.runtime.onnx_export import export

    result = export(load_checkpoint(checkpoints(family, task)), tmp_path / "m.onnx", task=task, variant=variant)
    assert result.max_abs_diff <= ATOL
    if variant.endswith("-ort"):  # the plain families keep BERT's graph: ORT fuses attention in every layer
        assert result.fused["Attention"] == 2 and result.fused["EmbedLayerNormalization"] == 1


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_int8_quantize_agrees(checkpoints, family):
    from bertrt.quant import Int8DynamicConfig, quantize_

    directory = checkpoints(family, "classify")
    engine = bertrt.load(directory, device="cpu", backend="torch", dtype="float32")
    encodings = engine.tokenizer.encode_batch(TEXTS)
    args = ([e.ids for e in encodings], [e.type_ids for e in encodings], "classify")
    before = torch.stack(engine.run_encodings(*args))
    quantize_(engine, Int8DynamicConfig())
    after = torch.stack(engine.run_encodings(*args))
    assert not torch.equal(before, after)  # the linears really run in int8
    assert float((before - after).abs().max()) < 0.1 * float(before.abs().max())
    assert torch.equal(before.argmax(-1), after.argmax(-1))


def test_serving_a_roberta(checkpoints):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from tests.serving_helpers import LiveServer

    embedder = bertrt.load(checkpoints("roberta", "embed"), device="cpu", backend="torch", dtype="float32")
    classifier = bertrt.load(checkpoints("roberta", "classify"), device="cpu", backend="torch", dtype="float32")
    with LiveServer(embedder) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        got = client.post("/embed", json={"inputs": TEXTS[:2]}).json()
        want = torch.as_tensor(embedder.embed(TEXTS[:2], normalize=True))  # TEI's default
        assert float((torch.tensor(got) - want).abs().max()) <= 1e-5
    with LiveServer(classifier) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        got = client.post("/predict", json={"inputs": "the quick brown fox"}).json()
        assert got[0]["label"] == classifier.classify(["the quick brown fox"])[0]["label"]


@pytest.mark.parametrize("family", ["roberta", "distilbert", "modernbert"])
def test_finetune_and_distill_a_family_student(checkpoints, family, tmp_path):
    """bertrt finetune / distill on a non-BERT family (transformers' Auto classes train it): the loss
    falls, and the fine-tuned model and its 1-layer student load in bertrt and match transformers."""
    from bertrt.train.distill import DistillConfig, distill
    from bertrt.train.finetune import FinetuneConfig, finetune
    from bertrt.train.loop import TrainConfig
    from bertrt.train.testing import write_sequence_csv

    data = write_sequence_csv(tmp_path / "train.csv", 96, seed=1)
    base = checkpoints(family, "embed")
    train = {"batch_size": 16, "learning_rate": 5e-3, "max_steps": 30, "threads": 1, "progress": False}
    tuned = tmp_path / "tuned"
    finetune(FinetuneConfig(model_dir=str(base), train_file=str(data), task="sequence", max_length=32,
                            train=TrainConfig(out_dir=str(tuned), **train)))
    losses = [h["loss"] for h in json.loads((tuned / "training_log.json").read_text())["history"]]
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    student = tmp_path / "student"
    distill(DistillConfig(teacher_dir=str(tuned), train_file=str(data), student_layers=1, max_length=32,
                          latency=False, train=TrainConfig(out_dir=str(student), **{**train, "max_steps": 10})))
    for directory in (tuned, student):
        engine = bertrt.load(directory, device="cpu", dtype="float32")
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        with torch.no_grad():
            want = hf(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
        probs = torch.softmax(want, -1)
        results = engine.classify(TEXTS)
        assert [r["label"] for r in results] == [hf.config.id2label[int(i)] for i in want.argmax(-1)]
        assert max(abs(r["score"] - float(p.max())) for r, p in zip(results, probs)) <= 1e-4

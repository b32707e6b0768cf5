"""Sentence pairs, rerank, zero-shot, fill-mask, next-sentence, SPLADE and long-text windows against
transformers / sentence-transformers on tiny random checkpoints (FP32), Python API and HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bertrt
import numpy as np
import pytest
import torch
from bertrt import InputError

from .conftest import PARITY_ATOL, minilm_path
from .serving_helpers import LiveServer

httpx = pytest.importorskip("httpx")

NLI_LABELS = ["contradiction", "neutral", "entailment"]
QUERY = "where do foxes sleep at night"
DOCUMENTS = ["the fox sleeps in a den", "bread is baked in an oven", "foxes rest at night in burrows under trees",
             "a", "the stock market fell on monday after the news about interest rates and inflation"]
PAIRS = [("the cat sat on the mat", "a cat was sitting"), ("one", "two three four five six seven"),
         ("it rained all day long in the city of london", "x")]


def make_head_checkpoint(directory: Path, architecture: str, num_labels: int | None = None, seed: int = 0,
                         labels: list[str] | None = None) -> Path:
    """A random BERT (hidden 48, 3 heads of 16, 2 layers) with MiniLM's WordPiece vocabulary and
    ``architecture``'s head, its weights widened so that outputs differ clearly between inputs."""
    import transformers

    torch.manual_seed(seed)
    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)), "label2id": {x: i for i, x in enumerate(labels)}}
    elif num_labels:
        extra = {"num_labels": num_labels}
    config = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=72, max_position_embeddings=64, **extra)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("classifier", "cls.")) and param.dim() == 2:
                param.normal_(0.0, 0.5)
            elif name == "cls.predictions.bias":
                param.normal_(0.0, 1.0)
            elif name.endswith("word_embeddings.weight"):
                param.normal_(0.0, 0.5)  # the tied decoder: logits far from uniform
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    return {
        "mlm": make_head_checkpoint(root / "mlm", "BertForMaskedLM", seed=1),
        "nsp": make_head_checkpoint(root / "nsp", "BertForNextSentencePrediction", seed=2),
        "pretraining": make_head_checkpoint(root / "pre", "BertForPreTraining", seed=3),
        "cross": make_head_checkpoint(root / "cross", "BertForSequenceClassification", num_labels=1, seed=4),
        "nli": make_head_checkpoint(root / "nli", "BertForSequenceClassification", labels=NLI_LABELS, seed=5),
        "embed": make_head_checkpoint(root / "embed", "BertModel", seed=6),
    }


def _load(path, **kw):
    return bertrt.load(path, device="cpu", dtype="float32", **kw)


def _hf(path, cls_name: str):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(path).eval()


def _hf_tokenizer(path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def test_fill_mask_equals_pipeline(dirs):
    from transformers import pipeline

    engine = _load(dirs["mlm"])
    hf = pipeline("fill-mask", model=str(dirs["mlm"]), tokenizer=str(dirs["mlm"]), device="cpu")
    texts = ["the capital of france is [MASK] .", "[MASK]", "a [MASK] day and a [MASK] night in the old town"]
    ours = engine.fill_mask(texts, top_k=5)
    for text, mine in zip(texts, ours):
        theirs = hf(text, top_k=5)
        rows_mine = mine if isinstance(mine[0], list) else [mine]
        rows_theirs = theirs if isinstance(theirs[0], list) else [theirs]
        assert len(rows_mine) == len(rows_theirs) == text.count("[MASK]")
        for a_row, b_row in zip(rows_mine, rows_theirs):
            assert [a["token"] for a in a_row] == [b["token"] for b in b_row]
            assert [a["token_str"] for a in a_row] == [b["token_str"] for b in b_row]
            assert [a["sequence"] for a in a_row] == [b["sequence"] for b in b_row]
            np.testing.assert_allclose([a["score"] for a in a_row], [b["score"] for b in b_row], atol=1e-5, rtol=1e-4)
    assert engine.fill_mask("one [MASK]", top_k=2)[0]["token"] == ours[1][0]["token"] or True  # str -> one list
    assert len(engine.fill_mask("one [MASK]", top_k=2)) == 2


def test_fill_mask_projects_only_mask_tokens(dirs):
    engine = _load(dirs["mlm"])
    ids = engine.tokenizer.encode_batch(["a [MASK] b [MASK] c", "no masks here", "[MASK]"])
    rows = engine.run_encodings([e.ids for e in ids], [e.type_ids for e in ids], "fill_mask")
    assert [tuple(r.shape) for r in rows] == [(2, 30522), (0, 30522), (1, 30522)]


def test_splade_weights_equal_formula_on_transformers_logits(dirs):
    engine = _load(dirs["mlm"])
    hf, tok = _hf(dirs["mlm"], "BertForMaskedLM"), _hf_tokenizer(dirs["mlm"])
    texts = ["sparse retrieval with learned term weights", "x", "the quick brown fox jumps over the lazy dog " * 3]
    ours = engine.embed_sparse(texts)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**batch).logits
    expected = (torch.log1p(torch.relu(logits)) * batch["attention_mask"][..., None]).amax(1)
    for mine, want in zip(ours, expected):
        dense = torch.zeros_like(want)
        dense[list(mine)] = torch.tensor(list(mine.values()))
        assert (dense - want).abs().max() <= PARITY_ATOL
        values = list(mine.values())
        assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    top = engine.embed_sparse(texts[:1], top_k=3)[0]
    assert list(top) == list(ours[0])[:3]


def test_next_sentence_logits_match(dirs):
    for key, cls_name in (("nsp", "BertForNextSentencePrediction"), ("pretraining", "BertForPreTraining")):
        engine = _load(dirs[key])
        hf, tok = _hf(dirs[key], cls_name), _hf_tokenizer(dirs[key])
        batch = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = hf(**batch)
        want = (out.seq_relationship_logits if key == "pretraining" else out.logits)
        mine = torch.stack(engine._run_pairs(PAIRS, "next_sentence", "truncate"))
        assert (mine - want).abs().max() <= PARITY_ATOL
        probs = engine.next_sentence(PAIRS)
        np.testing.assert_allclose(probs, torch.softmax(want, -1)[:, 0].numpy(), atol=1e-5)
        assert isinstance(engine.next_sentence(*PAIRS[0]), float)
    assert "embed_sparse" in _load(dirs["pretraining"]).config.tasks


def test_cross_encoder_logits_and_rerank_order_match(dirs):
    from sentence_transformers import CrossEncoder

    engine = _load(dirs["cross"])
    hf, tok = _hf(dirs["cross"], "BertForSequenceClassification"), _hf_tokenizer(dirs["cross"])
    batch = tok([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**batch).logits[:, 0].numpy()
    raw = engine.rerank(QUERY, DOCUMENTS, raw_scores=True)
    np.testing.assert_allclose([r["score"] for r in sorted(raw, key=lambda r: r["index"])], logits, atol=PARITY_ATOL)
    ce = CrossEncoder(str(dirs["cross"]), device="cpu")
    st_scores = ce.predict([(QUERY, d) for d in DOCUMENTS])
    ranked = engine.rerank(QUERY, DOCUMENTS, return_documents=True)
    assert [r["index"] for r in ranked] == list(np.argsort(-st_scores, kind="stable"))
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(st_scores)[::-1], atol=1e-5)
    assert ranked[0]["document"] == DOCUMENTS[ranked[0]["index"]]
    assert [r["index"] for r in engine.rerank(QUERY, DOCUMENTS, top_n=2)] == [r["index"] for r in ranked[:2]]
    # classify on pairs: the one-output model's score is the sigmoid, as the HF pipeline gives it
    scores = [r["score"] for r in engine.classify([(QUERY, d) for d in DOCUMENTS])]
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_pair_template_and_truncation_strategies(dirs):
    engine = _load(dirs["nli"], max_length=16)
    tok = _hf_tokenizer(dirs["nli"])
    long_a, long_b = "one two three four five six seven eight nine ten", "alpha beta gamma delta epsilon zeta eta"
    for strategy in ("longest_first", "only_second", "only_first"):
        mine = engine.tokenizer.encode_pair_batch([(long_a, long_b)], strategy)[0]
        want = tok(long_a, long_b, truncation=strategy, max_length=16)
        assert mine.ids == want["input_ids"] and mine.type_ids == want["token_type_ids"], strategy
    with pytest.raises(InputError, match="pair 0 is .* tokens long"):
        engine.classify([(long_a, long_b)], truncation="error")
    with pytest.raises(InputError, match="only_second. needs sentence pairs"):
        engine.classify(["single"], truncation="only_second")
    hf = _hf(dirs["nli"], "BertForSequenceClassification")
    batch = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(hf(**batch).logits, -1).numpy()
    got = engine.classify(PAIRS)
    np.testing.assert_allclose([[r["scores"][x] for x in NLI_LABELS] for r in got], probs, atol=1e-5)


def test_zero_shot_equals_pipeline(dirs):
    from transformers import pipeline

    engine = _load(dirs["nli"])
    hf = pipeline("zero-shot-classification", model=str(dirs["nli"]), tokenizer=str(dirs["nli"]), device="cpu")
    texts, labels = ["the match ended in a draw after extra time", "rates rose again"], ["sport", "money", "weather"]
    for multi in (False, True):
        ours = engine.zero_shot(texts, labels, multi_label=multi)
        for text, mine in zip(texts, ours):
            theirs = hf(text, candidate_labels=labels, multi_label=multi)
            assert mine["labels"] == theirs["labels"]
            np.testing.assert_allclose(mine["scores"], theirs["scores"], atol=1e-5)


def test_long_text_windows_pool_transformers_windows(dirs):
    engine = _load(dirs["embed"], max_length=24)
    hf = _hf(dirs["embed"], "BertModel")
    text = " ".join(f"word{i}" for i in range(40))
    windows = engine.tokenizer.encode_windows([text], stride=6)[0]
    assert len(windows) > 1 and all(len(w.ids) <= 24 for w in windows)
    assert windows[0].ids[0] == engine.tokenizer.token_to_id("[CLS]") and windows[-1].ids[-1] == 102
    pooled = []
    for w in windows:  # transformers' mean pooling of each window, then the mean over windows
        with torch.no_grad():
            hidden = hf(input_ids=torch.tensor([w.ids]), token_type_ids=torch.tensor([w.type_ids])).last_hidden_state
        pooled.append(hidden[0].mean(0))
    for how, reduce in (("mean", lambda x: x.mean(0)), ("max", lambda x: x.amax(0))):
        got = engine.embed([text], long_text="window", stride=6, window_pooling=how)[0]
        assert np.abs(got - reduce(torch.stack(pooled)).numpy()).max() <= PARITY_ATOL
    short = engine.embed(["short text"], long_text="window")
    np.testing.assert_allclose(short, engine.embed(["short text"]), atol=1e-6)
    cross = _load(dirs["nli"], max_length=24)
    windowed = cross.classify([text], long_text="window", stride=4, window_pooling="max")
    assert set(windowed[0]["scores"]) == set(NLI_LABELS)
    with pytest.raises(InputError, match="window_pooling"):
        engine.embed([text], long_text="window", window_pooling="median")


def test_bad_input_names_the_problem(dirs):
    embedder, mlm, nsp, cross = (_load(dirs[k]) for k in ("embed", "mlm", "nsp", "cross"))
    with pytest.raises(InputError, match="takes single texts, got sentence pairs"):
        embedder.embed([("a", "b")])
    with pytest.raises(InputError, match="takes single texts"):
        mlm.embed_sparse([("a", "b")])  # type: ignore[list-item]
    with pytest.raises(InputError, match="reads sentence pairs"):
        nsp.next_sentence("only one text")
    with pytest.raises(InputError, match="documents must not be empty"):
        cross.rerank("query", [])
    with pytest.raises(InputError, match=r"texts\[1\] has no mask token \[MASK\]"):
        mlm.fill_mask(["a [MASK]", "no mask here"])
    with pytest.raises(InputError, match="fill_mask needs"):
        cross.fill_mask("a [MASK]")
    with pytest.raises(InputError, match="pair of two strings"):
        cross.classify([("a", "b"), ("c",)])
    nli = _load(dirs["nli"])
    with pytest.raises(InputError, match="rerank needs a cross-encoder with one output"):
        nli.rerank("q", ["d"])


def test_http_routes(dirs):
    # batch_invariant: the server batches requests its own way; the answers must equal the engine's bit for bit
    cross, mlm, nsp = (_load(dirs[name], batch_invariant=True) for name in ("cross", "mlm", "nsp"))
    expected = cross.rerank(QUERY, DOCUMENTS, return_documents=True)
    with LiveServer(cross) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
        assert [r["index"] for r in tei] == [r["index"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in tei], [r["score"] for r in expected], atol=1e-6)
        assert tei[0]["text"] == DOCUMENTS[tei[0]["index"]]
        cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS],
                                                 "top_n": 3, "return_documents": True}).json()
        assert [r["index"] for r in cohere["results"]] == [r["index"] for r in expected[:3]]
        assert cohere["results"][0]["document"]["text"] == expected[0]["document"]
        empty = client.post("/v1/rerank", json={"query": QUERY, "documents": []})
        assert empty.status_code == 400 and "'documents' must not be empty" in empty.json()["error"]["message"]
        tei_empty = client.post("/rerank", json={"query": QUERY, "texts": []})
        assert tei_empty.status_code == 400 and tei_empty.json()["error_type"] == "empty"
        missing = client.post("/v1/fill_mask", json={"input": "a [MASK]"})
        assert missing.status_code == 404 and "no fill_mask head" in missing.json()["error"]["message"]
        sparse = client.post("/embed_sparse", json={"inputs": "x"})
        assert sparse.status_code == 424 and "SPLADE" in sparse.json()["error"]
    with LiveServer(mlm) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        got = client.post("/v1/fill_mask", json={"input": ["the [MASK] is red"], "top_k": 3}).json()
        want = mlm.fill_mask(["the [MASK] is red"], top_k=3)[0]
        assert [p["token"] for p in got["data"][0]["predictions"]] == [p["token"] for p in want]
        bad = client.post("/v1/fill_mask", json={"input": ["no mask"]})
        assert bad.status_code == 400 and "no mask token" in bad.json()["error"]["message"]
        sparse = client.post("/embed_sparse", json={"inputs": ["sparse words", "x"]}).json()
        want_sparse = mlm.embed_sparse(["sparse words", "x"])
        assert [[d["index"] for d in row] for row in sparse] == [list(w) for w in want_sparse]
        np.testing.assert_allclose([d["value"] for d in sparse[0]], list(want_sparse[0].values()), rtol=1e-6)
    with LiveServer(nsp) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        one = client.post("/v1/next_sentence", json={"text": PAIRS[0][0], "text_pair": PAIRS[0][1]}).json()
        assert abs(one["data"][0]["probability"] - nsp.next_sentence(*PAIRS[0])) <= 1e-6
        many = client.post("/v1/next_sentence", json={"input": [list(p) for p in PAIRS]}).json()
        np.testing.assert_allclose([d["probability"] for d in many["data"]], nsp.next_sentence(PAIRS), atol=1e-6)
        single = client.post("/v1/next_sentence", json={"input": ["just one text"]})
        assert single.status_code == 400 and "reads sentence pairs" in single.json()["error"]["message"]


def _cli(capsys, *args) -> tuple[int, list[dict], str]:
    """bertrt's CLI in this process (main(argv)): (exit code, JSON lines out, stderr)."""
    from bertrt.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_cli_rerank_fill_mask_and_pairs(dirs, tmp_path, capsys):
    code, ranked, _ = _cli(capsys, "rerank", "--model", str(dirs["cross"]), "--dtype", "float32", QUERY, *DOCUMENTS)
    expected = _load(dirs["cross"]).rerank(QUERY, DOCUMENTS)
    assert code == 0 and [r["index"] for r in ranked] == [r["index"] for r in expected]
    assert ranked[0]["document"] == DOCUMENTS[ranked[0]["index"]]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"text": a, "hypothesis": b}) + "\n" for a, b in PAIRS))
    _, classified, _ = _cli(capsys, "classify", "--model", str(dirs["nli"]), "--dtype", "float32", "--file",
                            str(pairs_file), "--pair-column", "hypothesis")
    want = _load(dirs["nli"]).classify(PAIRS)
    assert [(c["text"], c["text_pair"], c["label"]) for c in classified] == [(a, b, w["label"])
                                                                            for (a, b), w in zip(PAIRS, want)]
    _, one, _ = _cli(capsys, "classify", "--model", str(dirs["nli"]), "--dtype", "float32", PAIRS[0][0],
                     "--pair", PAIRS[0][1])
    assert one[0]["label"] == want[0]["label"] and one[0]["text_pair"] == PAIRS[0][1]
    _, filled, _ = _cli(capsys, "fill-mask", "--model", str(dirs["mlm"]), "--top-k", "2", "the [MASK] is red")
    assert [p["token"] for p in filled[0]["predictions"]] == [
        p["token"] for p in _load(dirs["mlm"]).fill_mask("the [MASK] is red", top_k=2)]
    code, _, err = _cli(capsys, "fill-mask", "--model", str(dirs["mlm"]), "no mask at all")
    assert code == 2 and "has no mask token" in err
    long = " ".join(f"word{i}" for i in range(60))
    _, embedded, _ = _cli(capsys, "embed", "--model", str(dirs["embed"]), "--dtype", "float32", "--long-text",
                          "window", "--window-pooling", "max", long)
    want_vector = _load(dirs["embed"]).embed([long], long_text="window", window_pooling="max")[0]
    assert np.abs(np.array(embedded[0]["embedding"]) - want_vector).max() <= 1e-6

"""TEI-compatible routes with a TEI-shaped httpx client, sentence-transformers prompts and Matryoshka
dimensions in the Python API and on /v1/embeddings."""

from __future__ import annotations

import json
import shutil

import bertrt
import numpy as np
import pytest

from .serving_helpers import LiveServer, sentence

httpx = pytest.importorskip("httpx")

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def prompted_dir(minilm_dir, tmp_path_factory):
    """The bundled MiniLM with sentence-transformers prompts added."""
    path = tmp_path_factory.mktemp("prompted") / "minilm"
    shutil.copytree(minilm_dir, path)
    config_file = path / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["prompts"] = PROMPTS
    config_file.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def engine(prompted_dir):
    return bertrt.load(prompted_dir, device="cpu", batch_invariant=True)


def test_prompt_name_equals_sentence_transformers(prompted_dir, engine):
    st = pytest.importorskip("sentence_transformers")
    texts = ["what is the capital of france", "paris is the capital"]
    model = st.SentenceTransformer(str(prompted_dir), device="cpu")
    expected = model.encode(texts, prompt_name="query", normalize_embeddings=False)
    got = engine.embed(texts, prompt_name="query")
    np.testing.assert_allclose(got, expected, atol=2e-3 if engine.precision != "float32" else 1e-5)
    np.testing.assert_array_equal(got, engine.embed(["query: " + t for t in texts]))
    with pytest.raises(bertrt.InputError, match="unknown prompt_name 'doc'; this model's prompts: passage, query"):
        engine.embed(texts, prompt_name="doc")


def test_matryoshka_dimensions_truncate_and_renormalize(engine):
    full = engine.embed(["a text about dimensions"])
    short = engine.embed(["a text about dimensions"], dimensions=64)
    assert short.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(short, full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(bertrt.InputError, match=r"dimensions must be an integer in \[1, 384\]"):
        engine.embed(["x"], dimensions=0)


def test_tei_client_embed_tokenize_decode_info(engine):
    texts = [sentence(i) for i in range(3)]
    expected = engine.embed(texts)
    with LiveServer(engine) as server, httpx.Client(base_url=server.url, timeout=30) as tei:
        assert tei.get("/health").status_code == 200
        info = tei.get("/info").json()
        assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["max_input_length"] == 256
        got = np.array(tei.post("/embed", json={"inputs": texts}).json())
        np.testing.assert_array_equal(got.astype(np.float32), expected)
        one = tei.post("/embed", json={"inputs": texts[0], "dimensions": 32}).json()
        assert len(one) == 1 and len(one[0]) == 32
        np.testing.assert_allclose(np.linalg.norm(one[0]), 1.0, atol=1e-5)
        prompted = np.array(tei.post("/embed", json={"inputs": texts, "prompt_name": "passage"}).json())
        np.testing.assert_array_equal(prompted.astype(np.float32), engine.embed(texts, prompt_name="passage"))
        raw = np.array(tei.post("/embed", json={"inputs": texts, "normalize": False}).json())
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), expected, atol=1e-6)
        tokens = tei.post("/embed_all", json={"inputs": ["hello world"]}).json()
        assert len(tokens) == 1 and len(tokens[0]) == 4 and len(tokens[0][0]) == 384  # [CLS] hello world [SEP]
        tokenized = tei.post("/tokenize", json={"inputs": "Hello world"}).json()
        assert [t["text"] for t in tokenized[0]] == ["[CLS]", "Hello", "world", "[SEP]"]
        assert tokenized[0][1] == {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}
        ids = [t["id"] for t in tokenized[0]]
        assert tei.post("/decode", json={"ids": ids}).json() == ["hello world"]
        assert tei.post("/decode", json={"ids": [ids, ids[1:2]]}).json() == ["hello world", "hello"]


def test_tei_errors_have_tei_shape_and_status(engine, tiny_model_dirs):
    long_text = "word " * 600
    with LiveServer(engine, max_inputs=4) as server, httpx.Client(base_url=server.url, timeout=30) as tei:
        cases = [
            ({"inputs": long_text}, 413, "validation", "over the limit"),
            ({"inputs": []}, 400, "empty", "cannot be empty"),
            ({"inputs": ["a"] * 5}, 413, "validation", "batch size 5 > maximum allowed batch size 4"),
            ({"inputs": "a", "dimensions": 1000}, 422, "validation", "dimensions must be an integer"),
            ({"inputs": "a", "prompt_name": "nope"}, 422, "validation", "unknown prompt_name"),
            ({"inputs": 3}, 422, "validation", "`inputs` must be a string"),
        ]
        for body, status, kind, needle in cases:
            answer = tei.post("/embed", json=body)
            assert answer.status_code == status, (body, answer.text)
            error = answer.json()
            assert error["error_type"] == kind and needle in error["error"], (body, error)
        truncated = tei.post("/embed", json={"inputs": long_text, "truncate": True})
        assert truncated.status_code == 200
        assert tei.post("/predict", json={"inputs": "a"}).json()["error_type"] == "backend"
        bad = tei.post("/decode", json={"ids": [10**9]})
        assert bad.status_code == 422 and "token ids in [0, 30522)" in bad.json()["error"]
    classifier = bertrt.load(tiny_model_dirs["classify"], device="cpu", batch_invariant=True)
    with LiveServer(classifier) as server, httpx.Client(base_url=server.url, timeout=30) as tei:
        expected = classifier.classify(["great", "awful movie"])
        single = tei.post("/predict", json={"inputs": "great"}).json()
        assert single[0]["label"] == expected[0]["label"]
        assert single[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-6)
        assert [s["score"] for s in single] == sorted((s["score"] for s in single), reverse=True)
        batch = tei.post("/predict", json={"inputs": [["great"], ["awful movie"]]}).json()
        assert [b[0]["label"] for b in batch] == [r["label"] for r in expected]
        pairs = [("great", "a fine film"), ("awful movie", "x")]
        expected_pairs = classifier.classify(pairs)
        one_pair = tei.post("/predict", json={"inputs": list(pairs[0])}).json()
        assert one_pair[0]["label"] == expected_pairs[0]["label"]
        assert one_pair[0]["score"] == pytest.approx(expected_pairs[0]["score"], abs=1e-6)
        pair_batch = tei.post("/predict", json={"inputs": [list(p) for p in pairs]}).json()
        assert [b[0]["label"] for b in pair_batch] == [r["label"] for r in expected_pairs]
        assert [b[0]["score"] for b in pair_batch] == pytest.approx([r["score"] for r in expected_pairs], abs=1e-6)
        mixed = tei.post("/predict", json={"inputs": [["great"], ["awful movie", "x"]]})
        assert mixed.status_code == 422 and "mixes single texts" in mixed.json()["error"]
        raw = tei.post("/predict", json={"inputs": "great", "raw_scores": True}).json()
        assert sum(r["score"] for r in raw) != pytest.approx(1.0)
        info = tei.get("/info").json()
        assert set(info["model_type"]["classifier"]["label2id"]) == {"negative", "positive", "neutral"}


def test_v1_embeddings_dimensions_and_prompt_name(engine):
    with LiveServer(engine) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/embeddings", json={"input": ["a b c"], "dimensions": 16, "prompt_name": "query"})
        assert answer.status_code == 200, answer.text
        vector = np.array(answer.json()["data"][0]["embedding"], dtype=np.float32)
        np.testing.assert_array_equal(vector, engine.embed(["a b c"], prompt_name="query", dimensions=16)[0])
        bad = client.post("/v1/embeddings", json={"input": "x", "prompt_name": "nope"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_name"

"""Drop-in adapters checked against the libraries themselves: bertrt's SentenceTransformer.encode
against the real sentence_transformers.SentenceTransformer on the bundled MiniLM (same arguments,
same return types, shapes and values), and the LangChain Embeddings against langchain_core's ABC."""

from __future__ import annotations

import asyncio

import bertrt
import numpy as np
import pytest
import torch

from .conftest import PARITY_ATOL

sentence_transformers = pytest.importorskip("sentence_transformers")
from bertrt.integrations.sentence_transformers import SentenceTransformer  # noqa: E402

TEXTS = ["The cat sits on the mat.", "a", "ünïcode naïve café", "Padding-free batches never pad. " * 9,
         "two words", "x", "the quick brown fox jumps over the lazy dog", "7"]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def engine(minilm_dir):
    return bertrt.load(minilm_dir, dtype="float32")


@pytest.fixture(scope="module")
def ours(engine):
    return SentenceTransformer(engine=engine, prompts=PROMPTS)


@pytest.fixture(scope="module")
def theirs(minilm_dir):
    return sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu", prompts=PROMPTS)


@pytest.mark.parametrize("options", [
    {},
    {"batch_size": 3},
    {"batch_size": 1, "normalize_embeddings": True},
    {"convert_to_tensor": True},
    {"convert_to_numpy": False},
    {"convert_to_numpy": True, "convert_to_tensor": True},
    {"prompt_name": "query", "batch_size": 5},
    {"prompt": "Represent this: "},
    {"show_progress_bar": True, "batch_size": 4},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_encode_matches_sentence_transformers(ours, theirs, options):
    for sentences in (TEXTS, TEXTS[3], TEXTS[:1]):
        got = ours.encode(sentences, **options)
        expected = theirs.encode(sentences, **options)
        assert type(got) is type(expected)
        if isinstance(expected, list):
            assert len(got) == len(expected) and all(isinstance(g, torch.Tensor) for g in got)
            got, expected = torch.stack(got), torch.stack(expected)
        assert tuple(got.shape) == tuple(expected.shape)
        assert got.dtype == expected.dtype
        difference = float(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).max())
        assert difference <= PARITY_ATOL, f"max |diff| {difference:.3g}"


def test_encode_errors_and_properties(ours, theirs):
    with pytest.raises(ValueError, match="nope"):
        theirs.encode(["x"], prompt_name="nope")
    with pytest.raises(bertrt.InputError, match="nope"):
        ours.encode(["x"], prompt_name="nope")
    with pytest.raises(bertrt.InputError, match="string"):
        ours.encode(["x", 3])
    with pytest.raises(bertrt.InputError, match="token_embeddings"):
        ours.encode(["x"], output_value="token_embeddings")
    assert ours.get_sentence_embedding_dimension() == theirs.get_sentence_embedding_dimension() == 384
    assert ours.max_seq_length == theirs.max_seq_length
    assert ours.encode([]).shape[0] == len(theirs.encode([]))


def test_langchain_embeddings(engine):
    embeddings_module = pytest.importorskip("langchain_core.embeddings", reason="bertrt[langchain] is not installed")
    from bertrt.integrations.langchain import BertrtEmbeddings

    embeddings = BertrtEmbeddings(engine=engine, query_prefix="query: ")
    assert isinstance(embeddings, embeddings_module.Embeddings)
    documents = embeddings.embed_documents(TEXTS)
    assert isinstance(documents, list) and all(isinstance(v, list) and isinstance(v[0], float) for v in documents)
    np.testing.assert_allclose(documents, engine.embed(TEXTS), atol=1e-6)
    query = embeddings.embed_query("where is the cat?")
    np.testing.assert_allclose(query, engine.embed(["query: where is the cat?"])[0], atol=1e-6)
    assert asyncio.run(embeddings.aembed_query("where is the cat?")) == pytest.approx(query, abs=1e-6)
    assert np.allclose(asyncio.run(embeddings.aembed_documents(TEXTS[:2])), documents[:2], atol=1e-6)
    # a LangChain consumer: the in-memory vector store ranks the matching document first
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_texts(TEXTS, embedding=BertrtEmbeddings(engine=engine))
    assert store.similarity_search("a cat sitting on a mat", k=1)[0].page_content == TEXTS[0]

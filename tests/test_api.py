"""The public API: embed / classify / ner / qa, their edge cases, and agreement with transformers'
pipelines on the same checkpoint."""

from __future__ import annotations

import bertrt
import numpy as np
import pytest
from bertrt import InputError


@pytest.fixture(scope="module")
def minilm():
    return bertrt.load(dtype="float32")


@pytest.fixture(scope="module")
def engines(tiny_model_dirs):
    return {task: bertrt.load(path, dtype="float32") for task, path in tiny_model_dirs.items()}


def test_default_model_embeds(minilm):
    vectors = minilm.embed(["A man is eating food.", "A man eats something.", "The sky is blue."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # Normalize module
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_embed_edge_cases(minilm):
    assert minilm.embed([]).shape == (0, 384)
    single = minilm.embed("one string")
    assert single.shape == (1, 384)
    empty = minilm.embed([""])
    assert np.isfinite(empty).all() and empty.shape == (1, 384)
    with pytest.raises(InputError, match=r"texts\[1\] must be a string, got int"):
        minilm.embed(["ok", 3])
    with pytest.raises(InputError, match="must be a string or a list of strings"):
        minilm.embed(None)


def test_batching_is_invisible(minilm):
    """Results do not depend on batch composition or the order of texts."""
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(23)]
    together = minilm.embed(texts)
    alone = np.stack([minilm.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(together[:5], alone, atol=1e-5)
    reversed_order = minilm.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(together, reversed_order, atol=1e-5)


def test_truncation(minilm):
    long_text = "word " * 1000
    assert minilm.embed([long_text]).shape == (1, 384)  # truncated to the model's 256 tokens
    with pytest.raises(InputError, match=r"text 1 is 1002 tokens long, over the limit of 256"):
        minilm.embed(["short", long_text], truncation="error")
    with pytest.raises(InputError, match="truncation must be one of"):
        minilm.embed(["x"], truncation="cut")


def test_truncated_equals_explicitly_shortened(minilm):
    long_text = " ".join(f"w{i}" for i in range(600))
    tokens = minilm.tokenizer.encode_batch([long_text], "truncate")[0]
    assert len(tokens.ids) == 256 and tokens.tokens[-1] == "[SEP]"


def test_task_must_match_checkpoint(tiny_model_dirs, minilm):
    with pytest.raises(InputError, match="needs a BertForSequenceClassification checkpoint"):
        minilm.classify(["x"])
    with pytest.raises(InputError, match="task 'ner' needs a BertForTokenClassification"):
        bertrt.load(tiny_model_dirs["embed"], task="ner")
    with pytest.raises(InputError, match="task must be one of"):
        bertrt.load(tiny_model_dirs["embed"], task="translate")


def test_any_checkpoint_embeds(engines):
    assert engines["classify"].embed(["hello"]).shape == (1, 48)


def test_classify_matches_transformers(engines, tiny_model_dirs):
    import torch
    import transformers

    texts = ["I loved it", "terrible", "", "meh " * 30]
    results = engines["classify"].classify(texts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dirs["classify"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model_dirs["classify"]).eval()
    with torch.no_grad():
        probs = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    for result, row in zip(results, probs, strict=True):
        assert result["label"] == model.config.id2label[int(row.argmax())]
        assert result["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert engines["classify"].classify([]) == []


NER_TEXTS = ["Angela Merkel visited Washington and New York with Siemens.", "hamburgers", "x",
             "Unbelievably antidisestablishmentarianism ruled Zürich."]


def normalize_entities(entities):
    out = []
    for e in entities:
        e = dict(e)
        e["score"] = round(float(e["score"]), 4)
        e.pop("index", None)
        out.append(e)
    return out


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "average", "max"])
def test_ner_matches_transformers_pipeline(engines, tiny_model_dirs, aggregation):
    import transformers

    pipe = transformers.pipeline("token-classification", model=str(tiny_model_dirs["ner"]),
                                 aggregation_strategy=aggregation, device="cpu")
    ours = engines["ner"].ner(NER_TEXTS, aggregation=aggregation)
    for text, mine in zip(NER_TEXTS, ours, strict=True):
        theirs = pipe(text)
        assert normalize_entities(mine) == normalize_entities(theirs), text
        for entity in mine:
            assert 0 <= entity["start"] <= entity["end"] <= len(text)


def test_ner_rejects_unknown_aggregation(engines):
    with pytest.raises(InputError, match="aggregation must be one of"):
        engines["ner"].ner(["x"], aggregation="mean")


QA_CONTEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
              "It is named after the engineer Gustave Eiffel, whose company designed and built the tower. ")


def brute_force_qa(model_dir, question, context, max_length, stride, max_answer_length=15):
    """Independent reference: transformers' tokenizer windows and model logits, then every span tried
    by plain loops (the decoding rule of transformers 4.x's question-answering pipeline: softmax over
    context tokens and [CLS], score p_start * p_end, span inside the context, at most 15 tokens)."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    windows = tokenizer(question, context, truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
                        return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=windows["input_ids"], attention_mask=windows["attention_mask"],
                    token_type_ids=windows["token_type_ids"])
    best = (-1.0, 0, 0)
    for w in range(windows["input_ids"].shape[0]):
        in_context = [sid == 1 for sid in windows.sequence_ids(w)]
        allowed = [i for i, c in enumerate(in_context) if c] + [0]
        p_start = torch.full((len(in_context),), 0.0)
        p_end = torch.full((len(in_context),), 0.0)
        p_start[allowed] = out.start_logits[w, allowed].double().softmax(0).float()
        p_end[allowed] = out.end_logits[w, allowed].double().softmax(0).float()
        offsets = windows["offset_mapping"][w]
        for s in range(1, len(in_context)):
            for e in range(s, min(s + max_answer_length, len(in_context))):
                if in_context[s] and in_context[e]:
                    score = float(p_start[s] * p_end[e])
                    if score > best[0]:
                        best = (score, int(offsets[s][0]), int(offsets[e][1]))
    return best


@pytest.mark.parametrize("context_repeats,max_length,stride", [(1, 64, None), (6, 64, 16)],
                         ids=["one-window", "doc-stride"])
def test_qa_matches_brute_force_reference(engines, tiny_model_dirs, context_repeats, max_length, stride):
    context = QA_CONTEXT * context_repeats
    question = "Who designed the tower?"
    score, start, end = brute_force_qa(tiny_model_dirs["qa"], question, context, max_length, stride or 32)
    ours = engines["qa"].qa(question, context, max_length=max_length, doc_stride=stride)
    assert (ours["start"], ours["end"]) == (start, end)
    assert ours["answer"] == context[start:end]
    assert ours["score"] == pytest.approx(score, rel=1e-3)
    top = engines["qa"].qa(question, context, max_length=max_length, doc_stride=stride, top_k=3)
    assert len(top) == 3 and top[0] == ours and top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_qa_bad_input(engines):
    with pytest.raises(InputError, match="question must be a string"):
        engines["qa"].qa(None, "context")
    with pytest.raises(InputError, match="must be non-empty"):
        engines["qa"].qa("why?", "   ")
    with pytest.raises(InputError, match="doc_stride 64 must be smaller than max_length 64"):
        engines["qa"].qa("why?", "because", max_length=64, doc_stride=64)


def test_tokenizer_keeps_a_bounded_number_of_truncation_settings(minilm):
    from bertrt.tokenizer import MAX_TRUNCATING_COPIES

    for stride in range(1, 3 * MAX_TRUNCATING_COPIES):
        windows = minilm.tokenizer.encode_pairs_with_stride("why?", "word " * 300, 64, stride)
        assert all(len(w.ids) <= 64 for w in windows)
    assert len(minilm.tokenizer._truncating) == MAX_TRUNCATING_COPIES

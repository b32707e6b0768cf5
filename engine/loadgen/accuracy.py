"""Accuracy from LoadGen's accuracy log (``mlperf_log_accuracy.json``: one entry per response with its
sample index and the response bytes in hex), scored per task.

qa: exact match and F1 over normalized answer tokens, the best over the gold answers of a question,
averaged and scaled to 0-100 (the usual SQuAD v1.1 metric that MLPerf's BERT benchmark reports).
classify: accuracy of the predicted label against the dataset's labels. embed: cosine of each
vector with an FP32 run's vector of the same text.
"""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path

import numpy as np

from ..errors import InputError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, reference = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not reference:
        return float(predicted == reference)
    common = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], gold_answers: list[list[str]]) -> dict:
    """{"exact_match", "f1"} in percent over questions (each: the best over its gold answers; a
    question without gold answers counts as an empty gold answer)."""
    if len(predictions) != len(gold_answers):
        raise InputError(f"{len(predictions)} predictions for {len(gold_answers)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    em = [max(exact_match(p, g) for g in (golds or [""])) for p, golds in zip(predictions, gold_answers)]
    f = [max(f1(p, g) for g in (golds or [""])) for p, golds in zip(predictions, gold_answers)]
    return {"exact_match": 100.0 * sum(em) / len(em), "f1": 100.0 * sum(f) / len(f), "count": len(em)}


def read_accuracy_log(path: str | Path) -> dict[int, bytes]:
    """sample index -> response bytes (the last response when a sample was logged more than once)."""
    entries = json.loads(Path(path).read_text(encoding="utf-8") or "[]")
    return {int(e["qsl_idx"]): bytes.fromhex(e["data"]) for e in entries}


def classify_accuracy(predicted: dict[int, str], labels: list, id2label: dict[int, str]) -> dict:
    """Share of samples whose predicted label name equals the gold label (a name, or an index into
    ``id2label``)."""
    correct = 0
    for index, label in predicted.items():
        gold = labels[index]
        if not isinstance(gold, str):
            if int(gold) not in id2label:
                raise InputError(f"dataset label {gold!r} is an index but the model's labels are {id2label}")
            gold = id2label[int(gold)]
        correct += gold == label
    return {"accuracy": correct / max(1, len(predicted)), "count": len(predicted)}


def embed_cosine(vectors: dict[int, np.ndarray], reference: np.ndarray) -> dict:
    """Cosine of each sample's vector with ``reference[index]`` (n, hidden) from an FP32 run."""
    rows = sorted(vectors)
    got = np.stack([vectors[i] for i in rows]).astype(np.float64)
    ref = reference[rows].astype(np.float64)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "count": len(rows)}

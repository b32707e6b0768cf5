"""Turning logits into answers: classification labels, NER entities and QA spans.

The NER aggregation strategies and the QA span decoding follow transformers' token-classification
and question-answering pipelines, so results match them on the same logits.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("none", "simple", "first", "average", "max")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def classification_result(logits: np.ndarray, id2label: dict[int, str], multi_label: bool) -> dict:
    """logits: (num_labels,) -> {"label", "score", "scores": {label: probability}}."""
    probs = 1.0 / (1.0 + np.exp(-logits)) if multi_label else softmax(logits)
    best = int(probs.argmax())
    return {
        "label": id2label[best],
        "score": float(probs[best]),
        "scores": {id2label[i]: float(p) for i, p in enumerate(probs)},
    }


def _split_tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def _group(entities: list[dict], join) -> dict:
    return {
        "entity_group": entities[0]["entity"].split("-", 1)[-1],
        "score": float(np.mean([e["score"] for e in entities])),
        "word": join([e["word"] for e in entities]),
        "start": entities[0]["start"],
        "end": entities[-1]["end"],
    }


def group_entities(entities: list[dict], join) -> list[dict]:
    groups, current = [], []
    for entity in entities:
        if current:
            bi, tag = _split_tag(entity["entity"])
            _, last_tag = _split_tag(current[-1]["entity"])
            if not (tag == last_tag and bi != "B"):
                groups.append(_group(current, join))
                current = []
        current.append(entity)
    if current:
        groups.append(_group(current, join))
    return groups


def ner_entities(
    logits: np.ndarray,
    tokens: list[str],
    offsets: list[tuple[int, int]],
    special: list[int],
    is_subword: list[bool],
    id2label: dict[int, str],
    aggregation: str,
    join,
    ignore_labels: tuple[str, ...] = ("O",),
) -> list[dict]:
    """logits: (tokens, labels) for one text. join(tokens) -> the text of a token run."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    scores = softmax(logits.astype(np.float64))
    pre = [
        {"index": i, "word": tokens[i], "start": offsets[i][0], "end": offsets[i][1], "scores": scores[i],
         "is_subword": is_subword[i]}
        for i in range(len(tokens)) if not special[i]
    ]
    if aggregation in ("none", "simple"):
        entities = []
        for p in pre:
            best = int(p["scores"].argmax())
            entities.append({"entity": id2label[best], "score": float(p["scores"][best]), "index": p["index"],
                             "word": p["word"], "start": p["start"], "end": p["end"]})
        if aggregation == "simple":
            entities = group_entities(entities, join)
    else:
        words, current = [], []
        for p in pre:
            if current and not p["is_subword"]:
                words.append(current)
                current = []
            current.append(p)
        if current:
            words.append(current)
        entities = []
        for word in words:
            if aggregation == "first":
                word_scores = word[0]["scores"]
            elif aggregation == "max":
                word_scores = max(word, key=lambda p: p["scores"].max())["scores"]
            else:
                word_scores = np.mean([p["scores"] for p in word], axis=0)
            best = int(word_scores.argmax())
            entities.append({"entity": id2label[best], "score": float(word_scores[best]),
                             "word": join([p["word"] for p in word]), "start": word[0]["start"],
                             "end": word[-1]["end"]})
        entities = group_entities(entities, join)
    key = "entity" if aggregation == "none" else "entity_group"
    return [e for e in entities if e[key] not in ignore_labels]


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    max_answer_length: int,
    top_k: int = 1,
) -> list[tuple[int, int, float]]:
    """One window: (start_token, end_token, score) of the top_k spans inside the context.

    start/end_logits: (tokens,); context_mask: (tokens,) bool, True on context tokens.
    The score is p_start * p_end with the softmax taken over context tokens and [CLS].
    """
    keep = context_mask.copy()
    keep[0] = True  # [CLS] joins the softmax (as in the pipeline), then is excluded from answers
    start = np.where(keep, start_logits, -10000.0).astype(np.float64)
    end = np.where(keep, end_logits, -10000.0).astype(np.float64)
    start, end = softmax(start), softmax(end)
    start[0] = end[0] = 0.0
    outer = np.triu(np.outer(start, end))
    outer = np.tril(outer, max_answer_length - 1)
    flat = outer.ravel()
    order = np.argsort(-flat, kind="stable")
    spans = []
    for idx in order:
        s, e = divmod(int(idx), outer.shape[1])
        if flat[idx] <= 0:
            break
        if context_mask[s] and context_mask[e]:
            spans.append((s, e, float(flat[idx])))
            if len(spans) == top_k:
                break
    return spans

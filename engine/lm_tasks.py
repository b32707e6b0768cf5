"""Turning the pair and pre-training heads' outputs into answers: rerank order, zero-shot labels,
fill-mask predictions (as transformers' fill-mask pipeline writes them), SPLADE weights, and the
pooling of long texts' windows. Pure functions on numpy/torch arrays, shared by Engine and serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .tasks import softmax

WINDOW_POOLINGS = ("mean", "max")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cross_encoder_info(model_dir: Path) -> dict | None:
    """{"activation": "sigmoid" | "identity"} when ``model_dir`` was saved as a sentence-transformers
    CrossEncoder (config_sentence_transformers.json model_type, or config.json's older
    "sentence_transformers" block), else None. Such a model takes (query, document) pairs only."""
    activation = None
    st_file = Path(model_dir) / "config_sentence_transformers.json"
    if st_file.exists():
        raw = json.loads(st_file.read_text())
        if raw.get("model_type") != "CrossEncoder":
            return None
        activation = raw.get("activation_fn")
    else:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        block = config.get("sentence_transformers")
        if not isinstance(block, dict):
            return None
        activation = block.get("activation_fn")
    return {"activation": "identity" if activation and activation.endswith("Identity") else "sigmoid"}


def rerank_results(scores: np.ndarray, documents: list[str], top_n: int | None, return_documents: bool,
                   key: str = "score", document_key: str = "document") -> list[dict]:
    """scores: (documents,) -> [{"index", key, document_key?}] best first (ties keep input order)."""
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    out = []
    for i in order.tolist():
        item = {"index": i, key: float(scores[i])}
        if return_documents:
            item[document_key] = documents[i]
        out.append(item)
    return out


def entailment_index(id2label: dict[int, str]) -> int:
    """The NLI label that means entailment (the zero-shot pipeline's rule: a label starting 'entail')."""
    found = [i for i, name in id2label.items() if name.lower().startswith("entail")]
    if not found:
        raise InputError(f"zero-shot classification needs an NLI model with an 'entailment' label; "
                         f"this one has {sorted(id2label.values())}")
    return found[0]


def zero_shot_result(text: str, labels: list[str], logits: np.ndarray, entail: int, multi_label: bool) -> dict:
    """logits: (labels, nli_labels) of (text, hypothesis for each label) -> {"sequence", "labels", "scores"}
    best first. Single-label: softmax of the entailment logits over the labels; multi-label: per label,
    softmax over (contradiction, entailment) (contradiction = label 0 unless it is entailment)."""
    logits = logits.astype(np.float64)
    if multi_label or len(labels) == 1:
        contradiction = 0 if entail != 0 else logits.shape[1] - 1
        pair = logits[:, [contradiction, entail]]
        scores = softmax(pair, axis=1)[:, 1]
    else:
        scores = softmax(logits[:, entail])
    order = np.argsort(-scores, kind="stable")
    return {"sequence": text, "labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}


def clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def fill_mask_predictions(ids: list[int], logits: torch.Tensor, mask_id: int, pad_id: int, top_k: int,
                          decode, clean_up: bool) -> list:
    """One text: ids (len,) with k mask tokens, logits (k, vocab) -> as the fill-mask pipeline:
    a list of top_k {"score", "token", "token_str", "sequence"} for one mask, a list of such lists
    for several. decode(ids, skip_special_tokens) -> str."""
    probs = torch.softmax(logits.float(), dim=-1)
    values, predictions = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    single = len(positions) == 1
    text_of = (lambda s: clean_up_spaces(s)) if clean_up else (lambda s: s)
    result = []
    for position, row_values, row_tokens in zip(positions, values.tolist(), predictions.tolist()):
        row = []
        for value, token in zip(row_values, row_tokens):
            filled = [token if i == position else t for i, t in enumerate(ids) if t != pad_id or i == position]
            row.append({"score": value, "token": token, "token_str": text_of(decode([token], False)),
                        "sequence": text_of(decode(filled, single))})
        result.append(row)
    return result[0] if single else result


def sparse_weights(row: torch.Tensor, top_k: int | None) -> dict[int, float]:
    """row: (vocab,) SPLADE weights -> {token_id: weight} of the nonzero ones, largest first."""
    nonzero = torch.nonzero(row > 0).flatten()
    values = row[nonzero]
    order = torch.argsort(values, descending=True, stable=True)
    if top_k is not None:
        order = order[:top_k]
    return {int(nonzero[i]): float(values[i]) for i in order.tolist()}


def pool_windows(rows: list[torch.Tensor], counts: list[int], how: str) -> list[torch.Tensor]:
    """rows: one (width,) tensor per window, texts' windows consecutive; counts: windows per text ->
    one (width,) tensor per text, the mean or the max over its windows."""
    if how not in WINDOW_POOLINGS:
        raise InputError(f"window_pooling must be one of {WINDOW_POOLINGS}, got {how!r}")
    out, start = [], 0
    for count in counts:
        block = torch.stack(rows[start:start + count])
        out.append(block.mean(0) if how == "mean" else block.amax(0))
        start += count
    return out

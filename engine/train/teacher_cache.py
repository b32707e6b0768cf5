"""Teacher sentence embeddings computed once per training set, for embedding distillation.

When only pooled-embedding losses are on, the teacher's contribution to a step is its embedding of each
row, which never changes: computing it once (instead of a teacher forward every step) takes about 40% off
each step of a 6 -> 3 layer distillation, and a multi-epoch run pays for it after one epoch. The cache is a
file keyed by the teacher, the tokenized rows and the pooling, so later stages and resumed runs reuse it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import EncodedExample, collate

log = logging.getLogger("bertrt.train")


def fingerprint(teacher_dir: str | Path, examples: Sequence[EncodedExample], pooling) -> str:
    digest = hashlib.sha256()
    digest.update(str(Path(teacher_dir).resolve()).encode())
    digest.update(repr(pooling).encode())
    for example in examples:
        digest.update(repr(example.input_ids).encode())
    return digest.hexdigest()


@torch.inference_mode()
def compute(teacher, pooling, examples: Sequence[EncodedExample], pad_id: int, batch_size: int = 128,
            progress: bool = True) -> torch.Tensor:
    """(rows, hidden) float32: the teacher's pooled (not normalized) embedding of each row, in row order.

    Rows run sorted by length, so batches carry almost no padding."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = torch.empty(len(examples), teacher.config.hidden_size)
    for start in tqdm(range(0, len(order), batch_size), desc="teacher embeddings", disable=not progress,
                      dynamic_ncols=True):
        rows = order[start:start + batch_size]
        batch = collate([examples[i] for i in rows], pad_id)
        batch.pop("labels", None)
        hidden = teacher(**batch).last_hidden_state
        out[torch.tensor(rows)] = pooling(hidden, batch["attention_mask"]).float()
    return out


def load_or_compute(path: str | Path, teacher_dir: str | Path, teacher, pooling,
                    examples: Sequence[EncodedExample], pad_id: int, progress: bool = True) -> torch.Tensor:
    """The cached embeddings at ``path`` when they were made from the same teacher, rows and pooling;
    otherwise compute them and write ``path``."""
    path = Path(path)
    key = fingerprint(teacher_dir, examples, pooling)
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("fingerprint") == key:
            log.info("teacher embeddings from %s", path)
            return saved["embeddings"]
        log.info("%s was made from another teacher or data; recomputing", path)
    embeddings = compute(teacher, pooling, examples, pad_id, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"fingerprint": key, "embeddings": embeddings}, partial)
    partial.replace(path)
    return embeddings

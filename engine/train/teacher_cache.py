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
from dataclasses import replace
from pathlib import Path

import torch

from ..model.validate import read_torch_file
from .data import EncodedExample
from .models import predict

log = logging.getLogger("bertrt.train")


def fingerprint(teacher_dir: str | Path, examples: Sequence[EncodedExample], pooling) -> str:
    """Changes with the teacher's files (path, size, mtime), its pooling and every tokenized row."""
    digest = hashlib.sha256()
    teacher_dir = Path(teacher_dir).resolve()
    digest.update(str(teacher_dir).encode())
    for path in sorted(teacher_dir.glob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr(pooling).encode())
    for example in examples:
        digest.update(repr(example.input_ids).encode())
    return digest.hexdigest()


def compute(teacher, pooling, examples: Sequence[EncodedExample], progress: bool = True) -> torch.Tensor:
    """(rows, hidden) float32: the teacher's pooled embedding of each row, in row order, not normalized
    (the training losses compare it with the student's unnormalized one)."""
    rows = predict(teacher, "embedding", examples, batch_size=128, pooling=replace(pooling, normalize=False),
                   progress="teacher embeddings" if progress else None)
    return torch.stack(rows)


def load_or_compute(path: str | Path, teacher_dir: str | Path, teacher, pooling,
                    examples: Sequence[EncodedExample], progress: bool = True) -> torch.Tensor:
    """The cached embeddings at ``path`` when they were made from the same teacher, rows and pooling;
    otherwise compute them and write ``path``."""
    path = Path(path)
    key = fingerprint(teacher_dir, examples, pooling)
    if path.is_file():
        saved = read_torch_file(path, "the teacher-embedding cache (delete it to recompute)")
        if isinstance(saved, dict) and saved.get("fingerprint") == key:
            log.info("teacher embeddings from %s", path)
            return saved["embeddings"]
        log.info("%s was made from another teacher or data; recomputing", path)
    embeddings = compute(teacher, pooling, examples, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"fingerprint": key, "embeddings": embeddings}, partial)
    partial.replace(path)
    return embeddings

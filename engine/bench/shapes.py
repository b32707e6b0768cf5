"""Benchmark shapes and their inputs.

A shape is ``BATCHxLEN`` (every sequence ``LEN`` tokens) or ``BATCHxMIN-MAX`` (lengths drawn
uniformly from [MIN, MAX] with a seeded generator). Every sequence is ``[CLS] words... [SEP]``; the
words are whole-word vocabulary entries drawn with the same seed, so every engine sees the same tokens.

bertrt gets a padding-free ``PackedBatch``; peers get the padded (batch, max_len) tensors built
from the same batch, as a caller of those libraries would.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..batching import PackedBatch, pack
from ..errors import InputError
from .names import DEFAULT_SHAPES

__all__ = ["DEFAULT_SHAPES", "BenchInputs", "ShapeSpec", "make_inputs", "parse_shape", "parse_shapes"]
_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


@dataclass(frozen=True)
class ShapeSpec:
    batch: int
    min_len: int
    max_len: int

    @property
    def name(self) -> str:
        if self.min_len == self.max_len:
            return f"{self.batch}x{self.max_len}"
        return f"{self.batch}x{self.min_len}-{self.max_len}"

    @property
    def variable(self) -> bool:
        return self.min_len != self.max_len

    def lengths(self, seed: int = 0) -> list[int]:
        """Sequence lengths (special tokens included), reproducible for a given seed."""
        if not self.variable:
            return [self.max_len] * self.batch
        rng = random.Random(f"{seed}:{self.name}")
        return [rng.randint(self.min_len, self.max_len) for _ in range(self.batch)]


def parse_shape(text: str) -> ShapeSpec:
    match = _SHAPE.match(text)
    if not match:
        raise InputError(f"bad shape {text!r}: use BATCHxLEN (e.g. 8x128) or BATCHxMIN-MAX (e.g. 32x16-128)")
    batch, low = int(match.group(1)), int(match.group(2))
    high = int(match.group(3)) if match.group(3) else low
    if batch < 1:
        raise InputError(f"bad shape {text!r}: batch must be >= 1")
    if low < 2:
        raise InputError(f"bad shape {text!r}: sequences need at least 2 tokens ([CLS] and [SEP])")
    if high < low:
        raise InputError(f"bad shape {text!r}: MAX {high} is smaller than MIN {low}")
    return ShapeSpec(batch, low, high)


def parse_shapes(text: str | list[str] | tuple[str, ...]) -> list[ShapeSpec]:
    """"1x128,8x128" or a list of such strings -> shape specs (order kept, duplicates dropped)."""
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    specs: list[ShapeSpec] = []
    for item in items:
        if item.strip():
            spec = parse_shape(item)
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise InputError("no shapes given")
    return specs


def vocabulary(vocab_file: Path) -> list[str]:
    """Tokens by id: vocab.txt's lines, or without it the vocabulary of tokenizer.json beside it."""
    vocab_file = Path(vocab_file)
    if vocab_file.exists():
        return vocab_file.read_text(encoding="utf-8").splitlines()
    vocab = Tokenizer.from_file(str(vocab_file.with_name("tokenizer.json"))).get_vocab(with_added_tokens=True)
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


def word_ids(vocab_file: Path) -> tuple[list[int], int, int, int]:
    """(ids of whole lowercase words in vocab.txt, cls_id, sep_id, pad_id). Without vocab.txt, the
    vocabulary of tokenizer.json beside it (BPE / Unigram families: RoBERTa's <s> </s> <pad>, words
    marked with their leading-space symbol)."""
    tokens = vocabulary(vocab_file)
    index = {t: i for i, t in enumerate(tokens)}
    bare = [t.lstrip("\u0120\u2581") for t in tokens]  # byte-level BPE's "Ġ", SentencePiece's "▁"
    words = [i for i, t in enumerate(bare) if t.isalpha() and t.isascii() and t.islower() and len(t) > 1]
    if not words:
        words = [i for i, t in enumerate(tokens) if t and not (t[0] in "[<" and t[-1] in "]>")]
    special = lambda *names: next((index[n] for n in names if n in index), None)  # noqa: E731
    cls_id, sep_id, pad_id = special("[CLS]", "<s>"), special("[SEP]", "</s>"), special("[PAD]", "<pad>")
    return words, 101 if cls_id is None else cls_id, 102 if sep_id is None else sep_id, pad_id or 0


@dataclass
class BenchInputs:
    """One batch in both layouts, plus the words (for end-to-end text runs)."""

    spec: ShapeSpec
    ids: list[list[int]]
    packed: PackedBatch
    input_ids: torch.Tensor  # (batch, max_len) int64, padded right
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    texts: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def feed(self) -> dict[str, object]:
        """Padded numpy inputs for ONNX Runtime / OpenVINO."""
        return {"input_ids": self.input_ids.numpy(), "attention_mask": self.attention_mask.numpy(),
                "token_type_ids": self.token_type_ids.numpy()}


def make_inputs(spec: ShapeSpec, vocab_file: Path, seed: int = 0, max_length: int | None = None) -> BenchInputs:
    """Seeded token ids for ``spec``; lengths are clipped to ``max_length`` (the model's limit)."""
    words, cls_id, sep_id, pad_id = word_ids(vocab_file)
    id_to_token = [t.lstrip("\u0120\u2581") for t in vocabulary(vocab_file)]
    rng = random.Random(f"tokens:{seed}:{spec.name}")
    ids, texts = [], []
    for length in spec.lengths(seed):
        if max_length is not None:
            length = min(length, max_length)
        body = [rng.choice(words) for _ in range(length - 2)]
        ids.append([cls_id, *body, sep_id])
        texts.append(" ".join(id_to_token[i] for i in body))
    packed = pack(ids, [[0] * len(x) for x in ids], list(range(len(ids))))
    input_ids, attention_mask, token_type_ids = packed.padded(pad_id)
    return BenchInputs(spec, ids, packed, input_ids, attention_mask, token_type_ids, texts)

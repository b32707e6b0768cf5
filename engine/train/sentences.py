"""Held-out English sentences for the embedding-distillation check: Python's own documentation.

``pydoc_data.topics`` ships with every CPython; its prose is split into sentences, and sentences with
code-like characters are dropped. Out of domain for a student distilled on WordNet glosses, which is
the point: it shows what the student keeps beyond its training text.

Run: ``python -m bertrt.train.sentences --out out/wordnet/pydoc_sentences.csv``.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from pydoc_data.topics import topics

_CODE_LIKE = re.compile(r"[>{}\[\]=_*|`]")


def pydoc_sentences(min_chars: int = 40, max_chars: int = 300) -> list[str]:
    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    seen, out = set(), []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if (min_chars <= len(sentence) <= max_chars and re.match(r"^[A-Z][a-z]", sentence)
                and not _CODE_LIKE.search(sentence) and sentence not in seen):
            seen.add(sentence)
            out.append(sentence)
    return out


def write_sentences(path: str | Path, limit: int | None = None) -> int:
    sentences = pydoc_sentences()[:limit]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([s] for s in sentences)
    return len(sentences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/wordnet/pydoc_sentences.csv")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    print(f"{write_sentences(args.out, args.limit)} sentences -> {args.out}")


if __name__ == "__main__":
    main()

"""The bundled LoadGen dataset: 512 lines of real English from Python's own documentation
(``pydoc_data.topics`` and the docstrings of some standard-library modules, shipped with CPython under
the PSF license), as JSON lines ``{"text": ...}``; no sentence is used twice.

Line lengths are drawn uniformly from 16..128 tokens (MiniLM's WordPiece, [CLS]/[SEP] included), the
mix of bertrt bench's 32x16-128 shape, but with real text. Consecutive sentences are joined until a
line reaches its drawn length, then whole words are dropped from the end until it fits.

Regenerate: ``python -m bertrt.loadgen.texts --out examples/loadgen/pydoc-512.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
from pathlib import Path

from tokenizers import Tokenizer

from ..model.loader import default_model_dir
from ..train.sentences import pydoc_sentences

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "examples" / "loadgen" / "pydoc-512.jsonl"
_DOC_MODULES = ("argparse", "asyncio", "calendar", "collections", "concurrent.futures", "contextlib", "csv",
                "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions",
                "functools", "heapq", "http.client", "inspect", "io", "itertools", "json", "logging",
                "pathlib", "pickle", "queue", "random", "shutil", "socket", "statistics", "string",
                "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest",
                "urllib.request", "zipfile", "configparser", "optparse", "doctest", "pdb", "pydoc", "timeit",
                "codecs", "base64", "hashlib", "hmac", "uuid", "ipaddress", "gzip", "bz2", "lzma", "struct",
                "weakref", "types", "copy", "pprint", "numbers", "mailbox", "smtplib", "ftplib", "imaplib",
                "selectors", "multiprocessing.pool", "xml.dom.minidom", "xml.etree.ElementTree", "gettext",
                "locale", "sqlite3", "ssl", "trace", "tokenize", "ast", "dis", "pickletools", "zipimport",
                "unittest.mock", "wave", "sched", "shelve", "dbm", "cmd", "code", "netrc", "plistlib")
_CODE_LIKE = re.compile(r"[>{}\[\]=_*|`<#@\\]")


def docstring_sentences(min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """Prose sentences of the docstrings of ``_DOC_MODULES`` and their public members."""
    seen, out = set(), []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(getattr(module, attr)) or "" for attr in sorted(vars(module))
                 if not attr.startswith("_") and getattr(getattr(module, attr), "__module__", None) == name]
        text = re.sub(r"\s+", " ", " ".join(docs))
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if (min_chars <= len(sentence) <= max_chars and re.match(r"^[A-Z][a-z]", sentence)
                    and not _CODE_LIKE.search(sentence) and sentence not in seen):
                seen.add(sentence)
                out.append(sentence)
    return out


def make_lines(tokenizer, count: int = 512, min_tokens: int = 16, max_tokens: int = 128, seed: int = 0) -> list[str]:
    """``count`` texts whose token counts (special tokens included) are drawn from [min_tokens, max_tokens]."""
    rng = random.Random(seed)
    sentences = pydoc_sentences()
    sentences += [x for x in docstring_sentences() if x not in set(sentences)]
    position, lines = 0, []

    def length(text: str) -> int:
        return len(tokenizer.encode(text).ids)

    while len(lines) < count:
        goal = rng.randint(min_tokens, max_tokens)
        words: list[str] = []
        while length(" ".join(words)) < goal:
            if position == len(sentences):
                raise ValueError(f"not enough sentences for {count} lines")
            words += sentences[position].split()
            position += 1
        while len(words) > 1 and length(" ".join(words)) > goal:
            words.pop()
        if length(" ".join(words)) >= min_tokens:  # else a long last word was dropped: draw again
            lines.append(" ".join(words))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    parser.add_argument("--count", type=int, default=512)
    args = parser.parse_args(argv)
    tokenizer = Tokenizer.from_file(str(Path(default_model_dir()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lines = make_lines(tokenizer, args.count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} lines -> {out}")


if __name__ == "__main__":
    main()

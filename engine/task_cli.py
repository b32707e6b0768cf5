"""``bertrt rerank``, ``bertrt fill-mask``, ``bertrt next-sentence``, ``bertrt embed-sparse`` and
sentence pairs for ``bertrt classify``: a plugin of engine/cli.py (its PLUGINS table imports this
module when it builds the parser).

Inputs as for the other commands: arguments, ``--file`` (one text per line, or JSON lines with
"text" and, for pairs, "text_pair" or the field ``--pair-column`` names) or stdin; JSON lines out.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import _common
from .cli import _engine as load_engine
from .cli import cmd_embed as cmd_embed_plain
from .errors import InputError


def read_records(args, pair_field: str | None = None) -> list:
    """Texts, or (text, text_pair) pairs when ``pair_field`` is given, from --file / stdin lines."""
    handle = open(args.file, encoding="utf-8") if args.file and args.file != "-" else sys.stdin
    try:
        lines = [line.rstrip("\n") for line in handle]
    finally:
        if handle is not sys.stdin:
            handle.close()
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not line.startswith("{"):
            if pair_field:
                raise SystemExit(f"bertrt: line {number}: pairs need JSON lines with 'text' and '{pair_field}'")
            items.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"bertrt: line {number}: invalid JSON: {exc}") from None
        if not isinstance(record.get("text"), str):
            raise SystemExit(f"bertrt: line {number}: JSON object without a string 'text' field")
        if pair_field and not isinstance(record.get(pair_field), str):
            raise SystemExit(f"bertrt: line {number}: JSON object without a string '{pair_field}' field")
        pair = record.get(pair_field or "text_pair")
        items.append((record["text"], pair) if isinstance(pair, str) else record["text"])
    return items


def inputs_with_pairs(args) -> list:
    """classify / next-sentence inputs: positional texts with --pair (one per text, or one for all),
    else --file/stdin records, as pairs when --pair / --pair-column / a text_pair field says so."""
    pairs = getattr(args, "pair", None) or []
    if args.text:
        texts = list(args.text)
        if not pairs:
            return texts
        if len(pairs) not in (1, len(texts)):
            raise InputError(f"give one --pair for all texts or one per text; got {len(pairs)} for {len(texts)}")
        return [(t, pairs[0] if len(pairs) == 1 else p) for t, p in zip(texts, pairs * len(texts))]
    field = getattr(args, "pair_column", None)
    return read_records(args, field or ("text_pair" if getattr(args, "pairs", False) else None))


def cmd_classify(args) -> int:
    """bertrt classify, with sentence pairs (--pair, --pair-column, JSON lines' text_pair)."""
    items = inputs_with_pairs(args)
    results = _engine(args, "classify").classify(items, truncation=args.truncation, **_long_text(args))
    for item, result in zip(items, results):
        text = {"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else {"text": item}
        _emit([{**text, **result}])
    return 0


def _emit(records) -> None:
    for record in records:
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def _engine(args, task: str):
    return load_engine(args, task)


def _long_text(args) -> dict:
    return {"long_text": args.long_text, "stride": args.stride, "window_pooling": args.window_pooling}


def cmd_embed(args) -> int:
    """bertrt embed, with --long-text window (``--ray`` runs the files job of bertrt.cli)."""
    if args.ray:
        return cmd_embed_plain(args)
    texts = list(args.text) if args.text else read_records(args)
    vectors = _engine(args, "embed").embed(texts, truncation=args.truncation, **_long_text(args))
    _emit({"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(texts, vectors))
    return 0


def add_long_text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long-text", default="truncate", choices=("truncate", "window"),
                   help="window: read over-long texts in overlapping windows and pool them")
    p.add_argument("--stride", type=int, default=None, help="tokens shared by consecutive windows")
    p.add_argument("--window-pooling", default="mean", choices=("mean", "max"))


def cmd_rerank(args) -> int:
    documents = list(args.document) if args.document else read_records(args)
    results = _engine(args, "classify").rerank(args.query, documents, top_n=args.top_n, return_documents=True,
                                              raw_scores=args.raw_scores, truncation=args.pair_truncation)
    _emit(results)
    return 0


def cmd_fill_mask(args) -> int:
    texts = list(args.text) if args.text else read_records(args)
    results = _engine(args, "fill_mask").fill_mask(texts, top_k=args.top_k, truncation=args.truncation)
    _emit({"text": t, "predictions": r} for t, r in zip(texts, results))
    return 0


def cmd_next_sentence(args) -> int:
    args.pairs = True
    pairs = inputs_with_pairs(args)
    probabilities = _engine(args, "next_sentence").next_sentence(pairs, truncation=args.truncation)
    _emit({"text": a, "text_pair": b, "probability": p} for (a, b), p in zip(pairs, probabilities))
    return 0


def cmd_embed_sparse(args) -> int:
    texts = list(args.text) if args.text else read_records(args)
    results = _engine(args, "embed_sparse").embed_sparse(texts, top_k=args.top_k, truncation=args.truncation)
    _emit({"text": t, "weights": {str(k): round(v, 6) for k, v in r.items()}} for t, r in zip(texts, results))
    return 0


def register(sub) -> None:
    """Adds the commands, and sentence pairs to ``bertrt classify`` (--pair, --pair-column, text_pair)."""
    classify = sub.choices.get("classify")
    if classify is not None:
        add_pair_arguments(classify)
        add_long_text_arguments(classify)
        classify.set_defaults(func=cmd_classify)
    embed = sub.choices.get("embed")
    if embed is not None:
        add_long_text_arguments(embed)
        embed.set_defaults(func=cmd_embed)
    p = sub.add_parser("rerank", help="order documents by relevance to a query (cross-encoder)")
    _common(p)
    p.add_argument("query")
    p.add_argument("document", nargs="*", help="documents (else --file or stdin, one per line or JSON lines)")
    p.add_argument("--file", "-f", default=None)
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--raw-scores", action="store_true", help="logits instead of sigmoid scores")
    p.add_argument("--pair-truncation", default="only_second",
                   choices=("only_second", "longest_first", "only_first", "error"))
    p.set_defaults(func=cmd_rerank)
    p = sub.add_parser("fill-mask", help="predict the [MASK] tokens (masked language model)")
    _common(p)
    p.add_argument("text", nargs="*")
    p.add_argument("--file", "-f", default=None)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=cmd_fill_mask)
    p = sub.add_parser("next-sentence", help="probability that text_pair follows text")
    _common(p)
    p.add_argument("text", nargs="*")
    p.add_argument("--pair", action="append", help="the second sentence (repeat: one per text)")
    p.add_argument("--pair-column", default=None, help="JSON field of the second text (default text_pair)")
    p.add_argument("--file", "-f", default=None)
    p.set_defaults(func=cmd_next_sentence)
    p = sub.add_parser("embed-sparse", help="SPLADE sparse embeddings {token_id: weight}")
    _common(p)
    p.add_argument("text", nargs="*")
    p.add_argument("--file", "-f", default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.set_defaults(func=cmd_embed_sparse)


def add_pair_arguments(p: argparse.ArgumentParser) -> None:
    """classify's pair options."""
    p.add_argument("--pair", action="append", help="second text of a sentence pair (repeat: one per text)")
    p.add_argument("--pair-column", default=None,
                   help="JSON lines field holding the second text (a 'text_pair' field is read by default)")

"""The WordNet supersense demo set: gloss text -> lexicographer file (45 classes).

Reads Debian's ``wordnet-base`` data files (``/usr/share/wordnet/data.{noun,verb,adj,adv}``). Each
synset line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the two-digit
``lex_filenum`` names the lexicographer file (``noun.animal``, ``verb.motion``, ...), which is the class.
Glosses that occur more than once are kept once (first seen), so no text is in two splits. The split is
a seeded permutation, written to ``train.csv``/``dev.csv``/``test.csv`` (columns ``text,label``) with
``labels.txt`` (one label a line, in id order) beside them.

Run: ``make wordnet`` (or ``python -m bertrt.train.wordnet --out out/wordnet``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")

# WordNet 3.0 lexicographer files, in lex_filenum order (wndb(5WN) / lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
assert len(LEXNAMES) == 45


def read_synsets(wordnet_dir: str | Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """(gloss, lexname) for every synset, in file order (noun, verb, adj, adv)."""
    wordnet_dir = Path(wordnet_dir)
    missing = [p for p in ("data.noun", "data.verb", "data.adj", "data.adv") if not (wordnet_dir / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{wordnet_dir}: missing {', '.join(missing)}; install Debian's wordnet-base "
            "(`apt-get install -y --no-install-recommends wordnet-base`, or `make wordnet`)"
        )
    rows = []
    for part in ("noun", "verb", "adj", "adv"):
        path = wordnet_dir / f"data.{part}"
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.startswith("  "):  # the license header
                    continue
                head, sep, gloss = line.partition(" | ")
                fields = head.split()
                if not sep or len(fields) < 4:
                    raise ValueError(f"{path}:{line_number}: not a synset line")
                lex_filenum = int(fields[1])
                if not 0 <= lex_filenum < len(LEXNAMES):
                    raise ValueError(f"{path}:{line_number}: lex_filenum {lex_filenum} out of range")
                rows.append((gloss.strip(), LEXNAMES[lex_filenum]))
    return rows


def build_supersense(
    out_dir: str | Path,
    wordnet_dir: str | Path = WORDNET_DIR,
    seed: int = 0,
    dev_size: int = 2000,
    test_size: int = 5000,
) -> dict:
    """Write the split to ``out_dir``; returns a summary (counts per split, number of classes)."""
    seen, rows = set(), []
    for gloss, label in read_synsets(wordnet_dir):
        if gloss and gloss not in seen:
            seen.add(gloss)
            rows.append((gloss, label))
    random.Random(seed).shuffle(rows)
    splits = {
        "test": rows[:test_size],
        "dev": rows[test_size : test_size + dev_size],
        "train": rows[test_size + dev_size :],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with (out_dir / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(split)
    labels = sorted({label for _, label in rows})
    (out_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    summary = {
        "source": str(wordnet_dir),
        "seed": seed,
        "classes": len(labels),
        "sizes": {name: len(split) for name, split in splits.items()},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/wordnet", help="output directory for train/dev/test.csv")
    parser.add_argument("--wordnet-dir", default=str(WORDNET_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=5000)
    args = parser.parse_args(argv)
    summary = build_supersense(args.out, args.wordnet_dir, args.seed, args.dev_size, args.test_size)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Inputs for the bert-base-shape QA LoadGen runs (``make loadgen-results``): a random-weight
``BertForQuestionAnswering`` of bert-base's shape with MiniLM's WordPiece tokenizer, and a SQuAD-format
file whose contexts are real English (consecutive lines of examples/loadgen/pydoc-512.jsonl, about
250-400 tokens each, MLPerf BERT's 384-token window) and whose questions ask for a span of them.

    python benchmarks/loadgen_qa.py --out out/loadgen-qa      # prints the model dir and dataset path

Performance mode only: with random weights the answers are meaningless (accuracy mode is checked on a
trained model in tests/test_loadgen.py)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import torch
import transformers
from bertrt.model.loader import default_model_dir

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def qa_checkpoint(target: Path, seed: int = 0) -> Path:
    """target/: bert-base shape (hidden 768, 12 layers, 12 heads), QA head, random weights (seeded)."""
    if (target / "model.safetensors").exists():
        return target
    torch.manual_seed(seed)
    config = transformers.BertConfig(architectures=["BertForQuestionAnswering"])
    model = transformers.BertForQuestionAnswering(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (default_model_dir() / name).exists():
            shutil.copy(default_model_dir() / name, target / name)
    return target


def squad_file(target: Path, contexts: int = 128, seed: int = 0) -> Path:
    """SQuAD v1.1 JSON: ``contexts`` paragraphs of 5 consecutive lines, two questions each."""
    lines = [json.loads(x)["text"] for x in (ROOT / "examples/loadgen/pydoc-512.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    paragraphs = []
    for n in range(contexts):
        start = (n * 4) % (len(lines) - 5)
        context = " ".join(lines[start:start + 5])
        qas = []
        for q in range(2):
            words = context.split()
            at = rng.randrange(0, max(1, len(words) - 4))
            answer = " ".join(words[at:at + 3])
            qas.append({"id": f"{n}-{q}", "question": f"What follows the words '{' '.join(words[max(0, at - 3):at])}'?",
                        "answers": [{"text": answer, "answer_start": context.find(answer)}]})
        paragraphs.append({"context": context, "qas": qas})
    target.write_text(json.dumps({"version": "1.1", "data": [{"title": "pydoc", "paragraphs": paragraphs}]}))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/loadgen-qa")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(qa_checkpoint(out / "bert-base-qa"), squad_file(out / "pydoc-squad.json"))


if __name__ == "__main__":
    main()

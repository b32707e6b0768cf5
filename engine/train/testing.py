"""Tiny models and data for the fine-tuning and distillation tests and for trying the commands (a few
seconds on one core): a word-level vocabulary, a random BertModel with sentence-transformers pooling
files, and labelled CSV/JSONL rows whose labels follow from their words."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer

WORDS = {
    "animal": "dog cat horse cow sheep goat lion tiger wolf bear fox deer".split(),
    "food": "bread cheese apple rice soup bean salt sugar honey milk egg meat".split(),
    "tool": "hammer saw drill knife axe spade rake chisel wrench file pliers lever".split(),
}
FILLER = "the a of and with is was very small large old new red".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_model(directory: Path, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """A random BertModel with a word-level vocabulary of the test words, saved HF-style, plus the
    sentence-transformers pooling files (mean pooling, normalized) so it also serves as an embedder."""
    from transformers import BertConfig, BertModel  # optional dependency (training, tests)

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted({w for words in WORDS.values() for w in words} | set(FILLER))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True).save(str(directory / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 160}))
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=160, hidden_dropout_prob=0.1)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(directory))
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return directory


def sentence(rng: random.Random, label: str) -> str:
    words = [rng.choice(WORDS[label]) for _ in range(rng.randint(2, 4))] + rng.sample(FILLER, rng.randint(1, 4))
    rng.shuffle(words)
    return " ".join(words)


def write_sequence_csv(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            label = rng.choice(sorted(WORDS))
            writer.writerow([sentence(rng, label), label])
    return path


def write_token_jsonl(path: Path, rows: int, seed: int = 0) -> Path:
    """Tags: the class of each topic word, O for filler words."""
    rng = random.Random(seed)
    tag_of = {w: label.upper() for label, words in WORDS.items() for w in words}
    with path.open("w") as handle:
        for _ in range(rows):
            tokens = sentence(rng, rng.choice(sorted(WORDS))).split() + [rng.choice(WORDS[rng.choice(sorted(WORDS))])]
            handle.write(json.dumps({"tokens": tokens, "tags": [tag_of.get(t, "O") for t in tokens]}) + "\n")
    return path


def write_qa_squad(path: Path, rows: int, seed: int = 0) -> Path:
    """SQuAD-format JSON in the tiny vocabulary: each context says what three animals were like
    ("the dog was red and the cat was old and ..."), the question names one animal, the answer is
    its adjective (so a model must find the animal in the context)."""
    rng = random.Random(seed)
    adjectives = "small large old new red".split()
    paragraphs = []
    for i in range(rows):
        animals = rng.sample(WORDS["animal"], 3)
        described = [rng.choice(adjectives) for _ in animals]
        clauses = [f"the {a} was {d}" for a, d in zip(animals, described)]
        context = " and ".join(clauses)
        asked = rng.randrange(3)
        start = context.index(clauses[asked]) + len(f"the {animals[asked]} was ")
        qa = {"id": str(i), "question": f"the {animals[asked]}",
              "answers": [{"text": described[asked], "answer_start": start}]}
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(json.dumps({"version": "tiny", "data": [{"title": "animals", "paragraphs": paragraphs}]}))
    return path

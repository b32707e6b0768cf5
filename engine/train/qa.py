"""Extractive question answering fine-tuning (``bertrt finetune --task qa``).

Data: SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}) or JSON lines with "question", "context" and "answers" (a list of
{"text", "answer_start"}, or the datasets form {"text": [...], "answer_start": [...]}).
Contexts longer than max_length are cut into windows overlapping by doc_stride tokens; a window
without the answer learns to point at [CLS]. Evaluation: SQuAD exact match and token F1 of the
best span over an example's windows (bertrt.tasks.best_spans, the pipeline's decoding).
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tasks import best_spans
from .checkpoint import load_checkpoint
from .data import DataError, EncodedExample, collate
from .loop import setup_determinism, train
from .models import load_model, load_tokenizer, save_model


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start); empty: unanswerable
    source: str


def _answers(raw, source: str) -> list[tuple[str, int]]:
    if isinstance(raw, dict):  # datasets' columnar form
        raw = [{"text": t, "answer_start": s} for t, s in zip(raw.get("text", []), raw.get("answer_start", []))]
    if not isinstance(raw, list):
        raise DataError(f"{source}: 'answers' must be a list of {{text, answer_start}} objects")
    out = []
    for answer in raw:
        if not (isinstance(answer, dict) and isinstance(answer.get("text"), str)
                and isinstance(answer.get("answer_start"), int)):
            raise DataError(f"{source}: each answer needs a string 'text' and an integer 'answer_start'")
        out.append((answer["text"], answer["answer_start"]))
    return out


def load_qa_data(path: str | Path) -> list[QaExample]:
    """Read SQuAD JSON or JSONL; DataError naming the file and line/entry at fault."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, dict]] = []
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{") and '"data"' in text[:2000]:
        try:
            squad = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
        for article in squad.get("data", []):
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    rows.append((f"{path}:{qa.get('id', '?')}", {**qa, "context": paragraph.get("context")}))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    examples = []
    for index, (source, row) in enumerate(rows):
        for name in ("question", "context"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError(f"{source}: missing or empty '{name}'")
        answers = _answers(row.get("answers", []), source)
        for answer, start in answers:
            if row["context"][start:start + len(answer)] != answer:
                raise DataError(f"{source}: answer {answer!r} is not at character {start} of the context")
        examples.append(QaExample(str(row.get("id", index)), row["question"], row["context"], answers, source))
    if not examples:
        raise DataError(f"{path}: the file has no questions")
    return examples


@dataclass
class QaFeature:
    """One window: the encoded example (labels = (start token, end token)), its example's index,
    each token's character offsets into the context (None outside it)."""

    encoded: EncodedExample
    example: int
    offsets: list[tuple[int, int] | None]


def encode_qa(examples: list[QaExample], tokenizer, max_length: int, doc_stride: int) -> list[QaFeature]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("question answering needs a fast tokenizer (tokenizer.json) for character offsets")
    if doc_stride >= max_length // 2:
        raise ValueError(f"--doc-stride {doc_stride} must be under half of --max-length {max_length}")
    encoded = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                        max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=False)
    features = []
    for row, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        example = examples[example_index]
        sequence_ids = encoded.sequence_ids(row)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][row], sequence_ids)]
        start_token = end_token = 0  # [CLS]: the answer is not in this window
        if example.answers:
            answer, char_start = example.answers[0]
            char_end = char_start + len(answer)
            inside = [i for i, o in enumerate(offsets) if o is not None]
            if inside and offsets[inside[0]][0] <= char_start and offsets[inside[-1]][1] >= char_end:
                start_token = next(i for i in inside if offsets[i][1] > char_start)
                end_token = next(i for i in reversed(inside) if offsets[i][0] < char_end)
        types = encoded["token_type_ids"][row] if "token_type_ids" in encoded else [0] * len(sequence_ids)
        features.append(QaFeature(EncodedExample(encoded["input_ids"][row], types, (start_token, end_token)),
                                  example_index, offsets))
    return features


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if not predicted or not gold:
        return float(predicted == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def predicted_answers(examples: list[QaExample], features: list[QaFeature], logits, max_answer_length: int = 30):
    """logits[i]: (len_i, 2) start/end logits of features[i] -> the best answer text per example."""
    best: dict[int, tuple[float, str]] = {}
    for feature, row in zip(features, logits):
        row = np.asarray(row, dtype=np.float64)
        mask = np.array([o is not None for o in feature.offsets])
        for s, e, score in best_spans(row[:, 0], row[:, 1], mask, max_answer_length, 1):
            text = examples[feature.example].context[feature.offsets[s][0]:feature.offsets[e][1]]
            if feature.example not in best or score > best[feature.example][0]:
                best[feature.example] = (score, text)
    return [best.get(i, (0.0, ""))[1] for i in range(len(examples))]


def exact_match_and_f1(examples: list[QaExample], predictions: list[str]) -> dict:
    """SQuAD EM and F1 (in %), each the max over an example's gold answers, averaged over examples."""
    em = f1 = 0.0
    for example, prediction in zip(examples, predictions):
        golds = [a for a, _ in example.answers] or [""]
        em += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(f1_score(prediction, g) for g in golds)
    n = max(1, len(examples))
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def qa_logits(model, features: list[QaFeature], batch_size: int = 32) -> list:
    """(len_i, 2) start/end logits per feature, from a transformers *ForQuestionAnswering model."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunk = [f.encoded for f in features[start:start + batch_size]]
            batch = collate(chunk)
            batch.pop("labels", None)
            result = model(**batch)
            logits = torch.stack([result.start_logits, result.end_logits], -1).float()
            out.extend(logits[i, :len(e.input_ids)].numpy() for i, e in enumerate(chunk))
    return out


def evaluate(model, examples: list[QaExample], tokenizer, max_length: int, doc_stride: int) -> dict:
    """SQuAD EM/F1 (%) of ``model`` on ``examples``."""
    features = encode_qa(examples, tokenizer, max_length, doc_stride)
    return exact_match_and_f1(examples, predicted_answers(examples, features, qa_logits(model, features)))


def finetune_qa(config) -> dict:
    """``finetune`` for task "qa" (config: train.finetune.FinetuneConfig): train on the windows of
    config.train_file, save the model, and report EM/F1 on config.eval_file before and after."""
    out_dir = Path(config.train.out_dir)
    tokenizer = load_tokenizer(config.model_dir)
    train_examples = [] if config.export_checkpoint else load_qa_data(config.train_file)
    features = encode_qa(train_examples, tokenizer, config.max_length, config.doc_stride) if train_examples else []
    eval_examples = load_qa_data(config.eval_file) if config.eval_file else None
    setup_determinism(config.train.seed, config.train.threads)
    model = load_model(config.model_dir, "qa")
    results: dict = {"task": "qa", "train_rows": len(train_examples) or None, "train_windows": len(features) or None}
    if eval_examples is not None:
        results["eval_before"] = evaluate(model, eval_examples, tokenizer, config.max_length, config.doc_stride)

    def loss_fn(batch):
        start, end = batch.pop("labels").unbind(1)
        return model(**batch, start_positions=start, end_positions=end).loss, {}

    if config.export_checkpoint:
        state = load_checkpoint(out_dir)
        if state is None:
            raise ValueError(f"{out_dir}: no checkpoint to export")
        model.load_state_dict(state["model"])
        trained = {"total_steps": state["step"], "history": state["history"]}
    else:
        trained = train(model, loss_fn, [f.encoded for f in features], config.train,
                        pad_id=tokenizer.pad_token_id or 0)
    model.config.architectures = [type(model).__name__]
    save_model(model, tokenizer, config.model_dir, out_dir, "qa")
    recent = trained["history"][-50:]
    results.update(steps=trained["total_steps"], final_loss=sum(h["loss"] for h in recent) / max(1, len(recent)))
    if eval_examples is not None:
        results["eval_file"] = config.eval_file
        results.update(evaluate(model, eval_examples, tokenizer, config.max_length, config.doc_stride))
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results

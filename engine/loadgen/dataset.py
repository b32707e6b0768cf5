"""Datasets for the query sample library, checked before LoadGen starts.

embed / classify: JSON lines, one object per line with a string ``text`` (and, for classify accuracy,
a ``label``: the label's name or its index). qa: SQuAD-format JSON
(``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text"}]}]}]}]}``);
one sample is one question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

TASKS = ("embed", "classify", "qa")


@dataclass
class Dataset:
    """Samples of one task. texts: embed/classify inputs; questions/contexts/answers: qa (answers[i]
    are the gold answer texts of question i); labels: classify gold labels (name or index) or None."""

    task: str
    path: Path
    texts: list[str] = field(default_factory=list)
    labels: list | None = None
    ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions) if self.task == "qa" else len(self.texts)


def load_dataset(path: str | Path, task: str) -> Dataset:
    """Read and validate ``path`` for ``task``; raises InputError naming the file and the problem."""
    if task not in TASKS:
        raise InputError(f"loadgen task must be one of {TASKS}, got {task!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"dataset file {path} cannot be read as UTF-8 text: {exc}") from None
    dataset = _squad(path, text) if task == "qa" else _jsonl(path, text, task)
    if len(dataset) == 0:
        raise InputError(f"dataset file {path} has no samples")
    return dataset


def _jsonl(path: Path, text: str, task: str) -> Dataset:
    dataset = Dataset(task, path)
    labels = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise InputError(f"{path}:{number}: each line must be a JSON object with a non-empty string 'text'")
        dataset.texts.append(record["text"])
        labels.append(record.get("label"))
    if any(label is not None for label in labels):
        if any(label is None for label in labels):
            raise InputError(f"{path}: some lines have a 'label' and some do not")
        dataset.labels = labels
    return dataset


def _squad(path: Path, text: str) -> Dataset:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON (qa needs a SQuAD-format file): {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise InputError(f"{path}: not SQuAD format: the top level needs a 'data' list")
    dataset = Dataset("qa", path)
    for article in document["data"]:
        for paragraph in (article or {}).get("paragraphs", []) if isinstance(article, dict) else []:
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise InputError(f"{path}: a paragraph without a non-empty string 'context'")
            for qa in paragraph.get("qas", []):
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise InputError(f"{path}: a question entry without a non-empty string 'question'")
                answers = [a["text"] for a in qa.get("answers", []) if isinstance(a, dict) and
                           isinstance(a.get("text"), str)]
                dataset.ids.append(str(qa.get("id", len(dataset.ids))))
                dataset.questions.append(question)
                dataset.contexts.append(context)
                dataset.answers.append(answers)
    return dataset

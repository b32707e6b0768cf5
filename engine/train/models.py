"""Loading, saving and running the transformers models used for training.

A model directory is Hugging Face-format: ``config.json`` + ``model.safetensors`` + tokenizer files, and
for sentence-embedding models also the sentence-transformers files (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``) that say how tokens are pooled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import ModelLoadError
from ..model.heads import PoolingConfig, pool_padded
from ..model.loader import default_model_dir as bundled_model_dir
from ..model.loader import read_pooling
from ..model.validate import describe_load_error
from .data import EncodedExample, collate

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
)

TASKS = ("sequence", "token", "embedding")


def default_model_dir() -> str:
    """The pretrained checkpoint the project ships: sentence-transformers/all-MiniLM-L6-v2."""
    return str(bundled_model_dir())


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    return json.loads(path.read_text())


def detect_task(model_dir: str | Path) -> str:
    """'sequence', 'token', 'qa' or 'embedding', from the architecture the directory was saved with."""
    architectures = read_config(model_dir).get("architectures") or []
    name = architectures[0] if architectures else ""
    if name.endswith("ForSequenceClassification"):
        return "sequence"
    if name.endswith("ForTokenClassification"):
        return "token"
    if name.endswith("ForQuestionAnswering"):
        return "qa"
    if (Path(model_dir) / "modules.json").is_file() or name.endswith("Model"):
        return "embedding"
    raise ValueError(f"{model_dir}: cannot tell the task from architectures={architectures}; pass --task")


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer  # optional dependency (training)

    with _load_errors(model_dir, "tokenizer"):
        return AutoTokenizer.from_pretrained(str(model_dir))


def load_model(model_dir: str | Path, task: str, **config_overrides):
    """The transformers model for ``task``, with eager attention so attention probabilities are returned."""
    # optional dependency (training)
    from transformers import (
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    cls = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
           "embedding": AutoModel, "qa": AutoModelForQuestionAnswering}[task]
    with _load_errors(model_dir, "model"):
        return cls.from_pretrained(str(model_dir), attn_implementation="eager", **config_overrides)


@contextmanager
def _load_errors(model_dir, what: str):
    """transformers' failures (a pickle refused by weights_only, a missing file) as one ModelLoadError
    naming the directory, which the commands print without a traceback."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: cannot load the {what}: {describe_load_error(exc)}") from exc


def copy_support_files(source_dir: str | Path, out_dir: str | Path, sentence_transformers: bool = False,
                       hidden_size: int | None = None) -> None:
    """Copy the tokenizer files, and with ``sentence_transformers`` the pooling files (a classifier made
    from an embedding model must not keep them: sentence-transformers would load it as an embedder);
    ``hidden_size`` rewrites the pooling width."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    for name in TOKENIZER_FILES + (SENTENCE_TRANSFORMERS_FILES if sentence_transformers else ()):
        source = source_dir / name
        if source.is_file():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out_dir / name)
    pooling = out_dir / "1_Pooling" / "config.json"
    if hidden_size is not None and pooling.is_file():
        config = json.loads(pooling.read_text())
        config["word_embedding_dimension"] = hidden_size
        pooling.write_text(json.dumps(config, indent=2) + "\n")


def save_model(model, tokenizer, source_dir: str | Path, out_dir: str | Path, task: str) -> None:
    """save_pretrained + the tokenizer files of ``source_dir`` (tokenizer.save_pretrained when the source
    has none) + for 'embedding' the sentence-transformers pooling files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    copy_support_files(source_dir, out_dir, sentence_transformers=task == "embedding",
                       hidden_size=model.config.hidden_size)
    if not (out_dir / "tokenizer_config.json").is_file():
        tokenizer.save_pretrained(str(out_dir))


# ----------------------------------------------------------------------------------------------------
# Pooling for sentence-embedding models


@dataclass(frozen=True)
class Pooling(PoolingConfig):
    """The checkpoint's sentence-transformers pooling (read by ``bertrt.model.loader.read_pooling``),
    applied to padded hidden states before normalization (the losses and ``predict`` normalize)."""

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Pooling:
        config, _, _ = read_pooling(Path(model_dir))
        return cls(config.mode, config.normalize)

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden: (batch, seq, hidden), attention_mask: (batch, seq) -> (batch, hidden), before normalization."""
        return pool_padded(hidden, attention_mask, self, normalize=False)


# ----------------------------------------------------------------------------------------------------
# Batched inference


@torch.inference_mode()
def predict(model, task: str, examples: Sequence[EncodedExample], batch_size: int = 64,
            pooling: Pooling | None = None, progress: str | None = None) -> list[torch.Tensor]:
    """Per example: logits (num_labels,) for 'sequence', (seq, num_labels) for 'token', the pooled
    (normalized when the model's pooling says so) embedding (hidden,) for 'embedding'. Rows are run in
    length order to keep padding small and returned in input order. ``progress``: a tqdm bar's label."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[torch.Tensor | None] = [None] * len(examples)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None,
                      dynamic_ncols=True):
        indices = order[start : start + batch_size]
        batch = collate([examples[i] for i in indices])
        batch.pop("labels", None)
        if task == "embedding":
            hidden = model(**batch).last_hidden_state
            pooled = (pooling or Pooling())(hidden, batch["attention_mask"])
            if pooling is not None and pooling.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            rows = list(pooled)
        else:
            logits = model(**batch).logits
            rows = list(logits)
            if task == "token":
                rows = [row[: len(examples[i].input_ids)] for row, i in zip(rows, indices, strict=True)]
        for row, i in zip(rows, indices, strict=True):
            out[i] = row.float().clone()
    return out


def classification_accuracy(logits: Sequence[torch.Tensor], examples: Sequence[EncodedExample]) -> float | None:
    """Accuracy of argmax over labelled rows (tokens labelled -100 are skipped); None without labels."""
    correct = total = 0
    for row, example in zip(logits, examples, strict=True):
        if example.labels is None:
            continue
        if isinstance(example.labels, list):
            labels = torch.tensor(example.labels)
            keep = labels != -100
            correct += int((row.argmax(-1)[keep] == labels[keep]).sum())
            total += int(keep.sum())
        else:
            correct += int(int(row.argmax(-1)) == example.labels)
            total += 1
    return correct / total if total else None


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

"""Fine-tune a pretrained encoder for sequence or token classification, or extractive QA (train/qa.py).

The output directory is a Hugging Face model (``config.json`` with ``id2label``/``label2id``,
``model.safetensors``, tokenizer files) plus ``checkpoint/`` (resumable state), ``training_log.json``
and ``eval_results.json`` when an evaluation file is given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import load_checkpoint
from .data import Columns, load_examples, read_label_file, read_labels
from .loop import TrainConfig, setup_determinism, train
from .models import classification_accuracy, load_model, load_tokenizer, predict, save_model
from .qa import finetune_qa

log = logging.getLogger("bertrt.train")


@dataclass
class FinetuneConfig:
    model_dir: str
    train_file: str
    task: str = "sequence"  # "sequence" or "token"
    eval_file: str | None = None
    labels_file: str | None = None  # one label a line; default: the sorted labels of the training file
    max_length: int = 128
    columns: Columns = field(default_factory=Columns)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="out/finetune"))
    export_checkpoint: bool = False  # save the model from out_dir/checkpoint (a run stopped early), no training
    doc_stride: int = 32  # qa: tokens shared by consecutive windows of a long context


def finetune(config: FinetuneConfig) -> dict:
    """Train, save the model to ``config.train.out_dir`` and return the evaluation results."""
    if config.task == "qa":
        return finetune_qa(config)
    if config.task not in ("sequence", "token"):
        raise ValueError(f"finetune task must be 'sequence', 'token' or 'qa', got {config.task!r}")
    out_dir = Path(config.train.out_dir)
    tokenizer = load_tokenizer(config.model_dir)
    labels = (read_label_file(config.labels_file) if config.labels_file
              else read_labels(config.task, config.train_file, config.columns))
    label2id = {label: i for i, label in enumerate(labels)}
    train_examples = [] if config.export_checkpoint else load_examples(
        config.task, config.train_file, tokenizer, config.max_length, label2id, config.columns)
    eval_examples = (load_examples(config.task, config.eval_file, tokenizer, config.max_length, label2id,
                                   config.columns) if config.eval_file else None)
    log.info("finetune: %d training rows, %d labels, task %s", len(train_examples), len(labels), config.task)

    # Seed before the head is created so its initial weights are part of the seeded run.

    setup_determinism(config.train.seed, config.train.threads)
    model = load_model(config.model_dir, config.task, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id=label2id)

    def loss_fn(batch):
        return model(**batch).loss, {}

    if config.export_checkpoint:
        state = load_checkpoint(out_dir)
        if state is None:
            raise ValueError(f"{out_dir}: no checkpoint to export")
        model.load_state_dict(state["model"])
        result = {"total_steps": state["step"], "history": state["history"]}
        log.info("exporting the checkpoint of step %d of %d", state["step"], state["fingerprint"]["total_steps"])
    else:
        result = train(model, loss_fn, train_examples, config.train, pad_id=tokenizer.pad_token_id or 0)
    model.config.architectures = [type(model).__name__]
    save_model(model, tokenizer, config.model_dir, out_dir, config.task)

    results = {"task": config.task, "labels": len(labels), "train_rows": len(train_examples) or None,
               "steps": result["total_steps"],
               "final_loss": sum(h["loss"] for h in result["history"][-50:]) / max(1, len(result["history"][-50:]))}
    if eval_examples is not None:
        logits = predict(model, config.task, eval_examples)
        results["eval_file"] = config.eval_file
        results["eval_accuracy"] = classification_accuracy(logits, eval_examples)
        log.info("eval accuracy %.4f on %s", results["eval_accuracy"], config.eval_file)
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results

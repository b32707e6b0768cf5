"""``bertrt tune``: measure the eligible (backend, precision) candidates on this device and store the winner.

For one model, task and device: every candidate from ``policy.tune_candidates`` runs the same
representative batches (shape buckets below). Its outputs are compared with torch in FP32 (the
accuracy gate: mean cosine similarity for embeddings, argmax agreement for logits, >= ``gate``);
its latency is the median of ``repeats`` timed runs after warm-up. The fastest candidate that
passes the gate wins each bucket; the "overall" winner has the best geometric-mean speed-up over
torch FP32 across buckets. Results are stored by ``tune_cache`` (cache_dir()/tune/<device fingerprint>/
<model hash>-<task>.json, with a schema version, the package versions and a checksum): a corrupt or
stale file is re-measured by ``tune`` and ignored (with a log line) by ``lookup``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..batching import PackedBatch, pack
from ..model import load_checkpoint
from . import cache, policy
from .backends import create_runner
from .tune_cache import identity, lookup, result_path, versions

__all__ = ["BUCKETS", "GATE", "agreement", "bucket_for", "lookup", "make_batch", "result_path", "shape_lengths",
           "tune", "versions"]

log = logging.getLogger("bertrt.runtime")

GATE = 0.99
BUCKETS = ("1x128", "8x128", "mixed")


def shape_lengths(bucket: str, max_length: int) -> list[int]:
    """Sequence lengths of a bucket's batch, capped at the model's max length."""
    if bucket == "1x128":
        return [min(128, max_length)]
    if bucket == "8x128":
        return [min(128, max_length)] * 8
    if bucket == "mixed":  # 16 sequences from very short to long, as a real request stream
        top = min(256, max_length)
        return [max(2, round(8 + (top - 8) * i / 15)) for i in range(16)]
    raise ValueError(f"unknown shape bucket {bucket!r}; buckets: {BUCKETS}")


def bucket_for(batch_size: int, max_seqlen: int) -> str:
    """The bucket a real batch falls in (for callers that tune per traffic shape)."""
    if batch_size == 1:
        return "1x128"
    return "8x128" if batch_size <= 8 else "mixed"


def make_batch(bucket: str, config, max_length: int, seed: int = 0) -> PackedBatch:
    """Random token ids (deterministic) between [CLS]=101 and [SEP]=102 for a bucket's lengths."""
    generator = torch.Generator().manual_seed(seed)
    low = 1000 if config.vocab_size > 2000 else 1
    ids, types = [], []
    for length in shape_lengths(bucket, max_length):
        body = torch.randint(low, config.vocab_size, (max(0, length - 2),), generator=generator).tolist()
        seq = ([101] + body + [102])[:length] if config.vocab_size > 102 else body + [1] * (length - len(body))
        ids.append(seq)
        types.append([0] * len(seq))
    return pack(ids, types, list(range(len(ids))))


def agreement(output: torch.Tensor, reference: torch.Tensor, task: str) -> float:
    """embed: mean cosine similarity of rows; classify/ner/qa: share of rows with the same argmax
    (qa: start and end columns separately)."""
    output, reference = output.float().cpu(), reference.float().cpu()
    if task == "embed":
        return float(torch.nn.functional.cosine_similarity(output, reference, dim=-1).mean())
    if task == "qa":
        same = (output.argmax(0) == reference.argmax(0)).float()
        return float(same.mean())
    return float((output.argmax(-1) == reference.argmax(-1)).float().mean())


def _timed(runner, batch: PackedBatch, task: str, repeats: int, warmup: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of ``runner.run`` (result copied to the host, as Engine does)."""
    out = None
    for _ in range(warmup):
        out = runner.run(batch, task).float().cpu()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = runner.run(batch, task).float().cpu()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0, out


def tune(model_dir: str | Path | None = None, device: str = "auto", task: str | None = None,
         candidates: list[tuple[str, str]] | None = None, buckets: tuple[str, ...] = BUCKETS, gate: float = GATE,
         repeats: int = 10, warmup: int = 2, force: bool = False, progress: bool | None = None) -> dict:
    """Measure, gate, pick and store; returns the stored record. A valid stored record for the same
    device, model, task and versions that covers the candidates and buckets asked for is returned
    as is (with "cached": True) unless ``force``; a corrupt or stale one is re-measured."""
    device = policy.choose_device(device)
    model_dir = policy._model_dir(model_dir)
    fingerprint, digest, task, expect = identity(model_dir, device, task)
    path = result_path(fingerprint, digest, task)
    if not force:
        record = cache.read_record(path, expect)
        wanted = None if candidates is None else {f"{b}/{p}" for b, p in candidates}
        if (record is not None and set(record.get("buckets", [])) >= set(buckets)
                and (wanted is None or wanted <= set(record.get("results", {})))):
            log.info("tune: using the stored result %s", path)
            return {**record, "cached": True}
    skipped: list[str] = []
    if candidates is None:
        candidates, skipped = policy.tune_candidates(device)
    # torch float32 runs first: its outputs are the reference of the accuracy gate
    candidates = [("torch", "float32"), *(c for c in candidates if c != ("torch", "float32"))]

    reference_ckpt = load_checkpoint(model_dir, torch.float32, device)
    max_length = reference_ckpt.tokenizer.max_length
    batches = {b: make_batch(b, reference_ckpt.config, max_length) for b in buckets}
    results: dict[str, dict] = {}
    bar = tqdm(total=len(candidates) * len(buckets), desc="bertrt tune", unit="run", disable=progress is False)
    references: dict[str, torch.Tensor] = {}
    for name, precision in candidates:
        key = f"{name}/{precision}"
        bar.set_postfix_str(key)
        entry: dict = {"backend": name, "precision": precision, "ms": {}, "agreement": {}}
        checkpoint = runner = None
        try:
            if (name, precision) == ("torch", "float32"):
                checkpoint = reference_ckpt
            else:
                choice = policy.Choice(name, precision, "tune", "explicit", [(name, precision)])
                dtype, place = policy.checkpoint_placement(choice, device)
                checkpoint = load_checkpoint(model_dir, dtype, place)
            runner, _, _ = create_runner(checkpoint, device, [(name, precision)], explicit=True)
            for bucket in buckets:
                ms, out = _timed(runner, batches[bucket], task, repeats, warmup)
                if (name, precision) == ("torch", "float32"):
                    references[bucket] = out
                entry["ms"][bucket] = round(ms, 4)
                entry["agreement"][bucket] = round(agreement(out, references[bucket], task), 6)
                bar.update(1)
            entry["passed"] = all(v >= gate for v in entry["agreement"].values())
        except Exception as exc:  # one failing candidate must not end the tune
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["passed"] = False
            bar.update(len(buckets) - len(entry["ms"]))
            log.warning("tune: %s failed: %s", key, entry["error"])
        results[key] = entry
        del checkpoint, runner  # free one candidate's engine before the next builds its own
    bar.close()
    record = {**expect, "device": device, "model_dir": str(model_dir), "gate": gate, "buckets": list(buckets),
              "repeats": repeats, "skipped": skipped, "results": results,
              "winners": _winners(results, buckets, gate), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}
    return cache.write_record(path, record)


def _winners(results: dict[str, dict], buckets, gate: float) -> dict[str, dict]:
    passed = {k: r for k, r in results.items() if r.get("passed")}
    base = results["torch/float32"]["ms"]
    winners = {}
    for bucket in buckets:
        key = min(passed, key=lambda k: passed[k]["ms"][bucket])
        r = passed[key]
        winners[bucket] = {"backend": r["backend"], "precision": r["precision"], "ms": r["ms"][bucket],
                           "detail": f"{key} {r['ms'][bucket]:.2f} ms on {bucket} vs torch/float32 "
                                     f"{base[bucket]:.2f} ms; agreement {r['agreement'][bucket]:.4f} >= {gate}"}

    def speedup(k: str) -> float:
        return math.exp(statistics.mean(math.log(base[b] / passed[k]["ms"][b]) for b in buckets))

    best = max(passed, key=speedup)
    r = passed[best]
    winners["overall"] = {"backend": r["backend"], "precision": r["precision"], "speedup": round(speedup(best), 4),
                          "detail": f"{best} is {speedup(best):.2f}x torch/float32 (geometric mean over "
                                    f"{', '.join(buckets)}), agreement >= {gate}"}
    return winners

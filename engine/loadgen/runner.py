"""One LoadGen run: settings from a ``RunConfig`` (checked before LoadGen starts), a warm-up that also
measures the SUT, the QSL over the dataset, the run, and its parsed summary (and accuracy).

Short runs use LoadGen's own knobs: ``min_duration_ms`` and ``min_query_count`` (MLPerf's rules ask
for 600 s and thousands of queries; a 2-core machine gets the same VALID/INVALID verdict logic on
shorter runs). Server and MultiStream judge latency at ``latency_percentile`` (MLPerf: 0.99).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import accuracy
from .dataset import Dataset
from .sut import BatchingSUT

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MODES = ("performance", "accuracy")
_SUMMARY_LINE = re.compile(r"^\s*([^:*=][^:]*?)\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class RunConfig:
    scenario: str = "Offline"
    mode: str = "performance"
    min_duration_ms: int = 10_000
    min_query_count: int = 64
    target_qps: float | None = None  # Server; None: 40% of the throughput measured at warm-up
    latency_bound_ms: float = 130.0  # Server (MLPerf BERT's bound)
    latency_percentile: float = 0.99  # Server, MultiStream
    samples_per_query: int = 8  # MultiStream
    batch_size: int = 32
    workers: int = 1
    expected_qps: float | None = None  # Offline; None: 1.5x the warm-up throughput
    performance_sample_count: int = 1024

    def validated(self) -> RunConfig:
        """The config with the scenario's canonical spelling; InputError on anything LoadGen would reject."""
        names = {s.lower(): s for s in SCENARIOS}
        scenario = names.get(str(self.scenario).lower())
        if scenario is None:
            raise InputError(f"unknown scenario {self.scenario!r}; use one of {', '.join(SCENARIOS)}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("target_qps", "expected_qps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"{name.replace('_', '-')} must be > 0, got {value}")
        for name in ("min_duration_ms", "min_query_count", "samples_per_query", "batch_size", "workers",
                     "performance_sample_count"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.latency_bound_ms > 0:
            raise InputError(f"latency bound must be > 0 ms, got {self.latency_bound_ms}")
        if not 0 < self.latency_percentile < 1:
            raise InputError(f"latency percentile must be in (0, 1), got {self.latency_percentile}")
        return dataclasses.replace(self, scenario=scenario)


def warm_up(target, dataset: Dataset, batch_size: int) -> dict:
    """Run the target once (first-call costs), then time one sample (the best of 3) and one batch of
    ``batch_size``. The figures only size LoadGen's query sets, so they err on the fast side."""
    n = len(dataset)
    batch = [i % n for i in range(batch_size)]
    target.run(batch[:2])
    single = []
    for _ in range(3):
        start = time.perf_counter()
        target.run([0])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    target.run(batch)
    batch_seconds = time.perf_counter() - start
    return {"single_latency_ms": 1e3 * min(single), "batch_size": batch_size,
            "throughput_samples_per_s": batch_size / batch_seconds}


def early_stopping_minimum(config: RunConfig) -> int:
    """Fewest queries for which LoadGen's early stopping can pass at ``latency_percentile`` even with every
    query under the bound: Server needs ceil(log(0.01) / log(p)) (44 at p90, 459 at p99); MultiStream's
    estimator needs 64 up to p90 and 662 at p99 (LoadGen's own messages). Fewer queries make any run
    INVALID, so the count is raised to it."""
    p = config.latency_percentile
    if config.scenario == "Server":
        return math.ceil(math.log(0.01) / math.log(p))
    return 64 if p <= 0.9 else 662


def settings_for(config: RunConfig, calibration: dict):
    import mlperf_loadgen as lg  # optional: the loadgen extra

    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, config.scenario)
    settings.mode = lg.TestMode.AccuracyOnly if config.mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.min_duration_ms = config.min_duration_ms
    settings.min_query_count = config.min_query_count
    throughput = calibration["throughput_samples_per_s"]
    single_ns = int(calibration["single_latency_ms"] * 1e6)
    if config.scenario == "SingleStream":
        # LoadGen pre-generates min_duration / expected latency queries and stops when they run out:
        # too high an estimate ends the run before min_duration (INVALID); too low costs only a
        # longer list (it stops once min_duration and min_query_count are met).
        settings.single_stream_expected_latency_ns = max(1, min(single_ns // 4, 1_000_000))
    elif config.scenario == "MultiStream":
        settings.multi_stream_samples_per_query = config.samples_per_query
        settings.multi_stream_expected_latency_ns = max(1, min(int(0.25e9 * config.samples_per_query / throughput),
                                                               1_000_000))
        settings.min_query_count = max(config.min_query_count, early_stopping_minimum(config))
        settings.multi_stream_target_latency_percentile = config.latency_percentile
    elif config.scenario == "Server":
        settings.server_target_qps = config.target_qps or 0.4 * throughput
        settings.server_target_latency_ns = int(config.latency_bound_ms * 1e6)
        settings.server_target_latency_percentile = config.latency_percentile
        settings.min_query_count = max(config.min_query_count, early_stopping_minimum(config))
    else:
        settings.offline_expected_qps = config.expected_qps or 1.5 * throughput
    return settings


def parse_summary(path: str | Path) -> dict:
    """mlperf_log_summary.txt -> {"result", "values": {line name: number or text}, "parameters": {...}}."""
    values: dict[str, object] = {}
    parameters: dict[str, object] = {}
    current = values
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("Test Parameters Used"):
            current = parameters
        match = _SUMMARY_LINE.match(line)
        if match:
            key, value = match.group(1), match.group(2)
            try:
                current[key] = float(value) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                current[key] = value
    return {"result": values.get("Result is", "UNKNOWN"), "values": values, "parameters": parameters}


def latency_percentiles_ms(summary: dict) -> dict[str, float]:
    out = {}
    for key, value in summary["values"].items():
        match = re.match(r"^(\d+\.\d+) percentile latency \(ns\)$", key)
        if match and isinstance(value, (int, float)):
            out[f"p{float(match.group(1)):g}"] = value / 1e6
    for name in ("Min", "Mean", "Max"):
        value = summary["values"].get(f"{name} latency (ns)")
        if isinstance(value, (int, float)):
            out[name.lower()] = value / 1e6
    return out


def headline(scenario: str, summary: dict) -> dict:
    """The scenario's MLPerf metric: SingleStream p90, MultiStream p99 (per query), Server and Offline samples/s."""
    values = summary["values"]
    if scenario == "Offline":
        return {"samples_per_s": values.get("Samples per second")}
    if scenario == "Server":
        return {"completed_samples_per_s": values.get("Completed samples per second"),
                "target_qps": summary["parameters"].get("target_qps")}
    key = next((k for k in values if re.match(r"^\d+(\.\d+)?th percentile latency \(ns\)$", k)), None)
    return {"percentile_latency_ms": values[key] / 1e6 if key else None, "metric": key,
            "qps": values.get("QPS w/ loadgen overhead")}


def run_loadgen(target, dataset: Dataset, config: RunConfig, out_dir: str | Path, calibration: dict | None = None,
                reference=None, id2label: dict | None = None) -> dict:
    """Run one scenario of ``target`` over ``dataset``; LoadGen's logs go to ``out_dir``.

    reference: (n, hidden) FP32 vectors for embed accuracy. Returns the result record (see report.py).
    """
    import mlperf_loadgen as lg  # optional: the loadgen extra

    config = config.validated()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        calibration = warm_up(target, dataset, config.batch_size)
    settings = settings_for(config, calibration)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(out_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    count = len(dataset)
    qsl = lg.ConstructQSL(count, min(count, config.performance_sample_count), lambda s: None, lambda s: None)
    batch = 1 if config.scenario == "SingleStream" else config.batch_size
    sut = BatchingSUT(target, batch_size=batch, workers=config.workers)
    start = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut.handle, qsl, settings, log_settings)
    finally:
        sut.close()
        lg.DestroyQSL(qsl)
    wall = time.perf_counter() - start
    if sut.error is not None:
        raise sut.error
    summary = parse_summary(out_dir / "mlperf_log_summary.txt")
    record = {"sut": target.name, "scenario": config.scenario, "mode": config.mode, "result": summary["result"],
              "wall_s": wall, "settings": {**dataclasses.asdict(config),
                                           "effective_min_query_count": settings.min_query_count},
              "calibration": calibration,
              "latency_ms": latency_percentiles_ms(summary), "metric": headline(config.scenario, summary),
              "summary": summary["values"], "dataset": {"path": str(dataset.path), "samples": count},
              "out": str(out_dir)}
    if config.mode == "accuracy":
        record["accuracy"] = score(dataset, accuracy.read_accuracy_log(out_dir / "mlperf_log_accuracy.json"),
                                   reference, id2label)
    return record


def score(dataset: Dataset, responses: dict[int, bytes], reference=None, id2label: dict | None = None) -> dict:
    """Accuracy of the logged responses (sample index -> bytes, see sut.py) for the dataset's task."""
    if dataset.task == "qa":
        rows = sorted(responses)
        predictions = [json.loads(responses[i].decode())["answer"] for i in rows]
        return accuracy.squad_scores(predictions, [dataset.answers[i] for i in rows])
    if dataset.task == "classify":
        if dataset.labels is None:
            raise InputError(f"classify accuracy needs a 'label' on every line of {dataset.path}")
        predicted = {i: responses[i].decode() for i in responses}
        return accuracy.classify_accuracy(predicted, dataset.labels, id2label or {})
    if reference is None:
        raise InputError("embed accuracy needs an FP32 reference run (give --model)")
    vectors = {i: np.frombuffer(b, dtype=np.float32) for i, b in responses.items()}
    return accuracy.embed_cosine(vectors, np.asarray(reference))

"""``--find-peak``: the highest Server target QPS whose LoadGen run is VALID.

Starts at 60% of the throughput measured at warm-up, grows by 1.5x while runs are VALID, then
bisects between the best VALID and the lowest INVALID target until they are within ``tolerance``
(relative) or ``max_tries`` runs are spent. Each try is a full LoadGen Server run with its own logs.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from tqdm import tqdm

from ..errors import BertrtError
from .runner import RunConfig, run_loadgen, warm_up

log = logging.getLogger("bertrt.loadgen")


def find_peak(target, dataset, config: RunConfig, out_dir: str | Path, max_tries: int = 6,
              tolerance: float = 0.05, longest_try_s: float = 120.0) -> tuple[dict, list[dict]]:
    """(the best VALID record, every try's record). Its logs are copied to ``out_dir``.

    A target so low that ``min_query_count`` queries take longer than ``longest_try_s`` is not tried:
    the search stops there (a SUT that misses the bound at such a rate misses it on latency alone)."""
    out_dir = Path(out_dir)
    config = dataclasses.replace(config, scenario="Server").validated()
    calibration = warm_up(target, dataset, config.batch_size)
    qps = config.target_qps or 0.6 * calibration["throughput_samples_per_s"]
    best, lowest_invalid, tries = None, None, []
    floor = config.min_query_count / longest_try_s
    for _ in tqdm(range(max_tries), desc="find-peak", unit="run"):
        if qps < floor:
            break
        record = run_loadgen(target, dataset, dataclasses.replace(config, target_qps=qps),
                             out_dir / "peak" / f"qps-{qps:.2f}", calibration)
        record["target_qps"] = qps
        tries.append(record)
        if record["result"] == "VALID":
            best = record if best is None or qps > best["target_qps"] else best
        else:
            lowest_invalid = qps if lowest_invalid is None else min(lowest_invalid, qps)
        low = best["target_qps"] if best else 0.0
        if lowest_invalid is None:
            qps = qps * 1.5
        elif lowest_invalid - low <= tolerance * lowest_invalid:
            break
        else:
            qps = (low + lowest_invalid) / 2 if best else lowest_invalid / 2
    if best is None:  # reported, not raised: the other scenarios of the run still count
        lowest = min((t["target_qps"] for t in tries), default=qps)
        message = (f"no VALID Server run in {len(tries)} tries (lowest target {lowest:.2f} QPS: "
                   f"p{100 * config.latency_percentile:g} latency over the {config.latency_bound_ms:g} ms bound); "
                   f"try a larger --latency-bound-ms")
        log.warning("--find-peak: %s", message)
        if not tries:
            raise BertrtError(f"--find-peak: {message}")
        return {**tries[-1], "peak_qps": None, "peak_error": message, "tries": _brief(tries)}, _brief(tries)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy(Path(best["out"]) / name, out_dir / name)
    best = {**best, "peak_qps": best["target_qps"], "tries": _brief(tries)}
    return best, best["tries"]


def _brief(tries: list[dict]) -> list[dict]:
    return [{"target_qps": t["target_qps"], "result": t["result"], "latency_ms": t["latency_ms"],
             "completed_samples_per_s": t["metric"].get("completed_samples_per_s")} for t in tries]

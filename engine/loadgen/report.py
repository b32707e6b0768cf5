"""The run's JSON (records of every SUT and scenario, with the machine and versions) and a PNG:
latency percentiles per SUT and scenario, the scenario's throughput, and the ``--find-peak`` tries."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from .._version import __version__
from ..runtime import probe

_PERCENTILES = ("p50", "p90", "p95", "p99", "p99.9")


def meta() -> dict:
    cpu = probe.cpu()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpu_model": cpu.model, "isa": cpu.isa, "cores": cpu.cores,
                        "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())},
            "versions": {"bertrt": __version__, "python": platform.python_version(),
                         **{name: probe.package_version(name) for name in
                            ("mlcommons-loadgen", "torch", "onnxruntime")}}}


def write_json(records: list[dict], path: Path, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta(), **(extra or {}), "runs": records}, indent=2, default=str) + "\n")
    return path


def throughput(record: dict) -> float | None:
    metric = record["metric"]
    return metric.get("samples_per_s") or metric.get("completed_samples_per_s") or metric.get("qps")


def plot_png(records: list[dict], path: Path, peak_tries: list[dict] | None = None) -> Path | None:
    """Bars of latency percentiles (ms) and of throughput (samples/s) per SUT x scenario."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is in the bench extra; the JSON has everything
        return None
    panels = 3 if peak_tries else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5))
    labels = [f"{r['sut']}\n{r['scenario']}" + ("" if r["result"] == "VALID" else f" ({r['result']})")
              for r in records]
    width = 0.8 / len(_PERCENTILES)
    for k, name in enumerate(_PERCENTILES):
        values = [r["latency_ms"].get(name, 0.0) for r in records]
        axes[0].bar([i + k * width for i in range(len(records))], values, width, label=name)
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(records))], labels, fontsize=7)
    axes[0].set_ylabel("latency per query (ms)")
    if any(r["latency_ms"].get(name, 0.0) > 0 for r in records for name in _PERCENTILES):
        axes[0].set_yscale("log")  # accuracy runs log no latencies
    axes[0].legend(fontsize=7)
    axes[0].set_title("LoadGen latency percentiles")
    values = [throughput(r) or 0.0 for r in records]
    axes[1].bar(range(len(records)), values, color="tab:green")
    for i, v in enumerate(values):
        axes[1].text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    axes[1].set_xticks(range(len(records)), labels, fontsize=7)
    axes[1].set_ylabel("samples/s (Offline, Server) or queries/s (streams)")
    axes[1].set_title("throughput")
    if peak_tries:
        for valid, color in ((True, "tab:green"), (False, "tab:red")):
            tries = [t for t in peak_tries if (t["result"] == "VALID") == valid]
            axes[2].scatter([t["target_qps"] for t in tries], [t["latency_ms"].get("p99", 0.0) for t in tries],
                            color=color, label="VALID" if valid else "INVALID")
        axes[2].set_xlabel("Server target QPS")
        axes[2].set_ylabel("p99 latency (ms)")
        axes[2].set_title("--find-peak tries")
        axes[2].legend(fontsize=7)
    info = meta()
    fig.suptitle(f"bertrt loadgen, {info['date']} | {info['machine']['cpu_model']} ({info['machine']['isa']}, "
                 f"{info['machine']['torch_threads']} threads) | loadgen {info['versions']['mlcommons-loadgen']}, "
                 f"torch {info['versions']['torch']}, onnxruntime {info['versions']['onnxruntime']}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_lines(records: list[dict]) -> list[str]:
    """One line per record: SUT, scenario, verdict, headline metric, p50/p90/p99."""
    out = []
    for r in records:
        lat = r["latency_ms"]
        tput = throughput(r)
        line = (f"{r['sut']:<28} {r['scenario']:<12} {r['mode']:<11} {r['result']:<8} "
                f"{(f'{tput:.2f}/s' if tput else '-'):>10}  p50 {lat.get('p50', 0):.1f} ms  "
                f"p90 {lat.get('p90', 0):.1f} ms  p99 {lat.get('p99', 0):.1f} ms")
        if "accuracy" in r:
            line += "  " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in r["accuracy"].items())
        out.append(line)
    return out

"""Presenting a bench: a table on the terminal, CSV + JSON files, and a PNG plot stamped with the
CPU (model, ISA, cores, threads) and the versions of torch / ONNX Runtime / OpenVINO / bertrt."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .runner import COLUMNS, BenchResult, Row, _ratios


def header(result: BenchResult) -> str:
    m, v = result.meta["machine"], result.meta["versions"]
    load = m.get("loadavg_start", [0])[0]
    lines = [
        f"bertrt bench: {result.meta['model']} ({result.meta['layers']} layers, hidden {result.meta['hidden']}), "
        f"{result.meta['date']}",
        f"CPU: {m['cpu_model']} | ISA {m['isa']} (native BF16: {'yes' if m['native_bf16'] else 'no'}) | "
        f"{m['cores']} cores, {m['threads']} threads | load avg {load:.1f}",
        "versions: " + ", ".join(f"{k} {v[k]}" for k in ("bertrt", "torch", "transformers", "onnxruntime", "openvino")
                                 if v.get(k)),
        f"reference: {result.meta['reference']} | median/p90 of up to {result.meta['repeats']} runs after "
        f"{result.meta['warmup']} warm-up",
    ]
    return "\n".join(lines)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(result: BenchResult) -> list[list[str]]:
    out = []
    for r in result.rows:
        out.append([r.shape, r.engine, r.precision, _fmt(r.median_ms), _fmt(r.p90_ms), _fmt(r.cpu_ms), str(r.repeats),
                    _fmt(r.tokens_per_s, 0), _fmt(r.vs_best_peer) + ("x" if r.vs_best_peer is not None else ""),
                    _fmt(r.cpu_vs_best_peer) + ("x" if r.cpu_vs_best_peer is not None else ""),
                    _fmt(r.fidelity_mean, 5), _fmt(r.fidelity_min, 5)])
    return out


TABLE_HEADINGS = ["shape", "engine", "precision", "median ms", "p90 ms", "cpu ms", "n", "tokens/s", "vs best peer",
                  "cpu vs best",
                  "cos mean", "cos min"]


def print_table(result: BenchResult, file=None) -> None:
    file = file or sys.stdout
    try:
        from rich.console import Console  # optional dependency (bertrt[bench])
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None:
        console = Console(file=file, width=170)
        table = Table(title=escape(header(result)), title_justify="left")
        for heading in TABLE_HEADINGS:
            table.add_column(heading, justify="left" if heading in ("shape", "engine", "precision") else "right")
        previous = None
        for row, r in zip(table_rows(result), result.rows):
            if previous is not None and r.shape != previous:
                table.add_section()
            previous = r.shape
            # escaped: an engine named "bertrt[kernels=torch]" is not rich markup
            table.add_row(*(escape(cell) for cell in row), style="bold" if not r.peer else None)
        console.print(table)
    else:
        print(header(result), file=file)
        print(format_plain(result), file=file)
    for label, reason in result.meta.get("skipped", {}).items():
        print(f"skipped {label}: {reason}", file=file)


def format_plain(result: BenchResult) -> str:
    rows = [TABLE_HEADINGS, *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADINGS))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def write_files(result: BenchResult, out_dir: Path, stem: str | None = None, plot: bool = True) -> dict[str, Path]:
    """bench-<model>.csv / .json / .png in out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"bench-{result.meta['model']}"
    paths = {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json"}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for r in result.rows:
            writer.writerow([_csv(getattr(r, c)) for c in COLUMNS])
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2))
    if plot:
        try:
            paths["png"] = plot_png(result, out_dir / f"{stem}.png")
        except ImportError as exc:
            print(f"bertrt bench: no plot ({exc.name} is not installed)", file=sys.stderr)
    return paths


def load_json(path: Path) -> BenchResult:
    """A BenchResult back from its JSON (to re-print or re-plot a run)."""
    data = json.loads(Path(path).read_text())
    fields = set(Row.__dataclass_fields__)
    rows = [Row(**{k: v for k, v in row.items() if k in fields}) for row in data["rows"]]
    _ratios(rows)
    return BenchResult(rows, data["meta"])


def _csv(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _label(r: Row) -> str:
    return f"{r.engine} {r.precision}"


def plot_png(result: BenchResult, path: Path) -> Path:
    """One panel per shape: horizontal bars of median latency (p90 as the whisker), ours highlighted."""
    import matplotlib  # optional dependency (bertrt[bench])

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in result.rows))
    labels = list(dict.fromkeys(_label(r) for r in result.rows))
    height = 1.6 + 0.4 * len(labels)
    fig, axes = plt.subplots(1, max(len(shapes), 1), figsize=(5.6 * max(len(shapes), 1), height), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rows = {_label(r): r for r in result.rows if r.shape == shape}
        names = [n for n in labels if n in rows]
        medians = [rows[n].median_ms for n in names]
        whiskers = [max(rows[n].p90_ms - rows[n].median_ms, 0.0) for n in names]
        colors = ["#d62728" if not rows[n].peer else "#7f7f7f" for n in names]
        ax.barh(range(len(names)), medians, xerr=[[0] * len(names), whiskers], color=colors, capsize=2)
        ax.scatter([rows[n].cpu_ms for n in names], range(len(names)), marker="|", color="black", s=60, zorder=3,
                   label="CPU time per call")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{shape}", fontsize=10)
        ax.set_xlabel("median latency, ms (whisker: p90; |: CPU time)", fontsize=8)
        for i, n in enumerate(names):
            r = rows[n]
            text = f" {r.median_ms:.1f}"
            if r.vs_best_peer is not None:
                text += f" ({r.vs_best_peer:.2f}x)"
            ax.text(r.median_ms, i, text, va="center", fontsize=7)
        if medians and max(medians) / max(min(medians), 1e-9) > 30:
            ax.set_xscale("log")
            ax.set_xlabel("median latency, ms, log scale (whisker: p90; |: CPU time)", fontsize=8)
        ax.margins(x=0.5)
    fig.suptitle(header(result), fontsize=8, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.62 / height))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

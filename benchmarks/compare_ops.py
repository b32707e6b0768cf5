"""Print the op benchmarks that got slower than the saved baseline (``make bench-ops``).

    python benchmarks/compare_ops.py benchmarks/baseline bench-results/ops.json --tolerance 0.15

The baseline is the newest pytest-benchmark JSON under the given folder (``make bench-baseline`` saves
one per machine type under ``benchmarks/baseline/<machine>/``). Rows are matched by test name; a row
regresses when its median exceeds the baseline's by more than ``tolerance`` (relative). Timings from
another machine, or from a busy one, differ for reasons that are not regressions: the header says
which machine and load each side had. ``--fail`` makes regressions an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def newest_json(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.rglob("*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no baseline JSON under {path}; run `make bench-baseline` first")
    return found[-1]


def medians(document: dict) -> dict[str, float]:
    return {b["fullname"]: b["stats"]["median"] for b in document["benchmarks"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", help="a pytest-benchmark JSON, or a folder of them (the newest is used)")
    parser.add_argument("current", help="this run's --benchmark-json")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--fail", action="store_true", help="exit 1 when something regressed")
    args = parser.parse_args(argv)
    base_path = newest_json(Path(args.baseline))
    base, now = json.loads(base_path.read_text()), json.loads(Path(args.current).read_text())
    for label, doc, path in (("baseline", base, base_path), ("current", now, Path(args.current))):
        info = doc.get("machine_info", {})
        print(f"{label}: {path} | {doc.get('datetime', '?')} | {info.get('cpu', {}).get('brand_raw', '?')} | "
              f"{info.get('python_implementation', '')} {info.get('python_version', '')} | "
              f"torch threads {info.get('torch_threads', '?')}")
    old, new = medians(base), medians(now)
    common = sorted(set(old) & set(new))
    ratios = {name: new[name] / old[name] for name in common if old[name] > 0}
    slower = sorted((r, n) for n, r in ratios.items() if r > 1 + args.tolerance)
    faster = sorted((r, n) for n, r in ratios.items() if r < 1 / (1 + args.tolerance))
    print(f"{len(common)} benchmarks in both runs; {len(set(new) - set(old))} new, {len(set(old) - set(new))} gone")
    print(f"regressions (median more than {args.tolerance:.0%} slower than the baseline): {len(slower)}")
    for ratio, name in reversed(slower):
        print(f"  {ratio:6.2f}x  {old[name] * 1e3:9.3f} ms -> {new[name] * 1e3:9.3f} ms  {name}")
    print(f"faster than the baseline by more than {args.tolerance:.0%}: {len(faster)}")
    for ratio, name in faster:
        print(f"  {ratio:6.2f}x  {old[name] * 1e3:9.3f} ms -> {new[name] * 1e3:9.3f} ms  {name}")
    return 1 if args.fail and slower else 0


if __name__ == "__main__":
    sys.exit(main())

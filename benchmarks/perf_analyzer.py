"""Triton's perf_analyzer (the ``perf-analyzer`` PyPI package's binary) against ``bertrt serve``, over
KServe v2 HTTP and gRPC, with a concurrency sweep and input data made from real text.

    python benchmarks/perf_analyzer.py --concurrency 1 2 4 8 --out docs/results     # make perf-analyzer

Steps: get the binary (see ``perf_analyzer_command``), start ``bertrt serve`` on a free loopback port,
write perf_analyzer's ``--input-data`` JSON from the bundled texts (examples/loadgen/pydoc-512.jsonl: one
text per request), run perf_analyzer once per concurrency (``-f`` CSV), and merge the CSVs into
perf_analyzer.csv plus perf_analyzer.png (throughput and p50/p90/p99 latency against concurrency).
gRPC goes to ``bertrt serve --grpc-port``.

The wheel's binary is built for glibc 2.38 / GCC 13 (manylinux_2_38). On an older system (Debian 12
has glibc 2.36), it runs under Debian 13's ``libc6``, ``libstdc++6`` and ``libgcc-s1``: their .deb files
are fetched with apt (a private sources list and cache under the tool folder; the system's apt state
is not touched), unpacked there, and the binary is started through that glibc's loader with
``--library-path``, so nothing on the system changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "examples" / "loadgen" / "pydoc-512.jsonl"
WHEEL = "perf-analyzer==2.60.0"
DEBIAN_SUITE = "trixie"
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def _binary_from_wheel(tool_dir: Path) -> Path:
    binary = tool_dir / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    if binary.exists():
        return binary
    download = tool_dir / "download"
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
          "--platform", f"manylinux_2_38_{platform.machine()}", "-d", str(download), WHEEL])
    wheel = next(download.glob("perf_analyzer-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tool_dir / "wheel")
    binary.chmod(0o755)
    return binary


def _missing_libraries(command: list[str]) -> str:
    """The loader's complaint ('version GLIBC_2.38 not found', ...) or '' when the binary starts."""
    done = subprocess.run(command, capture_output=True, text=True)
    text = done.stdout + done.stderr
    return text if "not found" in text and ("GLIBC" in text or ".so" in text) else ""


def _debian_runtime(tool_dir: Path) -> Path:
    """Debian 13's glibc + libstdc++ unpacked under tool_dir/sysroot (fetched once with apt)."""
    sysroot = tool_dir / "sysroot"
    loader = sysroot / "usr" / "lib" / "x86_64-linux-gnu" / "ld-linux-x86-64.so.2"
    if loader.exists():
        return sysroot
    apt = tool_dir / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                      f"http://deb.debian.org/debian {DEBIAN_SUITE} main\n")
    options = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
               f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
               "-oDir::State::status=/dev/null", "-oAPT::Sandbox::User=root", "-qq"]
    _run(["apt-get", *options, "update"])
    _run(["apt-get", *options, "download", *RUNTIME_PACKAGES], cwd=apt / "debs")
    for deb in sorted((apt / "debs").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)])
    return sysroot


def perf_analyzer_command(tool_dir: Path) -> list[str]:
    """How to start perf_analyzer here: on PATH, else the wheel's binary, under Debian 13's glibc if needed."""
    found = shutil.which("perf_analyzer")
    if found and not _missing_libraries([found, "--version"]):
        return [found]
    binary = _binary_from_wheel(tool_dir)
    if not _missing_libraries([str(binary), "--version"]):
        return [str(binary)]
    sysroot = _debian_runtime(tool_dir)
    libs = sysroot / "usr" / "lib" / "x86_64-linux-gnu"
    command = [str(libs / "ld-linux-x86-64.so.2"), "--library-path", f"{libs}:/lib/x86_64-linux-gnu", str(binary)]
    problem = _missing_libraries([*command, "--version"])
    if problem:
        raise SystemExit(f"perf_analyzer cannot start even with Debian {DEBIAN_SUITE}'s runtime: {problem}")
    return command


def input_data(path: Path, count: int) -> Path:
    """perf_analyzer --input-data: one text (shape [1]) per request, cycling over ``count`` texts."""
    texts = [json.loads(line)["text"] for line in TEXTS.read_text(encoding="utf-8").splitlines()[:count]]
    path.write_text(json.dumps({"data": [{"text": {"content": [t], "shape": [1]}} for t in texts]}))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, port: int, threads: int | None, log_path: Path,
                 grpc_port: int | None = None) -> subprocess.Popen:
    import httpx  # the serve extra

    cmd = [sys.executable, "-m", "bertrt", "serve", *([model] if model else []), "--port", str(port),
           "--model-name", "bert", "--log-level", "warning", *(["--threads", str(threads)] if threads else []),
           *(["--grpc-port", str(grpc_port)] if grpc_port else [])]
    print("+", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bertrt serve exited with {server.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.terminate()
    raise SystemExit(f"bertrt serve did not become ready in 180 s; see {log_path}")


def sweep(command: list[str], port: int, data: Path, concurrencies: list[int], work: Path,
          interval_ms: int, stability: int = 100, protocol: str = "http") -> list[dict]:
    rows = []
    for concurrency in concurrencies:
        csv_path = work / f"{protocol}-c{concurrency}.csv"
        # The token inputs are optional (the texts are sent); perf_analyzer still wants a shape for them.
        shapes = [arg for name in TOKEN_INPUTS for arg in ("--shape", f"{name}:1,1")]
        cmd = [*command, "-m", "bert", "-u", f"127.0.0.1:{port}", "-i", protocol, "--input-data", str(data),
               *shapes, "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval",
               str(interval_ms), "--stability-percentage", str(stability), "--max-trials", "8", "--percentile", "99",
               "-f", str(csv_path), "--verbose-csv"]
        print("+", " ".join(cmd[-20:]), flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        (work / f"{protocol}-c{concurrency}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not csv_path.exists():
            print(f"{protocol} concurrency {concurrency}: perf_analyzer failed ({done.returncode}): "
                  f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}", flush=True)
            rows.append({"Protocol": protocol, "Concurrency": concurrency,
                         "error": (done.stdout + done.stderr).strip()[-300:]})
            continue
        with csv_path.open() as handle:
            rows += [{"Protocol": protocol, **row} for row in csv.DictReader(handle)]
        print(f"{protocol} concurrency {concurrency}: {rows[-1].get('Inferences/Second')} infer/s, "
              f"p50 {float(rows[-1].get('p50 latency', 0)) / 1e3:.1f} ms", flush=True)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for protocol, style in (("http", "-"), ("grpc", "--")):
        ok = [r for r in rows if "error" not in r and r["Protocol"] == protocol]
        conc = [int(r["Concurrency"]) for r in ok]
        if not ok:
            continue
        left.plot(conc, [float(r["Inferences/Second"]) for r in ok], "o" + style, label=protocol)
        for name in ("p50", "p90", "p99"):
            right.plot(conc, [float(r[f"{name} latency"]) / 1e3 for r in ok], "o" + style, label=f"{protocol} {name}")
    left.legend()
    left.set_xlabel("concurrency (requests in flight)")
    left.set_ylabel("inferences/s (one text each)")
    left.set_xscale("log", base=2)
    right.set_xlabel("concurrency")
    right.set_ylabel("latency (ms)")
    right.set_xscale("log", base=2)
    right.legend()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the bundled MiniLM)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--protocols", nargs="+", default=["http"], choices=("http", "grpc"),
                        help="KServe v2 over HTTP and/or gRPC (bertrt serve --grpc-port)")
    parser.add_argument("--texts", type=int, default=512, help="distinct texts in the input data")
    parser.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer measurement window")
    parser.add_argument("--stability", type=int, default=100,
                        help="perf_analyzer --stability-percentage (its default 10 rarely settles on a shared VM)")
    parser.add_argument("--threads", type=int, default=None, help="server torch threads")
    parser.add_argument("--out", default="bench-results", help="where perf_analyzer.csv/.png go")
    parser.add_argument("--tool-dir", default=str(ROOT / "out" / "perf-analyzer"))
    args = parser.parse_args(argv)
    from bertrt.runtime import probe

    tool_dir, out = Path(args.tool_dir), Path(args.out)
    work = tool_dir / "run"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    command = perf_analyzer_command(tool_dir)
    data = input_data(work / "input_data.json", args.texts)
    port, grpc_port = _free_port(), _free_port()
    server = start_server(args.model, port, args.threads, work / "serve.log",
                          grpc_port if "grpc" in args.protocols else None)
    try:
        rows = []
        for protocol in args.protocols:
            rows += sweep(command, grpc_port if protocol == "grpc" else port, data, args.concurrency, work,
                          args.interval_ms, args.stability, protocol)
    finally:
        server.terminate()
        server.wait(30)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("Protocol", "Concurrency"), k))
    with (out / "perf_analyzer.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    cpu = probe.cpu()
    protocols = "/".join(args.protocols)
    title = (f"perf_analyzer 2.60 -> bertrt serve (KServe v2 {protocols}), {args.model or 'all-MiniLM-L6-v2'}, one "
             f"real text per request | {cpu.model} {cpu.isa}, {cpu.cores} cores, load avg {os.getloadavg()[0]:.1f} | "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    plot(rows, out / "perf_analyzer.png", title)
    print(f"-> {out / 'perf_analyzer.csv'}, {out / 'perf_analyzer.png'}")
    return 0 if any("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

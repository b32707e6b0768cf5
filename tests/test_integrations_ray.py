"""bertrt on a real local Ray cluster (one per module: starting Ray costs ~20 s): Ray Data actor pools
and the Ray Serve app over real HTTP, compared with Engine.embed in FP32; a replica killed under load."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bertrt
import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from bertrt import cli

ray = pytest.importorskip("ray", reason="bertrt[ray] is not installed")
from bertrt.integrations import ray as bertrt_ray  # noqa: E402
from bertrt.integrations import ray_cli  # noqa: E402
from bertrt.serving.config import ServeConfig  # noqa: E402
from bertrt.serving.guard import stalled_body_answer  # noqa: E402
from ray import serve  # noqa: E402

ATOL = 1e-5  # FP32, different batch compositions (tests/test_serving.py uses the same)
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu ünïcode naïve café").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 1 to 24 words (odd lengths, a one-word text, repeats of words)."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.choice((0, 1, 2, 5, 11, 23)))) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_data_module_imports_no_serve_stack():
    """Ray Data actors unpickle the module of their class: it must not pull in Ray Serve or the server."""
    probe = ("import sys, bertrt.integrations.ray_data as d; "
             "print(d.EmbedActor.__module__, d.ClassifyActor.__module__); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn') "
             "or m.startswith(('ray.serve', 'bertrt.serving', 'bertrt.integrations.ray_cli')) "
             "or m == 'bertrt.integrations.ray'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    modules, heavy = out.stdout.strip().splitlines()
    assert modules == "bertrt.integrations.ray_data bertrt.integrations.ray_data"
    assert heavy == "[]", heavy
    # the public API re-exports the same objects, so pickles made through it name the light module
    assert bertrt_ray.EmbedActor.__module__ == "bertrt.integrations.ray_data"
    assert bertrt_ray.embed_dataset.__module__ == "bertrt.integrations.ray_data"


def _wait_ready(proc: subprocess.Popen, url: str, log, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"bertrt serve --ray exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {seconds} s:\n{log.read_text()[-3000:]}")


def test_serve_cli_stops_cleanly_on_sigterm(engine, minilm_dir, tmp_path):
    """`bertrt serve --ray` on the local cluster it starts: SIGTERM deletes the app, shuts Serve and
    that cluster down (no raylet or GCS left), frees the port and exits 0. Runs before the module's
    own cluster starts, so the two do not share the 2 cores."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bertrt", "serve", str(minilm_dir), "--ray", "--replicas", "1",
                                 "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(proc, url, log)
        texts = corpus(3, seed=5)
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60)
        assert reply.status_code == 200, reply.text
        got = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, engine.embed(texts), atol=ATOL)
        started = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert {"raylet", "gcs_server"} <= names, names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [(p.pid, p.name()) for p in alive]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert "stopping on SIGTERM" in log.read_text()


def test_stalled_body_status_is_408_or_a_5xx():
    assert stalled_body_answer(ServeConfig(body_timeout_s=2.5)) == (
        408, "request body stalled: no data for 2.5 s", None)
    assert stalled_body_answer(ServeConfig(body_timeout_status=503, retry_after_s=3)) == (
        503, "request body stalled: no data for 10 s; retry", {"Retry-After": "3"})
    for bad in (200, 404, 600):
        with pytest.raises(ValueError, match="body_timeout_status"):
            ServeConfig(body_timeout_status=bad)


@pytest.fixture(scope="module")
def cluster():
    for attempt in range(3):  # the raylet must register within Ray's fixed 30 s: on a loaded machine it may not
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    port = free_port()
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(minilm_dir):
    return bertrt.load(minilm_dir, dtype="float32")


def test_embed_dataset_equals_engine_embed(cluster, engine, minilm_dir):
    texts = corpus(2000)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = bertrt_ray.embed_dataset(ds, model=minilm_dir, batch_size=192, concurrency=2, dtype="float32")
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert all(r["text"] == t for r, t in zip(rows, texts))
    got = np.stack([r["embedding"] for r in rows])
    assert got.shape == (2000, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, engine.embed(texts), atol=ATOL)


def test_classify_dataset(cluster, tiny_model_dirs):
    model = tiny_model_dirs["classify"]
    reference = bertrt.load(model, dtype="float32")
    texts = corpus(37, seed=1)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = sorted(bertrt_ray.classify_dataset(ds, model=model, batch_size=10, dtype="float32").take_all(),
                  key=lambda r: r["id"])
    expected = reference.classify(texts)
    labels = [reference.config.id2label[i] for i in sorted(reference.config.id2label)]
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    np.testing.assert_allclose([r["score"] for r in rows], [e["score"] for e in expected], atol=ATOL)
    np.testing.assert_allclose(np.stack([r["scores"] for r in rows]),
                               [[e["scores"][label] for label in labels] for e in expected], atol=ATOL)


def test_embed_cli_writes_shards_and_resumes(cluster, engine, minilm_dir, tmp_path):
    texts = corpus(150, seed=2)
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"doc": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "out.parquet"
    argv = ["embed", "--ray", "--input", str(source), "--output", str(output), "--model", str(minilm_dir),
            "--dtype", "float32", "--shard-rows", "64", "--batch-size", "40"]
    assert cli.main(argv) == 0
    shards = sorted(output.glob("part-*.parquet"))
    assert [s.name for s in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]

    def read():
        table = pq.read_table(sorted(output.glob("part-*.parquet")))
        return table.column("doc").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)

    docs, vectors = read()
    assert docs == list(range(150))
    expected = engine.embed(texts)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
    # resume: a lost shard is recomputed, the finished ones are left as they are
    kept = {s.name: s.stat().st_mtime_ns for s in shards if s.name != "part-00001.parquet"}
    (output / "part-00001.parquet").unlink()
    assert cli.main(argv) == 0
    assert {s.name: s.stat().st_mtime_ns for s in output.glob("part-*.parquet") if s.name in kept} == kept
    docs, vectors = read()
    assert docs == list(range(150))
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
    # another job's settings in the same directory: refused, nothing mixed in
    assert cli.main([*argv[:-4], "--shard-rows", "100"]) == 2
    assert ray_cli.shard_name(3) not in {s.name for s in output.iterdir()}


def _start_app(port: int, minilm_dir, **options) -> str:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(bertrt_ray.build_app(minilm_dir, dtype="float32", **options), name="bertrt", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _stalled_body(port: int, wait: float) -> bytes:
    """Send headers and part of a body, then nothing: the server's answer (or what came before ``wait``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n"
                     b"content-type: application/json\r\n\r\n{\"inp")
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunk:
                    break
        except TimeoutError:
            chunks.append(b"<nothing more>")
        return b"".join(chunks)


def test_serve_app_answers_the_bertrt_serve_api(cluster, engine, minilm_dir):
    config = ServeConfig(model_name="minilm", body_timeout_s=1.0)
    url = _start_app(cluster, minilm_dir, num_replicas=1, batching="bertrt", serve_config=config)
    try:
        texts = corpus(9, seed=3)
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "model": "m"}, timeout=60)
        assert reply.status_code == 200, reply.text
        got = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, engine.embed(texts), atol=ATOL)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts[:2]}]}
        v2 = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=60).json()
        np.testing.assert_allclose(np.array(v2["outputs"][0]["data"]).reshape(2, 384), engine.embed(texts[:2]),
                                   atol=ATOL)
        # the server's own 4xx answers pass through Serve unchanged
        bad = httpx.post(f"{url}/v1/embeddings", json={"input": {"not": "texts"}}, timeout=60)
        assert bad.status_code in (400, 422) and "error" in bad.json()
        assert httpx.post(f"{url}/v1/classify", json={"input": ["x"]}, timeout=60).status_code == 404
        assert "bertrt_requests_total" in httpx.get(f"{url}/metrics").text
        # a body that stops coming answers 503 + Retry-After behind Serve, not 408: there it is also
        # what a request gets when Ray retried it on this replica after the replica that read its body died
        stalled = _stalled_body(cluster, 20)
        head = stalled.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 503"), stalled
        assert b"retry-after: 1" in head and b"request body stalled" in stalled, stalled
    finally:
        serve.delete("bertrt")


def _replicas() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}


def test_killed_replica_is_replaced_and_no_answer_is_mixed_up(cluster, engine, minilm_dir):
    url = _start_app(cluster, minilm_dir, num_replicas=2, batching="bertrt")
    try:
        texts = corpus(64, seed=4)
        expected = engine.embed(texts)
        before = _replicas()
        assert len(before) == 2
        outcomes: list[tuple[int, int, np.ndarray | None]] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            with httpx.Client(timeout=60) as http:
                i = worker
                while not stop.is_set():
                    index = i % len(texts)
                    reply = http.post(f"{url}/v1/embeddings", json={"input": [texts[index]]})
                    vector = np.array(reply.json()["data"][0]["embedding"]) if reply.status_code == 200 else None
                    outcomes.append((index, reply.status_code, vector))
                    i += 7

        with ThreadPoolExecutor(6) as pool:
            for worker in range(6):
                pool.submit(client, worker)
            time.sleep(2.0)  # under load
            victim = sorted(before)[0]
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (len(_replicas()) == 2 and victim not in _replicas()):
                time.sleep(0.5)
            time.sleep(2.0)  # load on the replacement too
            stop.set()
        after = _replicas()
        assert victim not in after and len(after) == 2, after
        assert len(outcomes) > 20
        for index, status, vector in outcomes:
            assert status == 200 or status >= 500, status
            if status == 200:  # an answer is the right one for its own text, never another request's
                np.testing.assert_allclose(vector, expected[index], atol=ATOL)
        assert sum(status == 200 for _, status, _ in outcomes) >= len(outcomes) // 2
        # once replaced, every request succeeds again
        for index in range(0, len(texts), 9):
            reply = httpx.post(f"{url}/v1/embeddings", json={"input": [texts[index]]}, timeout=60)
            assert reply.status_code == 200
            np.testing.assert_allclose(reply.json()["data"][0]["embedding"], expected[index], atol=ATOL)
    finally:
        serve.delete("bertrt")

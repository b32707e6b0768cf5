"""Hostile-but-fair clients against a real server (issue #23): bounded work per request, no
head-of-line blocking, HTTP hygiene, a 400 for every malformed v2 body, drain on shutdown; fuzzing of
every route's body (hypothesis) and a short mixed soak checked against Engine."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import threading
import time
from contextlib import redirect_stdout

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
import bertrt  # noqa: E402
from bertrt.serving.batcher import DynamicBatcher  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .serving_helpers import LiveServer, SlowRunner, sentence  # noqa: E402

V2 = "/v2/models/test-model/infer"


def _engine(path):
    engine = bertrt.load(path, device="cpu", batch_invariant=True)
    engine.runner = SlowRunner(engine.runner)
    return engine


@pytest.fixture(scope="module")
def classify_server(tiny_model_dirs):
    with LiveServer(_engine(tiny_model_dirs["classify"]), header_timeout_s=1.0, body_timeout_s=1.0,
                    idle_timeout_s=1.0) as server:
        yield server


@pytest.fixture(scope="module")
def qa_server(tiny_model_dirs):
    with LiveServer(_engine(tiny_model_dirs["qa"])) as server:
        yield server


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


# -- one owner per pipeline ----------------------------------------------------------------------------


def test_engine_runs_the_batch_the_server_formed(tiny_model_dirs):
    """run_batch runs exactly the given batch; the server's batches follow ServeConfig's limits alone
    (the engine's own 16384/256 plan is not applied on top)."""
    engine = _engine(tiny_model_dirs["classify"])
    engine.max_batch_size = 1  # the Python API's plan; the server must not use it
    reference = bertrt.load(tiny_model_dirs["classify"], device="cpu", batch_invariant=True)
    texts = [sentence(i, words=2 + i % 7) for i in range(12)]
    from bertrt.batching import pack

    encodings = engine.tokenizer.encode_batch(texts)
    batch = pack([e.ids for e in encodings], [e.type_ids for e in encodings], list(range(12)))
    rows = engine.run_batch(batch, "embed")
    assert engine.runner.batches == [12]
    np.testing.assert_array_equal(np.stack([r.numpy() for r in rows]), reference.embed(texts, normalize=None))

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": t}) for t in texts))

    engine.runner.batches.clear()
    with LiveServer(engine, max_batch_size=4, max_wait_ms=50) as server:
        replies = asyncio.run(burst(server.url))
    assert all(r.status_code == 200 for r in replies)
    assert max(engine.runner.batches) <= 4 and max(engine.runner.batches) > 1
    assert sum(engine.runner.batches) == 12


def test_max_length_is_the_engines_not_a_side_effect(tiny_model_dirs):
    path = tiny_model_dirs["classify"]
    short = bertrt.load(path, device="cpu", max_length=8)
    full = bertrt.load(path, device="cpu")
    assert short.tokenizer.max_length == 8 and full.tokenizer.max_length == 64
    assert short.checkpoint.tokenizer.max_length == 64  # the checkpoint's tokenizer is not reconfigured
    assert len(short.tokenizer.encode_batch([" ".join(["word"] * 50)])[0].ids) == 8


# -- bounded work ----------------------------------------------------------------------------------------


def test_pre_truncation_is_exact(minilm_dir):
    """A prefix is used only where it gives the whole text's tokens and offsets."""
    import random

    tokenizer = bertrt.load(minilm_dir, device="cpu", kernels="torch").tokenizer
    words = "alpha bravo, charlie écho 東京 unbelievable x".split() + ["y" * 150]  # a long [UNK] word
    rng = random.Random(0)
    for trial in range(25):
        pieces = [rng.choice(words) + rng.choice([" ", "\n", "", " " * rng.randint(1, 3000)]) for _ in range(2000)]
        text = "".join(pieces)[: rng.randint(1, 60000)]
        full = tokenizer._truncating_copy(tokenizer.max_length).encode(text)
        (got,) = tokenizer.encode_batch([text])
        assert (got.ids, got.offsets) == (full.ids, full.offsets), trial


def test_qa_window_count_is_computed_before_encoding(minilm_dir):
    tokenizer = bertrt.load(minilm_dir, device="cpu", kernels="torch").tokenizer
    context = " ".join(sentence(i) for i in range(200))
    for max_length, stride in ((16, 10), (32, 5), (64, 20), (384, 128)):
        for chars in (5, 300, 3000):
            actual = len(tokenizer.encode_pairs_with_stride("who?", context[:chars], max_length, stride))
            assert tokenizer.qa_windows("who?", context[:chars], max_length, stride, 10_000) == actual


def test_huge_qa_body_is_refused_in_milliseconds_without_memory(qa_server):
    context = ("stone river cloud " * 120_000)[:2_000_000]
    body = {"question": "who?", "context": context, "max_length": 16, "doc_stride": 10}
    with httpx.Client(base_url=qa_server.url, timeout=60) as client:
        client.post("/v1/qa", json={**body, "context": "tiny"})  # warm up
        before = _rss_mb()
        started = time.perf_counter()
        reply = client.post("/v1/qa", json=body)
        seconds = time.perf_counter() - started
    assert reply.status_code == 413, reply.text
    assert "--max-inputs" in reply.json()["error"]["message"]
    assert _rss_mb() - before < 50
    assert seconds < 5  # on main: ~1,000,000 windows, tens of seconds and GBs (the benchmark times it)
    stride = httpx.post(f"{qa_server.url}/v1/qa", json={"question": "who is the person here?", "context": "x y",
                                                         "max_length": 16, "doc_stride": 12}, timeout=30)
    assert stride.status_code == 400 and "doc_stride 12" in stride.json()["error"]["message"]


def test_token_budget_refuses_before_the_work(tiny_model_dirs):
    with LiveServer(_engine(tiny_model_dirs["classify"]), max_queue_tokens=100) as server:
        reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["word " * 80] * 3}, timeout=30)
        assert reply.status_code == 413 and "--max-queue-tokens" in reply.json()["error"]["message"]
        assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "small"}, timeout=30).status_code == 200


# -- no head-of-line blocking ----------------------------------------------------------------------------


class SlowTokenizer:
    """The engine's tokenizer, sleeping ``delay`` s in encode_batch for texts over 10,000 characters."""

    def __init__(self, tokenizer, delay):
        self._tokenizer, self.delay = tokenizer, delay

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode_batch(self, texts, *args):
        if max(len(t) for t in texts) > 10_000:
            time.sleep(self.delay)
        return self._tokenizer.encode_batch(texts, *args)


def test_small_request_is_not_queued_behind_a_big_tokenization(tiny_model_dirs):
    engine = _engine(tiny_model_dirs["classify"])
    engine.tokenizer = SlowTokenizer(engine.tokenizer, 2.0)
    finished = {}

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def post(name, text):
                reply = await client.post("/v1/embeddings", json={"input": text})
                finished[name] = time.perf_counter()
                return reply.status_code

            big = asyncio.create_task(post("big", "word " * 20_000))
            await asyncio.sleep(0.2)
            small = await post("small", "hello world")
            return small, await big

    with LiveServer(engine) as server:
        assert asyncio.run(main(server.url)) == (200, 200)
    assert finished["small"] < finished["big"] - 1.0  # on main: the tokenizer lock holds it behind


def test_timeout_covers_tokenization(tiny_model_dirs):
    engine = _engine(tiny_model_dirs["classify"])
    engine.tokenizer = SlowTokenizer(engine.tokenizer, 1.5)
    with LiveServer(engine, timeout_s=0.4) as server:
        reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": "word " * 3000}, timeout=30)
        assert reply.status_code == 504 and "within 0.4 s" in reply.json()["error"]["message"]


def test_batcher_serves_shortest_first_with_an_ageing_bound():
    order = []

    def run(ids, type_ids, task):
        order.append([len(x) for x in ids])
        time.sleep(0.05)
        return [0] * len(ids)

    async def main(max_age_ms):
        batcher = DynamicBatcher(run, max_batch_tokens=100, max_wait_ms=0, max_age_ms=max_age_ms)
        await batcher.start()
        first = asyncio.ensure_future(batcher.run([[1] * 100], [[0] * 100], "embed", 10))
        await asyncio.sleep(0.01)  # the first batch runs; two big and one small sequence wait
        big = asyncio.ensure_future(batcher.run([[1] * 90] * 2, [[0] * 90] * 2, "embed", 10))
        await asyncio.sleep(0.001)
        small = asyncio.ensure_future(batcher.run([[1] * 5], [[0] * 5], "embed", 10))
        await asyncio.gather(first, big, small)
        await batcher.close()

    asyncio.run(main(10_000))
    assert order[1][0] == 5, order  # shortest first: the small sequence goes ahead of the older big ones
    order.clear()
    asyncio.run(main(0))  # everything is past the ageing bound: oldest first (on main: FIFO always)
    assert order[1][0] == 90 and sorted(map(len, order)) == [1, 1, 2], order


# -- HTTP hygiene ----------------------------------------------------------------------------------------


def _raw(server, data: bytes, wait: float) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
        return b"".join(chunks)


def test_slow_headers_stalled_bodies_and_idle_connections_are_cut_off(classify_server):
    assert _raw(classify_server, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n", 4).startswith(b"HTTP/1.1 408")
    stalled = _raw(classify_server, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n"
                   b"content-type: application/json\r\n\r\n{\"inp", 4)
    assert b" 408 " in stalled.split(b"\r\n")[0], stalled
    idle = _raw(classify_server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", 4)
    assert idle.startswith(b"HTTP/1.1 200") and not idle.endswith(b"<still open>")


def test_disconnects_are_not_500s(classify_server):
    with socket.create_connection(("127.0.0.1", classify_server.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n{\"input\": ")
        time.sleep(0.2)
    time.sleep(0.3)
    metrics = httpx.get(f"{classify_server.url}/metrics", timeout=10).text
    assert 'code="500"' not in metrics
    assert 'code="499"' in metrics


def test_connection_limit_answers_503(tiny_model_dirs):
    with LiveServer(_engine(tiny_model_dirs["classify"]), max_connections=3) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            reply = _raw(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n", 5)
            assert reply.startswith(b"HTTP/1.1 503"), reply[:80]
        finally:
            for sock in held:
                sock.close()


def _tensor(name="text", datatype="BYTES", shape=(1,), data=("hi",)):
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}


def test_every_malformed_v2_body_is_a_400(classify_server):
    binary_header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                            "parameters": {"binary_data_size": 6}}]}).encode()
    element = struct.pack("<I", 2) + b"hi"
    many = struct.pack("<I", 1) + b"a"
    cases = [
        (V2, {"inputs": [_tensor(shape=[4294967296, 4294967296])]}, {}, 413, "limit"),
        (V2, {"inputs": [_tensor("input_ids", "INT64", [2**63 - 1, 2], [1])]}, {}, 413, "limit"),
        (V2, {"inputs": [_tensor("input_ids", "INT64", [1, 2], [[1], [2]])]}, {}, 400, "nested 'data'"),
        (V2, {"inputs": [_tensor("input_ids", "INT64", [1, 2], [[[101, 102]]])]}, {}, 400, "nested 'data'"),
        (V2, {"inputs": [_tensor("input_ids", "INT64", [1, 2], [101, [102]])]}, {}, 400, "mixes"),
        (V2, {"inputs": [_tensor()], "parameters": {"binary_data_output": "false"}}, {}, 400, "must be a boolean"),
        (V2, {"inputs": [_tensor()], "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, {}, 400,
         "must be a boolean"),
        ("/v2/models/test-model/versions/7/infer", {"inputs": [_tensor()]}, {}, 404, "no version '7'"),
        ("/v1/embeddings", {"input": ["a", 1]}, {}, 400, "got int"),
    ]
    with httpx.Client(base_url=classify_server.url, timeout=30) as client:
        for path, body, headers, status, message in cases:
            reply = client.post(path, json=body, headers=headers)
            assert reply.status_code == status, (body, reply.text)
            error = reply.json()["error"]
            assert message in (error if path.startswith("/v2") else error["message"]), (body, reply.text)
        assert client.get("/v2/models/test-model/versions/2").status_code == 404
        squared = client.post(V2, content=binary_header + element,
                              headers={"Inference-Header-Content-Length": "²".encode("latin-1")})
        assert squared.status_code == 400, squared.text
        trailing = client.post(V2, content=binary_header + element + b"\x00junk",
                               headers={"Inference-Header-Content-Length": str(len(binary_header))})
        assert trailing.status_code == 400, trailing.text
        header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": 5 * 700_000}}]}).encode()
        started = time.perf_counter()
        flood = client.post(V2, content=header + many * 700_000,
                            headers={"Inference-Header-Content-Length": str(len(header))})
        assert flood.status_code == 400 and time.perf_counter() - started < 10, flood.text
        assert client.post(V2, content=binary_header + element,
                           headers={"Inference-Header-Content-Length": str(len(binary_header))}).status_code == 200


def test_cli_prints_json_for_nan():
    from bertrt.cli import _emit

    out = io.StringIO()
    with redirect_stdout(out):
        _emit([{"label": "x", "score": float("nan"), "scores": {"x": float("inf")}}])
    record = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert record == {"label": "x", "score": None, "scores": {"x": None}}


def test_shutdown_answers_503_while_draining_then_exits_cleanly(tiny_model_dirs):
    engine = _engine(tiny_model_dirs["classify"])
    engine.runner.delay = 0.8

    async def main(server):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            accepted = asyncio.create_task(client.post("/v1/embeddings", json={"input": "slow"}))
            while not engine.runner.batches:
                await asyncio.sleep(0.01)
            server.shutdown()
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as fresh:  # a new connection
                late = await fresh.post("/v1/embeddings", json={"input": "late"})
                ready = await fresh.get("/v2/health/ready")
            return await accepted, late, ready

    with LiveServer(engine) as server:
        done, late, ready = asyncio.run(main(server))
        server.thread.join(30)
        assert not server.thread.is_alive() and server.server.clean
    assert done.status_code == 200
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    assert ready.status_code == 503


# -- fuzzing and soak ------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=30),
                    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children,
                                                                                       max_size=5),
                    max_leaves=20)
FIELDS = ["input", "inputs", "question", "context", "truncate", "max_length", "doc_stride", "top_k",
          "dimensions", "encoding_format", "parameters", "outputs", "name", "datatype", "shape", "data", "ids",
          "binary_data_output", "aggregation", "normalize", "raw_scores", "prompt_name", "add_special_tokens"]
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | JSON
TENSORS = st.fixed_dictionaries({"inputs": st.lists(st.dictionaries(
    st.sampled_from(["name", "datatype", "shape", "data", "parameters"]),
    st.sampled_from(["text", "input_ids", "BYTES", "INT64", "FP32"]) | st.lists(st.integers(-3, 2**64), max_size=4)
    | JSON, max_size=5), max_size=3)})
ROUTES = ["/v1/embeddings", "/v1/classify", "/v1/ner", "/v1/qa", V2, "/embed", "/embed_all", "/predict",
          "/rerank", "/embed_sparse", "/tokenize", "/decode"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=st.sampled_from(ROUTES), body=BODIES | TENSORS)
def test_fuzz_every_route_answers_json_and_never_500(classify_server, route, body):
    reply = httpx.post(classify_server.url + route, content=json.dumps(body), timeout=30,
                       headers={"content-type": "application/json"})
    assert reply.status_code < 500 or reply.status_code in (503, 504), (route, body, reply.text)
    reply.json()


def test_soak_mixed_sizes_tasks_and_disconnects(tiny_model_dirs):
    """~20 s (BERTRT_SOAK_SECONDS to change): each answer equals Engine's; RSS ends near its start."""
    seconds = float(os.environ.get("BERTRT_SOAK_SECONDS", "20"))
    path = tiny_model_dirs["classify"]
    reference = bertrt.load(path, device="cpu", batch_invariant=True)
    texts = [sentence(i, words=1 + (i * 37) % 200) for i in range(60)]
    expected = {i: reference.embed(t)[0] for i, t in enumerate(texts)}
    labels = {i: reference.classify(t)[0]["label"] for i, t in enumerate(texts)}
    stop = time.monotonic() + seconds
    failures: list = []

    async def client_loop(url, worker):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            n = worker
            while time.monotonic() < stop:
                n += 7
                i = n % len(texts)
                if n % 11 == 0:  # a client that gives up
                    try:
                        await client.post("/v1/embeddings", json={"input": texts[i] * 50}, timeout=0.005)
                    except httpx.TimeoutException:
                        pass
                    continue
                if n % 2:
                    reply = await client.post("/v1/embeddings", json={"input": texts[i]})
                    if reply.status_code != 200 or not np.allclose(reply.json()["data"][0]["embedding"],
                                                                   expected[i], atol=1e-5):
                        failures.append((i, reply.status_code))
                else:
                    reply = await client.post("/v1/classify", json={"input": texts[i]})
                    if reply.status_code != 200 or reply.json()["data"][0]["label"] != labels[i]:
                        failures.append((i, reply.status_code))

    async def main(url):
        await asyncio.gather(*(client_loop(url, w) for w in range(8)))

    with LiveServer(_engine(path), max_wait_ms=2) as server:
        stop = time.monotonic() + min(3.0, seconds)
        asyncio.run(asyncio.wait_for(main(server.url), seconds + 10))  # warm-up round
        start = _rss_mb()
        stop = time.monotonic() + seconds
        asyncio.run(asyncio.wait_for(main(server.url), seconds + 60))
        grown = _rss_mb() - start
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert not failures, failures[:5]
    assert 'code="500"' not in metrics
    assert grown < 100, f"RSS grew {grown:.0f} MB"
    assert threading.active_count() < 50

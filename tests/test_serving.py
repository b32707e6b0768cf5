"""The HTTP server against real clients on loopback: tritonclient (KServe v2), openai, httpx.

Every server here listens on 127.0.0.1 on a free port; every request loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import bertrt  # noqa: E402
from bertrt.serving.batcher import DynamicBatcher, QueueFull  # noqa: E402

from .serving_helpers import LiveServer, SlowRunner, sentence  # noqa: E402


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return bertrt.load(minilm_dir, device="cpu", batch_invariant=True)


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir):
    return bertrt.load(minilm_dir, device="cpu", batch_invariant=True)


def _engine(path, delay: float = 0.0, kernels: str = "auto"):
    # batch-invariant kernels: a served text gets the bits it gets alone, whatever the precision
    # (dtype "auto" is BF16 on AMX CPUs) and whatever batch the server put it in
    engine = bertrt.load(path, device="cpu", kernels=kernels, batch_invariant=True)
    engine.runner = SlowRunner(engine.runner, delay)
    return engine


@pytest.fixture(scope="module")
def classify_dir(tiny_model_dirs):
    return tiny_model_dirs["classify"]


# -- the batcher alone ---------------------------------------------------------------------------------


def test_batcher_groups_by_token_budget_and_returns_each_result_to_its_caller():
    runs = []

    def run(ids, type_ids, task):
        runs.append((task, [len(x) for x in ids]))
        time.sleep(0.01)
        return [(task, x[0]) for x in ids]

    async def main():
        batcher = DynamicBatcher(run, max_batch_tokens=20, max_batch_size=4, max_wait_ms=5, max_queue=8)
        await batcher.start()
        jobs = [batcher.run([[i] * 5], [[0] * 5], "embed" if i % 3 else "classify", timeout=5) for i in range(8)]
        results = await asyncio.gather(*jobs)
        with pytest.raises(QueueFull):
            batcher.submit([[1]] * 9, [[0]] * 9, "embed", timeout=5)
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert results == [[("embed" if i % 3 else "classify", i)] for i in range(8)]
    assert all(sum(lengths) <= 20 and len(lengths) <= 4 for _, lengths in runs)
    assert len(runs) < 8, "concurrent requests should share batches"


def test_batcher_workers_run_batches_at_once_and_keep_results_apart():
    """Two workers: two batches run at the same time (a barrier both must reach), each caller still
    gets its own result, and ``active`` counts the running batches."""
    import threading

    barrier = threading.Barrier(2, timeout=10)
    seen_active = []

    def run(ids, type_ids, task):
        seen_active.append(batcher.active)
        barrier.wait()  # raises BrokenBarrierError unless another batch runs now
        return [x[0] * 10 for x in ids]

    async def main():
        await batcher.start()
        first = asyncio.ensure_future(batcher.run([[1, 2]], [[0, 0]], "embed", timeout=20))
        await asyncio.sleep(0.05)  # the first batch is running (waiting at the barrier)
        second = await batcher.run([[3, 4], [5]], [[0, 0], [0]], "embed", timeout=20)
        result = (await first, second)
        await batcher.close()
        return result

    batcher = DynamicBatcher(run, max_wait_ms=1, workers=2)
    assert asyncio.run(main()) == ([10], [30, 50])
    assert max(seen_active) == 2 and batcher.active == 0
    with pytest.raises(ValueError, match="workers"):
        DynamicBatcher(run, workers=0)


def test_worker_thread_budget_splits_the_cores():
    """While two batches run, each kernel call of a worker gets cores // 2 threads; alone, all."""
    import torch
    from bertrt.ops import cpu_kernels
    from bertrt.serving.config import ServeConfig
    from bertrt.serving.state import ServerState, batch_workers

    assert cpu_kernels._threads() == torch.get_num_threads()
    with cpu_kernels.thread_budget(lambda: 0):
        assert cpu_kernels._threads() == 1  # never below one
    engine = bertrt.load(device="cpu", kernels="cpu")  # the bundled MiniLM on bertrt's CPU GEMM
    if not engine.plan.shares_cores:
        pytest.skip(f"bertrt's CPU GEMM does not run this engine's GEMMs: {engine.plan.gemm.reason}")
    state = ServerState(engine, ServeConfig(workers=2))
    assert state.workers == 2
    budgets = []
    engine_run = engine.run_encodings

    def recording_run(ids, types, task):
        budgets.append(cpu_kernels._threads())
        return engine_run(ids, types, task)

    engine.run_encodings = recording_run
    try:
        state.batcher.active = 2
        state._run([[101, 102]], [[0, 0]], "embed")
        state.batcher.active = 1
        state._run([[101, 102]], [[0, 0]], "embed")
    finally:
        state.batcher.active = 0
        engine.run_encodings = engine_run
    assert budgets == [max(1, state._cores // 2), state._cores]
    torch_engine = bertrt.load(device="cpu", kernels="torch")
    assert batch_workers(torch_engine, 1)[0] == 1
    with pytest.raises(bertrt.errors.InputError, match="workers=2 needs bertrt's CPU GEMMs"):
        batch_workers(torch_engine, 2)


# -- KServe v2 with tritonclient -----------------------------------------------------------------------


def test_v2_tritonclient_infer_text_and_token_ids(minilm, minilm_reference):
    http = pytest.importorskip("tritonclient.http")
    texts = [sentence(i) for i in range(5)]
    expected = minilm_reference.embed(texts)
    with LiveServer(minilm) as server:
        client = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("test-model")
        metadata = client.get_model_metadata("test-model")
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
        assert client.get_server_metadata()["name"] == "bertrt"
        for binary in (False, True):
            text = http.InferInput("text", [len(texts)], "BYTES")
            text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
            result = client.infer(
                "test-model", [text], outputs=[http.InferRequestedOutput("embedding", binary_data=binary)]
            )
            np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-5)
        # no outputs named: the client asks for every output in binary form
        result = client.infer("test-model", [text], request_id="r1")
        np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-5)
        assert result.get_response()["id"] == "r1"
        # token ids, right-padded, with an attention mask
        encodings = minilm_reference.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        inputs = []
        for name, array in (("input_ids", ids), ("attention_mask", mask)):
            tensor = http.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=False)
            inputs.append(tensor)
        result = client.infer("test-model", inputs, outputs=[http.InferRequestedOutput("embedding", binary_data=False)])
        np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-5)
        with pytest.raises(Exception, match="unknown model"):
            client.infer("other-model", inputs)
        client.close()


def test_v2_classifier_outputs(classify_dir):
    engine = _engine(classify_dir)
    reference = bertrt.load(classify_dir, device="cpu", batch_invariant=True)
    texts = [sentence(i) for i in range(4)]
    expected = reference.classify(texts)
    with LiveServer(engine) as server:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [4], "data": texts}]}
        reply = httpx.post(f"{server.url}/v2/models/test-model/infer", json=body, timeout=30).json()
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["label"]["data"] == [e["label"] for e in expected]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(probabilities.max(1), [e["score"] for e in expected], atol=1e-5)


# -- OpenAI embeddings ---------------------------------------------------------------------------------


def test_openai_client_embeddings_equal_engine_embed(minilm, minilm_reference):
    openai = pytest.importorskip("openai")
    texts = [sentence(i, words=4 + i) for i in range(6)]
    expected = minilm_reference.embed(texts)
    with LiveServer(minilm) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
        for encoding_format in ("float", "base64", None):
            extra = {"encoding_format": encoding_format} if encoding_format else {}
            response = client.embeddings.create(input=texts, model="test-model", **extra)
            rows = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
            if encoding_format == "base64":  # asked for explicitly, the client hands back the string
                rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
            got = np.array(rows, dtype=np.float32)
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert response.usage.prompt_tokens > len(texts)
        single = client.embeddings.create(input=texts[0], model="test-model", encoding_format="float")
        np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-5)
        ids = minilm_reference.tokenizer.encode_batch(texts[:2])
        tokens = client.embeddings.create(input=[e.ids for e in ids], model="test-model", encoding_format="float")
        np.testing.assert_allclose([d.embedding for d in tokens.data], expected[:2], atol=1e-5)
        with pytest.raises(openai.BadRequestError, match="'input' must not be empty"):
            client.embeddings.create(input=[], model="test-model")


# -- task endpoints ------------------------------------------------------------------------------------


def test_classify_ner_qa_endpoints_match_engine(tiny_model_dirs):
    text = "John Smith lives in Paris and works for Acme Corporation in London."
    for task in ("classify", "ner", "qa"):
        path = tiny_model_dirs[task]
        reference = bertrt.load(path, device="cpu", batch_invariant=True)
        with LiveServer(_engine(path)) as server:
            other = "ner" if task != "ner" else "classify"
            refused = httpx.post(f"{server.url}/v1/{other}", json={"input": "x"}, timeout=30)
            assert refused.status_code == 404 and "has no" in refused.json()["error"]["message"]
            if task == "qa":
                question = "Where does John live?"
                reply = httpx.post(
                    f"{server.url}/v1/qa", json={"question": question, "context": text, "top_k": 2}, timeout=30
                ).json()
                expected = reference.qa(question, text, top_k=2)
                assert [a["answer"] for a in reply["answers"]] == [a["answer"] for a in expected]
                assert reply["answer"] == expected[0]["answer"]
                continue
            body = {"input": [text, "a short one"]}
            if task == "ner":
                body["aggregation"] = "first"
            reply = httpx.post(f"{server.url}/v1/{task}", json=body, timeout=30).json()
            if task == "classify":
                expected = reference.classify(body["input"])
                assert [d["label"] for d in reply["data"]] == [e["label"] for e in expected]
                np.testing.assert_allclose(
                    [d["score"] for d in reply["data"]], [e["score"] for e in expected], atol=1e-5
                )
            else:
                expected = reference.ner(body["input"], aggregation="first")
                got = [
                    [(e["entity_group"], e["word"], e["start"], e["end"]) for e in d["entities"]] for d in reply["data"]
                ]
                assert got == [[(e["entity_group"], e["word"], e["start"], e["end"]) for e in row] for row in expected]


# -- concurrency: 500 mixed requests, none lost or swapped ---------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_500_concurrent_mixed_requests_all_answered_correctly(classify_dir, workers):
    """With one batch at a time (torch kernels) and with two at once (bertrt's CPU kernels, which
    the workers split the cores for)."""
    reference = bertrt.load(classify_dir, device="cpu", batch_invariant=True)
    engine = _engine(classify_dir, delay=0.002 * (workers - 1))
    if workers == 2 and not engine.plan.shares_cores:
        pytest.skip(f"bertrt's CPU GEMM does not run this engine's GEMMs: {engine.plan.gemm.reason}")
    count = 500
    texts = [sentence(i, words=3 + i % 20) for i in range(count)]
    expected_embed = reference.embed(texts)
    expected_class = reference.classify(texts)

    async def one(client, i):
        if i % 10 == 9:  # some multi-text requests: their rows must come back in order
            chunk = [texts[i], texts[i - 1], texts[i - 2]]
            reply = await client.post("/v1/embeddings", json={"input": chunk})
            return i, "multi", reply
        if i % 2:
            return i, "embed", await client.post("/v1/embeddings", json={"input": texts[i]})
        return i, "classify", await client.post("/v1/classify", json={"input": texts[i]})

    async def main(url):
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(count))), 80)

    with LiveServer(engine, max_queue=4096, max_wait_ms=5, workers=workers) as server:
        results = asyncio.run(main(server.url))
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert len(results) == count
    for i, kind, reply in results:
        assert reply.status_code == 200, (i, reply.text)
        data = reply.json()["data"]
        if kind == "classify":
            assert data[0]["label"] == expected_class[i]["label"]
            assert data[0]["score"] == pytest.approx(expected_class[i]["score"], abs=1e-5)
        else:
            rows = [i, i - 1, i - 2] if kind == "multi" else [i]
            got = np.array([d["embedding"] for d in data], dtype=np.float32)
            np.testing.assert_allclose(got, expected_embed[rows], atol=1e-5)
    assert max(engine.runner.batches) > 1, "concurrent requests should have been batched"
    assert engine.runner.most_running == workers
    assert 'bertrt_requests_total{code="200",endpoint="/v1/embeddings",model="test-model"}' in metrics
    assert "bertrt_batch_size_bucket" in metrics and "bertrt_queue_depth" in metrics


# -- overload, timeout, shutdown -----------------------------------------------------------------------


def test_overload_answers_503_with_retry_after_then_recovers(classify_dir):
    engine = _engine(classify_dir, delay=0.15)

    async def burst(url, n):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.wait_for(
                asyncio.gather(*(client.post("/v1/embeddings", json={"input": sentence(i)}) for i in range(n))), 30
            )

    with LiveServer(engine, max_queue=4, max_batch_size=2, max_wait_ms=0) as server:
        started = time.monotonic()
        replies = asyncio.run(burst(server.url, 40))
        codes = [r.status_code for r in replies]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        refused = next(r for r in replies if r.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert "overloaded" in refused.json()["error"]["message"]
        assert time.monotonic() - started < 20, "503s must come at once, not after waiting"
        engine.runner.delay = 0.0
        after = asyncio.run(burst(server.url, 4))
        assert [r.status_code for r in after] == [200] * 4
        too_big = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a"] * 5}, timeout=30)
        assert too_big.status_code == 413 and "queue holds (4)" in too_big.json()["error"]["message"]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'bertrt_rejected_total{model="test-model",reason="queue_full"}' in metrics


def test_request_timeout_answers_504(classify_dir):
    engine = _engine(classify_dir, delay=0.6)
    with LiveServer(engine, timeout_s=0.3) as server:
        reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": "slow"}, timeout=30)
        assert reply.status_code == 504 and "within" in reply.json()["error"]["message"]


def test_graceful_shutdown_finishes_accepted_requests(classify_dir):
    engine = _engine(classify_dir, delay=0.3)

    async def main(server):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            accepted = [
                asyncio.create_task(client.post("/v1/embeddings", json={"input": sentence(i)})) for i in range(6)
            ]
            batcher = server.app.state.bertrt.batcher
            deadline = time.monotonic() + 20
            while sum(engine.runner.batches) + batcher.depth < len(accepted):  # all six queued or running
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            server.shutdown()
            try:  # a new request now is refused: 503, or its connection is refused or closed
                late = (await client.get("/v2/health/ready")).status_code
            except httpx.TransportError:
                late = "closed"
            return await asyncio.gather(*accepted), late

    with LiveServer(engine, max_batch_size=2, max_wait_ms=0) as server:
        replies, late = asyncio.run(main(server))
        server.thread.join(30)
        assert not server.thread.is_alive(), "server should exit after draining"
    assert [r.status_code for r in replies] == [200] * 6
    assert late in (503, "closed")


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_requests_get_4xx_with_a_message_naming_the_problem(classify_dir):
    engine = _engine(classify_dir)
    long_text = " ".join(["word"] * 200)  # the tiny model takes 64 tokens
    text_tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
    v2 = "/v2/models/test-model/infer"
    cases = [
        ("/v1/embeddings", b"{not json", 400, "not valid JSON"),
        ("/v1/embeddings", b'{"model": "m"}', 400, "missing field 'input'"),
        ("/v1/embeddings", b'{"input": {"a": 1}}', 400, "'input' must be"),
        ("/v1/embeddings", b'{"input": ["a", 3]}', 400, "input[0]"),
        ("/v1/embeddings", b'{"input": [[1, 2], [99999999]]}', 400, "outside the vocabulary"),
        ("/v1/embeddings", b'{"input": "a", "dimensions": 7000}', 400, "'dimensions'"),
        ("/v1/embeddings", json.dumps({"input": ["x"] * 300}).encode(), 413, "limit of 256"),
        ("/v1/embeddings", json.dumps({"input": long_text, "truncate": False}).encode(), 400, "over the limit"),
        ("/v1/classify", b'{"input": "a", "truncate": "yes"}', 400, "'truncate' must be a boolean"),
        ("/v1/ner", b'{"input": "a"}', 404, "no ner head"),
        (v2, b'{"inputs": []}', 400, "'inputs' must be a non-empty array"),
        (
            v2,
            json.dumps({"inputs": [{**text_tensor, "datatype": "FP32", "data": [1.0]}]}).encode(),
            400,
            "must be BYTES",
        ),
        (v2, json.dumps({"inputs": [{**text_tensor, "shape": [2]}]}).encode(), 400, "needs 2 elements"),
        (
            v2,
            json.dumps(
                {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1.5, 2]}]}
            ).encode(),
            400,
            "INT64 data holds number",
        ),
        (
            v2,
            json.dumps(
                {
                    "inputs": [
                        {"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102]},
                        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [1, 1, 0]},
                    ]
                }
            ).encode(),
            400,
            "has shape [1, 3]",
        ),
        (v2, json.dumps({"inputs": [text_tensor], "outputs": [{"name": "nope"}]}).encode(), 400, "unknown output"),
        (v2, json.dumps({"inputs": [{**text_tensor, "name": "txt"}]}).encode(), 400, "expected an input named"),
        ("/v2/models/other/infer", json.dumps({"inputs": [text_tensor]}).encode(), 404, "unknown model"),
        ("/v1/embeddings", b'{"input": "' + b"a " * 3_000_000 + b'"}', 413, "over this server's limit"),
    ]
    with LiveServer(engine) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for path, body, status, message in cases:
            reply = client.post(path, content=body, headers={"content-type": "application/json"})
            assert reply.status_code == status, (path, body[:80], reply.text)
            error = reply.json()["error"]
            text = error if path.startswith("/v2") else error["message"]
            assert message in text, (path, body[:80], text)
        # a chunked body without Content-Length is cut off at the limit too
        chunks = (b"x" * 65536 for _ in range(100))
        assert client.post("/v1/embeddings", content=chunks).status_code == 413
        assert client.get("/v2/health/live").status_code == 200  # still serving


def test_api_key(classify_dir):
    openai = pytest.importorskip("openai")
    with LiveServer(_engine(classify_dir), api_key="s3cret") as server:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        denied = httpx.post(f"{server.url}/v1/embeddings", json={"input": "a"})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{server.url}/v2/models/test-model", headers={"x-api-key": "wrong"}).status_code == 401
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert len(client.embeddings.create(input="a", model="m").data[0].embedding) == 48
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).embeddings.create(
                input="a", model="m"
            )


# -- the CLI, as a process: serve, answer, drain on SIGTERM ---------------------------------------------


def test_cli_serve_process_logs_json_and_exits_on_sigterm(classify_dir):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "BERTRT_API_KEY": "k"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertrt",
            "serve",
            str(classify_dir),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--kernels",
            "torch",
            "--max-wait-ms",
            "1",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server did not come up"
            time.sleep(0.1)
        reply = httpx.post(
            f"{url}/v1/classify", json={"input": ["good", "bad"]}, headers={"x-api-key": "k"}, timeout=30
        )
        assert reply.status_code == 200 and len(reply.json()["data"]) == 2
        assert httpx.get(f"{url}/v2/models/classify", headers={"x-api-key": "k"}).status_code == 200
        process.send_signal(signal.SIGTERM)
        # uvicorn drains, then re-raises the signal so the process ends the way SIGTERM ends it
        assert process.wait(30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    lines = [json.loads(line) for line in process.stderr.read().decode().splitlines() if line.startswith("{")]
    events = [line["msg"] for line in lines]
    assert "ready" in events and "stopped" in events
    request = next(line for line in lines if line["msg"] == "request" and line["path"] == "/v1/classify")
    assert request["status"] == 200 and request["ms"] > 0 and request["request_id"]

"""Many models in one server: real tritonclient (HTTP and gRPC) and httpx clients against an embedder
and a classifier served at once, the KServe v2 repository extension, per-model metrics, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import bertrt
import numpy as np
import pytest
from bertrt.serving.config import ServeConfig
from bertrt.serving.models import ModelSet

from .serving_helpers import LiveServer, sentence

httpx = pytest.importorskip("httpx")
http = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def engines(minilm_dir, tiny_model_dirs):
    return {"embedder": bertrt.load(minilm_dir, device="cpu", batch_invariant=True),
            "classifier": bertrt.load(tiny_model_dirs["classify"], device="cpu", batch_invariant=True)}


class ModelServer(LiveServer):
    """LiveServer over a ModelSet of ``engines``."""

    def __init__(self, engines: dict, **config):
        config.setdefault("model_name", "unused")
        models = ModelSet(ServeConfig(**config))
        for name, engine in engines.items():
            models.add(name, engine)
        super().__init__(models, **config)


def _texts(n, words=6):
    return [sentence(i, words=words) for i in range(n)]


def test_two_models_over_http_grpc_and_openai_equal_engine_calls(engines):
    texts = _texts(5)
    expected_embed = engines["embedder"].embed(texts)
    expected_labels = [r["label"] for r in engines["classifier"].classify(texts)]
    with ModelServer(engines, grpc_port=0) as server:
        client = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        grpc_client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.app.state.grpc_port}")
        for name in ("embedder", "classifier"):
            assert client.is_model_ready(name) and grpc_client.is_model_ready(name)
        text = http.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        np.testing.assert_array_equal(client.infer("embedder", [text]).as_numpy("embedding"), expected_embed)
        labels = [x.decode() for x in client.infer("classifier", [text]).as_numpy("label")]
        assert labels == expected_labels
        gtext = grpcclient.InferInput("text", [len(texts)], "BYTES")
        gtext.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        np.testing.assert_array_equal(grpc_client.infer("embedder", [gtext]).as_numpy("embedding"), expected_embed)
        assert [x.decode() for x in grpc_client.infer("classifier", [gtext]).as_numpy("label")] == expected_labels
        with pytest.raises(Exception, match="unknown model 'other'; this server serves: embedder, classifier"):
            client.infer("other", [text])
        listed = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["embedder", "classifier"]
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"model": "embedder", "input": texts}).json()
        np.testing.assert_array_equal(np.array([d["embedding"] for d in answer["data"]], dtype=np.float32),
                                      expected_embed)
        answer = httpx.post(f"{server.url}/v1/classify", json={"model": "classifier", "input": texts}).json()
        assert [d["label"] for d in answer["data"]] == expected_labels
        unknown = httpx.post(f"{server.url}/v1/embeddings", json={"model": "gpt", "input": "x"})
        assert unknown.status_code == 404 and "embedder, classifier" in unknown.json()["error"]["message"]
        tei = httpx.post(f"{server.url}/embed", json={"model": "nope", "inputs": "x"})
        assert tei.status_code == 404 and tei.json()["error_type"] == "validation"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'bertrt_batch_tokens_count{model="embedder",task="embed"}' in metrics
        assert 'bertrt_batch_tokens_count{model="classifier",task="classify"}' in metrics
        assert 'bertrt_queue_tokens{model="classifier"}' in metrics


def test_concurrent_requests_to_both_models_are_never_mixed_up(engines):
    import concurrent.futures

    texts = _texts(24, words=4)
    expected_embed = engines["embedder"].embed(texts)
    expected_labels = [r["label"] for r in engines["classifier"].classify(texts)]
    with ModelServer(engines) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        def call(i):
            if i % 2:
                return i, client.post("/v1/embeddings", json={"model": "embedder", "input": texts[i]}).json()
            return i, client.post("/v1/classify", json={"model": "classifier", "input": texts[i]}).json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for i, answer in pool.map(call, range(len(texts))):
                if i % 2:
                    np.testing.assert_array_equal(np.array(answer["data"][0]["embedding"], dtype=np.float32),
                                                  expected_embed[i])
                else:
                    assert answer["data"][0]["label"] == expected_labels[i]


@pytest.fixture
def repository(tmp_path, minilm_dir, tiny_model_dirs):
    root = tmp_path / "repo"
    shutil.copytree(minilm_dir, root / "minilm")
    shutil.copytree(tiny_model_dirs["classify"], root / "tiny-classifier")
    (root / "tiny-classifier" / "bertrt.json").write_text(json.dumps({"dtype": "float32", "max_batch_tokens": 512}))
    shutil.copytree(tiny_model_dirs["ner"], root / "broken")
    (root / "broken" / "bertrt.json").write_text(json.dumps({"max_batch_tokens": "many"}))
    return root


def test_repository_index_load_unload(repository, engines):
    models = ModelSet(ServeConfig(model_name="unused"), repository)
    models.add("minilm", engines["embedder"])
    with LiveServer(models) as server:
        client = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert index == {"minilm": "READY", "tiny-classifier": "UNAVAILABLE", "broken": "UNAVAILABLE"}
        client.load_model("tiny-classifier")
        assert client.is_model_ready("tiny-classifier")
        state = server.app.state.models.named("tiny-classifier")
        assert state.config.max_batch_tokens == 512 and state.engine.precision == "float32"
        text = http.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"great"], dtype=object))
        assert client.infer("tiny-classifier", [text]).as_numpy("label").shape == (1,)
        with pytest.raises(Exception, match="max_batch_tokens must be int"):
            client.load_model("broken")
        with pytest.raises(Exception, match="no model 'missing' in the repository"):
            client.load_model("missing")
        client.unload_model("tiny-classifier")
        assert {m["name"]: m["state"] for m in client.get_model_repository_index()}["tiny-classifier"] == \
            "UNAVAILABLE"
        with pytest.raises(Exception, match="unknown model 'tiny-classifier'"):
            client.infer("tiny-classifier", [text])
        assert client.is_model_ready("minilm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_named_models(tiny_model_dirs):
    port = _free_port()
    command = [sys.executable, "-m", "bertrt", "serve", "--port", str(port), "--dtype", "float32",
               "--model", f"emb={tiny_model_dirs['embed']}", "--model", f"cls={tiny_model_dirs['classify']}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "BERTRT_DISPATCH": "off"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        names = [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]]
        assert names == ["emb", "cls"]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"model": "cls", "input": "fine"})
        assert answer.status_code == 200 and answer.json()["data"][0]["label"] in ("negative", "positive", "neutral")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

"""The KServe predictor on KServe's own ModelServer (a real process on a loopback port), driven by the
real clients: tritonclient for v2, httpx for v1 ``:predict``; and the deploy/ manifests parsed.

kserve is imported only in the predictor processes: its v2 protos and tritonclient's share the proto
package ``inference``, and protobuf refuses the second registration in one process (test_serving_grpc)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import bertrt
import httpx
import numpy as np
import pytest
import yaml

if importlib.util.find_spec("kserve") is None:
    pytest.skip("bertrt[kserve] is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a", "the quick brown fox jumps over the lazy dog", "ünïcode naïve café", "x " * 41]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_predictor(model_dir, name: str):
    """A ``python -m bertrt.integrations.kserve`` process; returns (process, http port) once ready."""
    port = free_port()
    command = [sys.executable, "-m", "bertrt.integrations.kserve", "--model_dir", str(model_dir), "--model_name",
               name, "--http_port", str(port), "--grpc_port", str(free_port()), "--enable_grpc", "false",
               "--dtype", "float32", "--configure_logging", "false"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"predictor exited: {process.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("predictor did not become ready")
        time.sleep(0.5)


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def predictor(minilm_dir):
    process, port = start_predictor(minilm_dir, "minilm")
    yield port
    stop(process)


@pytest.fixture(scope="module")
def reference(minilm_dir):
    return bertrt.load(minilm_dir, dtype="float32")


def test_v2_with_tritonclient(predictor, reference):
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(url=f"127.0.0.1:{predictor}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("minilm")
    expected = reference.embed(TEXTS)
    # KServe reads a body without a JSON content type as binary-extension bytes, and tritonclient names
    # no content type for all-JSON requests: such requests say it.
    json_headers = {"Content-Type": "application/json"}
    for binary in (False, True):
        text = http.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary)
        result = client.infer("minilm", [text], outputs=[http.InferRequestedOutput("embedding", binary_data=binary)],
                              headers=None if binary else json_headers)
        got = result.as_numpy("embedding")
        assert got.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    wrong = http.InferInput("ids", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=object), binary_data=False)
    with pytest.raises(Exception, match="text"):
        client.infer("minilm", [wrong], headers=json_headers)


def test_v1_predict_with_httpx(predictor, reference):
    url = f"http://127.0.0.1:{predictor}/v1/models/minilm:predict"
    reply = httpx.post(url, json={"instances": TEXTS[:3] + [{"text": TEXTS[3]}]}, timeout=60)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(np.array(reply.json()["predictions"]), reference.embed(TEXTS), atol=1e-5)
    bad = httpx.post(url, json={"instances": [3]}, timeout=60)
    assert bad.status_code == 400 and "instances[0]" in bad.text
    assert httpx.get(f"http://127.0.0.1:{predictor}/v1/models/minilm", timeout=10).json()["ready"] is True


def test_classify_model_v1_and_v2(tiny_model_dirs):
    http = pytest.importorskip("tritonclient.http")
    process, port = start_predictor(tiny_model_dirs["classify"], "tiny")
    try:
        reference = bertrt.load(tiny_model_dirs["classify"], dtype="float32").classify(TEXTS)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/models/tiny:predict", json={"instances": TEXTS}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert [p["label"] for p in reply.json()["predictions"]] == [r["label"] for r in reference]
        client = http.InferenceServerClient(url=f"127.0.0.1:{port}")
        text = http.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=True)
        result = client.infer("tiny", [text])
        labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
        assert labels == [r["label"] for r in reference]
        np.testing.assert_allclose(result.as_numpy("probabilities").max(-1), [r["score"] for r in reference],
                                   atol=1e-5)
    finally:
        stop(process)


def test_deploy_manifests_parse():
    service = yaml.safe_load((ROOT / "deploy/kserve/inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert service["metadata"]["name"]
    container = service["spec"]["predictor"]["containers"][0]
    assert container["image"] and "bertrt.integrations.kserve" in " ".join(container["command"] + container["args"])
    assert {"--model_dir", "--model_name", "--http_port"} <= set(container["args"])
    assert container["ports"][0]["containerPort"] == int(container["args"][container["args"].index("--http_port") + 1])
    dockerfile = (ROOT / "deploy/kserve/Dockerfile").read_text()
    assert ".[kserve]" in dockerfile and "torch==2.13.0" in dockerfile and "ENTRYPOINT" in dockerfile
    config = yaml.safe_load((ROOT / "deploy/ray/serve-config.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "bertrt.integrations.ray:app_builder"
    assert app["route_prefix"] == "/" and "model" in app["args"]
    bertrt_ray = pytest.importorskip("bertrt.integrations.ray", reason="bertrt[ray] is not installed")
    module, _, attribute = app["import_path"].partition(":")
    assert getattr(bertrt_ray, attribute) is bertrt_ray.app_builder and module == bertrt_ray.__name__
    assert set(app["args"]) <= set(bertrt_ray.build_app.__code__.co_varnames) | {"dtype", "task", "serve_config"}

"""KServe v2 gRPC with the real client (tritonclient.grpc) against a server started on loopback."""

from __future__ import annotations

import bertrt
import numpy as np
import pytest

from .serving_helpers import LiveServer, sentence

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the test extra")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def engines(minilm_dir, tiny_model_dirs):
    return {"embed": bertrt.load(minilm_dir, device="cpu", batch_invariant=True),
            "classify": bertrt.load(tiny_model_dirs["classify"], device="cpu", batch_invariant=True)}


def _client(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.app.state.grpc_port}")


def _text_input(texts, raw: bool = True):
    tensor = grpcclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def test_grpc_health_metadata_and_text_infer_equal_engine(engines):
    engine = engines["embed"]
    texts = [sentence(i) for i in range(5)]
    expected = engine.embed(texts)
    with LiveServer(engine, grpc_port=0) as server:
        client = _client(server)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("test-model")
        metadata = client.get_model_metadata("test-model", as_json=True)
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}]
        assert client.get_server_metadata(as_json=True)["name"] == "bertrt"
        config = client.get_model_config("test-model", as_json=True)["config"]
        assert config["name"] == "test-model" and config["parameters"]["task"]["string_value"] == "embed"
        assert config["output"] == [{"name": "embedding", "data_type": "TYPE_FP32", "dims": ["-1", "384"]}]
        assert {i["name"]: i["data_type"] for i in config["input"]}["text"] == "TYPE_STRING"
        with pytest.raises(InferenceServerException, match="nope"):
            client.get_model_config("nope")
        result = client.infer("test-model", [_text_input(texts)], request_id="g1",
                              outputs=[grpcclient.InferRequestedOutput("embedding")])
        np.testing.assert_array_equal(result.as_numpy("embedding"), expected)
        assert result.get_response().id == "g1"


def test_grpc_token_ids_and_classifier_labels(engines):
    engine = engines["classify"]
    texts = [sentence(i, words=3 + i) for i in range(4)]
    expected = engine.classify(texts)
    encodings = engine.tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids, mask = np.zeros((len(texts), width), dtype=np.int64), np.zeros((len(texts), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, 1
    with LiveServer(engine, grpc_port=0) as server:
        client = _client(server)
        inputs = []
        for name, array in (("input_ids", ids), ("attention_mask", mask)):
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer("test-model", inputs)
        labels = [label.decode() for label in result.as_numpy("label")]
        assert labels == [r["label"] for r in expected]
        probabilities = result.as_numpy("probabilities")
        np.testing.assert_allclose(probabilities.max(-1), [r["score"] for r in expected], atol=1e-6)
        text_result = client.infer("test-model", [_text_input(texts)])
        assert [x.decode() for x in text_result.as_numpy("label")] == labels


def test_grpc_bad_requests_get_a_status_with_a_message(engines):
    with LiveServer(engines["embed"], grpc_port=0, max_inputs=4) as server:
        client = _client(server)
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.infer("nope", [_text_input(["a"])])
        wrong = grpcclient.InferInput("text", [1], "FP32")
        wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        with pytest.raises(InferenceServerException, match="input 'text' must be BYTES"):
            client.infer("test-model", [wrong])
        with pytest.raises(InferenceServerException, match="5 sequences in one request, over"):
            client.infer("test-model", [_text_input([sentence(i) for i in range(5)])])
        ids = grpcclient.InferInput("input_ids", [1, 3], "INT64")
        ids.set_data_from_numpy(np.array([[101, 99999999, 102]], dtype=np.int64))
        with pytest.raises(InferenceServerException, match="outside the vocabulary"):
            client.infer("test-model", [ids])
        with pytest.raises(InferenceServerException, match="unknown output"):
            client.infer("test-model", [_text_input(["a"])], outputs=[grpcclient.InferRequestedOutput("logits")])
        # still serving after all of that
        assert client.infer("test-model", [_text_input(["fine"])]).as_numpy("embedding").shape == (1, 384)


def test_grpc_shape_and_contents_mismatch_and_overflow_are_invalid_argument(engines):
    from tritonclient.grpc import service_pb2

    with LiveServer(engines["embed"], grpc_port=0) as server:
        client = _client(server)
        stub = client._client_stub
        for shape, raw, needle in (([2], [b"\x01\x00\x00\x00a"], "needs 2 elements, got 1"),
                                   ([4294967296, 4294967296], [b""], "over this server's limit"),
                                   ([1], [b"\x09\x00\x00\x00a"], "overruns")):
            request = service_pb2.ModelInferRequest(model_name="test-model")
            request.inputs.add(name="text", datatype="BYTES", shape=shape)
            request.raw_input_contents.extend(raw)
            with pytest.raises(Exception, match=needle) as caught:
                stub.ModelInfer(request)
            assert "INVALID_ARGUMENT" in str(caught.value) or "RESOURCE_EXHAUSTED" in str(caught.value)


def test_grpc_api_key_in_metadata(engines):
    with LiveServer(engines["embed"], grpc_port=0, api_key="s3cret") as server:
        client = _client(server)
        assert client.is_server_live()  # health stays open, as over HTTP
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("test-model", [_text_input(["a"])])
        ok = client.infer("test-model", [_text_input(["a"])], headers={"authorization": "Bearer s3cret"})
        assert ok.as_numpy("embedding").shape == (1, 384)
        ok = client.infer("test-model", [_text_input(["a"])], headers={"x-api-key": "s3cret"})
        assert ok.as_numpy("embedding").shape == (1, 384)
        metrics = __import__("httpx").get(f"{server.url}/metrics", headers={"x-api-key": "s3cret"}).text
        assert 'endpoint="grpc:ModelInfer"' in metrics


def test_grpc_timeout_counts_from_arrival_and_client_deadline(engines):
    texts = [sentence(i) * 8 for i in range(64)]
    with LiveServer(engines["embed"], grpc_port=0, timeout_s=0.001) as server:
        with pytest.raises(InferenceServerException, match="did not finish within") as caught:
            _client(server).infer("test-model", [_text_input(texts)])
        assert "DEADLINE_EXCEEDED" in str(caught.value)
    with LiveServer(engines["embed"], grpc_port=0) as server:
        client = _client(server)
        assert client.infer("test-model", [_text_input(texts[:2])]).as_numpy("embedding").shape == (2, 384)
        with pytest.raises(InferenceServerException, match="(?i)deadline"):
            client.infer("test-model", [_text_input(texts)], client_timeout=0.001)

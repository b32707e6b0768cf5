"""bertrt as a KServe predictor: a ``kserve.Model`` on KServe's own ``ModelServer`` (v1 and v2 REST,
v2 gRPC when enabled).

    python -m bertrt.integrations.kserve --model_dir DIR --model_name NAME [--http_port 8080]

v1 (``POST /v1/models/NAME:predict``): ``{"instances": [text, ...]}`` (or ``{"text": ...}`` objects)
answers ``{"predictions": [...]}``: an embedding (hidden floats) per text for embed models, the
bertrt ``classify`` / ``ner`` result for those heads; a qa model takes ``{"question", "context"}``.
v2 (``POST /v2/models/NAME/infer``): input ``text`` (BYTES, [n]); outputs ``embedding`` (FP32,
[n, hidden]) or, for classify, ``logits`` and ``probabilities`` (FP32, [n, labels]) and ``label``
(BYTES, [n]) — the same tensors as ``bertrt serve``'s v2 endpoint.

Engine calls run in a worker thread so the server's event loop keeps answering probes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid

import bertrt
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # optional: bertrt[kserve]
from kserve import model_server as kserve_model_server
from kserve.errors import InvalidInput

from ..errors import InputError

log = logging.getLogger("bertrt.integrations.kserve")


class BertrtModel(Model):
    """A KServe model backed by ``bertrt.load(model_dir, **load_options)`` (loaded in ``load()``)."""

    def __init__(self, name: str, model_dir: str | None = None, **load_options):
        super().__init__(name)
        self.model_dir = model_dir
        self.load_options = load_options
        self.engine = None
        self.ready = False

    def load(self) -> bool:
        self.engine = bertrt.load(self.model_dir, **self.load_options)
        log.info("loaded %r", self.engine)
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None, response_headers=None):
        try:
            if isinstance(payload, InferRequest):
                return await asyncio.to_thread(self._predict_v2, payload)
            return await asyncio.to_thread(self._predict_v1, payload)
        except InputError as exc:  # KServe answers InvalidInput with 400 and the message
            raise InvalidInput(str(exc)) from None

    # -- v1 ------------------------------------------------------------------------------------------

    def _predict_v1(self, payload) -> dict:
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InputError('expected a JSON object {"instances": [...]}')
        instances = payload["instances"]
        engine = self.engine
        if engine.task == "qa":
            for index, item in enumerate(instances):
                if not isinstance(item, dict) or not {"question", "context"} <= set(item):
                    raise InputError(f'instances[{index}] must be {{"question": ..., "context": ...}}')
            return {"predictions": [engine.qa(item["question"], item["context"]) for item in instances]}
        texts = [_text_of(item, index) for index, item in enumerate(instances)]
        if engine.task == "embed":
            return {"predictions": engine.embed(texts).tolist()}
        if engine.task == "classify":
            return {"predictions": engine.classify(texts)}
        return {"predictions": engine.ner(texts)}

    # -- v2 ------------------------------------------------------------------------------------------

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        engine = self.engine
        tensor = request.get_input_by_name("text")
        if tensor is None or tensor.datatype != "BYTES":
            raise InputError("expected an input named 'text' (BYTES, shape [n])")
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in tensor.as_numpy().reshape(-1)]
        if engine.task == "embed":
            outputs = [_output("embedding", engine.embed(texts))]
        elif engine.task == "classify":
            encodings = engine.tokenizer.encode_batch(texts, "truncate")
            logits = torch.stack(engine.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings],
                                                      "classify"))
            multi = engine.config.problem_type == "multi_label_classification"
            probabilities = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            labels = np.array([engine.config.id2label[int(i)].encode() for i in probabilities.argmax(-1)],
                              dtype=object)
            outputs = [_output("logits", logits.numpy()), _output("probabilities", probabilities.numpy()),
                       _output("label", labels, "BYTES")]
        else:
            raise InputError(f"the v2 protocol serves embed and classify models; this one is {engine.task} "
                             f"(use the v1 :predict endpoint)")
        wanted = {o.name for o in request.request_outputs or []}
        if wanted:
            unknown = wanted - {o.name for o in outputs}
            if unknown:
                raise InputError(f"unknown output(s) {sorted(unknown)}; this model has {[o.name for o in outputs]}")
            outputs = [o for o in outputs if o.name in wanted]
        return InferResponse(request.id or uuid.uuid4().hex, self.name, outputs,
                             use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)


def _text_of(item, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise InputError(f'instances[{index}] must be a string or {{"text": string}}, got {type(item).__name__}')


def _output(name: str, array: np.ndarray, datatype: str = "FP32") -> InferOutput:
    """array: (n, ...) float32, or (n,) of bytes for BYTES."""
    output = InferOutput(name, list(array.shape), datatype)
    output.set_data_from_numpy(array.astype(np.float32) if datatype == "FP32" else array, binary_data=False)
    return output


def build_parser() -> argparse.ArgumentParser:
    """KServe's own server flags (--http_port, --grpc_port, --workers, --model_name, ...) plus the model's."""
    parser = argparse.ArgumentParser(prog="python -m bertrt.integrations.kserve", parents=[kserve_model_server.parser])
    parser.add_argument("--model_dir", default=None, help="checkpoint directory (default: bundled MiniLM)")
    parser.add_argument("--task", default=None, choices=("embed", "classify", "ner", "qa"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = BertrtModel(args.model_name, args.model_dir, task=args.task, device=args.device, backend=args.backend,
                        dtype=args.dtype)
    model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                enable_grpc=args.enable_grpc).start([model])


if __name__ == "__main__":
    main()

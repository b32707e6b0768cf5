"""KServe v2 / Open Inference Protocol REST: health, metadata, readiness and ``infer``.

Inputs: ``text`` (BYTES, shape [n]) or ``input_ids`` (INT64/INT32, [n, L]) with optional
``attention_mask`` (right-padded ones then zeros) and ``token_type_ids``. Outputs by the model's task:
embed ``embedding`` [n, hidden]; classify ``logits``, ``probabilities`` [n, labels] and ``label`` (BYTES);
ner ``logits`` [n, L, labels]; qa ``start_logits``, ``end_logits`` [n, L] (zero past each sequence).
JSON tensors and the binary tensor extension both work, for inputs and outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import tasks
from .._version import __version__
from .protocol import ApiError, V2Request, dumps, encode_v2_response, loads_object, parse_v2_infer
from .state import ServerState, read_body

router = APIRouter(prefix="/v2")

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _state(request: Request) -> ServerState:
    return request.app.state.bertrt


def _json(obj, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


def _model(request: Request, name: str, version: str = "1") -> ServerState:
    state = request.app.state.models.named(name)
    if version != "1":
        raise ApiError(404, f"model {name!r} has no version {version!r}; its only version is '1'")
    return state


def output_specs(state: ServerState) -> list[dict]:
    task, config = state.engine.task, state.engine.config
    labels = len(config.id2label)
    specs = {
        "embed": [("embedding", "FP32", [-1, config.hidden_size])],
        "classify": [
            ("logits", "FP32", [-1, labels]),
            ("probabilities", "FP32", [-1, labels]),
            ("label", "BYTES", [-1]),
        ],
        "ner": [("logits", "FP32", [-1, -1, labels])],
        "qa": [("start_logits", "FP32", [-1, -1]), ("end_logits", "FP32", [-1, -1])],
    }[task]
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in specs]


def input_specs(state: ServerState) -> list[dict]:
    specs = [] if state.engine.task == "qa" else [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    return specs + [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in TOKEN_INPUTS]


@router.get("/health/live")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    models = request.app.state.models
    ok = models.started and all(s.ready and not s.draining for s in models.states.values())
    return _json({"ready": ok}, 200 if ok else 503)


# -- repository extension (Triton's, which tritonclient speaks) ---------------------------------------


@router.post("/repository/index")
async def repository_index(request: Request) -> Response:
    """{"ready": bool} -> [{"name", "version", "state", "reason"?}] of loaded and repository models."""
    body = await read_body(request, _state(request).config.max_body_bytes)
    ready = bool(loads_object(body).get("ready", False)) if body else False
    entries = request.app.state.models.index()
    return _json([e for e in entries if not ready or e["state"] == "READY"])


@router.post("/repository/models/{name}/load")
async def repository_load(request: Request, name: str) -> Response:
    await request.app.state.models.load(name)
    return _json({})


@router.post("/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> Response:
    await request.app.state.models.unload(name)
    return _json({})


@router.get("")
async def server_metadata() -> Response:
    return _json({"name": "bertrt", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str = "1") -> Response:
    state = _model(request, name, version)
    return _json(
        {
            "name": state.model_name,
            "versions": ["1"],
            "platform": f"bertrt_{state.engine.backend}",
            "inputs": input_specs(state),
            "outputs": output_specs(state),
        }
    )


def model_config(state: ServerState) -> dict:
    """The model's configuration in Triton's ModelConfig shape (HTTP ``/config`` and the gRPC
    ``ModelConfig`` RPC both answer it)."""
    engine = state.engine
    return {
        "name": state.model_name,
        "platform": f"bertrt_{engine.backend}",
        "backend": "bertrt",
        # Triton's convention: 0 means the shapes above already include the batch dimension (so
        # perf_analyzer sends [n] texts, not [n, 1]); the per-request limit is max_inputs.
        "max_batch_size": 0,
        "max_inputs": state.config.max_inputs,
        "task": engine.task,
        "device": engine.device,
        "precision": engine.precision,
        "max_sequence_length": state.max_length,
        "dynamic_batching": {
            "max_batch_tokens": state.config.max_batch_tokens,
            "max_queue_delay_microseconds": int(state.config.max_wait_ms * 1000),
            "max_queue_size": state.config.max_queue,
        },
        # Triton's config marks inputs a request may leave out (perf_analyzer reads it): text or
        # input_ids, and the mask and token types, which have defaults.
        "input": [{**spec, "optional": state.engine.task != "qa" or spec["name"] != "input_ids"}
                  for spec in input_specs(state)],
        "output": output_specs(state),
    }


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config_route(request: Request, name: str, version: str = "1") -> Response:
    return _json(model_config(_model(request, name, version)))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str = "1") -> Response:
    state = _model(request, name, version)
    ok = state.ready and not state.draining
    return _json({"name": state.model_name, "ready": ok}, 200 if ok else 503)


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str = "1") -> Response:
    state = _model(request, name, version)
    config = state.config
    body = await read_body(request, config.max_body_bytes)
    header = request.headers.get("inference-header-content-length")
    if header is not None and not (header.isascii() and header.isdigit()):  # "²".isdigit() is True
        raise ApiError(400, f"Inference-Header-Content-Length must be an integer, got {header!r}")
    arguments = (body, int(header) if header is not None else None, config.max_inputs * state.max_length,
                 config.max_inputs)
    # big bodies (up to max_inputs x max_length ids, or BYTES) are parsed off the event loop
    parsed = await state.off_loop(parse_v2_infer, *arguments) if len(body) > 65536 else parse_v2_infer(*arguments)
    wanted, arrays = await run_infer(state, parsed)
    response, header_length = encode_v2_response(
        state.model_name, parsed.id, [(n, arrays[n], binary) for n, binary in wanted]
    )
    headers = {"Inference-Header-Content-Length": str(header_length)} if header_length is not None else None
    media = "application/octet-stream" if header_length is not None else "application/json"
    return Response(response, media_type=media, headers=headers)


async def run_infer(state: ServerState, parsed: V2Request) -> tuple[list[tuple[str, bool]], dict]:
    """The infer request on the batcher -> ([(output name, binary)], {name: array}); shared by the
    HTTP route and the gRPC service."""
    truncate = parsed.parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ApiError(400, "parameter 'truncate' must be a boolean")
    task = state.engine.task
    if "text" in parsed.inputs:
        ids, type_ids = await _text_inputs(state, parsed.inputs, truncate, task)
    elif "input_ids" in parsed.inputs:
        ids, type_ids = _token_inputs(state, parsed.inputs)
    else:
        raise ApiError(
            400,
            "expected an input named 'text' (BYTES, shape [n]) or 'input_ids' (INT64, shape "
            f"[n, L]); got {sorted(parsed.inputs)}",
        )
    available = {spec["name"] for spec in output_specs(state)}
    wanted = parsed.outputs or [(spec["name"], parsed.binary_output) for spec in output_specs(state)]
    for output_name, _ in wanted:
        if output_name not in available:
            raise ApiError(400, f"unknown output {output_name!r}; this {task} model gives {sorted(available)}")
    rows = await state.infer(ids, type_ids, task)
    arrays = _outputs(state, task, rows)
    return wanted, arrays


async def _text_inputs(state: ServerState, inputs: dict, truncate: bool, task: str):
    extra = set(inputs) - {"text"}
    if extra:
        raise ApiError(400, f"input 'text' cannot be combined with {sorted(extra)}")
    if task == "qa":
        raise ApiError(
            400, "a qa model takes (question, context) pairs: send 'input_ids' and 'token_type_ids', or use POST /v1/qa"
        )
    tensor = inputs["text"]
    if tensor.datatype != "BYTES":
        raise ApiError(400, f"input 'text' must be BYTES, got {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ApiError(400, f"input 'text' must have shape [n] or [n, 1], got {tensor.shape}")
    _check_rows(state, len(tensor.data))
    encodings = await state.tokenize(tensor.data, truncate)
    return [e.ids for e in encodings], [e.type_ids for e in encodings]


def _token_inputs(state: ServerState, inputs: dict):
    extra = set(inputs) - set(TOKEN_INPUTS)
    if extra:
        raise ApiError(400, f"unknown inputs {sorted(extra)}; token inputs are {list(TOKEN_INPUTS)}")
    arrays = {}
    for name, tensor in inputs.items():
        if tensor.datatype not in ("INT64", "INT32"):
            raise ApiError(400, f"input '{name}' must be INT64 or INT32, got {tensor.datatype}")
        array = np.asarray(tensor.data, dtype=np.int64)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise ApiError(400, f"input '{name}' must have shape [n, L], got {tensor.shape}")
        arrays[name] = array
    ids = arrays["input_ids"]
    for name, array in arrays.items():
        if array.shape != ids.shape:
            raise ApiError(400, f"input '{name}' has shape {list(array.shape)}, input_ids {list(ids.shape)}")
    _check_rows(state, ids.shape[0])
    mask = arrays.get("attention_mask")
    if mask is None:
        lengths = [ids.shape[1]] * ids.shape[0]
    else:
        if not np.isin(mask, (0, 1)).all():
            raise ApiError(400, "attention_mask must hold only 0 and 1")
        lengths = mask.sum(1).tolist()
        for row, length in enumerate(lengths):
            if mask[row, :length].min(initial=1) != 1:
                raise ApiError(400, f"attention_mask row {row} is not right-padded (ones, then zeros)")
    types = arrays.get("token_type_ids", np.zeros_like(ids))
    if types.size and (types.min() < 0 or types.max() >= state.engine.config.type_vocab_size):
        raise ApiError(400, f"token_type_ids must be in [0, {state.engine.config.type_vocab_size})")
    id_rows = [ids[i, :n].tolist() for i, n in enumerate(lengths)]
    state.check_token_ids(id_rows, "input_ids")
    return id_rows, [types[i, :n].tolist() for i, n in enumerate(lengths)]


def _check_rows(state: ServerState, rows: int) -> None:
    if rows == 0:
        raise ApiError(400, "the input holds no sequences")
    if rows > state.config.max_inputs:
        raise ApiError(413, f"{rows} sequences in one request, over this server's limit of {state.config.max_inputs}")


def _outputs(state: ServerState, task: str, rows: list[torch.Tensor]) -> dict:
    if task in ("embed", "classify"):
        matrix = torch.stack(rows).numpy()
        if task == "embed":
            return {"embedding": matrix}
        config = state.engine.config
        if config.problem_type == "multi_label_classification":
            probabilities = 1.0 / (1.0 + np.exp(-matrix))
        else:
            probabilities = tasks.softmax(matrix)
        labels = [config.id2label[int(i)] for i in probabilities.argmax(-1)]
        return {"logits": matrix, "probabilities": probabilities.astype(np.float32), "label": labels}
    longest = max(len(r) for r in rows)
    padded = np.zeros((len(rows), longest, rows[0].shape[-1]), dtype=np.float32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row.numpy()
    if task == "ner":
        return {"logits": padded}
    return {"start_logits": np.ascontiguousarray(padded[..., 0]), "end_logits": np.ascontiguousarray(padded[..., 1])}

"""Hugging Face text-embeddings-inference (TEI) compatible routes on the same port.

``/embed``, ``/embed_all``, ``/predict``, ``/rerank``, ``/embed_sparse``, ``/tokenize``, ``/decode``,
``/info``, ``/health``, with TEI's request fields and answer shapes, and TEI's error body
``{"error": message, "error_type": kind}`` and status codes: validation 413, tokenizer 422,
overloaded 429, backend 424, empty 400, unhealthy 503. ``/rerank`` and ``/embed_sparse`` need the
model's cross-encoder / MLM head (a 424 naming what is missing otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import __version__, tasks
from ..embedding_options import truncate_dimensions
from ..errors import InputError
from .protocol import ApiError, dumps, get_bool, get_choice, loads_object
from .state import ServerState, read_body

router = APIRouter()

# ApiError status -> (TEI status, TEI error_type)
KINDS = {400: (413, "validation"), 404: (404, "validation"), 413: (413, "validation"), 422: (422, "tokenizer"),
         503: (429, "overloaded"), 504: (424, "backend")}
DIRECTIONS = ("right", "left")


class TeiError(ApiError):
    """An ApiError answered in TEI's error shape."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers=headers)
        self.error_type = error_type


def tei_error_body(message: str, error_type: str) -> bytes:
    return dumps({"error": message, "error_type": error_type})


def _json(obj) -> Response:
    return Response(dumps(obj), media_type="application/json")


async def _request(request: Request) -> tuple[ServerState, dict]:
    """(the model named by the body's "model" field, a bertrt extension of TEI's API, or the default)."""
    try:
        obj = loads_object(await read_body(request, request.app.state.bertrt.config.max_body_bytes))
        return request.app.state.models.get(obj.get("model")), obj
    except ApiError as exc:
        raise _tei(exc) from None


def _query_model(request: Request) -> ServerState:
    try:
        return request.app.state.models.get(request.query_params.get("model"))
    except ApiError as exc:
        raise _tei(exc) from None


def _tei(exc: ApiError) -> TeiError:
    if isinstance(exc, TeiError):
        return exc
    status, kind = KINDS.get(exc.status, (exc.status, "validation" if exc.status < 500 else "backend"))
    if exc.status == 503 and "shutting down" in exc.message:
        status, kind = 503, "unhealthy"
    return TeiError(status, exc.message, kind, exc.headers)


def _texts(obj: dict, state: ServerState, name: str = "inputs") -> list[str]:
    if name not in obj:
        raise TeiError(422, f"missing field `{name}`", "validation")
    value = obj[name]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise TeiError(422, f"`{name}` must be a string or a list of strings", "validation")
    if not texts:
        raise TeiError(400, f"`{name}` cannot be empty", "empty")
    if len(texts) > state.config.max_inputs:
        raise TeiError(413, f"batch size {len(texts)} > maximum allowed batch size {state.config.max_inputs}",
                       "validation")
    return texts


def _truncation(obj: dict) -> str:
    truncate = get_bool(obj, "truncate", False)
    direction = get_choice({k: (v.lower() if isinstance(v, str) else v) for k, v in obj.items()},
                           "truncation_direction", "right", DIRECTIONS)
    if direction == "left" and truncate:
        raise TeiError(422, "truncation_direction 'Left' is not supported by this server; send 'Right'",
                       "validation")
    return "truncate" if truncate else "error"


async def _encode(state: ServerState, texts: list[str], truncation: str, prompt_name=None):
    try:
        texts = state.engine.prompts.apply(texts, prompt_name)
    except InputError as exc:
        raise TeiError(422, str(exc), "validation") from None
    try:
        return await state.tokenize(texts, truncation == "truncate")
    except ApiError as exc:
        raise _tei(exc) from None


async def _infer(state: ServerState, encodings, task: str) -> list[torch.Tensor]:
    try:
        return await state.infer([e.ids for e in encodings], [e.type_ids for e in encodings], task)
    except ApiError as exc:
        raise _tei(exc) from None


@router.post("/embed")
async def embed(request: Request) -> Response:
    """{"inputs", "normalize": true, "truncate": false, "truncation_direction", "prompt_name",
    "dimensions"} -> [[float]]"""
    state, obj = await _request(request)
    texts = _texts(obj, state)
    normalize = get_bool(obj, "normalize", True)
    encodings = await _encode(state, texts, _truncation(obj), obj.get("prompt_name"))
    pools_normalized = state.engine.checkpoint.model.pooling.normalize
    task = "embed_unnormalized" if (pools_normalized and not normalize) else "embed"
    if task != "embed" and state.engine.backend != "torch":
        raise TeiError(424, f"normalize=false needs the torch backend; this model runs {state.engine.backend}",
                       "backend")
    matrix = torch.stack(await _infer(state, encodings, task)).numpy()
    if normalize and not pools_normalized:
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    try:
        matrix = truncate_dimensions(matrix, obj.get("dimensions"), normalize)
    except InputError as exc:
        raise TeiError(422, str(exc), "validation") from None
    return _json(matrix.astype(np.float32))


@router.post("/embed_all")
async def embed_all(request: Request) -> Response:
    """{"inputs", "truncate", "truncation_direction", "prompt_name"} -> [[[float]]] per token."""
    state, obj = await _request(request)
    if state.engine.backend != "torch":
        raise TeiError(424, f"/embed_all needs the torch backend; this model runs {state.engine.backend}", "backend")
    encodings = await _encode(state, _texts(obj, state), _truncation(obj), obj.get("prompt_name"))
    rows = await _infer(state, encodings, "tokens")
    return _json([row.numpy() for row in rows])


@router.post("/predict")
async def predict(request: Request) -> Response:
    """{"inputs": str | [str] | [[str]], "raw_scores": false, "truncate"} -> [{"label", "score"}]
    sorted by score (a list of those for a batch)."""
    state, obj = await _request(request)
    if state.engine.task != "classify":
        raise TeiError(424, f"/predict needs a sequence classification model; this one is "
                            f"{state.engine.config.architecture}", "backend")
    single, items = _predict_inputs(obj.get("inputs"), state)
    pairs = [(text, pair) for text, pair in items if pair is not None]
    if pairs and len(pairs) != len(items):
        raise TeiError(422, "`inputs` mixes single texts and [text, text_pair] pairs; send one kind per request",
                       "validation")
    try:
        state.engine.check_input_kind(bool(pairs), "classify")
    except InputError as exc:
        raise TeiError(422, str(exc), "validation") from None
    truncation = _truncation(obj)
    if pairs:
        try:
            encodings = await state.tokenize_pairs(pairs, truncation)
        except ApiError as exc:
            raise _tei(exc) from None
    else:
        encodings = await _encode(state, _texts({"inputs": [text for text, _ in items]}, state), truncation)
    rows = await _infer(state, encodings, "classify")
    raw = get_bool(obj, "raw_scores", False)
    config = state.engine.config
    results = []
    for row in rows:
        logits = row.numpy()
        if raw:
            scores = logits
        elif config.problem_type == "multi_label_classification":
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = tasks.softmax(logits)
        ranked = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
        results.append([{"label": config.id2label[i], "score": float(scores[i])} for i in ranked])
    return _json(results[0] if single else results)


def _predict_inputs(value, state: ServerState) -> tuple[bool, list[tuple[str, str | None]]]:
    """(single, [(text, text_pair or None)]) as TEI reads ``inputs``: a string; [a, b] is ONE pair;
    a longer list of strings is a batch; a list of lists is a batch of [text] or [text, text_pair]."""
    if isinstance(value, str):
        return True, [(value, None)]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return True, [(value[0], value[1])]
    if not isinstance(value, list) or not value:
        raise TeiError(422, "`inputs` must be a string, a [text, text_pair] pair, or a list of those", "validation")
    items = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            items.append((item, None))
        elif isinstance(item, list) and len(item) in (1, 2) and all(isinstance(v, str) for v in item):
            items.append((item[0], item[1] if len(item) == 2 else None))
        else:
            raise TeiError(422, f"`inputs[{index}]` must be a string or a [text, text_pair] list", "validation")
    if len(items) > state.config.max_inputs:
        raise TeiError(413, f"batch size {len(items)} > maximum allowed batch size {state.config.max_inputs}",
                       "validation")
    return False, items


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    """{"inputs", "add_special_tokens": true, "prompt_name"} -> per text [{"id", "text", "special",
    "start", "stop"}]."""
    state, obj = await _request(request)
    texts = _texts(obj, state)
    add_special = get_bool(obj, "add_special_tokens", True)
    try:
        texts = state.engine.prompts.apply(texts, obj.get("prompt_name"))
        encodings = state.engine.tokenizer.encode_raw(texts, add_special)
    except InputError as exc:
        raise TeiError(422, str(exc), "tokenizer") from None
    out = []
    for text, encoding in zip(texts, encodings):
        tokens = []
        for token_id, (start, stop), special in zip(encoding.ids, encoding.offsets, encoding.special_tokens_mask):
            tokens.append({"id": token_id, "text": text[start:stop] if not special else
                           state.engine.tokenizer.id_to_token(token_id), "special": bool(special),
                           "start": start if not special else None, "stop": stop if not special else None})
        out.append(tokens)
    return _json(out)


@router.post("/decode")
async def decode(request: Request) -> Response:
    """{"ids": [int] | [[int]], "skip_special_tokens": true} -> [str]"""
    state, obj = await _request(request)
    ids = obj.get("ids")
    rows = [ids] if isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids) else ids
    vocab = state.engine.config.vocab_size
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, list) and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in r)
            for r in rows):
        raise TeiError(422, f"`ids` must be a list (or a list of lists) of token ids in [0, {vocab})", "validation")
    if len(rows) > state.config.max_inputs:
        raise TeiError(413, f"batch size {len(rows)} > maximum allowed batch size {state.config.max_inputs}",
                       "validation")
    skip = get_bool(obj, "skip_special_tokens", True)
    return _json([state.engine.tokenizer.decode(r, skip) for r in rows])


@router.get("/info")
async def info(request: Request) -> Response:
    state = _query_model(request)
    engine, config = state.engine, state.engine.config
    if engine.task == "classify":
        model_type = {"classifier": {"id2label": {str(k): v for k, v in config.id2label.items()},
                                     "label2id": {v: k for k, v in config.id2label.items()}}}
    else:
        model_type = {"embedding": {"pooling": engine.checkpoint.model.pooling.mode}}
    return _json({"model_id": state.model_name, "model_sha": None, "model_dtype": engine.precision,
                  "model_type": model_type, "prompts": engine.prompts.prompts or None,
                  "default_prompt_name": engine.prompts.default_name,
                  "max_concurrent_requests": state.config.max_queue, "max_input_length": state.max_length,
                  "max_batch_tokens": state.config.max_batch_tokens, "max_batch_requests": state.config.max_batch_size,
                  "max_client_batch_size": state.config.max_inputs, "auto_truncate": False,
                  "tokenization_workers": 1, "version": __version__, "backend": engine.backend,
                  "device": engine.device})


@router.get("/health")
async def health(request: Request) -> Response:
    state = _query_model(request)
    if not state.ready or state.draining:
        raise TeiError(503, "model is not ready", "unhealthy")
    return Response(b"", status_code=200)

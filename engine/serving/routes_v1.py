"""OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``, and bertrt's ``/v1/classify``, ``/v1/ner``,
``/v1/qa``."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import tasks
from ..embedding_options import truncate_dimensions
from ..errors import InputError
from .protocol import (
    ApiError,
    dumps,
    encode_embedding,
    get_bool,
    get_choice,
    loads_object,
    parse_embeddings,
    parse_qa,
    parse_texts,
)
from .state import ServerState, read_body

router = APIRouter(prefix="/v1")
_STARTED = int(time.time())


def _json(obj) -> Response:
    return Response(dumps(obj), media_type="application/json")


async def _request(request: Request) -> tuple[ServerState, dict]:
    """(the model the body's "model" field names, or the default one; the body)."""
    limit = request.app.state.bertrt.config.max_body_bytes
    obj = loads_object(await read_body(request, limit))
    return request.app.state.models.get(obj.get("model")), obj


def _usage(ids) -> dict:
    tokens = sum(len(x) for x in ids)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


@router.get("/models")
async def models(request: Request) -> Response:
    states = request.app.state.models.states.values()
    return _json({"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": _STARTED, "owned_by": "bertrt",
         "tasks": list(state.tasks)} for state in states]})


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    """OpenAI embeddings. Token-id inputs run as given (include [CLS]/[SEP] yourself)."""
    state, obj = await _request(request)
    parsed = parse_embeddings(obj, state.config.max_inputs)
    hidden = state.engine.hidden_size
    if parsed.dimensions is not None and parsed.dimensions > hidden:
        raise ApiError(400, f"'dimensions' must be at most {hidden} for this model, got {parsed.dimensions}",
                       param="dimensions")
    if parsed.texts is not None:
        prompt_name = obj.get("prompt_name")
        try:
            texts = state.engine.prompts.apply(parsed.texts, prompt_name)
        except InputError as exc:
            raise ApiError(400, str(exc), param="prompt_name") from None
        encodings = await state.tokenize(texts, parsed.truncate)
        ids = [e.ids for e in encodings]
        type_ids = [e.type_ids for e in encodings]
    else:
        ids = parsed.token_ids
        state.check_token_ids(ids, "input")
        type_ids = [[0] * len(row) for row in ids]
    rows = await state.infer(ids, type_ids, "embed")
    # Matryoshka: the first `dimensions` values, renormalized when the model's output is normalized
    matrix = truncate_dimensions(torch.stack(rows).numpy(), parsed.dimensions,
                                 state.engine.checkpoint.model.pooling.normalize)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_embedding(matrix[i], parsed.encoding_format)}
        for i in range(len(rows))
    ]
    return _json({"object": "list", "data": data, "model": state.model_name, "usage": _usage(ids)})


@router.post("/classify")
async def classify(request: Request) -> Response:
    """{"input": str | [str], "truncate": true} -> data[i] = {"index", "label", "score", "scores"}."""
    state, obj = await _request(request)
    state.require("classify")
    texts = parse_texts(obj, state.config.max_inputs)
    encodings = await state.tokenize(texts, get_bool(obj, "truncate", True))
    ids = [e.ids for e in encodings]
    rows = await state.infer(ids, [e.type_ids for e in encodings], "classify")
    data = [{"index": i, **state.classification(row.numpy())} for i, row in enumerate(rows)]
    return _json({"object": "list", "data": data, "model": state.model_name, "usage": _usage(ids)})


@router.post("/ner")
async def ner(request: Request) -> Response:
    """{"input": str | [str], "aggregation": "simple", "truncate": true} -> data[i] = {"index", "entities"}."""
    state, obj = await _request(request)
    state.require("ner")
    texts = parse_texts(obj, state.config.max_inputs)
    aggregation = get_choice(obj, "aggregation", "simple", tasks.AGGREGATIONS)
    encodings = await state.tokenize(texts, get_bool(obj, "truncate", True))
    ids = [e.ids for e in encodings]
    rows = await state.infer(ids, [e.type_ids for e in encodings], "ner")
    data = [
        {"index": i, "entities": state.entities(text, enc, row.numpy(), aggregation)}
        for i, (text, enc, row) in enumerate(zip(texts, encodings, rows))
    ]
    return _json({"object": "list", "data": data, "model": state.model_name, "usage": _usage(ids)})


@router.post("/qa")
async def qa(request: Request) -> Response:
    """{"question", "context", "top_k": 1, "max_answer_length": 15, "doc_stride", "max_length"} ->
    the best {"answer", "score", "start", "end"} (character offsets into context) and "answers" (top_k)."""
    state, obj = await _request(request)
    state.require("qa")
    parsed = parse_qa(obj, state.max_length)
    windows = await state.tokenize_pair(parsed.question, parsed.context, parsed.max_length, parsed.doc_stride)
    if len(windows) > state.config.max_inputs:
        raise ApiError(
            413,
            f"context needs {len(windows)} windows of {parsed.max_length} tokens, over this "
            f"server's limit of {state.config.max_inputs}",
            param="context",
        )
    ids = [w.ids for w in windows]
    rows = await state.infer(ids, [w.type_ids for w in windows], "qa")
    answers = state.answers(parsed.context, windows, rows, parsed.max_answer_length, parsed.top_k)
    return _json({"object": "qa", "model": state.model_name, **answers[0], "answers": answers, "usage": _usage(ids)})

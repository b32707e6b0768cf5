"""Routes for sentence pairs and the pre-training heads.

- ``POST /rerank`` (TEI): {"query", "texts", "raw_scores", "return_text", "truncate"} ->
  [{"index", "score", "text"?}] best first.
- ``POST /v1/rerank`` (Cohere / Jina): {"query", "documents": [str | {"text"}], "top_n",
  "return_documents"} -> {"results": [{"index", "relevance_score", "document"?: {"text"}}], "usage"}.
- ``POST /embed_sparse`` (TEI): {"inputs", "truncate"} -> [[{"index": token_id, "value"}]].
- ``POST /v1/fill_mask``: {"input": str | [str], "top_k": 5} -> data[i] = {"index", "predictions"}
  (transformers' fill-mask pipeline shape).
- ``POST /v1/next_sentence``: {"text", "text_pair"} or {"input": [[text, text_pair], ...]} ->
  data[i] = {"index", "probability"} (P(text_pair follows text)).

Post-processing is the Engine's own (bertrt/api_tasks.py), so the server answers what the Python API does.
"""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import lm_tasks
from ..errors import InputError
from .protocol import ApiError, dumps, get_bool, get_int, loads_object, parse_texts
from .routes_tei import TeiError, _tei, _texts, _truncation
from .routes_tei import _request as tei_request
from .state import ServerState, read_body

router = APIRouter()


def _json(obj) -> Response:
    return Response(dumps(obj), media_type="application/json")


async def _request(request: Request) -> tuple[ServerState, dict]:
    state: ServerState = request.app.state.bertrt
    return state, loads_object(await read_body(request, state.config.max_body_bytes))


def _usage(ids) -> dict:
    tokens = sum(len(x) for x in ids)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def _pairs(state: ServerState, pairs: list[tuple[str, str]], truncation: str):
    return await state.tokenize_pairs(pairs, truncation)


async def _scores(state: ServerState, query: str, documents: list[str], truncation: str, raw: bool):
    """(scores (documents,), ids) of (query, document) pairs through the batcher."""
    if not query.strip():
        raise ApiError(400, "'query' must not be empty", param="query")
    try:
        state.engine.rerank_scores(torch.zeros(0, 1), raw)  # a model with one output, or a 400 naming its labels
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    encodings = await _pairs(state, [(query, d) for d in documents], truncation)
    ids = [e.ids for e in encodings]
    rows = await state.infer(ids, [e.type_ids for e in encodings], "classify")
    return state.engine.rerank_scores(torch.stack(rows), raw), ids


@router.post("/rerank")
async def tei_rerank(request: Request) -> Response:
    state, obj = await tei_request(request)
    if "classify" not in state.tasks:
        raise TeiError(424, f"/rerank needs a cross-encoder (sequence classification) model; this one is "
                            f"{state.engine.config.architecture}", "backend")
    query = obj.get("query")
    if not isinstance(query, str):
        raise TeiError(422, "missing field `query` (a string)", "validation")
    texts = _texts(obj, state, "texts")
    try:
        scores, _ = await _scores(state, query, texts, "truncate" if _truncation(obj) == "truncate" else "error",
                                  get_bool(obj, "raw_scores", False))
        return_text = get_bool(obj, "return_text", False)
    except ApiError as exc:
        raise _tei(exc) from None
    return _json(lm_tasks.rerank_results(scores, texts, None, return_text, "score", "text"))


def _documents(obj: dict, max_inputs: int) -> list[str]:
    value = obj.get("documents")
    if not isinstance(value, list):
        raise ApiError(400, "'documents' must be a list of strings or of {\"text\": ...} objects", param="documents")
    if not value:
        raise ApiError(400, "'documents' must not be empty", param="documents")
    if len(value) > max_inputs:
        raise ApiError(413, f"'documents' has {len(value)} items, over this server's limit of {max_inputs}",
                       param="documents")
    documents = []
    for index, item in enumerate(value):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ApiError(400, f"documents[{index}] must be a string or an object with a string 'text'",
                           param="documents")
        documents.append(text)
    return documents


@router.post("/v1/rerank")
async def rerank(request: Request) -> Response:
    state, obj = await _request(request)
    state.require("classify")
    query = obj.get("query")
    if not isinstance(query, str):
        raise ApiError(400, "missing field 'query' (a string)", param="query")
    documents = _documents(obj, state.config.max_inputs)
    top_n = get_int(obj, "top_n", None, 1, len(documents))
    raw = get_bool(obj, "raw_scores", False)
    scores, ids = await _scores(state, query, documents, "only_second" if get_bool(obj, "truncate", True) else "error",
                                raw)
    results = lm_tasks.rerank_results(scores, documents, top_n, get_bool(obj, "return_documents", False),
                                      "relevance_score")
    for item in results:
        if "document" in item:
            item["document"] = {"text": item["document"]}
    usage = {"total_tokens": _usage(ids)["total_tokens"]}
    return _json({"model": state.model_name, "results": results, "usage": usage})


@router.post("/embed_sparse")
async def embed_sparse(request: Request) -> Response:
    state, obj = await tei_request(request)
    if "embed_sparse" not in state.tasks:
        raise TeiError(424, f"/embed_sparse needs a masked-language-model (SPLADE) checkpoint; this one is "
                            f"{state.engine.config.architecture}", "backend")
    texts = _texts(obj, state)
    try:
        encodings = await state.tokenize(texts, _truncation(obj) == "truncate")
        rows = await state.infer([e.ids for e in encodings], [e.type_ids for e in encodings], "embed_sparse")
    except ApiError as exc:
        raise _tei(exc) from None
    return _json([[{"index": token, "value": value} for token, value in lm_tasks.sparse_weights(row, None).items()]
                  for row in rows])


@router.post("/v1/fill_mask")
async def fill_mask(request: Request) -> Response:
    state, obj = await _request(request)
    state.require("fill_mask")
    texts = parse_texts(obj, state.config.max_inputs)
    top_k = get_int(obj, "top_k", 5, 1, 100)
    truncate = get_bool(obj, "truncate", True)
    truncation = "truncate" if truncate else "error"
    encodings = await state._tokenize(True, state.engine.fill_mask_encodings, texts, truncation)
    ids = [e.ids for e in encodings]
    rows = await state.infer(ids, [e.type_ids for e in encodings], "fill_mask")
    data = [{"index": i, "predictions": state.engine.fill_mask_results(e, row, top_k)}
            for i, (e, row) in enumerate(zip(encodings, rows))]
    return _json({"object": "list", "data": data, "model": state.model_name, "usage": _usage(ids)})


def _pair_list(obj: dict, max_inputs: int) -> list[tuple[str, str]]:
    if "input" not in obj:
        for name in ("text", "text_pair"):
            if not isinstance(obj.get(name), str):
                raise ApiError(400, f"missing field '{name}' (a string), or give 'input': [[text, text_pair], ...]",
                               param=name)
        return [(obj["text"], obj["text_pair"])]
    value = obj["input"]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'input' must be a non-empty list of [text, text_pair] pairs", param="input")
    if len(value) > max_inputs:
        raise ApiError(413, f"'input' has {len(value)} items, over this server's limit of {max_inputs}", param="input")
    pairs = []
    for index, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ApiError(400, f"input[{index}] must be a [text, text_pair] pair of strings (next-sentence "
                                "prediction reads sentence pairs)", param="input")
        pairs.append((item[0], item[1]))
    return pairs


@router.post("/v1/next_sentence")
async def next_sentence(request: Request) -> Response:
    state, obj = await _request(request)
    state.require("next_sentence")
    pairs = _pair_list(obj, state.config.max_inputs)
    encodings = await _pairs(state, pairs, "truncate" if get_bool(obj, "truncate", True) else "error")
    ids = [e.ids for e in encodings]
    rows = await state.infer(ids, [e.type_ids for e in encodings], "next_sentence")
    data = [{"index": i, "probability": float(torch.softmax(r.double(), -1)[0])} for i, r in enumerate(rows)]
    return _json({"object": "list", "data": data, "model": state.model_name, "usage": _usage(ids)})

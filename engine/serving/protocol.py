"""Request parsing and response encoding for the three protocols the server speaks.

- OpenAI embeddings: ``{"input": str | [str] | [int] | [[int]], "model", "encoding_format"}``.
- bertrt task endpoints: ``{"input": str | [str], "truncate", ...}`` for classify / ner, and
  ``{"question", "context", ...}`` for qa.
- KServe v2 / Open Inference Protocol ``infer``: JSON tensors, and the binary tensor extension
  (``Inference-Header-Content-Length``: a JSON header followed by raw tensor bytes).

Every parse error is an ``ApiError`` whose message names the offending field.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field

import numpy as np

try:  # orjson writes numpy arrays directly and is several times faster than json
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    _loads, _JSONError = orjson.loads, orjson.JSONDecodeError
except ImportError:  # the same output, slower
    import json

    def _plain(value):
        if isinstance(value, (np.ndarray, np.generic)):
            return value.tolist()
        raise TypeError(f"cannot write {type(value).__name__} as JSON")

    def dumps(obj) -> bytes:
        return json.dumps(obj, default=_plain, separators=(",", ":"), ensure_ascii=False).encode()

    _loads, _JSONError = json.loads, json.JSONDecodeError


class ApiError(Exception):
    """An HTTP error answer: status, a message naming what is wrong, and optional headers."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def loads_object(body: bytes) -> dict:
    if not body:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        obj = _loads(body)
    except (_JSONError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_json_type(obj)}")
    return obj


def _json_type(value) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def get_bool(obj: dict, name: str, default: bool) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean, got {_json_type(value)}", param=name)
    return value


def get_int(obj: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = obj.get(name, default)
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be an integer in [{low}, {high}], got {value!r}", param=name)
    return value


def get_choice(obj: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = obj.get(name, default)
    if value not in choices:
        raise ApiError(400, f"'{name}' must be one of {list(choices)}, got {value!r}", param=name)
    return value


def _check_count(count: int, max_inputs: int, name: str) -> None:
    if count == 0:
        raise ApiError(400, f"'{name}' must not be empty", param=name)
    if count > max_inputs:
        raise ApiError(
            413, f"'{name}' has {count} items, over this server's limit of {max_inputs} per request", param=name
        )


# -- OpenAI embeddings and the task endpoints ----------------------------------------------------------


@dataclass
class EmbeddingsRequest:
    texts: list[str] | None  # exactly one of texts / token_ids
    token_ids: list[list[int]] | None
    encoding_format: str = "float"
    truncate: bool = True
    dimensions: int | None = None


def parse_embeddings(obj: dict, max_inputs: int) -> EmbeddingsRequest:
    if "input" not in obj:
        raise ApiError(400, "missing field 'input' (a string, a list of strings, or token ids)", param="input")
    if "model" in obj and not isinstance(obj["model"], str):
        raise ApiError(400, f"'model' must be a string, got {_json_type(obj['model'])}", param="model")
    value = obj["input"]
    texts = token_ids = None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        _check_count(len(value), max_inputs, "input")
        if all(isinstance(v, str) for v in value):
            texts = value
        elif all(_is_int(v) for v in value):
            token_ids = [value]
        else:
            for index, row in enumerate(value):
                if not isinstance(row, list) or not all(_is_int(t) for t in row):
                    raise ApiError(
                        400,
                        f"input[{index}] must be a string or a list of integer token ids "
                        f"(all items of one kind), got {_json_type(row)}",
                        param="input",
                    )
                if not row:
                    raise ApiError(400, f"input[{index}] is an empty list of token ids", param="input")
            token_ids = value
    else:
        raise ApiError(
            400,
            "'input' must be a string, a list of strings, a list of token ids or a list of lists "
            f"of token ids, got {_json_type(value)}",
            param="input",
        )
    dimensions = obj.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise ApiError(400, f"'dimensions' must be a positive integer, got {dimensions!r}", param="dimensions")
    return EmbeddingsRequest(
        texts,
        token_ids,
        get_choice(obj, "encoding_format", "float", ("float", "base64")),
        get_bool(obj, "truncate", True),
        dimensions,
    )


def encode_embedding(vector: np.ndarray, encoding_format: str):
    """float32 (hidden,) -> a JSON list, or base64 of little-endian float32 bytes (OpenAI's format)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector


def parse_texts(obj: dict, max_inputs: int) -> list[str]:
    """The 'input' field of the classify / ner endpoints: a string or a list of strings."""
    if "input" not in obj:
        raise ApiError(400, "missing field 'input' (a string or a list of strings)", param="input")
    value = obj["input"]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ApiError(400, f"'input' must be a string or a list of strings, got {_json_type(value)}", param="input")
    _check_count(len(value), max_inputs, "input")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(400, f"input[{index}] must be a string, got {_json_type(item)}", param="input")
    return value


@dataclass
class QaRequest:
    question: str
    context: str
    top_k: int
    max_answer_length: int
    doc_stride: int
    max_length: int


def parse_qa(obj: dict, model_max_length: int) -> QaRequest:
    for name in ("question", "context"):
        if name not in obj:
            raise ApiError(400, f"missing field '{name}' (a string)", param=name)
        if not isinstance(obj[name], str):
            raise ApiError(400, f"'{name}' must be a string, got {_json_type(obj[name])}", param=name)
        if not obj[name].strip():
            raise ApiError(400, f"'{name}' must not be empty", param=name)
    max_length = get_int(obj, "max_length", min(384, model_max_length), 16, model_max_length)
    doc_stride = get_int(obj, "doc_stride", min(128, max_length // 2), 1, max_length - 1)
    return QaRequest(
        obj["question"],
        obj["context"],
        get_int(obj, "top_k", 1, 1, 20),
        get_int(obj, "max_answer_length", 15, 1, 512),
        doc_stride,
        max_length,
    )


# -- KServe v2 -----------------------------------------------------------------------------------------

NUMPY_DTYPES = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass
class V2Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: object  # np.ndarray of the shape, or a list of str for BYTES


@dataclass
class V2Request:
    id: str | None
    inputs: dict[str, V2Tensor]
    outputs: list[tuple[str, bool]] | None  # (name, binary) or None for "all"
    binary_output: bool = False
    parameters: dict = field(default_factory=dict)


def _flatten(data, name: str) -> list:
    if not isinstance(data, list):
        raise ApiError(400, f"input '{name}': 'data' must be an array, got {_json_type(data)}")
    if not data or not isinstance(data[0], list):
        return data
    flat: list = []
    stack = [data]
    while stack:  # nested row-major arrays, flattened in order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _decode_binary_bytes(raw: bytes, name: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(400, f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ApiError(400, f"input '{name}': BYTES element overruns its binary data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def _parse_tensor(spec, binary: memoryview, offset: int, max_elements: int) -> tuple[V2Tensor, int]:
    if not isinstance(spec, dict):
        raise ApiError(400, f"each of 'inputs' must be an object, got {_json_type(spec)}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "an input has no string 'name'")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype != "BYTES" and datatype not in NUMPY_DTYPES:
        raise ApiError(400, f"input '{name}': unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ApiError(400, f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    count = int(np.prod(shape)) if shape else 1
    if count > max_elements:
        raise ApiError(413, f"input '{name}': {count} elements, over this server's limit of {max_elements}")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, f"input '{name}': 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0 or offset + size > len(binary):
            raise ApiError(400, f"input '{name}': binary_data_size {size!r} does not fit the request's binary data")
        raw = bytes(binary[offset : offset + size])
        offset += size
        if datatype == "BYTES":
            values: object = _decode_binary_bytes(raw, name)
            got = len(values)  # type: ignore[arg-type]
        else:
            itemsize = np.dtype(NUMPY_DTYPES[datatype]).itemsize
            if size != count * itemsize:
                raise ApiError(
                    400, f"input '{name}': shape {shape} of {datatype} needs {count * itemsize} bytes, got {size}"
                )
            values = np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")).reshape(shape)
            got = count
    else:
        if "data" not in spec:
            raise ApiError(400, f"input '{name}': no 'data' and no binary_data_size parameter")
        flat = _flatten(spec["data"], name)
        got = len(flat)
        if datatype == "BYTES":
            values = flat
        else:
            kind = np.dtype(NUMPY_DTYPES[datatype]).kind
            check = _is_int if kind in "iu" else (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
            if kind == "b":
                check = lambda v: isinstance(v, bool)
            bad = next((v for v in flat if not check(v)), None)
            if bad is not None:
                raise ApiError(400, f"input '{name}': {datatype} data holds {_json_type(bad)} {bad!r}")
            if got == count:
                try:
                    values = np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
                except OverflowError:
                    raise ApiError(400, f"input '{name}': a value is out of {datatype} range") from None
    if got != count:
        raise ApiError(400, f"input '{name}': shape {shape} needs {count} elements, got {got}")
    if datatype == "BYTES":
        values = decode_texts(values, name)  # type: ignore[arg-type]
    return V2Tensor(name, datatype, shape, values), offset


def decode_texts(values: list, name: str) -> list[str]:
    """BYTES elements (bytes or str) -> str, 400 naming the element that is not UTF-8 text."""
    texts = []
    for index, item in enumerate(values):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"input '{name}': element {index} is not valid UTF-8") from None
        if not isinstance(item, str):
            raise ApiError(400, f"input '{name}': BYTES element {index} must be a string, got {_json_type(item)}")
        texts.append(item)
    return texts


def parse_v2_infer(body: bytes, header_length: int | None, max_elements: int) -> V2Request:
    """The infer request body; with header_length, body = JSON header + binary tensor data."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ApiError(
                400, f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)"
            )
        obj, binary = loads_object(body[:header_length]), memoryview(body)[header_length:]
    else:
        obj, binary = loads_object(body), memoryview(b"")
    specs = obj.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise ApiError(400, "'inputs' must be a non-empty array of tensors")
    inputs: dict[str, V2Tensor] = {}
    offset = 0
    for spec in specs:
        tensor, offset = _parse_tensor(spec, binary, offset, max_elements)
        if tensor.name in inputs:
            raise ApiError(400, f"input '{tensor.name}' is given twice")
        inputs[tensor.name] = tensor
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be an object")
    binary_output = bool(parameters.get("binary_data_output", False))
    outputs = None
    if obj.get("outputs") is not None:
        if not isinstance(obj["outputs"], list):
            raise ApiError(400, "'outputs' must be an array")
        outputs = []
        for spec in obj["outputs"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ApiError(400, "each of 'outputs' must be an object with a string 'name'")
            params = spec.get("parameters") or {}
            outputs.append((spec["name"], bool(params.get("binary_data", binary_output))))
    request_id = obj.get("id")
    return V2Request(request_id if isinstance(request_id, str) else None, inputs, outputs, binary_output, parameters)


def _v2_datatype(array) -> str:
    if isinstance(array, list):
        return "BYTES"
    return {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}[array.dtype]


def encode_v2_response(
    model_name: str, request_id: str | None, outputs: list[tuple[str, object, bool]]
) -> tuple[bytes, int | None]:
    """outputs: (name, np.ndarray or list of str, binary). Returns (body, header length or None)."""
    tensors, chunks = [], []
    for name, array, binary in outputs:
        if isinstance(array, list):
            shape = [len(array)]
        else:
            shape = list(array.shape)
        tensor = {"name": name, "datatype": _v2_datatype(array), "shape": shape}
        if binary:
            if isinstance(array, list):
                raw = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in array))
            else:
                raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array if isinstance(array, list) else array.reshape(-1)
        tensors.append(tensor)
    response: dict = {"model_name": model_name, "model_version": "1", "outputs": tensors}
    if request_id is not None:
        response["id"] = request_id
    header = dumps(response)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)

"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``).

The service messages are the standard ones, as ``tritonclient.grpc`` ships them (``service_pb2``), so
Triton clients and perf_analyzer work unchanged. It runs on the server's own event loop (grpc.aio),
beside the HTTP app: the same ServerState, batcher, limits, API key and metrics as HTTP. Inputs come
as typed contents or as ``raw_input_contents``; outputs go back as ``raw_output_contents`` (what
tritonclient reads), in the order the request asked for them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
import time

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .. import __version__
from .models import ModelSet
from .protocol import NUMPY_DTYPES, ApiError, V2Request, V2Tensor, decode_texts
from .routes_v2 import input_specs, model_config, output_specs, run_infer
from .state import REQUEST_DEADLINE, ServerState

log = logging.getLogger("bertrt.serving")

STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# typed contents field of InferTensorContents per datatype
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _tensor(spec, raw: bytes | None, max_elements: int) -> V2Tensor:
    name, datatype, shape = spec.name, spec.datatype, list(spec.shape)
    if datatype != "BYTES" and datatype not in NUMPY_DTYPES:
        raise ApiError(400, f"input '{name}': unknown datatype {datatype!r}")
    if any(d < 0 for d in shape):
        raise ApiError(400, f"input '{name}': shape {shape} has a negative dimension")
    count = 1
    for d in shape:  # Python integers: no int64 overflow, and no allocation before the check
        count *= d
        if count > max_elements:
            raise ApiError(413, f"input '{name}': shape {shape} is over this server's limit of {max_elements} "
                                "elements")
    if raw is not None:
        if datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                if offset + 4 > len(raw):
                    raise ApiError(400, f"input '{name}': truncated BYTES element length")
                (length,) = struct.unpack_from("<I", raw, offset)
                if offset + 4 + length > len(raw):
                    raise ApiError(400, f"input '{name}': BYTES element overruns its raw contents")
                items.append(raw[offset + 4:offset + 4 + length])
                offset += 4 + length
            values: object = items
            got = len(items)
        else:
            itemsize = np.dtype(NUMPY_DTYPES[datatype]).itemsize
            if len(raw) != count * itemsize:
                raise ApiError(400, f"input '{name}': shape {shape} of {datatype} needs {count * itemsize} raw "
                                    f"bytes, got {len(raw)}")
            values = np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")).reshape(shape)
            got = count
    else:
        field = CONTENTS[datatype]
        flat = list(getattr(spec.contents, field))
        got = len(flat)
        values = flat if datatype == "BYTES" else (
            np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape) if got == count else None)
    if got != count:
        raise ApiError(400, f"input '{name}': shape {shape} needs {count} elements, got {got}")
    if datatype == "BYTES":
        values = decode_texts(values, name)
    return V2Tensor(name, datatype, shape, values)


def parse_request(request, max_elements: int) -> V2Request:
    """ModelInferRequest -> the same V2Request the HTTP route parses."""
    if not request.inputs:
        raise ApiError(400, "'inputs' must hold at least one tensor")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: dict[str, V2Tensor] = {}
    for index, spec in enumerate(request.inputs):
        tensor = _tensor(spec, raw[index] if raw else None, max_elements)
        if tensor.name in inputs:
            raise ApiError(400, f"input '{tensor.name}' is given twice")
        inputs[tensor.name] = tensor
    parameters = {}
    for key, value in request.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        parameters[key] = getattr(value, kind) if kind else None
    outputs = [(o.name, True) for o in request.outputs] or None
    return V2Request(request.id or None, inputs, outputs, True, parameters)


def _encode(state: ServerState, request_id: str, wanted, arrays: dict):
    response = service_pb2.ModelInferResponse(model_name=state.model_name, model_version="1", id=request_id)
    for name, _ in wanted:
        array = arrays[name]
        if isinstance(array, list):
            encoded = [s.encode("utf-8") for s in array]
            raw = b"".join(struct.pack("<I", len(b)) + b for b in encoded)
            datatype, shape = "BYTES", [len(array)]
        else:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            datatype = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}[array.dtype]
            shape = list(array.shape)
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return response


def _config_message(config: dict):
    """routes_v2.model_config's dict as Triton's ModelConfig message (perf_analyzer asks it first)."""
    def tensors(specs, message, optional: bool):
        out = []
        for spec in specs:
            kind = "STRING" if spec["datatype"] == "BYTES" else spec["datatype"]
            fields = dict(name=spec["name"], data_type=model_config_pb2.DataType.Value(f"TYPE_{kind}"),
                          dims=spec["shape"])
            if optional:
                fields["optional"] = bool(spec.get("optional", False))
            out.append(message(**fields))
        return out

    batching = config["dynamic_batching"]
    return model_config_pb2.ModelConfig(
        name=config["name"], platform=config["platform"], backend=config["backend"],
        max_batch_size=config["max_batch_size"],
        input=tensors(config["input"], model_config_pb2.ModelInput, True),
        output=tensors(config["output"], model_config_pb2.ModelOutput, False),
        dynamic_batching=model_config_pb2.ModelDynamicBatching(
            max_queue_delay_microseconds=batching["max_queue_delay_microseconds"]),
        parameters={key: model_config_pb2.ModelParameter(string_value=str(config[key]))
                    for key in ("task", "device", "precision", "max_inputs", "max_sequence_length")},
    )


def _spec_messages(specs, message):
    return [message(name=s["name"], datatype=s["datatype"], shape=s["shape"]) for s in specs]


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Health, metadata, infer and the repository extension for the server's models."""

    def __init__(self, models: ModelSet):
        self.models = models

    @property
    def state(self) -> ServerState:
        """The default model: its config holds the server-wide key and limits, its metrics the calls."""
        return self.models.states[self.models.default]

    async def _guard(self, context, method: str, work):
        """API key, draining, metrics and ApiError -> gRPC status, around ``work()``."""
        state, start, code = self.state, time.perf_counter(), 200
        try:
            key = state.config.api_key
            if key and method not in ("ServerLive", "ServerReady") and not _authorized(context, key):
                code = 401
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing or wrong API key (metadata 'authorization: Bearer KEY' or 'x-api-key')")
            if state.draining and method not in ("ServerLive", "ServerReady"):
                code = 503
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            # --timeout from the call's arrival (or the client's own deadline, if sooner), tokenization
            # and queueing included, as for HTTP (guard.py)
            budget = state.config.timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                budget = min(budget, remaining)
            REQUEST_DEADLINE.set(asyncio.get_running_loop().time() + budget)
            try:
                return await asyncio.wait_for(work(), budget)
            except asyncio.TimeoutError:
                code = 504
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"request did not finish within {budget:g} s")
            except ApiError as exc:
                code = exc.status
                await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # never a crashed stream: an INTERNAL status naming the error
            code = 500
            log.exception("internal error in gRPC %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            state.metrics.observe_request(f"grpc:{method}", code, time.perf_counter() - start)

    def _model(self, name: str) -> ServerState:
        return self.models.named(name)

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        ready = self.models.started and all(s.ready and not s.draining for s in self.models.states.values())
        return service_pb2.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):
        async def work():
            state = self._model(request.name)
            return service_pb2.ModelReadyResponse(ready=state.ready and not state.draining)

        return await self._guard(context, "ModelReady", work)

    async def ServerMetadata(self, request, context):
        async def work():
            return service_pb2.ServerMetadataResponse(name="bertrt", version=__version__, extensions=[])

        return await self._guard(context, "ServerMetadata", work)

    async def ModelMetadata(self, request, context):
        async def work():
            state = self._model(request.name)
            message = service_pb2.ModelMetadataResponse
            return message(name=state.model_name, versions=["1"], platform=f"bertrt_{state.engine.backend}",
                           inputs=_spec_messages(input_specs(state), message.TensorMetadata),
                           outputs=_spec_messages(output_specs(state), message.TensorMetadata))

        return await self._guard(context, "ModelMetadata", work)

    async def ModelConfig(self, request, context):
        async def work():
            return service_pb2.ModelConfigResponse(config=_config_message(model_config(self._model(request.name))))

        return await self._guard(context, "ModelConfig", work)

    async def ModelInfer(self, request, context):
        async def work():
            state = self._model(request.model_name)
            parsed = parse_request(request, state.config.max_inputs * state.max_length)
            wanted, arrays = await run_infer(state, parsed)
            return _encode(state, request.id, wanted, arrays)

        return await self._guard(context, "ModelInfer", work)


    async def RepositoryIndex(self, request, context):
        async def work():
            message = service_pb2.RepositoryIndexResponse
            return message(models=[message.ModelIndex(name=e["name"], version=e["version"], state=e["state"],
                                                      reason=e.get("reason", ""))
                                   for e in self.models.index() if not request.ready or e["state"] == "READY"])

        return await self._guard(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request, context):
        async def work():
            await self.models.load(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()

        return await self._guard(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request, context):
        async def work():
            await self.models.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await self._guard(context, "RepositoryModelUnload", work)


def _authorized(context, key: str) -> bool:
    metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
    given = metadata.get("x-api-key")
    if given is None:
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(given.encode(), key.encode())


async def start(models: ModelSet, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """(a started grpc.aio server on host:port for ``models``, the port it bound; port 0 takes a free one)."""
    state = models.states[models.default]
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", state.config.max_body_bytes),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(models), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("grpc ready", extra={"fields": {"port": bound}})
    return server, bound

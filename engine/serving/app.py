"""The ASGI app: routes for KServe v2, OpenAI embeddings and the task endpoints, plus the gate in front
of them (API key, draining, body size, request id, metrics, one structured log line per request)."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .._version import __version__
from .config import ServeConfig
from .guard import CLIENT_CLOSED, BodyTimeout, run_bounded, stalled_body_answer
from .models import ModelSet
from .protocol import ApiError, dumps
from .routes_tasks import router as tasks_router
from .routes_tei import TeiError, tei_error_body
from .routes_tei import router as tei_router
from .routes_v1 import router as v1_router
from .routes_v2 import router as v2_router

log = logging.getLogger("bertrt.serving")

# Reachable without the API key and while draining: probes must see the truth.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")


# TEI-compatible routes answer errors in TEI's shape
TEI_PATHS = ("/embed", "/embed_all", "/embed_sparse", "/predict", "/rerank", "/tokenize", "/decode", "/info", "/health")
TEI_KINDS = {401: "validation", 413: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}


def error_body(path: str, status: int, message: str, param: str | None = None) -> bytes:
    """v2 paths answer {"error": message} (the Open Inference Protocol's form), TEI's routes
    {"error", "error_type"}; others the OpenAI form."""
    if path.startswith("/v2"):
        return dumps({"error": message})
    if path in TEI_PATHS:
        return tei_error_body(message, TEI_KINDS.get(status, "validation" if status < 500 else "backend"))
    kind = {
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    return dumps({"error": {"message": message, "type": kind, "param": param, "code": status}})


def error_response(
    request: Request, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(request.url.path, status, message, param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class Gate:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = self.state
        start = time.perf_counter()
        path = scope["path"]
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        async def refuse(code: int, message: str, extra: dict[str, str] | None = None):
            body = error_body(path, code, message)
            response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            response_headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
            await send_with_id({"type": "http.response.start", "status": code, "headers": response_headers})
            await send_with_id({"type": "http.response.body", "body": body})

        state.metrics.in_flight.inc()
        try:
            length = headers.get(b"content-length")
            if state.config.api_key and path not in OPEN_PATHS and not _authorized(headers, state.config.api_key):
                await refuse(
                    401,
                    "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                    {"WWW-Authenticate": "Bearer"},
                )
            elif state.draining and path not in OPEN_PATHS:
                await refuse(503, "server is shutting down", {"Retry-After": str(state.config.retry_after_s)})
            elif length is not None and length.isdigit() and int(length) > state.config.max_body_bytes:
                await refuse(
                    413,
                    f"request body of {int(length)} bytes is over this server's limit of "
                    f"{state.config.max_body_bytes} bytes",
                )
            else:
                state.in_flight += 1
                try:
                    ended = await run_bounded(self.app, scope, receive, send_with_id, state, refuse)
                finally:
                    state.in_flight -= 1
                if ended is not None:
                    status = ended
        finally:
            state.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            state.metrics.observe_request(endpoint, status, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": path,
                            "endpoint": endpoint,
                            "status": status,
                            "ms": round(seconds * 1000, 3),
                            "client": (scope.get("client") or ("", 0))[0],
                        }
                    },
                )


def _authorized(headers: dict[bytes, bytes], key: str) -> bool:
    expected = key.encode()
    given = headers.get(b"x-api-key")
    if given is None:
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        given = token.strip() if scheme.lower() == b"bearer" else b""
    return hmac.compare_digest(given, expected)


def create_app(engine, config: ServeConfig | None = None) -> FastAPI:
    """An ASGI app serving ``engine`` (an Engine, or a ModelSet of several); the batchers start and
    drain with the app's lifespan."""
    config = config or ServeConfig()
    models = engine if isinstance(engine, ModelSet) else ModelSet(config)
    if not isinstance(engine, ModelSet):
        models.add(config.model_name, engine)
    state = models.states[models.default]  # the default model; its config holds the server-wide limits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await models.start()
        grpc = None
        if state.config.grpc_port is not None:
            from . import grpc_server  # grpcio + tritonclient[grpc]: only when gRPC is asked for

            grpc, app.state.grpc_port = await grpc_server.start(models, state.config.grpc_host,
                                                                 state.config.grpc_port)
        for name, each in models.states.items():
            log.info("ready", extra={"fields": {"model": name, "tasks": list(each.tasks), "engine": repr(each.engine)}})
        try:
            yield
        finally:
            log.info("draining", extra={"fields": {"queued": sum(s.batcher.depth for s in models.states.values())}})
            if grpc is not None:
                await grpc.stop(grace=state.config.timeout_s)
            models.drain()
            await models.stop()
            log.info("stopped", extra={"fields": {}})

    app = FastAPI(title="bertrt", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.bertrt = state
    app.state.models = models
    app.include_router(v2_router)
    app.include_router(v1_router)
    app.include_router(tei_router)
    app.include_router(tasks_router)  # /rerank, /v1/rerank, /embed_sparse, /v1/fill_mask, /v1/next_sentence

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if isinstance(exc, TeiError):
            return Response(tei_error_body(exc.message, exc.error_type), status_code=exc.status,
                            media_type="application/json", headers=exc.headers)
        return error_response(request, exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request, 422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(BodyTimeout)
    async def body_timeout(request: Request, exc: BodyTimeout):
        code, message, headers = stalled_body_answer(state.config)
        return error_response(request, code, message, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):  # nobody reads it; counted as 499
        return error_response(request, CLIENT_CLOSED, "client closed the request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(request, 500, f"internal error: {type(exc).__name__}: {exc}")

    app.add_middleware(Gate, state=state)
    return app


def _version() -> str:
    return __version__

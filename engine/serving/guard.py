"""One HTTP request's bounds, around the app: its whole-request deadline (``--timeout``: body,
tokenization, queueing and inference), a stall limit on its body (408, or ``body_timeout_status``),
and its client going away (the work is cancelled and the request counted as 499, never as a 500)."""

from __future__ import annotations

import asyncio

from .state import REQUEST_DEADLINE

CLIENT_CLOSED = 499  # nginx's code for "client closed the request": an answer nobody reads


class BodyTimeout(Exception):
    """The client stopped sending its request body."""


def stalled_body_answer(config) -> tuple[int, str, dict[str, str] | None]:
    """(status, message, headers) for a request whose body stopped coming (``config.body_timeout_status``)."""
    message = f"request body stalled: no data for {config.body_timeout_s:g} s"
    if config.body_timeout_status == 408:
        return 408, message, None
    return config.body_timeout_status, f"{message}; retry", {"Retry-After": str(config.retry_after_s)}


async def run_bounded(app, scope, receive, send, state, refuse) -> int | None:
    """Run ``app`` for one request; returns the status to record when the guard ended it
    (504, 408 or 499), None when the app answered by itself. ``refuse(code, message)`` answers."""
    config = state.config
    loop = asyncio.get_running_loop()
    REQUEST_DEADLINE.set(loop.time() + config.timeout_s)
    body_done = asyncio.Event()
    gone = asyncio.Event()
    started = False
    stalled = False

    async def bounded_receive():
        nonlocal stalled
        if body_done.is_set():  # after the body only a disconnect can come: the watcher hears it
            await gone.wait()
            return {"type": "http.disconnect"}
        try:
            message = await asyncio.wait_for(receive(), config.body_timeout_s)
        except asyncio.TimeoutError:
            stalled = True
            raise BodyTimeout(f"no request body data for {config.body_timeout_s:g} s") from None
        if message["type"] == "http.disconnect":
            gone.set()
        elif not message.get("more_body", False):
            body_done.set()
        return message

    async def tracking_send(message):
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    async def watch():
        await body_done.wait()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    work = loop.create_task(app(scope, bounded_receive, tracking_send))
    watcher = loop.create_task(watch())
    disconnected = loop.create_task(gone.wait())
    try:
        done, _ = await asyncio.wait({work, disconnected}, timeout=config.timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            if stalled and not started:
                await refuse(*stalled_body_answer(config))
                return config.body_timeout_status
            try:
                work.result()
            except BodyTimeout:
                if not started:
                    await refuse(*stalled_body_answer(config))
                return config.body_timeout_status
            return None
        work.cancel()  # drops its queued sequences (DynamicBatcher.run cancels their futures)
        await asyncio.gather(work, return_exceptions=True)
        if gone.is_set():
            return CLIENT_CLOSED
        if not started:
            await refuse(504, f"request did not finish within {config.timeout_s:g} s")
        return 504
    finally:
        watcher.cancel()
        disconnected.cancel()


def header_timeout_protocol(base: type, seconds: float) -> type:
    """A uvicorn HTTP protocol class that closes a connection whose request headers are not complete
    ``seconds`` after its first byte (or after it opened): slowloris clients are cut off (408)."""

    class HeaderTimeoutProtocol(base):
        _header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_expired(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol

"""A real uvicorn server on a loopback port in a background thread, for the serving tests."""

from __future__ import annotations

import socket
import threading
import time

from bertrt.serving import ServeConfig, create_app
from bertrt.serving.cli import build_server


class SlowRunner:
    """Wraps a runner; sleeps ``delay`` seconds before each batch (to build queues on purpose)."""

    def __init__(self, runner, delay: float = 0.0):
        self.runner = runner
        self.model = getattr(runner, "model", None)
        self.plan = getattr(runner, "plan", None)  # the server reads the kernel plan to pick its workers
        self.name = runner.name
        self.delay = delay
        self.batches: list[int] = []  # sequences per batch run
        self.running = self.most_running = 0  # batches running at once (several server workers)
        self._lock = threading.Lock()

    def run(self, batch, task):
        with self._lock:
            self.batches.append(len(batch.indices))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self.runner.run(batch, task)
        finally:
            with self._lock:
                self.running -= 1


class LiveServer:
    def __init__(self, engine, **config):
        config.setdefault("model_name", "test-model")
        self.config = ServeConfig(**config)
        self.app = create_app(engine, self.config)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(self.app, sock=self.sock, graceful_timeout=20)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def shutdown(self) -> None:
        """What SIGTERM does: drain, then exit."""
        self.server.handle_exit(15, None)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu river stone cloud garden"
).split()


def sentence(i: int, words: int = 8) -> str:
    """Distinct text for each i (its digits are spelled into the words)."""
    picked = [WORDS[(i * 7 + k * 13 + (i // (k + 1))) % len(WORDS)] for k in range(words)]
    return f"item {i} " + " ".join(picked)

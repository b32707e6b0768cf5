"""Dynamic batching: concurrent requests' sequences queue up and run together, padding-free.

Worker tasks (``workers``, one by default) share the queue. An idle worker takes the oldest waiting
sequence, waits until the queue holds ``max_batch_tokens`` tokens of that task or ``max_wait`` has
passed since that sequence arrived, then runs every waiting sequence of the task that fits the
budget as one packed batch in an executor thread of its own, so the event loop never blocks on
inference. While batches run, new arrivals queue and form the next batch, so under load batches
grow by themselves and an idle server adds at most ``max_wait`` to a request's latency.

With two workers on a CPU, two batches run at once, each on part of the cores (the run function
reads ``active``: see ServerState). That overlaps one batch's serial parts (Python, packing,
pooling) with the other's GEMMs, and one-thread GEMMs need no barriers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# run(ids, type_ids, task) -> one output per sequence, in order (Engine.run_encodings)
RunFunction = Callable[[list[list[int]], list[list[int]], str], list]


class QueueFull(Exception):
    """The queue cannot take the request's sequences now; the client should retry later."""


class Draining(Exception):
    """The server is shutting down and accepts no new work."""


class RequestTimeout(Exception):
    """The request's sequences did not finish before its deadline."""


@dataclass(eq=False)
class _Item:
    ids: Sequence[int]
    type_ids: Sequence[int]
    task: str
    future: asyncio.Future
    deadline: float  # loop time
    enqueued: float = field(default=0.0)


@dataclass
class BatchStats:
    """What one batch did, for metrics: sequences, tokens, seconds in the runner and each
    sequence's wait in the queue."""

    task: str
    size: int
    tokens: int
    run_seconds: float
    queue_waits: list[float]


class DynamicBatcher:
    def __init__(
        self,
        run: RunFunction,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 256,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run = run
        self.workers = workers
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda stats: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._queue: deque[_Item] = deque()
        self._tokens: dict[str, int] = {}  # tokens waiting, per task
        self._wakeup: asyncio.Event | None = None
        self._worker_tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._active_lock = threading.Lock()
        self.active = 0  # batches running now (read by run functions from their threads)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="bertrt-infer")
        loop = asyncio.get_running_loop()
        self._worker_tasks = [loop.create_task(self._work(), name=f"bertrt-batcher-{i}") for i in range(self.workers)]

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Stop taking work, finish what is queued (up to drain_timeout seconds), stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker_tasks:
            everyone = asyncio.gather(*self._worker_tasks)
            try:
                await asyncio.wait_for(asyncio.shield(everyone), drain_timeout)
            except asyncio.TimeoutError:
                for task in self._worker_tasks:
                    task.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Draining("server shut down before this request ran"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return sum(len(item.ids) for item in self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def busy(self) -> bool:
        """A batch is running."""
        return self.active > 0

    # -- submitting ----------------------------------------------------------------------------------

    def submit(
        self, ids: list[Sequence[int]], type_ids: list[Sequence[int]], task: str, timeout: float
    ) -> list[asyncio.Future]:
        """Queue sequences (all or none); one future per sequence. Raises QueueFull or Draining."""
        if self._closing:
            raise Draining("server is shutting down")
        if len(self._queue) + len(ids) > self.max_queue:
            raise QueueFull(f"queue is full ({len(self._queue)} of {self.max_queue} sequences waiting)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for seq, types in zip(ids, type_ids):
            future = loop.create_future()
            self._queue.append(_Item(seq, types, task, future, now + timeout, now))
            futures.append(future)
        self._tokens[task] = self._tokens.get(task, 0) + sum(len(s) for s in ids)
        self._on_queue_depth(len(self._queue))
        self._wakeup.set()
        return futures

    async def run(self, ids: list[Sequence[int]], type_ids: list[Sequence[int]], task: str, timeout: float) -> list:
        """Queue sequences and wait for their outputs, in order. Raises QueueFull, Draining,
        RequestTimeout, or what the runner raised."""
        futures = self.submit(ids, type_ids, task, timeout)
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"request did not finish within {timeout:g} s") from None
        finally:
            for future in futures:  # on timeout or cancellation the worker skips them
                if not future.done():
                    future.cancel()

    # -- the worker ----------------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._queue[0]
            if oldest.future.done():  # cancelled or timed out while waiting
                self._pop_left()
                continue
            close_at = oldest.enqueued + self.max_wait
            while (
                not self._closing
                and self._tokens.get(oldest.task, 0) < self.max_batch_tokens
                and len(self._queue) < self.max_batch_size
            ):
                remaining = close_at - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(oldest.task, loop.time())
            if not batch:
                continue
            try:
                stats, outputs = await loop.run_in_executor(self._executor, self._run_batch, batch, loop.time())
            except Exception as exc:  # the runner failed: every caller in the batch hears it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, output in zip(batch, outputs):
                if not item.future.done():
                    item.future.set_result(output)
            self._on_batch(stats)

    def _run_batch(self, batch: list[_Item], started: float) -> tuple[BatchStats, list]:
        with self._active_lock:
            self.active += 1
        try:
            begin = time.perf_counter()
            outputs = self._run([list(i.ids) for i in batch], [list(i.type_ids) for i in batch], batch[0].task)
            seconds = time.perf_counter() - begin
        finally:
            with self._active_lock:
                self.active -= 1
        stats = BatchStats(
            batch[0].task, len(batch), sum(len(i.ids) for i in batch), seconds, [started - i.enqueued for i in batch]
        )
        return stats, outputs

    def _pop_left(self) -> None:
        item = self._queue.popleft()
        self._tokens[item.task] -= len(item.ids)
        self._on_queue_depth(len(self._queue))

    def _take(self, task: str, now: float) -> list[_Item]:
        """Remove and return the queued sequences of ``task`` that fit the budget, oldest first;
        drop the ones already cancelled or past their deadline."""
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        tokens = 0
        for item in self._queue:
            if item.future.done():
                self._tokens[item.task] -= len(item.ids)
                continue
            if item.deadline <= now:
                self._tokens[item.task] -= len(item.ids)
                item.future.set_exception(RequestTimeout("request timed out in the queue"))
                continue
            fits = not batch or (tokens + len(item.ids) <= self.max_batch_tokens and len(batch) < self.max_batch_size)
            if item.task == task and fits:
                batch.append(item)
                tokens += len(item.ids)
                self._tokens[task] -= len(item.ids)
            else:
                kept.append(item)
        self._queue = kept
        self._on_queue_depth(len(kept))
        return batch

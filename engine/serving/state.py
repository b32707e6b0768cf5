"""What the routes share: the engine, the batcher, the tokenizer thread, metrics and the limits."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import tasks
from ..batching import pack
from ..errors import InputError
from .batcher import Draining, DynamicBatcher, QueueFull, RequestTimeout
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import ApiError
from .tracing import Tracing

# Requests up to this size are tokenized on the event loop (well under a millisecond).
INLINE_TEXTS = 8
INLINE_CHARS = 4096
# The loop time by which the current HTTP request must be answered (set by the app's Gate), so that
# --timeout covers queueing and tokenization too; unset (gRPC): timeout_s from the queue.
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("bertrt_deadline", default=None)


def batch_workers(engine, requested: int) -> tuple[int, int]:
    """(workers, cores): concurrent batches for ``engine`` and the threads they share. Several
    workers only where bertrt's CPU kernels run the GEMMs (their thread count is set per call; torch's
    GEMMs would oversubscribe the cores)."""
    cores = torch.get_num_threads()
    reason = _why_not_shared(engine) if requested > 1 else None
    if reason is not None:
        raise InputError(f"workers={requested} needs bertrt's CPU GEMMs: {reason}; use 1")
    return requested, cores


def _why_not_shared(engine) -> str | None:
    """None when the engine's kernel plan runs every GEMM in bertrt's CPU kernels (they take their
    thread count per call; torch's would oversubscribe the cores)."""
    plan = engine.plan
    if plan.device != "cpu" or getattr(engine, "backend", "torch") != "torch":
        return f"the engine runs on {engine.device} with backend {engine.backend}"
    model = engine.runner.model
    int8 = [m for m in model.modules() if hasattr(m, "kernel_for")]
    if int8:
        kernels = {m.kernel if m.kernel != "auto" else plan.int8 for m in int8}
        if kernels == {"packed"}:
            return None
        return f"its INT8 GEMMs run {sorted(kernels)} (only bertrt's packed kernel shares cores)"
    if plan.shares_cores:
        return None
    return "its GEMMs run in torch (oneDNN/MKL threads)"


class ServerState:
    """One served model: its engine, batcher, queue, tokenizer thread and metrics. ``compute``: a
    semaphore shared by the models of one server, so that their batches take turns on the cores
    instead of oversubscribing them (docs/serving.md, "Many models")."""

    def __init__(self, engine, config: ServeConfig, compute: threading.Semaphore | None = None,
                 metrics: ServerMetrics | None = None):
        self.engine = engine
        self.config = config
        self.metrics = metrics or ServerMetrics(model=config.model_name)
        self.workers, self._cores = batch_workers(engine, config.workers)
        run = self._run if self.workers > 1 else self._run_formed
        self._compute = compute
        self.batcher = DynamicBatcher(
            self._take_turns(run) if compute is not None else run,
            config.max_batch_tokens,
            config.max_batch_size,
            config.max_wait_ms,
            config.max_queue,
            on_batch=self.metrics.observe_batch,
            on_queue_depth=self._observe_queue,
            workers=self.workers,
            max_age_ms=config.max_age_ms,
        )
        # Small requests are tokenized inline on the event loop (tens of microseconds; a thread hop
        # would cost more), the others in a pool of tokenizer threads, in parallel with each other and
        # with inference (the tokenizers library releases the GIL). Every tokenization is bounded:
        # texts are pre-truncated (BertTokenizer.exact_prefixes) and QA windows counted first.
        self._tokenizer_thread: ThreadPoolExecutor | None = None
        self.tokenizing_tokens = 0  # admitted to tokenization, not yet in the batcher's queue
        self.in_flight = 0  # HTTP requests inside the app (the Gate counts them; shutdown waits)
        self.tracing = Tracing(config.otel, config.model_name)
        self.ready = False
        self.draining = False
        self.tasks = engine.config.tasks  # embed, the head's own task and its extras (fill_mask: embed_sparse)

    def _observe_queue(self, depth: int) -> None:
        self.metrics.queue_depth.set(depth)
        self.metrics.queue_tokens.set(self.batcher.queued_tokens)

    def _take_turns(self, run):
        def run_in_turn(*args):
            with self._compute:
                return run(*args)

        return run_in_turn

    def _run_formed(self, ids, type_ids, task):
        """The batch the batcher formed, run as it is (Engine.run_batch): one owner of batching."""
        return self.engine.run_batch(pack(ids, type_ids, list(range(len(ids)))), task)

    def _run(self, ids, type_ids, task):
        """_run_formed on this worker's share of the cores: all of them while it runs alone,
        cores / workers while the others run too (asked at every kernel call)."""
        from ..ops import cpu_kernels  # imports bertrt._C, an optional build

        with cpu_kernels.thread_budget(lambda: self._cores // max(1, self.batcher.active)):
            return self._run_formed(ids, type_ids, task)

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def max_length(self) -> int:
        return self.engine.tokenizer.max_length

    async def start(self) -> None:
        self._tokenizer_thread = ThreadPoolExecutor(self.config.tokenizer_workers, thread_name_prefix="bertrt-tokenize")
        await self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.draining = True
        self.ready = False
        await self.batcher.close(drain_timeout=self.config.timeout_s)
        if self._tokenizer_thread is not None:
            self._tokenizer_thread.shutdown(wait=True)

    def require(self, task: str) -> None:
        if task not in self.tasks:
            raise ApiError(
                404,
                f"this server's model ({self.engine.config.architecture}) has no {task} head; "
                f"it serves: {', '.join(self.tasks)}",
            )

    # -- off-loop work -------------------------------------------------------------------------------

    async def _tokenize(self, inline: bool, function, *args):
        with self.tracing.span("tokenize", inline=inline):
            return await self._tokenize_now(inline, function, *args)

    async def _tokenize_now(self, inline: bool, function, *args):
        try:
            if inline:
                return function(*args)
            return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, function, *args)
        except InputError as exc:
            raise ApiError(400, str(exc)) from None

    async def off_loop(self, function, *args):
        """function(*args) on a tokenizer thread (big request bodies are parsed there too)."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, function, *args)

    def admit(self, tokens: int, what: str) -> None:
        """Refuse, before any work, a request of ``tokens`` tokens (an upper bound) that can never fit
        the token budget (413) or does not fit it now (503)."""
        limit = self.config.max_queue_tokens
        if tokens > limit:
            raise ApiError(413, f"{what} needs up to {tokens} tokens, over this server's limit of {limit} "
                                "tokens per request (--max-queue-tokens)")
        if self.tokenizing_tokens + self.batcher.queued_tokens + tokens > limit:
            self.metrics.rejected.labels("queue_tokens").inc()
            raise ApiError(503, f"server overloaded: {self.tokenizing_tokens + self.batcher.queued_tokens} tokens "
                                f"admitted of this server's {limit} (--max-queue-tokens); retry later",
                           headers={"Retry-After": str(self.config.retry_after_s)})

    async def _admitted(self, tokens: int, what: str, inline: bool, function, *args):
        self.admit(tokens, what)
        self.tokenizing_tokens += tokens
        try:
            return await self._tokenize(inline, function, *args)
        finally:
            self.tokenizing_tokens -= tokens

    def text_tokens(self, texts: list[str]) -> int:
        """An upper bound on the tokens of ``texts`` after truncation, from their lengths (a character
        gives at most a few tokens: up to 4 UTF-8 bytes in byte-level BPE)."""
        specials = self.engine.tokenizer.num_special_tokens()
        return sum(min(self.max_length, 4 * len(t) + specials) for t in texts)

    async def tokenize(self, texts: list[str], truncate: bool):
        inline = len(texts) <= INLINE_TEXTS and sum(len(t) for t in texts) <= INLINE_CHARS
        return await self._admitted(
            self.text_tokens(texts), "the request", inline, self.engine.tokenizer.encode_batch, texts,
            "truncate" if truncate else "error"
        )

    async def tokenize_pairs(self, pairs: list[tuple[str, str]], truncation: str):
        """Sentence pairs (cross-encoders, NSP), admitted against the token budget like single texts."""
        inline = len(pairs) <= INLINE_TEXTS and sum(len(a) + len(b) for a, b in pairs) <= INLINE_CHARS
        tokens = sum(min(self.max_length, 4 * (len(a) + len(b)) + self.engine.tokenizer.num_special_tokens(pair=True))
                     for a, b in pairs)
        return await self._admitted(tokens, "the request", inline, self.engine.encode_pairs, pairs, truncation)

    async def tokenize_pair(self, question: str, context: str, max_length: int, stride: int):
        """QA windows: counted first from bounded token counts (BertTokenizer.qa_windows), refused
        over --max-inputs windows or the token budget, and only then encoded."""
        inline = len(question) + len(context) <= INLINE_CHARS
        limit = self.config.max_inputs
        tokenizer = self.engine.tokenizer
        windows = await self._tokenize(inline, tokenizer.qa_windows, question, context, max_length, stride, limit)
        if windows > limit:
            raise ApiError(413, f"context needs more than {limit} windows of {max_length} tokens (doc_stride "
                                f"{stride}), over this server's limit of {limit} (--max-inputs)", param="context")
        return await self._admitted(windows * max_length, "the context", inline, tokenizer.encode_pairs_with_stride,
                                    question, context, max_length, stride)

    async def infer(self, ids: list[Sequence[int]], type_ids: list[Sequence[int]], task: str) -> list:
        """Outputs per sequence through the dynamic batcher; overload and timeouts become HTTP errors."""
        if len(ids) > self.config.max_queue:  # would never fit: not a retry-later case
            raise ApiError(
                413, f"request has {len(ids)} sequences, more than this server's queue holds ({self.config.max_queue})"
            )
        tokens = sum(len(x) for x in ids)
        self.admit(tokens, "the request")
        deadline = REQUEST_DEADLINE.get()
        timeout = self.config.timeout_s if deadline is None else deadline - asyncio.get_running_loop().time()
        if timeout <= 0:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, f"request did not finish within {self.config.timeout_s:g} s")
        try:
            with self.tracing.span("infer", task=task, sequences=len(ids), tokens=tokens):
                return await self.batcher.run(ids, type_ids, task, timeout)
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503, f"server overloaded: {exc}; retry later", headers={"Retry-After": str(self.config.retry_after_s)}
            ) from None
        except Draining as exc:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(503, str(exc), headers={"Retry-After": str(self.config.retry_after_s)}) from None
        except RequestTimeout as exc:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, str(exc)) from None
        except InputError as exc:
            raise ApiError(400, str(exc)) from None

    def check_token_ids(self, rows: list[list[int]], what: str) -> None:
        vocab = self.engine.config.vocab_size
        for index, row in enumerate(rows):
            if not row:
                raise ApiError(400, f"{what}[{index}] is empty")
            if len(row) > self.max_length:
                raise ApiError(
                    400, f"{what}[{index}] has {len(row)} tokens, over the model's limit of {self.max_length}"
                )
            low, high = min(row), max(row)
            if low < 0 or high >= vocab:
                raise ApiError(
                    400,
                    f"{what}[{index}] holds token id {low if low < 0 else high}, outside the vocabulary [0, {vocab})",
                )

    # -- post-processing (the same functions Engine uses) -------------------------------------------

    def classification(self, logits: np.ndarray) -> dict:
        config = self.engine.config
        return tasks.classification_result(logits, config.id2label, config.problem_type == "multi_label_classification")

    def entities(self, text: str, encoding, logits: np.ndarray, aggregation: str) -> list[dict]:
        return self.engine.ner_entities(text, encoding, logits, aggregation)

    def answers(self, context: str, windows, rows, max_answer_length: int, top_k: int) -> list[dict]:
        return self.engine.qa_answers(context, windows, [r.numpy() for r in rows], max_answer_length, top_k)


async def read_body(request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes (chunked bodies included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over this server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

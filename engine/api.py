"""The public API: ``bertrt.load(path)`` returns an ``Engine`` with embed / classify / ner / qa."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from . import lm_tasks, tasks
from .api_tasks import PairTaskMethods
from .batching import PackedBatch, pack, plan_batches
from .embedding_options import Prompts, read_prompts, truncate_dimensions
from .errors import InputError
from .model import Checkpoint, load_checkpoint
from .model.config import ARCHITECTURE_TASKS
from .ops.plan import KernelPlan, validate_kernels
from .quant.checkpoint import is_quantized_dir, load_quantized
from .runtime import memory, policy
from .runtime.backends import BackendUnavailable, TorchRunner, create_runner
from .tokenizer import split_texts

log = logging.getLogger("bertrt")
TASKS = ("embed", "classify", "ner", "qa", "fill_mask", "next_sentence", "embed_sparse")
# runner tasks with one output row per sequence (the others give one per token, fill_mask one per mask)
SEQUENCE_TASKS = ("embed", "embed_unnormalized", "classify", "next_sentence", "embed_sparse")
LONG_TEXT = ("truncate", "window")


class Engine(PairTaskMethods):
    """A loaded model on one backend, device and precision.

    Texts are tokenized, sorted by length and packed padding-free into batches of at most
    ``max_batch_tokens`` tokens; results come back in the caller's order.
    """

    def __init__(self, checkpoint: Checkpoint, runner, task: str, device: str, precision: str,
                 backend: str, max_batch_tokens: int = 16384, max_batch_size: int = 256,
                 max_length: int | None = None):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        # max_length: tokens per sequence (default: the checkpoint's); the checkpoint's tokenizer is
        # shared, never reconfigured
        tokenizer = checkpoint.tokenizer
        same = max_length in (None, tokenizer.max_length)
        self.tokenizer = tokenizer if same else tokenizer.with_max_length(max_length)
        self.runner = runner
        self.task = task
        self.device = device
        self.precision = precision
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self._prompts: Prompts | None = None

    def __repr__(self) -> str:
        return (f"Engine(model={str(self.checkpoint.model_dir)!r}, task={self.task!r}, backend={self.backend!r}, "
                f"device={self.device!r}, precision={self.precision!r})")

    @property
    def plan(self) -> KernelPlan:
        """The kernel plan this engine runs (``print(engine.plan)``); graph backends choose their own
        kernels, which the plan says."""
        plan = getattr(self.runner, "plan", None)
        if plan is None:
            plan = KernelPlan(torch.device(self.device).type, self.precision, "n/a",
                              source=f"{self.backend} (chooses its own kernels)")
        return plan

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    # -- running -------------------------------------------------------------------------------------

    def run_batch(self, batch: PackedBatch, task: str) -> list[torch.Tensor]:
        """Run exactly this packed batch (no re-sorting, no re-planning: the caller formed it, e.g. the
        server's batcher); one fp32 CPU tensor per packed sequence, in the batch's order: (hidden,) for
        embed, (num_labels,) for classify, (len, num_labels) for ner, (len, 2) for qa, (masks, vocab)
        for fill_mask."""
        out = self.runner.run(batch, task).float().cpu()
        if task in SEQUENCE_TASKS:
            return list(out.unbind(0))
        if task == "fill_mask":  # (masks, vocab): each sequence's mask tokens, in packed order
            counts = torch.bincount(torch.repeat_interleave(
                torch.arange(len(batch.indices)), (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long())[
                batch.input_ids.cpu() == self.mask_token_id], minlength=len(batch.indices)).tolist()
            return list(out.split(counts))
        cu = batch.cu_seqlens.tolist()
        return [out[cu[row]:cu[row + 1]] for row in range(len(cu) - 1)]

    def run_encodings(self, ids: list[list[int]], type_ids: list[list[int]], task: str) -> list[torch.Tensor]:
        """Run tokenized sequences in batches this engine plans (``max_batch_tokens``, ``max_batch_size``);
        returns one output per sequence (see run_batch), in the given order:
        (hidden,) for embed, (num_labels,) for classify, (len, num_labels) for ner, (len, 2) for qa,
        (masks, vocab) for fill_mask, (2,) for next_sentence, (vocab,) for embed_sparse."""
        results: list[torch.Tensor | None] = [None] * len(ids)
        lengths = [len(x) for x in ids]
        for group in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            batch = pack([ids[i] for i in group], [type_ids[i] for i in group], group)
            for index, output in zip(batch.indices, self.run_batch(batch, task)):
                results[index] = output
        return results  # type: ignore[return-value]

    def _require(self, task: str) -> None:
        if task not in self.config.tasks:
            raise InputError(f"{task} needs a {_architecture_for(task)} checkpoint; this one is "
                             f"{self.config.architecture}")

    def _encode_inputs(self, texts, truncation: str, task: str) -> tuple[list, list]:
        """(items, encodings) of texts, or of (text, text_pair) pairs with the tokenizer's pair
        template; InputError when the kind does not suit the model."""
        items, pairs = split_texts(texts)
        self.check_input_kind(pairs, task)
        if pairs:
            return items, self.encode_pairs(items, truncation)
        if truncation == "only_second":
            raise InputError("truncation='only_second' needs sentence pairs; got single texts")
        single = "truncate" if truncation in ("longest_first", "only_first") else truncation
        return items, self.tokenizer.encode_batch(items, single)

    def _windowed(self, texts, task: str, stride: int | None, window_pooling: str) -> list[torch.Tensor]:
        """long_text="window": each text read in windows of max_length tokens overlapping by
        ``stride`` (default a quarter window) -> one row per text, the mean/max over its windows."""
        if window_pooling not in lm_tasks.WINDOW_POOLINGS:
            raise InputError(f"window_pooling must be one of {lm_tasks.WINDOW_POOLINGS}, got {window_pooling!r}")
        items, pairs = split_texts(texts)
        if pairs:
            raise InputError("long_text='window' reads single texts; sentence pairs are truncated")
        self.check_input_kind(False, task)
        stride = self.tokenizer.max_length // 4 if stride is None else stride
        windows = self.tokenizer.encode_windows(items, stride)
        flat = [w for text_windows in windows for w in text_windows]
        rows = self.run_encodings([w.ids for w in flat], [w.type_ids for w in flat], task)
        return lm_tasks.pool_windows(rows, [len(w) for w in windows], window_pooling)

    @staticmethod
    def _check_long_text(long_text: str) -> None:
        if long_text not in LONG_TEXT:
            raise InputError(f"long_text must be one of {LONG_TEXT}, got {long_text!r}")

    # -- tasks ---------------------------------------------------------------------------------------

    @property
    def prompts(self) -> Prompts:
        """The checkpoint's sentence-transformers prompts (config_sentence_transformers.json)."""
        if self._prompts is None:
            self._prompts = read_prompts(self.checkpoint.model_dir)
        return self._prompts

    def set_default_prompt(self, name: str | None) -> None:
        """Use prompt ``name`` when a call names none (``bertrt serve --default-prompt-name``)."""
        self._prompts = read_prompts(self.checkpoint.model_dir, name)

    def embed(self, texts, truncation: str = "truncate", normalize: bool | None = None,
              prompt_name: str | None = None, prompt: str | None = None, dimensions: int | None = None,
              long_text: str = "truncate", stride: int | None = None, window_pooling: str = "mean") -> np.ndarray:
        """Sentence embeddings (n, hidden) float32 with the checkpoint's pooling (and normalization
        when the sentence-transformers config has a Normalize module, unless ``normalize`` says).
        prompt_name / prompt: prepended as sentence-transformers does (the model's default prompt
        when it names one); dimensions: keep the first d values (Matryoshka), renormalized when the
        output is normalized -> (n, d). long_text="window": texts over max_length tokens are read in
        windows overlapping by ``stride`` tokens, pooled by window_pooling ("mean"/"max"; renormalized
        when the model normalizes)."""
        self._check_long_text(long_text)
        items, pairs = split_texts(texts)
        self.check_input_kind(pairs, "embed")
        texts = self.prompts.apply(items, prompt_name, prompt)
        if not texts:
            return np.zeros((0, dimensions or self.hidden_size), dtype=np.float32)
        if long_text == "window":
            out = torch.stack(self._windowed(texts, "embed", stride, window_pooling))
            if self.checkpoint.model.pooling.normalize:
                out = torch.nn.functional.normalize(out, dim=-1)
        else:
            encodings = self.tokenizer.encode_batch(texts, truncation)
            rows = self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "embed")
            out = torch.stack(rows)
        if normalize is True and not self.checkpoint.model.pooling.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        elif normalize is False and self.checkpoint.model.pooling.normalize:
            raise InputError("this model's pooling normalizes; normalize=False cannot undo it")
        normalized = normalize is True or (normalize is None and self.checkpoint.model.pooling.normalize)
        return truncate_dimensions(out.numpy(), dimensions, normalized)

    def classify(self, texts, truncation: str = "truncate", long_text: str = "truncate", stride: int | None = None,
                 window_pooling: str = "mean") -> list[dict]:
        """One {"label", "score", "scores"} per text (softmax, or sigmoid for multi-label models).
        texts: strings, or (text, text_pair) pairs for cross-encoders (NLI, rerankers, paraphrase);
        truncation for pairs: "truncate" (= "longest_first"), "only_first", "only_second", "error".
        long_text="window": logits pooled (mean/max) over windows of a long single text."""
        self._require("classify")
        self._check_long_text(long_text)
        if long_text == "window":
            rows = self._windowed(texts, "classify", stride, window_pooling)
        else:
            texts, encodings = self._encode_inputs(texts, truncation, "classify")
            if not texts:
                return []
            rows = self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "classify")
        # one output (a cross-encoder's relevance): sigmoid, as transformers' pipeline and CrossEncoder do
        multi = self.config.problem_type == "multi_label_classification" or self.config.num_labels == 1
        return [tasks.classification_result(r.numpy(), self.config.id2label, multi) for r in rows]

    def ner(self, texts, aggregation: str = "simple", truncation: str = "truncate") -> list[list[dict]]:
        """Entities per text with character offsets; aggregation none/simple/first/average/max as in
        transformers' token-classification pipeline."""
        self._require("ner")
        if aggregation not in tasks.AGGREGATIONS:
            raise InputError(f"aggregation must be one of {tasks.AGGREGATIONS}, got {aggregation!r}")
        texts, encodings = self._encode_inputs(texts, truncation, "ner")
        if not texts:
            return []
        rows = self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "ner")
        return [self.ner_entities(text, enc, logits.numpy(), aggregation)
                for text, enc, logits in zip(texts, encodings, rows)]

    def ner_entities(self, text: str, encoding, logits: np.ndarray, aggregation: str) -> list[dict]:
        """Entities of one text from its encoding and token logits (len, num_labels). [UNK] tokens take
        their source text; a token is a subword when it is longer than its span (WordPiece '##')."""
        unk = self.tokenizer.token_to_id("[UNK]")
        tokens = list(encoding.tokens)
        subword = []
        for i, (token, (start, end)) in enumerate(zip(tokens, encoding.offsets)):
            if encoding.ids[i] == unk:
                tokens[i] = text[start:end]
                subword.append(False)
            else:
                subword.append(len(token) != len(text[start:end]))
        return tasks.ner_entities(logits, tokens, encoding.offsets, encoding.special_tokens_mask, subword,
                                  self.config.id2label, aggregation, self.tokenizer.join_tokens)

    def qa(self, question: str, context: str, max_answer_length: int = 15, doc_stride: int | None = None,
           max_length: int = 384, top_k: int = 1):
        """Best answer span {"answer", "score", "start", "end"} (character offsets into context);
        contexts longer than ``max_length`` tokens (capped at the model's maximum) are read in windows
        overlapping by ``doc_stride`` tokens (default: 128, at most half a window).
        With top_k > 1, a list of the best spans."""
        self._require("qa")
        for name, value in (("question", question), ("context", context)):
            if not isinstance(value, str):
                raise InputError(f"{name} must be a string, got {type(value).__name__}")
        if not question.strip() or not context.strip():
            raise InputError("question and context must be non-empty")
        max_length = min(max_length, self.config.max_position_embeddings)
        if doc_stride is None:
            doc_stride = min(128, max_length // 2)
        if doc_stride >= max_length:
            raise InputError(f"doc_stride {doc_stride} must be smaller than max_length {max_length}")
        windows = self.tokenizer.encode_pairs_with_stride(question, context, max_length, doc_stride)
        rows = self.run_encodings([w.ids for w in windows], [w.type_ids for w in windows], "qa")
        answers = self.qa_answers(context, windows, rows, max_answer_length, top_k)
        return answers[0] if top_k == 1 else answers

    @staticmethod
    def qa_answers(context: str, windows, rows, max_answer_length: int, top_k: int) -> list[dict]:
        """The best spans over all windows, best first, in character offsets of ``context``.
        rows[i]: (len_i, 2) start/end logits of windows[i]. An empty answer when nothing fits."""
        found = []
        for window, logits in zip(windows, rows):
            context_mask = np.array([s == 1 for s in window.sequence_ids])
            logits = np.asarray(logits)
            for s, e, score in tasks.best_spans(logits[:, 0], logits[:, 1], context_mask, max_answer_length, top_k):
                start, end = window.offsets[s][0], window.offsets[e][1]
                found.append({"answer": context[start:end], "score": score, "start": start, "end": end})
        found.sort(key=lambda a: -a["score"])
        return found[:top_k] or [{"answer": "", "score": 0.0, "start": 0, "end": 0}]


def _check_task(checkpoint: Checkpoint, task: str | None, max_length: int | None) -> str:
    """The task to run (the checkpoint's own when None); checks max_length (the Engine applies it)."""
    config = checkpoint.config
    task = config.task if task is None else task
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, got {task!r}")
    if task not in config.tasks:
        raise InputError(f"task {task!r} needs a {_architecture_for(task)} checkpoint; "
                         f"{checkpoint.model_dir} is {config.architecture}")
    if max_length is not None:
        if not 2 <= max_length <= config.max_position_embeddings:
            raise InputError(f"max_length must be in [2, {config.max_position_embeddings}], got {max_length}")
    return task


def _load_quantized(path, task, device, backend, kernels, max_length, batch_invariant) -> Engine:
    """A `bertrt quantize` output (quantization.json present): INT8 linears run on the torch backend;
    the precision is the one the checkpoint was quantized for."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{path} is a bertrt-quantized checkpoint; it runs on the torch backend, "
                                 f"not {backend!r} (export it with `bertrt export --int8` for ONNX/TensorRT)")
    checkpoint = load_quantized(path, device=device)
    task = _check_task(checkpoint, task, max_length)
    precision = checkpoint.model.quantization["compute_dtype"]
    runner = TorchRunner(checkpoint, device, precision, kernels=kernels, batch_invariant=batch_invariant)
    engine = Engine(checkpoint, runner, task, device, precision, "torch", max_length=max_length)
    log.info("loaded quantized %r", engine)
    return engine


def _architecture_for(task: str) -> str:
    if task == "embed_sparse":
        return "BertForMaskedLM (SPLADE)"
    return next((arch for arch, t in ARCHITECTURE_TASKS.items() if t == task), "matching")


def load(path: str | Path | None = None, task: str | None = None, device: str = "auto", backend: str = "auto",
         dtype: str | torch.dtype = "auto", kernels: str = "auto", max_length: int | None = None,
         batch_invariant: bool = False, **backend_options) -> Engine:
    """Load a local Hugging Face checkpoint directory (default: the bundled all-MiniLM-L6-v2).

    task: "embed" | "classify" | "ner" | "qa"; None takes the checkpoint's own (BertModel -> embed).
    device: "auto" | "cpu" | "cuda[:N]". dtype: "auto" | "float32" | "bfloat16" | "float16".
    backend: "auto" or a name from ``bertrt.runtime.backends.BACKENDS``. kernels: op implementation
    for the torch backend ("auto": measured on this machine, see ``engine.plan``; "torch", "cpu",
    "cpu:<isa>", "cuda", "triton", "ref"). batch_invariant: only kernels whose result for a text does
    not depend on the other texts of its batch (bit-identical alone or batched; torch backend).
    """
    validate_kernels(kernels)
    device = policy.choose_device(device)
    if device == "cpu":
        memory.keep_freed_memory()
    if batch_invariant:
        if backend not in ("auto", "torch"):
            raise InputError(f"batch_invariant=True runs on the torch backend (bertrt's kernels), not {backend!r}")
        backend = "torch"
    if path is not None and is_quantized_dir(path):
        return _load_quantized(path, task, device, backend, kernels, max_length, batch_invariant)
    # The tuned winner for this device/model when `bertrt tune` stored one, else the policy table;
    # an explicit backend that cannot run raises BackendUnavailable.
    choice = policy.resolve(path, device, dtype, backend, task=task)
    load_dtype, load_device = policy.checkpoint_placement(choice, device)
    checkpoint = load_checkpoint(path, dtype=load_dtype, device=load_device)
    task = _check_task(checkpoint, task, max_length)
    runner, backend_name, precision = create_runner(checkpoint, device, choice.candidates, explicit=choice.explicit,
                                                    kernels=kernels, batch_invariant=batch_invariant,
                                                    **backend_options)
    engine = Engine(checkpoint, runner, task, device, precision, backend_name, max_length=max_length)
    log.info("loaded %r: %s", engine, choice.reason)
    return engine

"""Distil a fine-tuned teacher into a student with fewer layers (and optionally a smaller hidden size).

The student is the teacher's config with ``num_hidden_layers = N`` (and ``hidden_size = H``). With the
teacher's hidden size it starts as a copy of the teacher: embeddings, head, and for student layer ``i``
the teacher layer ``layer_map[i]`` (default: evenly spaced and ending at the top layer, e.g. 1,3,5 for
6 -> 3). With another hidden size it starts from random weights and a learned projection maps its hidden
states to the teacher's width for the hidden-state loss.

Losses (each weight configurable, 0 turns a term off):
- soft: KL(teacher || student) of the temperature-softened label distributions, times T^2 (Hinton et al.);
  per token for token classification.
- hard: cross-entropy with the gold labels, when the training file has them.
- hidden: MSE between student hidden states and the mapped teacher hidden states (embedding output to
  embedding output, student layer i to teacher layer layer_map[i]), over real (non-padding) tokens.
- attention: KL between the mapped layers' attention distributions (MiniLM/TinyBERT style), per head
  when head counts match, else of the head-averaged distributions.
- embedding models: MSE and 1 - cosine between the pooled sentence embeddings, and MSE between the
  in-batch cosine-similarity matrices (relational distillation: it trains the pairwise similarity
  structure that retrieval and the report's Spearman score depend on, not only each vector), and
  1 - the Pearson correlation of the off-diagonal entries of those matrices (scale-free: it weighs the
  order of the many near-equal similarities of unrelated sentences, which the MSE barely sees and
  a rank correlation counts as much as any other pairs).
  With ``similarity_memory = K`` the similarity MSE also covers the pairs of each row of the batch with
  the K rows of the batches before it (their student embeddings as they were then, detached; "cross-batch
  memory", Wang et al. 2020): K x batch pairs a step instead of batch^2 / 2, at the cost of one
  (batch, K) matrix product.

Embedding distillation with only pooled-embedding losses computes the teacher's embeddings once
(``teacher_cache``), not every step.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import Columns, load_examples
from .loop import TrainConfig, setup_determinism, train
from .models import Pooling, detect_task, load_model, load_tokenizer, save_model
from .qa import encode_qa, evaluate, load_qa_data
from .report import compare
from .teacher_cache import load_or_compute

log = logging.getLogger("bertrt.train")


@dataclass
class LossWeights:
    soft: float = 1.0
    hard: float = 0.0
    hidden: float = 1.0
    attention: float = 0.1  # its KL starts near 2-3 nats for MiniLM 6 -> 3 and would drown the task loss
    embedding_mse: float = 1.0
    embedding_cosine: float = 1.0
    # Cosines of unrelated sentences sit in a narrow band, so the matrix MSE is small (~1e-3 after
    # a few hundred steps); the weight brings its gradient to the size of the other terms.
    similarity: float = 10.0
    similarity_correlation: float = 0.0


@dataclass
class DistillConfig:
    teacher_dir: str
    train_file: str
    student_layers: int
    hidden_size: int | None = None
    layer_map: list[int] | None = None
    task: str | None = None  # default: from the teacher's architecture
    eval_file: str | None = None
    max_length: int = 128
    doc_stride: int = 32  # qa: tokens shared by consecutive windows of a long context
    temperature: float = 2.0
    weights: LossWeights = field(default_factory=LossWeights)
    columns: Columns = field(default_factory=Columns)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="out/distill", learning_rate=1e-4))
    latency: bool = True  # measure latency in the report
    init_student: str | None = None  # start from this student directory instead of teacher layers
    similarity_memory: int = 0  # K earlier rows whose pairs with the batch join the similarity MSE
    # Dropout for the student (default: the teacher's). 0 suits matching a teacher on plenty of data:
    # dropout noise is then only a handicap, not a regularizer.
    student_dropout: float | None = None
    teacher_cache: str | None = None  # default <out>/teacher_embeddings.pt; "off" runs the teacher each step


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one: 6 -> 3 gives [1, 3, 5], 12 -> 4 [2, 5, 8, 11]."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"student layers must be in 1..{teacher_layers}, got {student_layers}")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def student_config(teacher_config, layers: int, hidden_size: int | None, layer_map: list[int] | None = None):
    raw = teacher_config.to_dict()
    if raw.get("layer_types"):  # ModernBERT: each student layer keeps its teacher layer's kind (local / global)
        chosen = layer_map or default_layer_map(teacher_config.num_hidden_layers, layers)
        raw["layer_types"] = [raw["layer_types"][j] for j in chosen]
    raw["num_hidden_layers"] = layers
    config = teacher_config.__class__.from_dict(raw)
    if hidden_size is not None and hidden_size != teacher_config.hidden_size:
        heads = teacher_config.num_attention_heads
        if hidden_size % heads:
            heads = max(1, hidden_size // 64)
            if hidden_size % heads:
                raise ValueError(f"--hidden {hidden_size} is not divisible by a usable number of attention heads")
        config.hidden_size = hidden_size
        config.num_attention_heads = heads
        config.intermediate_size = teacher_config.intermediate_size * hidden_size // teacher_config.hidden_size
    return config


_LAYER_KEY = re.compile(r"(^|\.)layer\.(\d+)\.")


def init_from_teacher(student, teacher, layer_map: list[int]) -> None:
    """Copy every student weight from the teacher; encoder layer i comes from teacher layer layer_map[i]."""
    teacher_state = teacher.state_dict()
    new_state = {}
    for key, value in student.state_dict().items():
        match = _LAYER_KEY.search(key)
        source = key
        if match:
            teacher_layer = layer_map[int(match.group(2))]
            source = f"{key[: match.start()]}{match.group(1)}layer.{teacher_layer}.{key[match.end():]}"
        if source not in teacher_state or teacher_state[source].shape != value.shape:
            raise ValueError(f"cannot initialise student weight {key} from teacher weight {source}")
        new_state[key] = teacher_state[source].clone()
    student.load_state_dict(new_state)


class Student(torch.nn.Module):
    """The student model plus the train-time projections (hidden/embedding width -> teacher width) and the
    similarity memory: buffers, so checkpoints carry them and a resumed run continues identically."""

    def __init__(self, model, teacher_hidden: int, memory: int = 0):
        super().__init__()
        self.model = model
        hidden = model.config.hidden_size
        self.projection = torch.nn.Linear(hidden, teacher_hidden) if hidden != teacher_hidden else torch.nn.Identity()
        self.register_buffer("memory_student", torch.zeros(memory, teacher_hidden))
        self.register_buffer("memory_teacher", torch.zeros(memory, teacher_hidden))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_next", torch.zeros((), dtype=torch.long))

    def memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(filled, hidden) normalized student and teacher embeddings of earlier rows (copies: the
        memory is updated before the backward pass)."""
        filled = int(self.memory_filled)
        return self.memory_student[:filled].clone(), self.memory_teacher[:filled].clone()

    @torch.no_grad()
    def remember(self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> None:
        """Push (batch, hidden) embeddings into the ring buffer, oldest out first."""
        size = self.memory_student.shape[0]
        if size == 0:
            return
        rows = student_embeddings.shape[0]
        slots = (int(self.memory_next) + torch.arange(rows)) % size
        self.memory_student[slots] = F.normalize(student_embeddings.detach().float(), dim=-1)
        self.memory_teacher[slots] = F.normalize(teacher_embeddings.detach().float(), dim=-1)
        self.memory_next.fill_((int(self.memory_next) + rows) % size)
        self.memory_filled.fill_(min(size, int(self.memory_filled) + rows))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values: (batch, seq, ...) and mask: (batch, seq) -> mean over the masked-in (batch, seq) rows."""
    while mask.ndim < values.ndim:
        mask = mask.unsqueeze(-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (mask.sum() * values[0, 0].numel() / mask[0, 0].numel()).clamp(min=1)


def soft_label_kl(student_logits, teacher_logits, temperature: float, mask=None) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2; logits (batch, labels) or (batch, seq, labels)."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    kl = kl.mean() if mask is None else (kl * mask).sum() / mask.sum().clamp(min=1)
    return kl * temperature**2


def _qa_losses(s_out, t_out, labels, mask, temperature: float, weights: LossWeights, parts: dict):
    """Soft: KL(teacher || student) of the start and of the end distributions over a window's real
    tokens, at temperature T (times T^2); hard: cross-entropy with the answer's tokens."""
    loss = 0.0
    pad = ~mask.bool()
    pairs = [(s_out.start_logits, t_out.start_logits), (s_out.end_logits, t_out.end_logits)]
    if weights.soft:
        parts["soft"] = sum(soft_label_kl(s.masked_fill(pad, -1e4), t.masked_fill(pad, -1e4), temperature)
                            for s, t in pairs) / 2
        loss = loss + weights.soft * parts["soft"]
    if weights.hard and labels is not None:
        parts["hard"] = sum(F.cross_entropy(s.masked_fill(pad, -1e4), labels[:, k])
                            for k, (s, _) in enumerate(pairs)) / 2
        loss = loss + weights.hard * parts["hard"]
    return loss


def attention_kl(student_attention, teacher_attention, mask) -> torch.Tensor:
    """attentions (batch, heads, query, key) -> KL(teacher || student) per query row, mean over heads and
    real query tokens; different head counts compare head-averaged distributions."""
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(1, keepdim=True)
        teacher_attention = teacher_attention.mean(1, keepdim=True)
    eps = 1e-12
    kl = (teacher_attention * (torch.log(teacher_attention + eps) - torch.log(student_attention + eps))).sum(-1)
    query_mask = mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * query_mask).sum() / query_mask.sum().clamp(min=1)


def similarity_mse(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """embeddings (batch, dim) -> MSE between the two (batch, batch) cosine-similarity matrices, off the
    diagonal (the diagonal is 1 for both)."""
    batch = student_embeddings.shape[0]
    if batch < 2:
        return student_embeddings.new_zeros(())
    s = F.normalize(student_embeddings, dim=-1)
    t = F.normalize(teacher_embeddings, dim=-1)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=s.device)
    return F.mse_loss((s @ s.T)[off_diagonal], (t @ t.T)[off_diagonal])


def similarity_pairs_mse(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor,
                         memory_student: torch.Tensor, memory_teacher: torch.Tensor) -> torch.Tensor:
    """The similarity MSE over the in-batch pairs and the batch x memory pairs together.

    embeddings (batch, dim); memory (K, dim), normalized, no gradient. K = 0 is ``similarity_mse``."""
    batch, memory = student_embeddings.shape[0], memory_student.shape[0]
    if memory == 0:
        return similarity_mse(student_embeddings, teacher_embeddings)
    s = F.normalize(student_embeddings, dim=-1)
    t = F.normalize(teacher_embeddings, dim=-1)
    in_batch = batch * (batch - 1)
    across = F.mse_loss(s @ memory_student.T, t @ memory_teacher.T, reduction="sum")
    within = similarity_mse(student_embeddings, teacher_embeddings) * in_batch
    return (across + within) / (batch * memory + in_batch)


def similarity_correlation_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """embeddings (batch, dim) -> 1 - Pearson correlation between the off-diagonal entries of the two
    (batch, batch) cosine-similarity matrices (0 when the student orders and spaces the pairs as the
    teacher does, up to scale and shift)."""
    batch = student_embeddings.shape[0]
    if batch < 3:
        return student_embeddings.new_zeros(())
    s = F.normalize(student_embeddings, dim=-1)
    t = F.normalize(teacher_embeddings, dim=-1)
    rows, cols = torch.triu_indices(batch, batch, offset=1, device=s.device)
    a, b = (s @ s.T)[rows, cols], (t @ t.T)[rows, cols]
    a, b = a - a.mean(), b - b.mean()
    return 1 - (a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def distill(config: DistillConfig) -> dict:
    """Train the student, save it to ``config.train.out_dir`` and, with an eval file, write the report."""
    task = config.task or detect_task(config.teacher_dir)
    out_dir = Path(config.train.out_dir)
    weights = config.weights
    tokenizer = load_tokenizer(config.teacher_dir)
    teacher = load_model(config.teacher_dir, task)
    teacher.eval().requires_grad_(False)
    teacher_layers = teacher.config.num_hidden_layers
    layer_map = config.layer_map or default_layer_map(teacher_layers, config.student_layers)
    if len(layer_map) != config.student_layers or not all(0 <= j < teacher_layers for j in layer_map):
        raise ValueError(
            f"layer map {layer_map} needs {config.student_layers} teacher layers in 0..{teacher_layers - 1}")

    label2id = getattr(teacher.config, "label2id", None) if task not in ("embedding", "qa") else None
    if task == "qa":  # every window of every context; labels are the (start, end) tokens of the answer
        examples = [f.encoded for f in encode_qa(load_qa_data(config.train_file), tokenizer, config.max_length,
                                                 config.doc_stride)]
    else:
        examples = load_examples(task, config.train_file, tokenizer, config.max_length, label2id, config.columns,
                                 labelled=weights.hard > 0)

    setup_determinism(config.train.seed, config.train.threads)
    s_config = student_config(teacher.config, config.student_layers, config.hidden_size, layer_map)
    want_hidden, want_attention = weights.hidden > 0, weights.attention > 0
    # eager attention returns the probabilities the attention loss needs; sdpa is faster without it
    s_config._attn_implementation = "eager" if want_attention else "sdpa"
    if config.student_dropout is not None:
        if not 0 <= config.student_dropout < 1:
            raise ValueError(f"student dropout must be in [0, 1), got {config.student_dropout}")
        s_config.hidden_dropout_prob = s_config.attention_probs_dropout_prob = config.student_dropout
    if config.similarity_memory < 0:
        raise ValueError(f"similarity memory must be >= 0, got {config.similarity_memory}")
    student_model = type(teacher)(s_config)
    same_width = s_config.hidden_size == teacher.config.hidden_size
    if config.init_student:
        # a second stage: go on from an earlier student (its layer map and width must match)
        previous = load_model(config.init_student, task)
        if (previous.config.num_hidden_layers, previous.config.hidden_size) != (s_config.num_hidden_layers,
                                                                                s_config.hidden_size):
            raise ValueError(
                f"--init-student {config.init_student} has {previous.config.num_hidden_layers} layers of width "
                f"{previous.config.hidden_size}; this student needs {s_config.num_hidden_layers} of "
                f"{s_config.hidden_size}")
        student_model.load_state_dict(previous.state_dict())
        log.info("student initialised from %s", config.init_student)
    elif same_width:
        init_from_teacher(student_model, teacher, layer_map)
    else:
        log.info("student hidden %d != teacher %d: random init, learned projection", s_config.hidden_size,
                 teacher.config.hidden_size)
    memory = config.similarity_memory if task == "embedding" and weights.similarity else 0
    student = Student(student_model, teacher.config.hidden_size, memory)
    pooling = Pooling.from_dir(config.teacher_dir) if task == "embedding" else None
    cached = None
    if task == "embedding" and not (want_hidden or want_attention) and config.teacher_cache != "off":
        cached = load_or_compute(config.teacher_cache or out_dir / "teacher_embeddings.pt", config.teacher_dir,
                                 teacher, pooling, examples, progress=config.train.progress)
    # hidden_states[0] is the embedding output, hidden_states[k] the output of layer k - 1.
    hidden_pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(layer_map)]

    def loss_fn(batch):
        labels = batch.pop("labels", None)
        rows = batch.pop("example_index", None)
        mask = batch["attention_mask"]
        if cached is None:
            with torch.no_grad():
                t_out = teacher(**batch, output_hidden_states=want_hidden, output_attentions=want_attention)
        s_out = student.model(**batch, output_hidden_states=want_hidden, output_attentions=want_attention)
        parts, loss = {}, 0.0
        if task == "embedding":
            t_emb = cached[rows] if cached is not None else pooling(t_out.last_hidden_state, mask)
            s_emb = student.projection(pooling(s_out.last_hidden_state, mask))
            if weights.embedding_mse:
                parts["emb_mse"] = F.mse_loss(s_emb, t_emb)
            if weights.embedding_cosine:
                parts["emb_cos"] = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
            if weights.similarity:
                parts["sim"] = similarity_pairs_mse(s_emb, t_emb, *student.memory())
                student.remember(s_emb, t_emb)
            if weights.similarity_correlation:
                parts["sim_corr"] = similarity_correlation_loss(s_emb, t_emb)
            loss = (weights.embedding_mse * parts.get("emb_mse", 0.0)
                    + weights.embedding_cosine * parts.get("emb_cos", 0.0)
                    + weights.similarity * parts.get("sim", 0.0)
                    + weights.similarity_correlation * parts.get("sim_corr", 0.0))
        elif task == "qa":
            loss = _qa_losses(s_out, t_out, labels, mask, config.temperature, weights, parts)
        else:
            token_mask = mask if task == "token" else None
            if weights.soft:
                parts["soft"] = soft_label_kl(s_out.logits, t_out.logits, config.temperature, token_mask)
                loss = loss + weights.soft * parts["soft"]
            if weights.hard and labels is not None:
                parts["hard"] = F.cross_entropy(s_out.logits.reshape(-1, s_out.logits.shape[-1]), labels.reshape(-1),
                                                ignore_index=-100)
                loss = loss + weights.hard * parts["hard"]
        if want_hidden:
            parts["hidden"] = sum(
                _masked_mean((student.projection(s_out.hidden_states[s]) - t_out.hidden_states[t]) ** 2, mask)
                for s, t in hidden_pairs
            ) / len(hidden_pairs)
            loss = loss + weights.hidden * parts["hidden"]
        if want_attention:
            parts["attention"] = sum(
                attention_kl(s_out.attentions[i], t_out.attentions[j], mask) for i, j in enumerate(layer_map)
            ) / len(layer_map)
            loss = loss + weights.attention * parts["attention"]
        return loss, {name: float(value.detach()) for name, value in parts.items()}

    log.info("distill: %s teacher %d layers -> student %d layers (map %s), hidden %d, %d rows", task,
             teacher_layers, config.student_layers, layer_map, s_config.hidden_size, len(examples))
    result = train(student, loss_fn, examples, config.train, pad_id=tokenizer.pad_token_id or 0,
                   index_key="example_index" if cached is not None else None)
    student_model.config.architectures = [type(student_model).__name__]
    student_model.config.distillation = {
        "teacher": str(config.teacher_dir), "layer_map": layer_map, "temperature": config.temperature,
        "weights": vars(weights), "steps": result["total_steps"], "init_student": config.init_student,
        "similarity_memory": memory, "student_dropout": config.student_dropout,
    }
    save_model(student_model, tokenizer, config.teacher_dir, out_dir, task)
    summary = {"task": task, "student_dir": str(out_dir), "layer_map": layer_map, "steps": result["total_steps"],
               "final_loss": sum(h["loss"] for h in result["history"][-50:]) / max(1, len(result["history"][-50:]))}
    if config.eval_file and task == "qa":  # SQuAD EM/F1 of both on the same windows
        dev = load_qa_data(config.eval_file)
        summary["report"] = {name: evaluate(model, dev, tokenizer, config.max_length, config.doc_stride)
                             for name, model in (("teacher", teacher), ("student", student_model))}
    elif config.eval_file:
        report = compare(config.teacher_dir, str(out_dir), config.eval_file, task=task, max_length=config.max_length,
                         columns=config.columns, latency=config.latency, threads=config.train.threads)
        summary["report"] = report
    (out_dir / "distill_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

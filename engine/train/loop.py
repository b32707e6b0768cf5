"""The seeded, resumable training loop shared by fine-tuning and distillation.

Determinism: the example order of each epoch is a permutation of (seed, epoch) only; the batch of step
``s`` is therefore known from ``s`` alone, and a resumed run sees the same batches. The torch RNG state
(dropout) is saved with the checkpoint, threads are fixed and torch's deterministic algorithms are on,
so on the same machine an interrupted-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .data import EncodedExample, collate, epoch_batches

log = logging.getLogger("bertrt.train")


class TrainingInterrupted(RuntimeError):
    """Raised when training stops early (a signal, or the ``stop_after`` test hook)."""

    def __init__(self, step: int, saved: bool):
        super().__init__(f"training stopped after step {step} ({'checkpoint saved' if saved else 'not saved'})")
        self.step = step
        self.saved = saved


@dataclass
class TrainConfig:
    out_dir: str
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    checkpoint_every: int = 200
    grad_clip: float = 1.0
    threads: int | None = None
    resume: bool = True  # continue from <out_dir>/checkpoint when it exists
    progress: bool = True
    group_by_length: bool = True  # batches of similar-length rows (see data.epoch_batches)
    stop_after: int | None = None  # test hook: stop (as if killed) after this step, without saving

    def total_steps(self, num_examples: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(num_examples / self.batch_size)))

    def fingerprint(self, num_examples: int) -> dict:
        """Settings that must match for a checkpoint to be resumed."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps(num_examples),
            "num_examples": num_examples,
            "group_by_length": self.group_by_length,
        }


def setup_determinism(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(module: torch.nn.Module, config: TrainConfig, total_steps: int):
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to save a checkpoint after the current step and stop."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    module: torch.nn.Module,
    loss_fn: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    examples: Sequence[EncodedExample],
    config: TrainConfig,
    pad_id: int = 0,
    index_key: str | None = None,
) -> dict:
    """Train ``module`` (every parameter with requires_grad) on ``examples``; return the history.

    ``loss_fn(batch)`` returns the loss and a dict of its named parts (floats, for the log). A checkpoint
    is written every ``config.checkpoint_every`` steps and at the end; with ``config.resume`` an existing
    checkpoint in ``config.out_dir`` is continued from its step.
    """
    setup_determinism(config.seed, config.threads)
    num_examples = len(examples)
    total_steps = config.total_steps(num_examples)
    batches_per_epoch = math.ceil(num_examples / config.batch_size)
    optimizer, scheduler = make_optimizer(module, config, total_steps)
    fingerprint = config.fingerprint(num_examples)
    history: list[dict] = []
    step = 0

    state = load_checkpoint(config.out_dir) if config.resume else None
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise ValueError(
                f"{config.out_dir}: the checkpoint was made with other settings ({state['fingerprint']}) than this "
                f"run ({fingerprint}); use another --out, or --no-resume to start over"
            )
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"])
        step, history = state["step"], state["history"]
        log.info("resuming from step %d of %d (%s)", step, total_steps, config.out_dir)

    def checkpoint() -> None:
        save_checkpoint(config.out_dir, {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states(),
            "step": step,
            "epoch": step // batches_per_epoch,
            "position": step % batches_per_epoch,
            "history": history,
            "fingerprint": fingerprint,
            "config": asdict(config),
        })

    trainable = [p for p in module.parameters() if p.requires_grad]
    module.train()
    bar = tqdm(total=total_steps, initial=step, disable=not config.progress, desc="train", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    lengths = [len(e.input_ids) for e in examples]
    batches, batches_epoch = None, -1
    with _StopFlag() as stop:
        while step < total_steps:
            epoch, position = divmod(step, batches_per_epoch)
            if epoch != batches_epoch:
                batches = epoch_batches(lengths, config.batch_size, config.seed, epoch, config.group_by_length)
                batches_epoch = epoch
                assert len(batches) == batches_per_epoch
            batch = collate([examples[i] for i in batches[position]], pad_id)
            if index_key is not None:
                batch[index_key] = torch.tensor(batches[position], dtype=torch.long)
            loss, parts = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            history.append({"step": step, "loss": float(loss.detach()), **parts})
            recent = history[-20:]
            bar.set_postfix({name: f"{sum(h[name] for h in recent) / len(recent):.4g}" for name in history[-1]
                             if name != "step"}, refresh=False)
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == total_steps:
                checkpoint()
            if stop.signal is not None:
                if step % config.checkpoint_every and step != total_steps:
                    checkpoint()
                bar.close()
                raise TrainingInterrupted(step, saved=True)
            if config.stop_after is not None and step >= config.stop_after and step < total_steps:
                bar.close()
                raise TrainingInterrupted(step, saved=step % config.checkpoint_every == 0)
    bar.close()
    module.eval()
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(config.out_dir) / "training_log.json").write_text(
        json.dumps({"config": asdict(config), "total_steps": total_steps, "history": history}) + "\n"
    )
    return {"total_steps": total_steps, "history": history}

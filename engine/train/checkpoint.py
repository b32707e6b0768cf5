"""Resumable training state: model, optimizer, scheduler, RNG states, step and data position.

One file, ``<out>/checkpoint/state.pt``, written to a temporary name and renamed over the old one, so a
kill at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..model.validate import read_torch_file

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
# What a resume and --export-checkpoint read
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "rng", "step", "history", "fingerprint")


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / STATE_FILE


def rng_states() -> dict:
    """torch, Python and numpy generator states as tensors and plain values (loadable with weights_only)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy

        name, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
        states["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype(numpy.int64)), "position": int(position),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    except ImportError:
        pass
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "numpy" in states:
        import numpy

        saved = states["numpy"]
        numpy.random.set_state((saved["name"], saved["keys"].numpy().astype(numpy.uint32), saved["position"],
                                saved["has_gauss"], saved["cached_gaussian"]))


def save_checkpoint(out_dir: str | Path, state: dict) -> Path:
    """Atomically write ``state`` (a dict of tensors, state dicts and plain values)."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{STATE_FILE}.tmp-{os.getpid()}")
    torch.save(state, temporary)
    with open(temporary, "rb") as handle:  # flush to disk before the rename makes it the checkpoint
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(out_dir: str | Path) -> dict | None:
    """The saved state, or None when ``out_dir`` has no checkpoint."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    # weights_only: a file planted in --out must not run code when a run resumes
    state = read_torch_file(path, "the training checkpoint (delete it, or pass --no-resume, to start over)")
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ModelLoadError(f"{path}: not a bertrt training checkpoint (no {', '.join(missing)})")
    return state

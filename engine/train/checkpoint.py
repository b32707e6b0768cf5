"""Resumable training state: model, optimizer, scheduler, RNG states, step and data position.

One file, ``<out>/checkpoint/state.pt``, written to a temporary name and renamed over the old one, so a
kill at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy
import torch

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / STATE_FILE


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy.random.get_state()}


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "numpy" in states:
        numpy.random.set_state(states["numpy"])


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
    # weights_only=False: the state holds Python RNG tuples and plain dicts that this process wrote itself.
    return torch.load(path, map_location="cpu", weights_only=False)

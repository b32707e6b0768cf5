"""Where bertrt keeps what it builds and measures: $BERTRT_CACHE_DIR, else ~/.cache/bertrt."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$BERTRT_CACHE_DIR, else ~/.cache/bertrt (created by whoever writes into it)."""
    root = os.environ.get("BERTRT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bertrt")
    return Path(root)

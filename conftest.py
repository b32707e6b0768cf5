"""Loaded by pytest before tests/ and benchmarks/ (their own conftest files come after)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def _import_hub_kernels() -> None:
    """transformers imports the PyPI package ``kernels`` (Hugging Face hub kernels) by its top-level
    name; run from the repository root, that name finds our ``kernels/`` folder (``bertrt.kernels``)
    first and transformers fails to import. Import the real package once, with the root off the path."""
    root = str(Path(__file__).resolve().parent)
    shadowing = [p for p in sys.path if os.path.abspath(p or ".") == root]
    sys.path[:] = [p for p in sys.path if p not in shadowing]
    try:
        if importlib.util.find_spec("kernels") is not None:
            import kernels  # noqa: F401
    finally:
        sys.path[:0] = shadowing


_import_hub_kernels()

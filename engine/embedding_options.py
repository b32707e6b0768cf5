"""Options of sentence embeddings that sentence-transformers models carry: prompts and Matryoshka
dimensions.

* Prompts: ``config_sentence_transformers.json`` may hold ``"prompts": {"query": "query: ", ...}``
  and ``"default_prompt_name"``; a prompt is prepended to each text before tokenization (what
  ``SentenceTransformer.encode(prompt_name=...)`` does).
* Dimensions: Matryoshka-trained models keep most of their quality in a prefix of the vector;
  ``dimensions=d`` keeps the first d values and renormalizes when the model normalizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelLoadError

CONFIG_FILE = "config_sentence_transformers.json"


@dataclass(frozen=True)
class Prompts:
    """name -> prompt text, and the name used when the caller names none (None: no prompt)."""

    prompts: dict[str, str] = field(default_factory=dict)
    default_name: str | None = None

    def text_for(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prompt to prepend: ``prompt`` if given, else the named one, else the default's ('' if none)."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_name
        if name is None:
            return ""
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InputError(f"unknown prompt_name {name!r}; this model's prompts: {known}")
        return self.prompts[name]

    def apply(self, texts: list[str], prompt_name: str | None = None, prompt: str | None = None) -> list[str]:
        text = self.text_for(prompt_name, prompt)
        return [text + t for t in texts] if text else texts


def read_prompts(model_dir: str | Path, default_name: str | None = None) -> Prompts:
    """The prompts of a checkpoint directory; ``default_name`` (e.g. ``--default-prompt-name``)
    overrides the file's default and must name one of its prompts."""
    path = Path(model_dir) / CONFIG_FILE
    prompts, file_default = {}, None
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not readable JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path}: must hold a JSON object")
        prompts = raw.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in prompts.items()):
            raise ModelLoadError(f"{path}: 'prompts' must map names to strings")
        file_default = raw.get("default_prompt_name")
        if file_default is not None and file_default not in prompts:
            raise ModelLoadError(f"{path}: default_prompt_name {file_default!r} is not one of its prompts")
    if default_name is not None and default_name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise InputError(f"default prompt name {default_name!r} is not one of the model's prompts ({known})")
    return Prompts(dict(prompts), default_name if default_name is not None else file_default)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """vectors (n, hidden) -> (n, dimensions): the first ``dimensions`` values, renormalized to unit
    length when ``normalize`` (a normalizing model's embeddings stay unit vectors)."""
    if dimensions is None:
        return vectors
    hidden = vectors.shape[1]
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= hidden:
        raise InputError(f"dimensions must be an integer in [1, {hidden}], got {dimensions!r}")
    out = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out.astype(np.float32, copy=False)

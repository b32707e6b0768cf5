"""A drop-in for ``sentence_transformers.SentenceTransformer.encode`` on a bertrt engine.

    from bertrt.integrations.sentence_transformers import SentenceTransformer
    model = SentenceTransformer("path/to/model")           # was: sentence_transformers.SentenceTransformer
    vectors = model.encode(sentences, batch_size=64, normalize_embeddings=True)

Same semantics as SentenceTransformer's: a single string gives one (hidden,) vector, a list gives
(n, hidden); ``convert_to_tensor`` returns one torch tensor (it wins over ``convert_to_numpy``),
``convert_to_numpy=False`` a list of (hidden,) tensors; ``normalize_embeddings`` L2-normalizes;
``prompt_name`` picks a prompt of ``prompts`` (default: the model's config_sentence_transformers.json),
``prompt`` gives one outright, and the model's ``default_prompt_name`` applies when neither is given;
the prompt is prepended to every text. The checkpoint's own pooling and Normalize module apply, as in
sentence-transformers. Not supported (raise): output_value other than "sentence_embedding", precision
other than "float32", truncate_dim. sentence-transformers itself is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import bertrt
import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError


class SentenceTransformer:
    """``SentenceTransformer(model_name_or_path, prompts=..., default_prompt_name=..., **load_options)``
    where load_options go to ``bertrt.load`` (device, dtype, backend, kernels, ...)."""

    def __init__(self, model_name_or_path=None, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, engine=None, **load_options):
        self.engine = engine if engine is not None else bertrt.load(model_name_or_path, task="embed", **load_options)
        config = _sentence_transformers_config(self.engine.checkpoint.model_dir)
        self.prompts = dict(config.get("prompts") or {}) if prompts is None else dict(prompts)
        self.default_prompt_name = default_prompt_name or config.get("default_prompt_name") or None
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise InputError(f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts "
                             f"{sorted(self.prompts)}")

    def get_sentence_embedding_dimension(self) -> int:
        return self.engine.hidden_size

    @property
    def max_seq_length(self) -> int:
        return self.engine.tokenizer.max_length

    def encode(self, sentences, prompt_name: str | None = None, prompt: str | None = None, batch_size: int = 32,
               show_progress_bar: bool | None = None, output_value: str | None = "sentence_embedding",
               precision: str = "float32", convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               device: str | None = None, normalize_embeddings: bool = False, truncate_dim: int | None = None,
               **kwargs):
        """Embeddings of ``sentences``: (hidden,) for one string, else (n, hidden) float32 (numpy by
        default; a tensor with convert_to_tensor; a list of (hidden,) tensors with convert_to_numpy=False)."""
        if output_value != "sentence_embedding":
            raise InputError(f"output_value={output_value!r} is not supported by bertrt (sentence_embedding only)")
        if precision != "float32" or truncate_dim is not None:
            raise InputError("bertrt's encode returns full float32 embeddings (no precision/truncate_dim)")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        single = isinstance(sentences, str) or not hasattr(sentences, "__len__")
        texts = [sentences] if single else list(sentences)
        prefix = self._prompt(prompt_name, prompt)
        if prefix:
            texts = [prefix + t if isinstance(t, str) else t for t in texts]
        # Length-sorted chunks like sentence-transformers': similar lengths pack into fewer GEMM rows.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]) if isinstance(texts[i], str) else 0)
        chunks = [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(texts), batch_size)]
        parts = [self.engine.embed(chunk, normalize=True if normalize_embeddings else None)
                 for chunk in tqdm(chunks, desc="Batches", disable=not show_progress_bar)]
        vectors = np.empty((len(texts), self.engine.hidden_size), dtype=np.float32)
        if parts:
            vectors[order] = np.concatenate(parts)
        if convert_to_tensor:
            out = torch.from_numpy(vectors)
            return out[0] if single else out
        if convert_to_numpy:
            return vectors[0] if single else vectors
        rows = list(torch.from_numpy(vectors).unbind(0))
        return rows[0] if single else rows

    def _prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise InputError(f"prompt name {name!r} is not among this model's prompts {sorted(self.prompts)}")
        return self.prompts[name]


def _sentence_transformers_config(model_dir) -> dict:
    path = Path(model_dir) / "config_sentence_transformers.json"
    return json.loads(path.read_text()) if path.exists() else {}

"""Which checkpoint a bench runs: the bundled MiniLM, a directory, or a random-weight BERT of a
standard shape (``--config bert-base``), written once (seeded) so that every engine loads the same
weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import InputError
from ..model.loader import default_model_dir

# transformers.BertConfig defaults are bert-base: hidden 768, 12 layers, 12 heads, intermediate 3072
CONFIGS = {
    "bert-base": {},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096},
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def random_checkpoint(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """<cache_dir>/<name>-random-s<seed>: a BertModel with random weights and MiniLM's tokenizer."""
    if name not in CONFIGS:
        raise InputError(f"unknown --config {name!r}; choose from {sorted(CONFIGS)}")
    target = Path(cache_dir) / f"{name}-random-s{seed}"
    if (target / "model.safetensors").exists() and (target / "vocab.txt").exists():
        return target
    try:
        import transformers  # optional dependency (bertrt[bench])
    except ImportError as exc:
        raise InputError("--config needs transformers to write the random checkpoint (pip install "
                         "'bertrt[bench]')") from exc
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**CONFIGS[name])).eval()
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    source = default_model_dir()
    for file in TOKENIZER_FILES:
        if (source / file).exists():
            shutil.copy(source / file, tmp / file)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve_model(model: str | None, config: str | None, cache_dir: Path, seed: int = 0) -> tuple[Path, str]:
    """(checkpoint directory, short name for files and the table)."""
    if config and model:
        raise InputError("give --model or --config, not both")
    if config:
        return random_checkpoint(config, cache_dir, seed), config
    if model is None:
        return default_model_dir(), "all-MiniLM-L6-v2"
    path = Path(model)
    if not path.is_dir():
        raise InputError(f"model directory not found: {path}")
    return path, path.resolve().name

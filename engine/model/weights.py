"""Reading a checkpoint's tensors (safetensors, sharded safetensors, or pytorch_model.bin loaded with
``weights_only=True``) and checking each against the shape the config implies."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ModelLoadError
from .config import EncoderConfig
from .lm_heads import weight_shapes as lm_head_shapes
from .validate import check_shard_index, check_state_dict, check_tensors, read_json, read_torch_file

# Prefixes a BERT checkpoint may put in front of the encoder's own names
_ENCODER_PREFIXES = ("bert.", "model.", "")


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``model_dir``; raise ModelLoadError naming what is missing."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    legacy = model_dir / "pytorch_model.bin"
    try:
        if single.exists():
            return load_file(str(single))
        if index.exists():
            shards = check_shard_index(read_json(index), str(index))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(model_dir / shard)))
            return state
        if legacy.exists():
            return check_state_dict(read_torch_file(legacy, "weights"), str(legacy))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: cannot read weights: {exc}") from exc
    raise ModelLoadError(
        f"{model_dir}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin)"
    )


def expected_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names (HF's without the 'bert.' prefix) and the shapes config.json implies."""
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            shapes[p + f"attention.self.{proj}.weight"] = (h, h)
            shapes[p + f"attention.self.{proj}.bias"] = (h,)
        shapes[p + "attention.output.dense.weight"] = (h, h)
        shapes[p + "attention.output.dense.bias"] = (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = (h,)
        shapes[p + "attention.output.LayerNorm.bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (i, h)
        shapes[p + "intermediate.dense.bias"] = (i,)
        shapes[p + "output.dense.weight"] = (h, i)
        shapes[p + "output.dense.bias"] = (h,)
        shapes[p + "output.LayerNorm.weight"] = (h,)
        shapes[p + "output.LayerNorm.bias"] = (h,)
    task = config.task
    if task == "classify":
        shapes["pooler.dense.weight"] = (h, h)
        shapes["pooler.dense.bias"] = (h,)
        shapes["classifier.weight"] = (config.num_labels, h)
        shapes["classifier.bias"] = (config.num_labels,)
    elif task == "ner":
        shapes["classifier.weight"] = (config.num_labels, h)
        shapes["classifier.bias"] = (config.num_labels,)
    elif task == "qa":
        shapes["qa_outputs.weight"] = (2, h)
        shapes["qa_outputs.bias"] = (2,)
    shapes.update(lm_head_shapes(config)[0])
    return shapes


def _canonical(name: str) -> str:
    # Old TF-converted checkpoints call LayerNorm's parameters gamma/beta
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    for prefix in _ENCODER_PREFIXES:
        if prefix and name.startswith(prefix):
            return name[len(prefix):]
    return name


def checked_state_dict(raw: dict[str, torch.Tensor], config: EncoderConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename to our names and check presence and shape of every tensor the model needs."""
    state = {_canonical(k): v for k, v in raw.items()}
    expected = expected_shapes(config)
    check_tensors(state, expected, source)
    optional = {k: shape for k, shape in lm_head_shapes(config)[1].items() if k in state}
    for name, shape in optional.items():
        if tuple(state[name].shape) != shape:
            raise ModelLoadError(f"{source}: weight {name} has shape {tuple(state[name].shape)}, expected {shape}")
    return {k: state[k] for k in (*expected, *optional)}

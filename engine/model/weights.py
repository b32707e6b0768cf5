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


def _linear(shapes: dict, name: str, out: int, inp: int, bias: bool = True) -> None:
    shapes[name + ".weight"] = (out, inp)
    if bias:
        shapes[name + ".bias"] = (out,)


def _norm(shapes: dict, name: str, width: int, bias: bool = True) -> None:
    shapes[name + ".weight"] = (width,)
    if bias:
        shapes[name + ".bias"] = (width,)


def _head(shapes: dict, spec, config: EncoderConfig, outputs: int) -> None:
    h = config.hidden_size
    if spec.dense:
        _linear(shapes, spec.dense, h, h, config.classifier_bias if spec.activation == "config" else True)
    if spec.norm:
        _norm(shapes, spec.norm, h, config.norm_bias)
    _linear(shapes, spec.out, outputs, h)


def expected_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names (BERT's, see ``families``) and the shapes config.json implies."""
    family = config.family
    h, i = config.hidden_size, config.intermediate_size
    e = config.embedding_size or h
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (config.vocab_size, e)}
    if family.position_embeddings:
        shapes["embeddings.position_embeddings.weight"] = (config.max_position_embeddings, e)
    if family.token_type_table:
        shapes["embeddings.token_type_embeddings.weight"] = (config.type_vocab_size, e)
    _norm(shapes, "embeddings.LayerNorm", e, config.norm_bias)
    if config.embedding_size:
        _linear(shapes, "embeddings_project", h, e)
    if family.relative_attention:
        shapes["encoder.relative_attention_bias.weight"] = (config.relative_attention_num_buckets,
                                                            config.num_attention_heads)
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        if family.modern:
            _linear(shapes, p + "attention.self.qkv", 3 * h, h, config.attention_bias)
        else:
            for proj in ("query", "key", "value"):
                _linear(shapes, p + f"attention.self.{proj}", h, h)
        _linear(shapes, p + "attention.output.dense", h, h, config.attention_bias)
        if not (family.modern and n == 0):  # ModernBERT's first layer has no norm before attention
            _norm(shapes, p + "attention.output.LayerNorm", h, config.norm_bias)
        _linear(shapes, p + "intermediate.dense", 2 * i if family.modern else i, h, config.mlp_bias)
        _linear(shapes, p + "output.dense", h, i, config.mlp_bias)
        _norm(shapes, p + "output.LayerNorm", h, config.norm_bias)
    if family.modern:
        _norm(shapes, "encoder.final_norm", h, config.norm_bias)
    task = config.task
    if task == "classify":
        _head(shapes, family.sequence_head, config, config.num_labels)
    elif task == "ner":
        _head(shapes, family.token_head, config, config.num_labels)
    elif task == "qa":
        _head(shapes, family.qa_head, config, 2)
    shapes.update(lm_head_shapes(config)[0])
    return shapes


def checked_state_dict(raw: dict[str, torch.Tensor], config: EncoderConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename to our names and check presence and shape of every tensor the model needs."""
    family = config.family
    original = {family.canonical(k): k for k in raw}
    state = {ours: raw[theirs] for ours, theirs in original.items()}
    expected = expected_shapes(config)
    check_tensors(state, expected, source, original)
    optional = {k: shape for k, shape in lm_head_shapes(config)[1].items() if k in state}
    for name, shape in optional.items():
        if tuple(state[name].shape) != shape:
            raise ModelLoadError(f"{source}: weight {name} has shape {tuple(state[name].shape)}, expected {shape}")
    return {k: state[k] for k in (*expected, *optional)}

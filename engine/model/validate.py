"""Checks on everything bertrt reads from a model directory, so a bad checkpoint is a ModelLoadError
naming the file and the field or tensor, never a raw traceback or an allocation sized by an unchecked
number.

- A small declarative schema per JSON file: field -> ``Field(kind, required, low, high, ...)``.
  A model family adds its config fields as data: ``CONFIG_SCHEMAS["roberta"] = {**BERT_CONFIG, ...}``
  (the schema is picked by config.json's ``model_type``), and ``CONFIG_CHECKS`` holds the checks
  that relate several fields.
- ``check_tensors``: the weights against the shapes config.json implies (missing, extra, wrong shape).
- ``read_json`` / ``read_torch_file``: the one way each kind of file is read (torch files with
  ``weights_only=True``: no pickled code ever runs).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

# Upper bounds that keep a bogus number from sizing an allocation or a loop before the weights are
# checked against it. Real encoders are far inside them (XLM-R: vocabulary 250k; ModernBERT: 8k positions).
MAX_VOCAB = 1 << 22
MAX_HIDDEN = 1 << 15
MAX_INTERMEDIATE = 1 << 17
MAX_POSITIONS = 1 << 17
MAX_LAYERS = 256
MAX_HEADS = 1024
MAX_LABELS = 100_000
# Parameters config.json may imply (fp32: 16 GiB); beyond this it is refused before anything is built.
MAX_PARAMETERS = 1 << 32

KIND_NAMES = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false",
              "list": "a list", "dict": "an object"}


@dataclass(frozen=True)
class Field:
    """One JSON field: ``kind`` ("int", "number", "str", "bool", "list", "dict"), whether it must be
    present, an inclusive [low, high] range for numbers, whether null is allowed, the kind of a
    list's items, and the allowed values."""

    kind: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    nullable: bool = False
    items: str | None = None
    choices: tuple | None = None


def _is_kind(value, kind: str) -> bool:
    if kind == "int":  # bool is an int subclass in Python, never a size in JSON
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


def _show(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_object(raw, schema: Mapping[str, Field], source: str) -> dict:
    """``raw`` if it is a JSON object whose fields fit ``schema``; else ModelLoadError naming the field."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{source}: must be a JSON object, got {type(raw).__name__}")
    missing = [name for name, spec in schema.items() if spec.required and name not in raw]
    if missing:
        raise ModelLoadError(f"{source}: missing keys {missing}")
    for name, spec in schema.items():
        if name not in raw:
            continue
        value = raw[name]
        if value is None and spec.nullable:
            continue
        if not _is_kind(value, spec.kind):
            raise ModelLoadError(f"{source}: {name} must be {KIND_NAMES[spec.kind]}, got {_show(value)}")
        if spec.kind == "number" and not math.isfinite(value):
            raise ModelLoadError(f"{source}: {name} must be finite, got {value!r}")
        if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
            raise ModelLoadError(f"{source}: {name} is {value}, outside [{spec.low}, {spec.high}]")
        if spec.choices is not None and value not in spec.choices:
            raise ModelLoadError(f"{source}: {name} is {value!r}; supported {list(spec.choices)}")
        if spec.items is not None:
            for index, item in enumerate(value):
                if not _is_kind(item, spec.items):
                    raise ModelLoadError(f"{source}: {name}[{index}] must be {KIND_NAMES[spec.items]}, "
                                         f"got {_show(item)}")
    return raw


# -- config.json ------------------------------------------------------------------------------------

BERT_CONFIG: dict[str, Field] = {
    "vocab_size": Field("int", required=True, low=1, high=MAX_VOCAB),
    "hidden_size": Field("int", required=True, low=1, high=MAX_HIDDEN),
    "num_hidden_layers": Field("int", required=True, low=1, high=MAX_LAYERS),
    "num_attention_heads": Field("int", required=True, low=1, high=MAX_HEADS),
    "intermediate_size": Field("int", required=True, low=1, high=MAX_INTERMEDIATE),
    "max_position_embeddings": Field("int", required=True, low=1, high=MAX_POSITIONS),
    "type_vocab_size": Field("int", low=1, high=1 << 16),
    "layer_norm_eps": Field("number", low=0.0, high=1.0),
    "hidden_act": Field("str"),
    "pad_token_id": Field("int", low=0, high=MAX_VOCAB, nullable=True),
    "architectures": Field("list", nullable=True, items="str"),
    "model_type": Field("str"),
    "position_embedding_type": Field("str", nullable=True),
    "id2label": Field("dict", nullable=True),
    "label2id": Field("dict", nullable=True),
    "num_labels": Field("int", low=0, high=MAX_LABELS),
    "problem_type": Field("str", nullable=True),
}
_BERT_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_ROBERTA_CONFIG = {**BERT_CONFIG, "bos_token_id": Field("int", low=0, high=MAX_VOCAB, nullable=True),
                   "eos_token_id": Field("int", low=0, high=MAX_VOCAB, nullable=True)}
# DistilBERT names its sizes dim / n_layers / n_heads / hidden_dim and its activation "activation"
DISTILBERT_CONFIG = {
    **{k: v for k, v in BERT_CONFIG.items() if k not in (*_BERT_SIZES, "hidden_act", "type_vocab_size")},
    "dim": Field("int", required=True, low=1, high=MAX_HIDDEN),
    "n_layers": Field("int", required=True, low=1, high=MAX_LAYERS),
    "n_heads": Field("int", required=True, low=1, high=MAX_HEADS),
    "hidden_dim": Field("int", required=True, low=1, high=MAX_INTERMEDIATE),
    "activation": Field("str"),
    "sinusoidal_pos_embds": Field("bool"),
}
ELECTRA_CONFIG = {**BERT_CONFIG, "embedding_size": Field("int", low=1, high=MAX_HIDDEN)}
MPNET_CONFIG = {**_ROBERTA_CONFIG, "relative_attention_num_buckets": Field("int", low=2, high=1024)}
MODERNBERT_CONFIG = {
    **{k: v for k, v in BERT_CONFIG.items() if k not in ("hidden_act", "layer_norm_eps", "type_vocab_size")},
    "norm_eps": Field("number", low=0.0, high=1.0),
    "hidden_activation": Field("str"),
    "local_attention": Field("int", low=2, high=MAX_POSITIONS),
    "global_attn_every_n_layers": Field("int", low=1, high=MAX_LAYERS),
    "layer_types": Field("list", nullable=True, items="str"),
    "global_rope_theta": Field("number", low=1.0, high=1e12),
    "local_rope_theta": Field("number", low=1.0, high=1e12),
    "rope_parameters": Field("dict", nullable=True),
    "attention_bias": Field("bool"),
    "mlp_bias": Field("bool"),
    "norm_bias": Field("bool"),
    "classifier_bias": Field("bool"),
    "decoder_bias": Field("bool"),
    "classifier_pooling": Field("str", choices=("cls", "mean")),
    "classifier_activation": Field("str"),
}
# model_type -> schema (the family's own key names); a family that is not listed is checked against BERT's
CONFIG_SCHEMAS: dict[str, dict[str, Field]] = {
    "bert": BERT_CONFIG, "roberta": _ROBERTA_CONFIG, "xlm-roberta": _ROBERTA_CONFIG, "camembert": _ROBERTA_CONFIG,
    "distilbert": DISTILBERT_CONFIG, "electra": ELECTRA_CONFIG, "mpnet": MPNET_CONFIG,
    "modernbert": MODERNBERT_CONFIG,
}


def _heads_divide_hidden(raw: dict, source: str) -> None:
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise ModelLoadError(f"{source}: hidden_size {raw['hidden_size']} is not divisible by "
                             f"num_attention_heads {raw['num_attention_heads']}")


def _pad_token_in_vocabulary(raw: dict, source: str) -> None:
    pad = raw.get("pad_token_id")
    if pad is not None and pad >= raw["vocab_size"]:
        raise ModelLoadError(f"{source}: pad_token_id {pad} is outside the vocabulary (vocab_size "
                             f"{raw['vocab_size']})")


def _labels(raw: dict, source: str) -> None:
    """id2label keys are the label ids 0..n-1 (strings in JSON); values are strings."""
    id2label = raw.get("id2label") or {}
    if len(id2label) > MAX_LABELS:
        raise ModelLoadError(f"{source}: id2label has {len(id2label)} labels, more than {MAX_LABELS}")
    ids = []
    for key, value in id2label.items():
        text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        if not isinstance(text, str) or not text.isascii() or not text.isdigit():
            raise ModelLoadError(f"{source}: id2label key {key!r} is not a label id (0, 1, ...)")
        if not isinstance(value, str):
            raise ModelLoadError(f"{source}: id2label[{key!r}] must be a string, got {_show(value)}")
        ids.append(int(text))
    if sorted(ids) != list(range(len(ids))):
        raise ModelLoadError(f"{source}: id2label keys must be 0..{len(ids) - 1}, got {sorted(ids)[:8]}")


def implied_parameters(raw: dict) -> int:
    """Parameters an encoder of these sizes has (embeddings + layers; heads are small)."""
    h, i = raw["hidden_size"], raw["intermediate_size"]
    positions = 0 if raw.get("model_type") == "modernbert" else raw["max_position_embeddings"]  # rotary: no table
    embeddings = (raw["vocab_size"] + positions + raw.get("type_vocab_size", 2) + 2) * h
    layer = 4 * h * h + 2 * h * i + 9 * h + i
    return embeddings + raw["num_hidden_layers"] * layer


def _parameter_budget(raw: dict, source: str) -> None:
    count = implied_parameters(raw)
    if count > MAX_PARAMETERS:
        raise ModelLoadError(f"{source}: vocab_size, hidden_size, intermediate_size and num_hidden_layers imply "
                             f"{count:,} parameters, more than bertrt loads ({MAX_PARAMETERS:,})")


# Checks relating several fields, run after every field passed its schema
CONFIG_CHECKS: list[Callable[[dict, str], None]] = [_heads_divide_hidden, _pad_token_in_vocabulary, _labels,
                                                    _parameter_budget]


def validate_config(raw, source: str, model_type: str | None = None, keys: Mapping[str, str] | None = None) -> dict:
    """config.json's content checked against its family's schema (its own key names), then renamed
    to BERT's key names with ``keys`` (DistilBERT's dim -> hidden_size) and checked with
    ``CONFIG_CHECKS``; returns the renamed copy."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{source}: must be a JSON object, got {type(raw).__name__}")
    if model_type is None:
        model_type = raw.get("model_type", "bert")
    schema = CONFIG_SCHEMAS.get(model_type, BERT_CONFIG) if isinstance(model_type, str) else BERT_CONFIG
    check_object(raw, schema, source)
    if keys:
        raw = {keys.get(name, name): value for name, value in raw.items()}
    for check in CONFIG_CHECKS:
        check(raw, source)
    return raw


# -- sentence-transformers and quantization files -----------------------------------------------------

MODULE_ENTRY = {"type": Field("str"), "path": Field("str")}
POOLING_CONFIG = {
    "word_embedding_dimension": Field("int", low=1, high=MAX_HIDDEN),
    **{f"pooling_mode_{mode}": Field("bool") for mode in (
        "cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")},
}
DENSE_CONFIG = {"in_features": Field("int", required=True, low=1, high=MAX_HIDDEN),
                "out_features": Field("int", required=True, low=1, high=MAX_HIDDEN),
                "bias": Field("bool"), "activation_function": Field("str")}
SENTENCE_BERT_CONFIG = {"max_seq_length": Field("int", low=1, high=MAX_POSITIONS, nullable=True),
                        "do_lower_case": Field("bool")}
SHARD_INDEX = {"weight_map": Field("dict", required=True)}
QUANTIZATION = {"format_version": Field("int", required=True), "config": Field("dict", required=True),
                "modules": Field("dict"), "compute_dtype": Field("str", nullable=True)}
QUANTIZED_MODULE = {"in_features": Field("int", required=True, low=1, high=MAX_INTERMEDIATE),
                    "out_features": Field("int", required=True, low=1, high=MAX_INTERMEDIATE),
                    "bias": Field("bool", required=True), "mode": Field("str", required=True),
                    "smooth": Field("bool"), "tensors": Field("list", items="str")}


def check_modules_list(modules, source: str) -> list[dict]:
    """modules.json: a list of {"type": str, "path": str, ...} whose paths stay inside the model directory."""
    if not isinstance(modules, list):
        raise ModelLoadError(f"{source}: must be a JSON list of modules, got {type(modules).__name__}")
    for index, module in enumerate(modules):
        check_object(module, MODULE_ENTRY, f"{source}[{index}]")
        check_relative_path(module.get("path", ""), f"{source}[{index}].path")
    return modules


def check_relative_path(name: str, source: str) -> str:
    """A path inside the model directory: relative, no '..' (a planted file elsewhere is never read)."""
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise ModelLoadError(f"{source}: {name!r} is not a path inside the model directory")
    return name


def check_shard_index(index, source: str) -> list[str]:
    """model.safetensors.index.json -> its shard file names (inside the model directory)."""
    check_object(index, SHARD_INDEX, source)
    shards = set()
    for tensor, shard in index["weight_map"].items():
        if not isinstance(shard, str):
            raise ModelLoadError(f"{source}: weight_map[{tensor!r}] must be a file name, got {_show(shard)}")
        shards.add(check_relative_path(shard, f"{source}: weight_map[{tensor!r}]"))
    return sorted(shards)


def check_quantization(meta, source: str) -> dict:
    check_object(meta, QUANTIZATION, source)
    for name, info in (meta.get("modules") or {}).items():
        check_object(info, QUANTIZED_MODULE, f"{source}: modules[{name!r}]")
    return meta


# -- reading files -------------------------------------------------------------------------------------


def read_json(path: Path, missing_ok: bool = False):
    """The JSON content of ``path`` (None when absent and ``missing_ok``); any failure a ModelLoadError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ModelLoadError(f"missing {path.name}: {path}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None


def read_torch_file(path: Path, what: str = "file"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, so a planted pickle can run
    no code; anything else in the file is a ModelLoadError naming it."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read {what}: {describe_load_error(exc)}") from exc


_UNSAFE_GLOBAL = re.compile(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)")


def describe_load_error(exc: BaseException) -> str:
    """One line for a failed torch.load: for a refused pickle, the Python object it wanted to build."""
    text = str(exc)
    unsafe = _UNSAFE_GLOBAL.search(text)
    if unsafe or "Weights only load failed" in text:
        found = f" ({unsafe.group(1)})" if unsafe else ""
        return (f"it holds a pickled Python object{found}, not only tensors and plain values; bertrt never "
                "unpickles code")
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def check_state_dict(state, source: str) -> dict[str, torch.Tensor]:
    """A loaded torch file that must be a flat {name: tensor} mapping."""
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{source}: expected a mapping of tensor names to tensors, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(f"{source}: entry {name!r} is {type(tensor).__name__}, not a named tensor")
    return dict(state)


# -- weights against config.json ------------------------------------------------------------------------

# Tensors a checkpoint may hold that the model does not use: buffers older exports saved
IGNORED_TENSORS = {"embeddings.position_ids"}
# Name prefixes the encoder owns: a tensor there that config.json does not describe means the
# config and the weights disagree (a 1-layer config over a 2-layer checkpoint)
ENCODER_PREFIXES = ("embeddings.", "encoder.")
_LAYER = re.compile(r"encoder\.layers?\.(\d+)\.")


def check_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str,
                  original: Mapping[str, str] | None = None) -> None:
    """Every expected tensor present, floating point, of the expected shape; no encoder tensor beyond them.
    ``original`` maps our (BERT-layout) names to the checkpoint's own, which messages name."""
    def shown(name: str) -> str:
        theirs = (original or {}).get(name, name)
        return theirs if theirs.endswith(name) else f"{theirs} (bertrt's {name})"  # a prefix only: theirs

    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ModelLoadError(f"{source}: missing weights {missing[:5]}{more}")
    for name, shape in expected.items():
        tensor = state[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ModelLoadError(f"{source}: weight {shown(name)} has shape {tuple(tensor.shape)}, "
                                 f"config.json implies {tuple(shape)}")
        if not tensor.is_floating_point():
            raise ModelLoadError(f"{source}: weight {shown(name)} has non-float dtype {tensor.dtype}")
    extra = [name for name in state if name not in expected and name not in IGNORED_TENSORS
             and name.startswith(ENCODER_PREFIXES)]
    if extra:
        layers = {int(m.group(1)) for m in map(_LAYER.match, expected) if m}
        layer = _LAYER.match(extra[0])
        if layer and int(layer.group(1)) not in layers:
            raise ModelLoadError(f"{source}: weights have layer {layer.group(1)} ({shown(extra[0])}) but config.json "
                                 f"num_hidden_layers is {len(layers)}")
        raise ModelLoadError(f"{source}: weight {shown(extra[0])} is not part of the model config.json describes")


def check_tokenizer_fits(tokenizer_size: int, vocab_size: int, source: str) -> None:
    """Every id the tokenizer can produce must index the embedding table (an id past it reads memory
    out of bounds in an embedding kernel)."""
    if tokenizer_size > vocab_size:
        raise ModelLoadError(f"{source}: the tokenizer has {tokenizer_size} tokens but config.json vocab_size is "
                             f"{vocab_size}")


def check_file_holds(config_raw: dict, element_count: int, source: str) -> None:
    """Before a model is built from config.json alone: its weights file must hold at least as many
    values as the config implies (a bogus size is refused before it allocates anything)."""
    implied = implied_parameters(config_raw)
    if implied > element_count:
        raise ModelLoadError(f"{source}: config.json implies {implied:,} parameters but the weights hold only "
                             f"{element_count:,} values")

"""The encoder's hyper-parameters, read from a Hugging Face config.json and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from .families import Family, all_architectures, family_for
from .validate import read_json, validate_config

# architectures[0] in config.json -> the task head bertrt builds (every family's classes)
ARCHITECTURE_TASKS = {arch: task for arch, (_, task) in all_architectures().items()}
# architecture suffix -> tasks its head runs besides its own (any family's *ForMaskedLM maps the same way)
EXTRA_TASKS = {"ForMaskedLM": ("embed_sparse",), "ForPreTraining": ("next_sentence", "embed_sparse")}
# hidden_act -> bias_gelu's approximate argument (BERT uses exact erf GELU)
GELU_VARIANTS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
# activations a head's transform may use (ModernBERT's classifier_activation, DistilBERT's pre_classifier)
HEAD_ACTIVATIONS = ("tanh", "relu", *GELU_VARIANTS)
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    architecture: str = "BertModel"
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None
    model_type: str = "bert"
    embedding_size: int | None = None  # ELECTRA: embeddings narrower than hidden_size, then projected
    relative_attention_num_buckets: int = 32  # MPNet
    # ModernBERT
    local_attention: int = 0  # the full local window (tokens); a sliding layer attends |i - j| <= local_attention // 2
    layer_types: tuple[str, ...] = ()  # per layer: full_attention | sliding_attention
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    attention_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    classifier_bias: bool = True

    @property
    def family(self) -> Family:
        return family_for(self.model_type, "config")

    @property
    def position_offset(self) -> int:
        """Added to in-sequence positions (RoBERTa-likes count from pad_token_id + 1)."""
        family = self.family
        if not family.position_offset:
            return 0
        pad = family.fixed_padding_idx if family.fixed_padding_idx is not None else self.pad_token_id
        return pad + 1

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table (or the trained context) allows."""
        return self.max_position_embeddings - self.position_offset

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def task(self) -> str:
        return ARCHITECTURE_TASKS[self.architecture]

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task this checkpoint runs: embed (any encoder), its head's own, and the extras."""
        extra = next((t for suffix, t in EXTRA_TASKS.items() if self.architecture.endswith(suffix)), ())
        return tuple(dict.fromkeys(("embed", self.task, *extra)))

    @property
    def gelu_approximation(self) -> str:
        return GELU_VARIANTS[self.hidden_act]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> EncoderConfig:
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{source}: must be a JSON object, got {type(raw).__name__}")
        family = family_for(raw.get("model_type", "bert"), source)
        # types and ranges first (in the family's own key names), then BERT's names for everything below
        raw = validate_config(raw, source, family.model_type, family.config_keys)
        architectures = raw.get("architectures") or [f"{family.architecture_prefix}Model"]
        architecture = architectures[0]
        own = family.architectures()
        if architecture not in own:
            raise ModelLoadError(f"{source}: unsupported architecture {architecture!r} for model_type "
                                 f"{family.model_type!r}; bertrt runs {sorted(own)}")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "max_position_embeddings") if k not in raw]
        if missing:
            raise ModelLoadError(f"{source}: missing keys {missing}")
        hidden_act = raw.get("hidden_act", "gelu")
        if hidden_act not in GELU_VARIANTS:
            raise ModelLoadError(f"{source}: unsupported hidden_act {hidden_act!r}; supported {sorted(GELU_VARIANTS)}")
        if raw["hidden_size"] % raw["num_attention_heads"]:
            raise ModelLoadError(
                f"{source}: hidden_size {raw['hidden_size']} is not divisible by "
                f"num_attention_heads {raw['num_attention_heads']}"
            )
        if raw.get("position_embedding_type", "absolute") not in ("absolute", None):
            raise ModelLoadError(f"{source}: only absolute position embeddings are supported")
        id2label = {int(k): str(v) for k, v in (raw.get("id2label") or {}).items()}
        task = own[architecture]
        if task != "embed" and not id2label:
            num = int(raw.get("num_labels", 2 if task != "qa" else 0))
            id2label = {i: f"LABEL_{i}" for i in range(num)}
        extra = _family_options(raw, family, source)
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw.get("type_vocab_size", 2) if family.token_types or "type_vocab_size" in raw else 1,
            layer_norm_eps=raw.get("layer_norm_eps", 1e-5 if family.modern else 1e-12),
            hidden_act=hidden_act,
            pad_token_id=raw.get("pad_token_id", 0) or 0,
            architecture=architecture,
            id2label=id2label if task != "embed" else {},
            problem_type=raw.get("problem_type"),
            model_type=family.model_type,
            **extra,
        )

    @classmethod
    def from_file(cls, path: Path) -> EncoderConfig:
        return cls.from_dict(read_json(Path(path)), source=str(path))


def _family_options(raw: dict, family: Family, source: str) -> dict:
    """The EncoderConfig fields a family's options read from config.json."""
    out: dict = {}
    if family.embedding_projection and raw.get("embedding_size", raw["hidden_size"]) != raw["hidden_size"]:
        out["embedding_size"] = raw["embedding_size"]
    if family.relative_attention:
        out["relative_attention_num_buckets"] = raw.get("relative_attention_num_buckets", 32)
    if not family.modern:
        return out
    layers = raw["num_hidden_layers"]
    every = raw.get("global_attn_every_n_layers", 3)
    types = raw.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    if len(types) != layers or any(t not in LAYER_TYPES for t in types):
        raise ModelLoadError(f"{source}: layer_types must list {layers} of {list(LAYER_TYPES)}, got {types}")
    rope = raw.get("rope_parameters") or {}
    thetas = {}
    for kind, legacy, default in (("full_attention", "global_rope_theta", 160000.0),
                                  ("sliding_attention", "local_rope_theta", 10000.0)):
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default":
            raise ModelLoadError(f"{source}: rope_parameters[{kind!r}] rope_type {params['rope_type']!r} is not "
                                 "supported; bertrt runs 'default' rotary embeddings")
        theta = params.get("rope_theta", raw.get(legacy, default))
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
            raise ModelLoadError(f"{source}: rope_theta for {kind} must be a positive number, got {theta!r}")
        thetas[kind] = float(theta)
    activation = raw.get("classifier_activation", "gelu")
    if activation not in HEAD_ACTIVATIONS:
        raise ModelLoadError(f"{source}: unsupported classifier_activation {activation!r}; supported "
                             f"{list(HEAD_ACTIVATIONS)}")
    out.update(local_attention=raw.get("local_attention", 128), layer_types=tuple(types),
               global_rope_theta=thetas["full_attention"], local_rope_theta=thetas["sliding_attention"],
               attention_bias=raw.get("attention_bias", False), mlp_bias=raw.get("mlp_bias", False),
               norm_bias=raw.get("norm_bias", False), classifier_pooling=raw.get("classifier_pooling", "cls"),
               classifier_activation=activation, classifier_bias=raw.get("classifier_bias", False))
    return out

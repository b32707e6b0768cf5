"""The encoder's hyper-parameters, read from a Hugging Face config.json and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from .validate import read_json, validate_config

# architectures[0] in config.json -> the task head bertrt builds
ARCHITECTURE_TASKS = {
    "BertModel": "embed",
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "ner",
    "BertForQuestionAnswering": "qa",
    "BertForMaskedLM": "fill_mask",
    "BertForNextSentencePrediction": "next_sentence",
    "BertForPreTraining": "fill_mask",
}
# architecture suffix -> tasks its head runs besides its own (any family's *ForMaskedLM maps the same way)
EXTRA_TASKS = {"ForMaskedLM": ("embed_sparse",), "ForPreTraining": ("next_sentence", "embed_sparse")}
# hidden_act -> bias_gelu's approximate argument (BERT uses exact erf GELU)
GELU_VARIANTS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


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
        raw = validate_config(raw, source)  # types and ranges first: nothing below sees an unchecked value
        architectures = raw.get("architectures") or ["BertModel"]
        architecture = architectures[0]
        if architecture not in ARCHITECTURE_TASKS:
            raise ModelLoadError(
                f"{source}: unsupported architecture {architecture!r}; bertrt runs {sorted(ARCHITECTURE_TASKS)}"
            )
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ModelLoadError(f"{source}: unsupported model_type {model_type!r}; bertrt runs 'bert'")
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
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"{source}: only absolute position embeddings are supported")
        id2label = {int(k): str(v) for k, v in (raw.get("id2label") or {}).items()}
        if architecture != "BertModel" and not id2label:
            num = int(raw.get("num_labels", 2 if architecture != "BertForQuestionAnswering" else 0))
            id2label = {i: f"LABEL_{i}" for i in range(num)}
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            hidden_act=hidden_act,
            pad_token_id=raw.get("pad_token_id", 0) or 0,
            architecture=architecture,
            id2label=id2label if architecture != "BertModel" else {},
            problem_type=raw.get("problem_type"),
        )

    @classmethod
    def from_file(cls, path: Path) -> EncoderConfig:
        return cls.from_dict(read_json(Path(path)), source=str(path))

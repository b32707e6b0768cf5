"""The BERT family as data: what each ``model_type`` changes in the one encoder and its heads.

A family is a ``Family`` row: how its config.json names the sizes (DistilBERT's ``dim``,
ModernBERT's ``norm_eps``), how its checkpoint names the tensors (renamed to BERT's layout, which
``weights.expected_shapes`` and ``Encoder.load_hf_state`` read), and the options of the encoder
(RoBERTa's position offset, no token types, ELECTRA's embedding projection, MPNet's relative
position bias, ModernBERT's rotary / GeGLU / bias-free / pre-norm / local-global layers) and of
its heads. config.py, weights.py, encoder.py, heads.py and loader.py read these rows; none of them
branches on a family's name.

Canonical tensor names are BERT's (``embeddings.word_embeddings.weight``,
``encoder.layer.N.attention.self.query.weight``, ...) plus the few a BERT has no counterpart for:
``embeddings_project`` (ELECTRA), ``encoder.relative_attention_bias`` (MPNet),
``encoder.layer.N.attention.self.qkv`` (ModernBERT's fused Wqkv) and ``encoder.final_norm``. In a
pre-norm layer ``attention.output.LayerNorm`` is the norm *before* attention (absent in layer 0)
and ``output.LayerNorm`` the norm before the feed-forward block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ModelLoadError


@dataclass(frozen=True)
class HeadSpec:
    """A task head as data: an optional transform (dense -> activation -> optional norm) on the
    pooled (sequence heads) or per-token hidden states, then the output projection.

    dense/norm/out are tensor-name stems (without .weight/.bias) in the checkpoint."""

    out: str
    dense: str | None = None
    activation: str = "tanh"  # tanh | gelu | relu | the config's classifier activation ("config")
    norm: str | None = None


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture_prefix: str  # "Roberta" of RobertaForSequenceClassification
    prefixes: tuple[str, ...]  # what the checkpoint puts before the encoder's names ("roberta.", "")
    config_keys: dict[str, str] = field(default_factory=dict)  # their config.json key -> BERT's
    renames: tuple[tuple[str, str], ...] = ()  # regex over the unprefixed name -> BERT's layout
    position_offset: bool = False  # positions start at pad_token_id + 1 (fairseq's make_positions)
    fixed_padding_idx: int | None = None  # MPNet hard-codes its padding index (1)
    token_types: bool = True  # False: every token is type 0 (the pair template gives no segment ids)
    token_type_table: bool = True  # the checkpoint holds a token-type table (RoBERTa's has one row)
    position_embeddings: bool = True  # False: rotary positions inside attention (ModernBERT)
    embedding_projection: bool = False  # ELECTRA: embeddings of embedding_size, then a projection
    relative_attention: bool = False  # MPNet: a bucketed relative position bias shared by all layers
    modern: bool = False  # ModernBERT: pre-norm, GeGLU, rotary, local/global layers, final norm, no biases
    sequence_head: HeadSpec = HeadSpec("classifier", dense="pooler.dense")
    token_head: HeadSpec = HeadSpec("classifier")
    qa_head: HeadSpec = HeadSpec("qa_outputs")
    extra_architectures: dict[str, str] = field(default_factory=dict)  # beyond Model/For{Sequence,Token}...

    def canonical(self, name: str) -> str:
        """A checkpoint tensor name -> bertrt's (BERT's) name."""
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for prefix in self.prefixes:
            if prefix and name.startswith(prefix):
                name = name[len(prefix):]
                break
        for pattern, replacement in self.renames:
            name = re.sub(pattern, replacement, name)
        return name

    def architectures(self) -> dict[str, str]:
        """architectures[0] -> task, for this family's classes."""
        p = self.architecture_prefix
        out = {f"{p}Model": "embed", f"{p}ForSequenceClassification": "classify",
               f"{p}ForTokenClassification": "ner", f"{p}ForQuestionAnswering": "qa"}
        if self.model_type in MASKED_LM_FAMILIES:
            out[f"{p}ForMaskedLM"] = "fill_mask"
        return {**out, **self.extra_architectures}


_ROBERTA_HEAD = HeadSpec("classifier.out_proj", dense="classifier.dense", activation="tanh")
_DISTILBERT_LAYER = (
    (r"^transformer\.layer\.(\d+)\.attention\.(q|k|v)_lin\.",
     lambda m: f"encoder.layer.{m[1]}.attention.self.{dict(q='query', k='key', v='value')[m[2]]}."),
    (r"^transformer\.layer\.(\d+)\.attention\.out_lin\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^transformer\.layer\.(\d+)\.sa_layer_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin2\.", r"encoder.layer.\1.output.dense."),
    (r"^transformer\.layer\.(\d+)\.output_layer_norm\.", r"encoder.layer.\1.output.LayerNorm."),
)
_MPNET_LAYER = (
    (r"^encoder\.layer\.(\d+)\.attention\.attn\.(q|k|v)\.",
     lambda m: f"encoder.layer.{m[1]}.attention.self.{dict(q='query', k='key', v='value')[m[2]]}."),
    (r"^encoder\.layer\.(\d+)\.attention\.attn\.o\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
)
_MODERNBERT_LAYER = (
    (r"^embeddings\.tok_embeddings\.", "embeddings.word_embeddings."),
    (r"^embeddings\.norm\.", "embeddings.LayerNorm."),
    (r"^layers\.(\d+)\.attn_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^layers\.(\d+)\.attn\.Wqkv\.", r"encoder.layer.\1.attention.self.qkv."),
    (r"^layers\.(\d+)\.attn\.Wo\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp_norm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"^layers\.(\d+)\.mlp\.Wi\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.Wo\.", r"encoder.layer.\1.output.dense."),
    (r"^final_norm\.", "encoder.final_norm."),
)
_MODERN_TRANSFORM = dict(dense="head.dense", activation="config", norm="head.norm")

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("bert", "Bert", ("bert.", "model.", ""),
           extra_architectures={"BertForNextSentencePrediction": "next_sentence", "BertForPreTraining": "fill_mask"}),
    Family("roberta", "Roberta", ("roberta.", ""), position_offset=True, token_types=False,
           sequence_head=_ROBERTA_HEAD),
    Family("xlm-roberta", "XLMRoberta", ("roberta.", ""), position_offset=True, token_types=False,
           sequence_head=_ROBERTA_HEAD),
    Family("camembert", "Camembert", ("roberta.", ""), position_offset=True, token_types=False,
           sequence_head=_ROBERTA_HEAD),
    Family("distilbert", "DistilBert", ("distilbert.", ""), token_types=False, token_type_table=False,
           renames=_DISTILBERT_LAYER,
           config_keys={"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                        "hidden_dim": "intermediate_size", "activation": "hidden_act"},
           sequence_head=HeadSpec("classifier", dense="pre_classifier", activation="relu")),
    Family("electra", "Electra", ("electra.", ""), embedding_projection=True,
           sequence_head=HeadSpec("classifier.out_proj", dense="classifier.dense", activation="gelu")),
    Family("mpnet", "MPNet", ("mpnet.", ""), position_offset=True, fixed_padding_idx=1, token_types=False,
           token_type_table=False,
           relative_attention=True, renames=_MPNET_LAYER, sequence_head=_ROBERTA_HEAD),
    Family("modernbert", "ModernBert", ("model.", ""), token_types=False, token_type_table=False,
           position_embeddings=False, modern=True,
           renames=_MODERNBERT_LAYER, config_keys={"norm_eps": "layer_norm_eps", "hidden_activation": "hidden_act"},
           sequence_head=HeadSpec("classifier", **_MODERN_TRANSFORM),
           token_head=HeadSpec("classifier", **_MODERN_TRANSFORM),
           qa_head=HeadSpec("classifier", **_MODERN_TRANSFORM)),
)}
# Families whose *ForMaskedLM head bertrt runs (fill-mask, SPLADE): lm_heads.LM_HEAD_NAMES has their rows
MASKED_LM_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet")


def family_for(model_type, source: str) -> Family:
    """The family of config.json's ``model_type``; anything else is a ModelLoadError listing them."""
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ModelLoadError(f"{source}: unsupported model_type {model_type!r}; bertrt runs {sorted(FAMILIES)}")
    return family


def all_architectures() -> dict[str, tuple[str, str]]:
    """architecture class name -> (model_type, task), over every family."""
    return {arch: (f.model_type, task) for f in FAMILIES.values() for arch, task in f.architectures().items()}

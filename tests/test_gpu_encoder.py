"""GPU end to end: the padding-free encoder on CUDA, with each kernel family (torch, cuda, triton) and
dtype, against transformers run on each sequence alone in FP32 on the CPU. Skips without a GPU
(``make gpu-check`` runs it on one)."""

from __future__ import annotations

import bertrt
import numpy as np
import pytest
import torch
import transformers
from bertrt.ops import registry

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (make gpu-check runs this)")]

LENGTHS = [1, 7, 128, 33, 2, 64]  # one token, odd lengths, the model's maximum in one packed batch
# cosine of each token's logits to transformers FP32 (min over tokens)
MIN_TOKEN_COSINE = {"float32": 0.99999, "float16": 0.999, "bfloat16": 0.99}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kernels", ["torch", "cuda", "triton"])
def test_padding_free_encoder_on_gpu_matches_transformers(tiny_model_dirs, kernels, dtype):
    if kernels != "torch":
        reasons = {op: registry.availability(op)[kernels] for op in ("attention", "bias_gelu")}
        if any(reasons.values()):
            pytest.skip(f"{kernels}: {reasons}")
    model_dir = tiny_model_dirs["ner"]  # token outputs: every position is compared, not only a pooled vector
    engine = bertrt.load(model_dir, device="cuda", dtype=dtype, kernels=kernels, backend="torch")
    generator = torch.Generator().manual_seed(0)
    max_len = min(max(LENGTHS), engine.config.max_position_embeddings)
    ids = [[101, *torch.randint(1000, 29000, (max(0, min(n, max_len) - 2),), generator=generator).tolist(), 102][
        :min(n, max_len)] for n in LENGTHS]
    # One packed batch (padding-free, cu_seqlens): (len, labels) logits per sequence, fp32 on the CPU.
    rows = engine.run_encodings(ids, [[0] * len(x) for x in ids], "ner")
    reference = transformers.AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    for got, x in zip(rows, ids):
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([x])).logits[0]
        cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
        assert cos.min() > MIN_TOKEN_COSINE[dtype], (kernels, dtype, len(x), float(cos.min()))


def test_minilm_on_gpu_matches_sentence_transformers(minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["A man is eating food.", "x", "The quick brown fox jumps over the lazy dog " * 20]
    want = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    for dtype, floor in (("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.995)):
        got = bertrt.load(minilm_dir, device="cuda", dtype=dtype).embed(texts)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() > floor, (dtype, cos)

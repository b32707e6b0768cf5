"""Our encoder against transformers (the reference), FP32, padded and packed, all four heads.

Batches mix lengths, including a single token and the model's maximum length; only real tokens are
compared (padding positions carry no meaning).
"""

from __future__ import annotations

import pytest
import torch
from bertrt.model import load_checkpoint

from .conftest import PARITY_ATOL


def reference_model(model_dir, architecture):
    import transformers

    cls = getattr(transformers, architecture)
    return cls.from_pretrained(model_dir, attn_implementation="eager").eval()


def mixed_batch(vocab_size: int, lengths: list[int], seed: int = 0):
    """Random token ids per sequence, [CLS]-led; padded (batch, max) tensors and the packed form."""
    generator = torch.Generator().manual_seed(seed)
    batch, longest = len(lengths), max(lengths)
    ids = torch.zeros(batch, longest, dtype=torch.int64)
    mask = torch.zeros(batch, longest, dtype=torch.int64)
    types = torch.zeros(batch, longest, dtype=torch.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, vocab_size, (n,), generator=generator)
        ids[row, 0] = 101
        mask[row, :n] = 1
        types[row, n // 2:n] = 1  # a second segment, as in sentence pairs
    valid = mask.bool()
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return ids, mask, types, valid, cu


def hf_outputs(model, task, ids, mask, types):
    with torch.no_grad():
        if task == "embed":
            return model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        if task == "qa":
            return torch.stack([out.start_logits, out.end_logits], -1)
        return out.logits


def ours(model, task, ids, mask, types, valid, cu, packed: bool):
    """Our output in the reference's layout: hidden states for embed, head outputs otherwise."""
    with torch.no_grad():
        if task == "embed":
            if packed:
                return model.encoder.forward_packed(ids[valid], cu, int(mask.sum(1).max()), types[valid])
            return model.encoder.forward_padded(ids, mask, types)[valid]
        if packed:
            return model.forward_packed(ids[valid], cu, int(mask.sum(1).max()), types[valid])
        out = model.forward_padded(ids, mask, types)
        return out if task == "classify" else out[valid]


def check_parity(model_dir, task, architecture, lengths, packed):
    checkpoint = load_checkpoint(model_dir)
    reference = reference_model(model_dir, architecture)
    ids, mask, types, valid, cu = mixed_batch(checkpoint.config.vocab_size, lengths)
    expected = hf_outputs(reference, task, ids, mask, types)
    if task != "classify":
        expected = expected[valid]
    got = ours(checkpoint.model, task, ids, mask, types, valid, cu, packed)
    diff = (got - expected).abs().max().item()
    assert diff <= PARITY_ATOL, f"{task} {'packed' if packed else 'padded'}: max |diff| {diff:.3g} > {PARITY_ATOL}"
    return diff


TASK_ARCHITECTURES = [("embed", "BertModel"), ("classify", "BertForSequenceClassification"),
                      ("ner", "BertForTokenClassification"), ("qa", "BertForQuestionAnswering")]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("task,architecture", TASK_ARCHITECTURES, ids=[t for t, _ in TASK_ARCHITECTURES])
def test_tiny_heads_match_transformers(tiny_model_dirs, task, architecture, packed):
    # 64 is the tiny models' max_position_embeddings; 1 is a lone [CLS]
    check_parity(tiny_model_dirs[task], task, architecture, [5, 1, 64, 17, 2], packed)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_minilm_matches_transformers(minilm_dir, packed):
    check_parity(minilm_dir, "embed", "BertModel", [9, 1, 512, 33], packed)


def test_minilm_embeddings_match_sentence_transformers(minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import bertrt

    texts = ["The cat sits on the mat.", "a", "", "Padding-free batches never compute on pad tokens." * 3]
    engine = bertrt.load(minilm_dir, dtype="float32")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    diff = abs(engine.embed(texts) - reference).max()
    assert diff <= PARITY_ATOL, f"max |diff| {diff:.3g}"

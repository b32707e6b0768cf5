"""Tiny random-weight checkpoints of every BERT-family model_type, written with transformers'
save_pretrained, each with a real tokenizer of that family's kind trained on a small corpus with
the ``tokenizers`` library (byte-level BPE: RoBERTa, ModernBERT; Unigram: XLM-R, CamemBERT;
WordPiece: BERT, DistilBERT, ELECTRA, MPNet) saved as tokenizer.json plus tokenizer_config.json,
so that transformers' AutoTokenizer loads the same tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDS = ("the quick brown fox jumps over lazy dog a bert model reads text and writes vectors every token "
         "attends to others in its sequence padding costs nothing here rotary positions local windows "
         "multilingual encoders rank documents questions answers entities paris london berlin tokyo "
         "café naïve über straße 東京 données modèle").split()
VOCAB = 320  # the tokenizers' target size; config vocab_size is the trained size rounded up


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(lines):
        n = int(torch.randint(3, 14, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (n,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in idx) + ("." if n % 2 else "?"))
    return out


# family -> (tokenizer kind, special tokens in id order, pad, cls/bos, sep/eos, unk, mask, pair separator count)
TOKENIZER_KINDS = {
    "bert": ("wordpiece", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "distilbert": ("wordpiece", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "electra": ("wordpiece", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "mpnet": ("wordpiece", ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]),
    "roberta": ("bpe", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
    "xlm-roberta": ("unigram", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
    "camembert": ("unigram", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
    "modernbert": ("bpe", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
}


def train_tokenizer(family: str) -> Tokenizer:
    kind, specials = TOKENIZER_KINDS[family]
    bert_style = specials[0] == "[PAD]"
    cls, sep = ("[CLS]", "[SEP]") if bert_style else ("<s>", "</s>")
    unk = next(t for t in specials if "unk" in t.lower())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials, unk_token=unk)
    tok.train_from_iterator(corpus(), trainer)
    ids = {t: tok.token_to_id(t) for t in (cls, sep)}
    if bert_style:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A:0 {sep}:0 $B:1 {sep}:1", special_tokens=list(ids.items()))
    elif kind == "bpe":
        tok.post_processor = processors.RobertaProcessing((sep, ids[sep]), (cls, ids[cls]), add_prefix_space=False)
    else:  # XLM-R / CamemBERT / MPNet: <s> A </s></s> B </s>, every token type 0
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}", special_tokens=list(ids.items()))
    return tok


def write_tokenizer(tok: Tokenizer, family: str, directory: Path, max_length: int) -> None:
    _, specials = TOKENIZER_KINDS[family]
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])) if specials[0] == "[PAD]" else {
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": specials[3],
        "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **names}
    if family in ("roberta", "xlm-roberta", "camembert", "mpnet", "modernbert"):
        config["model_input_names"] = ["input_ids", "attention_mask"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps(names))


PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
          "distilbert": "DistilBert", "electra": "Electra", "mpnet": "MPNet", "modernbert": "ModernBert"}
SUFFIX = {"embed": "Model", "classify": "ForSequenceClassification", "ner": "ForTokenClassification",
          "qa": "ForQuestionAnswering", "fill_mask": "ForMaskedLM"}
LABELS = {"classify": ["negative", "neutral", "positive"], "ner": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}


def family_config(family: str, task: str, vocab_size: int, tok: Tokenizer, **overrides):
    """A tiny config: hidden 30 over 5 heads (head_dim 6: not a power of two), 2-3 layers."""
    import transformers

    labels = LABELS.get(task)
    common = dict(vocab_size=vocab_size, id2label=dict(enumerate(labels)) if labels else None,
                  label2id={v: i for i, v in enumerate(labels)} if labels else None)
    _, specials = TOKENIZER_KINDS[family]
    pad = tok.token_to_id(specials[0] if specials[0] == "[PAD]" else "<pad>")
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(dim=30, n_layers=2, n_heads=5, hidden_dim=44, max_position_embeddings=64,
                                            pad_token_id=pad, **common)
    elif family == "modernbert":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        cfg = transformers.ModernBertConfig(
            hidden_size=30, num_hidden_layers=3, num_attention_heads=5, intermediate_size=44,
            max_position_embeddings=512, local_attention=16, global_attn_every_n_layers=2, pad_token_id=pad,
            bos_token_id=cls_id, eos_token_id=sep_id, cls_token_id=cls_id, sep_token_id=sep_id,
            classifier_pooling="mean" if task == "classify" else "cls", **common)
    else:
        cls = getattr(transformers, f"{PREFIX[family]}Config")
        extra = {"embedding_size": 18} if family == "electra" else {}
        offset = 2 if family in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0
        cfg = cls(hidden_size=30, num_hidden_layers=2, num_attention_heads=5, intermediate_size=44,
                  max_position_embeddings=64 + offset, pad_token_id=pad,
                  type_vocab_size=1 if offset and family != "mpnet" else 2,
                  hidden_act="gelu_new" if family == "electra" else "gelu", **extra, **common)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def make_family_checkpoint(directory: Path, family: str, task: str, seed: int = 0, **overrides) -> Path:
    """directory holding a random-weight ``<Family><Head>`` checkpoint and the family's tokenizer."""
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(family)
    vocab_size = -(-tok.get_vocab_size() // 8) * 8
    torch.manual_seed(seed)
    cfg = family_config(family, task, vocab_size, tok, **overrides)
    model = getattr(transformers, PREFIX[family] + SUFFIX[task])(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Random heads give near-uniform outputs; widen them so argmaxes differ between tokens.
            if name.startswith(("classifier", "qa_outputs")) and name.endswith("weight"):
                param.normal_(0.0, 1.0)
            # zero-initialised biases and unit norms would hide a bias or norm that is read wrong
            elif name.endswith("bias") or "norm" in name.lower():
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(tok, family, directory, getattr(cfg, "max_position_embeddings", 64) - 2)
    return directory

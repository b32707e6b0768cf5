"""Engine methods for sentence pairs and the pre-training heads: rerank, zero_shot, fill_mask,
next_sentence, embed_sparse. Mixed into ``bertrt.Engine`` (engine/api.py), whose run_encodings,
tokenizer and checks they use."""

from __future__ import annotations

import json

import numpy as np
import torch

from . import lm_tasks
from .errors import InputError
from .tokenizer import check_pairs, check_texts, split_texts

SINGLE_TEXT_TASKS = ("embed", "ner", "fill_mask", "embed_sparse")


class PairTaskMethods:
    """Needs from the class it is mixed into: config, tokenizer, checkpoint, run_encodings, _require."""

    # -- what the model takes ------------------------------------------------------------------------

    @property
    def cross_encoder(self) -> dict | None:
        """The sentence-transformers CrossEncoder settings of this checkpoint ({"activation"}), or None."""
        if not hasattr(self, "_cross_encoder"):
            self._cross_encoder = (lm_tasks.cross_encoder_info(self.checkpoint.model_dir)
                                   if self.config.task == "classify" else None)
        return self._cross_encoder

    def check_input_kind(self, pairs: bool, task: str) -> None:
        """InputError when sentence pairs go to a single-text task, or single texts to a model that
        reads pairs (next-sentence prediction, a CrossEncoder)."""
        arch = self.config.architecture
        if pairs and task in SINGLE_TEXT_TASKS:
            raise InputError(f"{task} takes single texts, got sentence pairs (text, text_pair); "
                             f"this model is {arch}")
        if not pairs and (task == "next_sentence" or (task == "classify" and self.cross_encoder)):
            what = "next-sentence prediction" if task == "next_sentence" else "this cross-encoder"
            raise InputError(f"{what} reads sentence pairs (text, text_pair), got single texts; model {arch}")

    def encode_pairs(self, pairs: list[tuple[str, str]], truncation: str):
        return self.tokenizer.encode_pair_batch(pairs, truncation)

    def single_texts(self, texts, task: str) -> list[str]:
        """texts as a list of strings; InputError when they are sentence pairs (or not texts)."""
        items, pairs = split_texts(texts)
        self.check_input_kind(pairs, task)
        return items

    def _run_pairs(self, pairs: list[tuple[str, str]], task: str, truncation: str) -> list[torch.Tensor]:
        encodings = self.encode_pairs(pairs, truncation)
        return self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], task)

    # -- cross-encoders ------------------------------------------------------------------------------

    def rerank_scores(self, logits: torch.Tensor, raw_scores: bool) -> np.ndarray:
        """logits: (documents, 1) -> (documents,) scores: raw, or through the model's activation
        (sigmoid unless a CrossEncoder config says identity), as CrossEncoder.predict scores them."""
        if self.config.num_labels != 1:
            raise InputError(f"rerank needs a cross-encoder with one output; this model has "
                             f"{self.config.num_labels} labels {sorted(self.config.id2label.values())} (use classify)")
        scores = logits[:, 0].numpy().astype(np.float64)
        info = self.cross_encoder or {"activation": "sigmoid"}
        return scores if raw_scores or info["activation"] == "identity" else lm_tasks.sigmoid(scores)

    def rerank(self, query: str, documents, top_n: int | None = None, return_documents: bool = False,
               raw_scores: bool = False, truncation: str = "only_second") -> list[dict]:
        """Documents by relevance to ``query``: [{"index", "score", "document"?}] best first, at most
        top_n. Scores are sigmoid(logit) (raw_scores: the logit). truncation: "only_second" (cut the
        document), "longest_first"/"truncate", "only_first" or "error"."""
        self._require("classify")
        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        documents = check_texts(documents, "documents")
        if not documents:
            raise InputError("documents must not be empty")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise InputError(f"top_n must be a positive integer, got {top_n!r}")
        if self.config.num_labels != 1:
            self.rerank_scores(torch.zeros(0, 1), raw_scores)  # raises, naming the labels
        rows = self._run_pairs([(query, d) for d in documents], "classify", truncation)
        scores = self.rerank_scores(torch.stack(rows), raw_scores)
        return lm_tasks.rerank_results(scores, documents, top_n, return_documents)

    def zero_shot(self, texts, labels, template: str = "This example is {}.", multi_label: bool = False,
                  truncation: str = "only_first") -> list[dict]:
        """Zero-shot classification with an NLI model (the HF pipeline's recipe): each (text,
        template.format(label)) pair is scored for entailment -> per text {"sequence", "labels",
        "scores"}, best label first."""
        self._require("classify")
        texts = check_texts(texts)
        labels = check_texts(labels, "labels")
        if not labels:
            raise InputError("labels must not be empty")
        if "{}" not in template:
            raise InputError(f"template must contain '{{}}' where the label goes, got {template!r}")
        entail = lm_tasks.entailment_index(self.config.id2label)
        if not texts:
            return []
        pairs = [(t, template.format(label)) for t in texts for label in labels]
        rows = self._run_pairs(pairs, "classify", truncation)
        n = len(labels)
        return [lm_tasks.zero_shot_result(t, labels, torch.stack(rows[i * n:(i + 1) * n]).numpy(), entail, multi_label)
                for i, t in enumerate(texts)]

    # -- pre-training heads --------------------------------------------------------------------------

    @property
    def mask_token_id(self) -> int | None:
        token = self.tokenizer.mask_token
        return None if token is None else self.tokenizer.token_to_id(token)

    def fill_mask_encodings(self, texts: list[str], truncation: str):
        """Encodings of fill-mask texts; InputError naming a text without a mask token (or whose
        masks were all cut by truncation)."""
        mask = self.tokenizer.mask_token
        if mask is None:
            raise InputError("this model's vocabulary has no mask token")
        for index, text in enumerate(texts):
            if mask not in text:
                raise InputError(f"texts[{index}] has no mask token {mask}: {text[:80]!r}")
        encodings = self.tokenizer.encode_batch(texts, truncation)
        mask_id = self.mask_token_id
        for index, encoding in enumerate(encodings):
            if mask_id not in encoding.ids:
                raise InputError(f"texts[{index}]: its {mask} lies past the {self.tokenizer.max_length}-token limit")
        return encodings

    def fill_mask_results(self, encoding, logits: torch.Tensor, top_k: int) -> list:
        clean_up = self.tokenizer_clean_up
        return lm_tasks.fill_mask_predictions(list(encoding.ids), logits, self.mask_token_id, self.config.pad_token_id,
                                              top_k, self.tokenizer.decode, clean_up)

    @property
    def tokenizer_clean_up(self) -> bool:
        """tokenizer_config.json's clean_up_tokenization_spaces (transformers' default: False)."""
        if not hasattr(self, "_clean_up"):
            path = self.checkpoint.model_dir / "tokenizer_config.json"
            raw = json.loads(path.read_text()) if path.exists() else {}
            self._clean_up = bool(raw.get("clean_up_tokenization_spaces", False))
        return self._clean_up

    def fill_mask(self, texts, top_k: int = 5, truncation: str = "truncate") -> list:
        """Per text, what transformers' fill-mask pipeline returns: a list of top_k {"score", "token",
        "token_str", "sequence"} (a list of such lists when the text has several masks). The
        vocabulary projection runs only at the mask tokens."""
        self._require("fill_mask")
        single = isinstance(texts, str)
        texts = self.single_texts(texts, "fill_mask")
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        if not texts:
            return []
        encodings = self.fill_mask_encodings(texts, truncation)
        rows = self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "fill_mask")
        results = [self.fill_mask_results(e, r, top_k) for e, r in zip(encodings, rows)]
        return results[0] if single else results

    def next_sentence(self, text, text_pair=None, truncation: str = "truncate"):
        """P(text_pair follows text) from the next-sentence head: a float for two strings, a list for
        a list of (text, text_pair) pairs."""
        self._require("next_sentence")
        if text_pair is None:
            if isinstance(text, str):
                self.check_input_kind(False, "next_sentence")
            pairs, single = check_pairs(text, "pairs"), False
        else:
            for name, value in (("text", text), ("text_pair", text_pair)):
                if not isinstance(value, str):
                    raise InputError(f"{name} must be a string, got {type(value).__name__}")
            pairs, single = [(text, text_pair)], True
        if not pairs:
            return []
        rows = self._run_pairs(pairs, "next_sentence", truncation)
        probs = [float(torch.softmax(r.double(), -1)[0]) for r in rows]
        return probs[0] if single else probs

    def embed_sparse(self, texts, top_k: int | None = None, truncation: str = "truncate") -> list[dict[int, float]]:
        """SPLADE sparse embeddings: per text {token_id: weight}, weight = max over the text's tokens
        of log(1 + relu(MLM logit)), nonzero ones largest first (top_k: keep that many)."""
        self._require("embed_sparse")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        texts = self.single_texts(texts, "embed_sparse")
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(texts, truncation)
        rows = self.run_encodings([e.ids for e in encodings], [e.type_ids for e in encodings], "embed_sparse")
        return [lm_tasks.sparse_weights(r, top_k) for r in rows]

"""Tokenization with the ``tokenizers`` library: tokenizer.json, or vocab.txt for WordPiece."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Encoding, Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from .errors import BertrtError, InputError, ModelLoadError

TRUNCATION_MODES = ("truncate", "error")
# for sentence pairs: "truncate" is longest_first (the tokenizers/transformers default)
PAIR_TRUNCATION_MODES = ("truncate", "error", "longest_first", "only_first", "only_second")
MASK_TOKENS = ("[MASK]", "<mask>")
# Truncation settings come from callers (a server's QA requests choose max_length and stride), so the
# configured copies are kept in a small LRU rather than one per setting ever seen.
MAX_TRUNCATING_COPIES = 8
# Pre-truncation: a text longer than max_length * PROBE_CHARS_PER_TOKEN characters is first tokenized
# on a prefix of that many characters (doubled while too short), never on all of a 4 MB string.
PROBE_CHARS_PER_TOKEN = 16
EXACT_COUNT_CHARS = 65536  # truncation="error" counts texts up to this long exactly, for its message


def _is_panic(exc: BaseException) -> bool:
    # A Rust panic inside ``tokenizers`` surfaces as pyo3's PanicException, a BaseException that
    # ``except Exception`` misses; KeyboardInterrupt and SystemExit must still pass through.
    return type(exc).__name__ == "PanicException"


def guarded(error: type[Exception], what: str, call, *args, **kwargs):
    """``call(*args, **kwargs)`` with every failure of the tokenizer (exceptions and Rust panics)
    turned into ``error`` naming ``what``; bertrt's own errors pass through."""
    try:
        return call(*args, **kwargs)
    except BertrtError:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(f"{what}: {first_line}") from None


def check_texts(texts, what: str = "texts") -> list[str]:
    """A list of strings, or an InputError naming the first bad item."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    for index, item in enumerate(texts):
        if not isinstance(item, str):
            raise InputError(f"{what}[{index}] must be a string, got {type(item).__name__}")
    return list(texts)


def check_pairs(pairs, what: str = "pairs") -> list[tuple[str, str]]:
    """A list of (text, text_pair) string pairs, or an InputError naming the first bad item."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        return [pairs]
    if not isinstance(pairs, Sequence) or isinstance(pairs, str):
        raise InputError(f"{what} must be a list of (text, text_pair) pairs, got {type(pairs).__name__}")
    out = []
    for index, item in enumerate(pairs):
        if (not isinstance(item, (tuple, list)) or len(item) != 2
                or not all(isinstance(x, str) for x in item)):
            raise InputError(f"{what}[{index}] must be a pair of two strings (text, text_pair), got {item!r:.80}")
        out.append((item[0], item[1]))
    return out


def split_texts(texts, what: str = "texts") -> tuple[list, bool]:
    """(items, are_pairs): a string or list of strings, or a list of (text, text_pair) pairs;
    mixing the two kinds is an InputError."""
    if isinstance(texts, str):
        return [texts], False
    if isinstance(texts, tuple) and len(texts) == 2 and all(isinstance(x, str) for x in texts):
        return [texts], True
    if isinstance(texts, Sequence) and texts and not isinstance(texts[0], str):
        return check_pairs(texts, what), True
    return check_texts(texts, what), False


# Tokenizer files of the slow (Python) tokenizers, which bertrt reads only once converted to tokenizer.json
SLOW_TOKENIZER_FILES = {"sentencepiece.bpe.model": "SentencePiece (XLM-R, CamemBERT)",
                        "spm.model": "SentencePiece", "vocab.json": "byte-level BPE (RoBERTa), with merges.txt"}


def _converted(model_dir: Path) -> Tokenizer:
    """A directory with only a slow tokenizer's files (sentencepiece.bpe.model, vocab.json +
    merges.txt): converted to a fast tokenizer with transformers when it is installed, else a
    ModelLoadError saying which file to add."""
    found = [name for name in SLOW_TOKENIZER_FILES if (model_dir / name).exists()]
    if not found:
        raise ModelLoadError(f"{model_dir}: missing tokenizer (looked for tokenizer.json and vocab.txt)")
    how = (f"add tokenizer.json to it (transformers.AutoTokenizer.from_pretrained({str(model_dir)!r})"
           f".save_pretrained(...) writes one)")
    if found[0] == "vocab.json" and not (model_dir / "merges.txt").exists():
        raise ModelLoadError(f"{model_dir}: vocab.json without merges.txt is not a complete BPE tokenizer; {how}")
    try:
        import transformers  # optional: only to convert a slow tokenizer's files
    except ImportError:
        raise ModelLoadError(f"{model_dir}: has only {found[0]} ({SLOW_TOKENIZER_FILES[found[0]]}); bertrt reads "
                             f"tokenizer.json: {how}, or install transformers to convert it at load") from None
    try:
        fast = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        return Tokenizer.from_str(fast.backend_tokenizer.to_str())
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{model_dir}: cannot convert {found[0]} to a fast tokenizer ({reason}); {how}") from exc


class BertTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with bertrt's truncation policy.

    truncation="truncate" cuts over-long input to ``max_length`` tokens (special tokens kept);
    truncation="error" raises InputError naming the item and its length.

    Thread-safe: the tokenizer is never reconfigured after construction; each truncation setting
    gets its own configured copy, made once.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_length = max_length
        self._truncating: OrderedDict[tuple, Tokenizer] = OrderedDict()
        self._lock = threading.Lock()

    def _truncating_copy(self, max_length: int, stride: int = 0, strategy: str = "longest_first") -> Tokenizer:
        key = (max_length, stride, strategy)
        with self._lock:
            tok = self._truncating.get(key)
            if tok is None:
                tok = guarded(InputError, f"truncation to {max_length} tokens with stride {stride}",
                              self._configured_copy, max_length, stride, strategy)
                self._truncating[key] = tok
                while len(self._truncating) > MAX_TRUNCATING_COPIES:
                    self._truncating.popitem(last=False)
            else:
                self._truncating.move_to_end(key)
        return tok

    def _configured_copy(self, max_length: int, stride: int, strategy: str) -> Tokenizer:
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.enable_truncation(max_length, stride=stride, strategy=strategy)
        return tok

    @classmethod
    def from_dir(cls, model_dir: Path, max_length: int) -> BertTokenizer:
        model_dir = Path(model_dir)
        if (model_dir / "tokenizer.json").exists():
            tok = guarded(ModelLoadError, f"{model_dir / 'tokenizer.json'}: cannot load tokenizer",
                          Tokenizer.from_file, str(model_dir / "tokenizer.json"))
            return cls(tok, max_length)
        vocab = model_dir / "vocab.txt"
        if not vocab.exists():
            return cls(_converted(model_dir), max_length)
        lowercase = True
        config_file = model_dir / "tokenizer_config.json"
        if config_file.exists():
            config = guarded(ModelLoadError, f"{config_file}: cannot read", lambda: json.loads(config_file.read_text()))
            if not isinstance(config, dict):
                raise ModelLoadError(f"{config_file}: must be a JSON object, got {type(config).__name__}")
            lowercase = config.get("do_lower_case", True)
            if not isinstance(lowercase, bool):
                raise ModelLoadError(f"{config_file}: do_lower_case must be true or false, got {lowercase!r}")

        wordpiece = guarded(ModelLoadError, f"{vocab}: cannot load the WordPiece vocabulary", BertWordPieceTokenizer,
                            str(vocab), lowercase=lowercase)
        return cls(wordpiece._tokenizer, max_length)

    @property
    def mask_token(self) -> str | None:
        """The mask token of the vocabulary ([MASK] for BERT, <mask> for RoBERTa), or None."""
        return next((t for t in MASK_TOKENS if self._tok.token_to_id(t) is not None), None)

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (added tokens included): 0 .. vocab_size - 1."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return guarded(InputError, "cannot decode the token ids", self._tok.decode, ids,
                       skip_special_tokens=skip_special_tokens)

    def encode_raw(self, texts: list[str], add_special_tokens: bool = True) -> list[Encoding]:
        """Untruncated encodings, with or without the special tokens (TEI's /tokenize)."""
        if not texts:
            return []
        return guarded(InputError, "cannot tokenize", self._tok.encode_batch, texts,
                       add_special_tokens=add_special_tokens)

    def join_tokens(self, tokens: list[str]) -> str:
        """Text of a run of tokens, as the tokenizer's decoder writes it (WordPiece merges '##')."""
        decoder = self._tok.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def with_max_length(self, max_length: int) -> BertTokenizer:
        """The same tokenizer (shared, never reconfigured) with another default max_length."""
        return BertTokenizer(self._tok, max_length)

    def num_special_tokens(self, pair: bool = False) -> int:
        return self._tok.num_special_tokens_to_add(pair)

    def exact_prefixes(self, texts: list[str], tokens: int) -> list[str]:
        """Each text, or a prefix of it whose first ``tokens + 1`` tokens (no special tokens) are
        exactly the whole text's: the work of tokenizing a text is then bounded by ``tokens``, not by
        its length. A prefix is cut at a character budget and kept only when more than ``tokens`` of
        its tokens lie in words before its last (possibly cut) word; pre-tokenizers split words
        locally, so those tokens and their offsets are the full text's. Otherwise the budget doubles
        (whitespace runs and long [UNK] words have many characters per token)."""
        out = list(texts)
        budget = max(256, (tokens + 1) * PROBE_CHARS_PER_TOKEN)
        pending = [i for i, t in enumerate(texts) if len(t) > budget]
        while pending:
            probes = self._tok.encode_batch([texts[i][:budget] for i in pending], add_special_tokens=False)
            still = []
            for i, encoding in zip(pending, probes):
                words = encoding.word_ids
                if len(words) > tokens + 1 and words[tokens] is not None and words[tokens] < words[-1]:
                    out[i] = texts[i][:budget]
                else:
                    still.append(i)
            budget *= 2
            pending = [i for i in still if len(texts[i]) > budget]
        return out

    def count_tokens(self, text: str, limit: int) -> int:
        """Tokens of ``text`` without special tokens, or ``limit + 1`` when there are more than limit
        (found on a bounded prefix: exact_prefixes)."""
        (prefix,) = self.exact_prefixes([text], limit)
        count = len(self._tok.encode(prefix, add_special_tokens=False).ids)
        return min(count, limit + 1) if len(prefix) < len(text) else count

    def encode_batch(self, texts: list[str], truncation: str = "truncate",
                     max_length: int | None = None) -> list[Encoding]:
        if truncation not in TRUNCATION_MODES:
            raise InputError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        limit = max_length or self.max_length
        cut = self.exact_prefixes(texts, limit)
        encodings = guarded(InputError, "cannot tokenize", self._tok.encode_batch, cut) if texts else []
        long_ones = [i for i, e in enumerate(encodings) if len(e.ids) > limit]
        if long_ones and truncation == "error":
            i = long_ones[0]
            length = f"{len(encodings[i].ids)} tokens" if cut[i] is texts[i] else f"more than {limit} tokens"
            if cut[i] is not texts[i] and len(texts[i]) <= EXACT_COUNT_CHARS:  # a bounded cost: say how long
                length = f"{len(self._tok.encode(texts[i]).ids)} tokens"
            raise InputError(
                f"text {i} is {length} long, over the limit of {limit} "
                "(pass truncation='truncate' to cut it)"
            )
        texts = cut
        if long_ones:
            # Re-encode only the long texts with truncation so special tokens stay in place.
            truncating = self._truncating_copy(limit)
            redone = guarded(InputError, f"cannot truncate to {limit} tokens", truncating.encode_batch,
                             [texts[i] for i in long_ones])
            for i, enc in zip(long_ones, redone):
                encodings[i] = enc
        return encodings

    def qa_windows(self, question: str, context: str, max_length: int, stride: int, max_windows: int) -> int:
        """How many (question, context) windows of max_length tokens overlapping by ``stride`` the pair
        needs, computed from token counts on bounded prefixes before any window is encoded; an
        InputError when the question leaves no room or the stride no step, and ``max_windows + 1``
        when more than max_windows are needed (the context is never tokenized past that)."""
        question_tokens = self.count_tokens(question, max_length)
        room = max_length - self.num_special_tokens(pair=True) - question_tokens
        if room < 1:
            raise InputError(f"the question takes {question_tokens} tokens: no room for the context in "
                             f"max_length {max_length}")
        if stride >= room:
            raise InputError(f"doc_stride {stride} must be smaller than the {room} context tokens a window of "
                             f"max_length {max_length} holds beside this question")
        step = room - stride
        most = room + (max_windows - 1) * step  # context tokens that max_windows windows cover
        context_tokens = self.count_tokens(context, most)
        if context_tokens > most:
            return max_windows + 1
        return 1 if context_tokens <= room else 1 + -(-(context_tokens - room) // step)

    def encode_pair_batch(self, pairs: list[tuple[str, str]], truncation: str = "truncate",
                          max_length: int | None = None) -> list[Encoding]:
        """Encode (text, text_pair) with the tokenizer's own pair template (post_processor: BERT's
        [CLS] a [SEP] b [SEP] with token types 0/1, RoBERTa's <s> a </s></s> b </s>).
        truncation: "truncate" = "longest_first" | "only_first" | "only_second" | "error"."""
        if truncation not in PAIR_TRUNCATION_MODES:
            raise InputError(f"truncation must be one of {PAIR_TRUNCATION_MODES}, got {truncation!r}")
        limit = max_length or self.max_length
        encodings = self._tok.encode_batch(pairs) if pairs else []
        long_ones = [i for i, e in enumerate(encodings) if len(e.ids) > limit]
        if long_ones and truncation == "error":
            i = long_ones[0]
            raise InputError(f"pair {i} is {len(encodings[i].ids)} tokens long, over the limit of {limit} "
                             "(pass truncation='longest_first' or 'only_second' to cut it)")
        if long_ones:
            strategy = "longest_first" if truncation == "truncate" else truncation
            try:
                redone = self._truncating_copy(limit, 0, strategy).encode_batch([pairs[i] for i in long_ones])
            except Exception as exc:  # only_first / only_second when that text alone cannot make room
                raise InputError(f"cannot truncate a pair to {limit} tokens with {strategy}: {exc}") from exc
            for i, enc in zip(long_ones, redone):
                encodings[i] = enc
        return encodings

    def encode_windows(self, texts: list[str], stride: int, max_length: int | None = None) -> list[list[Encoding]]:
        """Each text as windows of at most max_length tokens (special tokens in each), consecutive
        windows sharing ``stride`` tokens; a text that fits is one window."""
        limit = max_length or self.max_length
        if not 0 <= stride < limit // 2:
            raise InputError(f"stride must be in [0, {limit // 2}) for windows of {limit} tokens, got {stride}")
        encodings = self._tok.encode_batch(texts) if texts else []
        windows = [[e] for e in encodings]
        long_ones = [i for i, e in enumerate(encodings) if len(e.ids) > limit]
        if long_ones:
            redone = self._truncating_copy(limit, stride).encode_batch([texts[i] for i in long_ones])
            for i, enc in zip(long_ones, redone):
                windows[i] = [enc, *enc.overflowing]
        return windows

    def encode_pairs_with_stride(self, question: str, context: str, max_length: int, stride: int) -> list[Encoding]:
        """(question, context) windows over a long context: the first window plus its overflow windows.

        Each window holds the question, the special tokens and ``max_length - question - specials``
        context tokens, consecutive windows overlapping by ``stride``; that room must exceed ``stride``."""
        what = f"cannot fit question and context into {max_length} tokens"
        question_tokens = len(guarded(InputError, what, self._tok.encode, question, add_special_tokens=False).ids)
        room = max_length - question_tokens - self._tok.num_special_tokens_to_add(True)
        if room <= stride:
            raise InputError(f"{what} with doc_stride {stride}: the question takes {question_tokens} tokens, leaving "
                             f"{max(room, 0)} for the context, which must be more than doc_stride")
        first = guarded(InputError, what, self._truncating_copy(max_length, stride, "only_second").encode,
                        question, context)
        return [first, *first.overflowing]


"""Whole words from word pieces: which stored tokens make up which word, and word-level saliency.

A *word* is a whitespace-separated chunk of the example's text with punctuation stripped from both ends
(`"cat."` -> `cat`, `"(great)"` -> `great`), so `CLASS_0`, `don't`, `well-made`, `£209` and `txt` each stay one
word however the tokenizer cut them (WordPiece gives `class _ 0`, `£2 ##09`, `tx ##t`). A token belongs to the
word its characters overlap (the stored character offsets); special tokens (empty offsets) and tokens that lie in
stripped punctuation belong to no word. Word strings are lower-cased and accent-stripped when the model's
vocabulary is uncased, so they match what the model saw.

A word occurrence's saliency aggregates its pieces' |scores|: `max` (the default: a word is as salient as its most
salient piece, so words cut into many pieces are not inflated) or `sum`.

Everything here is derived from what a run already stores (text, token ids, character offsets), so a word index
is built on first use and kept in the run folder (`words/`), like the representations.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from core.representations import presence_matrix

WORD_AGGREGATIONS = ("max", "sum")
DEFAULT_WORD_AGGREGATION = "max"
# Bump when the segmentation changes: a stored word index with another version is rebuilt.
WORDS_VERSION = 2

_CHUNK = re.compile(r"\S+")
# HTML tags such as IMDB's `<br />` separate words (and are no words): "great.<br /><br />4/10" -> great, 4/10
_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^<>]{0,40}?/?\s*>")


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Return the (start, end) character spans of the words of `text`.

    Words are whitespace-separated chunks with leading and trailing punctuation (Unicode category P*) removed;
    chunks made only of punctuation give no word. Inner punctuation stays (`CLASS_0`, `don't`, `u.s.a`). HTML
    tags (`<br />`) count as whitespace.
    """
    spans = []
    if "<" in text:
        text = _TAG.sub(lambda m: " " * len(m.group()), text)  # same length: spans stay offsets into the text
    for match in _CHUNK.finditer(text):
        start, end = match.span()
        while start < end and _is_punctuation(text[start]):
            start += 1
        while end > start and _is_punctuation(text[end - 1]):
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def normalise_word(word: str, uncased: bool) -> str:
    """Return the word as the model saw it: lower-cased and accent-stripped when `uncased`, else unchanged."""
    if not uncased:
        return word
    decomposed = unicodedata.normalize("NFD", word.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def vocabulary_is_uncased(vocab: Sequence[str], ignore_mask: np.ndarray | None = None) -> bool:
    """Return True when (almost) no ordinary vocabulary entry has an upper-case letter (an uncased tokenizer)."""
    cased = total = 0
    for i, token in enumerate(vocab):
        if ignore_mask is not None and ignore_mask[i]:
            continue
        if token.startswith("[") and token.endswith("]"):
            continue  # [CLS], [unused0], ...
        letters = [c for c in token if c.isalpha()]
        if letters:
            total += 1
            cased += any(c.isupper() for c in letters)
    return total == 0 or cased / total < 0.001


@dataclass(frozen=True)
class WordIndex:
    """Which tokens form which word occurrence, for every example of a run.

    word_ids      int32 (n_occurrences,): the word (index into `vocab`) of each occurrence, in text order
    row_ptr       int64 (n + 1,): each example's occurrences are word_ids[row_ptr[i]:row_ptr[i + 1]]
    token_index   int64: positions (into the run's token arrays) of the tokens that belong to a word, in order
    occ_ptr       int64 (n_occurrences + 1,): occurrence j's tokens are token_index[occ_ptr[j]:occ_ptr[j + 1]]
    vocab         the word strings
    piece_matrix  CSR (len(vocab) x model vocab): row w averages the pieces of word w (its first occurrence),
                  so `piece_matrix @ E` gives word embeddings from the model's input embeddings E
    """

    word_ids: np.ndarray
    row_ptr: np.ndarray
    token_index: np.ndarray
    occ_ptr: np.ndarray
    vocab: list[str]
    piece_matrix: sp.csr_matrix

    def occurrence_scores(self, token_scores: np.ndarray, aggregation: str = DEFAULT_WORD_AGGREGATION) -> np.ndarray:
        """Return one float32 score per word occurrence: the max (or sum) of its tokens' |scores|."""
        if aggregation not in WORD_AGGREGATIONS:
            raise ValueError(f"Unknown word aggregation '{aggregation}'. Known: {', '.join(WORD_AGGREGATIONS)}.")
        if len(self.word_ids) == 0:
            return np.zeros(0, dtype=np.float32)
        values = np.abs(np.asarray(token_scores, dtype=np.float32)[self.token_index])
        reduce = np.maximum if aggregation == "max" else np.add
        return reduce.reduceat(values, self.occ_ptr[:-1]).astype(np.float32)


def build_word_index(texts: Sequence[str], token_ids: np.ndarray, row_ptr: np.ndarray, char_starts: np.ndarray,
                     char_ends: np.ndarray, model_vocab_size: int, uncased: bool) -> WordIndex:
    """Return the WordIndex of a run from its texts and stored tokens (ids, row offsets, character offsets)."""
    word_of: dict[str, int] = {}
    vocab: list[str] = []
    word_ids: list[int] = []
    occ_sizes: list[int] = []
    token_index_parts: list[np.ndarray] = []
    first_pieces: list[np.ndarray] = []
    row_counts = np.zeros(len(row_ptr) - 1, dtype=np.int64)
    starts_all = np.asarray(char_starts)
    ends_all = np.asarray(char_ends)
    ids_all = np.asarray(token_ids)
    for row, text in enumerate(texts):
        lo, hi = int(row_ptr[row]), int(row_ptr[row + 1])
        spans = word_spans(text)
        if not spans or hi == lo:
            continue
        span_starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
        span_ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
        t_start = starts_all[lo:hi].astype(np.int64)
        t_end = ends_all[lo:hi].astype(np.int64)
        # the first word ending after the token starts; the token belongs to it if they overlap
        w = np.searchsorted(span_ends, t_start, side="right")
        inside = (t_end > t_start) & (w < len(spans))
        w_safe = np.minimum(w, len(spans) - 1)
        inside &= span_starts[w_safe] < t_end
        positions = np.flatnonzero(inside)
        if len(positions) == 0:
            continue
        owners = w[positions]
        # consecutive tokens of the same word form one occurrence
        breaks = np.flatnonzero(np.diff(owners) != 0) + 1
        bounds = np.concatenate([[0], breaks, [len(positions)]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            s, e = spans[int(owners[a])]
            word = normalise_word(text[s:e], uncased)
            wid = word_of.get(word)
            if wid is None:
                wid = word_of[word] = len(vocab)
                vocab.append(word)
                first_pieces.append(ids_all[lo + positions[a:b]].astype(np.int64))
            word_ids.append(wid)
            occ_sizes.append(int(b - a))
        token_index_parts.append(lo + positions.astype(np.int64))
        row_counts[row] = len(bounds) - 1
    out_row_ptr = np.zeros(len(row_ptr), dtype=np.int64)
    np.cumsum(row_counts, out=out_row_ptr[1:])
    occ_ptr = np.zeros(len(occ_sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(occ_sizes, dtype=np.int64), out=occ_ptr[1:])
    token_index = np.concatenate(token_index_parts) if token_index_parts else np.zeros(0, dtype=np.int64)
    return WordIndex(word_ids=np.asarray(word_ids, dtype=np.int32), row_ptr=out_row_ptr,
                     token_index=token_index, occ_ptr=occ_ptr, vocab=vocab,
                     piece_matrix=_piece_matrix(first_pieces, model_vocab_size))


def _piece_matrix(first_pieces: list[np.ndarray], model_vocab_size: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(first_pieces)), [len(p) for p in first_pieces])
    cols = np.concatenate(first_pieces) if first_pieces else np.zeros(0, dtype=np.int64)
    weights = np.concatenate([np.full(len(p), 1.0 / len(p), dtype=np.float32) for p in first_pieces]) \
        if first_pieces else np.zeros(0, dtype=np.float32)
    # a piece repeated inside one word (e.g. "##a ##a") adds up, so each row still sums to 1
    return sp.csr_matrix((weights, (rows, cols)), shape=(len(first_pieces), model_vocab_size), dtype=np.float32)


class WordInputs:
    """A run's stored arrays seen at word level: a `RepresentationInputs` whose vocabulary is the words.

    Token ids become word ids, rows hold word occurrences, scores are aggregated over each word's pieces, and
    the embedding matrix holds each word's mean piece embedding. Predictions and [CLS] come from the run.
    `presence` (the word presence matrix, when the caller already has it) saves building it again for idf.
    """

    def __init__(self, base, index: WordIndex, aggregation: str = DEFAULT_WORD_AGGREGATION,
                 presence: sp.csr_matrix | None = None):
        if aggregation not in WORD_AGGREGATIONS:
            raise ValueError(f"Unknown word aggregation '{aggregation}'. Known: {', '.join(WORD_AGGREGATIONS)}.")
        self._base, self.index, self.aggregation = base, index, aggregation
        self.token_ids = index.word_ids
        self.row_ptr = index.row_ptr
        self.n_examples = len(index.row_ptr) - 1
        self.vocab_size = len(index.vocab)
        self.ignore_mask = np.zeros(self.vocab_size, dtype=bool)  # punctuation never forms a word
        self.num_labels = base.num_labels
        self._scores: dict[str, np.ndarray] = {}
        self._embeddings: np.ndarray | None = None
        self._presence = presence
        self._df: np.ndarray | None = None

    @property
    def vocab(self) -> list[str]:
        """Return the word strings."""
        return self.index.vocab

    def scores(self, method: str) -> np.ndarray:
        """Return one score per word occurrence: the aggregated |scores| of its pieces under `method`."""
        if method not in self._scores:
            self._scores[method] = self.index.occurrence_scores(self._base.scores(method), self.aggregation)
        return self._scores[method]

    def embedding_matrix(self) -> np.ndarray:
        """Return the (n_words x dim) mean piece embedding of every word."""
        if self._embeddings is None:
            self._embeddings = np.asarray(self.index.piece_matrix @ np.asarray(self._base.embedding_matrix()),
                                          dtype=np.float32)
        return self._embeddings

    def document_frequency(self) -> np.ndarray:
        """Return, per word, the number of examples that contain it (computed once: every row block asks)."""
        if self._df is None:
            presence = self._presence
            if presence is None:
                presence = presence_matrix(self.token_ids, self.row_ptr, self.vocab_size)
            self._df = np.asarray(presence.sum(axis=0), dtype=np.int64).ravel()
        return self._df

    def cls(self) -> np.ndarray:
        """Return the run's [CLS] encodings."""
        return self._base.cls()

    def predictions(self) -> np.ndarray:
        """Return the run's predicted classes."""
        return self._base.predictions()

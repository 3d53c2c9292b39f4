"""Fixed-length, row-normalised representations of examples, behind one registry.

S1 salience vocabulary (top-k), S2 salience embedding, and the baselines B1 PMI bag of words,
B2 average embedding, B3 [CLS] encoding. Each entry of `REPRESENTATIONS` builds its matrix from a
`RepresentationInputs` (what a run stores); a `RepresentationKey` names one built matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import scipy.sparse as sp


class RepresentationInputs(Protocol):
    """What a representation may read: tokens, per-method scores, model matrices, predictions."""

    token_ids: np.ndarray      # int32, all examples' tokens concatenated
    row_ptr: np.ndarray        # int64, n + 1 offsets into token_ids
    vocab_size: int
    ignore_mask: np.ndarray    # bool (vocab,), special tokens and punctuation

    def scores(self, method: str) -> np.ndarray: ...
    def embedding_matrix(self) -> np.ndarray: ...
    def cls(self) -> np.ndarray: ...
    def predictions(self) -> np.ndarray: ...
    def document_frequency(self) -> np.ndarray: ...
    num_labels: int
    n_examples: int            # the whole run's examples (also for a block of them: idf is counted over the run)


UNITS = ("word", "word_sum", "piece")
UNIT_TITLES = {"word": "whole words (max over pieces)", "word_sum": "whole words (sum over pieces)",
               "piece": "word pieces (tokens)"}
WEIGHTINGS = ("none", "idf")
WEIGHTING_TITLES = {"none": "salience only", "idf": "salience x idf (rarer terms count more)"}


@dataclass(frozen=True)
class RepresentationKey:
    """Names one representation matrix: registry name plus the parameters it depends on.

    k=None means all tokens; include_special keeps special tokens and punctuation in the vector. `unit` says what
    a column is: a whole word ("word": a word's saliency is the max over its pieces; "word_sum": the sum) or a
    word piece ("piece", the model's own tokens). `weighting="idf"` multiplies each term's salience by its inverse
    document frequency in the run, log((1 + n) / (1 + df)), before the top-k cut, so terms salient in every
    example (function words) weigh less than terms salient where they are rare.
    """

    name: str
    method: str | None = None
    k: int | None = None
    include_special: bool = False
    unit: str = "piece"
    weighting: str = "none"

    @property
    def slug(self) -> str:
        """Return a file-name-safe identifier, e.g. `s1-grad_l2-k5`."""
        spec = REPRESENTATIONS[self.name]
        parts = [self.name]
        if spec.uses_method:
            parts.append(self.method or "grad_l2")
        if spec.uses_k:
            parts.append(f"k{self.k}" if self.k else "kall")
        if self.include_special and spec.uses_ignore:
            parts.append("special")
        if spec.uses_unit and self.unit != "piece":
            parts.append(self.unit)
        if spec.uses_weighting and self.weighting != "none":
            parts.append(self.weighting)
        return "-".join(parts)

    def normalised(self) -> "RepresentationKey":
        """Return the key with parameters the representation ignores reset, so equal matrices share one key."""
        spec = REPRESENTATIONS[self.name]
        if self.unit not in UNITS:
            raise ValueError(f"Unknown unit '{self.unit}'. Known: {', '.join(UNITS)}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting '{self.weighting}'. Known: {', '.join(WEIGHTINGS)}.")
        return RepresentationKey(self.name, (self.method or "grad_l2") if spec.uses_method else None,
                                 (self.k or None) if spec.uses_k else None,
                                 self.include_special if spec.uses_ignore else False,
                                 self.unit if spec.uses_unit else "piece",
                                 self.weighting if spec.uses_weighting else "none")

    def label(self) -> str:
        """Return a human-readable label, e.g. `S1 salience vocabulary (grad_l2, k=5)`."""
        spec = REPRESENTATIONS[self.name]
        params = []
        if spec.uses_method:
            params.append(self.method or "grad_l2")
        if spec.uses_k:
            params.append(f"k={self.k}" if self.k else "k=all")
        if spec.uses_unit:
            params.append({"word": "words", "word_sum": "words, sum", "piece": "pieces"}[self.unit])
        if spec.uses_weighting and self.weighting != "none":
            params.append(self.weighting)
        return f"{spec.title}" + (f" ({', '.join(params)})" if params else "")


@dataclass(frozen=True)
class Representation:
    """A registry entry: how to build one representation from a run's stored arrays."""

    name: str
    title: str
    sparse: bool
    uses_method: bool
    uses_k: bool
    uses_ignore: bool
    build: Callable[[RepresentationInputs, RepresentationKey], np.ndarray | sp.csr_matrix]
    uses_unit: bool = False       # columns can be whole words or word pieces
    uses_weighting: bool = False  # salience can be idf-weighted
    # Each row depends on its own example only, so the matrix can be built in blocks of rows (bounded memory).
    row_local: bool = True


# Examples per block when a row-local representation is built: the token-level temporaries (sort keys, ids,
# scores) then scale with one block, not with the dataset; only the output matrix grows with it.
ROW_BLOCK = 16_384


class RowBlock:
    """The examples [start, stop) of a `RepresentationInputs`, itself usable as one (token offsets re-based)."""

    def __init__(self, inputs: RepresentationInputs, start: int, stop: int):
        self._inputs, self._start, self._stop = inputs, start, stop
        ptr = np.asarray(inputs.row_ptr[start:stop + 1], dtype=np.int64)
        self._lo, self._hi = int(ptr[0]), int(ptr[-1])
        self.row_ptr = ptr - ptr[0]
        self.token_ids = np.asarray(inputs.token_ids[self._lo:self._hi])
        self.vocab_size = inputs.vocab_size
        self.ignore_mask = inputs.ignore_mask
        self.num_labels = inputs.num_labels
        self.n_examples = inputs.n_examples

    def scores(self, method: str) -> np.ndarray:
        """Return the block's per-token scores of `method`."""
        return np.asarray(self._inputs.scores(method)[self._lo:self._hi])

    def embedding_matrix(self) -> np.ndarray:
        """Return the model's input embedding matrix (shared by every block)."""
        return self._inputs.embedding_matrix()

    def cls(self) -> np.ndarray:
        """Return the block's [CLS] encodings."""
        return np.asarray(self._inputs.cls()[self._start:self._stop])

    def predictions(self) -> np.ndarray:
        """Return the block's predicted classes."""
        return np.asarray(self._inputs.predictions())[self._start:self._stop]

    def document_frequency(self) -> np.ndarray:
        """Return the whole run's document frequencies (idf is a property of the run, not of a block)."""
        return self._inputs.document_frequency()


def row_ids(row_ptr: np.ndarray) -> np.ndarray:
    """Return, for each token position, the index of the example it belongs to."""
    return np.repeat(np.arange(len(row_ptr) - 1, dtype=np.int64), np.diff(row_ptr))


def normalise_rows(matrix):
    """Return `matrix` with every non-zero row scaled to unit L2 norm (float32; sparse stays CSR)."""
    from sklearn.preprocessing import normalize  # imported on first use: see core.analysis.cluster_rows

    if sp.issparse(matrix):
        return normalize(sp.csr_matrix(matrix, dtype=np.float32), norm="l2", axis=1, copy=False)
    return normalize(np.asarray(matrix, dtype=np.float32), norm="l2", axis=1).astype(np.float32)


def vocab_topk(token_ids: np.ndarray, row_ptr: np.ndarray, scores: np.ndarray, vocab_size: int,
               k: int | None, ignore_mask: np.ndarray | None = None,
               column_weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Return S1: per example and vocabulary item the max |score| over its occurrences, top-k kept, rows normalised.

    Ties at the k-th value are broken by lower token id. k=None keeps every token. `column_weights` (one per
    vocabulary item, e.g. idf) multiply the values before the top-k cut.
    """
    n = len(row_ptr) - 1
    rows = row_ids(row_ptr)
    cols = token_ids.astype(np.int64)
    vals = np.abs(scores.astype(np.float32))
    keep = np.ones(len(cols), dtype=bool) if ignore_mask is None else ~ignore_mask[cols]
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    if column_weights is not None:
        vals = vals * np.asarray(column_weights, dtype=np.float32)[cols]
    # max over repeated occurrences: sort by (row, col, -val) and keep the first of each (row, col)
    order = np.lexsort((-vals, cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    rows, cols, vals = rows[first], cols[first], vals[first]
    if k:
        order = np.lexsort((cols, -vals, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        starts = np.searchsorted(rows, np.arange(n))
        rank = np.arange(len(rows)) - starts[rows]
        top = rank < k
        rows, cols, vals = rows[top], cols[top], vals[top]
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n, vocab_size), dtype=np.float32)
    matrix.sort_indices()
    return normalise_rows(matrix)


def presence_matrix(token_ids: np.ndarray, row_ptr: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Return a binary (n x vocab) float32 CSR matrix: 1 where the token occurs in the example (sorted indices)."""
    from core import kernels  # a compiled pass over each example's ids: 1,000,000 word rows in 0.3-0.5 s, not 1.3-1.5 s

    indptr, indices = kernels.csr_presence(row_ptr, token_ids, vocab_size)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                         shape=(len(row_ptr) - 1, vocab_size))


def pmi_table(presence: sp.csr_matrix, classes: np.ndarray, num_labels: int) -> np.ndarray:
    """Return PMI(token; class) as a (vocab x num_labels) array from document counts; -inf where never seen together.

    PMI = log p(class | token) / p(class); tokens that never occur get 0.
    """
    n = presence.shape[0]
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), classes.astype(np.int64))),
                           shape=(n, num_labels))
    joint = np.asarray((presence.T @ onehot).todense(), dtype=np.float64)      # vocab x C
    token_count = joint.sum(axis=1, keepdims=True)
    class_prob = np.bincount(classes, minlength=num_labels) / max(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(joint / token_count) - np.log(class_prob)[None, :]
    pmi[token_count[:, 0] == 0] = 0.0
    return pmi


def pmi_bow(presence: sp.csr_matrix, classes: np.ndarray, num_labels: int,
            ignore_mask: np.ndarray | None = None) -> sp.csr_matrix:
    """Return B1: each example's bag of words weighted by positive PMI(token; its predicted class), normalised."""
    pmi = np.clip(pmi_table(presence, classes, num_labels), 0.0, None)
    pmi[~np.isfinite(pmi)] = 0.0
    coo = presence.tocoo()
    weights = pmi[coo.col, classes[coo.row]].astype(np.float32)
    if ignore_mask is not None:
        weights[ignore_mask[coo.col]] = 0.0
    matrix = sp.csr_matrix((weights, (coo.row, coo.col)), shape=presence.shape)
    matrix.eliminate_zeros()
    return normalise_rows(matrix)


def average_embedding(token_ids: np.ndarray, row_ptr: np.ndarray, embeddings: np.ndarray,
                      ignore_mask: np.ndarray | None = None) -> np.ndarray:
    """Return B2: the mean input embedding of each example's tokens, rows normalised."""
    n = len(row_ptr) - 1
    keep = np.ones(len(token_ids), dtype=bool) if ignore_mask is None else ~ignore_mask[token_ids]
    rows = row_ids(row_ptr)[keep]
    counts = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows, token_ids[keep].astype(np.int64))),
                           shape=(n, embeddings.shape[0]))
    return normalise_rows(counts @ embeddings)


def idf_weights(document_frequency: np.ndarray, n_examples: int) -> np.ndarray:
    """Return log((1 + n) / (1 + df)) per vocabulary item: 0 for a term in every example, larger for rarer ones."""
    df = np.asarray(document_frequency, dtype=np.float64)
    return np.log((1.0 + n_examples) / (1.0 + df)).astype(np.float32)


def _build_s1(inputs: RepresentationInputs, key: RepresentationKey):
    weights = None
    if key.weighting == "idf":
        weights = idf_weights(inputs.document_frequency(), inputs.n_examples)
    return vocab_topk(inputs.token_ids, inputs.row_ptr, inputs.scores(key.method or "grad_l2"), inputs.vocab_size,
                      key.k, None if key.include_special else inputs.ignore_mask, weights)


def _build_s2(inputs: RepresentationInputs, key: RepresentationKey):
    s1 = _build_s1(inputs, RepresentationKey("s1", key.method, key.k, key.include_special, key.unit,
                                             key.weighting))
    return normalise_rows(s1 @ inputs.embedding_matrix())


def _build_b1(inputs: RepresentationInputs, key: RepresentationKey):
    presence = presence_matrix(inputs.token_ids, inputs.row_ptr, inputs.vocab_size)
    return pmi_bow(presence, inputs.predictions(), inputs.num_labels,
                   None if key.include_special else inputs.ignore_mask)


def _build_b2(inputs: RepresentationInputs, key: RepresentationKey):
    return average_embedding(inputs.token_ids, inputs.row_ptr, inputs.embedding_matrix(),
                             None if key.include_special else inputs.ignore_mask)


def _build_b3(inputs: RepresentationInputs, key: RepresentationKey):
    return normalise_rows(inputs.cls())


REPRESENTATIONS: dict[str, Representation] = {r.name: r for r in [
    Representation("s1", "S1 salience vocabulary", sparse=True, uses_method=True, uses_k=True, uses_ignore=True,
                   build=_build_s1, uses_unit=True, uses_weighting=True),
    Representation("s2", "S2 salience embedding", sparse=False, uses_method=True, uses_k=True, uses_ignore=True,
                   build=_build_s2, uses_unit=True, uses_weighting=True),
    Representation("b1", "B1 PMI bag of words", sparse=True, uses_method=False, uses_k=False, uses_ignore=True,
                   build=_build_b1, row_local=False, uses_unit=True),  # PMI is counted over the whole dataset
    Representation("b2", "B2 average embedding", sparse=False, uses_method=False, uses_k=False, uses_ignore=True,
                   build=_build_b2),
    Representation("b3", "B3 [CLS] encoding", sparse=False, uses_method=False, uses_k=False, uses_ignore=False,
                   build=_build_b3),
]}


# The product's default representation and term unit (sidebar, precompute, benchmarks read them from here).
# Chosen by measurement: see bench/results/representations.md.
DEFAULT_REPRESENTATION = "s1"
DEFAULT_UNIT = "piece"            # what the default representation's columns are (clustering, maps, neighbours)
DEFAULT_TERMS_UNIT = "word_sum"   # what every page shows as terms: whole words, salience summed over their pieces
DEFAULT_WEIGHTING = "none"
DEFAULT_K: int | None = None


def default_key(method: str = "grad_l2") -> RepresentationKey:
    """Return the default representation's key for `method`."""
    return RepresentationKey(DEFAULT_REPRESENTATION, method, DEFAULT_K, unit=DEFAULT_UNIT,
                             weighting=DEFAULT_WEIGHTING).normalised()


def build_representation(inputs: RepresentationInputs, key: RepresentationKey, block: int | None = None,
                         allocate: Callable[[tuple[int, int]], np.ndarray] | None = None):
    """Return the matrix named by `key` (CSR for sparse representations, float32 ndarray otherwise).

    Row-local representations are built `block` examples at a time (default `ROW_BLOCK`), so memory beyond the
    output matrix is bounded by one block however large the run. `allocate(shape)`, when given, returns the
    float32 array a dense row-local matrix is written into (e.g. a memory-mapped file, so not even the output
    is held in memory); it is returned.
    """
    if key.name not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation '{key.name}'. Known: {', '.join(REPRESENTATIONS)}.")
    spec, key = REPRESENTATIONS[key.name], key.normalised()
    block = block or ROW_BLOCK
    n = len(inputs.row_ptr) - 1
    if not spec.row_local or n <= block:
        return spec.build(inputs, key)
    parts = (spec.build(RowBlock(inputs, start, min(start + block, n)), key) for start in range(0, n, block))
    if spec.sparse:
        return sp.vstack(list(parts), format="csr")
    out = None
    for start, part in zip(range(0, n, block), parts):
        if out is None:
            out = (allocate or (lambda shape: np.empty(shape, dtype=np.float32)))((n, part.shape[1]))
        out[start:start + len(part)] = part
    return out

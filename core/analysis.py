"""Dataset-level analyses on the rows of a representation (method.md §3-4).

Pure compute: slices, k-means clusters and their summaries, top terms and
word-cloud weights, 2-D projections, an exact nearest-neighbour index,
seed-term lists and table export. Nothing here draws or imports streamlit.

Matrices are either ``scipy.sparse.csr_matrix`` or dense ``np.ndarray`` with
one row per example; rows are expected to be L2-normalised (the neighbour
index normalises defensively anyway, so its scores are always cosines).
"""

from __future__ import annotations

import functools
import io
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import pandas as pd
import re2
import scipy.sparse as sp

from core.representations import normalise_rows

Matrix = np.ndarray | sp.csr_matrix | sp.csr_array
Correctness = Literal["all", "correct", "misclassified"]
ProjectionMethod = Literal["umap", "tsne"]

CORRECTNESS_VALUES: tuple[str, ...] = ("all", "correct", "misclassified")
PROJECTION_METHODS: tuple[str, ...] = ("umap", "tsne")
# Above this many rows full-batch KMeans gives way: dense rows to MiniBatchKMeans (on 100,000 S1 rows 2-6x faster
# at an inertia within 0.7% of KMeans, as much as KMeans varies from seed to seed), sparse rows to the compiled
# passes of _cluster_sparse_rows; see bench/results/dashboard.md.
MINIBATCH_THRESHOLD = 20_000
MINIBATCH_SIZE = 2048
MINIBATCH_PATIENCE = 5  # mini-batches without improvement before stopping (scikit-learn's default is 10)
# rows k-means++ picks the first centres from (scikit-learn's default is 3 batches, 6,144): at 20 clusters the
# initialisation was half of the fit; on 1,000,000 S1 rows the inertia over all rows stayed within the spread of
# two seeds at 5, 10 and 20 clusters, and a fit of 20 took 0.19-0.28 s instead of 0.27-0.35 s
MINIBATCH_INIT_SIZE = 2048
# Above this many rows k-means is fitted on a seeded sample of this many rows and every row is then assigned to its
# nearest centre (exact assignment): fitting MiniBatchKMeans on all 1,000,000 S1 rows took 40 s, the sample and
# the assignment 0.6-1 s, at an inertia over all rows within the spread of samples of 25,000 to 100,000
# (bench/results/dashboard.md, 1M section).
CLUSTER_FIT_ROWS = 50_000
# Sparse rows above MINIBATCH_THRESHOLD (_cluster_sparse_rows): k-means++ seeds and the first Lloyd passes on this
# many of the fit rows, at most SEED_PASSES of them; then at most FIT_PASSES on all fit rows. On 1,000,000 S1 rows
# (fit on 50,000) the inertia over all rows was within -0.35%..+0.05% of MiniBatchKMeans' at 5-20 clusters, in
# 0.18-0.29 s instead of 0.33-0.64 s; 8,192 seed rows gave -0.3%..+0.2% in 0.22-0.38 s.
SEED_ROWS = 4096
SEED_PASSES = 40
FIT_PASSES = 3
SPECTRAL_INIT_MIN_ROWS = 16
# t-SNE embeds at most this many rows (a seeded sample); openTSNE places the others with `transform`.
TSNE_MAX_POINTS = 20_000
# Above this many rows UMAP runs on a 50-dimensional truncated SVD of the rows (unit length, euclidean = cosine
# ranking) with PCA initialisation: nearest-neighbour descent on 30,000-wide sparse rows and the spectral
# initialisation's eigensolver are what make a 100,000-row UMAP take many minutes otherwise.
UMAP_REDUCE_ABOVE = 20_000
REDUCED_DIMS = 50
TRANSFORM_BATCH = 10_000
# Above this many rows UMAP is fitted on a seeded sample of UMAP_FIT_ROWS rows (after a truncated SVD fitted on
# that sample too) and every other row is placed with UMAP's `transform`, UMAP_TRANSFORM_BATCH rows at a time so
# the bar moves: 1,000,000 rows in one UMAP would hold its neighbour graph in memory and take hours on 2 cores.
UMAP_SAMPLE_ABOVE = 200_000
UMAP_FIT_ROWS = 50_000
UMAP_TRANSFORM_BATCH = 50_000

ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------- slicing


@dataclass(frozen=True)
class SliceSpec:
    """A subset of examples. Every filter that is set must hold (logical AND).

    ``None`` / empty means "no restriction". Sequences are stored as tuples so
    the spec is hashable and can key a cache.
    """

    split: tuple[str, ...] | None = None
    labels: tuple[int, ...] | None = None
    preds: tuple[int, ...] | None = None
    correctness: Correctness = "all"
    contains: tuple[str, ...] = ()
    regex: str | None = None
    sample_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept lists from widgets but keep the frozen instance hashable.
        for name in ("split", "labels", "preds"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.contains, tuple):
            object.__setattr__(self, "contains", tuple(self.contains))
        if self.correctness not in CORRECTNESS_VALUES:
            raise ValueError(
                f"correctness must be one of {CORRECTNESS_VALUES}, got {self.correctness!r}"
            )
        if self.sample_size is not None and self.sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {self.sample_size}")


# User-typed regular expressions (the sidebar's slice, the Map's colouring) run on RE2, whose matching time is
# linear in the text whatever the pattern: Python's backtracking `re` takes exponential time on patterns such as
# `(a+)+$` or `^(\w+\s?)*$`, and one such link froze the whole server. The work one query can cause is bounded
# by the pattern's length, RE2's memory budget (compiled program and DFA cache; past it RE2 falls back to its
# linear NFA) and the data's size.
MAX_REGEX_LENGTH = 500
REGEX_MAX_MEM = 2 << 20  # bytes; RE2's default is 8 MiB, and the re2 module caches up to 128 compiled patterns

# RE2 rejects these Python features (they need backtracking): (fragment RE2 reports, what to call it).
_RE2_UNSUPPORTED = (
    ("(?<=", "a lookbehind (?<=…)"), ("(?<!", "a negative lookbehind (?<!…)"),
    ("(?=", "a lookahead (?=…)"), ("(?!", "a negative lookahead (?!…)"),
    ("(?P", "a named backreference (?P=…)"), ("(?>", "an atomic group (?>…)"),
    ("(?(", "a conditional group (?(…)…)"), ("(?#", "a comment group (?#…)"),
)


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = REGEX_MAX_MEM
    options.never_capture = True  # only whether a text matches is needed
    options.log_errors = False
    return options


def _unsupported_feature(error: str) -> str | None:
    """Return what to call the Python-only feature an RE2 compile error points at, else None."""
    code, _, fragment = error.partition(": ")
    if code == "invalid perl operator":
        for prefix, name in _RE2_UNSUPPORTED:
            if fragment.startswith(prefix):
                return name
        return f"the inline flag {fragment}) (only i, m, s and U are supported)"
    if code == "invalid escape sequence":
        if re.fullmatch(r"\\[1-9]", fragment) or fragment == r"\g":
            return f"a backreference ({fragment}…)"
        if fragment == r"\Z":
            return r"\Z (write \z for the end of the text)"
        if fragment in (r"\u", r"\U", r"\N"):
            return f"the escape {fragment}… (write \\x{{00e9}} for a code point)"
    if code == "bad repetition operator" and fragment.endswith("+"):
        return f"a possessive quantifier ({fragment})"
    if code == "invalid repetition size":
        return f"a repetition count above 1000 ({fragment})"
    if code.startswith("pattern too large"):
        return f"more states than its memory bound of {REGEX_MAX_MEM >> 20} MiB allows (shorten or simplify it)"
    return None


def compile_regex(pattern: str):
    r"""Return ``pattern`` compiled for case-insensitive search in linear time (RE2, see MAX_REGEX_LENGTH).

    RE2's syntax is Python's without backtracking features (lookarounds, backreferences, possessive quantifiers,
    atomic groups); ``\w``, ``\d`` and ``\b`` are ASCII-only (``\pL`` is any letter). Raises ``ValueError`` with
    a readable message when the pattern is too long, invalid, or uses a feature RE2 does not support.
    """
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"The regular expression is {len(pattern):,} characters long; at most "
                         f"{MAX_REGEX_LENGTH:,} are allowed")
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as err:
        raw = err.args[0] if err.args else ""
        reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    feature = _unsupported_feature(reason)
    if feature is not None:
        raise ValueError(f"The regular expression {pattern!r} uses {feature}, a feature the linear-time regex "
                         "engine (RE2) does not support")
    try:  # Python's parser says where a plain syntax error is; compiling never runs the pattern
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except re.error as py_err:
        where = f" at position {py_err.pos}" if py_err.pos is not None else ""
        raise ValueError(f"Invalid regular expression {pattern!r}: {py_err.msg}{where}") from None
    raise ValueError(f"The regular expression {pattern!r} uses a feature the linear-time regex engine (RE2) "
                     f"does not support: {reason}")


def validate_regex(pattern: str) -> str | None:
    """Return a readable error message if ``pattern`` cannot be used as a regex filter (see `compile_regex`),
    else ``None``."""
    try:
        compile_regex(pattern)
    except ValueError as err:
        return str(err)
    return None


# From this many texts a regex runs through Arrow's vectorised RE2 (pyarrow.compute.match_substring_regex, the same
# engine and options as compile_regex but one C++ loop): 1,000,000 texts in 0.2-1.2 s instead of 10-18 s.
ARROW_REGEX_MIN = 1_000


def regex_hits(texts: Iterable[object], pattern: str) -> np.ndarray:
    """Return a bool array: whether each text contains a case-insensitive match of ``pattern`` (RE2: linear time
    in each text, whatever the pattern; non-strings never match). Raises ``ValueError`` as `compile_regex`."""
    regexp = compile_regex(pattern)
    if isinstance(texts, pd.Series) and len(texts) >= ARROW_REGEX_MIN:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:  # zero-copy for the examples table's Arrow-backed strings; anything else falls back to the loop
            array = pa.array(texts, from_pandas=True)
            if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                hits = pc.match_substring_regex(array, pattern=pattern, ignore_case=True)
                return np.asarray(hits.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        except (pa.ArrowException, TypeError, ValueError):
            pass
    # UTF-8 bytes skip the re2 module's per-call offset decoding (3x faster on matching texts).
    return np.fromiter((isinstance(t, str) and regexp.search(t.encode("utf-8", "replace")) is not None
                        for t in texts), dtype=bool)


def _whole_word_pattern(phrase: str) -> str:
    # Lookarounds instead of \b so phrases that start or end with punctuation
    # ("c++", "5/10") still match; any whitespace run inside a phrase matches.
    # Safe on Python's backtracking `re`: only re.escape'd words joined by \s+ between one-character lookarounds,
    # so each \s+ can only span the one whitespace run after the word before it (words hold no whitespace):
    # matching is linear in the text (tests/test_hostile_links.py times a hostile phrase).
    words = phrase.split()
    body = r"\s+".join(re.escape(w) for w in words)
    return rf"(?<!\w){body}(?!\w)"


def _prefilter_literal(phrase: str) -> str:
    """Return a substring every whole-word match of ``phrase`` contains, safe for a fast literal search.

    Vectorised case-insensitive substring search (Arrow) is far faster than
    Python ``re`` but folds case slightly differently: checked over all code
    points, for ASCII queries it differs only in that ``re`` also matches
    "i" to "İ" and "ı". So the literal is the longest ASCII piece without
    i/I or whitespace ("" when there is none: no prefilter).
    """
    pieces = [p for p in re.split(r"[iI\s]+", phrase) if p.isascii()]
    return max(pieces, key=len, default="").lower()


def _keep_matching(texts: pd.Series, rows: np.ndarray, pattern: str, literal: bool = False) -> np.ndarray:
    """Return the subset of ``rows`` whose text matches ``pattern`` case-insensitively: a literal substring, or
    one of `_whole_word_pattern`'s patterns (never a user-typed regex: those go through `regex_hits`)."""
    if len(rows) == 0:
        return rows
    # every row (sorted and unique, so 0..n-1): the column itself, not a copy of every text
    subset = texts if len(rows) == len(texts) else texts.iloc[rows]
    if literal:
        hits = subset.str.contains(pattern, case=False, regex=False, na=False)
    else:
        # flags= keeps Python `re` semantics (lookarounds, Unicode \w) for every string backend.
        hits = subset.str.contains(pattern, flags=re.IGNORECASE, regex=True, na=False)
    return rows[hits.to_numpy(dtype=bool)]


def apply_slice(examples: pd.DataFrame, spec: SliceSpec) -> np.ndarray:
    """Return the sorted positional row indices (int64) of ``examples`` selected by ``spec``.

    Raises ``ValueError`` with a readable message if ``spec.regex`` cannot be used (see `compile_regex`).
    """
    if spec.regex:
        compile_regex(spec.regex)  # fail before any work

    mask = np.ones(len(examples), dtype=bool)
    if spec.split is not None:
        mask &= examples["split"].isin(spec.split).to_numpy()
    if spec.labels is not None:
        mask &= examples["label"].isin(spec.labels).to_numpy()
    if spec.preds is not None:
        mask &= examples["pred"].isin(spec.preds).to_numpy()
    if spec.correctness == "correct":
        mask &= examples["correct"].to_numpy(dtype=bool)
    elif spec.correctness == "misclassified":
        mask &= ~examples["correct"].to_numpy(dtype=bool)

    rows = np.flatnonzero(mask).astype(np.int64)
    # Text filters run last, each only on the rows still in.
    texts = examples["text"]
    for phrase in spec.contains:
        if not phrase.strip():
            continue
        literal = _prefilter_literal(phrase)
        if literal:
            rows = _keep_matching(texts, rows, literal, literal=True)
        rows = _keep_matching(texts, rows, _whole_word_pattern(phrase))
    if spec.regex and len(rows):
        rows = rows[regex_hits(texts.iloc[rows], spec.regex)]

    if spec.sample_size is not None and spec.sample_size < len(rows):
        rng = np.random.default_rng(spec.seed)
        rows = np.sort(rng.choice(rows, size=spec.sample_size, replace=False))
    return rows


# The orders of the Examples page's table.
EXAMPLE_ORDERS: tuple[str, ...] = ("row", "least_confident", "confident_wrong", "longest")


def search_and_order(examples: pd.DataFrame, rows: np.ndarray, query: str = "", order: str = "row") -> np.ndarray:
    """Return the ``rows`` (ids into ``examples``) whose text contains ``query`` (case-insensitive substring; all
    rows when empty), in ``order``: "row" keeps the given order, "least_confident" puts the lowest probability of
    the predicted class first, "confident_wrong" the misclassified examples by decreasing confidence then the
    correct ones, "longest" the most tokens first (stable: ties keep the given order).

    Reads only the columns it needs, so a million-row slice is ordered without building its display table.
    """
    if order not in EXAMPLE_ORDERS:
        raise ValueError(f"Unknown order {order!r}; known: {', '.join(EXAMPLE_ORDERS)}")
    rows = np.asarray(rows, dtype=np.int64)
    if query:
        hits = examples["text"].iloc[rows].str.contains(query, case=False, regex=False, na=False)
        rows = rows[hits.to_numpy(dtype=bool)]
    if order == "row" or len(rows) == 0:
        return rows
    if order == "longest":
        key = -examples["n_tokens"].to_numpy()[rows].astype(np.float64)
    else:
        n_labels = sum(1 for c in examples.columns if str(c).startswith("prob_"))
        probs = examples[[f"prob_{i}" for i in range(n_labels)]].to_numpy()[rows]
        confidence = probs[np.arange(len(rows)), examples["pred"].to_numpy()[rows]].astype(np.float64)
        key = confidence if order == "least_confident" else np.where(
            examples["correct"].to_numpy(dtype=bool)[rows], 2.0, 1.0 - confidence)
    return rows[np.argsort(key, kind="stable")]


# --------------------------------------------------------------------------- clustering


def _n_rows(X: Matrix) -> int:
    return int(X.shape[0])


def cluster_rows(X: Matrix, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Return k-means cluster labels (int64, one per row of ``X``).

    Uses ``KMeans(n_init="auto")``; inputs above ``MINIBATCH_THRESHOLD`` rows
    use ``MiniBatchKMeans`` (batch size ``MINIBATCH_SIZE``) when dense and the
    compiled k-means++ and Lloyd passes of ``_cluster_sparse_rows`` when sparse;
    above ``CLUSTER_FIT_ROWS`` rows the centres are fitted on a seeded sample of
    that many rows and every row is assigned to its nearest centre. Works on
    dense arrays (memory-mapped too) and sparse CSR matrices. Deterministic for
    a given ``seed``.
    """
    n = _n_rows(X)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if n_clusters > n:
        raise ValueError(
            f"Cannot make {n_clusters} clusters from {n} rows; choose at most {n} clusters."
        )
    # imported on first use: sklearn's import costs about 1.3 s, and the Summary page, the first a new server
    # draws, needs none of it (bench/results/dashboard.md, first open)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    X = _as_float32(X)
    if sp.issparse(X) and n > MINIBATCH_THRESHOLD:
        return _cluster_sparse_rows(sp.csr_matrix(X), n_clusters, seed)
    if n > CLUSTER_FIT_ROWS:
        fit_rows = np.sort(np.random.default_rng(seed).choice(n, size=CLUSTER_FIT_ROWS, replace=False))
        sample = X[fit_rows]
        fitted = cluster_rows(sample, n_clusters, seed)
        present = np.unique(fitted)  # k-means may leave a cluster empty: it attracts no row either
        return present[assign_to_centres(X, _centres(sample, fitted, n_clusters)[present])]
    if sp.issparse(X):
        # Vocabulary columns no row uses hold zero in every centre too; dropping them changes no distance and
        # makes each centre update 2-3x cheaper (a slice of short texts uses a fraction of a 30k vocabulary).
        used = np.flatnonzero(np.bincount(X.indices, minlength=X.shape[1]))  # np.unique sorts: 14x slower
        X = X[:, used if len(used) else [0]]  # all-zero rows keep one (zero) column: k-means needs a feature
    if n > MINIBATCH_THRESHOLD:
        model = MiniBatchKMeans(
            n_clusters=n_clusters, batch_size=MINIBATCH_SIZE, n_init="auto", random_state=seed,
            max_no_improvement=MINIBATCH_PATIENCE, init_size=MINIBATCH_INIT_SIZE,
        )
    else:
        model = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed)
    return model.fit_predict(X).astype(np.int64)


def _cluster_sparse_rows(X: sp.csr_matrix, n_clusters: int, seed: int) -> np.ndarray:
    """Return k-means labels of the float32 CSR rows ``X`` (more than MINIBATCH_THRESHOLD of them) through the
    compiled passes of core.kernels: k-means++ seeds on SEED_ROWS rows, Lloyd passes on those rows until at most
    0.1% of them change cluster (SEED_PASSES at most), FIT_PASSES more on the fit rows (all rows, or a seeded sample
    of CLUSTER_FIT_ROWS), then every row to its nearest centre. Cluster ids are renumbered over the non-empty
    clusters.

    scikit-learn's MiniBatchKMeans spent most of a recluster's server time here: 0.2-0.5 s on a 50,000-row sample
    of 1,000,000 S1 rows, most of it assigning 2,048-row batches (3 ms each); these passes give an inertia as low
    or lower in a third to a half of the time (bench/results/dashboard.md).
    """
    from core import kernels

    n = X.shape[0]
    rng = np.random.default_rng(seed)
    fit = X
    if n > CLUSTER_FIT_ROWS:
        fit = X[np.sort(rng.choice(n, size=CLUSTER_FIT_ROWS, replace=False))]
    # columns none of the fit rows uses are zero in every centre: the passes work on the used ones only
    used = np.flatnonzero(np.bincount(fit.indices, minlength=X.shape[1]))
    if len(used) == 0:  # every row is all zero: one cluster
        return np.zeros(n, dtype=np.int64)
    position = np.zeros(X.shape[1], dtype=fit.indices.dtype)
    position[used] = np.arange(len(used), dtype=fit.indices.dtype)  # a lookup: np.searchsorted took 0.07-0.1 s
    fit = sp.csr_matrix((fit.data, position[fit.indices], fit.indptr), shape=(fit.shape[0], len(used)))
    seed_rows = fit[np.sort(rng.choice(fit.shape[0], size=min(fit.shape[0], SEED_ROWS), replace=False))]
    first = kernels.csr_kmeans_plusplus(seed_rows.indptr, seed_rows.indices, seed_rows.data, len(used),
                                        n_clusters, rng)
    _, centres, _ = kernels.csr_lloyd(seed_rows.indptr, seed_rows.indices, seed_rows.data,
                                      seed_rows[first].toarray(), SEED_PASSES, seed_rows.shape[0] // 1000)
    fitted, centres, _ = kernels.csr_lloyd(fit.indptr, fit.indices, fit.data, centres, FIT_PASSES,
                                           fit.shape[0] // 1000)
    present = np.flatnonzero(np.bincount(fitted, minlength=n_clusters))
    full_centres = np.zeros((len(present), X.shape[1]), dtype=np.float32)
    full_centres[:, used] = centres[present]
    return kernels.csr_nearest_centre(X.indptr, X.indices, X.data, full_centres)


def _centres(X: Matrix, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Return the (n_clusters x n_features) float32 means of the rows of ``X`` per label (zero for an empty
    label)."""
    onehot = sp.csr_matrix((np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))),
                           shape=(n_clusters, len(labels)))
    sums = onehot @ X
    sums = np.asarray(sums.toarray() if sp.issparse(sums) else sums, dtype=np.float32)
    counts = np.maximum(np.bincount(labels, minlength=n_clusters), 1).astype(np.float32)
    return sums / counts[:, None]


def assign_to_centres(X: Matrix, centres: np.ndarray, batch: int = 100_000) -> np.ndarray:
    """Return the index (int64) of the nearest centre (euclidean) of every row of ``X``, ``batch`` rows at a time:
    argmax of 2 x.c - |c|^2, the k-means assignment (|x|^2 is the same for every centre). Ties go to the lower
    index."""
    centres = np.asarray(centres, dtype=np.float32)
    if sp.isspmatrix_csr(X):  # one compiled pass over the non-zeros: 1,000,000 S1 rows in 0.12 s, not 0.24-0.4 s
        from core import kernels

        return kernels.csr_nearest_centre(X.indptr, X.indices, X.data, centres)
    half_norms = 0.5 * (centres * centres).sum(axis=1)
    out = np.empty(_n_rows(X), dtype=np.int64)
    for lo in range(0, len(out), batch):
        hi = min(lo + batch, len(out))
        scores = np.asarray(X[lo:hi] @ centres.T, dtype=np.float32) - half_norms[None, :]
        out[lo:hi] = scores.argmax(axis=1)
    return out


def _as_float32(X: Matrix) -> Matrix:
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    return np.asarray(X, dtype=np.float32)


# --------------------------------------------------------------------------- top terms


def _column_means(X: Matrix) -> np.ndarray:
    if X.shape[0] == 0:
        return np.zeros(X.shape[1], dtype=np.float64)
    return np.asarray(X.mean(axis=0), dtype=np.float64).ravel()


def top_terms(
    R_vocab_rows: Matrix,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    n: int = 10,
) -> list[tuple[str, float]]:
    """Return up to ``n`` (term, mean weight) pairs with the highest column means.

    Ignored token ids and terms whose mean is zero are left out; ordered by
    weight, highest first (ties by token id).
    """
    means = _column_means(R_vocab_rows)
    order = _rank_by_mean(means, ignore_mask, n)
    return [(vocab[i], float(means[i])) for i in order]


def _rank_by_mean(means: np.ndarray, ignore_mask: np.ndarray, n: int | None) -> np.ndarray:
    """Return the ids of the (at most `n`) positive, not ignored means, highest first (ties by id)."""
    eligible = np.flatnonzero((means > 0) & ~np.asarray(ignore_mask, dtype=bool))
    return eligible[np.lexsort((eligible, -means[eligible]))][:n]


def wordcloud_weights(
    R_vocab_rows: Matrix,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    n: int = 60,
) -> dict[str, float]:
    """Return {token string: mean salience} for the ``n`` top terms, for a word cloud.

    Word pieces such as "##ing" are kept as they are.
    """
    return dict(top_terms(R_vocab_rows, vocab, ignore_mask, n=n))


def example_terms(R_rows, vocab: Sequence[str], ignore_mask: np.ndarray,
                  n: int = 5) -> list[list[tuple[str, float]]]:
    """Return, for each row of a (sparse or dense) S1 matrix, its `n` heaviest (term, weight) pairs, best first.

    Ignored tokens (special tokens, punctuation) and zero weights are left out.
    """
    ignore = np.asarray(ignore_mask, dtype=bool)
    out: list[list[tuple[str, float]]] = []
    if sp.issparse(R_rows):
        R = sp.csr_matrix(R_rows)
        for i in range(R.shape[0]):
            lo, hi = R.indptr[i], R.indptr[i + 1]
            cols, vals = R.indices[lo:hi], R.data[lo:hi]
            keep = (vals > 0) & ~ignore[cols]
            cols, vals = cols[keep], vals[keep]
            order = np.lexsort((cols, -vals))[:n]
            out.append([(vocab[c], float(v)) for c, v in zip(cols[order], vals[order])])
        return out
    for row in np.asarray(R_rows):
        cols = np.flatnonzero((row > 0) & ~ignore)
        order = cols[np.lexsort((cols, -row[cols]))][:n]
        out.append([(vocab[c], float(row[c])) for c in order])
    return out


def default_min_support(n_group: int) -> int:
    """Return the default minimum support of a group of ``n_group`` rows: max(3, ceil(2% of the group)),
    capped at the group size (a group of 2 rows can still show terms)."""
    return int(min(max(n_group, 1), max(3, math.ceil(0.02 * n_group))))


def _rank_distinctive(mean_in: np.ndarray, mean_out: np.ndarray, support: np.ndarray, ignore_mask: np.ndarray,
                      min_support: int, n: int | None,
                      term_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (column ids, weights) of the terms with (mean_in - mean_out) [x term_weights] > 0 and support >=
    min_support, best first: by weight, then by the in-group mean, then by support, then by column id (all rules,
    no chance)."""
    weight = mean_in - mean_out
    if term_weights is not None:
        weight = weight * np.asarray(term_weights, dtype=np.float64)
    ok = np.flatnonzero((weight > 0) & (support >= min_support) & ~np.asarray(ignore_mask, dtype=bool))
    order = ok[np.lexsort((ok, -support[ok], -mean_in[ok], -weight[ok]))]
    if n is not None:
        order = order[:n]
    return order, weight[order]


def distinctive_terms(
    R_rows_in_group: Matrix,
    R_rows_rest: Matrix,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    presence_in_group: Matrix | None = None,
    n: int = 10,
    min_support: int | None = None,
    term_weights: np.ndarray | None = None,
) -> list[tuple[str, float]]:
    """Return up to ``n`` (term, weight) pairs: the terms most distinctive of a group of rows against the rest.

    The weight is the **difference of means** of the S1 salience, ``mean over the group - mean over the rest``
    (the two-sample contrast behind e.g. scikit-learn's ``NearestCentroid``; a centroid difference). A term
    salient in every row (a function word) has about the same mean inside and outside, so it falls to about 0;
    a term rare overall but salient in most of the group ranks first. Only terms with a positive weight that
    are not ignored and are *supported* by at least ``min_support`` rows of the group (rows where the term is
    present, from ``presence_in_group``, or salient, ``R > 0``, when no presence is given; default
    ``default_min_support``: max(3, 2% of the group)) are returned, best first; equal weights are ordered by
    the in-group mean, then support, then column id. With no rest rows the weight is the group mean.

    ``term_weights`` (one per column), when given, multiply the difference: the pages pass each term's idf
    (``TermSpace.idf``). With few clusters the difference alone still lets function words through: S1 rows are
    normalised, so where a planted or very salient term takes most of a row's salience, ``the`` and ``of`` get less
    there and look "distinctive" of the other clusters (on the demo's 3 clusters: ``the, of, that, and`` among a
    cluster's top 8; weighted by idf: ``doesn't, feels, over, bad``).
    """
    n_group = R_rows_in_group.shape[0]
    if n_group == 0:
        return []
    mean_in = _column_means(R_rows_in_group)
    mean_out = _column_means(R_rows_rest)
    support = _document_counts(R_rows_in_group if presence_in_group is None else presence_in_group)
    threshold = default_min_support(n_group) if min_support is None else int(min_support)
    order, weights = _rank_distinctive(mean_in, mean_out, support, ignore_mask, threshold, n, term_weights)
    return [(vocab[i], float(w)) for i, w in zip(order, weights)]


def label_agreement(cluster_labels: np.ndarray, classes: np.ndarray) -> float:
    """Return the adjusted Rand index between a clustering and class ids: 1 when the clusters are the classes,
    about 0 when they are unrelated (NaN for fewer than two rows)."""
    if len(cluster_labels) < 2:
        return math.nan
    # From the clusters x classes contingency table (one bincount), with sklearn's adjusted_rand_score formula:
    # sklearn builds the table through a sparse matrix of every row, 0.15-0.3 s at 1,000,000 rows.
    cluster_codes, clusters = pd.factorize(np.asarray(cluster_labels))
    class_codes, classes_present = pd.factorize(np.asarray(classes))
    n_classes = len(classes_present)
    table = np.bincount(cluster_codes.astype(np.int64) * n_classes + class_codes,
                        minlength=len(clusters) * n_classes).reshape(len(clusters), n_classes)
    n = int(len(cluster_labels))
    sum_squares = int((table.astype(np.int64) ** 2).sum())
    cluster_pairs = int((table.sum(axis=1).astype(np.int64) ** 2).sum()) - sum_squares
    class_pairs = int((table.sum(axis=0).astype(np.int64) ** 2).sum()) - sum_squares
    together = sum_squares - n  # pairs in one cluster and one class (ordered pairs, as sklearn counts them)
    apart = n * n - cluster_pairs - class_pairs - sum_squares
    if cluster_pairs == 0 and class_pairs == 0:
        return 1.0
    return 2.0 * (together * apart - class_pairs * cluster_pairs) / (
        (together + class_pairs) * (class_pairs + apart) + (together + cluster_pairs) * (cluster_pairs + apart))


def _top_share(column_sums: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the ids of the SHORTCUT_TOP_TERMS largest positive sums and the share of the total they hold."""
    mass = column_sums.sum()
    top_ids = np.lexsort((np.arange(len(column_sums)), -column_sums))[:SHORTCUT_TOP_TERMS]
    top_ids = top_ids[column_sums[top_ids] > 0]
    return top_ids, (float(column_sums[top_ids].sum() / mass) if mass > 0 else 0.0)


def _label_name(label_names: Sequence[str], i: int) -> str:
    return label_names[i] if 0 <= i < len(label_names) else str(i)


TERM_RANKINGS: tuple[str, ...] = ("distinctive", "mean")
# A cluster is flagged as a possible shortcut when all three hold (Clusters page, flag_reason says which numbers).
SHORTCUT_MAX_SIZE_PCT = 25.0      # small: under this percentage of the slice
SHORTCUT_MIN_CONFIDENCE = 0.9     # confident: mean max class probability at least this
SHORTCUT_TOP_TERMS = 3            # concentrated: the top this-many terms (by mean salience) hold ...
SHORTCUT_MIN_TOP_SHARE = 0.15     # ... at least this share of the cluster's summed salience, and ...
SHORTCUT_MIN_SHARE_RATIO = 2.0    # ... at least this many times the share the slice's own top terms hold.
# Relative, because with k = all every word of a sentence carries some salience: on the demo (test split, predicted
# negative, 3 clusters) the planted cluster's top 3 hold 22% of its salience against 7% for the slice's own top 3.


def class_mix(counts: Sequence[int], label_names: Sequence[str]) -> str:
    """Return the classes with a non-zero count in class order, e.g. ``"negative 104 · positive 104"``."""
    parts = [f"{_label_name(label_names, c)} {int(k):,}" for c, k in enumerate(counts) if k > 0]
    return " · ".join(parts) if parts else "—"


def majority_text(counts: Sequence[int], label_names: Sequence[str]) -> str:
    """Return the most frequent class's name, or ``"tie: A / B"`` when several classes share the top count."""
    counts = np.asarray(counts)
    if len(counts) == 0 or counts.max() <= 0:
        return "—"
    top = np.flatnonzero(counts == counts.max())
    if len(top) == 1:
        return _label_name(label_names, int(top[0]))
    return "tie: " + " / ".join(_label_name(label_names, int(c)) for c in top)


def _confidence(rows_examples: pd.DataFrame, n_classes: int) -> np.ndarray | None:
    columns = [f"prob_{i}" for i in range(n_classes)]
    if n_classes == 0 or not all(c in rows_examples.columns for c in columns):
        return None
    return rows_examples[columns].to_numpy(dtype=np.float64).max(axis=1)


def _cluster_column_sums(member_of: np.ndarray, n_clusters: int, R: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Return (sums float64, supports int64), each (n_clusters x n_columns): per cluster (``member_of`` gives each
    row's cluster position) the column sums of ``R`` and the number of rows where the column is > 0.

    Sparse rows are counted in one compiled pass over the non-zeros (core.kernels; 1,000,000 word-level S1 rows,
    17.6M non-zeros: 0.08 s, where two numpy bincounts over per-entry keys took 0.22-0.53 s and sparse matrix
    products 0.35 s)."""
    n_columns = R.shape[1]
    if sp.issparse(R):
        from core import kernels  # numba's import costs about 0.3 s: paid by the first page that clusters

        R = sp.csr_matrix(R)
        return kernels.csr_cluster_column_sums(member_of, n_clusters, R.indptr, R.indices, R.data, n_columns)
    R = np.asarray(R)
    indicator = sp.csr_matrix((np.ones(len(member_of)), (member_of, np.arange(len(member_of)))),
                              shape=(n_clusters, len(member_of)))
    sums = np.asarray(indicator @ R, dtype=np.float64)
    supports = np.asarray(indicator @ (R > 0).astype(np.float64), dtype=np.float64).round().astype(np.int64)
    return sums, supports


def _cluster_positions(cluster_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (the distinct cluster ids, sorted; each row's position among them). Ids that are small non-negative
    integers (k-means' own) are found with a bincount, 5 ms at 1,000,000 rows against 30 ms for a sort."""
    if len(cluster_labels) and np.issubdtype(cluster_labels.dtype, np.integer) and cluster_labels.min() >= 0 \
            and cluster_labels.max() < 4 * len(cluster_labels) + 1024:
        present = np.bincount(cluster_labels) > 0
        clusters = np.flatnonzero(present)
        position = np.cumsum(present) - 1
        return clusters.astype(cluster_labels.dtype), position[cluster_labels]
    clusters, member_of = np.unique(cluster_labels, return_inverse=True)
    return clusters, member_of.reshape(-1)


def cluster_summary(
    cluster_labels: np.ndarray,
    rows_examples: pd.DataFrame,
    R_vocab_rows: Matrix,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    label_names: Sequence[str],
    n_terms: int = 8,
    *,
    ranking: str = "distinctive",
    term_weights: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return one row per cluster, sorted by size (largest first).

    ``ranking`` picks the cluster's terms: ``"distinctive"`` (default) ranks them by ``distinctive_terms``
    against the rest of the rows (mean salience in the cluster minus mean salience in the other clusters, times
    ``term_weights`` when given, support at least ``default_min_support``); ``"mean"`` by the mean salience in the cluster (``top_terms``,
    method.md §3). The ``terms`` column holds the (term, weight) pairs of that ranking, for tables and word
    clouds alike.

    Columns: ``cluster`` (id), ``size``, ``size_pct`` (percent of the rows, 0-100), ``majority_label`` and
    ``majority_pred`` (class names; ``"tie: A / B"`` when classes tie), ``label_counts`` / ``pred_counts``
    (tuples of counts per class), ``labels_text`` / ``preds_text`` (e.g. ``"negative 104 · positive 3"``),
    ``recall`` (tuple per class: the share of the rows labelled with that class that fall in this cluster, NaN
    for a class absent from the rows; each class's recalls sum to 1 over the clusters), ``recall_text``,
    ``class_recall`` (tuple per class: the model's recall of that class inside the cluster, the share of the
    cluster's examples labelled with it that are predicted as it; NaN for a class the cluster does not hold) and
    ``class_recall_text`` (e.g. ``"negative 95% · positive 40%"``, classes the cluster holds),
    ``accuracy`` (fraction correct), ``confidence`` (mean max class probability from the ``prob_<i>`` columns,
    NaN without them), ``top_share`` (share of the cluster's summed salience, ignored terms left out, held by
    its ``SHORTCUT_TOP_TERMS`` terms of highest mean salience), ``shortcut`` (bool: small, confident and
    concentrated, see the ``SHORTCUT_*`` thresholds), ``flag_reason`` (why, with the numbers; "" when not
    flagged), ``top_terms`` (", "-joined) and ``terms`` (list of (term, weight)). ``cluster_labels``,
    ``rows_examples`` and ``R_vocab_rows`` must be aligned row by row.
    """
    if ranking not in TERM_RANKINGS:
        raise ValueError(f"ranking must be one of {TERM_RANKINGS}, got {ranking!r}")
    cluster_labels = np.asarray(cluster_labels)
    if not (len(cluster_labels) == len(rows_examples) == R_vocab_rows.shape[0]):
        raise ValueError(
            "cluster_labels, rows_examples and R_vocab_rows must have the same number of rows"
        )
    labels = rows_examples["label"].to_numpy(dtype=np.int64)
    preds = rows_examples["pred"].to_numpy(dtype=np.int64)
    correct = rows_examples["correct"].to_numpy(dtype=bool)
    total = len(cluster_labels)
    n_classes = max(len(label_names), int(labels.max(initial=-1)) + 1, int(preds.max(initial=-1)) + 1)
    label_totals = np.bincount(labels, minlength=n_classes)
    confidence = _confidence(rows_examples, len(label_names))
    ignore = np.asarray(ignore_mask, dtype=bool)

    clusters, member_of = _cluster_positions(cluster_labels)
    n_found = len(clusters)
    sums, supports = _cluster_column_sums(member_of, n_found, R_vocab_rows)
    all_sums = sums.sum(axis=0)
    slice_top_share = _top_share(np.where(ignore, 0.0, all_sums))[1]

    # every per-cluster count in one bincount over (cluster, class) pairs: fancy-indexing each cluster's rows out
    # of five columns cost 50 ms at 1,000,000 rows
    sizes = np.bincount(member_of, minlength=n_found)
    pair = member_of * n_classes + labels
    all_label_counts = np.bincount(pair, minlength=n_found * n_classes).reshape(n_found, n_classes)
    all_pred_counts = np.bincount(member_of * n_classes + preds, minlength=n_found * n_classes).reshape(n_found,
                                                                                                         n_classes)
    all_hits = np.bincount(pair[correct], minlength=n_found * n_classes).reshape(n_found, n_classes)
    mean_confidence = (np.bincount(member_of, weights=confidence, minlength=n_found) / np.maximum(sizes, 1)
                       if confidence is not None else None)
    records = []
    for i, c in enumerate(clusters):
        size = int(sizes[i])
        mean_in = sums[i] / size
        if ranking == "mean":
            order = _rank_by_mean(mean_in, ignore, n_terms)
            weights = mean_in[order]
        else:
            rest = total - size
            mean_out = (all_sums - sums[i]) / rest if rest else np.zeros_like(mean_in)
            order, weights = _rank_distinctive(mean_in, mean_out, supports[i], ignore,
                                               default_min_support(size), n_terms, term_weights)
        terms = [(vocab[j], float(w)) for j, w in zip(order, weights)]

        label_counts, pred_counts, hits = all_label_counts[i], all_pred_counts[i], all_hits[i]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(label_totals > 0, label_counts / np.maximum(label_totals, 1), np.nan)
        recall_text = " · ".join(f"{_label_name(label_names, k)} {recall[k]:.0%}"
                                 for k in range(n_classes) if label_totals[k] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            class_recall = np.where(label_counts > 0, hits / np.maximum(label_counts, 1), np.nan)
        class_recall_text = " · ".join(f"{_label_name(label_names, k)} {class_recall[k]:.0%}"
                                       for k in range(n_classes) if label_counts[k] > 0)

        top_ids, top_share = _top_share(np.where(ignore, 0.0, sums[i]))
        size_pct = 100.0 * size / total
        conf = float(mean_confidence[i]) if mean_confidence is not None else math.nan
        small = size_pct < SHORTCUT_MAX_SIZE_PCT
        confident = bool(np.isfinite(conf) and conf >= SHORTCUT_MIN_CONFIDENCE)
        concentrated = (top_share >= SHORTCUT_MIN_TOP_SHARE
                        and top_share >= SHORTCUT_MIN_SHARE_RATIO * slice_top_share)
        shortcut = small and confident and concentrated
        reason = ""
        if shortcut:
            reason = (f"small ({size_pct:.1f}% of the slice, under {SHORTCUT_MAX_SIZE_PCT:g}%), "
                      f"confident (mean max probability {conf:.2f} ≥ {SHORTCUT_MIN_CONFIDENCE:g}), "
                      f"concentrated (its top {len(top_ids)} terms, {' · '.join(vocab[j] for j in top_ids)}, hold "
                      f"{top_share:.0%} of its salience, against {slice_top_share:.0%} for the slice's top "
                      f"{SHORTCUT_TOP_TERMS})")
        records.append(
            {
                "cluster": int(c),
                "size": size,
                "size_pct": size_pct,
                "majority_label": majority_text(label_counts, label_names),
                "majority_pred": majority_text(pred_counts, label_names),
                "labels_text": class_mix(label_counts, label_names),
                "preds_text": class_mix(pred_counts, label_names),
                "recall_text": recall_text,
                "accuracy": float(hits.sum() / size),
                "confidence": conf,
                "top_share": top_share,
                "shortcut": shortcut,
                "flag_reason": reason,
                "top_terms": ", ".join(t for t, _ in terms),
                "terms": terms,
                "label_counts": tuple(int(k) for k in label_counts),
                "pred_counts": tuple(int(k) for k in pred_counts),
                "recall": tuple(float(r) for r in recall),
                "class_recall": tuple(float(r) for r in class_recall),
                "class_recall_text": class_recall_text,
            }
        )
    columns = [
        "cluster", "size", "size_pct", "majority_label", "majority_pred", "labels_text", "preds_text",
        "recall_text", "accuracy", "confidence", "top_share", "shortcut", "flag_reason", "top_terms", "terms",
        "label_counts", "pred_counts", "recall", "class_recall", "class_recall_text",
    ]
    df = pd.DataFrame.from_records(records, columns=columns)
    df["shortcut"] = df["shortcut"].astype(bool)
    return df.sort_values(["size", "cluster"], ascending=[False, True], ignore_index=True)


# --------------------------------------------------------------------------- projections


def _reduced(X: Matrix, seed: int, max_dims: int = REDUCED_DIMS) -> np.ndarray:
    """Return the rows as dense unit vectors of at most ``max_dims`` dimensions (truncated SVD when wider).

    Re-normalising keeps euclidean distances monotone in cosine, the similarity every representation uses.
    """
    from sklearn.decomposition import TruncatedSVD

    n_features = X.shape[1]
    if n_features > max_dims and X.shape[0] > max_dims:
        svd = TruncatedSVD(n_components=max_dims, random_state=seed)
        Z = svd.fit_transform(_as_float32(X))
    else:
        Z = X.toarray() if sp.issparse(X) else np.asarray(X)
    return normalise_rows(np.asarray(Z, dtype=np.float32))


def _reduced_by_sample(X: Matrix, fit_rows: np.ndarray, seed: int, progress: ProgressFn,
                       max_dims: int = REDUCED_DIMS, batch: int = 100_000) -> np.ndarray:
    """Return every row of ``X`` as a unit vector of ``max_dims`` dimensions: a truncated SVD fitted on the rows
    ``fit_rows`` only, applied to all rows ``batch`` at a time (float32, n x max_dims)."""
    from sklearn.decomposition import TruncatedSVD

    n = _n_rows(X)
    svd = TruncatedSVD(n_components=max_dims, random_state=seed).fit(_as_float32(X[fit_rows]))
    Z = np.empty((n, max_dims), dtype=np.float32)
    for lo in range(0, n, batch):
        progress(0.02 + 0.06 * lo / n, f"UMAP: reducing {n:,} rows to {max_dims} dimensions (truncated SVD)")
        Z[lo:lo + batch] = normalise_rows(svd.transform(_as_float32(X[lo:lo + batch])))
    return Z


def _umap_by_sample(X: Matrix, seed: int, progress: ProgressFn, fit_size: int | None = None,
                    batch: int | None = None) -> np.ndarray:
    """Return UMAP coordinates of every row: UMAP fitted on a seeded sample of ``fit_size`` rows (default
    UMAP_FIT_ROWS), the other rows placed into that map with ``transform``, ``batch`` rows at a time (default
    UMAP_TRANSFORM_BATCH; progress reported per batch)."""
    fit_size, batch = fit_size or UMAP_FIT_ROWS, batch or UMAP_TRANSFORM_BATCH
    n = _n_rows(X)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=min(n, fit_size), replace=False))
    Z = _reduced_by_sample(X, fit_rows, seed, progress)
    progress(0.08, f"UMAP: finding the nearest neighbours of a seeded sample of {len(fit_rows):,} of the {n:,} "
                   "points")
    model = _umap_model(len(fit_rows), True, seed, progress, start=0.15, span=0.15)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        ignore_uncachable_numba_warning()
        coords = np.empty((n, 2), dtype=np.float32)
        coords[fit_rows] = model.fit_transform(Z[fit_rows])
        # transform runs optimisation epochs of its own through the same bar, which would report the fit's
        # 15-30% again for every batch: the bar jumped back and forth; the batches report their own progress
        model.tqdm_kwds = {**model.tqdm_kwds, "disable": True}
        rest = np.setdiff1d(np.arange(n), fit_rows)
        fit_share = 0.3
        for lo in range(0, len(rest), batch):
            part = rest[lo:lo + batch]
            progress(fit_share + (1 - fit_share) * lo / len(rest),
                     f"UMAP: placing the other {len(rest):,} points into the map of {len(fit_rows):,} "
                     f"({lo:,} placed)")
            coords[part] = model.transform(Z[part])
    return coords


def _no_progress(fraction: float, message: str) -> None:
    return None


def _tsne(Z: np.ndarray, seed: int, progress: ProgressFn, start: float, span: float):
    """Return an openTSNE embedding of the rows of ``Z``, reporting progress from ``start`` over ``span``."""
    import openTSNE  # imported here: only paid when a t-SNE map is requested

    n = Z.shape[0]
    every = 25
    total_calls = (250 + 500) // every  # openTSNE's default early-exaggeration + main iterations
    calls = 0

    def callback(iteration: int, error: float, embedding) -> bool:
        nonlocal calls
        calls += 1
        progress(start + span * min(1.0, calls / total_calls), f"t-SNE: optimising the layout of {n:,} points")
        return False

    model = openTSNE.TSNE(
        perplexity=float(min(30.0, max(1.0, (n - 1) / 3))),
        n_jobs=-1,
        random_state=seed,
        callbacks=callback,
        callbacks_every_iters=every,
        # exact neighbours for small inputs: Annoy needs more points than neighbours it is asked for
        neighbors="exact" if n < 1_000 else "annoy",
        negative_gradient_method="bh" if n < 10_000 else "fft",
    )
    progress(start, f"t-SNE: finding the nearest neighbours of {n:,} points")
    embedding = model.fit(Z)
    # The embedding keeps the fit's optimiser settings, callbacks included; `transform` must not report as the fit.
    embedding.gradient_descent_params["callbacks"] = None
    return embedding


_UMAP_IMPORT_LOCK = threading.Lock()


def import_umap():
    """Import and return the `umap` module with numba's on-disk cache on for the functions it (and pynndescent)
    compile at import, unless umap was imported already.

    Most of umap's numba functions are not marked `cache=True`, so every process compiled them again: 16.6 s on 2
    cores before the first map of a server, a precompute or a test. Cached, a later process loads them in 1.7 s.
    numba keeps the cache beside the library's source (its `__pycache__`, or its user-wide folder when that is
    read-only), keyed by the source file and numba's version, as Python keeps bytecode. Only the decorators umap's
    import applies are changed; numba's own are restored before this returns.
    """
    if "umap" in sys.modules:
        return sys.modules["umap"]
    with _UMAP_IMPORT_LOCK:
        if "umap" in sys.modules:
            return sys.modules["umap"]
        import numba
        from numba.core import decorators

        originals = (numba.jit, numba.njit, decorators.jit, decorators.njit)

        def cached(decorator):
            @functools.wraps(decorator)
            def with_cache(*args, **kwargs):
                kwargs.setdefault("cache", True)
                return decorator(*args, **kwargs)
            return with_cache

        numba.jit = decorators.jit = cached(originals[0])
        numba.njit = decorators.njit = cached(originals[1])
        try:
            import umap
        finally:
            numba.jit, numba.njit, decorators.jit, decorators.njit = originals
        ignore_uncachable_numba_warning()
        return umap


def ignore_uncachable_numba_warning() -> None:
    """Silence numba's warning that a function of umap or pynndescent cannot be cached (some use dynamic globals):
    `import_umap` asked for the cache; such a function is compiled per process, as without it."""
    from numba.core.errors import NumbaWarning

    warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)


def _umap_model(n: int, large: bool, seed: int, progress: ProgressFn, start: float = 0.5, span: float = 0.5):
    """Return an unfitted UMAP for `n` rows (euclidean on reduced unit rows when `large`, else cosine) whose
    optimisation epochs report progress from `start` over `span`."""
    umap = import_umap()  # slow import (numba); only paid when a UMAP map is requested

    class _EpochReader:
        """A file for UMAP's tqdm bar (bar_format "{n}/{total}"): turns each redraw into a progress call."""

        def write(self, text: str) -> None:
            done, _, total = text.strip().partition("/")
            if done.isdigit() and total.isdigit() and int(total):
                progress(start + span * int(done) / int(total), f"UMAP: optimising the layout of {n:,} points")

        def flush(self) -> None:
            return None

    return umap.UMAP(
        n_components=2,
        metric="euclidean" if large else "cosine",
        n_neighbors=max(2, min(15, n - 1)),
        # The spectral init's eigensolver fails on very small graphs and takes minutes on very large ones.
        init="pca" if large else "spectral" if n > SPECTRAL_INIT_MIN_ROWS else "random",
        random_state=seed,
        tqdm_kwds={"disable": False, "file": _EpochReader(), "bar_format": "{n}/{total}", "mininterval": 0.5},
    )


def _umap(X: Matrix, seed: int, progress: ProgressFn) -> np.ndarray:
    n = _n_rows(X)
    large = n > UMAP_REDUCE_ABOVE
    if large:
        progress(0.02, f"UMAP: reducing {n:,} rows to {REDUCED_DIMS} dimensions (truncated SVD)")
        X = _reduced(X, seed)
    model = _umap_model(n, large, seed, progress)
    progress(0.1, f"UMAP: finding the nearest neighbours of {n:,} points")
    with warnings.catch_warnings():
        # Setting random_state forces n_jobs=1; UMAP warns about that every call.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        ignore_uncachable_numba_warning()
        return model.fit_transform(_as_float32(X))


def project_2d(
    X: Matrix,
    method: ProjectionMethod,
    seed: int = 0,
    tsne_max_points: int = TSNE_MAX_POINTS,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Return 2-D coordinates, shape (n_rows, 2), float32, deterministic for a seed.

    ``"umap"``: UMAP with cosine metric on the rows (sparse or dense); above
    ``UMAP_REDUCE_ABOVE`` rows, on a 50-dimensional truncated SVD of them with
    PCA initialisation; above ``UMAP_SAMPLE_ABOVE`` rows, fitted on a seeded
    sample of ``UMAP_FIT_ROWS`` rows, the others placed with UMAP's
    ``transform`` in batches. ``"tsne"``: openTSNE on the rows reduced to 50
    dimensions by truncated SVD when wider. Above ``tsne_max_points`` rows a
    seeded random sample is embedded and every other row is placed into that
    embedding by openTSNE's ``transform`` (in batches, so progress is reported).

    ``progress(fraction, message)`` is called as the work advances (fraction in
    [0, 1]). UMAP is not thread-safe; callers sharing a process across sessions
    should serialise calls with a lock. The first UMAP call in a process also
    compiles umap-learn's numba code (10-25 s on a 2-core machine).
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"Unknown projection method {method!r}; known: {PROJECTION_METHODS}")
    progress = progress or _no_progress
    n = _n_rows(X)
    if n < 3:
        # Neither method is defined for so few points; lay them out on a line.
        return np.column_stack([np.arange(n), np.zeros(n)]).astype(np.float32)

    if method == "umap":
        large = n > UMAP_SAMPLE_ABOVE
        coords = np.asarray(_umap_by_sample(X, seed, progress) if large else _umap(X, seed, progress),
                            dtype=np.float32)
        progress(1.0, "UMAP: done")
        return coords

    progress(0.0, f"t-SNE: reducing {n:,} rows to {REDUCED_DIMS} dimensions (truncated SVD)")
    Z = _reduced(X, seed)
    if n <= tsne_max_points:
        coords = np.asarray(_tsne(Z, seed, progress, 0.02, 0.98), dtype=np.float32)
        progress(1.0, "t-SNE: done")
        return coords

    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=tsne_max_points, replace=False))
    rest = np.setdiff1d(np.arange(n), fit_rows)
    fit_share = 0.6
    embedding = _tsne(Z[fit_rows], seed, progress, 0.02, fit_share - 0.02)
    coords = np.empty((n, 2), dtype=np.float32)
    coords[fit_rows] = np.asarray(embedding)
    # New points are optimised against the fixed embedding only, so batches give the same result as one call.
    for lo in range(0, len(rest), TRANSFORM_BATCH):
        batch = rest[lo:lo + TRANSFORM_BATCH]
        progress(fit_share + (1 - fit_share) * lo / len(rest),
                 f"t-SNE: placing the other {len(rest):,} points into the embedding of {tsne_max_points:,}")
        coords[batch] = np.asarray(embedding.transform(Z[batch]))
    progress(1.0, "t-SNE: done")
    return coords


# --------------------------------------------------------------------------- density maps

# Above this many points the Map page draws each colour group's density on a grid plus a seeded sample of points
# (hover, lasso and box work on the sample; a selection lists every row inside the drawn region).
DENSITY_ABOVE = 50_000
DENSITY_BINS = 160
# Drawn as SVG markers (plots.density_map): 1,000 take the browser about 0.2 s, 2,000 0.4-0.5 s, 10,000 about 2 s.
DENSITY_SAMPLE = 1_000


@dataclass(frozen=True)
class DensityGrid:
    """Points counted on a grid, per colour group: ``counts[g]`` is a (bins_y, bins_x) int array of group
    ``groups[g]``; ``x_centres``/``y_centres`` are the cell centres; ``sample`` holds positions (into the
    points) of a seeded sample drawn as points."""

    groups: list[str]
    counts: np.ndarray
    x_centres: np.ndarray
    y_centres: np.ndarray
    sample: np.ndarray


def density_grid(coords: np.ndarray, groups: Sequence[object], bins: int | None = None,
                 sample_size: int | None = None, seed: int = 0) -> DensityGrid:
    """Return the counts of the 2-D ``coords`` on a ``bins`` x ``bins`` grid (default DENSITY_BINS) over their
    extent, one grid per distinct value of ``groups`` (aligned with ``coords``; sorted as strings), and a seeded
    uniform sample of at most ``sample_size`` positions (default DENSITY_SAMPLE)."""
    bins = bins or DENSITY_BINS
    sample_size = DENSITY_SAMPLE if sample_size is None else sample_size
    coords = np.asarray(coords, dtype=np.float64)
    # factorize, then name the few distinct values: a categorical or integer column is coded without touching a
    # string per row (1,000,000 rows: 0.6 s as strings, a few ms as codes)
    values = groups if isinstance(groups, (pd.Series, pd.Categorical)) else np.asarray(groups, dtype=object)
    if len(values) != len(coords):
        raise ValueError("coords and groups must be aligned")
    raw_codes, uniques = pd.factorize(values, use_na_sentinel=False)
    unique_names = [str(u) for u in uniques]
    names = sorted(set(unique_names))
    code_of_unique = np.searchsorted(np.asarray(names, dtype=object), np.asarray(unique_names, dtype=object))
    if len(coords) == 0:
        empty = np.zeros((len(names), bins, bins), dtype=np.int64)
        return DensityGrid(names, empty, np.zeros(bins), np.zeros(bins), np.empty(0, dtype=np.int64))
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    cells = np.minimum(((coords - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    code = code_of_unique.astype(np.int64)[raw_codes]
    flat = (code * bins + cells[:, 1]) * bins + cells[:, 0]
    counts = np.bincount(flat, minlength=len(names) * bins * bins).reshape(len(names), bins, bins)
    width = (hi - lo) / bins
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(coords), size=min(sample_size, len(coords)), replace=False))
    return DensityGrid(names, counts, lo[0] + width[0] * (np.arange(bins) + 0.5),
                       lo[1] + width[1] * (np.arange(bins) + 0.5), sample)


def rows_in_region(coords: np.ndarray, box: tuple[float, float, float, float] | None = None,
                   lasso: tuple[Sequence[float], Sequence[float]] | None = None) -> np.ndarray:
    """Return the positions (int64, sorted) of the ``coords`` inside a box (x0, x1, y0, y1, any order; edges
    included) or a lasso polygon (xs, ys; even-odd rule). Empty when neither is given."""
    coords = np.asarray(coords, dtype=np.float64)
    inside = np.zeros(len(coords), dtype=bool)
    if box is not None:
        x0, x1, y0, y1 = box
        inside |= ((coords[:, 0] >= min(x0, x1)) & (coords[:, 0] <= max(x0, x1))
                   & (coords[:, 1] >= min(y0, y1)) & (coords[:, 1] <= max(y0, y1)))
    if lasso is not None and len(lasso[0]) >= 3:
        xs, ys = np.asarray(lasso[0], dtype=np.float64), np.asarray(lasso[1], dtype=np.float64)
        candidates = np.flatnonzero(~inside & (coords[:, 0] >= xs.min()) & (coords[:, 0] <= xs.max())
                                    & (coords[:, 1] >= ys.min()) & (coords[:, 1] <= ys.max()))
        x, y = coords[candidates, 0], coords[candidates, 1]
        odd = np.zeros(len(candidates), dtype=bool)
        for i in range(len(xs)):  # even-odd rule: count the polygon edges a ray to the right crosses
            xi, yi, xj, yj = xs[i], ys[i], xs[i - 1], ys[i - 1]
            if yi == yj:
                continue
            odd ^= ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        inside[candidates[odd]] = True
    return np.flatnonzero(inside).astype(np.int64)


# --------------------------------------------------------------------------- neighbours


def _candidate_ids(candidates: np.ndarray | None, n_rows: int) -> np.ndarray | None:
    if candidates is None:
        return None
    cand = np.asarray(candidates)
    if cand.dtype == bool:
        if len(cand) != n_rows:
            raise ValueError(f"candidate mask has length {len(cand)}, expected {n_rows}")
        return np.flatnonzero(cand).astype(np.int64)
    ids = np.unique(cand.astype(np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= n_rows):
        raise ValueError(f"candidate indices must lie in [0, {n_rows})")
    return ids


def _top_n(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(ids) > n:
        part = np.argpartition(-scores, n - 1)[:n]
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores))
    return ids[order].astype(np.int64), scores[order].astype(np.float32)


class NeighbourIndex:
    """Exact cosine nearest-neighbour search over the rows of a matrix.

    Dense rows go into a faiss ``IndexFlatIP``; sparse CSR rows are searched
    by a sparse product over the posting lists (CSC columns) of the query's
    terms. Rows are L2-normalised on the way in (a copy), so inner products
    are cosines. ``core.neighbours`` picks an approximate index instead for
    large dense matrices.
    """

    approximate = False

    def __init__(self, X: Matrix) -> None:
        self.n_rows = _n_rows(X)
        self.sparse = sp.issparse(X)
        if self.sparse:
            self._X = normalise_rows(sp.csr_matrix(X, dtype=np.float32))
            # Columns as posting lists: a query's cosines only need the rows sharing one of its terms, a fraction
            # of all non-zeros (1,000,000 S1 rows: 1-10 ms instead of 25 ms for the full product).
            self._columns = self._X.tocsc()
            self._index = None
        else:
            dense = np.array(X, dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(dense)
            self._index = faiss.IndexFlatIP(dense.shape[1])
            self._index.add(dense)
            self._X = None

    def row_vector(self, row: int) -> np.ndarray:
        """Return the normalised row ``row`` as a dense float32 vector."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} out of range [0, {self.n_rows})")
        if self.sparse:
            return self._X[row].toarray().ravel()
        return self._index.reconstruct(int(row))

    def search_vector(
        self,
        query: np.ndarray,
        n: int = 5,
        candidates: np.ndarray | None = None,
        exclude: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (row indices int64, cosine scores float32) of the ``n`` rows nearest ``query``.

        ``candidates`` (bool mask or index array) restricts the rows searched;
        ``exclude`` drops one row id. Best first; fewer than ``n`` when fewer
        rows qualify. ``query`` is assumed normalised.
        """
        cand = _candidate_ids(candidates, self.n_rows)
        if cand is not None and exclude is not None:
            cand = cand[cand != exclude]
        if cand is not None:
            n_avail = len(cand)
        else:
            n_avail = self.n_rows - (1 if exclude is not None else 0)
        n = min(n, n_avail)
        if n <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        q = np.asarray(query, dtype=np.float32).ravel()

        if self.sparse:
            terms = np.flatnonzero(q)
            scores = np.asarray(self._columns[:, terms] @ q[terms], dtype=np.float32).ravel()
            if cand is not None:
                return _top_n(cand, scores[cand], n)
            if exclude is not None:
                scores[exclude] = -np.inf
            ids, top = _top_n(np.arange(self.n_rows, dtype=np.int64), scores, n)
            return ids, top

        params = None
        if cand is not None:
            # Restrict the flat index to the candidates: still exact, no copy.
            selector = faiss.IDSelectorBatch(cand)
            params = faiss.SearchParameters(sel=selector)
        k = n + (1 if exclude is not None and cand is None else 0)
        scores, ids = self._index.search(q[None, :], k, params=params)
        ids, scores = ids[0], scores[0]
        keep = ids >= 0
        if exclude is not None:
            keep &= ids != exclude
        return ids[keep][:n].astype(np.int64), scores[keep][:n].astype(np.float32)

    def search(
        self,
        query_row: int,
        n: int = 5,
        candidates: np.ndarray | None = None,
        exclude_self: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (row indices int64, cosine scores float32) of the ``n`` rows nearest row ``query_row``.

        ``candidates`` (bool mask of length n_rows, or index array) restricts
        the rows searched; ``exclude_self`` drops the query row. Exact; best
        first.
        """
        return self.search_vector(
            self.row_vector(query_row),
            n=n,
            candidates=candidates,
            exclude=query_row if exclude_self else None,
        )


def shared_terms(*term_lists: Iterable[str | tuple[str, float]]) -> set[str]:
    """Return the set of terms present in every given list (terms or (term, weight) pairs)."""
    sets = [{t[0] if isinstance(t, tuple) else t for t in terms} for terms in term_lists]
    return set.intersection(*sets) if sets else set()


# --------------------------------------------------------------------------- seed terms


def _row_ids(rows: np.ndarray | None, n_rows: int) -> np.ndarray:
    if rows is None:
        return np.arange(n_rows, dtype=np.int64)
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)


def _document_counts(presence: Matrix) -> np.ndarray:
    return np.asarray((presence > 0).sum(axis=0), dtype=np.int64).ravel()


def _rows_column_stats(X: Matrix, row_sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return (sums float64, counts int64), each (len(row_sets) x n_columns): per set of row ids (disjoint sets)
    the column sums of ``X`` over those rows and the number of them where the column is > 0.

    One pass over ``X`` (``_cluster_column_sums``, compiled for sparse rows) with each row's set as its group,
    rather than copying each set's rows out (``X[ids]``) first: at 1,000,000 rows a class's copy of S1 and of the
    term presence allocated hundreds of MB, and a Seed terms page's first lists took 1.2 s against 0.35 s once
    the memory had been touched."""
    n = _n_rows(X)
    member_of = np.full(n, len(row_sets), dtype=np.int64)  # the rows of no set: one more group, dropped
    for group, ids in enumerate(row_sets):
        member_of[ids] = group
    if np.count_nonzero(member_of < len(row_sets)) != sum(len(ids) for ids in row_sets):
        raise ValueError("the row sets overlap or repeat a row")
    sums, counts = _cluster_column_sums(member_of, len(row_sets) + 1, X)
    return sums[:-1], counts[:-1]


def _class_row_sets(presence: Matrix, y: np.ndarray, in_class: np.ndarray,
                    rows: np.ndarray | None) -> list[np.ndarray]:
    # [the class's rows, the other rows] of `presence`, of all its rows or of `rows`, which `y` describes
    ids = np.arange(_n_rows(presence)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(y) != len(ids):
        raise ValueError(f"y has {len(y)} entries but presence has {len(ids)} rows"
                         + (" in `rows`" if rows is not None else ""))
    return [ids[in_class], ids[~in_class]]


def _means(sums: np.ndarray, n_rows: int) -> np.ndarray:
    # a column mean from its sum (zero over no row, as _column_means)
    return sums / n_rows if n_rows else np.zeros_like(sums)


def aggregated_salient_terms(
    R_vocab: Matrix,
    presence: Matrix,
    rows: np.ndarray | None,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
) -> pd.DataFrame:
    """Return the top terms by mean salience over ``rows`` (method.md §4.3a).

    Columns: ``term``, ``token_id``, ``mean_salience`` (column mean of
    ``R_vocab`` over the rows), ``count`` (how many of the rows contain the
    token). Only tokens in at least ``min_count`` rows, not ignored and with
    a positive mean; sorted by mean salience, highest first.
    """
    ids = _row_ids(rows, R_vocab.shape[0])
    means = _means(_rows_column_stats(R_vocab, [ids])[0][0], len(ids))
    counts = _rows_column_stats(presence, [ids])[1][0]
    ok = np.flatnonzero(
        (counts >= min_count) & (means > 0) & ~np.asarray(ignore_mask, dtype=bool)
    )
    order = ok[np.lexsort((ok, -means[ok]))][:top_n]
    return pd.DataFrame(
        {
            "term": [vocab[i] for i in order],
            "token_id": order.astype(np.int64),
            "mean_salience": means[order],
            "count": counts[order],
        }
    )


def pmi_terms(
    presence: Matrix,
    y: np.ndarray,
    target_class: int,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return the top terms by PMI(token; class) over the given rows (method.md §4.3b).

    PMI = log(p(class | token) / p(class)) with document counts: a row counts
    once for a token however often the token occurs in it. Columns: ``term``,
    ``token_id``, ``pmi``, ``count`` (rows containing the token) and
    ``class_count`` (those rows in ``target_class``). Only tokens in at least
    ``min_count`` rows, not ignored, and seen with the class at least once;
    sorted by PMI, then count, highest first. ``rows``: the rows of ``presence`` that ``y`` describes (default
    all; counted in place, not copied out).
    """
    y = np.asarray(y)
    in_class = y == target_class
    split_counts = _rows_column_stats(presence, _class_row_sets(presence, y, in_class, rows))[1]
    class_counts, counts = split_counts[0], split_counts.sum(axis=0)
    ok = np.flatnonzero(
        (counts >= max(min_count, 1)) & (class_counts > 0) & ~np.asarray(ignore_mask, dtype=bool)
    )
    # class_counts > 0 implies the class is non-empty, so p(class) > 0 here.
    p_class = in_class.mean() if len(ok) else 1.0
    pmi = np.log(class_counts[ok] / counts[ok] / p_class)
    order = np.lexsort((ok, -counts[ok], -pmi))[:top_n]
    chosen = ok[order]
    return pd.DataFrame(
        {
            "term": [vocab[i] for i in chosen],
            "token_id": chosen.astype(np.int64),
            "pmi": pmi[order].astype(np.float64),
            "count": counts[chosen],
            "class_count": class_counts[chosen],
        }
    )


SALIENT_RANKINGS: tuple[str, ...] = ("distinctive", "mean")
ASSOCIATION_RANKINGS: tuple[str, ...] = ("log_odds", "pmi")
LOG_ODDS_PRIOR = 1000.0


def distinctive_salient_terms(
    R_vocab: Matrix,
    presence: Matrix,
    rows: np.ndarray | None,
    other_rows: np.ndarray | None,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
) -> pd.DataFrame:
    """Return a class's salient terms ranked by how much more salient they are in the class (the default list).

    ``distinctiveness`` = mean S1 salience over ``rows`` (the class's examples) minus mean S1 salience over
    ``other_rows`` (the other classes' examples): the difference of means of ``distinctive_terms``. Function
    words salient in every class score about 0 and leave the list; the plain mean (method.md §4.3a) is
    ``aggregated_salient_terms``. Columns: ``term``, ``token_id``, ``distinctiveness``, ``mean_salience`` (over
    ``rows``), ``mean_salience_rest`` (over ``other_rows``), ``count`` (how many of ``rows`` contain the term).
    Only terms in at least ``min_count`` of ``rows``, not ignored and with positive distinctiveness; best first,
    equal scores by mean salience, then count, then token id (``_rank_distinctive``, the ranking of
    ``distinctive_terms`` with the support counted as examples containing the term). ``rows``/``other_rows``: index arrays or bool masks; None
    means every row (for ``other_rows``: every row not in ``rows``).
    """
    n = R_vocab.shape[0]
    ids = _row_ids(rows, n)
    if other_rows is None:
        keep = np.ones(n, dtype=bool)
        keep[ids] = False
        others = np.flatnonzero(keep)
    else:
        others = _row_ids(other_rows, n)
    sums = _rows_column_stats(R_vocab, [ids, others])[0]
    mean_in, mean_out = _means(sums[0], len(ids)), _means(sums[1], len(others))
    counts = _rows_column_stats(presence, [ids])[1][0]
    order, score = _rank_distinctive(mean_in, mean_out, counts, ignore_mask, min_count, top_n)
    return pd.DataFrame(
        {
            "term": [vocab[i] for i in order],
            "token_id": order.astype(np.int64),
            "distinctiveness": score,
            "mean_salience": mean_in[order],
            "mean_salience_rest": mean_out[order],
            "count": counts[order],
        }
    )


def class_salient_terms(
    R_vocab: Matrix,
    presence: Matrix,
    rows: np.ndarray | None,
    other_rows: np.ndarray | None,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
    ranking: str = "distinctive",
) -> pd.DataFrame:
    """Return a class's salient-term list, the one the Seed terms and Sensitivity pages share.

    ``ranking="distinctive"`` (default): ``distinctive_salient_terms`` (class mean minus other classes' mean);
    ``"mean"``: ``aggregated_salient_terms`` (the paper's plain mean over the class, method.md §4.3a). Both
    frames have ``term``, ``token_id``, ``mean_salience`` and ``count``; the distinctive one also
    ``distinctiveness`` and ``mean_salience_rest``.
    """
    if ranking == "distinctive":
        return distinctive_salient_terms(R_vocab, presence, rows, other_rows, vocab, ignore_mask,
                                         min_count=min_count, top_n=top_n)
    if ranking == "mean":
        return aggregated_salient_terms(R_vocab, presence, rows, vocab, ignore_mask, min_count=min_count,
                                        top_n=top_n)
    raise ValueError(f"ranking must be one of {SALIENT_RANKINGS}, got {ranking!r}")


def log_odds_terms(
    presence: Matrix,
    y: np.ndarray,
    target_class: int,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
    prior: float = LOG_ODDS_PRIOR,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return the top terms of a class by the weighted log-odds ratio with an informative Dirichlet prior.

    Monroe, Colaresi & Quinn (2008), "Fightin' Words", §3.5: with document counts (a row counts once for a term)
    y_w^i in the target class i and y_w^j in the other rows, totals n^i and n^j over the terms that are not
    ignored, and a prior alpha_w = ``prior`` * y_w / n (the overall term frequencies scaled to ``prior``
    pseudo-counts, alpha_0 = ``prior``),

        delta_w = log((y_w^i + a_w) / (n^i + a_0 - y_w^i - a_w)) - log((y_w^j + a_w) / (n^j + a_0 - y_w^j - a_w))
        var_w   = 1 / (y_w^i + a_w) + 1 / (y_w^j + a_w),      z_w = delta_w / sqrt(var_w).

    Unlike PMI, terms that occur only in the class do not tie: the more often they occur, the larger z. Columns:
    ``term``, ``token_id``, ``z`` (the ranking score), ``delta`` (log-odds ratio), ``count`` (rows containing
    the term), ``class_count`` (those in ``target_class``). Only terms in at least ``min_count`` rows, not
    ignored and seen with the class at least once; sorted by z, then count, then token id. ``rows``: the rows of
    ``presence`` that ``y`` describes (default all; counted in place, not copied out).
    """
    y = np.asarray(y)
    if prior <= 0:
        raise ValueError(f"prior must be positive, got {prior}")
    ignore = np.asarray(ignore_mask, dtype=bool)
    in_class = y == target_class
    split_counts = _rows_column_stats(presence, _class_row_sets(presence, y, in_class, rows))[1]
    class_counts = split_counts[0].astype(np.float64)
    counts = split_counts.sum(axis=0).astype(np.float64)
    counts[ignore] = 0.0
    class_counts[ignore] = 0.0
    rest_counts = counts - class_counts
    n_all = counts.sum()
    n_i, n_j = class_counts.sum(), rest_counts.sum()
    ok = np.flatnonzero((counts >= max(min_count, 1)) & (class_counts > 0) & ~ignore)
    if len(ok) == 0 or n_all == 0:
        return pd.DataFrame({"term": pd.Series(dtype=object), "token_id": pd.Series(dtype=np.int64),
                             "z": pd.Series(dtype=np.float64), "delta": pd.Series(dtype=np.float64),
                             "count": pd.Series(dtype=np.int64), "class_count": pd.Series(dtype=np.int64)})
    a0 = float(prior)
    a = a0 * counts[ok] / n_all
    yi, yj = class_counts[ok], rest_counts[ok]
    delta = (np.log((yi + a) / (n_i + a0 - yi - a)) - np.log((yj + a) / (n_j + a0 - yj - a)))
    z = delta / np.sqrt(1.0 / (yi + a) + 1.0 / (yj + a))
    order = np.lexsort((ok, -counts[ok], -z))[:top_n]
    chosen = ok[order]
    return pd.DataFrame(
        {
            "term": [vocab[i] for i in chosen],
            "token_id": chosen.astype(np.int64),
            "z": z[order].astype(np.float64),
            "delta": delta[order].astype(np.float64),
            "count": counts[chosen].astype(np.int64),
            "class_count": class_counts[chosen].astype(np.int64),
        }
    )


def class_association_terms(
    presence: Matrix,
    y: np.ndarray,
    target_class: int,
    vocab: Sequence[str],
    ignore_mask: np.ndarray,
    min_count: int = 20,
    top_n: int = 20,
    ranking: str = "log_odds",
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return a class's data-side term list: ``log_odds_terms`` (default, ``ranking="log_odds"``) or
    ``pmi_terms`` (``ranking="pmi"``), the one the Seed terms and Sensitivity pages share; ``rows``: the rows of
    ``presence`` that ``y`` describes (default all)."""
    if ranking == "log_odds":
        return log_odds_terms(presence, y, target_class, vocab, ignore_mask, min_count=min_count, top_n=top_n,
                              rows=rows)
    if ranking == "pmi":
        return pmi_terms(presence, y, target_class, vocab, ignore_mask, min_count=min_count, top_n=top_n,
                         rows=rows)
    raise ValueError(f"ranking must be one of {ASSOCIATION_RANKINGS}, got {ranking!r}")


# --------------------------------------------------------------------------- export

# OWASP CSV injection: cells starting with these are read as formulas by spreadsheets.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _escape_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def formula_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` whose text cells and index labels that a spreadsheet would read as a formula
    (starting with =, +, -, @, tab or carriage return) are prefixed by "'"; other cells are left as they are."""
    out = df.copy(deep=False)
    for i in range(out.shape[1]):
        column = out.iloc[:, i]
        if column.dtype == object or isinstance(column.dtype, pd.StringDtype):
            out.isetitem(i, column.map(_escape_cell))
    if out.index.dtype == object or isinstance(out.index.dtype, pd.StringDtype):
        out.index = out.index.map(_escape_cell)
    return out


def to_csv_safe(df: pd.DataFrame) -> str:
    """Return ``df`` as CSV text (no index), with formula-like string cells and headers prefixed by "'"."""
    safe = formula_safe(df)
    safe.columns = [_escape_cell(str(c)) for c in df.columns]
    buffer = io.StringIO()
    # RFC 4180 line ends: the csv writer then also quotes cells holding a lone "\r".
    safe.to_csv(buffer, index=False, lineterminator="\r\n")
    return buffer.getvalue()


def to_json(df: pd.DataFrame) -> str:
    """Return ``df`` as a JSON array of row objects (UTF-8 text, not ASCII-escaped)."""
    return df.to_json(orient="records", force_ascii=False)


def to_text(terms: Iterable[str | tuple[str, float]]) -> str:
    """Return the terms one per line (the term of each (term, weight) pair), newline-terminated."""
    lines = [t[0] if isinstance(t, tuple) else str(t) for t in terms]
    return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------- metrics


def split_label_counts(splits: pd.Series, labels: np.ndarray) -> pd.DataFrame:
    """Return the number of examples per split (rows, sorted by name; index named "split") and true label id
    (columns, the ids present, ascending; named "label"), as ``groupby(["split", "label"]).size().unstack(0)``
    gives it; rows without a split are left out. One bincount over codes: the groupby took 0.1-0.3 s at
    1,000,000 rows, on the first open of a run."""
    codes, names = pd.factorize(splits, sort=True)
    labels = np.asarray(labels, dtype=np.int64)
    kept = codes >= 0
    codes, labels = codes[kept], labels[kept]
    present = np.bincount(labels) > 0 if len(labels) else np.zeros(0, dtype=bool)
    position = np.cumsum(present) - 1
    n_labels = int(present.sum())
    counts = np.bincount(codes * n_labels + position[labels], minlength=len(names) * n_labels)
    return pd.DataFrame(counts.reshape(len(names), n_labels),
                        index=pd.Index(np.asarray(names, dtype=object), name="split"),
                        columns=pd.Index(np.flatnonzero(present), name="label"))


def confusion(examples: pd.DataFrame, n_classes: int) -> np.ndarray:
    """Return the (n_classes, n_classes) int64 confusion matrix: rows true label, columns prediction.

    Pairs with a label or prediction outside [0, n_classes) are not counted. Counted with numpy rather than
    scikit-learn so the Summary page, the first a new server draws, does not pay sklearn's 1.3 s import.
    """
    labels = examples["label"].to_numpy(dtype=np.int64)
    preds = examples["pred"].to_numpy(dtype=np.int64)
    valid = (labels >= 0) & (labels < n_classes) & (preds >= 0) & (preds < n_classes)
    counts = np.bincount(labels[valid] * n_classes + preds[valid], minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)

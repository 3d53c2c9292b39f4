"""LAFA: Locally Aggregated Feature Attribution (Zhang et al., 2022), derived from a run's stored saliency.

LAFA smooths an example's token attributions with those of *similar examples* instead of a reference token:

    lafa_i(x) = s_i(x) + lambda * 1/|N(x)| * sum_{y in N(x)} sum_{j in y} kappa(e_{t_i}, e_{t_j}) * s_j(y)

with s the base method's per-token scores (default Grad-L2), t_i the token id at position i, e_t the model's input
embedding of token t (the run's `embedding_matrix.npy`), N(x) the neighbours of x and kappa a token kernel.

Neighbours N(x): the `k` (10) nearest examples to x in the classifier's last-layer [CLS] encoding (`cls.npy`), by
cosine distance (1 - cosine similarity of the L2-normalised rows), among the examples with the same predicted class
(`same_class`), found exactly with faiss (IndexFlatIP per class). A neighbour is kept only when its distance is at
most the `quantile` (10%) quantile of the distances between random pairs of the run's examples (`pair_sample`
seeded pairs), so an isolated example borrows from nobody (its LAFA is its base score: 23% of the demo run's
examples; 7.4 neighbours per example on average, bench/results/faithfulness.md section 5). Neighbours are
weighted uniformly.

Token kernel kappa: thresholded cosine similarity of the input embeddings, kappa(u, v) = cos(e_u, e_v) when it is at
least `kernel_threshold` (0.6), else 0, and kappa(t, t) = 1. A token thus receives the scores of the same token and of
its close variants in the neighbours ("movie" <- "movie" 1.0, "movies" .81, "film" .71; "funny" <- "hilarious" .68).
Why not a Gaussian kernel exp(-||e_u - e_v||^2 / h) with h the median squared distance: input embeddings are nearly
equidistant, so that kernel is almost flat (0.26 to 0.54 over 98% of random token pairs of the demo's MiniLM) and
would add the same mass to every token; the threshold 0.6 keeps 1.5 kernel partners per vocabulary item on average
and leaves antonyms out ("good"/"bad" have cosine .52).

Computation, vectorised and exact: the kernel depends on token ids only, so it is a sparse vocabulary x vocabulary
matrix K over the ids that occur in the run (one faiss range search). With V the (examples x vocab) matrix of summed
base scores per token id, P = V K holds, for every example y and id t, sum_j kappa(t, t_j) s_j(y); with W the
row-normalised (examples x examples) neighbour matrix, (W P)[x, t_i] is the aggregated term. It is gathered in blocks
of rows, so memory stays at O(tokens x kernel degree). Measured on 102,360 examples (the demo run tiled 12 times,
2.9M tokens; a 2-core CPU shared with other jobs): neighbour search 241 s (exact, so quadratic in the examples of a
class: the dominant cost), kernel 4 s, aggregation 1 s, peak RSS 0.76 GB. The demo run (8,530 examples) takes 10 s.

In the product LAFA is a *derived* method (`lafa`, registered in core.saliency with base `grad_l2`): no backward
pass, it is computed from the run's stored arrays on first use (`Run.scores("lafa")`, or the precompute CLI with
`--method grad_l2,lafa`) and kept in the run as `derived/lafa.npy` with `derived/lafa.json` (parameters, version,
a fingerprint of the inputs, neighbour statistics). The derived folder is outside the run's integrity check: a
missing, damaged or stale file (other parameters, version or inputs) is rebuilt, never fatal.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

LAFA_VERSION = 1
NAME = "lafa"


@dataclass(frozen=True)
class LafaParams:
    """Every setting of LAFA (all of them enter the derived file's fingerprint)."""

    base: str = "grad_l2"          # the stored method whose scores are aggregated
    k: int = 10                    # neighbours per example
    quantile: float = 0.1          # distance cut-off: this quantile of random-pair [CLS] cosine distances
    same_class: bool = True        # neighbours only among examples with the same predicted class
    kernel_threshold: float = 0.6  # token kernel: cosine of input embeddings, zero below this
    lam: float = 1.0               # weight of the aggregated term
    pair_sample: int = 200_000     # random pairs for the distance quantile
    seed: int = 0                  # seeds the pair sample

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"LAFA k must be an integer >= 1, got {self.k!r}")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"LAFA quantile must be in (0, 1], got {self.quantile!r}")
        if not -1 <= self.kernel_threshold <= 1:
            raise ValueError(f"LAFA kernel_threshold must be a cosine in [-1, 1], got {self.kernel_threshold!r}")
        if self.pair_sample < 1:
            raise ValueError(f"LAFA pair_sample must be >= 1, got {self.pair_sample!r}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "version": LAFA_VERSION}


DEFAULT_PARAMS = LafaParams()


@dataclass(frozen=True)
class NeighbourGraph:
    """Each example's kept neighbours (n x k, -1 = none), their cosine distances, and the distance cut-off."""

    neighbours: np.ndarray
    distances: np.ndarray
    cutoff: float

    def counts(self) -> np.ndarray:
        return (self.neighbours >= 0).sum(axis=1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pair_distance_quantile(unit: np.ndarray, quantile: float, pairs: int = 200_000, seed: int = 0,
                           chunk: int = 20_000) -> float:
    """Return the `quantile` of cosine distances between `pairs` seeded random pairs of distinct rows of `unit`
    (rows already L2-normalised); every pair when there are fewer than `pairs`. inf with fewer than two rows."""
    n = len(unit)
    if n < 2:
        return float("inf")
    if n * (n - 1) // 2 <= pairs:
        a, b = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, pairs)
        b = rng.integers(0, n - 1, pairs)
        b = b + (b >= a)  # distinct from a
    d = np.empty(len(a), dtype=np.float32)
    for lo in range(0, len(a), chunk):
        d[lo:lo + chunk] = 1.0 - np.einsum("ij,ij->i", unit[a[lo:lo + chunk]], unit[b[lo:lo + chunk]])
    return float(np.quantile(d, quantile))


def neighbour_graph(cls: np.ndarray, preds: np.ndarray | None, params: LafaParams = DEFAULT_PARAMS) -> NeighbourGraph:
    """Return the `params.k` nearest examples of every example by cosine distance of their [CLS] encodings (same
    predicted class when `params.same_class`), without the example itself, dropping those farther than the
    `params.quantile` quantile of random-pair distances. Exact search with faiss (inner product on unit rows)."""
    import faiss

    unit = _unit_rows(cls)
    n, k = len(unit), params.k
    cutoff = pair_distance_quantile(unit, params.quantile, params.pair_sample, params.seed)
    neighbours = np.full((n, k), -1, dtype=np.int64)
    distances = np.full((n, k), np.inf, dtype=np.float32)
    if n == 0:
        return NeighbourGraph(neighbours, distances, cutoff)
    groups = ([np.flatnonzero(preds == c) for c in np.unique(preds)] if params.same_class and preds is not None
              else [np.arange(n)])
    for members in groups:
        if len(members) < 2:
            continue
        index = faiss.IndexFlatIP(unit.shape[1])
        index.add(unit[members])
        sims, local = index.search(unit[members], min(k + 1, len(members)))
        found = np.where(local >= 0, members[np.maximum(local, 0)], -1)
        dist = 1.0 - sims
        # drop the example itself (wherever a duplicate put it), the missing slots and those beyond the cut-off
        valid = (found >= 0) & (found != members[:, None]) & (dist <= cutoff)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # kept ones first, nearest first
        take = np.take_along_axis(valid, order, axis=1)
        width = order.shape[1]
        neighbours[members, :width] = np.where(take, np.take_along_axis(found, order, axis=1), -1)
        distances[members, :width] = np.where(take, np.take_along_axis(dist, order, axis=1), np.inf)
    return NeighbourGraph(neighbours, distances, cutoff)


def token_kernel(embedding_matrix: np.ndarray, token_ids: np.ndarray, threshold: float) -> sp.csr_matrix:
    """Return the sparse symmetric (vocab x vocab) kernel over the ids present in `token_ids`: the cosine of their
    input embeddings where it is at least `threshold` (faiss range search), and 1 on the diagonal."""
    import faiss

    vocab = len(embedding_matrix)
    ids = np.unique(np.asarray(token_ids, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < vocab)]
    if len(ids) == 0:
        return sp.csr_matrix((vocab, vocab), dtype=np.float64)
    unit = _unit_rows(np.asarray(embedding_matrix)[ids])
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    # range_search keeps inner products strictly above the radius: nudge it so `>= threshold` holds
    lims, sims, local = index.range_search(unit, float(np.nextafter(np.float32(threshold), np.float32(-2))))
    rows = np.repeat(np.arange(len(ids)), np.diff(lims.astype(np.int64)))
    off = rows != local
    rows, cols, vals = ids[rows[off]], ids[local[off]], sims[off].astype(np.float64)
    rows = np.concatenate([rows, ids])
    cols = np.concatenate([cols, ids])
    vals = np.concatenate([np.clip(vals, None, 1.0), np.ones(len(ids))])
    return sp.csr_matrix((vals, (rows, cols)), shape=(vocab, vocab))


def aggregate(token_ids: np.ndarray, row_ptr: np.ndarray, scores: np.ndarray, neighbours: np.ndarray,
              kernel: sp.csr_matrix, lam: float = 1.0, rows: Sequence[int] | None = None,
              block: int = 4096) -> np.ndarray:
    """Return base + lam * aggregated neighbour scores, per token, for `rows` (all rows when None), concatenated in
    the order of `rows`.

    `scores` is aligned with `token_ids` (only the rows and their neighbours need meaningful values);
    `neighbours` is (n x k) with -1 for none; `kernel` a (vocab x vocab) sparse token kernel.
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n, vocab = len(row_ptr) - 1, kernel.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    lengths = np.diff(row_ptr)
    starts = row_ptr[rows]
    out_len = lengths[rows]
    out_ptr = np.concatenate([[0], np.cumsum(out_len)])
    positions = np.repeat(starts - out_ptr[:-1], out_len) + np.arange(out_ptr[-1])  # token positions of `rows`
    out = scores[positions].copy()
    if lam == 0 or out_ptr[-1] == 0:
        return out.astype(np.float32)
    # only the neighbours' rows of V P are needed
    sources = np.unique(neighbours[rows][neighbours[rows] >= 0])
    if len(sources) == 0:
        return out.astype(np.float32)
    src_len = lengths[sources]
    src_pos = np.repeat(row_ptr[sources] - np.concatenate([[0], np.cumsum(src_len)[:-1]]), src_len) \
        + np.arange(src_len.sum())
    V = sp.csr_matrix((scores[src_pos], (np.repeat(np.arange(len(sources)), src_len), token_ids[src_pos])),
                      shape=(len(sources), vocab))  # duplicates are summed
    P = (V @ kernel).tocsr()  # P[y, t] = sum_j kappa(t, t_j) s_j(y)  (kernel symmetric)
    for lo in range(0, len(rows), block):
        blk = rows[lo:lo + block]
        nb = neighbours[blk]
        valid = nb >= 0
        count = valid.sum(axis=1)
        if not count.any():
            continue
        r, c = np.nonzero(valid)
        W = sp.csr_matrix((1.0 / count[r], (r, np.searchsorted(sources, nb[r, c]))), shape=(len(blk), len(sources)))
        Q = (W @ P).tocsr()
        a, b = out_ptr[lo], out_ptr[min(lo + block, len(rows))]
        local = np.repeat(np.arange(len(blk)), out_len[lo:lo + block])
        gathered = np.asarray(Q[local, token_ids[positions[a:b]]]).ravel() if b > a else np.zeros(0)
        out[a:b] += lam * gathered
    return out.astype(np.float32)


@dataclass
class LafaResult:
    """LAFA scores (aligned with the run's tokens) and what was found on the way."""

    scores: np.ndarray
    graph: NeighbourGraph
    kernel_nnz: int
    stats: dict[str, Any]


def lafa_scores(token_ids: np.ndarray, row_ptr: np.ndarray, base_scores: np.ndarray, cls: np.ndarray,
                preds: np.ndarray | None, embedding_matrix: np.ndarray,
                params: LafaParams = DEFAULT_PARAMS) -> LafaResult:
    """Return LAFA scores for every token of a run from its stored arrays (see the module docstring)."""
    graph = neighbour_graph(cls, preds, params)
    kernel = token_kernel(embedding_matrix, token_ids, params.kernel_threshold)
    scores = aggregate(token_ids, row_ptr, base_scores, graph.neighbours, kernel, params.lam)
    counts = graph.counts()
    n_ids = len(np.unique(np.asarray(token_ids)))
    stats = {"distance_cutoff": graph.cutoff, "mean_neighbours": float(counts.mean()) if len(counts) else 0.0,
             "examples_without_neighbours": int((counts == 0).sum()),
             "kernel_partners_per_token_id": float(kernel.nnz / max(n_ids, 1))}
    return LafaResult(scores, graph, int(kernel.nnz), stats)


def inputs_fingerprint(params: LafaParams, file_digests: dict[str, str]) -> str:
    """Return the sha256 naming a derived LAFA file: its parameters, version and the digests of the files it reads."""
    payload = {"params": params.as_dict(), "files": file_digests}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# The derived methods a run can hold, with the parameters the product uses for each (core.store reads this).
DERIVED_METHODS: dict[str, LafaParams] = {NAME: DEFAULT_PARAMS}
# The run files a derived LAFA file is computed from (besides the base method's saliency file).
INPUT_FILES = ("tokens/token_ids.npy", "tokens/row_ptr.npy", "cls.npy", "embedding_matrix.npy", "examples.parquet")


def input_files(params: LafaParams) -> tuple[str, ...]:
    """Return the run-relative paths of the files LAFA with `params` reads."""
    return (f"saliency/{params.base}.npy", *INPUT_FILES)


def lafa_for_run(run, params: LafaParams = DEFAULT_PARAMS) -> LafaResult:
    """Return LAFA over every token of `run` (a core.store.Run, or anything with its arrays) from its stored base
    scores, [CLS] encodings, predictions and embedding matrix."""
    return lafa_scores(run.token_ids, run.row_ptr, run.scores(params.base), run.cls(), run.predictions(),
                       run.embedding_matrix(), params)

"""Compiled loops (numba) for per-interaction work over a million rows, where numpy needs several passes and
temporary arrays as large as the non-zeros.

numba compiles each function once per argument types and keeps the machine code on disk (`cache=True`, beside this
file in `__pycache__`, or numba's user-wide folder when that is read-only), so a later process loads it in
milliseconds. `warm_up` compiles or loads them for the types the dashboard passes; the server's background warm-up
calls it before a page needs them.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numba
import numpy as np

T = TypeVar("T")


@numba.njit(cache=True, nogil=True)
def _csr_cluster_column_sums(member_of, indptr, indices, data, sums_t, supports_t):
    # column-major accumulators (column, cluster): a frequent column's k sums share a cache line or two, where the
    # (cluster, column) layout spread them over k lines (20 clusters of 1,000,000 rows: 0.13 s against 0.20 s)
    for row in range(len(indptr) - 1):
        cluster = member_of[row]
        for entry in range(indptr[row], indptr[row + 1]):
            value = data[entry]
            column = indices[entry]
            sums_t[column, cluster] += value
            if value > 0:
                supports_t[column, cluster] += 1
    return 0


def csr_cluster_column_sums(member_of: np.ndarray, n_clusters: int, indptr: np.ndarray, indices: np.ndarray,
                            data: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (sums float64, supports int64), each (n_clusters x n_columns): per cluster (`member_of[row]`, in
    [0, n_clusters)) the column sums of the CSR matrix (indptr, indices, data) and the number of its rows whose
    entry in the column is > 0. One pass over the non-zeros, summed in row order; above PARALLEL_MIN_ENTRIES
    non-zeros the rows are split between the cores (1,000,000 word-level S1 rows, 20 clusters: 0.12-0.25 s on one
    core of this 2-core machine)."""
    member_of = np.ascontiguousarray(member_of, dtype=np.int64)
    if len(member_of) != len(indptr) - 1:
        raise ValueError(f"member_of has {len(member_of)} rows, the matrix {len(indptr) - 1}")
    if len(member_of) and (member_of.min() < 0 or member_of.max() >= n_clusters):
        raise ValueError(f"cluster positions must lie in [0, {n_clusters})")
    bounds = _row_blocks(indptr)
    sums_t = [np.zeros((n_columns, n_clusters), dtype=np.float64) for _ in bounds[1:]]
    supports_t = [np.zeros((n_columns, n_clusters), dtype=np.int64) for _ in bounds[1:]]
    # each block of rows sums into its own arrays, added up in block order (the same result on every run)
    _each_block(bounds, lambda block, lo, hi: _csr_cluster_column_sums(
        member_of[lo:hi], indptr[lo:hi + 1], indices, data, sums_t[block], supports_t[block]))
    for block_sums, block_supports in zip(sums_t[1:], supports_t[1:]):
        sums_t[0] += block_sums
        supports_t[0] += block_supports
    return np.ascontiguousarray(sums_t[0].T), np.ascontiguousarray(supports_t[0].T)


@numba.njit(cache=True, nogil=True)
def _nearest(row, indptr, indices, data, centres_t, half_norms, scores):
    # the centre c maximising x.c - |c|^2 / 2 for one CSR row (ties to the lower index); `scores` is scratch
    n_centres = centres_t.shape[1]
    scores[:] = 0
    for entry in range(indptr[row], indptr[row + 1]):
        value = data[entry]
        centre_values = centres_t[indices[entry]]
        for c in range(n_centres):
            scores[c] += value * centre_values[c]
    best = 0
    best_score = scores[0] - half_norms[0]
    for c in range(1, n_centres):
        score = scores[c] - half_norms[c]
        if score > best_score:
            best, best_score = c, score
    return best


@numba.njit(cache=True, nogil=True)
def _csr_nearest_centre(indptr, indices, data, centres_t, half_norms, out):
    scores = np.empty(centres_t.shape[1], dtype=centres_t.dtype)
    for row in range(len(indptr) - 1):
        out[row] = _nearest(row, indptr, indices, data, centres_t, half_norms, scores)
    return 0


def csr_nearest_centre(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return the index (int64) of the nearest centre (euclidean) of each row of the CSR matrix (indptr, indices,
    data): the argmax of x.c - |c|^2 / 2 over the rows of `centres` (k x n_columns), ties to the lower index, in
    the precision of `centres` (float32 as scipy's product of float32 arrays). Above PARALLEL_MIN_ENTRIES
    non-zeros the rows are split between the machine's cores (each row's result does not depend on the split)."""
    centres = np.asarray(centres)
    half_norms = (0.5 * (centres * centres).sum(axis=1)).astype(centres.dtype)  # summed as numpy sums rows
    centres_t = np.ascontiguousarray(centres.T)
    out = np.empty(len(indptr) - 1, dtype=np.int64)
    # the kernel releases the GIL (nogil): plain threads share the work, with no thread pool spinning afterwards
    # (an OpenMP pool busy-waits, which stalls a browser drawing on the same cores: ui.leave_a_core_for_the_browser)
    _each_block(_row_blocks(indptr), lambda block, lo, hi: _csr_nearest_centre(
        indptr[lo:hi + 1], indices, data, centres_t, half_norms, out[lo:hi]))
    return out


PARALLEL_MIN_ENTRIES = 2_000_000  # below this many non-zeros a split costs more than it saves
_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="kernels"))
        return _POOL[0]


def _each_block(bounds: np.ndarray, work: Callable[[int, int, int], T]) -> list[T]:
    """Return [work(block, lo, hi) for each block of rows [lo, hi) between `bounds`], in block order: on this thread
    for one block, else the blocks at once on the kernels' threads (the kernels release the GIL)."""
    blocks = list(enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())))
    if len(blocks) == 1:
        return [work(0, *blocks[0][1])]
    futures = [_pool().submit(work, block, lo, hi) for block, (lo, hi) in blocks]
    return [future.result() for future in futures]


def _row_blocks(indptr: np.ndarray, min_entries: int | None = None) -> np.ndarray:
    """Return row boundaries (0, ..., n_rows) that split the non-zeros about evenly between the cores: one block
    below `min_entries` (default PARALLEL_MIN_ENTRIES) non-zeros or on one core."""
    n_rows = len(indptr) - 1
    min_entries = PARALLEL_MIN_ENTRIES if min_entries is None else min_entries
    parts = min(os.cpu_count() or 1, max(1, int(indptr[-1]) // min_entries)) if n_rows else 1
    if parts <= 1:
        return np.array([0, n_rows])
    cuts = np.searchsorted(indptr, np.arange(1, parts) * (int(indptr[-1]) / parts))
    return np.unique(np.concatenate([[0], np.clip(cuts, 0, n_rows), [n_rows]]))


@numba.njit(cache=True, nogil=True)
def _csr_presence(row_ptr, ids, indptr, indices):
    filled = 0
    for row in range(len(row_ptr) - 1):
        start, stop = row_ptr[row], row_ptr[row + 1]
        if stop > start:
            # the row's ids are copied to the free end of `indices`, sorted there in place, then compacted
            segment = indices[filled:filled + stop - start]
            segment[:] = ids[start:stop]
            if stop - start <= 32:  # insertion sort: numba's sort costs more than the sorting on a short row
                for position in range(1, stop - start):
                    value = segment[position]
                    before = position - 1
                    while before >= 0 and segment[before] > value:
                        segment[before + 1] = segment[before]
                        before -= 1
                    segment[before + 1] = value
            else:
                segment.sort()
            kept = 1
            for position in range(1, stop - start):
                if segment[position] != segment[kept - 1]:
                    segment[kept] = segment[position]
                    kept += 1
            filled += kept
        indptr[row + 1] = filled
    return filled


def csr_presence(row_ptr: np.ndarray, ids: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indptr, indices) of the binary CSR matrix with a 1 where id occurs in row: `ids[row_ptr[r]:row_ptr[r
    + 1]]` are row r's ids (any order, repeats allowed; each in [0, n_columns)). Indices are sorted within each row
    and unique; int32 where they fit, as scipy makes them."""
    ids = np.asarray(ids)
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_columns):
        raise ValueError(f"ids must lie in [0, {n_columns})")
    if len(row_ptr) == 0 or row_ptr[0] != 0 or row_ptr[-1] != len(ids) or (np.diff(row_ptr) < 0).any():
        raise ValueError("row_ptr must rise from 0 to the number of ids")
    index_type = np.int32 if max(len(ids), n_columns) < 2**31 else np.int64
    indptr = np.zeros(len(row_ptr), dtype=index_type)
    indices = np.empty(len(ids), dtype=index_type)
    filled = _csr_presence(row_ptr, ids.astype(index_type, copy=False), indptr, indices)
    return indptr, indices[:filled].copy()


@numba.njit(cache=True, nogil=True)
def _csr_lloyd_pass(indptr, indices, data, centres_t, half_norms, labels, sums_t, counts):
    # one k-means pass: each row to its nearest centre (as _csr_nearest_centre), then into that centre's sums
    scores = np.empty(centres_t.shape[1], dtype=centres_t.dtype)
    changed = 0
    for row in range(len(indptr) - 1):
        best = _nearest(row, indptr, indices, data, centres_t, half_norms, scores)
        if labels[row] != best:
            labels[row] = best
            changed += 1
        counts[best] += 1
        for entry in range(indptr[row], indptr[row + 1]):
            sums_t[indices[entry], best] += data[entry]
    return changed


@numba.njit(cache=True, nogil=True)
def _csr_kmeans_plusplus(indptr, indices, data, squared_norms, n_columns, first, trial_draws):
    # greedy k-means++ (scikit-learn's _kmeans_plusplus): each new centre is the best of the trials drawn in
    # proportion to the squared distance to the nearest centre so far; a candidate row is made dense once and
    # dotted with every row (the rows are the candidates: no n x n distances)
    n_rows = len(indptr) - 1
    n_centres = trial_draws.shape[0] + 1
    chosen = np.empty(n_centres, dtype=np.int64)
    dense = np.zeros(n_columns, dtype=np.float64)

    def distances_to(candidate, out):
        for entry in range(indptr[candidate], indptr[candidate + 1]):
            dense[indices[entry]] = data[entry]
        for row in range(n_rows):
            dot = 0.0
            for entry in range(indptr[row], indptr[row + 1]):
                dot += data[entry] * dense[indices[entry]]
            out[row] = max(squared_norms[row] + squared_norms[candidate] - 2.0 * dot, 0.0)
        for entry in range(indptr[candidate], indptr[candidate + 1]):
            dense[indices[entry]] = 0.0

    closest = np.empty(n_rows, dtype=np.float64)
    chosen[0] = first
    distances_to(first, closest)
    trial = np.empty(n_rows, dtype=np.float64)
    best_distances = np.empty(n_rows, dtype=np.float64)
    for c in range(1, n_centres):
        cumulative = np.cumsum(closest)
        potential = cumulative[-1]
        best_potential = np.inf
        best_candidate = 0
        for t in range(trial_draws.shape[1]):
            candidate = min(np.searchsorted(cumulative, trial_draws[c - 1, t] * potential), n_rows - 1)
            distances_to(candidate, trial)
            total = 0.0
            for row in range(n_rows):
                if closest[row] < trial[row]:
                    trial[row] = closest[row]
                total += trial[row]
            if total < best_potential:
                best_potential, best_candidate = total, candidate
                best_distances[:] = trial
        chosen[c] = best_candidate
        closest[:] = best_distances
    return chosen


def csr_kmeans_plusplus(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_columns: int,
                        n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Return the row numbers (int64) of `n_clusters` k-means++ seeds among the rows of the CSR matrix (indptr,
    indices, data), chosen greedily as scikit-learn does (2 + log(k) draws per centre, the one that lowers the summed
    squared distance most kept), drawn from `rng`."""
    n_rows = len(indptr) - 1
    if not 1 <= n_clusters <= n_rows:
        raise ValueError(f"cannot seed {n_clusters} centres among {n_rows} rows")
    row_of_entry = np.repeat(np.arange(n_rows), np.diff(indptr))
    squared_norms = np.bincount(row_of_entry, weights=np.asarray(data, dtype=np.float64) ** 2, minlength=n_rows)
    first = int(rng.integers(n_rows))
    trial_draws = rng.random((n_clusters - 1, 2 + int(np.log(n_clusters))))
    return _csr_kmeans_plusplus(indptr, indices, data, squared_norms, n_columns, first, trial_draws)


@numba.njit(cache=True, nogil=True)
def _move_centres(sums_t, counts, centres_t, half_norms):
    # each centre with rows to their mean (float32, as the rows), its half squared norm; the sums are zeroed for the
    # next pass. A centre without rows stays where it was.
    n_columns, n_centres = sums_t.shape
    half_norms[:] = 0
    for column in range(n_columns):
        for c in range(n_centres):
            if counts[c] > 0:
                centres_t[column, c] = sums_t[column, c] / counts[c]
            sums_t[column, c] = 0.0
            value = centres_t[column, c]
            half_norms[c] += 0.5 * value * value
    counts[:] = 0
    return 0


# A k-means pass does k multiply-adds per non-zero and then moves the centres: it pays to split from fewer
# non-zeros than a single assignment does (a 50,000-row sample of S1 holds about 1,000,000).
LLOYD_PARALLEL_MIN_ENTRIES = 400_000


def csr_lloyd(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, centres: np.ndarray, max_iter: int,
              tolerance_rows: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (labels int64, centres float32 (k x n_columns), passes) of Lloyd's k-means on the CSR matrix (indptr,
    indices, data) from the starting `centres`: each pass assigns every row to its nearest centre (euclidean, ties to
    the lower index) and moves each centre to the mean of its rows (a centre left without rows stays). Stops after
    a pass that moved at most `tolerance_rows` rows to another centre, or after `max_iter` passes. The labels are
    those of the last pass and the centres their means. Above LLOYD_PARALLEL_MIN_ENTRIES non-zeros each pass splits
    the rows between the cores, each summing into its own arrays (the result does not depend on the split)."""
    centres_t = np.ascontiguousarray(np.asarray(centres, dtype=np.float32).T)
    n_columns, n_clusters = centres_t.shape
    half_norms = 0.5 * np.einsum("ij,ij->j", centres_t, centres_t, dtype=np.float32)
    labels = np.full(len(indptr) - 1, -1, dtype=np.int64)
    bounds = _row_blocks(indptr, LLOYD_PARALLEL_MIN_ENTRIES)
    sums = [np.zeros((n_columns, n_clusters), dtype=np.float64) for _ in bounds[1:]]
    counts = [np.zeros(n_clusters, dtype=np.int64) for _ in bounds[1:]]
    passes = 0
    while passes < max_iter:
        passes += 1
        changed = sum(_each_block(bounds, lambda block, lo, hi: _csr_lloyd_pass(
            indptr[lo:hi + 1], indices, data, centres_t, half_norms, labels[lo:hi], sums[block], counts[block])))
        for block_sums, block_counts in zip(sums[1:], counts[1:]):
            sums[0] += block_sums  # summed in block order: the same floating-point result on every run
            counts[0] += block_counts
            block_sums[:] = 0
            block_counts[:] = 0
        _move_centres(sums[0], counts[0], centres_t, half_norms)
        if changed <= tolerance_rows:
            break
    return labels, np.ascontiguousarray(centres_t.T), passes


@numba.njit(cache=True, nogil=True)
def _order_largest_first(values, n, order):
    # order[:n] = the positions of values[:n], largest value first, ties in position order: an insertion sort for
    # a short example (most have a few dozen tokens), where numba's mergesort allocates on every call
    if n > 64:
        order[:n] = np.argsort(-values[:n], kind="mergesort")
        return
    for j in range(n):
        value = values[j]
        at = j
        while at > 0 and values[order[at - 1]] < value:
            order[at] = order[at - 1]
            at -= 1
        order[at] = j


@numba.njit(cache=True, nogil=True)
def _average_ranks_of(values, n, order, ranks):
    # each of values[:n]'s 0-based rank, ascending (ties share their average rank), from order[:n] sorting them
    # largest first (the top-k's order: positions first..last from the top are ranks n-1-last..n-1-first, exactly
    # in floating point); returns the number of distinct values
    distinct = 0
    first = 0
    while first < n:
        last = first
        while last + 1 < n and values[order[last + 1]] == values[order[first]]:
            last += 1
        for j in range(first, last + 1):
            ranks[order[j]] = (n - 1) - (first + last) / 2.0
        distinct += 1
        first = last + 1
    return distinct


@numba.njit(cache=True, nogil=True)
def _map_agreement(row_ptr, ids, keep, scores_a, scores_b, top_fraction, tokens, top_k, jaccard, spearman):
    longest = 0
    for i in range(len(ids)):
        longest = max(longest, row_ptr[ids[i] + 1] - row_ptr[ids[i]])
    a = np.empty(longest, dtype=np.float64)
    b = np.empty(longest, dtype=np.float64)
    rank_a = np.empty(longest, dtype=np.float64)
    rank_b = np.empty(longest, dtype=np.float64)
    in_top_a = np.zeros(longest, dtype=np.bool_)
    order_a = np.empty(longest, dtype=np.int64)
    order_b = np.empty(longest, dtype=np.int64)
    for i in range(len(ids)):
        n = 0
        for position in range(row_ptr[ids[i]], row_ptr[ids[i] + 1]):
            if keep[position]:
                a[n] = abs(np.float64(scores_a[position]))
                b[n] = abs(np.float64(scores_b[position]))
                n += 1
        tokens[i] = n
        if n == 0:
            top_k[i] = 0
            jaccard[i] = np.nan
            spearman[i] = np.nan
            continue
        k = max(1, int(np.ceil(top_fraction * n - 1e-9)))
        top_k[i] = k
        # the k largest of each map, ties to the earlier token: a stable sort, largest first
        _order_largest_first(a, n, order_a)
        _order_largest_first(b, n, order_b)
        in_top_a[:n] = False
        for j in range(k):
            in_top_a[order_a[j]] = True
        both = 0
        for j in range(k):
            if in_top_a[order_b[j]]:
                both += 1
        jaccard[i] = both / (2.0 * k - both)
        if n < 2:
            spearman[i] = np.nan
            continue
        distinct_a = _average_ranks_of(a, n, order_a, rank_a)
        distinct_b = _average_ranks_of(b, n, order_b, rank_b)
        if distinct_a <= 1 or distinct_b <= 1:
            spearman[i] = 1.0 if distinct_a <= 1 and distinct_b <= 1 else np.nan
            continue
        # Pearson's correlation of the ranks, summed in token order
        sum_a = sum_b = sum_ab = sum_aa = sum_bb = 0.0
        for j in range(n):
            sum_a += rank_a[j]
            sum_b += rank_b[j]
            sum_ab += rank_a[j] * rank_b[j]
            sum_aa += rank_a[j] * rank_a[j]
            sum_bb += rank_b[j] * rank_b[j]
        cov = sum_ab - sum_a * sum_b / n
        var_a = sum_aa - sum_a * sum_a / n
        var_b = sum_bb - sum_b * sum_b / n
        spearman[i] = min(1.0, max(-1.0, cov / np.sqrt(var_a * var_b)))
    return 0


def map_agreement(row_ptr: np.ndarray, ids: np.ndarray, keep: np.ndarray, scores_a: np.ndarray,
                  scores_b: np.ndarray, top_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (tokens int64, top_k int64, jaccard float64, spearman float64), one value per example of `ids`: the
    computation of core.compare.map_agreement (which documents it) in one compiled pass over each example's kept
    tokens (`keep`, a bool per token), the examples split between the cores by token count (1,000,000 demo-like
    examples: 0.7 s on 2 cores, where numpy's sorts over every token took 35 s)."""
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    scores_a, scores_b = (s if s.dtype in (np.float32, np.float64) else s.astype(np.float64)
                          for s in (np.asarray(scores_a), np.asarray(scores_b)))
    m = len(ids)
    tokens, top_k = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    jaccard, spearman = np.empty(m, dtype=np.float64), np.empty(m, dtype=np.float64)
    lengths = row_ptr[ids + 1] - row_ptr[ids]
    bounds = _row_blocks(np.concatenate([[0], np.cumsum(lengths)]))
    _each_block(bounds, lambda block, lo, hi: _map_agreement(
        row_ptr, ids[lo:hi], keep, scores_a, scores_b, top_fraction, tokens[lo:hi], top_k[lo:hi], jaccard[lo:hi],
        spearman[lo:hi]))
    return tokens, top_k, jaccard, spearman


def warm_up() -> None:
    """Compile (first process) or load from numba's disk cache (later ones) every kernel for the array types the
    dashboard passes (int32 or int64 indices, float32 or float64 values)."""
    member = np.zeros(2, dtype=np.int64)
    for index_type in (np.int32, np.int64):
        for value_type in (np.float32, np.float64):
            indptr = np.array([0, 1, 2], dtype=index_type)
            indices, data = np.array([0, 1], dtype=index_type), np.ones(2, dtype=value_type)
            csr_cluster_column_sums(member, 1, indptr, indices, data, 2)
            csr_nearest_centre(indptr, indices, data, np.ones((1, 2), dtype=np.float32))
            csr_lloyd(indptr, indices, data, np.ones((1, 2), dtype=np.float32), max_iter=1)
            csr_kmeans_plusplus(indptr, indices, data, 2, 2, np.random.default_rng(0))
        csr_presence(np.array([0, 2]), np.array([1, 1], dtype=index_type), 2)
    for score_type in (np.float32, np.float64):  # a run's stored scores, and scores computed in memory
        map_agreement(np.array([0, 2]), np.array([0]), np.ones(2, dtype=bool), np.ones(2, dtype=score_type),
                      np.ones(2, dtype=score_type), 0.25)

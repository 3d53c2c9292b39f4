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
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np


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
    entry in the column is > 0. One pass over the non-zeros, summed in row order."""
    member_of = np.ascontiguousarray(member_of, dtype=np.int64)
    if len(member_of) != len(indptr) - 1:
        raise ValueError(f"member_of has {len(member_of)} rows, the matrix {len(indptr) - 1}")
    if len(member_of) and (member_of.min() < 0 or member_of.max() >= n_clusters):
        raise ValueError(f"cluster positions must lie in [0, {n_clusters})")
    sums_t = np.zeros((n_columns, n_clusters), dtype=np.float64)
    supports_t = np.zeros((n_columns, n_clusters), dtype=np.int64)
    _csr_cluster_column_sums(member_of, indptr, indices, data, sums_t, supports_t)
    return np.ascontiguousarray(sums_t.T), np.ascontiguousarray(supports_t.T)


@numba.njit(cache=True, nogil=True)
def _csr_nearest_centre(indptr, indices, data, centres_t, half_norms, out):
    n_centres = centres_t.shape[1]
    scores = np.empty(n_centres, dtype=centres_t.dtype)
    for row in range(len(indptr) - 1):
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
        out[row] = best
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
    bounds = _row_blocks(indptr)
    if len(bounds) == 2:
        _csr_nearest_centre(indptr, indices, data, centres_t, half_norms, out)
        return out
    # the kernel releases the GIL (nogil): plain threads share the work, with no thread pool spinning afterwards
    # (an OpenMP pool busy-waits, which stalls a browser drawing on the same cores: ui.leave_a_core_for_the_browser)
    futures = [_pool().submit(_csr_nearest_centre, indptr[lo:hi + 1], indices, data, centres_t, half_norms,
                              out[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for future in futures:
        future.result()
    return out


PARALLEL_MIN_ENTRIES = 2_000_000  # below this many non-zeros a split costs more than it saves
_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="kernels"))
        return _POOL[0]


def _row_blocks(indptr: np.ndarray) -> np.ndarray:
    """Return row boundaries (0, ..., n_rows) that split the non-zeros about evenly between the cores: one block
    below PARALLEL_MIN_ENTRIES non-zeros or on one core."""
    n_rows = len(indptr) - 1
    parts = min(os.cpu_count() or 1, max(1, int(indptr[-1]) // PARALLEL_MIN_ENTRIES)) if n_rows else 1
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
        csr_presence(np.array([0, 2]), np.array([1, 1], dtype=index_type), 2)

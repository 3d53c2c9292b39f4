"""Nearest neighbours at any size: exact search up to APPROXIMATE_ABOVE rows, a stored IVF-Flat index above.

Exact cosine search over n dense rows reads all n vectors per query: on 2 shared cores it passes 100 ms near
200,000 rows of 384 floats (44 ms at 100,000, 424 ms at 1,000,000; bench/results/dashboard.md, 1M section), and
the exact index holds a copy of the matrix in memory. Above APPROXIMATE_ABOVE rows a dense representation is
searched with a faiss IVF-Flat index (inner product on L2-normalised rows: cosine), trained on a seeded sample and
filled in chunks from the memory-mapped matrix, built once and stored in the run's `index/` folder:

    index/<representation slug>.faiss   faiss.write_index output (no pickle), read back memory-mapped
    index/<representation slug>.json    kind, representation, parameters, rows, dimensions, file size, version,
                                        and a fingerprint of the inputs (the representation file's size and mtime,
                                        the parameters, this module's INDEX_VERSION, faiss' version)

The JSON is written last, so an index file without it is incomplete; an index whose fingerprint, size, row count
or dimension does not match, or that faiss cannot read, is rebuilt, never an error. `index/` is a derived folder
(core.store.DERIVED_FOLDERS): not in the manifest.

Sparse representations (S1, B1) stay exact at every size: a sparse matrix-vector product touches only the
non-zeros (about 21 per row): 7 ms a query over 1,000,000 rows.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from core.analysis import Matrix, NeighbourIndex, _candidate_ids, _top_n

# Dense rows above which the Neighbours page searches a stored approximate index (measured, see module doc).
APPROXIMATE_ABOVE = 200_000
# A candidate set (filters) of at most this many rows is searched exactly: cheap, and an IVF search restricted to
# a few rows would find them only in the lists it probes.
EXACT_CANDIDATES_MAX = 50_000
INDEX_VERSION = 1
INDEX_FOLDER = "index"
ADD_CHUNK = 65_536  # rows normalised and added to the index per step: memory bounded by one chunk

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class IvfParams:
    """IVF-Flat settings: `n_lists` k-means cells trained on `train_rows` seeded sample rows, `n_probe` cells
    searched per query."""

    n_lists: int
    n_probe: int
    train_rows: int
    seed: int = 0


def ivf_params(n_rows: int, seed: int = 0) -> IvfParams:
    """Return the IVF parameters for `n_rows` rows: about 2 sqrt(n) lists (1,000,000 rows: 2,000), 40 of them
    probed per query (recall@10 against exact search 0.99 at 1,000,000 B3 rows, bench/results/dashboard.md), and
    a training sample of 40 rows per list (faiss' lower bound is 39)."""
    n_lists = int(min(max(1, n_rows // 40), max(1, round(2 * math.sqrt(n_rows)))))
    return IvfParams(n_lists=n_lists, n_probe=min(n_lists, max(8, n_lists // 50)),
                     train_rows=min(n_rows, 40 * n_lists), seed=seed)


def _unit(rows: np.ndarray) -> np.ndarray:
    """Return a float32 C-contiguous copy of `rows` with every non-zero row scaled to unit length."""
    out = np.array(rows, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(out)
    return out


def build_ivf(matrix: np.ndarray, params: IvfParams, progress: ProgressFn | None = None) -> faiss.IndexIVFFlat:
    """Return an IVF-Flat inner-product index of the L2-normalised rows of the dense `matrix` (memory-mapped is
    fine: it is read `ADD_CHUNK` rows at a time), trained on a seeded sample of `params.train_rows` rows."""
    progress = progress or (lambda fraction, message: None)
    n, dim = matrix.shape
    rng = np.random.default_rng(params.seed)
    sample = np.sort(rng.choice(n, size=min(n, params.train_rows), replace=False))
    progress(0.0, f"Training {params.n_lists:,} index cells on {len(sample):,} rows")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, params.n_lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = params.seed
    index.train(_unit(matrix[sample]))
    for lo in range(0, n, ADD_CHUNK):
        progress(0.2 + 0.8 * lo / n, f"Adding {n:,} rows to the index")
        index.add(_unit(matrix[lo:lo + ADD_CHUNK]))
    index.nprobe = params.n_probe
    progress(1.0, "Index built")
    return index


class ApproximateIndex:
    """Cosine neighbours of the rows of a dense matrix through an IVF-Flat index (same interface as
    core.analysis.NeighbourIndex: `search`, `search_vector`, `row_vector`, `n_rows`).

    Query vectors are read from `matrix` (memory-mapped). A candidate set of at most EXACT_CANDIDATES_MAX rows is
    searched exactly; a larger one restricts the IVF search with a bitmap selector, and when the probed cells hold
    fewer than `n` candidates the search probes more cells, then falls back to exact search.
    """

    approximate = True
    sparse = False

    def __init__(self, matrix: np.ndarray, index: faiss.IndexIVFFlat, params: IvfParams):
        self._matrix, self._index, self.params = matrix, index, params
        self.n_rows = int(matrix.shape[0])

    def row_vector(self, row: int) -> np.ndarray:
        """Return the normalised row `row` as a dense float32 vector."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} out of range [0, {self.n_rows})")
        return _unit(self._matrix[row:row + 1])[0]

    def searches_exactly(self, n_candidates: int) -> bool:
        """Return whether a search among `n_candidates` rows is exact (few candidates are searched directly)."""
        return n_candidates <= EXACT_CANDIDATES_MAX

    def _exact(self, q: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return _top_n(ids, _unit(self._matrix[ids]) @ q, n)

    def search_vector(self, query: np.ndarray, n: int = 5, candidates: np.ndarray | None = None,
                      exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (row ids int64, cosines float32) of (about) the `n` rows nearest the normalised `query`, best
        first; `candidates` (bool mask or ids) restricts the rows, `exclude` drops one row id."""
        cand = _candidate_ids(candidates, self.n_rows)
        if cand is not None and exclude is not None:
            cand = cand[cand != exclude]
        n_avail = len(cand) if cand is not None else self.n_rows - (exclude is not None)
        n = min(n, n_avail)
        if n <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        q = np.asarray(query, dtype=np.float32).ravel()
        if cand is not None and len(cand) <= EXACT_CANDIDATES_MAX:
            return self._exact(q, cand, n)
        selector, bits = None, None
        if cand is not None:
            mask = np.zeros(self.n_rows, dtype=bool)
            mask[cand] = True
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.n_rows, faiss.swig_ptr(bits))
        k = n + (1 if exclude is not None and cand is None else 0)
        n_probe = self.params.n_probe
        while True:
            params = faiss.SearchParametersIVF(nprobe=n_probe, sel=selector) if selector is not None \
                else faiss.SearchParametersIVF(nprobe=n_probe)
            scores, ids = self._index.search(q[None, :], k, params=params)
            ids, scores = ids[0], scores[0]
            keep = ids >= 0
            if exclude is not None:
                keep &= ids != exclude
            if keep.sum() >= n or n_probe >= self.params.n_lists:
                break
            n_probe = min(self.params.n_lists, n_probe * 4)
        del bits  # the selector reads it until here
        if keep.sum() < n:  # even every cell holds too few of the candidates: they are few, search them exactly
            return self._exact(q, cand if cand is not None else np.arange(self.n_rows), n)
        return ids[keep][:n].astype(np.int64), scores[keep][:n].astype(np.float32)

    def search(self, query_row: int, n: int = 5, candidates: np.ndarray | None = None,
               exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Return (row ids, cosines) of (about) the `n` rows nearest row `query_row`, best first."""
        return self.search_vector(self.row_vector(query_row), n=n, candidates=candidates,
                                  exclude=query_row if exclude_self else None)

    def search_many(self, queries: np.ndarray, k: int, candidates: np.ndarray | None = None,
                    batch: int = 4096, n_probe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (cosines, row ids), each (len(queries), k), of the `k` rows nearest each normalised query row
        among `candidates` (bool mask over the rows, None: all), approximately, probing `n_probe` cells (default
        the index's); id -1 and cosine -inf where a query's probed cells hold fewer than `k` candidates. Queries
        go to faiss `batch` at a time."""
        params = {"nprobe": min(self.params.n_lists, n_probe or self.params.n_probe)}
        bits = None
        if candidates is not None:
            bits = np.packbits(np.asarray(candidates, dtype=bool), bitorder="little")
            params["sel"] = faiss.IDSelectorBitmap(self.n_rows, faiss.swig_ptr(bits))
        search_params = faiss.SearchParametersIVF(**params)
        cosines = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for lo in range(0, len(queries), batch):
            part = np.ascontiguousarray(queries[lo:lo + batch], dtype=np.float32)
            cosines[lo:lo + len(part)], ids[lo:lo + len(part)] = self._index.search(part, k, params=search_params)
        del bits
        cosines[ids < 0] = -np.inf
        return cosines, ids


def recall_at(approximate: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray]) -> float:
    """Return the share of the exact neighbours' ids that the approximate search also returned."""
    truth = set(exact[0].tolist())
    return len(truth & set(approximate[0].tolist())) / max(1, len(truth))


# ---------------------------------------------------------------- stored in a run


def inputs_fingerprint(source: Path, n_rows: int, dim: int, params: IvfParams) -> str:
    """Return a sha256 over what an index is built from: the representation file's name, size and mtime, the
    matrix shape, the parameters, INDEX_VERSION and faiss' version. Any change makes a stored index stale."""
    stat = source.stat()
    return hashlib.sha256(json.dumps({
        "file": source.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": n_rows, "dim": dim,
        "params": asdict(params), "version": INDEX_VERSION, "faiss": faiss.__version__}, sort_keys=True).encode()
    ).hexdigest()


def index_paths(run_path: Path, slug: str) -> tuple[Path, Path]:
    """Return the (index file, metadata JSON) of the representation `slug` in the run folder `run_path`."""
    folder = run_path / INDEX_FOLDER
    return folder / f"{slug}.faiss", folder / f"{slug}.json"


def _read_stored(file: Path, meta_file: Path, fingerprint: str, n_rows: int, dim: int) -> faiss.IndexIVFFlat | None:
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint or file.stat().st_size != meta.get("bytes"):
            return None
        index = faiss.read_index(str(file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except (OSError, ValueError, RuntimeError):
        return None  # absent, stale, truncated or not a faiss file: rebuilt
    # read_index returns the concrete class already (downcast_index would hand back a second wrapper whose owner,
    # this one, frees the index when collected)
    if not isinstance(index, faiss.IndexIVFFlat) or index.ntotal != n_rows or index.d != dim:
        return None
    return index


def _write_atomic(index: faiss.Index, file: Path) -> int:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file.stat().st_size


# Indexes of more rows than this are built in a child process: the build holds every vector in memory (1.5 GB
# for 1,000,000 x 384) and the allocator need not give it back, so the dashboard's process would keep that much.
SUBPROCESS_BUILD_ABOVE = 200_000


def _build_in_child(run_path: Path, slug: str, source: Path, seed: int) -> None:
    """Build and store the index of `source` in a fresh Python process (`python -m core.neighbours`)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "core.neighbours", str(run_path), slug, str(source), str(seed)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the neighbour index failed: {done.stderr.strip()[-500:]}")


def load_or_build_index(run_path: Path, slug: str, source: Path, matrix: np.ndarray, seed: int = 0,
                        progress: ProgressFn | None = None) -> tuple[ApproximateIndex, dict[str, Any]]:
    """Return the stored approximate index of the dense `matrix` (the representation `slug`, read from the file
    `source` of the run folder `run_path`) and its metadata, building and storing it first when it is absent,
    stale or unreadable: in a child process above SUBPROCESS_BUILD_ABOVE rows (so this process never holds the
    vectors), here otherwise or when the child fails. A read-only run keeps a built index in memory only."""
    n, dim = matrix.shape
    params = ivf_params(n, seed)
    fingerprint = inputs_fingerprint(source, n, dim, params)
    file, meta_file = index_paths(run_path, slug)
    index = _read_stored(file, meta_file, fingerprint, n, dim)
    if index is None and n > SUBPROCESS_BUILD_ABOVE:
        if progress:
            progress(0.0, f"Building the neighbour index of {n:,} rows in a separate process")
        try:
            _build_in_child(run_path, slug, source, seed)
            index = _read_stored(file, meta_file, fingerprint, n, dim)
        except (OSError, RuntimeError):
            index = None  # built below, in this process
    if index is not None:
        return ApproximateIndex(matrix, index, params), json.loads(meta_file.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    index = build_ivf(matrix, params, progress)
    meta = {"kind": "IVF-Flat, inner product on L2-normalised rows (cosine)", "representation": slug,
            "params": asdict(params), "rows": n, "dim": dim, "fingerprint": fingerprint, "version": INDEX_VERSION,
            "faiss": faiss.__version__, "build_seconds": round(time.perf_counter() - t0, 2)}
    try:
        meta_file.unlink(missing_ok=True)  # the metadata is written last: it marks the index file complete
        meta["bytes"] = _write_atomic(index, file)
        from core.store import atomic_write_json

        atomic_write_json(meta_file, meta)
        del index  # read back memory-mapped: the vectors stay in the page cache, not in this process' heap
        index = _read_stored(file, meta_file, fingerprint, n, dim) or build_ivf(matrix, params)
    except OSError:
        pass  # a read-only cache still works, with the index in memory
    return ApproximateIndex(matrix, index, params), meta


def neighbour_index(matrix: Matrix, run_path: Path | None = None, slug: str | None = None,
                    source: Path | None = None, approximate_above: int = APPROXIMATE_ABOVE,
                    progress: ProgressFn | None = None) -> NeighbourIndex | ApproximateIndex:
    """Return the index the Neighbours page searches: exact (core.analysis.NeighbourIndex) for sparse rows and up
    to `approximate_above` dense rows, else the stored approximate index of the run (`run_path`, `slug`, `source`
    as for load_or_build_index)."""
    if sp.issparse(matrix) or matrix.shape[0] <= approximate_above or run_path is None or source is None:
        return NeighbourIndex(matrix)
    return load_or_build_index(run_path, slug or source.stem, source, matrix, progress=progress)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m core.neighbours RUN_DIR SLUG SOURCE [SEED]`: build and store the index of the representation
    file SOURCE (what load_or_build_index runs in a child process)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    run_path, slug, source = Path(args[0]), args[1], Path(args[2])
    seed = int(args[3]) if len(args) > 3 else 0
    matrix = np.load(source, mmap_mode="r", allow_pickle=False)
    n, dim = matrix.shape
    params = ivf_params(n, seed)
    file, meta_file = index_paths(run_path, slug)
    if _read_stored(file, meta_file, inputs_fingerprint(source, n, dim, params), n, dim) is None:
        global SUBPROCESS_BUILD_ABOVE
        SUBPROCESS_BUILD_ABOVE = n  # this is the child: build here
        load_or_build_index(run_path, slug, source, matrix, seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

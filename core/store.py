"""The on-disk cache: fingerprints, atomic run folders, and reading runs back.

Layout of one run, `<cache>/runs/<fingerprint[:16]>/`:
    manifest.json          settings, fingerprints, counts, accuracy, versions, timings, file sizes + hashes
    examples.parquet       text, label, split, source_row, pred, correct, prob_<i>
    tokens/*.npy           token_ids, row_ptr (n+1), char_starts, char_ends (ragged, CSR-style)
    saliency/<method>.npy  one float32 score per token, aligned with tokens/token_ids.npy
    cls.npy                last-layer first-token encodings (n x hidden)
    embedding_matrix.npy   the model's input embeddings E (vocab x dim)
    vocab.json             token string per id; ignore_mask.npy: special tokens and punctuation
    representations/<slug>.npz|.npy   built on first use, keyed by their parameters
    derived/<method>.npy|.json        derived methods (LAFA, core.lafa): per-token scores computed from the stored
                           arrays on first use, with their parameters and a fingerprint of their inputs
    l2e/                   the learned explainer's student (core.l2e), with --method l2e: student.safetensors,
                           student.json (config), sample_rows.npy (rows it was trained on), training.json
    index/<slug>.faiss|.json          approximate neighbour index of a large dense representation (core.neighbours)
Dense matrices (cls, embedding matrix, dense representations) and the token arrays are memory-mapped when read.
A run is built in a temporary folder and moved into place with one os.replace. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.lafa import DERIVED_METHODS, LafaParams, lafa_for_run
from core.lafa import input_files as lafa_input_files
from core.lafa import inputs_fingerprint as lafa_inputs_fingerprint
from core.manifest import SCHEMA_VERSION, ManifestError, validate_manifest
from core.representations import (REPRESENTATIONS, RepresentationKey, build_representation, idf_weights,
                                  presence_matrix)
from core.words import (WORDS_VERSION, WordIndex, WordInputs, build_word_index,
                        vocabulary_is_uncased)

CACHE_ENV = "SALIENCY_ATLAS_CACHE"
MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


class CacheError(RuntimeError):
    """A cached run that is missing, corrupt or stale, with what to do about it."""


@dataclass(frozen=True)
class TermSpace:
    """The terms a run's term-level matrices have as columns (whole words or word pieces).

    vocab: the term strings; ignore_mask: terms never shown (special tokens, punctuation); presence: binary
    (n_examples x len(vocab)) CSR matrix, 1 where the example contains the term.
    """

    unit: str
    vocab: list[str]
    ignore_mask: np.ndarray
    presence: sp.csr_matrix

    def idf(self) -> np.ndarray:
        """Return each term's inverse document frequency over the run, log((1 + n) / (1 + examples containing
        it)) (representations.idf_weights): what the pages multiply distinctiveness by."""
        return idf_weights(np.asarray(self.presence.sum(axis=0)).ravel(), self.presence.shape[0])


def cache_dir() -> Path:
    """Return the cache root: $SALIENCY_ATLAS_CACHE if set, else `<repo>/cache`."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / "cache").expanduser()


def runs_dir() -> Path:
    """Return the folder holding one sub-folder per run."""
    return cache_dir() / "runs"


# ---------------------------------------------------------------- fingerprints

def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def directory_digest(folder: Path) -> str:
    """Return a sha256 over the relative paths and contents of every file under `folder` (hidden files skipped)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(rel.encode())
        h.update(file_digest(path).encode())
    return h.hexdigest()


def settings_digest(settings: dict[str, Any]) -> str:
    """Return a sha256 of `settings` that does not depend on key order."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(model_digest: str, data_digest: str, settings: dict[str, Any]) -> str:
    """Return the run fingerprint chained from model, data and settings digests."""
    return hashlib.sha256(f"v{SCHEMA_VERSION}|{model_digest}|{data_digest}|{settings_digest(settings)}"
                          .encode()).hexdigest()


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save numpy arrays to `path` (.npz) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Return every array of an .npz file (pickle refused)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _save_matrix(path: Path, matrix) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        if sp.issparse(matrix):
            sp.save_npz(tmp, sp.csr_matrix(matrix), compressed=False)
        else:
            np.save(tmp, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _RowFile:
    """A float32 (n x dim) .npy file written block of rows by block of rows (`out[lo:hi] = block`), through file
    writes rather than a memory map, so the written rows never count in this process's resident memory."""

    def __init__(self, path: str, shape: tuple[int, int]):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()  # header + full size
        with open(path, "rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            self._offset = fh.tell()
        self.shape, self.path = shape, path

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        with open(self.path, "r+b") as fh:
            fh.seek(self._offset + rows.start * self.shape[1] * 4)
            fh.write(block.tobytes())


def _build_dense_file(path: Path, build) -> np.ndarray:
    """Write the dense float32 matrix that `build(allocate)` returns to `path` (.npy) atomically and return it
    memory-mapped. A blockwise build writes each block straight into a temporary file that `allocate(shape)`
    opens (`_RowFile`), so neither the matrix nor a copy of it is held in memory (1,000,000 x 384 floats is
    1.5 GB)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    os.close(fd)
    opened: list[_RowFile] = []

    def allocate(shape: tuple[int, int]) -> _RowFile:
        opened.append(_RowFile(tmp, shape))
        return opened[-1]

    try:
        matrix = build(allocate)
        if not (opened and matrix is opened[0]):  # built in one piece, in memory
            np.save(tmp, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
        del matrix, opened[:]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r", allow_pickle=False)


# Derived folders rebuilt from the stored arrays when missing or unreadable: not part of the run's integrity check
# (analysis/: stored 2-D projections, core.projection; derived/: derived attribution methods such as LAFA;
# index/: approximate nearest-neighbour indexes, core.neighbours).
DERIVED_FOLDERS = ("words", "analysis", "derived", "index")


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Return {relative path: {bytes, sha256}} for every file under `folder` except the manifest and derived
    folders (DERIVED_FOLDERS)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST and rel.split("/")[0] not in DERIVED_FOLDERS:
            out[rel] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return out


# ---------------------------------------------------------------- hashed once per file version, not per process

# analysis/ is derived: deleting it (or this file) only means the next full check hashes every file again.
VERIFIED_RECORD = "analysis/verified.json"


def _file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def record_verified(folder: Path, rels: list[str]) -> None:
    """Record the size, mtime, ctime and inode of the files `rels` of `folder`, whose sha256 was just found equal
    to the manifest's, so a later full check (`open_run(verify=True)`) need not hash them again while they keep
    that stat. Best effort: a folder that cannot be written to is hashed again next time."""
    try:
        stats = {rel: _file_stat(folder / rel) for rel in rels}
        atomic_write_json(folder / VERIFIED_RECORD, {"files": stats})
    except OSError:
        pass


def verified_unchanged(folder: Path) -> dict[str, list[int]]:
    """Return {relative path: stat} of the files of `folder` whose recorded stat still holds and that were last
    written before the record was (`record_verified`); an unreadable record gives {}.

    Any write to a file changes its mtime and ctime (and an atomic replacement its inode), so an unchanged stat
    means unchanged bytes, as for git's index. A file written in the same clock tick as the record could change
    again within that tick without changing its mtime, so it is not trusted (git's "racily clean" rule).
    """
    record = folder / VERIFIED_RECORD
    try:
        written = record.stat().st_mtime_ns
        files = json.loads(record.read_text(encoding="utf-8"))["files"]
        out = {}
        for rel, stat in files.items():
            if (isinstance(stat, list) and len(stat) == 4 and stat[1] < written and stat[2] < written
                    and (folder / rel).is_file() and _file_stat(folder / rel) == stat):
                out[rel] = stat
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def publish_run(staging: Path, final: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest (with file sizes and hashes) into `staging` and move it to `final` in one step.

    An existing run at `final` is replaced only once the new one is complete. The files just hashed are recorded
    (`record_verified`), so the dashboard's first full check of the new run does not hash them again.
    """
    manifest = {**manifest, "files": describe_files(staging)}
    record_verified(staging, list(manifest["files"]))
    atomic_write_json(staging / MANIFEST, manifest)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


# ---------------------------------------------------------------- precompute locks and leftovers

LOCKS_FOLDER = ".locks"


def run_lock(run_id: str, root: Path | None = None):
    """Return the inter-process lock (a filelock.FileLock) of the run `run_id` (its folder name) under `root`.

    A precompute holds it from its fingerprint to the published run, so a second identical precompute waits
    instead of computing every chunk again, and a staging folder whose lock is free belongs to a dead process.
    """
    from filelock import FileLock

    folder = (root or runs_dir()) / LOCKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{run_id}.lock"))


def _leftover_run_id(name: str) -> str | None:
    """Return the run id of a precompute's work folder (.staging-<id>-<pid>, .old-<id>-<pid>, .partial-<id>)."""
    for prefix in (".staging-", ".old-"):
        if name.startswith(prefix) and "-" in name[len(prefix):]:
            return name[len(prefix):].rsplit("-", 1)[0]
    if name.startswith(".partial-"):
        return name[len(".partial-"):]
    return None


def clean_stale_work(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Remove what killed precomputes left in the runs folder; return (removed, kept resumable) folders.

    Staging and replaced-run folders (.staging-*, .old-*) are removed when no precompute holds their run's lock;
    a .partial-* folder (the finished chunks of an interrupted precompute) is removed only once its run is
    complete, and otherwise kept: running the same command again resumes from it.
    """
    from filelock import Timeout

    root = root or runs_dir()
    removed: list[Path] = []
    kept: list[Path] = []
    if not root.is_dir():
        return removed, kept
    for path in sorted(root.iterdir()):
        run_id = _leftover_run_id(path.name)
        if run_id is None or not path.is_dir():
            continue
        lock = run_lock(run_id, root)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # a running precompute owns it
        try:
            if path.name.startswith(".partial-") and not (root / run_id / MANIFEST).exists():
                kept.append(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        finally:
            lock.release()
    return removed, kept


# ---------------------------------------------------------------- reading runs

class Run:
    """A complete cached run, read lazily. Open with `open_run`."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._words_lock = threading.Lock()
        self._derived_lock = threading.Lock()
        self._term_spaces: dict[str, TermSpace] = {}

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def label_names(self) -> list[str]:
        id2label = self.manifest["model"]["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def stored_methods(self) -> list[str]:
        """Return the methods whose scores the precompute stored (one backward pass each)."""
        return list(self.manifest["settings"]["methods"])

    @property
    def methods(self) -> list[str]:
        """Return the stored methods, then the derived ones (core.lafa) already computed into `derived/`."""
        stored = self.stored_methods
        return stored + [m for m in DERIVED_METHODS if m not in stored and self.can_derive(m)
                         and (m in self.__dict__.get("_derived", {}) or (self.path / "derived" / f"{m}.json").exists()
                              or (self.path / "derived" / f"{m}.npy").exists())]

    def can_derive(self, method: str) -> bool:
        """Return whether `method` is a derived method whose base method this run stores."""
        return method in DERIVED_METHODS and DERIVED_METHODS[method].base in self.stored_methods

    @property
    def title(self) -> str:
        m = self.manifest
        return f"{Path(m['data']['path']).name} · {Path(m['model']['path']).name} · {m['counts']['examples']} ex"

    @cached_property
    def examples(self) -> pd.DataFrame:
        """Return one row per example: text, label, split, source_row, pred, correct, prob_<i>."""
        return self._read_examples(None)

    @cached_property
    def example_column_names(self) -> list[str]:
        """Return the examples table's column names (read from the file's schema, not its rows)."""
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.path / "examples.parquet").names)

    def example_columns(self, columns: Sequence[str]) -> pd.DataFrame:
        """Return the examples table's `columns` (every row, in order): from `examples` once that has been read,
        else read from the file alone and kept (the texts, most of the table, are then not read: a second run
        compared with this one needs its predictions only)."""
        columns = list(columns)
        if "examples" in self.__dict__:
            return self.examples[columns]
        kept = self.__dict__.setdefault("_example_columns", {})
        key = tuple(columns)
        if key not in kept:
            kept[key] = self._read_examples(columns)
        return kept[key]

    def _read_examples(self, columns: list[str] | None) -> pd.DataFrame:
        import pyarrow as pa

        try:
            frame = pd.read_parquet(self.path / "examples.parquet", columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise CacheError(f"Run {self.run_id} is corrupt: examples.parquet cannot be read ({exc}). Re-run "
                             f"precompute on the same model and data to rebuild it, or delete {self.path}.") from exc
        # Each column in one piece. A file of several row groups (over 1,048,576 examples: the precompute writes
        # pyarrow's default groups) is read as one piece per group, and taking rows of a text column in pieces
        # concatenates them all first, every time, into fresh memory (0.2-0.4 s at 1,000,000 rows in 10 groups,
        # twice in a slice change by a word): concatenated once here instead (large_string texts: no 2 GB limit).
        for name in frame.columns:
            array = frame[name].array
            if hasattr(array, "__arrow_array__"):
                pieces = array.__arrow_array__()
                if isinstance(pieces, pa.ChunkedArray) and pieces.num_chunks > 1:
                    frame[name] = pd.array(pieces.combine_chunks(), dtype=array.dtype)
        return frame

    @cached_property
    def splits(self) -> list[str]:
        """Return the split names, in the order they first appear in the examples table."""
        # Series.unique keeps that order and runs in Arrow: iterating 1,000,000 strings in Python took 1 s, on
        # every rerun of the sidebar
        return list(dict.fromkeys(str(s) for s in self.examples["split"].unique()))

    def _token_array(self, name: str) -> np.ndarray:
        return np.load(self.path / "tokens" / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    @cached_property
    def token_ids(self) -> np.ndarray:
        """Return all examples' token ids concatenated (memory-mapped)."""
        return self._token_array("token_ids")

    @cached_property
    def row_ptr(self) -> np.ndarray:
        """Return the n + 1 offsets of each example's tokens in `token_ids`."""
        return np.asarray(self._token_array("row_ptr"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @cached_property
    def vocab(self) -> list[str]:
        """Return the token string of every vocabulary id."""
        return json.loads((self.path / "vocab.json").read_text(encoding="utf-8"))

    @cached_property
    def ignore_mask(self) -> np.ndarray:
        """Return a bool mask over the vocabulary: special tokens and punctuation."""
        return np.load(self.path / "ignore_mask.npy", allow_pickle=False)

    def scores(self, method: str) -> np.ndarray:
        """Return the per-token scores of `method`, aligned with `token_ids`.

        A derived method (core.lafa) is computed from the stored arrays on first use and kept in `derived/`.
        """
        path = self.path / "saliency" / f"{method}.npy"
        if method in self.stored_methods or not self.can_derive(method):
            if not path.exists():
                raise CacheError(f"Run {self.run_id} has no saliency for method '{method}' (it has: "
                                 f"{', '.join(self.methods)}). Re-run precompute with --method {method}.")
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return self.derive(method)

    def derive(self, method: str) -> np.ndarray:
        """Return the scores of the derived method `method`, reading `derived/<method>.npy` when it matches its
        parameters and inputs, else computing it from the stored arrays and writing it (a read-only run keeps it in
        memory). A missing, damaged or stale file is rebuilt, never an error."""
        if not self.can_derive(method):
            raise CacheError(f"Run {self.run_id} cannot derive '{method}': it needs the stored saliency of "
                             f"'{DERIVED_METHODS[method].base if method in DERIVED_METHODS else '?'}' (it has: "
                             f"{', '.join(self.stored_methods)}).")
        with self._derived_lock:
            cache = self.__dict__.setdefault("_derived", {})
            if method not in cache:
                cache[method] = self._load_or_build_derived(method)
            return cache[method]

    def derived_info(self, method: str) -> dict[str, Any] | None:
        """Return the parameters and statistics recorded with a derived method's file, or None when absent."""
        try:
            return json.loads((self.path / "derived" / f"{method}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _derived_fingerprint(self, params: LafaParams) -> str:
        files = self.manifest.get("files", {})
        return lafa_inputs_fingerprint(params, {rel: files.get(rel, {}).get("sha256", "")
                                                for rel in lafa_input_files(params)})

    def _load_or_build_derived(self, method: str) -> np.ndarray:
        import time

        params = DERIVED_METHODS[method]
        folder = self.path / "derived"
        npy, meta_path = folder / f"{method}.npy", folder / f"{method}.json"
        fingerprint = self._derived_fingerprint(params)
        n_tokens = len(self.token_ids)
        meta = self.derived_info(method)
        if meta is not None and meta.get("fingerprint") == fingerprint:
            try:
                values = np.load(npy, mmap_mode="r", allow_pickle=False)
                if values.shape == (n_tokens,) and values.dtype == np.float32:
                    return values
            except (OSError, ValueError, EOFError):
                pass  # damaged: rebuilt below
        t0 = time.perf_counter()
        result = lafa_for_run(self, params)
        values = np.ascontiguousarray(result.scores, dtype=np.float32)
        stale = meta is not None and meta.get("fingerprint") != fingerprint
        try:
            folder.mkdir(exist_ok=True)
            if stale:  # other parameters or inputs: what was built on the old scores is stale too
                for old in [*self.path.glob(f"representations/*-{method}-*"),
                            *self.path.glob(f"analysis/**/*{method}*")]:
                    old.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)  # the metadata is written last: it marks the file complete
            _save_matrix(npy, values)
            atomic_write_json(meta_path, {"method": method, "params": params.as_dict(), "fingerprint": fingerprint,
                                          "tokens": n_tokens, "examples": self.n_examples,
                                          "seconds": round(time.perf_counter() - t0, 3), **result.stats})
        except OSError:
            pass  # a read-only cache still works, with the scores kept in memory
        return values

    def embedding_matrix(self) -> np.ndarray:
        """Return the model's input embedding matrix (memory-mapped)."""
        return np.load(self.path / "embedding_matrix.npy", mmap_mode="r", allow_pickle=False)

    def cls(self) -> np.ndarray:
        """Return the [CLS] encodings (n x hidden, memory-mapped)."""
        return np.load(self.path / "cls.npy", mmap_mode="r", allow_pickle=False)

    def predictions(self) -> np.ndarray:
        return self.examples["pred"].to_numpy()

    def probabilities(self) -> np.ndarray:
        """Return the (n x num_labels) class probabilities."""
        return self.examples[[f"prob_{i}" for i in range(self.num_labels)]].to_numpy()

    def tokens_of(self, row: int, method: str | None = None) -> pd.DataFrame:
        """Return one example's tokens: token id, token string, char start/end, and `method` score if given."""
        lo, hi = int(self.row_ptr[row]), int(self.row_ptr[row + 1])
        ids = self.token_ids[lo:hi]
        frame = pd.DataFrame({"token_id": ids, "token": [self.vocab[i] for i in ids],
                              "start": self._token_array("char_starts")[lo:hi],
                              "end": self._token_array("char_ends")[lo:hi]})
        if method:
            frame["score"] = self.scores(method)[lo:hi]
        return frame

    @cached_property
    def presence(self) -> sp.csr_matrix:
        """Return the binary (n x vocab) token-presence matrix."""
        return presence_matrix(self.token_ids, self.row_ptr, self.vocab_size)

    @property
    def n_examples(self) -> int:
        return len(self.row_ptr) - 1

    def document_frequency(self) -> np.ndarray:
        """Return, per token id, the number of examples containing it (computed once: every row block asks)."""
        if "_document_frequency" not in self.__dict__:
            self.__dict__["_document_frequency"] = np.asarray(self.presence.sum(axis=0), dtype=np.int64).ravel()
        return self.__dict__["_document_frequency"]

    @property
    def word_index(self) -> WordIndex:
        """Return which tokens form which words (see core.words), built on first use and kept in `words/`."""
        with self._words_lock:
            cached = self.__dict__.get("_word_index")
            if cached is None:
                cached = self.__dict__["_word_index"] = self._load_or_build_word_index()
            return cached

    def _load_or_build_word_index(self) -> WordIndex:
        folder = self.path / "words"
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("version") == WORDS_VERSION and meta.get("examples") == self.n_examples:
                arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                          for name in ("word_ids", "row_ptr", "token_index", "occ_ptr")}
                vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
                pieces = sp.load_npz(folder / "piece_matrix.npz").tocsr()
                if len(arrays["row_ptr"]) == self.n_examples + 1 and pieces.shape[0] == len(vocab):
                    return WordIndex(vocab=vocab, piece_matrix=pieces, **arrays)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # absent or damaged: rebuilt from the stored text and tokens
        index = build_word_index(self.examples["text"].astype(str).tolist(), self.token_ids, self.row_ptr,
                                 self._token_array("char_starts"), self._token_array("char_ends"),
                                 self.vocab_size, vocabulary_is_uncased(self.vocab, self.ignore_mask))
        staging = Path(tempfile.mkdtemp(prefix=".words-", dir=self.path))
        try:
            staging.chmod(0o755)
            for name in ("word_ids", "row_ptr", "token_index", "occ_ptr"):
                np.save(staging / f"{name}.npy", getattr(index, name), allow_pickle=False)
            (staging / "vocab.json").write_text(json.dumps(index.vocab, ensure_ascii=False), encoding="utf-8")
            sp.save_npz(staging / "piece_matrix.npz", index.piece_matrix, compressed=False)
            (staging / "meta.json").write_text(json.dumps({"version": WORDS_VERSION, "examples": self.n_examples}),
                                               encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a read-only cache still works, just without the file
        return index

    def word_inputs(self, unit: str = "word") -> WordInputs:
        """Return the run seen at word level (`unit` "word": max over pieces, "word_sum": sum)."""
        return WordInputs(self, self.word_index, "sum" if unit == "word_sum" else "max",
                          presence=self.term_space("word").presence)

    def term_space(self, unit: str = "word") -> TermSpace:
        """Return the terms (vocabulary, ignore mask, presence) of `unit`: "piece", or whole words otherwise."""
        unit = "piece" if unit == "piece" else "word"
        if unit not in self._term_spaces:
            if unit == "piece":
                space = TermSpace("piece", self.vocab, self.ignore_mask, self.presence)
            else:
                index = self.word_index
                space = TermSpace("word", index.vocab, np.zeros(len(index.vocab), dtype=bool),
                                  presence_matrix(index.word_ids, index.row_ptr, len(index.vocab)))
            self._term_spaces[unit] = space
        return self._term_spaces[unit]

    def representation(self, key: RepresentationKey):
        """Return the representation named by `key`, building and caching it in the run folder on first use."""
        key = key.normalised()
        if key.method and key.method not in self.methods and not self.can_derive(key.method):
            raise CacheError(f"Run {self.run_id} has no saliency for method '{key.method}' (it has: "
                             f"{', '.join(self.methods)}).")
        folder = self.path / "representations"
        sparse = REPRESENTATIONS[key.name].sparse
        path = self.representation_file(key)
        columns = None
        if key.unit != "piece":
            columns = len(self.word_index.vocab)
        if path.exists():
            try:
                # dense matrices are memory-mapped: 1,000,000 rows x 384 floats is 1.5 GB a matrix
                matrix = sp.load_npz(path).tocsr() if sparse else np.load(path, mmap_mode="r", allow_pickle=False)
                if matrix.shape[0] == self.n_examples and (not sparse or columns is None
                                                           or matrix.shape[1] == columns):
                    return matrix
                path.unlink(missing_ok=True)  # built on another word index: stale
            except (ValueError, OSError, KeyError, zipfile.BadZipFile):
                path.unlink(missing_ok=True)  # a damaged derived file is rebuilt from the stored saliency
        folder.mkdir(exist_ok=True)
        inputs = self if key.unit == "piece" else self.word_inputs(key.unit)
        if sparse:
            matrix = build_representation(inputs, key)
            _save_matrix(path, matrix)
            return matrix
        return _build_dense_file(path, lambda allocate: build_representation(inputs, key, allocate=allocate))

    def representation_file(self, key: RepresentationKey) -> Path:
        """Return the file the representation `key` is stored in (`representations/<slug>.npz|.npy`), whether
        or not it is built yet."""
        key = key.normalised()
        # A word-level matrix depends on the word index too: its file names the index version, so a new version
        # builds new files and never rewrites one the manifest has recorded (a size mismatch would drop it again
        # on every open).
        stem = key.slug if key.unit == "piece" else f"{key.slug}-w{WORDS_VERSION}"
        return self.path / "representations" / f"{stem}.{'npz' if REPRESENTATIONS[key.name].sparse else 'npy'}"

    def analysis_dir(self) -> Path:
        """Return a folder inside the run for cached analysis results (projections, ...)."""
        folder = self.path / "analysis"
        folder.mkdir(exist_ok=True)
        return folder

    def staleness(self) -> list[str]:
        """Return reasons this run no longer matches its model or data files (empty if it still matches)."""
        reasons = []
        for part, digest_fn in (("model", directory_digest), ("data", file_digest)):
            info = self.manifest[part]
            path = Path(info["path"])
            if not path.exists():
                continue  # moved away: the run is still self-contained
            stat_key = _stat_signature(path)
            if stat_key == info.get("stat") or digest_fn(path) == info["digest"]:
                continue
            reasons.append(f"the {part} at {path} changed after this run was computed; re-run precompute "
                           f"on it to refresh the cache")
        return reasons


def _stat_signature(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
                          .encode()).hexdigest()


def stat_signature(path: Path) -> str:
    """Return a cheap signature (names, sizes, mtimes) of a file or folder, used to skip re-hashing."""
    return _stat_signature(path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Return the manifest of the run folder `path`, parsed and checked against the schema (core.manifest).

    Raises CacheError naming the problem and the fix when it is missing, not JSON, or does not match the schema.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CacheError(f"{path} is not a complete run (no {MANIFEST}). Run `python -m core.precompute` "
                         "to build it; an interrupted precompute resumes where it stopped.")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CacheError(f"The manifest of run {path.name} is corrupt ({exc}). Re-run precompute on the same "
                         f"model and data to rebuild it, or delete {path}.") from exc
    try:
        return validate_manifest(raw)
    except ManifestError as exc:
        raise CacheError(f"The manifest of run {path.name} is damaged: {exc}. Re-run precompute on the same model "
                         f"and data to rebuild it, or delete {path}.") from None


def open_run(path: str | Path, verify: bool = False) -> Run:
    """Return the run stored at `path` after checking its manifest and files.

    The manifest is checked against its schema and the examples table against the label count; file sizes are
    always checked, and `verify=True` also checks every file's sha256, except files whose stat is unchanged since
    their hash last matched (`verified_unchanged`). Raises CacheError naming the problem and the
    fix for a missing, incomplete, corrupt or old-schema run. Representation files are derived: a missing or
    damaged one is deleted here and rebuilt from the stored saliency on use.
    """
    path = Path(path)
    manifest = read_manifest(path)
    unchanged = verified_unchanged(path) if verify else {}
    hashed = 0

    def digest_differs(file: Path, rel: str, info: dict[str, Any]) -> bool:
        nonlocal hashed
        if not verify or rel in unchanged:
            return False
        hashed += 1
        return file_digest(file) != info["sha256"]

    for rel, info in manifest["files"].items():
        file = path / rel
        if rel.startswith("representations/"):
            if file.exists() and (file.stat().st_size != info["bytes"] or digest_differs(file, rel, info)):
                try:
                    file.unlink()
                except OSError:
                    pass
            continue
        if not file.is_file():
            raise CacheError(f"Run {path.name} is corrupt: {rel} is missing. Re-run precompute on the same model "
                             f"and data to rebuild it, or delete {path}.")
        if file.stat().st_size != info["bytes"] or digest_differs(file, rel, info):
            raise CacheError(f"Run {path.name} is corrupt: {rel} does not match its manifest "
                             f"({'sha256' if file.stat().st_size == info['bytes'] else 'size'} differs). Re-run "
                             f"precompute on the same model and data to rebuild it, or delete {path}.")
    _check_examples_table(path, len(manifest["model"]["id2label"]))
    if hashed:
        record_verified(path, [rel for rel in manifest["files"] if (path / rel).is_file()])
    return Run(path, manifest)


def _check_examples_table(path: Path, num_labels: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path / "examples.parquet").names
    except (OSError, pa.ArrowException) as exc:
        raise CacheError(f"Run {path.name} is corrupt: examples.parquet cannot be read ({exc}). Re-run precompute "
                         f"on the same model and data to rebuild it, or delete {path}.") from exc
    probs = sum(1 for n in names if n.startswith("prob_"))
    missing = {"text", "label", "pred"} - set(names)
    if missing or probs != num_labels:
        raise CacheError(f"Run {path.name} is inconsistent: its manifest names {num_labels} labels but "
                         f"examples.parquet has {probs} probability columns"
                         + (f" and lacks {', '.join(sorted(missing))}" if missing else "")
                         + f". Re-run precompute on the same model and data to rebuild it, or delete {path}.")


def run_problem(path: str | Path) -> str | None:
    """Return why the run at `path` cannot be opened (manifest, sizes, examples table), or None when it can.

    Cheap: no file is hashed. A page lists every run with this, so one damaged folder never hides the others.
    """
    try:
        open_run(path)
    except CacheError as exc:
        return str(exc)
    return None


def list_runs(root: Path | None = None) -> list[Path]:
    """Return the folders of complete runs under the cache, most recent first (partial/temporary ones skipped)."""
    root = root or runs_dir()
    if not root.exists():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()]
    return sorted(runs, key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)

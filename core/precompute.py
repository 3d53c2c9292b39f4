"""Precompute a run: load model and data, attribute every example in chunks, write the cache.

    python -m core.precompute --model DIR --data FILE [--text-col text --label-col label --split-col split
        --max-length 128 --batch-size 32 --method grad_l2 --k 5 --limit N --sample N]

With no --model/--data it builds (or reuses) the embedded demo. A derived method (`--method grad_l2,lafa`, see
core.lafa) costs no backward pass: it is computed from the stored scores of its base method after the run is built
or reused, and kept in the run's `derived/` folder; it does not change the run's fingerprint. The learned explainer
(`--method l2e`, see core.l2e) first computes its teacher on a sample of the training split and trains its student
(stored in the run's `l2e/` folder), then the chunks get its maps from the student's forward pass. The work is split
into chunks written atomically to `<cache>/runs/.partial-<id>/`; an interrupted precompute resumes from its last
finished chunk. The finished run is assembled in a temporary folder and moved into place in one step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core import l2e
from core.data import DataLoadError, LoadedData, check_data_file, load_dataset
from core.models import (TRUNCATION_SIDES, LoadedModel, ModelLoadError, check_classifier_folder, check_device,
                         check_model_folder, check_truncation, config_num_labels, encode, ignored_token_mask,
                         input_embedding_matrix, load_classifier, pad_batch, pad_sequences, vocabulary)
from core.representations import DEFAULT_TERMS_UNIT, DEFAULT_UNIT, DEFAULT_WEIGHTING, RepresentationKey
from core.saliency import ATTRIBUTION_METHODS, dataset_token_distribution, forward_and_attribute, get_method
from core.store import (CacheError, Run, SCHEMA_VERSION, atomic_save_npz, atomic_write_json, clean_stale_work,
                        directory_digest, file_digest, load_npz, open_run, publish_run, run_fingerprint,
                        run_lock, runs_dir, stat_signature)

DEFAULT_REPRESENTATIONS = ("s1", "s2", "b1", "b2", "b3")

# allowed (min, max) of each integer setting (None: no upper bound); the CLI checks its options against them
INT_RANGES: dict[str, tuple[int, int | None]] = {
    "max_length": (3, None),  # [CLS] + at least one token + [SEP]
    "batch_size": (1, None),
    "chunk_size": (1, None),
    "limit": (1, None),
    "sample": (1, None),
    "seed": (0, 2**32 - 1),
    "ig_steps": (1, None),
    "im_top_n": (1, None),
    "target_class": (0, None),
    "k": (1, None),
    "l2e_layers": (1, None),
    "l2e_epochs": (1, None),
    "l2e_buckets": (2, None),
}


def range_text(lo: int, hi: int | None) -> str:
    """Return how an integer range reads in a message: 'an integer >= 1' or 'an integer from 0 to 9'."""
    return f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"


def check_int_setting(name: str, value: Any) -> None:
    """Raise ValueError naming `name` and its allowed range when `value` is not an integer in INT_RANGES[name]."""
    lo, hi = INT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None
                                                                                          and value > hi):
        raise ValueError(f"{name} must be {range_text(lo, hi)}, got {value!r}")


@dataclass(frozen=True)
class PrecomputeSettings:
    """Everything that changes the stored results (and so the fingerprint), plus execution knobs.

    batch_size, chunk_size and device change speed only, and k / include_special only pick which
    representations are built up front (others are built from the stored saliency on demand), so these
    are left out of the fingerprint.
    """

    text_col: str = "text"
    label_col: str = "label"
    split_col: str | None = None
    max_length: int = 128
    methods: tuple[str, ...] = ("grad_l2",)
    target_class: int | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    ig_steps: int = 20
    im_mlm: str | None = None
    im_top_n: int = 10
    im_cum_prob: float = 0.95
    truncation: str = "head"  # which part of a long text is kept: head, tail or head+tail (core.models.encode)
    # the learned explainer (core.l2e), used with the method l2e only
    l2e_teacher: str = l2e.DEFAULT_PARAMS.teacher
    l2e_sample: float | int = l2e.DEFAULT_PARAMS.sample
    l2e_seed: int = l2e.DEFAULT_PARAMS.seed
    l2e_layers: int = l2e.DEFAULT_PARAMS.layers
    l2e_epochs: int = l2e.DEFAULT_PARAMS.epochs
    l2e_buckets: int = l2e.DEFAULT_PARAMS.buckets
    l2e_lr: float = l2e.DEFAULT_PARAMS.lr
    k: int | None = field(default=None, compare=False)
    include_special: bool = field(default=False, compare=False)
    batch_size: int = field(default=32, compare=False)
    chunk_size: int = field(default=512, compare=False)
    device: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_truncation(self.truncation)
        for name in INT_RANGES:
            if getattr(self, name) is not None or name in ("max_length", "batch_size", "chunk_size", "seed",
                                                            "ig_steps", "im_top_n"):
                check_int_setting(name, getattr(self, name))
        if not 0 < self.im_cum_prob <= 1:
            raise ValueError(f"im_cum_prob must be a probability in (0, 1], got {self.im_cum_prob!r}")
        if not self.methods:
            raise ValueError(f"methods is empty: name at least one of {', '.join(ATTRIBUTION_METHODS)}")
        if l2e.NAME in self.methods:
            check_teacher(self.l2e_teacher)
            self.l2e_params()  # range checks

    def l2e_params(self) -> l2e.L2EParams:
        """Return the learned explainer's settings (core.l2e) for the method l2e."""
        return l2e.L2EParams(teacher=self.l2e_teacher, sample=self.l2e_sample, seed=self.l2e_seed,
                             layers=self.l2e_layers, epochs=self.l2e_epochs, buckets=self.l2e_buckets,
                             lr=self.l2e_lr)

    @property
    def stored_methods(self) -> tuple[str, ...]:
        """Return the methods computed by backward passes and stored in `saliency/`: the named methods that are not
        derived, then the base method of each derived one (`lafa` needs `grad_l2`)."""
        out = [m for m in self.methods if not _is_derived(m)]
        for m in self.derived_methods:
            if ATTRIBUTION_METHODS[m].base not in out:
                out.append(ATTRIBUTION_METHODS[m].base)
        return tuple(out)

    @property
    def derived_methods(self) -> tuple[str, ...]:
        """Return the named methods derived from stored scores after the run is built (no backward pass)."""
        return tuple(m for m in self.methods if _is_derived(m))

    def fingerprinted(self) -> dict[str, Any]:
        """Return the settings that determine the results, as a plain dict (derived methods are not part of it)."""
        out = asdict(self)
        for name in ("batch_size", "chunk_size", "device", "k", "include_special"):
            out.pop(name)
        out["methods"] = list(self.stored_methods)
        if "input_marginalization" not in self.methods and self.l2e_teacher_if_used != "input_marginalization":
            # keeps the fingerprints of runs without the method unchanged
            for name in ("im_mlm", "im_top_n", "im_cum_prob"):
                out.pop(name)
        for name in [k for k in out if k.startswith("l2e_")]:
            out.pop(name)  # as one entry below, and only with l2e: other runs' fingerprints stay unchanged
        if l2e.NAME in self.methods:
            out["l2e"] = self.l2e_params().as_dict()
        if self.truncation == "head":
            out.pop("truncation")  # keeps the fingerprints of runs from before the setting unchanged
        return out

    @property
    def l2e_teacher_if_used(self) -> str | None:
        """Return the l2e teacher when the method l2e is asked for, else None."""
        return self.l2e_teacher if l2e.NAME in self.methods else None

    def method_options(self, candidate_probs: np.ndarray | None = None,
                       student: "l2e.Student | None" = None) -> dict[str, dict[str, Any]]:
        """Return the per-method keyword options for `forward_and_attribute` (`student`: l2e's trained student)."""
        return {"integrated_gradients": {"n_steps": self.ig_steps},
                "input_marginalization": {"mlm_dir": self.im_mlm, "top_n": self.im_top_n,
                                          "cum_prob": self.im_cum_prob, "candidate_probs": candidate_probs},
                l2e.NAME: {"student": student}}


def check_teacher(name: str) -> None:
    """Raise ValueError unless `name` is a registered method that can teach l2e (computed per batch: not derived,
    not learned); the message names the methods that can."""
    teachers = [m for m, method in ATTRIBUTION_METHODS.items() if not method.derived and not method.learned]
    if name not in ATTRIBUTION_METHODS:
        raise ValueError(f"Unknown l2e teacher '{name}'. Known methods that can teach l2e: {', '.join(teachers)}.")
    if name not in teachers:
        raise ValueError(f"'{name}' cannot teach l2e: a teacher must be computed per batch of examples. Use one of "
                         f"{', '.join(teachers)}.")


def _is_derived(method: str) -> bool:
    return method in ATTRIBUTION_METHODS and ATTRIBUTION_METHODS[method].derived


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """Where the chunks are attributed; never part of the fingerprint (every engine writes the same chunks).

    local: in this process, one chunk after another. ray: on a pool of Ray actors (core.ray_engine), each loading
    the model once; `ray_address` joins an existing cluster (None starts a local Ray instance with this machine's
    cores), `ray_workers` is the number of actors (None: one per GPU of the cluster, else one per CPU).
    """

    name: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.name!r}")
        if self.ray_workers is not None and (isinstance(self.ray_workers, bool) or self.ray_workers < 1):
            raise ValueError(f"ray_workers must be an integer >= 1, got {self.ray_workers!r}")


@dataclass
class PrecomputeResult:
    """Where the run lives and how it went (`derived`: the derived methods computed or found in the run)."""

    run_path: Path
    reused: bool
    manifest: dict[str, Any]
    derived: tuple[str, ...] = ()


def _chunk_path(partial: Path, index: int) -> Path:
    return partial / "chunks" / f"{index:06d}.npz"


def attribute_chunk(loaded: LoadedModel, texts: list[str], settings: PrecomputeSettings,
                    candidate_probs: np.ndarray | None = None,
                    student: "l2e.Student | None" = None) -> dict[str, np.ndarray]:
    """Return the chunk's arrays: ragged tokens + offsets + per-method scores, logits and [CLS] per example.

    Examples are batched in length order so batches carry little padding; results come back in input order.
    `candidate_probs` is input marginalization's candidate distribution when no MLM is set; when it is
    needed and missing, the token frequencies of this chunk's texts are used (precompute passes the dataset's).
    `student` is l2e's trained student (core.l2e), needed when l2e is one of the methods.
    """
    enc = encode(loaded.tokenizer, texts, settings.max_length, settings.truncation, offsets=True)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error shows up at once
    pad_id = loaded.tokenizer.pad_token_id or 0
    n = len(texts)
    logits = np.zeros((n, loaded.num_labels), dtype=np.float32)
    cls = None
    scores = {m: [None] * n for m in settings.stored_methods}
    if "input_marginalization" in settings.methods and not settings.im_mlm and candidate_probs is None:
        candidate_probs = dataset_token_distribution(loaded.tokenizer, texts, settings.max_length)
    options = settings.method_options(candidate_probs, student)
    for start in range(0, n, settings.batch_size):
        idx = order[start:start + settings.batch_size]
        batch = {**pad_batch(enc, idx, pad_id),
                 "special_tokens_mask": pad_sequences([enc["special_tokens_mask"][i] for i in idx], 1)}
        batch = {k: v.to(loaded.device, non_blocking=True) for k, v in batch.items()}
        result = forward_and_attribute(loaded, batch, list(settings.stored_methods), settings.target_class,
                                       options)
        logits[idx] = result.logits.cpu().numpy()
        batch_cls = result.cls.cpu().numpy()
        if cls is None:
            cls = np.zeros((n, batch_cls.shape[1]), dtype=np.float32)
        cls[idx] = batch_cls
        for method, values in result.attributions.items():
            values = values.float().cpu().numpy()
            for row, i in enumerate(idx):
                scores[method][i] = values[row, :lengths[i]]
    offsets = [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in enc["offset_mapping"]]
    truncated = np.asarray(enc["truncated"], dtype=bool)  # content tokens were dropped (either side)
    arrays = {
        "token_ids": np.concatenate([np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]),
        "lengths": lengths.astype(np.int64),
        "truncated": truncated,
        "char_starts": np.concatenate([o[:, 0] for o in offsets]),
        "char_ends": np.concatenate([o[:, 1] for o in offsets]),
        "logits": logits,
        "cls": cls,
    }
    for method in settings.stored_methods:
        arrays[f"scores__{method}"] = np.concatenate(scores[method]).astype(np.float32)
    return arrays


def write_chunk(partial: Path, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write chunk `index` of the run being built in `partial`, atomically (every engine writes through here)."""
    atomic_save_npz(_chunk_path(partial, index), **arrays)


def _load_chunk(path: Path, methods: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Return a finished chunk's arrays, or None when it is missing or unreadable (it is then recomputed)."""
    if not path.exists():
        return None
    try:
        arrays = load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    needed = {"token_ids", "lengths", "truncated", "char_starts", "char_ends", "logits", "cls"} | {f"scores__{m}" for m in methods}
    return arrays if needed <= set(arrays) else None


def _digest_with_stat(path: Path, digest_fn, previous: dict[str, Any] | None) -> tuple[str, str]:
    """Return (content digest, stat signature), reusing a previous digest when the stat signature is unchanged."""
    signature = stat_signature(path)
    if previous and previous.get("stat") == signature and previous.get("digest"):
        return previous["digest"], signature
    return digest_fn(path), signature


def _versions() -> dict[str, str]:
    import captum
    import sklearn
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "captum": captum.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__}


def check_inputs(model_dir: Path, data_path: Path, settings: PrecomputeSettings) -> None:
    """Check everything that needs no model loading (files exist and are readable, methods and device exist, the
    model folder is a classifier carrying no code, the target class is one of its classes); raise ModelLoadError,
    DataLoadError or ValueError naming the problem, so a wrong input fails in a second, not after the model loads."""
    for method in settings.methods:
        get_method(method)
    check_data_file(data_path)
    config = check_classifier_folder(model_dir)
    n_labels = config_num_labels(config)
    if settings.target_class is not None and settings.target_class >= n_labels:
        raise ValueError(f"--target-class {settings.target_class} is outside the model's classes: it must be an "
                         f"integer from 0 to {n_labels - 1}")
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    if l2e.NAME in settings.methods and isinstance(layers, int) and settings.l2e_layers > layers:
        raise ValueError(f"--l2e-layers {settings.l2e_layers} exceeds the classifier's {layers} layers: the l2e "
                         "student copies the classifier's first layers, so it can have at most as many")
    if "input_marginalization" in settings.methods and settings.im_mlm:
        mlm = Path(settings.im_mlm).expanduser()
        if not mlm.is_dir() or not (mlm / "config.json").is_file():
            raise ModelLoadError(f"--im-mlm {mlm} is not a HuggingFace model folder (no config.json). Give a local "
                                 "masked LM folder, or leave --im-mlm out to use the dataset's token frequencies.")
        check_model_folder(mlm, "The --im-mlm folder (masked language model)")
    if settings.device:
        check_device(settings.device)


def precompute(model_dir: str | Path, data_path: str | Path, settings: PrecomputeSettings = PrecomputeSettings(),
               force: bool = False, progress: bool = True, stop_after_chunks: int | None = None,
               projection: bool = False, engine: Engine = Engine(), warnings: bool = False) -> PrecomputeResult:
    """Compute (or reuse) the run for this model, data and settings and return where it is stored.

    `warnings=True` (the CLI's default) also stores the Summary page's dataset warnings (core.dataset_warnings)
    unless stored already, so a run's first open does not compute them (about 30 s at 100,000 examples).

    `projection=True` (the CLI's default) then stores the Map page's default map (UMAP of the default
    representation of the whole run, see core.projection) unless it is stored already, so the first Map is not
    blank; it is a derived file outside the manifest, so the run's fingerprint and file hashes do not change.

    A second identical precompute waits for the first (a lock per run) and then reuses its run; work folders
    left by killed precomputes are removed first (see core.store.clean_stale_work).
    `stop_after_chunks` simulates an interruption (raises KeyboardInterrupt) after that many new chunks.
    The derived methods of `settings` are then computed from the stored scores (or read back) into `derived/`.
    `engine` picks where the chunks are computed (see Engine); the run is the same whichever computes it.
    """
    if engine.name == "ray" and l2e.NAME in settings.methods:
        raise ValueError("--method l2e runs on the local engine only (the student is trained in this process before "
                         "the chunks are computed): leave --engine out.")
    result = _precompute(model_dir, data_path, settings, force, progress, stop_after_chunks, engine)
    if settings.derived_methods:
        run = open_run(result.run_path)
        for method in settings.derived_methods:
            run.derive(method)
        result = replace(result, derived=settings.derived_methods)
    if projection:
        build_default_projection(result.run_path, progress)
    if warnings:
        store_dataset_warnings(result.run_path, progress)
    return result


def _percent_bar(desc: str, progress: bool):
    """Return a tqdm bar over 0-100% and a `report(fraction, message)` callback that moves it (the progress
    signature of core.projection and core.dataset_warnings)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", disable=not progress, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        bar.set_postfix_str(message)

    return bar, report


def store_dataset_warnings(run_path: Path, progress: bool = True) -> dict:
    """Store the dataset warnings of the run at `run_path` with the dashboard's settings unless stored already;
    return the report (core.dataset_warnings.load_or_compute)."""
    from core import dataset_warnings

    bar, report = _percent_bar("Dataset warnings", progress)
    with bar:
        result = dataset_warnings.load_or_compute(open_run(run_path), progress=report)
        bar.n = 100
        bar.refresh()
    return result


def build_default_projection(run_path: Path, progress: bool = True) -> Path:
    """Store the default map of the run at `run_path` (core.projection) unless stored already; return its file."""
    from core.projection import DEFAULT_PROJECTION_METHOD, build_default_projection as build, describe_estimate

    run = open_run(run_path)
    n = run.n_examples
    if progress:
        print(f"Default map: UMAP of {n:,} examples ({describe_estimate(n, DEFAULT_PROJECTION_METHOD)} on a 2-core "
              "CPU; skip with --no-projection, the Map page then computes it on first visit)", file=sys.stderr)
    bar, report = _percent_bar("Map (UMAP)", progress)
    with bar:
        file, computed = build(run, report)
        if not computed:
            bar.n = 100
            bar.set_postfix_str("already stored")
    return file


def _precompute(model_dir: str | Path, data_path: str | Path, settings: PrecomputeSettings, force: bool,
                progress: bool, stop_after_chunks: int | None, engine: Engine) -> PrecomputeResult:
    t_start = time.perf_counter()
    model_dir, data_path = Path(model_dir).expanduser().resolve(), Path(data_path).expanduser().resolve()
    check_inputs(model_dir, data_path, settings)
    _, resumable = clean_stale_work()
    loaded = load_classifier(model_dir, device=settings.device)
    data = load_dataset(data_path, loaded.id2label, settings.text_col, settings.label_col, settings.split_col,
                        settings.limit, settings.sample, settings.seed)
    t_loaded = time.perf_counter()
    model_digest, model_stat = _digest_with_stat(model_dir, directory_digest, None)
    data_digest, data_stat = _digest_with_stat(data_path, file_digest, None)
    fingerprint = run_fingerprint(model_digest, data_digest, settings.fingerprinted())
    final = runs_dir() / fingerprint[:16]
    if not force and (reused := _reuse(final)) is not None:
        return reused
    others = [p for p in resumable if p.name != f".partial-{fingerprint[:16]}"]
    if others:
        size = sum(folder_size(p) for p in others) / 1e6
        print(f"note: {len(others)} interrupted precompute(s) keep {size:.1f} MB in {runs_dir()}/.partial-*: run "
              "the same command again to resume, or delete the folder.", file=sys.stderr)
    from filelock import Timeout

    lock = run_lock(final.name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"Another precompute is building this run ({final}); waiting for it to finish...", file=sys.stderr)
        lock.acquire()
    try:
        if not force and (reused := _reuse(final)) is not None:
            return reused
        return _compute(loaded, data, settings, final, fingerprint, force, progress, stop_after_chunks, engine, {
            "fingerprint": fingerprint,
            "model": {"path": str(model_dir), "digest": model_digest, "stat": model_stat, "name": model_dir.name,
                      "id2label": {str(i): n for i, n in loaded.id2label.items()},
                      "architecture": type(loaded.model).__name__},
            "data": {"path": str(data_path), "digest": data_digest, "stat": data_stat,
                     "skipped": data.skipped, "label_mapping": data.label_mapping},
            "timings": {"load_seconds": round(t_loaded - t_start, 3)},
        }, t_start)
    finally:
        lock.release()


def _reuse(final: Path) -> PrecomputeResult | None:
    """Return the finished run at `final` as a reused result, or None when there is none or it fails its check
    (manifest schema, sizes and every file's sha256: a damaged run is recomputed, never reused)."""
    if not final.exists():
        return None
    try:
        run = open_run(final, verify=True)
    except CacheError as exc:
        print(f"Existing run at {final} is unusable ({exc}); recomputing it.", file=sys.stderr)
        return None
    return PrecomputeResult(final, reused=True, manifest=run.manifest)


def _compute(loaded: LoadedModel, data: LoadedData, settings: PrecomputeSettings, final: Path, fingerprint: str,
             force: bool, progress: bool, stop_after_chunks: int | None, engine: Engine, manifest: dict[str, Any],
             t_start: float) -> PrecomputeResult:
    """Attribute every chunk not finished yet (the run's lock is held), assemble and publish the run."""
    from tqdm.auto import tqdm

    partial = runs_dir() / f".partial-{fingerprint[:16]}"
    state = {"fingerprint": fingerprint, "examples": len(data.frame), "chunk_size": settings.chunk_size}
    state_path = partial / "state.json"
    if force or not state_path.exists() or json.loads(state_path.read_text()) != state:
        shutil.rmtree(partial, ignore_errors=True)
        atomic_write_json(state_path, state)

    texts = data.frame["text"].tolist()
    candidate_probs = None
    if "input_marginalization" in (*settings.methods, settings.l2e_teacher_if_used) and not settings.im_mlm:
        candidate_probs = dataset_token_distribution(loaded.tokenizer, texts, settings.max_length)
    student = None
    if l2e.NAME in settings.methods:
        student, manifest["l2e"] = train_l2e(loaded, data, settings, partial / l2e.FOLDER, candidate_probs, progress)
        manifest["timings"].update({"l2e_teacher_seconds": manifest["l2e"]["teacher_seconds"],
                                    "l2e_train_seconds": manifest["l2e"]["train_seconds"]})
    n = len(texts)
    n_chunks = (n + settings.chunk_size - 1) // settings.chunk_size
    bounds = [(c * settings.chunk_size, min(n, (c + 1) * settings.chunk_size)) for c in range(n_chunks)]
    # finished chunks (written by any engine) are skipped: this is how an interrupted precompute resumes
    missing = [c for c in range(n_chunks) if _load_chunk(_chunk_path(partial, c), settings.stored_methods) is None]
    desc = "L2E student" if settings.stored_methods == (l2e.NAME,) else "Saliency"
    with tqdm(total=n, desc=desc, unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        resumed = n - sum(bounds[c][1] - bounds[c][0] for c in missing)
        if resumed:
            bar.set_postfix_str("resumed")
            bar.update(resumed)
        t0 = time.perf_counter()
        if engine.name == "ray":
            from core.ray_engine import compute_chunks

            computed, engine_label, engine_timings = compute_chunks(
                loaded.model_dir, texts, bounds, missing, partial, settings, candidate_probs, engine, bar,
                stop_after_chunks)
        else:
            computed, engine_label, engine_timings = 0, "local", {}
            for c in missing:
                if stop_after_chunks is not None and computed >= stop_after_chunks:
                    raise KeyboardInterrupt(f"stopped after {computed} chunks (test hook)")
                lo, hi = bounds[c]
                write_chunk(partial, c, attribute_chunk(loaded, texts[lo:hi], settings, candidate_probs, student))
                computed += 1
                bar.update(hi - lo)
        compute_seconds = time.perf_counter() - t0  # resumed chunks cost (almost) nothing
    examples_computed = sum(bounds[c][1] - bounds[c][0] for c in missing)

    chunk_paths = [_chunk_path(partial, c) for c in range(n_chunks)]
    manifest["timings"].update({"engine": engine_label, **engine_timings,
                                "compute_seconds": round(compute_seconds, 3), "chunks_computed": computed,
                                "chunks_resumed": n_chunks - computed, "examples_computed": examples_computed})
    run_path = _assemble(loaded, data, chunk_paths, settings, final, manifest, t_start,
                         partial / l2e.FOLDER if student is not None else None)
    shutil.rmtree(partial, ignore_errors=True)
    run = open_run(run_path)
    return PrecomputeResult(run_path, reused=False, manifest=run.manifest)


def train_l2e(loaded: LoadedModel, data: LoadedData, settings: PrecomputeSettings, folder: Path,
              candidate_probs: np.ndarray | None = None, progress: bool = True) -> tuple[l2e.Student, dict[str, Any]]:
    """Train l2e's student and store it in `folder` (or read it back when a resumed precompute stored it already);
    return (student, what the manifest records about it).

    The teacher method is computed, like any method of the run, on the seeded sample of the training split
    (core.l2e.training_rows); the student learns its maps for the run's targets (the predicted class, or
    `target_class`). Three progress bars: teacher, training, then (in the caller) the student over every example.
    """
    from tqdm.auto import tqdm

    params = settings.l2e_params()
    info_path = folder / l2e.TRAINING_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            if info.get("params") == params.as_dict():
                return l2e.load_student(folder, input_embedding_matrix(loaded), loaded.device), info
        except (ValueError, OSError):
            pass  # damaged: trained again below
    shutil.rmtree(folder, ignore_errors=True)
    rows, source = l2e.training_rows(data.frame["split"].tolist(), params)
    texts = data.frame["text"].iloc[rows].tolist()
    teacher_settings = replace(settings, methods=(params.teacher,))
    lists, maps, logits = [], [], []
    t0 = time.perf_counter()
    with tqdm(total=len(texts), desc=f"L2E teacher ({params.teacher})", unit="ex", disable=not progress,
              dynamic_ncols=True) as bar:
        for lo in range(0, len(texts), settings.chunk_size):
            arrays = attribute_chunk(loaded, texts[lo:lo + settings.chunk_size], teacher_settings, candidate_probs)
            bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
            lists += np.split(arrays["token_ids"].astype(np.int64), bounds[1:-1])
            maps += np.split(arrays[f"scores__{params.teacher}"], bounds[1:-1])
            logits.append(arrays["logits"])
            bar.update(len(arrays["lengths"]))
    teacher_seconds = time.perf_counter() - t0
    targets = (np.full(len(rows), settings.target_class) if settings.target_class is not None
               else np.concatenate(logits).argmax(axis=1))
    student = l2e.build_student(loaded.model, loaded.num_labels, params)
    with tqdm(total=1, desc="L2E training", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        def report(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        log = l2e.train_student(student, lists, maps, targets, params, loaded.tokenizer.pad_token_id or 0, report)
    info = {"params": params.as_dict(), "sample_rows": int(len(rows)), "sampled_from": source,
            "teacher_seconds": round(teacher_seconds, 3), "train_seconds": log.seconds, "training": log.as_dict(),
            "student_parameters": int(sum(p.numel() for p in student.parameters()))}
    l2e.save_student(student, folder, params, {"classifier": str(loaded.model_dir),
                                               "max_length": settings.max_length, "truncation": settings.truncation})
    np.save(folder / l2e.SAMPLE_FILE, rows, allow_pickle=False)
    atomic_write_json(info_path, info)  # written last: marks the stored student complete for a resume
    return student, info


def _assemble(loaded: LoadedModel, data: LoadedData, chunk_paths: list[Path], settings: PrecomputeSettings,
              final: Path, manifest: dict[str, Any], t_start: float, student_folder: Path | None = None) -> Path:
    """Write the run folder from its chunk files in a staging folder and publish it atomically; return its path.

    Chunks are streamed into memory-mapped arrays one at a time, so memory stays bounded by one chunk
    (plus the per-example arrays) however large the dataset. `student_folder` (l2e's stored student) is copied
    into the run as `l2e/`.
    """
    staging = final.parent / f".staging-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for folder in ("saliency", "tokens"):
        (staging / folder).mkdir(parents=True)
    if student_folder is not None:
        shutil.copytree(student_folder, staging / l2e.FOLDER,
                        ignore=lambda _, names: [n for n in names if n.startswith(".")])
    t0 = time.perf_counter()
    per_example: dict[str, list[np.ndarray]] = {"lengths": [], "truncated": [], "logits": []}
    for path in chunk_paths:
        with np.load(path, allow_pickle=False) as chunk:
            for name in per_example:
                per_example[name].append(chunk[name])
            hidden = chunk["cls"].shape[1]
    lengths = np.concatenate(per_example["lengths"])
    row_ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_ptr[1:])
    np.save(staging / "tokens" / "row_ptr.npy", row_ptr)
    n_tokens, n = int(row_ptr[-1]), len(lengths)
    outputs = {
        "token_ids": (staging / "tokens" / "token_ids.npy", np.int32, (n_tokens,)),
        "char_starts": (staging / "tokens" / "char_starts.npy", np.int32, (n_tokens,)),
        "char_ends": (staging / "tokens" / "char_ends.npy", np.int32, (n_tokens,)),
        "cls": (staging / "cls.npy", np.float32, (n, hidden)),
        **{f"scores__{m}": (staging / "saliency" / f"{m}.npy", np.float32, (n_tokens,))
           for m in settings.stored_methods},
    }
    targets = {name: np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
               for name, (path, dtype, shape) in outputs.items()}
    token_pos = example_pos = 0
    for path in chunk_paths:
        with np.load(path, allow_pickle=False) as chunk:
            size = len(chunk["lengths"])
            width = int(chunk["lengths"].sum())
            for name, target in targets.items():
                if name == "cls":
                    target[example_pos:example_pos + size] = chunk[name]
                else:
                    target[token_pos:token_pos + width] = chunk[name]
            token_pos += width
            example_pos += size
    for target in targets.values():
        target.flush()
    del targets
    np.save(staging / "embedding_matrix.npy", input_embedding_matrix(loaded))
    np.save(staging / "ignore_mask.npy", ignored_token_mask(loaded.tokenizer))
    (staging / "vocab.json").write_text(json.dumps(vocabulary(loaded.tokenizer)), encoding="utf-8")

    logits = np.concatenate(per_example["logits"])
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    examples = data.frame.copy()
    examples["pred"] = probs.argmax(axis=1).astype(np.int64)
    examples["correct"] = examples["pred"] == examples["label"]
    examples["n_tokens"] = lengths
    examples["truncated"] = np.concatenate(per_example["truncated"])
    for i in range(loaded.num_labels):
        examples[f"prob_{i}"] = probs[:, i].astype(np.float32)
    examples.to_parquet(staging / "examples.parquet", index=False)

    # the default representations are built into the staging folder, so the first open is fast
    staged = Run(staging, {"settings": {"methods": list(settings.stored_methods)},
                           "model": {"id2label": manifest["model"]["id2label"]}})
    for method in settings.stored_methods:
        for name in ("s1", "s2"):
            staged.representation(RepresentationKey(name, method, settings.k, settings.include_special,
                                                    DEFAULT_UNIT, DEFAULT_WEIGHTING))
        # the whole-word S1 every page reads its terms from
        staged.representation(RepresentationKey("s1", method, settings.k, settings.include_special,
                                                DEFAULT_TERMS_UNIT, DEFAULT_WEIGHTING))
    for name in ("b1", "b2", "b3"):
        staged.representation(RepresentationKey(name, include_special=settings.include_special, unit=DEFAULT_UNIT))
    manifest["timings"]["assemble_seconds"] = round(time.perf_counter() - t0, 3)
    manifest["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 3)
    n = len(examples)
    accuracy = {"overall": float(examples["correct"].mean())}
    if examples["split"].nunique() > 1:
        for split, group in examples.groupby("split"):
            accuracy[str(split)] = float(group["correct"].mean())
    manifest.update({
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {**settings.fingerprinted(), "truncation": settings.truncation,
                     "batch_size": settings.batch_size,
                     "chunk_size": settings.chunk_size, "k": settings.k, "include_special": settings.include_special},
        "counts": {"examples": n, "tokens": int(lengths.sum()), "truncated": int(examples["truncated"].sum()),
                   "per_split": {str(k): int(v) for k, v in examples["split"].value_counts().items()},
                   "per_label": {str(k): int(v) for k, v in examples["label"].value_counts().sort_index().items()}},
        "accuracy": accuracy,
        "device": str(loaded.device) + (f" ({torch.cuda.get_device_name()})" if loaded.device.type == "cuda" else ""),
        "versions": _versions(),
        # throughput of the examples computed by this precompute (None when every chunk was resumed)
        "examples_per_second": (round(manifest["timings"]["examples_computed"]
                                      / max(manifest["timings"]["compute_seconds"], 1e-9), 2)
                                if manifest["timings"]["examples_computed"] else None),
    })
    return publish_run(staging, final, manifest)


def folder_size(path: Path) -> int:
    """Return the total size in bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary(result: PrecomputeResult) -> str:
    """Return a one-screen text summary of a run."""
    m = result.manifest
    t = m["timings"]
    acc = ", ".join(f"{k} {v:.3f}" for k, v in m["accuracy"].items())
    skipped = m["data"]["skipped"]
    computed = t.get("examples_computed", m["counts"]["examples"])  # runs from before the field: all computed
    if not m.get("examples_per_second"):
        speed = "all chunks resumed, none computed"
    elif t["chunks_resumed"]:
        speed = f"{m['examples_per_second']:.1f} examples/s over the {computed} examples computed now"
    else:
        speed = f"{m['examples_per_second']:.1f} examples/s"
    lines = [
        "Saliency Atlas precompute " + ("(reused cached run)" if result.reused else "finished"),
        f"  model      {m['model']['path']}",
        f"  data       {m['data']['path']}",
        f"  examples   {m['counts']['examples']} ({', '.join(f'{k}: {v}' for k, v in m['counts']['per_split'].items())})"
        f"; skipped {skipped['empty_text']} empty texts, {skipped['missing_label']} missing labels;"
        f" {m['counts']['truncated']} truncated at {m['settings']['max_length']} tokens",
        f"  accuracy   {acc}",
        f"  methods    {', '.join(m['settings']['methods'])} (target: "
        f"{'predicted class' if m['settings']['target_class'] is None else m['settings']['target_class']})"
        + (f"; derived from them, no backward pass: {', '.join(result.derived)}" if result.derived else ""),
        f"  time       {t['total_seconds']:.1f} s total, {t['compute_seconds']:.1f} s saliency on {m['device']}"
        + (f" via {t['engine']}" if t.get("engine", "local") != "local" else "") +
        f" ({speed}; {t['chunks_resumed']} chunks resumed)",
        *([f"  l2e        student trained on {m['l2e']['sample_rows']:,} "
           f"{m['l2e']['params']['teacher']} maps ({m['l2e']['sampled_from']}): teacher "
           f"{m['l2e']['teacher_seconds']:.1f} s, training {m['l2e']['train_seconds']:.1f} s "
           f"({m['l2e']['params']['epochs']} epochs, {m['l2e']['params']['layers']} layers)"] if m.get("l2e") else []),
        f"  cache      {result.run_path} ({folder_size(result.run_path) / 1e6:.1f} MB)",
        f"  open it    {open_command(result.run_path)}",
        f"             then http://localhost:8501/?run={result.run_path.name}",
    ]
    return "\n".join(lines)


def open_command(run_path: Path) -> str:
    """Return the shell command, run in the repository root, that starts the dashboard on `run_path`'s cache."""
    import shlex

    from core.store import CACHE_ENV, REPO_ROOT

    cache_root = Path(run_path).resolve().parent.parent
    prefix = "" if cache_root == (REPO_ROOT / "cache").resolve() else f"{CACHE_ENV}={shlex.quote(str(cache_root))} "
    return f"{prefix}.venv/bin/python -m streamlit run app.py"


def _int_option(name: str, meaning: str):
    """Return an argparse `type` that accepts an integer in INT_RANGES[name] (`meaning` says what it counts)."""
    lo, hi = INT_RANGES[name]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {range_text(lo, hi)} ({meaning}), got {text!r}")
        return value

    parse.__name__ = name
    return parse


def _k_option(text: str) -> int | None:
    if text.strip().lower() in ("all", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or an integer >= 1 (salient tokens kept per example), "
                                         f"got {text!r}")
    return value


def _methods_option(text: str) -> tuple[str, ...]:
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if not methods or unknown:
        got = f"unknown method {', '.join(map(repr, unknown))}" if unknown else f"no method named in {text!r}"
        raise argparse.ArgumentTypeError(f"{got}. Known methods (one or more, comma-separated): "
                                         f"{', '.join(ATTRIBUTION_METHODS)}")
    return methods


def _teacher_option(text: str) -> str:
    try:
        check_teacher(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _l2e_sample_option(text: str) -> float | int:
    try:
        return l2e.parse_sample(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float_option(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _probability_option(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _device_option(text: str) -> str:
    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _ArgumentParser(argparse.ArgumentParser):
    """Report a bad option in one line (which option, what it allows) and exit with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
        """Show each default once: not when the help already states it, nor for a None/False default."""

        def _get_help_string(self, action):
            if "(default" in (action.help or "") or action.default is None or action.default is False:
                return action.help
            return super()._get_help_string(action)

    parser = _ArgumentParser(prog="python -m core.precompute", description=__doc__.split("\n\n")[0],
                             formatter_class=HelpFormatter)
    parser.add_argument("--model", help="local folder of a HuggingFace sequence classifier (default: the demo)")
    parser.add_argument("--data", help="CSV, JSONL or parquet file with text and label columns (default: the demo)")
    parser.add_argument("--text-col", default="text", help="column holding the text")
    parser.add_argument("--label-col", default="label", help="column holding the label (ids or the model's names)")
    parser.add_argument("--split-col", default=None, help="optional column holding the split (e.g. train/test)")
    parser.add_argument("--max-length", type=_int_option("max_length", "tokens per example"), default=128,
                        help="tokens per example; longer texts are truncated")
    parser.add_argument("--truncation", default="head", choices=TRUNCATION_SIDES,
                        help="which part of a text longer than --max-length is kept: its first tokens (head), its "
                             "last (tail), or half of each (head+tail)")
    parser.add_argument("--batch-size", type=_int_option("batch_size", "examples per pass"), default=32,
                        help="examples per forward/backward pass")
    parser.add_argument("--chunk-size", type=_int_option("chunk_size", "examples per chunk"), default=512,
                        help="examples per resumable chunk")
    parser.add_argument("--method", "--methods", dest="methods", type=_methods_option, default=("grad_l2",),
                        help=f"comma-separated attribution methods: {', '.join(ATTRIBUTION_METHODS)} "
                             "(default: grad_l2). lafa is derived from the stored grad_l2 without a backward pass "
                             "(grad_l2 is added when missing); adding it to an existing run's methods reuses the run. "
                             "l2e trains a student on the --l2e-teacher's maps of a sample of the train split, then "
                             "predicts every example's map with one forward pass (see the --l2e-* options)")
    parser.add_argument("--target-class", type=_int_option("target_class", "a class id of the model"), default=None,
                        help="attribute this class id instead of each example's predicted class")
    parser.add_argument("--k", type=_k_option, default="all",
                        help="top-k salient tokens per example in S1/S2 built up front ('all' keeps all; others are "
                             "built on demand)")
    parser.add_argument("--include-special", action="store_true",
                        help="keep special tokens and punctuation in the representations")
    parser.add_argument("--ig-steps", type=_int_option("ig_steps", "integration steps"), default=20,
                        help="integration steps for integrated_gradients")
    parser.add_argument("--im-mlm", default=None,
                        help="input_marginalization: local masked-LM folder with the classifier's vocabulary "
                             "(default: the dataset's token frequencies as the candidate distribution)")
    parser.add_argument("--im-top-n", type=_int_option("im_top_n", "candidates per token"), default=10,
                        help="input_marginalization: candidates per token")
    parser.add_argument("--im-cum-prob", type=_probability_option, default=0.95,
                        help="input_marginalization: keep candidates up to this cumulative probability")
    parser.add_argument("--l2e-teacher", type=_teacher_option, default=l2e.DEFAULT_PARAMS.teacher,
                        help="l2e: the method whose maps the student learns (computed on the training sample only)")
    parser.add_argument("--l2e-sample", type=_l2e_sample_option, default=l2e.DEFAULT_PARAMS.sample,
                        help=f"l2e: training examples for the student, a fraction of the train split (0.2 or 20%%, at "
                             f"most {l2e.DEFAULT_PARAMS.max_sample:,} rows; all rows when there is no train split) or "
                             "a number of rows (default: 0.2)")
    parser.add_argument("--l2e-seed", type=_int_option("seed", "the l2e sample and training seed"),
                        default=l2e.DEFAULT_PARAMS.seed, help="l2e: seed of the training sample and of training")
    parser.add_argument("--l2e-layers", type=_int_option("l2e_layers", "student layers"),
                        default=l2e.DEFAULT_PARAMS.layers,
                        help="l2e: transformer layers of the student, copied from the classifier's first layers")
    parser.add_argument("--l2e-epochs", type=_int_option("l2e_epochs", "student training epochs"),
                        default=l2e.DEFAULT_PARAMS.epochs, help="l2e: training epochs of the student")
    parser.add_argument("--l2e-buckets", type=_int_option("l2e_buckets", "saliency buckets"),
                        default=l2e.DEFAULT_PARAMS.buckets,
                        help="l2e: per-example quantile buckets the student labels each token with")
    parser.add_argument("--l2e-lr", type=_positive_float_option, default=l2e.DEFAULT_PARAMS.lr,
                        help="l2e: peak learning rate of the student (AdamW, linear warm-up and decay)")
    parser.add_argument("--limit", type=_int_option("limit", "rows to use"), default=None,
                        help="use only the first N rows")
    parser.add_argument("--sample", type=_int_option("sample", "rows to sample"), default=None,
                        help="use a random sample of N rows (seeded)")
    parser.add_argument("--seed", type=_int_option("seed", "the sampling seed"), default=0, help="seed for --sample")
    parser.add_argument("--device", type=_device_option, default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="cache root: runs go to DIR/runs, the demo to DIR/demo; the same as setting "
                             "$SALIENCY_ATLAS_CACHE (default: $SALIENCY_ATLAS_CACHE, else cache/ in the repository)")
    parser.add_argument("--engine", default="local", choices=ENGINES,
                        help="where the chunks are attributed: in this process (local), or on a pool of Ray actors "
                             "(ray; needs pip install \"ray[data]==2.60.0\"); the run is the same")
    parser.add_argument("--ray-address", metavar="ADDR", default=None,
                        help="--engine ray: join the Ray cluster at ADDR (e.g. auto, or ray://host:10001) instead of "
                             "starting a local Ray instance with this machine's cores")
    parser.add_argument("--ray-workers", metavar="N", type=_int_option("batch_size", "Ray actors"), default=None,
                        help="--engine ray: number of actors, each loading the model once (default: one per GPU of "
                             "the cluster, else one per CPU)")
    parser.add_argument("--force", action="store_true", help="recompute even if the run is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-projection", action="store_true",
                        help="do not store the Map page's default map (UMAP of the whole run, about 2 min for "
                             "100,000 examples on 2 cores); the Map page then computes it on its first visit")
    parser.add_argument("--no-warnings", action="store_true",
                        help="do not store the Summary page's dataset warnings (duplicates, leakage, label noise, "
                             "length, salience shift; about 30 s for 100,000 examples on 2 cores); the Summary page "
                             "then computes them on the run's first open")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run precompute with the given arguments, print the summary; return the exit code."""
    args = _parse_args(argv)
    if args.cache:
        from core.store import CACHE_ENV

        os.environ[CACHE_ENV] = args.cache  # read by core.store.cache_dir() and core.demo.default_cache_root()
    if bool(args.model) != bool(args.data):
        print("error: pass both --model and --data, or neither to build the embedded demo.", file=sys.stderr)
        return 2
    if not args.model:
        from core.demo import ensure_demo

        demo = ensure_demo(progress=not args.quiet)
        args.model, args.data, args.split_col = demo.model_dir, demo.data_path, args.split_col or "split"
    settings = PrecomputeSettings(
        text_col=args.text_col, label_col=args.label_col, split_col=args.split_col, max_length=args.max_length,
        methods=args.methods, target_class=args.target_class, k=args.k, include_special=args.include_special,
        limit=args.limit, sample=args.sample, seed=args.seed,
        ig_steps=args.ig_steps, im_mlm=args.im_mlm, im_top_n=args.im_top_n, im_cum_prob=args.im_cum_prob,
        l2e_teacher=args.l2e_teacher, l2e_sample=args.l2e_sample, l2e_seed=args.l2e_seed,
        l2e_layers=args.l2e_layers, l2e_epochs=args.l2e_epochs, l2e_buckets=args.l2e_buckets, l2e_lr=args.l2e_lr,
        truncation=args.truncation, batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device)
    if args.engine != "ray" and (args.ray_address or args.ray_workers):
        print("error: --ray-address and --ray-workers need --engine ray.", file=sys.stderr)
        return 2
    if args.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print('error: --engine ray needs Ray: pip install "ray[data]==2.60.0" (or leave --engine out to compute '
                  "locally).", file=sys.stderr)
            return 2
    engine = Engine(args.engine, args.ray_address, args.ray_workers)
    try:
        result = precompute(args.model, args.data, settings, force=args.force, progress=not args.quiet,
                            projection=not args.no_projection, engine=engine, warnings=not args.no_warnings)
    except (ModelLoadError, DataLoadError, CacheError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished chunks are kept; run the same command again to resume.", file=sys.stderr)
        return 130
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

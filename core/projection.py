"""Stored 2-D projections (UMAP / t-SNE) of a run: where they live, how they are computed and stored.

One place for the file name, so the precompute (which builds the default map at its end) writes exactly the file
the Map page reads for the default view: the default representation of the run's first attribution method, the
whole run (no slice), UMAP, seed PROJECTION_SEED. Projection files live in the run's `analysis/` folder, a derived
folder (core.store.DERIVED_FOLDERS): not in the manifest, rebuilt when missing or damaged.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core import analysis
from core.representations import RepresentationKey, default_key
from core.store import Run, atomic_write_bytes

PROJECTION_SEED = 0
DEFAULT_PROJECTION_METHOD = "umap"
WHOLE_RUN = analysis.SliceSpec()

# Rough cost on a 2-core CPU (bench/results/dashboard.md: 100,000 rows in about 110 s for either method), plus
# the one-off numba compilation of UMAP in a fresh process.
SECONDS_PER_ROW = 0.0011
FIRST_UMAP_SECONDS = 15

# UMAP (numba) and t-SNE are not safe to run concurrently from several threads of one process.
PROJECTION_LOCK = threading.Lock()


def slice_json(spec: analysis.SliceSpec) -> str:
    """Return a canonical JSON string of a slice spec (a primitive cache key)."""
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def short_hash(text: str) -> str:
    """Return the first 16 hex digits of the sha256 of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def projection_file(run: Run, key: tuple | RepresentationKey, spec_json: str, method: str, seed: int) -> Path:
    """Return where the 2-D coordinates of a run/representation/slice/method/seed are stored (.npy)."""
    key = key if isinstance(key, RepresentationKey) else RepresentationKey(*key)
    return run.analysis_dir() / f"projection-{method}-{key.slug}-{short_hash(spec_json)}-seed{seed}.npy"


def default_projection_key(run: Run) -> RepresentationKey:
    """Return the representation the Map page shows by default: the default one of the run's first method."""
    return default_key(run.methods[0])


def default_projection_file(run: Run) -> Path:
    """Return the file of the default map: default representation, whole run, UMAP, PROJECTION_SEED."""
    return projection_file(run, default_projection_key(run), slice_json(WHOLE_RUN), DEFAULT_PROJECTION_METHOD,
                           PROJECTION_SEED)


# Above analysis.UMAP_SAMPLE_ABOVE rows UMAP is fitted on a sample and places the others with `transform`: about
# 0.25 ms a row on 2 shared cores (1,000,000 rows in 6.4 min; 3.6 min on an idle machine, bench/results/dashboard.md):
# the estimate keeps the slower figure, a bar that ends early is better than one that overruns.
TRANSFORM_SECONDS_PER_ROW = 0.00025


# Above analysis.TSNE_MAX_POINTS rows t-SNE embeds a sample and places the others with `transform` at about the same
# rate per row as UMAP's; reducing the rows and laying out the sample took 101 s at 1,000,000 rows (5.9 min in all,
# bench/results/dashboard.md).
TSNE_FIT_SECONDS = 100


def estimate_seconds(n_rows: int, method: str) -> float:
    """Return a rough duration in seconds of projecting `n_rows` rows on a 2-core CPU (order of magnitude)."""
    if method == "umap" and n_rows > analysis.UMAP_SAMPLE_ABOVE:
        fit = analysis.UMAP_FIT_ROWS
        return FIRST_UMAP_SECONDS + fit * SECONDS_PER_ROW + (n_rows - fit) * TRANSFORM_SECONDS_PER_ROW
    if method == "tsne" and n_rows > analysis.TSNE_MAX_POINTS:
        return TSNE_FIT_SECONDS + (n_rows - analysis.TSNE_MAX_POINTS) * TRANSFORM_SECONDS_PER_ROW
    return n_rows * SECONDS_PER_ROW + (FIRST_UMAP_SECONDS if method == "umap" else 2)


def describe_estimate(n_rows: int, method: str) -> str:
    """Return e.g. 'about 20 s' or 'about 2 min' for projecting `n_rows` rows."""
    seconds = estimate_seconds(n_rows, method)
    return f"about {max(5, round(seconds / 5) * 5):.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def load_projection(file: Path, n_rows: int) -> np.ndarray | None:
    """Return the stored coordinates in `file`, or None when absent, unreadable or of the wrong shape."""
    try:
        coords = np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return coords if coords.shape == (n_rows, 2) else None


def compute_projection(matrix, method: str, seed: int, file: Path, progress=None) -> np.ndarray:
    """Project the rows of `matrix` to 2-D with `method`, store them in `file` (atomically) and return them.

    The caller holds PROJECTION_LOCK (UMAP and t-SNE must not run concurrently in one process).
    """
    coords = analysis.project_2d(matrix, method, seed=seed, progress=progress).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, coords, allow_pickle=False)
    atomic_write_bytes(file, buffer.getvalue())
    return coords


def build_default_projection(run: Run, progress=None) -> tuple[Path, bool]:
    """Compute and store the default map of `run` unless it is stored already; return (file, computed)."""
    file = default_projection_file(run)
    with PROJECTION_LOCK:
        if load_projection(file, run.n_examples) is not None:
            return file, False
        matrix = run.representation(default_projection_key(run))
        compute_projection(matrix, DEFAULT_PROJECTION_METHOD, PROJECTION_SEED, file, progress)
    return file, True


def warm_up_umap() -> None:
    """Import umap and run a tiny UMAP once, so numba compiles its code before a user asks for a map."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = rng.random((64, 32), dtype=np.float32)
    dense[dense < 0.7] = 0.0
    dense[:, 0] += 0.1  # no empty row: cosine needs a norm
    with PROJECTION_LOCK:  # sparse rows and the cosine metric: the numba code the default map runs
        analysis.project_2d(sp.csr_matrix(dense), "umap", seed=0)


_warm = {"started": False}
_warm_lock = threading.Lock()
# numba's compiler is Python code: while it compiles (15-25 s without its disk cache, see analysis.import_umap) it
# takes the GIL and a core from every page. So it waits until no script has run for this long, i.e. until the user
# is reading a drawn page.
IDLE_BEFORE_WARM_UP_S = 2.0
SCRIPT_THREAD_PREFIX = "ScriptRunner.scriptThread"  # the name Streamlit gives the thread running a page


def scripts_running() -> bool:
    """Return whether a Streamlit page script is running in this process (a thread of Streamlit's is alive)."""
    return any(t.name.startswith(SCRIPT_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


def wait_until_idle(idle_s: float = IDLE_BEFORE_WARM_UP_S, poll_s: float = 0.25,
                    busy: Callable[[], bool] = scripts_running) -> None:
    """Return once `busy()` has been false for `idle_s` seconds in a row (polled every `poll_s`)."""
    quiet_since = time.monotonic()
    while True:
        if busy():
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= idle_s:
            return
        time.sleep(poll_s)


def warm_up_stages() -> list[Callable[[], None]]:
    """Return the steps that load in advance what the pages would otherwise load on first use in this process:
    the compiled kernels (core.kernels), scikit-learn's k-means (its import takes about 1.3 s), the word clouds'
    fonts and colour maps (0.3 s before the first cloud) and UMAP's numba code (warm_up_umap, about 2 s from
    numba's disk cache), then torch and the model loader (core.models: about 1.8 s, which the Sensitivity page
    paid on its first visit); then freeze_long_lived_objects."""
    from core import kernels, plots

    def import_kmeans() -> None:
        import sklearn.cluster  # noqa: F401

    def import_model_loader() -> None:
        import core.models  # noqa: F401

    def draw_a_cloud() -> None:
        plots.wordcloud_image({"warm": 1.0, "up": 0.5}, width=120, height=60)

    return [kernels.warm_up, import_kmeans, draw_a_cloud, warm_up_umap, import_model_loader,
            freeze_long_lived_objects]


def freeze_long_lived_objects() -> None:
    """Collect garbage once, then move every object alive now (the modules, numba's and scikit-learn's objects)
    out of the garbage collector's reach (gc.freeze).

    With torch, numba, scikit-learn and Streamlit loaded the server holds about 320,000 tracked objects, and each
    full collection Python starts by itself walks them all: 0.15 s (two ran during a cold first open; none was
    seen during the timed interactions of bench/dashboard.py), about nothing once they are frozen. Objects made
    later (a page's data) are collected as before."""
    gc.collect()
    gc.freeze()


def warm_up_when_idle(stages: Sequence[Callable[[], None]], idle_s: float = IDLE_BEFORE_WARM_UP_S,
                      busy: Callable[[], bool] = scripts_running) -> None:
    """Run each of `stages` once no page script has run for `idle_s` seconds (wait_until_idle before every stage).

    A stage is not paused midway: it may hold an import lock, numba's compiler lock or PROJECTION_LOCK, which a
    page would then wait for while the stage waited for the page. Each stage waits for the user to be reading a
    drawn page (2 s without a script), so quick successive clicks meet no warm-up at all, and a click made while
    a stage runs shares the cores with that stage only (2 s at most). The whole warm-up takes about 12 s of such
    idle time after the server's first page."""
    for stage in stages:
        wait_until_idle(idle_s, busy=busy)
        stage()


# Work guessed for the user's next step starts sooner than the warm-up: it is a few short jobs (about 0.3 s each
# at 1,000,000 rows), and a page read for a second is a page the user is looking at, not a burst of clicks.
IDLE_BEFORE_PREFETCH_S = 1.0


class IdleQueue:
    """A daemon thread that runs the jobs of the latest `submit`, one at a time, once no page script has run for
    `idle_s` seconds; the next job follows at once while no script has run since the previous one started (nor
    submitted jobs: pages submit as they run), and waits for `idle_s` again otherwise, so a job does not start
    right after a page the user has just asked for, when the next click is likeliest.

    A new `submit` replaces the jobs not started yet: work guessed for a view the user has since left is dropped.
    A job is never paused midway (see warm_up_when_idle), so keep each one short; a failed job is logged and the
    next one runs.
    """

    def __init__(self, name: str, idle_s: float = IDLE_BEFORE_PREFETCH_S,
                 busy: Callable[[], bool] = scripts_running) -> None:
        self.name = name
        self.idle_s = idle_s
        self._busy = busy
        self._jobs: deque[Callable[[], None]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = 0
        self._submitted = False  # a submit since the running job started: a page has just run

    def submit(self, jobs: Sequence[Callable[[], None]]) -> None:
        """Replace the pending jobs with `jobs` (run in order, once the server is idle)."""
        with self._ready:
            self._jobs = deque(jobs)
            self._submitted = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify()

    def pending(self) -> int:
        """Return the number of jobs submitted and not finished (the one running included)."""
        with self._ready:
            return len(self._jobs) + self._running

    def wait_until_done(self, timeout_s: float) -> bool:
        """Return True once every submitted job has finished, False if `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _work(self) -> None:
        after_a_job = False  # the previous job has just finished (no wait on an empty queue since)
        while True:
            with self._ready:
                while not self._jobs:
                    after_a_job = False
                    self._ready.wait()
                page_ran = self._submitted
            if not after_a_job or page_ran or self._busy():  # else the user is still reading: next job at once
                wait_until_idle(self.idle_s, poll_s=min(0.25, self.idle_s / 4), busy=self._busy)
            with self._ready:
                if not self._jobs:  # a submit emptied the list while this waited
                    continue
                job = self._jobs.popleft()
                self._running = 1
                self._submitted = False
            try:
                job()
            except Exception:  # noqa: BLE001  guessed work: a failure only means the page computes it when asked
                logging.getLogger(__name__).warning("%s: a background job failed", self.name, exc_info=True)
            finally:
                with self._ready:
                    self._running = 0
                after_a_job = True


def warm_up_in_background(idle_s: float = IDLE_BEFORE_WARM_UP_S) -> bool:
    """Start warm_up_when_idle(warm_up_stages()) in a daemon thread once per process; return whether this call
    started the thread."""
    with _warm_lock:
        if _warm["started"]:
            return False
        _warm["started"] = True
    threading.Thread(target=_warm_quietly, args=(idle_s,), name="dashboard-warm-up", daemon=True).start()
    return True


def _warm_quietly(idle_s: float) -> None:
    try:
        warm_up_when_idle(warm_up_stages(), idle_s)
    except Exception:  # noqa: BLE001  a failed warm-up only means the first page or map loads its code itself
        pass

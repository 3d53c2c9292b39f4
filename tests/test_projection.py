"""The default map stored by the precompute (core.projection), read by the Map page without recomputing it."""
from __future__ import annotations

import numpy as np
import pytest

from core import analysis, projection, ui
from core import precompute as pc
from core.store import describe_files, list_runs, open_run
from tests.test_pages import map_figure, no_exception, open_page


def precompute_cli(tiny_model_dir, tiny_data_csv, *args) -> str:
    code = pc.main(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--split-col", "split",
                    "--max-length", "16", "--quiet", *args])
    assert code == 0
    (path,) = list_runs()
    return str(path)


def test_default_projection_file_is_the_map_pages_default_view(tiny_run_path):
    run = open_run(tiny_run_path)
    default = ui.View(run=run, stamp=0, spec=analysis.SliceSpec(seed=ui.SAMPLE_SEED), rows=np.arange(16),
                      key=projection.default_key(run.methods[0]), n_clusters=ui.DEFAULT_CLUSTERS)
    page_file = ui.projection_file(run, ui.key_tuple(default.key), default.spec_json, "umap", ui.PROJECTION_SEED)
    assert page_file == projection.default_projection_file(run)


def test_precompute_stores_the_default_map_and_the_page_does_not_recompute(tiny_model_dir, tiny_data_csv,
                                                                          monkeypatch):
    path = precompute_cli(tiny_model_dir, tiny_data_csv)
    run = open_run(path, verify=True)  # the derived analysis/ folder leaves the manifest's hashes valid
    file = projection.default_projection_file(run)
    coords = np.load(file)
    assert coords.shape == (run.n_examples, 2) and coords.dtype == np.float32
    assert not any(rel.startswith("analysis/") for rel in run.manifest["files"])
    assert describe_files(run.path) == run.manifest["files"]
    stamp = file.stat().st_mtime_ns

    def no_projection(*args, **kwargs):
        raise AssertionError("the Map page recomputed the projection the precompute stored")

    monkeypatch.setattr(analysis, "project_2d", no_projection)
    at = open_page("map")
    no_exception(at)
    figure = map_figure(at)
    assert figure["data"] and all("x" in trace for trace in figure["data"])
    assert file.stat().st_mtime_ns == stamp

    # a second precompute reuses the run and the stored map
    assert precompute_cli(tiny_model_dir, tiny_data_csv) == path
    assert file.stat().st_mtime_ns == stamp


def test_no_projection_skips_the_map(tiny_model_dir, tiny_data_csv):
    path = precompute_cli(tiny_model_dir, tiny_data_csv, "--no-projection")
    run = open_run(path, verify=True)
    assert not projection.default_projection_file(run).exists()
    assert not list(run.analysis_dir().glob("projection-*"))


def test_map_without_a_stored_projection_shows_what_it_computes(tiny_run_path, monkeypatch):
    messages = []
    real = analysis.project_2d

    def recorded(X, method, seed=0, progress=None, **kwargs):
        return real(X, method, seed=seed, progress=lambda f, m: (messages.append(m), progress(f, m)), **kwargs)

    monkeypatch.setattr(analysis, "project_2d", recorded)
    import shutil
    from pathlib import Path

    from core.store import runs_dir
    shutil.copytree(tiny_run_path, runs_dir() / Path(tiny_run_path).name)
    at = open_page("map", proj="tsne")
    no_exception(at)
    assert map_figure(at)["data"]
    assert any("t-SNE" in m for m in messages)
    assert not at.get("expandable"), "the progress box is removed once the map is drawn"


@pytest.mark.parametrize("n, text", [(16, "about 5 s"), (100_000, "about 2 min"), (1_000_000, "about 6 min")])
def test_estimate_in_words(n, text):
    assert projection.describe_estimate(n, "tsne") == text


def test_precompute_stores_the_dataset_warnings_and_the_summary_does_not_recompute(tiny_model_dir, tiny_data_csv,
                                                                                   monkeypatch):
    from core import dataset_warnings

    path = precompute_cli(tiny_model_dir, tiny_data_csv, "--no-projection")
    run = open_run(path, verify=True)  # stored in analysis/, outside the manifest's hashes
    assert dataset_warnings.warnings_file(run).exists()

    def no_compute(*args, **kwargs):
        raise AssertionError("the Summary page recomputed the warnings the precompute stored")

    monkeypatch.setattr(dataset_warnings, "compute_warnings", no_compute)
    assert dataset_warnings.load_or_compute(open_run(path))["checks"]


def test_no_warnings_leaves_them_to_the_first_open(tiny_model_dir, tiny_data_csv):
    from core import dataset_warnings

    path = precompute_cli(tiny_model_dir, tiny_data_csv, "--no-projection", "--no-warnings")
    assert not dataset_warnings.warnings_file(open_run(path)).exists()


def test_the_umap_warm_up_waits_until_no_page_script_runs():
    import threading
    import time

    from core.projection import SCRIPT_THREAD_PREFIX, scripts_running, wait_until_idle

    release = threading.Event()
    page = threading.Thread(target=release.wait, name=f"{SCRIPT_THREAD_PREFIX}-test", daemon=True)
    page.start()
    assert scripts_running()
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (wait_until_idle(idle_s=0.3, poll_s=0.02), returned.set()), daemon=True)
    waiter.start()
    time.sleep(0.6)
    assert not returned.is_set()  # a page is still running: no warm-up yet
    released_at = time.monotonic()
    release.set()
    assert returned.wait(5)
    assert time.monotonic() - released_at >= 0.3 - 0.02 - 0.01  # it waited the idle time (less one poll) after the page
    page.join()
    assert not scripts_running()


def test_the_warm_up_runs_each_stage_only_after_the_pages_have_been_idle():
    import threading
    import time

    from core.projection import warm_up_when_idle

    page_running = threading.Event()
    log: list[tuple[str, bool]] = []

    def stage(name: str):
        def run() -> None:
            log.append((name, page_running.is_set()))
            if name == "first":  # a page starts while the first stage runs: the next stage must wait for it
                page_running.set()
        return run

    worker = threading.Thread(target=warm_up_when_idle,
                              args=([stage("first"), stage("second")], 0.2, page_running.is_set), daemon=True)
    worker.start()
    time.sleep(0.6)
    assert log == [("first", False)]  # the page still runs: no second stage
    page_running.clear()
    worker.join(5)
    assert log == [("first", False), ("second", False)]


def test_the_warm_up_stages_start_with_the_kernels_and_end_with_umap_torch_and_a_freeze():
    from core import kernels
    from core.projection import warm_up_stages

    stages = warm_up_stages()
    assert stages[0] is kernels.warm_up and [s.__name__ for s in stages[-3:]] == [
        "warm_up_umap", "import_model_loader", "freeze_long_lived_objects"]
    kernels.warm_up()  # every kernel signature loads (or compiles) without error


def test_freezing_keeps_the_objects_alive_now_out_of_later_collections():
    import subprocess
    import sys

    from core.store import REPO_ROOT

    # in a child process: gc.freeze is process-wide
    code = ("import gc; from core.projection import freeze_long_lived_objects\n"
            "kept = [[i] for i in range(50_000)]\n"
            "before = len(gc.get_objects())\n"
            "freeze_long_lived_objects()\n"
            "assert gc.get_freeze_count() >= 50_000 and len(gc.get_objects()) < before - 50_000\n"
            "later = [[i] for i in range(10)]\n"
            "assert any(o is later for o in gc.get_objects())  # objects made later are tracked as before\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_umap_is_imported_with_numbas_disk_cache_and_numba_is_left_as_it_was():
    import subprocess
    import sys

    from core.store import REPO_ROOT

    code = ("import numba; from numba.core import decorators; njit, jit = numba.njit, numba.jit\n"
            "from core.analysis import import_umap; umap = import_umap()\n"
            "import umap.distances, umap.umap_\n"
            "print(type(umap.distances.euclidean._cache).__name__, type(umap.umap_.compute_membership_strengths._cache)"
            ".__name__)\n"
            "assert numba.njit is njit and numba.jit is jit and decorators.njit is njit\n"
            "print(type(numba.njit(lambda x: x)._cache).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    # umap marks neither function cache=True itself; numba's own decorator is back to no cache by default
    assert out.stdout.split() == ["FunctionCache", "FunctionCache", "NullCache"]


def test_the_idle_queue_runs_only_the_latest_jobs_and_only_while_no_page_runs():
    import threading
    import time

    page_running = threading.Event()
    page_running.set()
    log: list[str] = []

    def job(name: str):
        def run() -> None:
            log.append(name)
            if name == "a":  # a page starts while "a" runs: "b" waits until the pages are idle again
                page_running.set()
        return run

    queue = projection.IdleQueue("test-idle-queue", idle_s=0.2, busy=page_running.is_set)
    queue.submit([job("old")])
    queue.submit([job("a"), lambda: 1 / 0, job("b")])  # replaces "old", not started yet
    time.sleep(0.5)
    assert log == [] and queue.pending() == 3  # a page runs: nothing starts
    page_running.clear()
    time.sleep(0.6)
    assert log == ["a"]  # then the page "a" started holds the rest
    page_running.clear()
    assert queue.wait_until_done(5)
    assert log == ["a", "b"]  # the replaced job never ran; a failing job does not stop the next
    queue.submit([job("c")])
    assert queue.wait_until_done(5) and log == ["a", "b", "c"]  # the thread serves later submits


def test_the_idle_queue_waits_again_after_a_page_ran_during_a_job_and_not_otherwise():
    import threading
    import time

    never_busy = threading.Event()
    queue = projection.IdleQueue("test-idle-queue-gap", idle_s=0.3, busy=never_busy.is_set)
    times: dict[str, float] = {}

    def job(name: str, during=None):
        def run() -> None:
            times[name + " start"] = time.monotonic()
            if during:
                during()
            time.sleep(0.05)
            times[name + " end"] = time.monotonic()
        return run

    # a job that a page's run outlasts: the next one follows at once, the user is still reading
    queue.submit([job("a"), job("b")])
    assert queue.wait_until_done(5)
    assert times["b start"] - times["a end"] < 0.15
    # a page ran (and submitted, as pages do) while a job ran, and ended before it: the next job waits idle_s again
    queue.submit([job("c", during=lambda: queue.submit([job("d")]))])
    assert queue.wait_until_done(5)
    assert times["d start"] - times["c end"] >= 0.3

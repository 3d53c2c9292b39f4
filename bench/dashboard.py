"""Dashboard latency at 100,000 examples, through core/ and through a real browser.

    .venv/bin/python -m bench.dashboard [--rows 100000] [--no-browser] [--no-projections]

Builds (once) a run of `--rows` examples from the demo run's rows with `bench.scaled_run` (real token
distributions and salient terms; see that module for the noise that keeps copies distinct) under cache/bench/, then
measures what the pages do on it:

- first open of the run in a fresh process (what the Summary page needs);
- slice changes (`analysis.apply_slice`);
- recluster (`analysis.cluster_rows` + `cluster_summary`) on S1 with KMeans vs MiniBatchKMeans, timing and inertia;
- nearest-neighbour lookups (`NeighbourIndex`), sparse S1 and dense S2/B3;
- redrawing the map from stored coordinates (`plots.scatter_map` + the JSON Streamlit sends), with and without
  per-point hover texts;
- UMAP and t-SNE of all rows, computed once with progress and stored where the Map page reads them;
- cache size per component;
- in Debian chromium through playwright: server start, first open, a recluster, a slice change, the map drawn
  from stored coordinates and recoloured.

Warm timings are the median of 5 repeats after one warm-up, in one process. Writes bench/results/dashboard.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
import logging
from pathlib import Path

import numpy as np

from bench.scaled_run import scale_run, scaled_run_folder
from core import analysis, plots
from core.precompute import folder_size
from core.representations import RepresentationKey
from core.store import open_run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "dashboard.md"
BENCH_CACHE = REPO / "cache" / "bench"
CHROMIUM = "/usr/bin/chromium"
TARGET_INTERACTION_S = 1.0
TARGET_FIRST_OPEN_S = 3.0


def timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, object]:
    """Return (median seconds over `repeat` calls after one warm-up call, the last result)."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def once(fn: Callable[[], object]) -> tuple[float, object]:
    """Return (seconds, result) of a single call."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def inertia(X, labels: np.ndarray) -> float:
    """Return the k-means objective of an assignment: squared distances of rows to their cluster's mean."""
    total = float(X.multiply(X).sum()) if hasattr(X, "multiply") else float((X * X).sum())
    for c in np.unique(labels):
        members = labels == c
        centre_sum = np.asarray(X[members].sum(axis=0)).ravel()
        total -= float(centre_sum @ centre_sum) / members.sum()
    return total


def ensure_scaled_run(rows: int, seed: int = 0) -> Path:
    """Return the scaled run's folder under cache/bench, building it from the demo run when missing."""
    from core.demo import find_demo_run

    source = find_demo_run()
    if source is None:
        raise SystemExit("No demo run found: run `make demo-data` first.")
    target = scaled_run_folder(BENCH_CACHE, source.name, rows, seed)
    if not (target / "manifest.json").exists():
        print(f"building a {rows:,}-example run from {source} …", flush=True)
        scale_run(open_run(source), rows, BENCH_CACHE, seed=seed)
    return target


def first_open_fresh_process(run_path: Path) -> dict[str, float]:
    """Return import and open timings of a fresh interpreter doing what the Summary page needs."""
    code = (
        "import time, json, sys; t0 = time.perf_counter()\n"
        "from core import analysis, plots; from core.store import open_run\n"
        "t1 = time.perf_counter()\n"
        "run = open_run(sys.argv[1]); ex = run.examples\n"
        "cm = analysis.confusion(ex, run.num_labels); fig = plots.confusion_figure(cm, run.label_names)\n"
        "counts = ex.groupby(['split', 'label']).size().unstack(fill_value=0)\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'imports': t1 - t0, 'open': t2 - t1}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run_path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def core_timings(run_path: Path, projections: bool) -> dict[str, object]:
    """Return every core/ measurement as a dict of named values (seconds unless named otherwise)."""
    from sklearn.cluster import KMeans

    from core import ui

    # core.ui's caches warn once per function when used outside a Streamlit server; that is expected here.
    logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

    out: dict[str, object] = {}
    # derived files from an earlier bench run are removed so first-use costs are measured
    for sub in ("representations", "analysis"):
        shutil.rmtree(run_path / sub, ignore_errors=True)
    fresh = [first_open_fresh_process(run_path) for _ in range(3)]
    out["fresh_imports"] = statistics.median(f["imports"] for f in fresh)
    out["fresh_open"] = statistics.median(f["open"] for f in fresh)

    run = open_run(run_path)
    ex = run.examples
    n = len(ex)
    out["rows"] = n

    s1_key = RepresentationKey("s1", "grad_l2", None)
    reps = {}
    for label, key in (("S1 Grad-L2, k = all (sparse)", s1_key),
                       ("S2 Grad-L2, k = all (dense)", RepresentationKey("s2", "grad_l2", None)),
                       ("B1 PMI bag of words (sparse)", RepresentationKey("b1")),
                       ("B3 [CLS] (dense)", RepresentationKey("b3"))):
        build, matrix = once(lambda key=key: run.representation(key))
        load, _ = timed(lambda key=key: open_run(run_path).representation(key), repeat=3)
        reps[label] = (build, load, matrix)
    out["representations"] = {k: (b, l, getattr(m, "nnz", None)) for k, (b, l, m) in reps.items()}
    S1 = analysis._as_float32(reps["S1 Grad-L2, k = all (sparse)"][2])

    slices = {
        "split = test": analysis.SliceSpec(split=("test",)),
        "predicted negative, misclassified": analysis.SliceSpec(preds=(0,), correctness="misclassified"),
        "contains the word “bad”": analysis.SliceSpec(contains=("bad",)),
        "matches the regex /class_\\d/": analysis.SliceSpec(regex=r"class_\d"),
        "random sample of 10,000": analysis.SliceSpec(sample_size=10_000),
    }
    out["slices"] = {}
    for label, spec in slices.items():
        seconds, rows = timed(lambda spec=spec: analysis.apply_slice(ex, spec))
        out["slices"][label] = (seconds, len(rows))

    out["clusters"] = {}
    for n_clusters in (5, 10, 20):
        seconds, labels = timed(lambda k=n_clusters: analysis.cluster_rows(S1, k, seed=0), repeat=3)
        summary, _ = timed(lambda labels=labels: analysis.cluster_summary(labels, ex, S1, run.vocab, run.ignore_mask,
                                                                         run.label_names), repeat=3)
        km_s, km = timed(lambda k=n_clusters: KMeans(n_clusters=k, n_init="auto", random_state=0).fit(S1), repeat=3)
        km1 = KMeans(n_clusters=n_clusters, n_init="auto", random_state=1).fit(S1)
        out["clusters"][n_clusters] = {"product": seconds, "summary": summary, "kmeans": km_s,
                                       "inertia_kmeans": inertia(S1, km.labels_),
                                       "inertia_kmeans_seed1": inertia(S1, km1.labels_),
                                       "inertia_minibatch": inertia(S1, labels)}
    test_rows = analysis.apply_slice(ex, slices["split = test"])
    seconds, _ = timed(lambda: analysis.cluster_rows(S1[test_rows], 5, seed=0), repeat=3)
    out["cluster_test_slice"] = (seconds, len(test_rows))

    out["neighbours"] = {}
    negatives = np.flatnonzero(ex["label"].to_numpy() == 0)
    for label in ("S1 Grad-L2, k = all (sparse)", "S2 Grad-L2, k = all (dense)", "B3 [CLS] (dense)"):
        matrix = reps[label][2]
        build, index = once(lambda matrix=matrix: analysis.NeighbourIndex(matrix))
        search, _ = timed(lambda index=index: index.search(123, 10))
        filtered, _ = timed(lambda index=index: index.search(123, 10, candidates=negatives))
        out["neighbours"][label] = (build, search, filtered)

    names = dict(enumerate(run.label_names))
    colour = ex["label"].map(names).rename("true label")
    coords = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    import plotly.io as pio

    def redraw(hover):
        figure = plots.scatter_map(coords, ex, colour, hover, "map")
        return pio.to_json(figure, validate=False)

    light_s, light = timed(lambda: redraw(None), repeat=3)
    terms_s, terms = once(lambda: analysis.example_terms(reps["S1 Grad-L2, k = all (sparse)"][2], run.vocab,
                                                   run.ignore_mask, 5))
    texts_s, hover_texts = once(lambda: plots.hover_texts(ex["text"].tolist()))
    hover = [f"{t}<br><b>top terms:</b> {', '.join(w for w, _ in ts)}" for t, ts in zip(hover_texts, terms)]
    full_s, full = timed(lambda: redraw(hover), repeat=3)
    out["map"] = {"light": light_s, "light_mb": len(light) / 1e6, "full": full_s, "full_mb": len(full) / 1e6,
                  "hover_build": terms_s + texts_s}

    if projections:
        import umap  # noqa: F401  imported before the clock starts: the figures exclude the import
        out["projections"] = {}
        spec_json = ui.slice_json(analysis.SliceSpec())
        for method in ("umap", "tsne"):
            marks: list[tuple[float, float, str]] = []
            t0 = time.perf_counter()

            def report(fraction: float, message: str, t0: float = t0, marks: list = marks) -> None:
                if not marks or fraction - marks[-1][1] >= 0.1 or message != marks[-1][2]:
                    marks.append((time.perf_counter() - t0, fraction, message))
                    print(f"  {method} {fraction:4.0%} {message}", flush=True)

            seconds, coords2 = once(lambda method=method, report=report: analysis.project_2d(
                S1, method, seed=ui.PROJECTION_SEED, progress=report))
            file = ui.projection_file(run, ui.key_tuple(s1_key), spec_json, method, ui.PROJECTION_SEED)
            np.save(file, coords2.astype(np.float32), allow_pickle=False)
            load, _ = timed(lambda file=file: np.load(file, allow_pickle=False))
            out["projections"][method] = {"seconds": seconds, "load": load, "progress_updates": len(marks),
                                          "stages": sorted({m for _, _, m in marks})}
            print(f"{method}: {seconds:.1f} s", flush=True)
    out["cache_mb"] = {p.name: (folder_size(p) if p.is_dir() else p.stat().st_size) / 2**20
                       for p in sorted(run_path.iterdir())}
    return out


# ---------------------------------------------------------------- browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_STATE = "document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state')"


def _wait_until_drawn(page, ready: str, timeout_s: float = 300) -> None:
    """Wait until `ready` (a selector for content only the finished run draws) is on screen and the script is idle.

    The app's running/idle attribute alone is not enough: a fast rerun can start and end between two frames.
    """
    page.wait_for_selector(ready, timeout=timeout_s * 1000)
    page.wait_for_function(f"() => ({_STATE}) === 'notRunning'", timeout=timeout_s * 1000, polling=10)


FLOOR_APP = """import streamlit as st
n = st.sidebar.number_input("Number", 1, 100, 5)
st.markdown(f"Accuracy: {n} rows")
st.dataframe({"a": list(range(n))})
"""


def _start_server(script: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """Start `streamlit run script`; return (process, base URL, seconds until it answered its health check)."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_extra}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2):
                return proc, base, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                proc.kill()
                raise RuntimeError(f"streamlit did not start for {script}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def browser_timings(run_id: str, other_run_id: str, rows: int, rows_with_bad: int) -> dict[str, float]:
    """Return seconds for the browser interactions (see module doc), on servers started here.

    `other_run_id` is a second run of the same size, opened once the server has served the first: the first open
    of a run in a server that is already up. The floor is a three-element Streamlit page in the same browser.
    """
    import tempfile

    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})

        def step(name: str, action: Callable[[], None], ready: str) -> None:
            t = time.perf_counter()
            action()
            _wait_until_drawn(page, ready)
            out[name] = time.perf_counter() - t
            print(f"  browser: {name} {out[name]:.2f} s", flush=True)

        def type_into(label: str, value: str) -> Callable[[], None]:
            def act() -> None:
                field = page.locator(f'input[aria-label="{label}"]').first
                field.fill(value)
                field.press("Enter")
            return act

        floor_app = Path(tmp) / "floor.py"
        floor_app.write_text(FLOOR_APP, encoding="utf-8")
        proc, base, _ = _start_server(floor_app, {})
        try:
            step("floor: first open of a three-element page, cold server", lambda: page.goto(base),
                 "text=Accuracy: 5 rows")
            step("floor: rerun of that page after a number input", type_into("Number", "7"),
                 "text=Accuracy: 7 rows")
        finally:
            _stop(proc)

        proc, base, started = _start_server(REPO / "app.py", {"SALIENCY_ATLAS_CACHE": str(BENCH_CACHE)})
        out["server start"] = started
        try:
            step("first open of a run, cold server (Summary page; the server's Python imports included)",
                 lambda: page.goto(f"{base}/?run={other_run_id}"), "text=Accuracy")
            step("first open of another run, server up (Summary page)",
                 lambda: page.goto(f"{base}/?run={run_id}"), "text=Accuracy")

            def clusters_line(k: int, n: int) -> str:  # the page's "**k clusters** of n examples." line
                return f"[data-testid=stMarkdownContainer]:has-text('{k} clusters of {n:,} examples')"

            step("Clusters page, 5 clusters (first visit: S1 read from the run, k-means)",
                 lambda: page.goto(f"{base}/Clusters?run={run_id}"), clusters_line(5, rows))
            step("recluster: 5 → 10 clusters", type_into("Number of k-means clusters", "10"), clusters_line(10, rows))
            step("recluster: 10 → 20 clusters", type_into("Number of k-means clusters", "20"),
                 clusters_line(20, rows))
            step("slice change: contains “bad” (filter + recluster the slice)", type_into("Contains word(s)", "bad"),
                 clusters_line(20, rows_with_bad))
            step("slice change back to all examples (clusters cached)", type_into("Contains word(s)", ""),
                 clusters_line(20, rows))
            step(f"Map page from stored UMAP coordinates ({rows:,} points drawn)",
                 lambda: page.goto(f"{base}/Map?run={run_id}"),
                 "[data-testid=stPlotlyChart] .legendtitletext:has-text('true label')")

            def recolour() -> None:
                page.locator("[data-testid=stSelectbox]").filter(has_text="Colour by").first.click()
                page.get_by_role("option", name="prediction").click()

            step("map redraw: colour by prediction", recolour,
                 "[data-testid=stPlotlyChart] .legendtitletext:has-text('prediction')")
        finally:
            _stop(proc)
            browser.close()
    return out


# ---------------------------------------------------------------- report


FLOOR_OPEN = "floor: first open of a three-element page, cold server"
FLOOR_RERUN = "floor: rerun of that page after a number input"


def browser_floor_ratio(browser: dict[str, float], name: str) -> str:
    """Return "N.Nx the floor" against the trivial page's first open (page loads) or rerun (interactions)."""
    floor = browser[FLOOR_OPEN] if ("first open" in name or "page" in name.lower()) else browser[FLOOR_RERUN]
    return f"{browser[name] / floor:.1f}x the floor"


def verdict(seconds: float, target: float) -> str:
    return "yes" if seconds < target else "**no**"


def write_report(core: dict, browser: dict | None, args: argparse.Namespace, started: float) -> str:
    n = core["rows"]
    lines = [
        "# Dashboard latency at scale", "",
        f"Regenerate: `.venv/bin/python -m bench.dashboard --rows {args.rows}`"
        f"{'' if args.browser else ' --no-browser'}{'' if args.projections else ' --no-projections'} "
        f"({(time.perf_counter() - started) / 60:.0f} min in all on this machine).", "",
        f"Machine: {os.cpu_count()} CPU cores, shared with nothing else during the run. Run: {n:,} examples copied "
        "from the demo run's 8,530 real rows by `bench/scaled_run.py` (each copy's saliency scores × log-normal "
        "noise, σ 0.15; [CLS] jittered by 5% of its norm), so token distributions, salient terms and clusters are "
        "real while no two rows are identical. Texts repeat. Warm timings: median of 5 (3 for the slow ones) after "
        "a warm-up. Target: < 1 s per interaction, < 3 s for the first open.", "",
        "## Summary against the targets", "",
        "| interaction | measured | target met |", "|---|---|---|",
    ]
    first = core["fresh_open"]
    lines.append(f"| first open, fresh process (open run + examples + Summary's tables), Python imports excluded | "
                 f"{first:.2f} s (+ {core['fresh_imports']:.1f} s of Python imports) | "
                 f"{verdict(first, TARGET_FIRST_OPEN_S)} |")
    worst_slice = max(s for s, _ in core["slices"].values())
    lines.append(f"| slice change, slowest of {len(core['slices'])} | {worst_slice:.2f} s | "
                 f"{verdict(worst_slice, TARGET_INTERACTION_S)} |")
    for k, c in core["clusters"].items():
        total = c["product"] + c["summary"]
        lines.append(f"| recluster all {n:,} rows into {k} (k-means + cluster table) | {total:.2f} s | "
                     f"{verdict(total, TARGET_INTERACTION_S)} |")
    worst_nn = max(max(s, f) for _, s, f in core["neighbours"].values())
    lines.append(f"| neighbour lookup, slowest representation | {worst_nn * 1000:.0f} ms | "
                 f"{verdict(worst_nn, TARGET_INTERACTION_S)} |")
    lines.append(f"| map redraw from stored coordinates (figure + JSON, row-id hover) | {core['map']['light']:.2f} s | "
                 f"{verdict(core['map']['light'], TARGET_INTERACTION_S)} |")
    if browser:
        for name, seconds in browser.items():
            if name == "server start" or name.startswith("floor"):
                continue
            target = TARGET_FIRST_OPEN_S if "first open" in name or "first visit" in name else TARGET_INTERACTION_S
            lines.append(f"| browser: {name} | {seconds:.2f} s ({browser_floor_ratio(browser, name)}) | "
                         f"{verdict(seconds, target)} |")

    lines += ["", "## Slices (`analysis.apply_slice` on the examples table)", "",
              "| slice | rows | seconds |", "|---|---|---|"]
    for label, (seconds, rows) in core["slices"].items():
        lines.append(f"| {label} | {rows:,} | {seconds:.3f} |")

    lines += ["", "## Reclustering S1 (Grad-L2, k = all, sparse)", "",
              f"The product (`analysis.cluster_rows`) uses MiniBatchKMeans (batch {analysis.MINIBATCH_SIZE}, "
              f"stopping after {analysis.MINIBATCH_PATIENCE} mini-batches without improvement) above "
              f"{analysis.MINIBATCH_THRESHOLD:,} rows, on the vocabulary columns the rows use, and full KMeans "
              "below; the baseline is scikit-learn's KMeans on the full matrix. Inertia is the k-means objective "
              "of the final assignment (squared distances to the cluster means; lower is better); KMeans with "
              "another seed shows how much it varies anyway.", "",
              "| clusters | product, s | cluster table, s | full KMeans, s | speed-up | "
              "inertia, product | inertia KMeans seed 0 / seed 1 | product vs KMeans |",
              "|---|---|---|---|---|---|---|---|"]
    for k, c in core["clusters"].items():
        lines.append(f"| {k} | {c['product']:.2f} | {c['summary']:.2f} | {c['kmeans']:.2f} | "
                     f"{c['kmeans'] / c['product']:.1f}x | {c['inertia_minibatch']:.0f} | "
                     f"{c['inertia_kmeans']:.0f} / {c['inertia_kmeans_seed1']:.0f} | "
                     f"{c['inertia_minibatch'] / c['inertia_kmeans'] - 1:+.2%} |")
    seconds, rows = core["cluster_test_slice"]
    lines.append(f"\nThe test split alone ({rows:,} rows, 5 clusters): {seconds:.2f} s.")

    lines += ["", "## Nearest neighbours (exact cosine; top 10 of one row)", "",
              "| representation | index build (once per run), s | lookup, ms | lookup among true-negative rows, ms |",
              "|---|---|---|---|"]
    for label, (build, search, filtered) in core["neighbours"].items():
        lines.append(f"| {label} | {build:.2f} | {search * 1000:.1f} | {filtered * 1000:.1f} |")

    m = core["map"]
    lines += ["", "## Map redraw from stored coordinates", "",
              f"`plots.scatter_map` of {n:,} points plus `plotly.io.to_json` (what Streamlit sends to the browser).",
              "", "| hover | figure + JSON, s | JSON size, MB |", "|---|---|---|",
              f"| row id and colour group (the product above {20_000:,} points) | {m['light']:.2f} | "
              f"{m['light_mb']:.1f} |",
              f"| full text + top terms (the product up to 20,000 points) | {m['full']:.2f} | {m['full_mb']:.1f} |",
              "", f"Building the full hover texts for all rows takes another {m['hover_build']:.1f} s (cached per "
              "slice). Full texts make the figure "
              f"{m['full_mb'] / m['light_mb']:.0f}x larger, which the browser then receives and parses on every "
              "redraw; so above 20,000 points the map hovers show the row id and the lasso/box selection lists the "
              "examples."]

    reps = core["representations"]
    lines += ["", "## Representations (built from stored saliency on first use, then read from the run folder)", "",
              "| representation | first build, s | later load, s | non-zeros |", "|---|---|---|---|"]
    for label, (build, load, nnz) in reps.items():
        lines.append(f"| {label} | {build:.2f} | {load:.3f} | {'' if nnz is None else f'{nnz:,}'} |")

    if "projections" in core:
        lines += ["", "## 2-D projections of all rows (computed once, with a progress bar, then stored)", "",
                  "| method | compute, s | progress updates | read back, ms |", "|---|---|---|---|"]
        for method, p in core["projections"].items():
            lines.append(f"| {method} | {p['seconds']:.0f} | {p['progress_updates']} | {p['load'] * 1000:.1f} |")
        lines += ["", f"UMAP above {analysis.UMAP_REDUCE_ABOVE:,} rows runs on a {analysis.REDUCED_DIMS}-dimensional "
                  "truncated SVD of the rows with PCA initialisation. t-SNE (openTSNE, FFT gradients) embeds a seeded "
                  f"sample of {analysis.TSNE_MAX_POINTS:,} rows and places the other "
                  f"{n - analysis.TSNE_MAX_POINTS:,} with openTSNE's `transform`, in batches of "
                  f"{analysis.TRANSFORM_BATCH:,} so the bar moves. Stages reported: "
                  + "; ".join(f"{m}: {', '.join(p['stages'])}" for m, p in core["projections"].items()) + "."]

    cache = core["cache_mb"]
    lines += ["", f"## Cache size of the {n:,}-example run", "", "| part | MB |", "|---|---|"]
    for name, mb in cache.items():
        lines.append(f"| {name} | {mb:.1f} |")
    lines.append(f"| **total** | **{sum(cache.values()):.0f}** |")
    lines += ["", "S1 and B1 are stored sparse (`.npz` CSR); S2, B2 and B3 are dense float32 (n × 384). The "
              "embedding matrix (vocabulary × hidden) is the same size for any number of examples."]

    if browser:
        lines += ["", "## Through the browser (Debian chromium, headless, software rendering)", "",
                  "Timed from the action until the content only the finished run draws is on screen and the script "
                  "is idle. The server is started cold; the projections are already stored. Chromium runs on the "
                  "same 2 cores as the server, so every browser figure includes the browser's own rendering and "
                  "its competition with the server for the CPU; the floor rows (a three-element Streamlit page in "
                  "the same browser) show that fixed cost. The dashboard caps the native thread pools of k-means "
                  "and the projections at all cores but one (`ui.leave_a_core_for_the_browser`).", "",
                  "| step | seconds | against the floor |", "|---|---|---|"]
        for name, seconds in browser.items():
            ratio = "" if name == "server start" or name.startswith("floor") else browser_floor_ratio(browser, name)
            lines.append(f"| {name} | {seconds:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-browser", dest="browser", action="store_false")
    parser.add_argument("--no-projections", dest="projections", action="store_false")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run_path = ensure_scaled_run(args.rows)
    core = core_timings(run_path, args.projections)
    browser = None
    if args.browser:
        other = ensure_scaled_run(args.rows, seed=1)
        browser = browser_timings(run_path.name, other.name, core["rows"],
                                  core["slices"]["contains the word “bad”"][1])
    report = write_report(core, browser, args, started)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report, encoding="utf-8")
    RESULTS.with_suffix(".json").write_text(json.dumps({"core": core, "browser": browser}, indent=1, default=str),
                                            encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

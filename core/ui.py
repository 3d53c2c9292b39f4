"""The Streamlit adapter: the only module in core/ that imports streamlit.

It owns everything pages share: the cached run, the sidebar (run, slice, representation) kept in sync
with the URL's query parameters, cached analyses (clusters, projections, neighbour indexes), and the
messages shown instead of tracebacks. Pages read widgets, call one function here or in core/, and draw.

Caching: opened runs, representation matrices and neighbour indexes are shared objects
(`st.cache_resource`, never mutated); slices, clusters and summaries are `st.cache_data` keyed by
primitives (run path, manifest mtime, representation fields, the slice spec as JSON). 2-D projections
are also written to the run's analysis folder as .npy, so each run/slice/representation is projected once.
"""
from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import streamlit as st

from core import analysis, dataset_warnings, metrics, neighbours, plots
from core.projection import (PROJECTION_LOCK, PROJECTION_SEED, describe_estimate, projection_file,  # noqa: F401
                             short_hash, slice_json, warm_up_in_background)
from core.projection import IdleQueue
from core.projection import compute_projection as _compute_projection
from core.representations import (DEFAULT_K, DEFAULT_REPRESENTATION, DEFAULT_TERMS_UNIT, DEFAULT_UNIT,
                                  DEFAULT_WEIGHTING,
                                  REPRESENTATIONS, UNIT_TITLES, UNITS, WEIGHTING_TITLES, WEIGHTINGS,
                                  RepresentationKey)
from core.store import MANIFEST, REPO_ROOT, CacheError, Run, list_runs, open_run, runs_dir

T = TypeVar("T")

NO_RUN_MESSAGE = (
    "**No cached run found** in `{folder}`.\n\n"
    "Build one first, then reload this page:\n"
    "- the demo (a sentiment set with planted shortcut terms and a small fine-tuned model): `make demo`\n"
    "- your own classifier and data: `python -m core.precompute --model DIR --data FILE`\n\n"
    "Set `SALIENCY_ATLAS_CACHE` to read runs from another cache folder."
)

PAGES: list[tuple[str, str, str]] = [  # (key, title, icon), in navigation order
    ("summary", "Summary", ":material/dashboard:"),
    ("clusters", "Clusters", ":material/workspaces:"),
    ("map", "Map", ":material/scatter_plot:"),
    ("examples", "Examples", ":material/article:"),
    ("neighbours", "Neighbours", ":material/hub:"),
    ("seed_terms", "Seed terms", ":material/format_list_bulleted:"),
    ("sensitivity", "Sensitivity", ":material/science:"),
    ("checks", "Checks", ":material/fact_check:"),
    ("compare", "Compare", ":material/compare_arrows:"),
]

PAGE_FILES: dict[str, str] = {
    "summary": "app.py",
    "clusters": "pages/1_Clusters.py",
    "map": "pages/2_Map.py",
    "examples": "pages/3_Examples.py",
    "neighbours": "pages/4_Neighbours.py",
    "seed_terms": "pages/5_Seed_terms.py",
    "sensitivity": "pages/6_Sensitivity.py",
    "checks": "pages/7_Checks.py",
    "compare": "pages/8_Compare.py",
}

REGEX_HELP = ("Case-insensitive, searched anywhere in the text. RE2 syntax, run in linear time: Python's syntax "
              "without lookarounds or backreferences; \\w, \\d and \\b are ASCII-only (\\pL: any letter).")
CORRECTNESS_LABELS = {"all": "all examples", "correct": "correct only", "misclassified": "misclassified only"}
DEFAULT_CLUSTERS = 5
MAX_CLUSTERS = 100
CLUSTER_COUNT_KEY = "clusters"  # widget key and query parameter of the number of k-means clusters
# The Compare page's tabs, in order, and their widget key and query parameter
COMPARE_SECTIONS = ("Accuracy and flips", "Terms that rose or fell", "Map agreement", "Cluster flow")
COMPARE_SECTION_KEY = "section"
CLOUDS_SHOWN = 8  # the Clusters page draws the word clouds of this many largest clusters
SAMPLE_SEED = 0
CLUSTER_SEED = 0

# Above this many points the map's hover shows row ids only: full hover texts cost about 300 bytes a point
# (32 MB for 100,000), which the browser takes seconds to receive; see bench/results/dashboard.md.
MAP_FULL_HOVER_MAX = 20_000

# UMAP (numba) and t-SNE are not safe to run concurrently from several sessions' threads.
_PROJECTION_LOCK = PROJECTION_LOCK
# Dataset warnings are computed once per run; a second session waits for the first and reads its file.
_WARNINGS_LOCK = threading.Lock()

_INITIAL_QUERY = "_atlas_initial_query"
_KEEP = "_atlas_keep"
TERM_RANKING_KEY = "term_rank"  # the Clusters page's "Rank terms by", kept across pages and in the URL
DEFAULT_TERM_RANKING = "distinctive"
_SIDEBAR_PARAMS = "_atlas_sidebar_params"


# ============================================================================ pure helpers


def slice_hash(spec: analysis.SliceSpec) -> str:
    """Return a short stable hash of a slice spec, used in file names of cached projections."""
    return short_hash(slice_json(spec))


def key_tuple(key: RepresentationKey) -> tuple[str, str | None, int | None, bool, str, str]:
    """Return the fields of a normalised representation key as a tuple of primitives."""
    key = key.normalised()
    return key.name, key.method, key.k, key.include_special, key.unit, key.weighting


# Every ASCII punctuation character: CommonMark lets a backslash escape each of them, and each can start Markdown
# (links, images, emphasis, code, HTML, tables, headings, lists), LaTeX ($) or a Streamlit directive (:red[…]).
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GFM turns bare http://…, www.… and e-mail addresses into links even when their punctuation is escaped (the
# escapes are resolved before it looks): an invisible WORD JOINER (U+2060) before the ":", "." or "@" stops it.
_AUTOLINK_START = re.compile(r"(?i)(?:(?<=http)|(?<=https)|(?<=www))(?=[:.])|(?=@)")
_WORD_JOINER = "\u2060"


def escape_markdown(text: object) -> str:
    """Return `text` (user or dataset text) as Markdown that renders as the same plain text on one line.

    Every Markdown-rendering call (st.markdown, st.caption, st.info/warning/error/success, titles, widget labels)
    must pass text from a link, a typed field or the data through this (or `inline_code`): otherwise a shared link
    such as `?q=[log in](http://evil.example)` draws a clickable link or an image the browser fetches. Escapes
    every ASCII punctuation character, stops bare URLs and e-mail addresses from becoming links, and turns line
    breaks into spaces.
    """
    text = re.sub(r"[\r\n]+", " ", str(text))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", _AUTOLINK_START.sub(_WORD_JOINER, text))


def coded_groups(codes: pd.Series, names: dict, name: str) -> pd.Series:
    """Return the integer `codes` (aligned with a slice) as a categorical Series called `name` whose groups are
    `names[code]` (the code itself where `names` lacks it; codes sharing a name share a group), same index.

    The Map colours up to a million points by a few groups; as a categorical they are codes plus a few names,
    where a string per row costs the density grid half a second."""
    values = codes.to_numpy()
    keys = np.sort(pd.unique(values))
    texts = [str(names.get(k.item(), k.item())) for k in keys]
    groups = list(dict.fromkeys(texts))
    group_of_key = np.array([groups.index(t) for t in texts], dtype=np.int64)
    positions = group_of_key[np.searchsorted(keys, values)] if len(values) else np.empty(0, dtype=np.int64)
    return pd.Series(pd.Categorical.from_codes(positions, categories=groups), index=codes.index, name=name)


def inline_code(text: object) -> str:
    """Return `text` as a Markdown code span: shown verbatim in a monospace font, whatever backticks it holds
    (the fence is one backtick longer than its longest run of them); line breaks become spaces."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    # CommonMark strips one space from each side when both are there: pad when a side is a backtick or a space.
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def parse_tokens(text: str) -> tuple[str, ...]:
    """Return the non-empty, comma-separated entries of `text`, stripped."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def selected_rows(event: Any, figure: Any) -> np.ndarray:
    """Return the example row ids (int64, unique, sorted) of the points in a plotly selection event.

    Each point's `customdata` holds its row id (see plots.scatter_map); when a point lacks it, the id is
    read from the figure's trace by curve number and point index.
    """
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return np.empty(0, dtype=np.int64)
    ids: list[int] = []
    for point in points or []:
        custom = point.get("customdata")
        if custom is not None:
            ids.append(int(custom[0] if isinstance(custom, (list, tuple)) else custom))
            continue
        curve = point.get("curve_number", point.get("curveNumber"))
        index = point.get("point_index", point.get("pointIndex", point.get("point_number")))
        if curve is not None and index is not None and figure is not None:
            ids.append(int(figure.data[int(curve)].customdata[int(index)]))
    return np.unique(np.asarray(ids, dtype=np.int64))


def selection_region(event: object) -> tuple[tuple[float, float, float, float] | None,
                                              tuple[list[float], list[float]] | None]:
    """Return the (box, lasso) drawn in a plotly selection event, as analysis.rows_in_region takes them: the
    last box as (x0, x1, y0, y1), the last lasso as (xs, ys); None for what was not drawn."""
    try:
        selection = event["selection"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None, None
    box = lasso = None
    boxes, lassos = selection.get("box") or [], selection.get("lasso") or []
    if boxes and len(boxes[-1].get("x", [])) >= 2 and len(boxes[-1].get("y", [])) >= 2:
        xs, ys = boxes[-1]["x"], boxes[-1]["y"]
        box = (float(xs[0]), float(xs[1]), float(ys[0]), float(ys[1]))
    if lassos and len(lassos[-1].get("x", [])) >= 3:
        lasso = ([float(v) for v in lassos[-1]["x"]], [float(v) for v in lassos[-1]["y"]])
    return box, lasso


def take_rows(data: Any, rows: np.ndarray) -> Any:
    """Return the rows `rows` (sorted, unique run row ids) of a matrix or of the examples table: the object itself,
    not a copy, when they are all of its rows (a whole-run slice of 1,000,000 rows would copy hundreds of MB on
    every new clustering or summary). Callers must not modify the result."""
    if len(rows) == data.shape[0]:
        return data
    return data.iloc[rows] if isinstance(data, pd.DataFrame) else data[rows]


def terms_html(terms: Sequence[tuple[str, float]], highlight: set[str] = frozenset()) -> str:
    """Return HTML chips for (term, weight) pairs; terms in `highlight` are drawn in orange and bold."""
    chips = []
    for term, weight in terms:
        shared = term in highlight
        style = ("background:#ffb347;font-weight:700;border:1px solid #e08a00" if shared
                 else "background:#eef1f5;border:1px solid #d5dae1")
        chips.append(f'<span style="{style};border-radius:10px;padding:1px 8px;margin:2px;display:inline-block" '
                     f'title="weight {weight:.3f}">{html.escape(term)}</span>')
    return "".join(chips) if chips else '<span style="color:#888">(no salient terms)</span>'


@dataclass(frozen=True)
class CloudCard:
    """One word cloud of a grid: a bold title, a detail line, the PNG (None: `empty_note` instead) and a warning."""

    title: str
    detail: str
    png: bytes | None
    alt: str
    empty_note: str = "(no salient terms)"
    warning: str = ""


def cloud_grid_html(cards: Sequence[CloudCard], per_row: int = 4) -> str:
    """Return one HTML block laying out word-cloud cards `per_row` to a row, each PNG inlined as a data URI.

    One element instead of three per cloud (columns, markdown, image): the browser re-renders the page's element
    tree for each element a rerun sends, and a recluster's eight clouds were 24 of them.
    """
    import base64

    cells = []
    for card in cards:
        if card.png is None:
            picture = f'<div style="color:#888;font-size:0.875rem">{html.escape(card.empty_note)}</div>'
        else:
            data = base64.b64encode(card.png).decode("ascii")
            picture = (f'<img src="data:image/png;base64,{data}" alt="{html.escape(card.alt)}" '
                       'style="width:100%;height:auto;display:block">')
        warning = (f'<div style="font-size:0.875rem;color:#9a6700;margin-top:4px">⚠️ Possible shortcut: '
                   f'{html.escape(card.warning)}</div>' if card.warning else "")
        cells.append(f'<div style="min-width:0"><div style="margin-bottom:6px"><strong>{html.escape(card.title)}'
                     f'</strong> · {html.escape(card.detail)}</div>{picture}{warning}</div>')
    return (f'<div style="display:grid;grid-template-columns:repeat({per_row},minmax(0,1fr));gap:1rem 1.5rem">'
            + "".join(cells) + "</div>")


def _parse_query(raw: list[str], default: Any) -> Any:
    """Return a query-parameter value converted to the type of `default` (the default when unparsable)."""
    if isinstance(default, list):
        return [v for v in raw if v != ""]
    if not raw:
        return default
    value = raw[-1]
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            return default
    if isinstance(default, float):
        try:
            number = float(value)
        except ValueError:
            return default
        return number if np.isfinite(number) else default
    return value


def _encode_query(value: Any) -> str | list[str]:
    if isinstance(value, (list, tuple)):
        # An empty list is written as one empty value (`?key=`), so "none chosen" survives in a link.
        return [str(v) for v in value] or [""]
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# ============================================================================ cached compute


def run_stamp(path: str | Path) -> int:
    """Return the manifest's mtime in ns: a run rebuilt in place gets a new cache key."""
    try:
        return (Path(path) / MANIFEST).stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource
def _damaged_runs() -> dict[tuple[str, int], str]:
    """Process-wide record of runs that failed their full check: (path, stamp) -> the reason."""
    return {}


@st.cache_resource(show_spinner="Checking the run's files against their recorded sha256 digests (once per server "
                                "process, and only the files changed since their last check)…", max_entries=8)
def _checked_run(path: str, stamp: int) -> Run | str:
    """Return the run, fully verified (schema, sizes, every file's hash), or the reason it is damaged."""
    try:
        # the examples table is read on first use (kept with the run): a second run the Compare page reads needs
        # its predictions only (Run.example_columns), not its texts
        return open_run(path, verify=True)
    except CacheError as exc:
        _damaged_runs()[(path, stamp)] = str(exc)
        return str(exc)


def _open_run(path: str, stamp: int) -> Run:
    """Return the verified run at `path`; raise CacheError with the reason when it is damaged."""
    result = _checked_run(path, stamp)
    if isinstance(result, str):
        raise CacheError(result)
    return result


@dataclass(frozen=True)
class RunEntry:
    """One run folder as the run picker shows it: its id, title, and why it cannot be opened (None when fine)."""

    run_id: str
    title: str
    problem: str | None


@st.cache_data(show_spinner=False, max_entries=16)
def _run_entries(paths_and_stamps: tuple[tuple[str, int], ...]) -> list[RunEntry]:
    entries = []
    for path, _ in paths_and_stamps:
        run_id = Path(path).name
        try:
            run = open_run(path)  # the cheap check (schema, sizes, table columns): no file is hashed
        except CacheError as exc:
            entries.append(RunEntry(run_id, f"⚠️ damaged · {run_id}", str(exc)))
            continue
        when = str(run.manifest.get("created", ""))[:16].replace("T", " ")
        entries.append(RunEntry(run_id, run.title + (f" · {when}" if when else ""), None))
    return entries


def run_entries() -> list[RunEntry]:
    """Return every run folder in the cache, most recent first, each with its title or the reason it is damaged
    (the cheap check for all; the full hash check of runs opened in this process)."""
    paths = list_runs()
    stamps = tuple((str(p), run_stamp(p)) for p in paths)
    damaged = _damaged_runs()
    return [RunEntry(e.run_id, f"⚠️ damaged · {e.run_id}", damaged[key]) if e.problem is None and key in damaged
            else e for e, key in zip(_run_entries(stamps), stamps)]


@st.cache_resource(show_spinner="Loading the representation (built on first use, then kept in the run folder)…",
                   max_entries=6)
def _matrix(path: str, stamp: int, name: str, method: str | None, k: int | None, include_special: bool,
            unit: str = "piece", weighting: str = "none"):
    return _open_run(path, stamp).representation(RepresentationKey(name, method, k, include_special, unit,
                                                                   weighting))


@st.cache_data(show_spinner=False, max_entries=64)
def _slice_rows(path: str, stamp: int, spec_json: str) -> np.ndarray:
    spec = analysis.SliceSpec(**json.loads(spec_json))
    return analysis.apply_slice(_open_run(path, stamp).examples, spec)


def leave_a_core_for_the_browser() -> contextlib.AbstractContextManager:
    """Return a context that caps the native thread pools (OpenMP, BLAS) at all cores but one.

    The dashboard usually runs on the machine whose browser shows it. k-means and UMAP busy-wait on every core
    with OpenMP, and a browser drawing at the same time then stalls them: on 2 cores, a first recluster of 100,000
    rows measured in chromium took 4.7 s with both threads and 2.1 s with one (OMP_NUM_THREADS=1 on the server).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, (os.cpu_count() or 1) - 1))


@st.cache_data(show_spinner="Clustering the slice with k-means…", max_entries=64)
def _cluster_labels(path: str, stamp: int, key: tuple, spec_json: str, n_clusters: int, seed: int) -> np.ndarray:
    rows = _slice_rows(path, stamp, spec_json)
    matrix = take_rows(_matrix(path, stamp, *key), rows)
    with leave_a_core_for_the_browser():
        return analysis.cluster_rows(matrix, n_clusters, seed)


@st.cache_data(show_spinner=False, max_entries=64)
def _label_agreement(path: str, stamp: int, key: tuple, spec_json: str, n_clusters: int, seed: int) -> float:
    # 0.3 s at 1,000,000 rows: kept with the clusters rather than redone on each rerun of the Clusters fragment
    rows = _slice_rows(path, stamp, spec_json)
    labels = _cluster_labels(path, stamp, key, spec_json, n_clusters, seed)
    return analysis.label_agreement(labels, take_rows(_open_run(path, stamp).examples, rows)["label"].to_numpy())


# no spinner: its placeholder costs the browser a render of the page on every recluster, and the summary takes
# 0.1-0.3 s at 1,000,000 rows, less than the 0.5 s after which a spinner shows
@st.cache_data(show_spinner=False, max_entries=64)
def _cluster_summary(path: str, stamp: int, key: tuple, vocab_key: tuple, spec_json: str, n_clusters: int,
                     seed: int, n_terms: int, ranking: str) -> pd.DataFrame:
    run = _open_run(path, stamp)
    rows = _slice_rows(path, stamp, spec_json)
    labels = _cluster_labels(path, stamp, key, spec_json, n_clusters, seed)
    space = run.term_space(vocab_key[4])
    return analysis.cluster_summary(labels, take_rows(run.examples, rows),
                                    take_rows(_matrix(path, stamp, *vocab_key), rows),
                                    space.vocab, space.ignore_mask, run.label_names, n_terms=n_terms,
                                    ranking=ranking, term_weights=_term_idf(path, stamp, vocab_key[4]))


@st.cache_data(show_spinner=False, max_entries=16)
def _term_idf(path: str, stamp: int, unit: str) -> np.ndarray:
    return _open_run(path, stamp).term_space(unit).idf()


@st.cache_data(show_spinner=False, max_entries=32)
def _stored_projection(file: str, mtime_ns: int, n_rows: int) -> np.ndarray:
    coords = np.load(file, allow_pickle=False)
    if coords.shape != (n_rows, 2):
        raise ValueError(f"{file} holds {coords.shape} coordinates, expected ({n_rows}, 2)")
    return coords


def _projection(path: str, stamp: int, key: tuple, spec_json: str, method: str, seed: int) -> np.ndarray:
    """Return the slice's stored coordinates, computing and storing them first (with a progress bar) if needed."""
    run = _open_run(path, stamp)
    rows = _slice_rows(path, stamp, spec_json)
    file = projection_file(run, key, spec_json, method, seed)

    def stored() -> np.ndarray | None:
        try:
            return _stored_projection(str(file), file.stat().st_mtime_ns, len(rows))
        except (OSError, ValueError):
            return None  # absent or damaged: (re)computed below

    coords = stored()
    if coords is not None:
        return coords
    title = PROJECTION_NAMES.get(method, method)
    slot = st.empty()  # the status box goes away once the map is drawn
    with slot.container():
        status = st.status(f"Computing the {title} map of {len(rows):,} points: {describe_estimate(len(rows), method)}"
                           " on a 2-core CPU, once per run, slice and representation, then saved in the run folder",
                           expanded=True)
        bar = status.progress(0.0, text="Waiting for another map being computed in this server to finish…")
    with _PROJECTION_LOCK:
        coords = stored()  # another session (or the precompute) may have stored it while this one waited
        if coords is None:
            matrix = take_rows(_matrix(path, stamp, *key), rows)

            def report(fraction: float, message: str) -> None:
                bar.progress(min(max(fraction, 0.0), 1.0), text=message)

            with leave_a_core_for_the_browser():
                coords = _compute_projection(matrix, method, seed, file, progress=report)
    slot.empty()
    return coords


@st.cache_data(show_spinner="Preparing the hover texts…", max_entries=16)
def _map_hover(path: str, stamp: int, vocab_key: tuple, spec_json: str) -> list[str]:
    run = _open_run(path, stamp)
    ex = run.examples.iloc[_slice_rows(path, stamp, spec_json)]
    names = dict(enumerate(run.label_names))
    terms = _slice_example_terms(path, stamp, vocab_key, spec_json, 5)
    return [f"{text}<br><b>top terms:</b> {', '.join(t for t, _ in row_terms) or '—'}<br>"
            f"row {row} · label {names[lab]} · predicted {names[pred]}"
            for text, row_terms, row, lab, pred in zip(plots.hover_texts(ex["text"].tolist()), terms, ex.index,
                                                        ex["label"], ex["pred"])]


@st.cache_data(show_spinner=False, max_entries=64)
def _slice_example_terms(path: str, stamp: int, vocab_key: tuple, spec_json: str,
                         n: int) -> list[list[tuple[str, float]]]:
    run = _open_run(path, stamp)
    rows = _slice_rows(path, stamp, spec_json)
    space = run.term_space(vocab_key[4])
    return analysis.example_terms(take_rows(_matrix(path, stamp, *vocab_key), rows), space.vocab, space.ignore_mask,
                                  n)


@st.cache_resource(show_spinner="Opening the nearest-neighbour index (a large dense representation builds an "
                                "approximate one once and keeps it in the run folder)…", max_entries=4)
def _neighbour_index(path: str, stamp: int, key: tuple) -> analysis.NeighbourIndex | neighbours.ApproximateIndex:
    run = _open_run(path, stamp)
    rep = RepresentationKey(*key)
    with leave_a_core_for_the_browser():
        return neighbours.neighbour_index(_matrix(path, stamp, *key), run.path, rep.normalised().slug,
                                          run.representation_file(rep))


@st.cache_data(show_spinner="Checking the dataset once for this run (class balance, duplicates across splits, label "
                            "noise, lengths, salience shift); the result is kept in the run folder…", max_entries=8)
def _dataset_warnings(path: str, stamp: int) -> dict:
    with _WARNINGS_LOCK, leave_a_core_for_the_browser():
        return dataset_warnings.load_or_compute(_open_run(path, stamp))


# The Summary page's metrics: every rerun of it (a threshold moved, a class picked) asked for them again, 1 s of
# work at 1,000,000 rows.
@st.cache_data(show_spinner=False, max_entries=64)
def _per_class_report(path: str, stamp: int, spec_json: str) -> pd.DataFrame:
    rows = _slice_rows(path, stamp, spec_json)
    run = _open_run(path, stamp)
    examples = take_rows(run.examples, rows)
    return metrics.per_class_report(examples["label"], examples["pred"], run.label_names)


@st.cache_resource(show_spinner=False, max_entries=4)  # not copied per call: a curve has a point per distinct score
def _binary_curves(path: str, stamp: int, spec_json: str, positive: int) -> metrics.BinaryCurves | None:
    examples = take_rows(_open_run(path, stamp).examples, _slice_rows(path, stamp, spec_json))
    return metrics.binary_curves(examples["label"].to_numpy() == positive,
                                 examples[f"prob_{positive}"].to_numpy(dtype=np.float64))


@st.cache_data(show_spinner=False, max_entries=16)
def _split_label_counts(path: str, stamp: int) -> pd.DataFrame:
    examples = _open_run(path, stamp).examples
    return analysis.split_label_counts(examples["split"], examples["label"].to_numpy())


@st.cache_data(show_spinner=False, ttl=120)
def _staleness(path: str, stamp: int) -> list[str]:
    return _open_run(path, stamp).staleness()


@st.cache_data(show_spinner=False, max_entries=512)
def wordcloud_png(weights: tuple[tuple[str, float], ...], width: int = 400, height: int = 220) -> bytes | None:
    """Return a PNG word cloud of (term, weight) pairs in at most CLOUD_PNG_COLOURS colours, or None when there
    is no positive weight."""
    image = plots.wordcloud_image(dict(weights), width=width, height=height)
    if image is None:
        return None
    from PIL import Image

    # A cloud holds a dozen word colours and their anti-aliased edges on white: a 64-colour palette looks the same
    # and its PNG is 2.6x smaller (eight clouds of a recluster: 79 KB against 206 KB, sent in the page's HTML) and
    # quicker to make (1.1 ms against 2.1 ms a cloud, quantising included); level 1: 2x quicker than the default 6
    palette = image.quantize(colors=CLOUD_PNG_COLOURS, method=Image.Quantize.FASTOCTREE)
    # the octree averages the white background to (254, 254, 254): its entry, the lightest, is set back to white
    colours = np.asarray(palette.getpalette(), dtype=np.int64).reshape(-1, 3)
    lightest = int(colours.sum(axis=1).argmax())
    if colours[lightest].min() >= 250:
        colours[lightest] = 255
        palette.putpalette(colours.astype(np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


CLOUD_PNG_COLOURS = 64


def cluster_cloud_cards(summary: pd.DataFrame, ranking: str) -> list[CloudCard]:
    """Return the word-cloud cards of the CLOUDS_SHOWN largest clusters of `summary` (analysis.cluster_summary,
    largest first), their terms weighted by `ranking`."""
    empty = "(no salient terms)" if ranking == "mean" else "(no salient terms distinctive of it)"
    return [CloudCard(title=f"{'⚠️ ' if cluster.shortcut else ''}Cluster {cluster.cluster}",
                      detail=f"{cluster.size_pct:.1f}% · accuracy {cluster.accuracy:.0%} · {cluster.labels_text}",
                      png=wordcloud_png(tuple(cluster.terms), 400, 220),
                      alt=f"Word cloud of cluster {cluster.cluster}: {cluster.top_terms}", empty_note=empty,
                      warning=cluster.flag_reason if cluster.shortcut else "")
            for cluster in summary.iloc[:CLOUDS_SHOWN].itertuples()]


# Set to 0 to turn off the clusters computed ahead (prefetch_cluster_counts), e.g. on a server shared by many users
# where idle CPU is not free.
PREFETCH_ENV = "SALIENCY_ATLAS_PREFETCH"
_PREFETCH = IdleQueue("dashboard-prefetch")


class _QuietPrefetchThread(logging.Filter):
    """Drop the "missing ScriptRunContext" warning Streamlit logs when the prefetch thread, which has no page to
    draw on, calls a cached function that shows a spinner to pages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != _PREFETCH.name


logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_QuietPrefetchThread())


def prefetch_enabled() -> bool:
    """Return whether clusters are computed ahead while the user reads (PREFETCH_ENV is not "0")."""
    return os.environ.get(PREFETCH_ENV, "1").strip() != "0"


# The Map page's colourings that depend on the slice only (not on a cluster count or typed words): their density
# figures are kept, so a visit or a recolour back sends the stored figure instead of recounting 1,000,000 points
MAP_STATIC_COLOURINGS = ("label", "prediction", "correctness")


PROJECTION_NAMES = {"umap": "UMAP", "tsne": "t-SNE"}  # the Map page's projections, as its controls name them


def map_colour_groups(examples: pd.DataFrame, label_names: Sequence[str], colour: str) -> pd.Series:
    """Return the Map page's colour groups of a slice's examples for one of MAP_STATIC_COLOURINGS (a categorical
    Series named after the colouring, aligned with `examples`)."""
    names = dict(enumerate(label_names))
    if colour == "label":
        return coded_groups(examples["label"], names, "true label")
    if colour == "prediction":
        return coded_groups(examples["pred"], names, "prediction")
    if colour == "correctness":
        return coded_groups(examples["correct"].astype(int), {1: "correct", 0: "misclassified"}, "correctness")
    raise ValueError(f"colour must be one of {MAP_STATIC_COLOURINGS}, got {colour!r}")


@st.cache_data(show_spinner=False, max_entries=16)
def _density_map(path: str, stamp: int, key: tuple, spec_json: str, method: str, colour: str, seed: int,
                 title: str) -> tuple[str, int]:
    # (figure JSON, sampled points): at 1,000,000 rows the grid and the figure took 0.35-0.7 s of each visit
    import plotly.io as pio

    run = _open_run(path, stamp)
    rows = _slice_rows(path, stamp, spec_json)
    examples = take_rows(run.examples, rows)
    colour_by = map_colour_groups(examples, run.label_names, colour)
    coords = _projection(path, stamp, key, spec_json, method, seed)
    grid = analysis.density_grid(coords, colour_by.array)
    sample = grid.sample
    figure = plots.density_map(grid, examples.iloc[sample], colour_by.iloc[sample], coords[sample], title,
                               str(colour_by.name or ""))
    return pio.to_json(figure, validate=False), len(sample)


def map_projection_stored(view: View, method: str) -> bool:
    """Return whether the view's `method` map is stored in the run (so reading it computes nothing)."""
    file = projection_file(view.run, key_tuple(view.key), view.spec_json, method, PROJECTION_SEED)
    try:
        return file.stat().st_size > 0
    except OSError:
        return False


def prefetch_map_jobs(view: View) -> list[Callable[[], Any]]:
    """Return the job that builds the Map page's figure for this view, with the projection and colouring the user
    last chose (else UMAP by true label), when that map is drawn as density from a stored projection (a job
    never starts a projection); else no job."""
    kept = st.session_state.get(_KEEP, {})
    method = kept.get("proj") if kept.get("proj") in PROJECTION_NAMES else "umap"
    colour = kept.get("colour") if kept.get("colour") in MAP_STATIC_COLOURINGS else "label"
    return _density_map_jobs(view, method, [colour])


def _density_map_jobs(view: View, method: str, colours: Sequence[str]) -> list[Callable[[], Any]]:
    # jobs building the view's density figures, only when the Map draws density from a stored projection (a job
    # must never start a projection)
    if len(view.rows) <= analysis.DENSITY_ABOVE or not map_projection_stored(view, method):
        return []
    return [functools.partial(view.density_map, method, colour) for colour in colours]


def prefetch_map_colourings(view: View, method: str) -> list[str]:
    """Queue, from the Map page, the density figures of the view's `method` map in every colouring of
    MAP_STATIC_COLOURINGS (those drawn already are cache hits), for when the user is reading the map; return the
    colourings queued (none when prefetching is off, below DENSITY_ABOVE rows or without a stored projection). At
    1,000,000 rows a recolour to a colouring not built yet costs 0.3-0.4 s of server work before the browser
    draws."""
    jobs = _density_map_jobs(view, method, MAP_STATIC_COLOURINGS) if prefetch_enabled() else []
    if jobs:
        _PREFETCH.submit(jobs)
    return list(MAP_STATIC_COLOURINGS) if jobs else []


def prefetch_cluster_counts(view: View, ranking: str | None, include_current: bool = False,
                            then: Sequence[Callable[[], Any]] = ()) -> list[int]:
    """Queue the clusters of the cluster counts next to the view's (one more, then one fewer) for when the user
    is reading the page, and return those counts (empty when prefetching is off). `include_current` queues the
    view's own count first (a page other than the Clusters page, so that page's first visit is a cache hit).

    Each count's labels go into the caches the pages read (through the View's own methods, so the cache keys are
    the pages'), and unless `ranking` is None (the Map needs labels only) its agreement, summary and word clouds
    too, so a step of the cluster count is a cache hit: at 1,000,000 rows a new count costs 0.8-1.3 s of server
    work, a cached one 0.13 s. Each piece is its own job (the longest, k-means, 0.3-0.5 s at 1,000,000 rows), so a
    click made while one runs waits for that piece at most; the queue is replaced by the next call, so counts
    guessed for a view the user has left are dropped. `then` is queued last (work for a page this one links to).
    """
    if not prefetch_enabled():
        return []
    wanted = ((view.n_clusters,) if include_current else ()) + (view.n_clusters + 1, view.n_clusters - 1)
    counts = [k for k in wanted if 2 <= k <= min(MAX_CLUSTERS, len(view.rows))]
    jobs: list[Callable[[], Any]] = []
    for k in counts:
        ahead = replace(view, n_clusters=k)
        jobs.append(ahead.cluster_labels)
        if ranking is not None:
            summary = functools.partial(ahead.cluster_summary, ranking=ranking)
            jobs += [ahead.label_agreement, summary, lambda summary=summary: cluster_cloud_cards(summary(), ranking)]
    # then the Map page's figure (the next page a user visits), then `then`
    _PREFETCH.submit(jobs + prefetch_map_jobs(view) + list(then))
    return counts


def prefetch(jobs: Sequence[Callable[[], Any]]) -> bool:
    """Queue `jobs` (calls filling the caches a page reads) to run one at a time once the server is idle,
    replacing the work queued before (by this page or another); return whether they were queued (False when
    prefetching is off)."""
    if not prefetch_enabled():
        return False
    _PREFETCH.submit(list(jobs))
    return True


def prefetch_clusters_page(view: View, then: Sequence[Callable[[], Any]] = ()) -> list[int]:
    """Queue, from another page, what the Clusters page draws first for this view (its clusters, table and word
    clouds at the view's count and the term ranking it last showed, else its default) and then the counts one step
    away, for when the user is reading this page. Returns the counts queued (empty when prefetching is off). At
    1,000,000 rows the Clusters page's first visit otherwise computes k-means and its table while the user waits
    (0.6-0.8 s)."""
    kept = st.session_state.get(_KEEP, {}).get(TERM_RANKING_KEY)
    ranking = kept if kept in analysis.TERM_RANKINGS else DEFAULT_TERM_RANKING
    return prefetch_cluster_counts(view, ranking, include_current=True, then=then)


def prefetch_neighbours_page(view: View) -> bool:
    """Queue, from a page that links to the Neighbours page (the Examples page's *Find its neighbours*), the
    exact neighbour index of the view's representation after the Clusters page's work (prefetch_clusters_page),
    for when the user reads the page: at 1,000,000 rows the sparse index's posting lists take 0.3-0.8 s to
    build. A representation whose index would be approximate (a large dense one: built once, in minutes, in a
    child process) is left to the Neighbours page. Returns whether the index was queued."""
    if not prefetch_enabled():
        return False

    def exact_index() -> None:
        matrix = view.matrix()
        if sp.issparse(matrix) or matrix.shape[0] <= neighbours.APPROXIMATE_ABOVE:
            view.neighbour_index()

    prefetch_clusters_page(view, then=[exact_index])
    return True


# ============================================================================ the view


@dataclass(frozen=True)
class View:
    """What the sidebar selected: the run, the slice (as spec and row ids) and the representation."""

    run: Run
    stamp: int
    spec: analysis.SliceSpec
    rows: np.ndarray
    key: RepresentationKey
    n_clusters: int
    regex_error: str | None = None
    terms_unit: str = DEFAULT_TERMS_UNIT
    weighting: str = "none"
    k: int | None = None

    @property
    def path(self) -> str:
        """Return the run folder as a string (a cache key)."""
        return str(self.run.path)

    @property
    def spec_json(self) -> str:
        """Return the slice spec as canonical JSON (a cache key)."""
        return slice_json(self.spec)

    @property
    def vocab_key(self) -> RepresentationKey:
        """Return the S1 key that top terms and word clouds are read from: the sidebar's method, k and weighting,
        in the *Terms shown* unit (whole words by default, whatever the representation is built on)."""
        return RepresentationKey("s1", self.key.method or self.run.methods[0], self.k, unit=self.terms_unit,
                                 weighting=self.weighting).normalised()

    @property
    def method(self) -> str:
        """Return the attribution method chosen in the sidebar."""
        return self.key.method or self.run.methods[0]

    @property
    def examples(self) -> pd.DataFrame:
        """Return the slice's rows of the examples table (index = row id in the run); the run's own table (not a
        copy: do not modify) when the slice holds every row."""
        return take_rows(self.run.examples, self.rows)

    def matrix(self):
        """Return the chosen representation for every example of the run (shared; do not modify)."""
        return _matrix(self.path, self.stamp, *key_tuple(self.key))

    def vocab_matrix(self):
        """Return the S1 vocabulary matrix (R_vocab) for every example of the run (shared; do not modify)."""
        return _matrix(self.path, self.stamp, *key_tuple(self.vocab_key))

    @property
    def vocab(self) -> list[str]:
        """Return the term strings of the columns of `vocab_matrix()` (whole words or word pieces)."""
        return self.run.term_space(self.terms_unit).vocab

    @property
    def ignore_mask(self) -> np.ndarray:
        """Return the bool mask over `vocab` of terms never shown (special tokens, punctuation)."""
        return self.run.term_space(self.terms_unit).ignore_mask

    def presence(self):
        """Return the binary (n x len(vocab)) term-presence matrix of every example of the run (shared)."""
        return self.run.term_space(self.terms_unit).presence

    def term_idf(self) -> np.ndarray:
        """Return each shown term's idf over the run (what distinctive rankings are multiplied by)."""
        return _term_idf(self.path, self.stamp, self.terms_unit)

    def label_name(self, label: int) -> str:
        """Return the class name of a label id."""
        names = self.run.label_names
        return names[label] if 0 <= label < len(names) else str(label)

    def describe(self) -> str:
        """Return the active slice filters in words, e.g. `split test · predicted negative · misclassified`."""
        spec, names = self.spec, self.run.label_names
        parts = []
        if spec.split:
            parts.append("split " + " or ".join(spec.split))
        if spec.labels is not None:
            parts.append("label " + " or ".join(names[i] for i in spec.labels))
        if spec.preds is not None:
            parts.append("predicted " + " or ".join(names[i] for i in spec.preds))
        if spec.correctness != "all":
            parts.append(CORRECTNESS_LABELS[spec.correctness])
        if spec.contains:
            parts.append("contains " + " and ".join(f"“{t}”" for t in spec.contains))
        if spec.regex:
            parts.append(f"matches /{spec.regex}/")
        if spec.sample_size:
            parts.append(f"random sample of {spec.sample_size:,}")
        return " · ".join(parts) if parts else "all examples"

    # ---- cached analyses of this view

    @property
    def clustering_key(self) -> tuple:
        """Return what identifies this view's k-means clustering (run, representation, slice, count, seed): two
        views with the same key have the same clusters, numbered alike."""
        return self.path, self.stamp, key_tuple(self.key), self.spec_json, self.n_clusters, CLUSTER_SEED

    def cluster_labels(self) -> np.ndarray:
        """Return the k-means cluster of each slice row (aligned with `rows`)."""
        return _cluster_labels(*self.clustering_key)

    def label_agreement(self) -> float:
        """Return the adjusted Rand index of the slice's clusters against its true labels (analysis.label_agreement)."""
        return _label_agreement(*self.clustering_key)

    def cluster_summary(self, n_terms: int = 8, ranking: str = "distinctive") -> pd.DataFrame:
        """Return analysis.cluster_summary of the slice's clusters (largest first), terms ranked by `ranking`."""
        return _cluster_summary(self.path, self.stamp, key_tuple(self.key), key_tuple(self.vocab_key),
                                self.spec_json, self.n_clusters, CLUSTER_SEED, n_terms, ranking)

    def projection(self, method: str) -> np.ndarray:
        """Return the slice's (n, 2) coordinates from `method` ("umap" or "tsne"), computed once and stored."""
        return _projection(self.path, self.stamp, key_tuple(self.key), self.spec_json, method, PROJECTION_SEED)

    def map_title(self, method: str) -> str:
        """Return the title of the Map page's `method` map of the slice."""
        return f"{PROJECTION_NAMES.get(method, method)} of {len(self.rows):,} examples · {self.key.label()}"

    def density_map(self, method: str, colour: str) -> tuple[str, int]:
        """Return (the plotly JSON of the Map page's density figure of the slice, coloured by one of
        MAP_STATIC_COLOURINGS, the number of sampled points drawn on it); computed once per view and colouring."""
        return _density_map(self.path, self.stamp, key_tuple(self.key), self.spec_json, method, colour,
                            PROJECTION_SEED, self.map_title(method))

    def map_hover(self) -> list[str] | None:
        """Return each slice row's map hover text (text, top terms, row, label, prediction), or None when the
        slice has more than MAP_FULL_HOVER_MAX rows (the map then shows row ids only)."""
        if len(self.rows) > MAP_FULL_HOVER_MAX:
            return None
        return _map_hover(self.path, self.stamp, key_tuple(self.vocab_key), self.spec_json)

    def example_terms(self, n: int = 5) -> list[list[tuple[str, float]]]:
        """Return the top (term, weight) pairs of each slice row, aligned with `rows`."""
        return _slice_example_terms(self.path, self.stamp, key_tuple(self.vocab_key), self.spec_json, n)

    def terms_of(self, row: int, n: int = 10) -> list[tuple[str, float]]:
        """Return the top (term, weight) pairs of one example (by run row id) from R_vocab."""
        return analysis.example_terms(self.vocab_matrix()[[row]], self.vocab, self.ignore_mask, n)[0]

    def neighbour_index(self) -> analysis.NeighbourIndex | neighbours.ApproximateIndex:
        """Return the cosine index over every example of the run in the chosen representation: exact, or for a
        dense representation above neighbours.APPROXIMATE_ABOVE rows the run's stored approximate index (its
        `approximate` attribute says which)."""
        return _neighbour_index(self.path, self.stamp, key_tuple(self.key))

    def per_class_report(self) -> pd.DataFrame:
        """Return metrics.per_class_report of the slice (per class and averaged precision, recall, F1)."""
        return _per_class_report(self.path, self.stamp, self.spec_json)

    def binary_curves(self, positive: int) -> metrics.BinaryCurves | None:
        """Return metrics.binary_curves of the slice with class `positive` as the positive one (a shared object:
        do not modify it)."""
        return _binary_curves(self.path, self.stamp, self.spec_json, positive)

    def split_label_counts(self) -> pd.DataFrame:
        """Return the run's examples per split (rows) and true label id (columns)."""
        return _split_label_counts(self.path, self.stamp)

    def dataset_warnings(self) -> dict:
        """Return the run's dataset warnings (core.dataset_warnings), computed once per run and stored."""
        return _dataset_warnings(self.path, self.stamp)


@functools.cache
def page_icon() -> Any:
    """Return the tab's icon, drawn here (a magnifier over a map's dots) and served by the app itself.

    A Material icon name would make the browser fetch its image from fonts.gstatic.com on every rerun, which
    fails (and logs an error) on a machine without internet access.
    """
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    for x, y, colour in ((12, 44, "#636efa"), (22, 52, "#ef553b"), (8, 30, "#00cc96"), (50, 52, "#636efa")):
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=colour)
    draw.ellipse((18, 6, 50, 38), outline="#ff4b4b", width=6)
    draw.line((44, 34, 58, 50), fill="#ff4b4b", width=8)
    return icon


def current_view() -> View:
    """Set up the page (wide layout) and draw the shared sidebar; return the view it selects.

    Every page calls this once, first: pages are standalone scripts (Streamlit's pages/ convention), so a
    page opened straight from a shared link builds the same view as one reached through the app. It also queues
    the Clusters page's first view of it (`prefetch_clusters_page`), computed while the page is read; the pages
    that queue other work later in their run (Clusters, the Map's colour by cluster) replace that queue.
    """
    st.set_page_config(page_title="Saliency Atlas", page_icon=page_icon(), layout="wide")
    # Once per server process, in a daemon thread that waits until no page is running: numba compiles UMAP's code
    # (15-25 s) before a map is asked for.
    warm_up_in_background()
    view = render_sidebar()
    prefetch_clusters_page(view)
    return view


# ============================================================================ widgets synced with the URL


def _initial_query() -> dict[str, list[str]]:
    """Return the query parameters the session was opened with (captured on its first script run)."""
    if _INITIAL_QUERY not in st.session_state:
        st.session_state[_INITIAL_QUERY] = {k: st.query_params.get_all(k) for k in st.query_params}
    return st.session_state[_INITIAL_QUERY]


def _seed(key: str, default: Any, options: Sequence[Any] | None = None,
          min_value: float | None = None, max_value: float | None = None) -> None:
    """Put a widget's value into session state before it is drawn: its current value, else the value
    remembered from an earlier visit to its page, else the shared link's query parameter, else `default`;
    values no longer valid (an option that vanished with another run, a number out of range) are repaired."""
    st.session_state.setdefault(_KEEP, {})  # where `synced` keeps the value it draws
    value = remembered(key, default)
    if options is not None:
        if isinstance(default, list):
            value = [v for v in (value or []) if v in options]
        elif value not in options:
            value = default if default in options else (options[0] if options else None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if min_value is not None:
            value = max(value, min_value)
        if max_value is not None:
            value = min(value, max_value)
    # Assigned even when unchanged: moving to another page through the sidebar's page links, a widget of the
    # same key is a new widget to Streamlit, which would drop the value it still holds and start the widget at
    # its own default (1 cluster, the first "Built on" option); a value assigned before it is drawn is kept.
    st.session_state[key] = value


def synced(widget: Callable[..., T], label: str, key: str, default: T, *, options: Sequence[Any] | None = None,
           sidebar: bool = False, always: bool = False, **kwargs: Any) -> T:
    """Draw `widget` (e.g. st.selectbox) keyed by `key`, with its value kept across pages and in the URL.

    The query parameter is named like the key and left out while the value equals `default` (unless
    `always`). Sidebar widgets are published together by the sidebar. Returns the widget's value.
    """
    _seed(key, default, options, kwargs.get("min_value"), kwargs.get("max_value"))
    if options is not None:
        kwargs["options"] = options
    value = widget(label, key=key, **kwargs)
    st.session_state[_KEEP][key] = value
    if sidebar:
        st.session_state[_SIDEBAR_PARAMS][key] = (value, default)
    else:
        _publish_param(key, value, default, always)
    return value


def _publish_param(key: str, value: Any, default: Any, always: bool = False) -> None:
    # the page's own query parameter: left out while the value is the default (unless `always`)
    try:
        if not always and value == default:
            if key in st.query_params:
                del st.query_params[key]
        else:
            st.query_params[key] = _encode_query(value)
    except st.errors.StreamlitAPIException:  # a parameter bound elsewhere: leave the URL alone
        pass


def synced_tabs(labels: Sequence[str], key: str) -> Sequence[Any]:
    """Draw st.tabs over `labels`, keyed by `key`, whose open tab is kept across pages and in the URL (the query
    parameter is left out on the first tab); return the tab containers.

    Lazy tabs: opening one reruns the script (or the fragment the tabs are in), and only the open tab's
    container has `.open` True, so a page computes only what that tab shows.
    """
    _seed(key, labels[0], options=list(labels))
    tabs = st.tabs(list(labels), key=key, on_change="rerun")
    st.session_state[_KEEP][key] = st.session_state[key]
    _publish_param(key, st.session_state[key], labels[0])
    return tabs


def remembered(key: str, default: T) -> T:
    """Return the value the `synced` widget `key` has or will be drawn with (its current value, else its value
    from an earlier visit, else the shared link's), else `default`; draws nothing (for work queued ahead of a
    widget that is not on the page yet)."""
    keep = st.session_state.get(_KEEP, {})
    if key in st.session_state:
        return st.session_state[key]
    if key in keep:
        return keep[key]
    if key in _initial_query():
        return _parse_query(_initial_query()[key], default)
    return default


def forget(key: str) -> None:
    """Drop the value of the `synced` widget `key` (its current value, its remembered value and the shared link's),
    so that it is drawn next with its default."""
    st.session_state.pop(key, None)
    st.session_state.get(_KEEP, {}).pop(key, None)
    _initial_query().pop(key, None)


def _publish_sidebar_params(always: Sequence[str] = ("run",)) -> None:
    params = {key: _encode_query(value) for key, (value, default) in st.session_state[_SIDEBAR_PARAMS].items()
              if key in always or value != default}
    as_lists = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    # from_dict also drops the previous page's own parameters; the page re-adds its own as it draws.
    if as_lists != {k: st.query_params.get_all(k) for k in st.query_params}:
        st.query_params.from_dict(params)


# ============================================================================ the sidebar


def render_sidebar() -> View:
    """Draw the shared sidebar (run, slice, representation, clusters) and return the view it selects.

    Stops the script with a clear message when there is no cached run or the chosen run cannot be read.
    """
    st.session_state[_SIDEBAR_PARAMS] = {}
    bar = st.sidebar
    for key, title, icon in PAGES:
        if (REPO_ROOT / PAGE_FILES[key]).exists():
            bar.page_link(PAGE_FILES[key], label=title, icon=icon)
    paths = list_runs()
    if not paths:
        st.title("Saliency Atlas")
        st.info(NO_RUN_MESSAGE.format(folder=runs_dir()))
        st.stop()
    entries = {e.run_id: e for e in run_entries()}
    by_id = {p.name: p for p in paths}
    healthy = [rid for rid, e in entries.items() if e.problem is None]
    asked = _parse_query(_initial_query().get("run", []), "")
    if asked and asked not in by_id and "run" not in st.session_state:
        st.warning(f"The run {inline_code(asked)} from the link is not in this cache; showing the most recent run "
                   "instead.")

    bar.header("Run")
    run_id = synced(bar.selectbox, "Cached run", "run", (healthy or list(by_id))[0], options=list(by_id),
                    sidebar=True, format_func=lambda rid: entries[rid].title if rid in entries else rid,
                    help="Runs written by `python -m core.precompute`, most recent first. A run marked damaged "
                         "failed its check; the others work as usual.")
    if len(healthy) < len(entries):
        bar.caption(f"⚠️ {len(entries) - len(healthy)} of {len(entries)} runs in the cache are damaged; pick one "
                    "to see why.")
    path = by_id[run_id]
    stamp = run_stamp(path)
    try:
        run = _open_run(str(path), stamp)
    except CacheError as exc:
        _publish_sidebar_params()
        st.error(f"This run is damaged and cannot be shown. {escape_markdown(exc)}")
        if healthy and healthy[0] != run_id:
            st.info("Other runs in the cache are fine: pick one under *Cached run* in the sidebar.")
        st.stop()

    names = run.label_names
    examples = run.examples
    splits = run.splits

    bar.header("Slice")
    split = synced(bar.multiselect, "Split", "split", [], options=splits, sidebar=True, placeholder="all splits")
    labels = synced(bar.multiselect, "True label", "label", [], options=names, sidebar=True,
                    placeholder="all labels")
    preds = synced(bar.multiselect, "Predicted class", "pred", [], options=names, sidebar=True,
                   placeholder="all predictions")
    correctness = synced(bar.segmented_control, "Correctness", "correct", "all", options=list(CORRECTNESS_LABELS),
                         sidebar=True, format_func=lambda c: {"all": "all", "correct": "correct",
                                                              "misclassified": "misclassified"}[c],
                         required=True)
    contains = synced(bar.text_input, "Contains word(s)", "contains", "", sidebar=True,
                      placeholder="e.g. boring, plot",
                      help="Comma-separated; every entry must occur as a whole word (case-insensitive).")
    regex = synced(bar.text_input, "Matches regular expression", "regex", "", sidebar=True,
                   placeholder=r"e.g. \b\d+/10\b", help=REGEX_HELP)
    sample = synced(bar.number_input, "Random sample size (0 = all)", "sample", 0, sidebar=True, min_value=0,
                    step=100, help="A seeded random sample of the slice: same sample on every page and reload.")

    bar.header("Representation")
    rep = synced(bar.selectbox, "Representation", "rep", DEFAULT_REPRESENTATION, options=list(REPRESENTATIONS),
                 sidebar=True, format_func=lambda r: REPRESENTATIONS[r].title,
                 help="Rows that clusters, maps and neighbours are computed on. Top terms and word clouds always "
                      "come from S1 (same method, k, terms and weighting).")
    unit = synced(bar.selectbox, "Built on", "unit", DEFAULT_UNIT, options=list(UNITS), sidebar=True,
                  format_func=lambda u: UNIT_TITLES[u],
                  help="What the columns of S1, S2 and B1 are: the model's word pieces (the default, best in "
                       "bench/results/representations.md: ratings such as 3/10 and 4/10 share the piece 10) or "
                       "whole words. Clusters, maps and neighbours are computed on it.")
    terms_unit = synced(bar.selectbox, "Terms shown", "terms", DEFAULT_TERMS_UNIT, options=list(UNITS),
                        sidebar=True, format_func=lambda u: UNIT_TITLES[u],
                        help="What every term list, word cloud and export shows: whole words (a word's salience "
                             "is the sum, or the max, over its pieces) or the raw word pieces.")
    weighting = synced(bar.selectbox, "Weighting", "weighting", DEFAULT_WEIGHTING, options=list(WEIGHTINGS),
                       sidebar=True, format_func=lambda w: WEIGHTING_TITLES[w],
                       help="idf multiplies each term's salience by log((1 + n) / (1 + examples containing it)): "
                            "terms salient in every example (a, the, and) stop dominating S1/S2.")
    methods = run.methods
    method = synced(bar.selectbox, "Attribution method", "method", methods[0], options=methods, sidebar=True,
                    help="Saliency method of S1/S2, of top terms and of the text shading.")
    k = synced(bar.number_input, "k: salient terms kept per example (0 = all)", "k",
               int(DEFAULT_K or 0), sidebar=True, min_value=0,
               max_value=10_000, step=1)
    special = synced(bar.checkbox, "Include special tokens and punctuation", "special", False, sidebar=True,
                     help="Whether [CLS], [SEP], punctuation… enter the representation. Displays never show them.")
    # The count's input is drawn by the pages that cluster, inside their fragments (cluster_count_input); its
    # value stays in every page's URL like the sidebar's.
    _seed(CLUSTER_COUNT_KEY, DEFAULT_CLUSTERS, min_value=1, max_value=MAX_CLUSTERS)
    n_clusters = st.session_state[CLUSTER_COUNT_KEY]
    st.session_state[_SIDEBAR_PARAMS][CLUSTER_COUNT_KEY] = (n_clusters, DEFAULT_CLUSTERS)
    _publish_sidebar_params()

    regex_error = analysis.validate_regex(regex) if regex else None
    spec = analysis.SliceSpec(
        split=tuple(split) or None,
        labels=tuple(names.index(n) for n in labels) or None,
        preds=tuple(names.index(n) for n in preds) or None,
        correctness=correctness or "all",
        contains=parse_tokens(contains),
        regex=regex if regex and regex_error is None else None,
        sample_size=int(sample) or None,
        seed=SAMPLE_SEED,
    )
    rows = _slice_rows(str(path), stamp, slice_json(spec))
    view = View(run=run, stamp=stamp, spec=spec, rows=rows,
                key=RepresentationKey(rep, method, int(k) or None, bool(special), unit, weighting).normalised(),
                n_clusters=int(n_clusters), regex_error=regex_error, terms_unit=terms_unit, weighting=weighting,
                k=int(k) or None)
    bar.divider()
    bar.markdown(f"**{len(rows):,}** of {len(examples):,} examples in the slice")
    bar.caption("The address bar holds these settings: copy it to share this view.")
    if regex_error:
        st.error(f"{escape_markdown(regex_error)}. Fix it in the sidebar; until then the regular-expression filter "
                 "is ignored.")
    for reason in _staleness(str(path), stamp):
        st.warning(f"Stale run: {escape_markdown(reason)}.")
    return view


# ============================================================================ page helpers


def page_header(title: str, view: View, intro: str | None = None, show_slice: bool = True) -> None:
    """Draw a page's title, a caption naming run, slice and representation, and an optional intro line."""
    st.title(title)
    where = f"slice: {escape_markdown(view.describe())} ({len(view.rows):,} examples) · " if show_slice else ""
    st.caption(f"{escape_markdown(view.run.title)} · {where}{escape_markdown(view.key.label())}")
    if intro:
        st.markdown(intro)


def cluster_count_input(view: View, where: Any = None) -> View:
    """Draw the number-of-clusters input in `where` (a container; default: the page) and return `view` with that
    count.

    The count is kept across pages and in the URL (`clusters`). Pages draw it inside their fragments (Clusters,
    the Map's colour by cluster) rather than in the sidebar: a new count then reruns that block only, and the
    browser does not re-render the sidebar (a cached rerun of the Clusters page at 1,000,000 rows took 0.68-0.93 s in
    chromium as a full rerun, 0.40-0.49 s as a fragment rerun).
    """
    count = synced((st if where is None else where).number_input, "Number of k-means clusters", CLUSTER_COUNT_KEY,
                   DEFAULT_CLUSTERS, min_value=1, max_value=MAX_CLUSTERS, step=1,
                   help="Shared by the Clusters page, the Map's colour by cluster and the Compare page. The counts "
                        "one step away are computed while you read the page, so +/- answers at once.")
    return replace(view, n_clusters=int(count))


def require_rows(view: View, minimum: int = 1, purpose: str = "") -> None:
    """Stop the page with a clear message when the slice is empty or has fewer than `minimum` rows."""
    n = len(view.rows)
    if n == 0:
        st.warning(f"**The slice is empty**: no example matches every filter ({escape_markdown(view.describe())}). "
                   "Remove or widen a filter in the sidebar.")
        st.stop()
    if n < minimum:
        st.warning(f"**The slice has {n:,} example{'s' if n != 1 else ''}, fewer than {purpose or minimum}.** "
                   "Widen the slice in the sidebar or lower the number.")
        st.stop()


def display_table(view: View, rows: np.ndarray | None = None) -> pd.DataFrame:
    """Return a readable table of examples (index = row id): text, label and prediction names, correctness,
    confidence of the prediction, split and token count. Defaults to the slice's rows."""
    ex = view.run.examples.iloc[view.rows if rows is None else rows]
    names = dict(enumerate(view.run.label_names))
    probs = ex[[f"prob_{i}" for i in range(view.run.num_labels)]].to_numpy()
    table = pd.DataFrame({
        "text": ex["text"],
        "label": ex["label"].map(names),
        "prediction": ex["pred"].map(names),
        "correct": ex["correct"].astype(bool),
        "confidence": probs[np.arange(len(ex)), ex["pred"].to_numpy()] if len(ex) else np.empty(0),
        "split": ex["split"],
        "tokens": ex["n_tokens"],
    }, index=ex.index)
    table.index.name = "row"
    return table


MAX_LISTED = 1000


def dataframe(data: pd.DataFrame, **kwargs: Any) -> Any:
    """Draw `data` with st.dataframe (keyword arguments passed on; returns what it returns), its text cells that a
    spreadsheet would run as formulas (=, +, -, @ first) prefixed by "'" (analysis.formula_safe).

    The table toolbar's own "Download as CSV" exports the cells as given, and Streamlit 1.67 can hide it only for
    every table at once (client.disableDataExport, which also blocks copying cells): every page draws its tables
    of dataset text and terms through this instead.
    """
    return st.dataframe(analysis.formula_safe(data), **kwargs)


def example_list(view: View, rows: np.ndarray, key: str | None = None) -> None:
    """Draw a table of the given examples (at most MAX_LISTED rows, with a note when cut)."""
    rows = np.asarray(rows)
    if len(rows) > MAX_LISTED:
        st.caption(f"Showing {MAX_LISTED:,} of {len(rows):,} examples (a seeded random sample, in row order).")
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_LISTED, replace=False))
    dataframe(display_table(view, rows), column_config=TABLE_COLUMNS, key=key,
                 height="auto" if len(rows) <= 10 else 400)


TABLE_COLUMNS = {
    "text": st.column_config.TextColumn("text", width="large"),
    "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.2f",
                                                  help="Probability of the predicted class"),
    "correct": st.column_config.CheckboxColumn("correct"),
}


def verdict_badges(view: View, label: int, pred: int) -> str:
    """Return markdown badges for an example's label, prediction and whether the prediction is right."""
    verdict = ":green-badge[correct]" if label == pred else ":red-badge[misclassified]"
    return (f":gray-badge[label: {escape_markdown(view.label_name(label))}] "
            f":blue-badge[predicted: {escape_markdown(view.label_name(pred))}] {verdict}")


def saliency_block(view: View, row: int, method: str | None = None) -> None:
    """Draw one example's text with every token shaded by its saliency under `method` (default: the sidebar's)."""
    run = view.run
    tokens = run.tokens_of(row, method or view.method)
    body = plots.saliency_html(str(run.examples["text"].iloc[row]), tokens["start"], tokens["end"],
                               tokens["score"], tokens["token"].tolist())
    st.html(f'<div style="font-size:1.05rem">{body}</div>')


def set_focus(row: int) -> None:
    """Remember `row` as the example that the Examples and Neighbours pages open on."""
    st.session_state.setdefault(_KEEP, {})["row"] = int(row)


def focus_row(default: int | None = None) -> int | None:
    """Return the remembered focus example (from a link, the Examples page or Neighbours), else `default`."""
    keep = st.session_state.setdefault(_KEEP, {})
    if "row" in keep:
        return int(keep["row"])
    raw = _initial_query().get("row")
    if raw:
        value = _parse_query(raw, -1)
        if value >= 0:
            return value
    return default


def open_neighbours(row: int) -> None:
    """Switch to the Neighbours page with `row` as its query example."""
    set_focus(row)
    st.session_state.pop("row", None)  # the Neighbours page's row widget: start it from the new focus
    st.switch_page(PAGE_FILES["neighbours"])


def open_examples(row: int) -> None:
    """Switch to the Examples page showing `row` in its detail view."""
    set_focus(row)
    st.switch_page(PAGE_FILES["examples"])


def open_warning(finding_id: str, first_row: int | None = None) -> None:
    """Switch to the Examples page listing the examples of a dataset-warning finding (and showing `first_row`)."""
    st.session_state.setdefault(_KEEP, {})["warning"] = str(finding_id)
    if first_row is not None:
        set_focus(first_row)
    st.switch_page(PAGE_FILES["examples"])


def open_warning_id() -> str | None:
    """Return the id of the dataset-warning finding the Examples page lists (from a Summary button or a link's
    `warning=` parameter), None when it lists the slice."""
    keep = st.session_state.setdefault(_KEEP, {})
    if "warning" in keep:
        return keep["warning"] or None
    return _parse_query(_initial_query().get("warning", []), "") or None


def close_warning() -> None:
    """Go back from a warning's examples to the slice (the link's `warning=` no longer applies)."""
    st.session_state.setdefault(_KEEP, {})["warning"] = ""
    if "warning" in st.query_params:
        del st.query_params["warning"]


# ============================================================================ the Compare page (core.compare)


def open_run_id(run_id: str) -> Run:
    """Return the verified run `run_id` (a folder name listed in the cache); raise CacheError naming the problem
    when it is not in the cache or is damaged."""
    by_id = {p.name: p for p in list_runs()}
    if run_id not in by_id:
        raise CacheError(f"The run {run_id} is not in the cache {runs_dir()}.")
    return _open_run(str(by_id[run_id]), run_stamp(by_id[run_id]))


def run_matrix(run: Run, key: RepresentationKey):
    """Return the representation `key` of any cached run (shared with the other pages' cache; do not modify)."""
    return _matrix(str(run.path), run_stamp(run.path), *key_tuple(key))


@st.cache_data(show_spinner="Clustering the slice with k-means…", max_entries=32)
def _rows_cluster_labels(path: str, stamp: int, key: tuple, rows: np.ndarray, n_clusters: int,
                         seed: int) -> np.ndarray:
    matrix = take_rows(_matrix(path, stamp, *key), rows)
    with leave_a_core_for_the_browser():
        return analysis.cluster_rows(matrix, n_clusters, seed)


def cluster_labels_of_rows(run: Run, key: RepresentationKey, rows: np.ndarray, n_clusters: int) -> np.ndarray:
    """Return the k-means clusters (seed CLUSTER_SEED) of the given rows of any run in the representation `key`:
    the Compare page clusters run B on run A's slice (a slice by prediction differs between the runs)."""
    return _rows_cluster_labels(str(run.path), run_stamp(run.path), key_tuple(key), np.asarray(rows), n_clusters,
                                CLUSTER_SEED)

"""Page logic through Streamlit's AppTest, on a copy of the tiny fixture run (16 sentences, 3 methods)."""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from core import live_chart, ui
from core.store import open_run

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app.py"
PAGE_DIR = REPO / "pages"
TIMEOUT = 90  # the first run imports plotly/umap and builds caches


@pytest.fixture
def run_id(tiny_run_path, isolated_cache) -> str:
    """Copy the session's fixture run into this test's cache (pages write analysis files into a run)."""
    target = isolated_cache / "runs" / Path(tiny_run_path).name
    shutil.copytree(tiny_run_path, target)
    return target.name


def make_app(**query: str | list[str]) -> AppTest:
    """Return an AppTest of the dashboard opened with the given query parameters."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query)
    return at


def open_page(page: str, **query: str | list[str]) -> AppTest:
    """Return an AppTest that has run `page` (a key of ui.PAGE_FILES) opened from a link with `query`.

    Pages are standalone scripts (Streamlit's pages/ convention), so each is tested as the browser opens it.
    """
    at = make_app(**query)
    if page != "summary":
        at.switch_page(ui.PAGE_FILES[page])
    return at.run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, "\n".join(f"{e.message}\n{''.join(e.stack_trace)}" for e in at.exception)


def live_chart_figure(at: AppTest, key: str) -> dict:
    """Return the figure (plotly JSON as a dict) a page sent to its live chart `key` (core/live_chart.py)."""
    payloads = [json.loads(e.proto.bytes.decode("utf-8")) for e in at.get("bidi_component")
                if e.proto.component_name == live_chart.COMPONENT_NAME]
    charts = [p for p in payloads if p["name"] == key]
    assert len(charts) == 1, f"expected one chart {key!r}, found {len(charts)}"
    return charts[0]["figure"]


def map_figure(at: AppTest) -> dict:
    """Return the figure the Map page drew."""
    return live_chart_figure(at, "map_chart")


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def table_with(at: AppTest, column: str):
    """Return the value of the first dataframe on the page that has `column`."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a {column!r} column")


def neighbour_headers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if str(m.value).startswith("**#")]


# ---------------------------------------------------------------- structure


FORBIDDEN = {"torch", "sklearn", "faiss", "umap", "transformers", "captum", "ray"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pages_import_no_compute_libraries():
    files = [APP, *sorted(PAGE_DIR.glob("*.py"))]
    assert len(files) >= 6
    for path in files:
        assert not _imported_modules(path) & FORBIDDEN, f"{path.name} imports {_imported_modules(path) & FORBIDDEN}"


def test_only_the_adapters_import_streamlit_in_core():
    # ui.py (widgets, cached reads) and live_chart.py (the charts' custom component) adapt core to Streamlit
    importers = {p.name for p in (REPO / "core").glob("*.py") if "streamlit" in _imported_modules(p)}
    assert importers <= {"ui.py", "live_chart.py"}


def test_every_page_file_is_a_registered_page():
    # pages/ is Streamlit's pages directory: every script there is a page, so shared helpers live in core/ui.py
    registered = {REPO / path for path in ui.PAGE_FILES.values()}
    assert set(PAGE_DIR.glob("*.py")) <= registered and APP in registered


# ---------------------------------------------------------------- app-level messages


def test_no_cached_run_explains_what_to_do(isolated_cache):
    at = make_app().run()
    no_exception(at)
    message = texts(at.info)
    assert "make demo" in message and "python -m core.precompute --model DIR --data FILE" in message


def test_unreadable_run_shows_error_not_traceback(run_id, isolated_cache):
    (isolated_cache / "runs" / run_id / "examples.parquet").write_bytes(b"broken")
    at = make_app().run()
    no_exception(at)
    error = texts(at.error).replace("\\", "")  # the reason is shown with Markdown escaped
    assert "damaged" in error and "examples.parquet" in error and "Re-run precompute" in error


def test_unknown_run_in_link_falls_back_to_latest(run_id):
    at = make_app(run="does-not-exist").run()
    no_exception(at)
    assert "not in this cache" in texts(at.warning)
    assert at.query_params["run"] == run_id


def test_summary_page(run_id, tiny_run_path):
    at = open_page("summary")
    no_exception(at)
    assert at.title[0].value == "Saliency Atlas"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Examples"] == "16"
    assert metrics["Accuracy"].endswith("%")
    assert live_chart_figure(at, "confusion")["data"], "confusion matrix missing"
    assert at.query_params["run"] == run_id
    assert "16** of 16 examples" in texts(at.sidebar.markdown)


def test_summary_warns_when_most_examples_are_truncated(run_id, isolated_cache):
    import pandas as pd

    from core.store import file_digest

    at = open_page("summary")
    no_exception(at)
    assert "were cut at max_length" not in texts(at.warning)  # the fixture run has no truncated example

    run = isolated_cache / "runs" / run_id
    examples = pd.read_parquet(run / "examples.parquet")
    examples["truncated"] = np.arange(len(examples)) < 5  # 5 of 16: above the 20% threshold
    examples.to_parquet(run / "examples.parquet")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"]["examples.parquet"] = {**manifest["files"]["examples.parquet"],
                                             "bytes": (run / "examples.parquet").stat().st_size,
                                             "sha256": file_digest(run / "examples.parquet")}
    (run / "manifest.json").write_text(json.dumps(manifest))
    at = open_page("summary")
    no_exception(at)
    warning = texts(at.warning)
    assert "31% of the examples (5 of 16) were cut at max_length = 16 tokens" in warning
    assert "--max-length" in warning and "--truncation tail" in warning


# ---------------------------------------------------------------- slice controls and the URL


def test_query_params_seed_the_sidebar_and_follow_it(run_id):
    at = open_page("summary", split="test", label="negative")
    no_exception(at)
    assert at.sidebar.multiselect(key="split").value == ["test"]
    assert at.sidebar.multiselect(key="label").value == ["negative"]
    assert "of 16 examples" in texts(at.sidebar.markdown)

    at.sidebar.multiselect(key="split").set_value(["train"])
    at.sidebar.text_input(key="contains").set_value("movie")
    at.run()
    no_exception(at)
    assert at.query_params["split"] == "train" and at.query_params["contains"] == "movie"
    assert at.query_params["label"] == "negative"
    assert "rep" not in at.query_params  # defaults stay out of the link


def test_sidebar_settings_are_kept_for_the_next_page(run_id):
    # a new session opened from the link (the page-switch test below follows one session)
    at = open_page("summary")
    at.sidebar.multiselect(key="pred").set_value(["positive"])
    at.run()
    no_exception(at)
    assert at.session_state["_atlas_keep"]["pred"] == ["positive"]
    assert at.query_params["pred"] == "positive"
    at = open_page("examples", pred="positive")
    assert at.sidebar.multiselect(key="pred").value == ["positive"]
    assert "predicted positive" in at.caption[0].value


def test_a_page_switch_in_one_session_keeps_the_cluster_count_and_the_sidebars_values(run_id):
    # what the sidebar's page links do: the same session runs another page script. Streamlit then treats a
    # page's widgets as new ones; without their values assigned again it started them at their own defaults
    # (1 cluster, the first "Built on" option), whatever the user had chosen.
    at = open_page("clusters")
    at.number_input(key="clusters").set_value(3).run()
    no_exception(at)
    assert "3 clusters" in texts(at.markdown)
    unit = at.sidebar.selectbox(key="unit").value
    at.switch_page(ui.PAGE_FILES["summary"]).run()
    no_exception(at)
    assert "clusters" not in [n.key for n in at.number_input]  # drawn by the pages that cluster, not the sidebar
    assert at.query_params.get("clusters") in ("3", ["3"])  # yet kept in every page's link
    at.switch_page(ui.PAGE_FILES["map"]).run()
    at.selectbox(key="colour").set_value("cluster").run()
    no_exception(at)
    assert at.number_input(key="clusters").value == 3 and at.sidebar.selectbox(key="unit").value == unit
    assert {t["name"] for t in map_figure(at)["data"] if t.get("name")} >= {"cluster 0", "cluster 1", "cluster 2"}
    at.switch_page(ui.PAGE_FILES["clusters"]).run()
    no_exception(at)
    assert at.number_input(key="clusters").value == 3 and "3 clusters" in texts(at.markdown)


def test_invalid_regex_shows_error_and_page_still_draws(run_id):
    at = open_page("clusters", regex="(unclosed", clusters="2")
    no_exception(at)
    assert "Invalid regular expression" in texts(at.error)
    assert len(at.dataframe(key="cluster_table").value) == 2


@pytest.mark.parametrize("page", ["clusters", "map", "examples"])
def test_empty_slice_shows_message(run_id, page):
    at = open_page(page, contains="zebra")
    no_exception(at)
    assert "The slice is empty" in texts(at.warning)


# ---------------------------------------------------------------- clusters


def test_clusters_table_has_one_row_per_cluster(run_id):
    at = open_page("clusters", clusters="3")
    no_exception(at)
    table = at.dataframe(key="cluster_table").value
    assert len(table) == 3
    assert table["size"].sum() == 16
    assert np.isclose(table["size_pct"].sum(), 100.0)
    clouds = "".join(str(e.proto.body) for e in at.get("html"))
    assert clouds.count('<img src="data:image/png;base64,') + clouds.count("(no salient terms") == 3  # one each
    assert {"labels_text", "preds_text", "recall_text", "flag", "flag_reason"} <= set(table.columns)
    bars = live_chart_figure(at, "cluster_sizes")["data"][0]  # the size chart: one bar per cluster, as the table
    assert bars["x"] == [str(c) for c in table["cluster"]]
    assert at.radio(key="term_rank").value == "distinctive"
    distinctive_terms = table["top_terms"].tolist()
    assert not any("text" in frame.value.columns for frame in at.dataframe)  # no cluster's examples until picked
    assert at.selectbox(key="cluster_pick").value == -1

    last = int(table["cluster"].iloc[-1])
    at.selectbox(key="cluster_pick").set_value(last).run()
    no_exception(at)
    assert len(table_with(at, "text")) == table["size"].iloc[-1]
    assert at.query_params.get("cluster_pick") in (str(last), [str(last)])

    at.radio(key="term_rank").set_value("mean").run()  # the same clusters, ranked otherwise: the pick stays
    no_exception(at)
    assert at.query_params.get("term_rank") in ("mean", ["mean"])
    assert at.dataframe(key="cluster_table").value["top_terms"].tolist() != distinctive_terms
    assert len(table_with(at, "text")) == table["size"].iloc[-1]
    at.radio(key="term_rank").set_value("distinctive").run()

    # another count makes other clusters: the old number would name an unrelated group, so the pick is cleared
    at.number_input(key="clusters").set_value(4).run()
    no_exception(at)
    assert len(at.dataframe(key="cluster_table").value) == 4
    assert at.query_params.get("clusters") in ("4", ["4"])
    assert at.selectbox(key="cluster_pick").value == -1
    assert not any("text" in frame.value.columns for frame in at.dataframe)
    assert "cluster_pick" not in at.query_params


def test_the_agreement_of_a_slices_clusters_is_computed_on_the_slices_rows(run_id, isolated_cache):
    from sklearn.metrics import adjusted_rand_score

    from core import analysis, projection

    run = open_run(isolated_cache / "runs" / run_id)
    spec = analysis.SliceSpec(split=("train",), seed=ui.SAMPLE_SEED)
    rows = analysis.apply_slice(run.examples, spec)
    assert 0 < len(rows) < len(run.examples)
    view = ui.View(run=run, stamp=ui.run_stamp(run.path), spec=spec, rows=rows,
                   key=projection.default_key(run.methods[0]), n_clusters=3)
    labels = run.examples["label"].to_numpy()[rows]
    assert view.label_agreement() == pytest.approx(adjusted_rand_score(labels, view.cluster_labels()))


def test_slice_smaller_than_number_of_clusters(run_id):
    at = open_page("clusters", split="test", clusters="6")  # 4 test examples
    no_exception(at)
    assert "fewer than the 6 clusters" in texts(at.warning)
    assert not at.dataframe


@pytest.mark.parametrize("rep", ["s2", "b1", "b2", "b3"])
def test_clusters_on_every_representation(run_id, rep):
    at = open_page("clusters", rep=rep, clusters="2")
    no_exception(at)
    found = len(at.dataframe(key="cluster_table").value)
    # B1 on the tiny model: every prediction is one class, so PMI weights vanish and rows coincide.
    assert found == 2 or (found == 1 and "found only 1 distinct cluster" in texts(at.info))


# ---------------------------------------------------------------- map


def test_map_colourings_and_cached_projection(run_id, isolated_cache):
    at = open_page("map", proj="tsne")
    no_exception(at)
    assert map_figure(at)["data"]
    stored = list((isolated_cache / "runs" / run_id / "analysis").glob("projection-tsne-*.npy"))
    assert len(stored) == 1 and np.load(stored[0]).shape == (16, 2)
    stamp = stored[0].stat().st_mtime_ns

    for colour in ("prediction", "correctness", "cluster", "match"):
        at.selectbox(key="colour").set_value(colour).run()
        no_exception(at)
    at.text_input(key="match_words").set_value("movie").run()
    no_exception(at)
    assert "examples match" in texts(at.caption)
    at.text_input(key="match_regex").set_value("[bad").run()
    assert "Invalid regular expression" in texts(at.error)

    again = open_page("map", proj="tsne")  # a new session reads the stored projection
    no_exception(again)
    assert stored[0].stat().st_mtime_ns == stamp


def test_map_umap(run_id):
    at = open_page("map")
    no_exception(at)
    assert map_figure(at)["data"]
    assert "Draw a lasso" in texts(at.info)
    assert "hovering shows the row id" not in texts(at.caption)


def test_map_above_the_hover_limit_shows_row_ids_only(run_id, monkeypatch):
    monkeypatch.setattr(ui, "MAP_FULL_HOVER_MAX", 10)  # the fixture run has 16 examples
    at = open_page("map")
    no_exception(at)
    assert "16 points: hovering shows the row id" in texts(at.caption)
    figure = map_figure(at)
    assert all("text" not in trace for trace in figure["data"])


# ---------------------------------------------------------------- examples and neighbours


def test_examples_detail_and_link_to_neighbours(run_id):
    at = open_page("examples")
    no_exception(at)
    assert len(at.dataframe(key="examples_table").value) == 16
    assert at.subheader[0].value.startswith("Example 0")
    assert any("<span" in str(h.proto.body) for h in at.get("html")), "saliency shading missing"
    assert "predicted:" in texts(at.markdown)

    at.text_input(key="q").set_value("awful").run()
    no_exception(at)
    assert all("awful" in t for t in at.dataframe(key="examples_table").value["text"])

    at.selectbox(key="sort").set_value("confident_wrong").run()
    no_exception(at)
    shown = at.subheader[0].value
    row = int(shown.split()[1])

    at.button(key="to_neighbours").click().run()
    no_exception(at)
    assert at.title[0].value == "Neighbours"
    assert at.number_input(key="row").value == row
    assert at.query_params["row"] == str(row)


def test_neighbours_count_and_filters(run_id, isolated_cache):
    examples = open_run(isolated_cache / "runs" / run_id).examples
    row = 6
    pred = int(examples["pred"].iloc[row])
    at = open_page("neighbours", row=str(row), n="3", among="", as_pred="0")  # among= : all splits
    no_exception(at)
    assert len(neighbour_headers(at)) == 3

    at.checkbox(key="as_pred").check().run()
    no_exception(at)
    headers = neighbour_headers(at)
    eligible = int(((examples["label"] == pred) & (examples.index != row)).sum())
    assert len(headers) == min(3, eligible)
    name = ["negative", "positive"][pred]
    assert all(f"label *{name}*" in h for h in headers)

    at.number_input(key="n").set_value(50).run()
    no_exception(at)
    assert len(neighbour_headers(at)) == eligible


def test_neighbours_with_no_candidates(run_id):
    at = open_page("neighbours", row="0", among="test", in_slice="1", contains="movie", split="train")
    no_exception(at)
    assert "No candidate example" in texts(at.warning)


# ---------------------------------------------------------------- seed terms


class RecordingStorage(app_test_module.MemoryMediaFileStorage):
    """Media storage that keeps every file a run registers, so download data can be read back."""

    files: dict[str, bytes] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes) and filename:
            RecordingStorage.files[filename] = path_or_data
        return super().load_and_get_id(path_or_data, mimetype, kind, filename)


def _rename_token(run_dir: Path, old: str, new: str) -> None:
    """Rename one vocabulary entry of a run and update the manifest's size and hash of vocab.json."""
    vocab_path = run_dir / "vocab.json"
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    vocab[vocab.index(old)] = new
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    data = vocab_path.read_bytes()
    manifest["files"]["vocab.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


def test_seed_terms_lists_and_safe_downloads(run_id, isolated_cache, monkeypatch):
    _rename_token(isolated_cache / "runs" / run_id, "movie", "=movie")
    RecordingStorage.files = {}
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)

    # pieces: the renamed piece "=movie" is a column of the piece vocabulary (word terms come from the texts)
    at = open_page("seed_terms", min_count="1", target="negative", terms="piece")
    no_exception(at)
    # defaults: distinctive salient terms (vs the other classes) and log-odds terms
    salient = table_with(at, "distinctiveness")
    log_odds = table_with(at, "z")
    assert len(salient) > 0 and len(log_odds) > 0
    assert (salient["count"] >= 1).all() and (salient["distinctiveness"] > 0).all()
    assert "In both lists" in texts(at.markdown)
    assert len(at.download_button) == 6

    csv_files = {name: data.decode() for name, data in RecordingStorage.files.items() if name.endswith(".csv")}
    assert len(csv_files) == 2
    joined = "\n".join(csv_files.values())
    assert "'=movie" in joined
    assert not any(line.startswith(("=", "+", "-", "@")) for text in csv_files.values() for line in text.splitlines())
    txt = next(data.decode() for name, data in RecordingStorage.files.items() if name.endswith("-salient.txt"))
    # the plain-text list keeps the terms as they are; the table shows formula-like ones escaped (its toolbar
    # exports CSV too)
    assert "'=movie" in salient["term"].tolist()
    assert ["'" + t if t.startswith("=") else t for t in txt.splitlines()] == salient["term"].tolist()

    # the paper's lists stay one click away
    at.radio(key="salient_rank").set_value("mean").run()
    at.radio(key="assoc_rank").set_value("pmi").run()
    no_exception(at)
    salient = table_with(at, "mean_salience")
    pmi = table_with(at, "pmi")
    assert len(salient) > 0 and len(pmi) > 0
    assert len(at.download_button) == 6


def test_seed_terms_default_min_count_explains_empty_lists(run_id):
    at = open_page("seed_terms")
    no_exception(at)
    assert at.number_input(key="min_count").value == 20
    assert "Lower the minimum count" in texts(at.info)


# ---------------------------------------------------------------- pure helpers of the adapter


def test_selected_rows_reads_customdata_and_falls_back_to_trace():
    import plotly.graph_objects as go

    from core.ui import selected_rows

    figure = go.Figure([go.Scattergl(x=[0, 1], y=[0, 1], customdata=[7, 9]),
                        go.Scattergl(x=[2], y=[2], customdata=[3])])
    event = {"selection": {"points": [{"customdata": 9, "curve_number": 0, "point_index": 1},
                                      {"curve_number": 1, "point_index": 0},
                                      {"customdata": [7], "curve_number": 0, "point_index": 0}]}}
    assert selected_rows(event, figure).tolist() == [3, 7, 9]
    assert selected_rows({"selection": {"points": []}}, figure).tolist() == []
    assert selected_rows(None, figure).tolist() == []


def test_leave_a_core_for_the_browser_caps_native_thread_pools(monkeypatch):
    import os

    from threadpoolctl import threadpool_info

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with ui.leave_a_core_for_the_browser():
        pools = threadpool_info()
        assert pools and all(pool["num_threads"] == 1 for pool in pools)

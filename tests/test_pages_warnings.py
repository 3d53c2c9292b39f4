"""The Summary page's dataset warnings and slice metrics, and the Examples page listing a warning's examples
(AppTest; a run with planted duplicates from tests/test_dataset_warnings.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from core import dataset_warnings as dw
from core.precompute import PrecomputeSettings, precompute
from core.store import open_run
from tests.conftest import cache_at
from tests.test_dataset_warnings import _planted_rows
from tests.test_pages import (live_chart_figure, no_exception, open_page, run_id,  # noqa: F401 - run_id: a fixture
                              table_with, texts)


@pytest.fixture(scope="module")
def planted_run_path(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted_pages")
    pd.DataFrame(_planted_rows()).to_csv(folder / "planted.csv", index=False)
    with cache_at(folder / "cache"):
        result = precompute(tiny_model_dir, folder / "planted.csv",
                            PrecomputeSettings(split_col="split", max_length=16, batch_size=8, chunk_size=32,
                                               methods=("grad_l2",)), progress=False)
    return result.run_path


@pytest.fixture
def planted(planted_run_path, isolated_cache) -> Path:
    target = isolated_cache / "runs" / Path(planted_run_path).name
    shutil.copytree(planted_run_path, target)
    return target


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_summary_warnings_open_their_examples(planted):
    at = open_page("summary")
    no_exception(at)
    assert any("Dataset warnings" == h.value for h in at.subheader)
    assert any("Duplicates across splits (leakage) (2)" in e.label for e in at.expander)
    stored = dw.load_or_compute(open_run(planted))  # the page stored them: loading does not recompute
    assert dw.warnings_file(open_run(planted)).exists()
    leakage = dw.find(stored, "leakage-0")
    texts_ = open_run(planted).examples["text"]
    pairs = table_with(at, "train text")
    assert set(pairs["text"]) == {"The cat and the dog!", "a very boring movie ."}

    at.button(key="warning_leakage-0").click().run()
    no_exception(at)
    assert at.title[0].value == "Examples"
    table = at.dataframe(key="examples_table").value
    assert sorted(table.index) == sorted(leakage["rows"])
    assert list(table.index) == leakage["rows"]  # pairs next to each other, in the warning's order
    assert all("duplicate" in note for note in table["warning"])
    assert at.query_params["warning"] == "leakage-0"
    assert "Dataset warning" in texts(at.info)
    assert at.subheader[0].value.startswith(f"Example {leakage['rows'][0]}")
    assert texts_.iloc[leakage["rows"][0]] in ("The cat and the dog!", "a very boring movie .")

    at.button(key="close_warning").click().run()
    no_exception(at)
    assert len(at.dataframe(key="examples_table").value) == len(texts_)
    assert "warning" not in at.query_params


def test_examples_page_resolves_a_warning_link(planted):
    at = open_page("examples", warning="length-short", split="test")  # the warning ignores the slice
    no_exception(at)
    table = at.dataframe(key="examples_table").value
    assert table["text"].tolist() == ["great !"] and "content token" in table["warning"].iloc[0]

    at = open_page("examples", warning="[x](http://evil.example)")
    no_exception(at)
    assert "not among this run's warnings" in texts(at.warning)
    assert "`[x](http://evil.example)`" in texts(at.warning)  # a code span, not a link
    assert len(at.dataframe(key="examples_table").value) == 23


def test_summary_slice_metrics_and_threshold(run_id):
    at = open_page("summary")
    no_exception(at)
    report = table_with(at, "precision").set_index("class")
    assert report.loc[["negative", "positive"], "support"].sum() == 16
    for chart in ("confusion", "roc", "pr"):  # confusion matrix, ROC and precision-recall curves
        assert live_chart_figure(at, chart)["data"]
    assert not at.get("plotly_chart")  # so the browser loads one plotly.js, the package's (core/live_chart.py)
    assert at.slider(key="threshold").value == 0.5
    at.slider(key="threshold").set_value(0.0).run()
    no_exception(at)
    assert _metric(at, "Recall at 0.00") == "1.000" and _metric(at, "False positive rate at 0.00") == "1.000"
    assert at.query_params["threshold"] == "0.0"

    at = open_page("summary", threshold="1.01", split="test")  # out of range: clamped by the slider's seed
    no_exception(at)
    report = table_with(at, "precision").set_index("class")
    assert report.loc[["negative", "positive"], "support"].sum() == 4  # follows the slice


def test_summary_threshold_from_a_link(run_id):
    at = open_page("summary", threshold="0.3", positive="negative")
    no_exception(at)
    assert at.slider(key="threshold").value == pytest.approx(0.3)
    assert at.selectbox(key="positive").value == "negative"
    assert any(label.startswith("Precision at 0.30") for label in (m.label for m in at.metric))


def test_clusters_table_shows_recall_per_class(run_id):
    at = open_page("clusters", clusters="2")
    no_exception(at)
    table = at.dataframe(key="cluster_table").value
    assert "class_recall_text" in table.columns and table["class_recall_text"].str.contains("%").all()

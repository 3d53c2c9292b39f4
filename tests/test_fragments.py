"""Map and Clusters redraw their interactive block as an st.fragment: a widget inside it reruns only the fragment.

AppTest always reruns the whole script (its runner builds a RerunData without fragment ids), so `run_fragments`
asks its runner for the fragment-only rerun a browser's widget change inside a fragment makes: the script body
outside the fragments (sidebar, k-means) is not executed. (Each AppTest run starts a new message queue, so after
such a rerun the tree holds only the fragments' elements; a browser keeps the others.)
"""
from __future__ import annotations

import functools
import json

import pytest
from streamlit.runtime.scriptrunner import RerunData
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import local_script_runner

from core import analysis, ui
from tests.test_pages import map_figure, no_exception, open_page, run_id  # noqa: F401  run_id is a fixture


def run_fragments(at: AppTest, monkeypatch) -> AppTest:
    """Rerun only the fragments the last run registered, as a widget change inside them does in a browser."""
    ids = list(at._fragment_storage._fragments)
    assert ids, "the page registered no fragment"
    with monkeypatch.context() as patch:
        patch.setattr(local_script_runner, "RerunData", functools.partial(RerunData, fragment_id_queue=ids))
        return at.run()


def count_calls(monkeypatch, owner: object, name: str, tally: dict[str, int], key: str) -> None:
    """Replace `owner.name` by a wrapper that adds 1 to `tally[key]` on each call, then calls the original."""
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        tally[key] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


@pytest.fixture
def counts(monkeypatch) -> dict[str, int]:
    """Count full script runs (the sidebar is drawn once per full run) and k-means fits."""
    calls = {"sidebar": 0, "kmeans": 0}
    count_calls(monkeypatch, ui, "render_sidebar", calls, "sidebar")
    count_calls(monkeypatch, analysis, "cluster_rows", calls, "kmeans")
    return calls


@pytest.fixture
def clouds(monkeypatch) -> dict[str, int]:
    """Count the word clouds drawn, starting from an empty cloud cache (it is keyed by terms alone, so an earlier
    test's clouds would be hits)."""
    from core import plots

    drawn = {"drawn": 0}
    count_calls(monkeypatch, plots, "wordcloud_image", drawn, "drawn")
    ui.wordcloud_png.clear()
    return drawn


def legend_title(at: AppTest) -> str:
    return json.dumps(map_figure(at))


def test_map_colour_change_reruns_only_the_fragment(run_id, counts, monkeypatch):  # noqa: F811
    at = open_page("map", proj="tsne", colour="cluster")
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}
    assert "cluster 0" in legend_title(at)

    at.selectbox(key="colour").set_value("prediction")
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}, "a colour change reran the sidebar or k-means"
    assert at.selectbox(key="colour").value == "prediction"
    assert "cluster 0" not in legend_title(at) and "prediction" in legend_title(at)

    at.selectbox(key="colour").set_value("cluster")
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}
    assert "cluster 0" in legend_title(at)
    assert at.query_params.get("colour") == "cluster" or at.selectbox(key="colour").value == "cluster"

    at.run()  # a full rerun (e.g. a sidebar change) does draw the sidebar again: the counter works
    assert counts["sidebar"] == 2


def test_clusters_ranking_change_reruns_only_the_fragment(run_id, counts, monkeypatch):  # noqa: F811
    at = open_page("clusters")
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}
    headers = [c for frame in at.dataframe for c in frame.value.columns]
    assert "top_terms" in headers

    at.radio(key="term_rank").set_value("mean")
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}, "a ranking change reran the sidebar or k-means"
    assert at.radio(key="term_rank").value == "mean"
    assert "mean salience of the term in the cluster" in "\n".join(str(c.value) for c in at.caption)

    at.selectbox(key="cluster_pick").set_value(1)  # picking a cluster's examples stays inside the fragment too
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}
    assert any(str(m.value).startswith("Cluster 1:") for m in at.markdown)


def test_a_new_cluster_count_reruns_only_the_fragment(run_id, counts, monkeypatch):  # noqa: F811
    # the "changing the cluster count does not re-draw the sidebar": the count's input is in the fragment
    at = open_page("clusters")
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 1}
    assert "clusters" not in [n.key for n in at.sidebar.number_input]

    at.number_input(key="clusters").set_value(3)
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts == {"sidebar": 1, "kmeans": 2}, "a new count reran the sidebar, or did not recluster"
    assert len(at.dataframe(key="cluster_table").value) == 3
    assert any("3 clusters" in str(m.value) for m in at.markdown)

    at.number_input(key="clusters").set_value(2)  # on the Map too, when it colours by cluster
    at.switch_page(ui.PAGE_FILES["map"])
    at.query_params.update(proj="tsne")
    at.run()
    at.selectbox(key="colour").set_value("cluster")
    run_fragments(at, monkeypatch)
    at.number_input(key="clusters").set_value(3)
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert counts["sidebar"] == 2
    assert {t["name"] for t in map_figure(at)["data"] if t.get("name", "").startswith("cluster")} == {
        "cluster 0", "cluster 1", "cluster 2"}


def test_the_counts_one_step_away_are_computed_ahead_and_a_step_is_a_cache_hit(  # noqa: F811
        run_id, counts, clouds, monkeypatch):
    monkeypatch.setenv(ui.PREFETCH_ENV, "1")
    at = open_page("clusters", clusters="3")
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60)
    assert counts["kmeans"] == 3  # the page's 3, then 4 and 2 computed ahead
    drawn = clouds["drawn"]

    at.number_input(key="clusters").set_value(4)
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert len(at.dataframe(key="cluster_table").value) == 4
    assert counts["kmeans"] == 3 and clouds["drawn"] == drawn, "the step recomputed what was computed ahead"
    assert ui._PREFETCH.wait_until_done(60)
    assert counts["kmeans"] == 4  # from 4: 5 is new, 3 is cached

    monkeypatch.setenv(ui.PREFETCH_ENV, "0")  # turned off: the page computes its own count only
    at.number_input(key="clusters").set_value(7)
    run_fragments(at, monkeypatch)
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60) and counts["kmeans"] == 5


@pytest.mark.parametrize("first_page", ["summary", "examples"])
def test_another_page_computes_the_clusters_pages_first_view_ahead(  # noqa: F811
        run_id, counts, clouds, monkeypatch, first_page):
    """While another page is read, the Clusters page's clusters, table and word clouds for the same view (its
    count, the default term ranking) are computed, so its first visit runs no k-means and draws no cloud."""
    monkeypatch.setenv(ui.PREFETCH_ENV, "1")
    at = open_page(first_page, clusters="3")
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60)
    assert counts["kmeans"] == 3  # the page's own count first, then 4 and 2
    assert clouds["drawn"] > 0
    drawn = clouds["drawn"]

    at.switch_page(ui.PAGE_FILES["clusters"])
    at.run()
    no_exception(at)
    assert len(at.dataframe(key="cluster_table").value) == 3
    assert at.radio(key=ui.TERM_RANKING_KEY).value == ui.DEFAULT_TERM_RANKING
    assert counts["kmeans"] == 3 and clouds["drawn"] == drawn, "the first visit recomputed what was computed ahead"
    assert ui._PREFETCH.wait_until_done(60) and counts["kmeans"] == 3  # 4 and 2 were computed from that page


def test_the_examples_page_builds_the_neighbour_index_its_button_opens_ahead(run_id, monkeypatch):  # noqa: F811
    import streamlit as st

    from core import neighbours

    built = {"index": 0}
    count_calls(monkeypatch, neighbours, "neighbour_index", built, "index")
    st.cache_resource.clear()
    monkeypatch.setenv(ui.PREFETCH_ENV, "1")
    at = open_page("examples")
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60)
    assert built["index"] == 1  # while the example is read
    at.button(key="to_neighbours").click().run()
    no_exception(at)
    assert at.title[0].value == "Neighbours" and any("nearest neighbours" in s.value for s in at.subheader)
    assert built["index"] == 1, "the Neighbours page rebuilt the index built ahead"

    monkeypatch.setenv(ui.PREFETCH_ENV, "0")  # turned off: nothing ahead, the Neighbours page builds its own
    st.cache_resource.clear()
    at.switch_page(ui.PAGE_FILES["examples"])
    at.run()
    assert ui._PREFETCH.wait_until_done(60) and built["index"] == 1


def test_the_maps_density_figure_is_kept_per_colouring_and_computed_ahead(run_id, monkeypatch):  # noqa: F811
    """Above DENSITY_ABOVE points the Map's figure for a colouring that depends on the slice alone (true label,
    prediction, correctness) is built once per view: a recolour back to one drawn before recounts no point. Once
    the map's projection is stored, another page builds the figure of the last colouring ahead while it is read,
    so the Map's visit counts nothing, and while the map is read the other colourings are built."""
    import streamlit as st

    grids = {"built": 0}
    count_calls(monkeypatch, analysis, "density_grid", grids, "built")
    monkeypatch.setattr(analysis, "DENSITY_ABOVE", 5)
    st.cache_data.clear()
    at = open_page("map", proj="tsne")
    no_exception(at)
    assert grids["built"] == 1
    assert {t["type"] for t in map_figure(at)["data"]} == {"heatmap", "scatter"}
    for colour, built in (("prediction", 2), ("label", 2), ("correctness", 3), ("prediction", 3)):
        at.selectbox(key="colour").set_value(colour)
        run_fragments(at, monkeypatch)
        no_exception(at)
        assert grids["built"] == built, f"colouring by {colour} again recounted the points"
        assert any(t.get("legendgroup") for t in map_figure(at)["data"])

    st.cache_data.clear()
    monkeypatch.setenv(ui.PREFETCH_ENV, "1")
    at.switch_page(ui.PAGE_FILES["clusters"])
    at.run()
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60)
    assert grids["built"] == 4  # the map coloured by prediction, the last colouring, built ahead
    at.switch_page(ui.PAGE_FILES["map"])
    at.run()
    no_exception(at)
    assert at.selectbox(key="colour").value == "prediction" and grids["built"] == 4, \
        "the Map's visit rebuilt the figure computed ahead"
    assert ui._PREFETCH.wait_until_done(60)
    assert grids["built"] == 6  # while the map is read: the two other colourings
    for colour in ("correctness", "label"):
        at.selectbox(key="colour").set_value(colour)
        run_fragments(at, monkeypatch)
        no_exception(at)
        assert grids["built"] == 6, f"the recolour to {colour} rebuilt the figure computed ahead"

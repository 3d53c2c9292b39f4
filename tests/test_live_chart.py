"""The charts' custom component (core/live_chart.py): its plotly.js, payload and selection rules; the word-cloud grid.

The round trip in a browser (a lasso read back, a recolour drawn in the same mounted chart) is in test_browser.py.
"""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from core import live_chart, plots, ui


def _figure(colour: str) -> object:
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    examples = pd.DataFrame({"text": ["a", "b", "c"]}, index=[10, 11, 12])
    return plots.scatter_map(coords, examples, pd.Series(["x", "y", "x"], name=colour), None, "map")


def test_the_folder_serves_the_plotly_js_of_the_installed_package(tmp_path):
    folder = live_chart.assets_folder(tmp_path)
    assert (folder / "plotly.min.js").read_bytes() == live_chart.plotly_js_path().read_bytes()
    stamp = (folder / "plotly.min.js").stat().st_mtime_ns
    assert live_chart.assets_folder(tmp_path) == folder  # reused, not copied again
    assert (folder / "plotly.min.js").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind


def test_a_truncated_copy_is_replaced(tmp_path):
    folder = live_chart.assets_folder(tmp_path)
    (folder / "plotly.min.js").write_bytes(b"partial")  # e.g. a disk that filled up, or a cleaner
    assert live_chart.assets_folder(tmp_path) == folder
    assert (folder / "plotly.min.js").read_bytes() == live_chart.plotly_js_path().read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_the_payload_holds_the_settings_and_the_figure_and_its_revision_follows_the_colours():
    kwargs = {"name": "map", "scope": "s", "height": 500, "selectable": True, "send_points": True,
              "plotly_url": "/component/x/plotly.min.js"}
    first, first_revision = live_chart.chart_payload(_figure("true label"), **kwargs)
    again, again_revision = live_chart.chart_payload(_figure("true label"), **kwargs)
    _, other_revision = live_chart.chart_payload(_figure("prediction"), **kwargs)
    assert first == again and first_revision == again_revision
    assert other_revision != first_revision
    payload = json.loads(first.decode("utf-8"))
    assert {k: payload[k] for k in kwargs} == kwargs and payload["revision"] == first_revision
    assert payload["figure"]["layout"]["legend"]["title"]["text"] == "true label"
    assert [t["name"] for t in payload["figure"]["data"]] == ["x", "y"]


def test_a_selection_is_returned_only_for_the_scope_it_was_drawn_on(monkeypatch):
    selection = {"box": [{"x": [0, 1], "y": [0, 1]}], "lasso": [], "points": []}
    sent: list[dict] = []
    state: dict = {"selection": None}

    def mount(**kwargs):
        sent.append(kwargs)
        return dict(state)

    monkeypatch.setattr(live_chart, "_declared", lambda: (mount, "/component/x/plotly.min.js"))
    assert live_chart.live_chart(_figure("label"), key="m", scope="slice A", height=500, selectable=True) is None
    browser_scope = json.loads(sent[0]["data"].decode("utf-8"))["scope"]
    assert "slice A" not in browser_scope  # the browser sees a hash of it
    state["selection"] = {"scope": browser_scope, "selection": selection}  # what the module sends back

    event = live_chart.live_chart(_figure("label"), key="m", scope="slice A", height=500, selectable=True)
    assert event == {"selection": selection}
    assert ui.selection_region(event) == ((0.0, 1.0, 0.0, 1.0), None)  # read as st.plotly_chart's event is
    assert live_chart.live_chart(_figure("label"), key="m", scope="slice B", height=500, selectable=True) is None
    assert live_chart.live_chart(_figure("label"), key="m", scope="slice A", height=500) is None  # not selectable
    assert sent[0]["key"] == "m" and sent[0]["default"] == {"selection": None}
    assert isinstance(sent[0]["data"], bytes)


def test_the_word_cloud_grid_is_one_escaped_block_with_the_images_inlined():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 2), "white").save(buffer, format="PNG")
    cards = [ui.CloudCard(title="Cluster 0", detail="12.0% · <b>pos</b> 3", png=buffer.getvalue(),
                          alt='Word cloud of cluster 0: "x" <script>'),
             ui.CloudCard(title="⚠️ Cluster 1", detail="1.0%", png=None, alt="", empty_note="(no salient terms)",
                          warning="small & confident")]
    block = ui.cloud_grid_html(cards, per_row=4)
    assert block.count("<img ") == 1 and "(no salient terms)" in block
    assert f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" in block
    assert "<script>" not in block and "<b>" not in block  # data text is escaped
    assert "&lt;b&gt;pos&lt;/b&gt;" in block and "small &amp; confident" in block
    assert "repeat(4," in block


def test_a_folder_removed_while_the_server_runs_is_put_back(monkeypatch, tmp_path):
    monkeypatch.setattr(live_chart.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = live_chart.assets_folder()
    assert folder.parent.parent == tmp_path and folder.parent.name.startswith("saliency-atlas-components-")
    shutil.rmtree(folder.parent)  # e.g. systemd-tmpfiles cleaning /tmp
    assert live_chart.assets_folder() == folder and (folder / "plotly.min.js").is_file()

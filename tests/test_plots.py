"""Known-answer tests for core.plots."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core import plots
from core.plots import (
    cluster_size_bar,
    confusion_figure,
    hover_texts,
    probability_bar,
    saliency_html,
    scatter_map,
    wordcloud_image,
)


def test_no_streamlit_import():
    tree = ast.parse(Path(plots.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] == "streamlit" for name in names)


# --------------------------------------------------------------------------- saliency html

SPAN = re.compile(r'<span style="background-color:rgba\((\d+),(\d+),(\d+),([\d.]+)\)[^"]*" title="([^"]*)">(.*?)</span>')


def test_saliency_html_escapes_and_orders_spans():
    text = "I <b>love</b> it"
    # [CLS] and [SEP] have (0, 0) offsets and a large score: skipped, and not the max
    starts = [0, 0, 2, 3, 4, 5, 9, 10, 11, 12, 14, 0]
    ends = [0, 1, 3, 4, 5, 9, 10, 11, 12, 13, 16, 0]
    scores = [9.0, 0.2, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.1, 0.4, 9.0]
    out = saliency_html(text, starts, ends, scores)
    assert "<b>" not in out and "</b>" not in out
    assert "&lt;" in out and "&gt;" in out
    spans = SPAN.findall(out)
    assert [s[5] for s in spans] == ["I", "&lt;", "b", "&gt;", "love", "&lt;", "/", "b", "&gt;", "it"]
    alphas = {s[5]: float(s[3]) for s in spans}
    assert spans[4][3] == "1.000"  # max-score token "love"
    assert alphas["I"] == pytest.approx(0.25, abs=1e-3)
    assert alphas["it"] == pytest.approx(0.5, abs=1e-3)
    assert sum(s[3] == "1.000" for s in spans) == 1
    assert spans[4][4] == "love: 0.8"
    # the text between tokens survives unchanged (escaped) and in order
    assert re.sub(r"<[^>]+>", "", out) == "I &lt;b&gt;love&lt;/b&gt; it"


def test_saliency_html_word_pieces_truncation_and_tokens():
    text = "playing well until the end"
    out = saliency_html(text, [0, 0, 4, 8, 0], [0, 4, 7, 12, 0], [1.0, 0.5, 0.25, 0.1, 1.0],
                        token_strings=["[CLS]", "play", "##ing", "well", "[SEP]"])
    spans = SPAN.findall(out)
    assert [s[5] for s in spans] == ["play", "ing", "well"]
    assert [s[4] for s in spans] == ["play: 0.5", "##ing: 0.25", "well: 0.1"]
    assert spans[0][3] == "1.000"
    # the untokenised tail is greyed out, not shaded
    assert re.search(r'<span style="color:#999"[^>]*> until the end</span>', out)
    assert re.sub(r"<[^>]+>", "", out) == text


def test_saliency_html_overlap_negative_and_empty():
    # two tokens over the same characters (byte-level pieces): one span, the larger |score|
    out = saliency_html("né x", [0, 0, 3], [2, 2, 4], [0.2, -0.6, 0.3])
    spans = SPAN.findall(out)
    assert [s[5] for s in spans] == ["né", "x"]
    assert spans[0][:4] == ("50", "110", "230", "1.000")  # negative score: blue
    assert spans[1][3] == "0.500"
    assert "title=\"né: -0.6\"" in out
    quoted = saliency_html('say "hi"', [4], [8], [1.0])
    assert 'title="&quot;hi&quot;: 1"' in quoted
    assert saliency_html("", [], [], []) == '<div style="line-height:1.9;white-space:pre-wrap"></div>'
    zeros = saliency_html("a b", [0, 2], [1, 3], [0.0, 0.0])
    assert all(s[3] == "0.000" for s in SPAN.findall(zeros))
    with pytest.raises(ValueError):
        saliency_html("a", [0], [1, 2], [1.0])


# --------------------------------------------------------------------------- word cloud


def test_wordcloud_image_size_and_empty():
    image = wordcloud_image({"great": 0.9, "##ing": 0.4, "bad": 0.2})
    assert image is not None and image.size == (400, 250)
    assert wordcloud_image({"a": 1.0}, width=200, height=120).size == (200, 120)
    assert wordcloud_image({"a": 1.0}, width=201, height=121).size == (201, 121)  # odd: laid out at full size
    # laid out on a half-size canvas, drawn at full size: the largest word still fills its share of the height
    pixels = np.asarray(wordcloud_image({"great": 1.0}, width=400, height=220).convert("L"))
    inked_rows = np.flatnonzero((pixels < 200).any(axis=1))
    assert inked_rows.max() - inked_rows.min() >= 0.25 * 220
    assert wordcloud_image({}) is None
    assert wordcloud_image({"zero": 0.0, " ": 1.0}) is None


def test_the_dashboards_word_cloud_png_is_a_palette_image_that_looks_like_the_cloud():
    import io

    from PIL import Image

    from core import ui

    words = ("terrible", "waste", "boring", "awful", "stupid", "money", "pointless", "mediocre", "dull", "worst",
             "mess", "bland")
    weights = tuple((w, 1.0 / (1 + i)) for i, w in enumerate(words))
    png = ui.wordcloud_png(weights, 400, 220)
    image = Image.open(io.BytesIO(png))
    assert image.size == (400, 220) and image.mode == "P"
    assert len(image.getcolors()) <= ui.CLOUD_PNG_COLOURS
    full = wordcloud_image(dict(weights), width=400, height=220)
    drawn, shown = np.asarray(full, dtype=float), np.asarray(image.convert("RGB"), dtype=float)
    assert np.abs(drawn - shown).mean() < 1.0  # out of 255: the same picture
    assert np.percentile(np.abs(drawn - shown).max(axis=2), 99.9) < 48  # no pixel far off, edges included
    full_png = io.BytesIO()
    full.save(full_png, format="PNG", compress_level=1)
    assert len(png) < 0.6 * len(full_png.getvalue())
    assert ui.wordcloud_png((("zero", 0.0),), 400, 220) is None


# --------------------------------------------------------------------------- plotly figures


def test_agreement_histogram_sends_bin_counts_not_values():
    agreement = pd.DataFrame({"jaccard": [0.0, 0.02, 0.5, 1.0, 1.0, np.nan] * 1000,
                              "spearman": [-1.0, 0.0, 0.96, 1.0, np.nan, np.nan] * 1000})
    fig = plots.agreement_histogram(agreement)
    jaccard, spearman = fig.data
    assert len(jaccard.x) == len(jaccard.y) == plots.AGREEMENT_BINS  # not 6,000 values
    assert list(jaccard.y[[0, 10, -1]]) == [2000, 1000, 2000] and sum(jaccard.y) == 5000  # 1.0 in the last bin
    assert list(spearman.y[[0, 10, -1]]) == [1000, 1000, 2000] and sum(spearman.y) == 4000  # 0.96: bin [0.9, 1]
    assert jaccard.x[0] == pytest.approx(0.025) and spearman.x[-1] == pytest.approx(0.95)


def test_scatter_map_categories_and_customdata():
    examples = pd.DataFrame({"text": list("abcdef")}, index=[10, 11, 12, 13, 14, 15])
    coords = np.arange(12, dtype=np.float32).reshape(6, 2)
    colour = pd.Series(["pos", "neg", "pos", None, "neg", "pos"], name="label")
    fig = scatter_map(coords, examples, colour, hover_texts(examples["text"]), "map")
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["scattergl"] * 3
    assert [t.name for t in fig.data] == ["neg", "pos", "(none)"]
    assert list(fig.data[0].customdata) == [11, 14]
    assert list(fig.data[1].customdata) == [10, 12, 15]
    assert list(fig.data[1].x) == [0.0, 4.0, 10.0]
    assert list(fig.data[2].customdata) == [13]
    assert len({t.marker.color for t in fig.data}) == 3
    assert fig.layout.title.text == "map"

    cont = scatter_map(coords, examples, pd.Series(np.linspace(0, 1, 6), name="p"), ["x"] * 6, "p")
    assert len(cont.data) == 1 and list(cont.data[0].customdata) == [10, 11, 12, 13, 14, 15]
    with pytest.raises(ValueError):
        scatter_map(coords[:3], examples, colour, ["x"] * 6, "bad")


def test_scatter_map_without_hover_text_shows_row_ids_and_stays_small():
    n = 5_000
    examples = pd.DataFrame({"text": ["a long review text " * 10] * n})
    coords = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    colour = pd.Series(np.where(np.arange(n) % 2, "pos", "neg"), name="label")
    light = scatter_map(coords, examples, colour, None, "map")
    assert all(t.text is None for t in light.data)
    assert light.data[0].hovertemplate == "row %{customdata}<extra>neg</extra>"
    full = scatter_map(coords, examples, colour, hover_texts(examples["text"]), "map")
    assert len(light.to_json()) * 5 < len(full.to_json())


def test_hover_texts_escape_and_truncate():
    out = hover_texts(["<script>x</script>", "word " * 100], max_chars=50, width=20)
    assert out[0] == "&lt;script&gt;x&lt;/script&gt;"
    assert out[1].endswith("…") and "<br>" in out[1]
    assert len(out[1].replace("<br>", " ")) <= 50


def test_confusion_probability_and_cluster_figures():
    cm = np.array([[5, 1], [2, 7]])
    fig = confusion_figure(cm, ["neg", "pos"])
    assert np.array_equal(np.asarray(fig.data[0].z), cm)
    assert list(fig.data[0].x) == ["neg", "pos"]

    bar = probability_bar([0.25, 0.75], ["neg", "pos"])
    assert list(bar.data[0].x) == [0.25, 0.75]
    assert list(bar.layout.xaxis.range) == [0, 1]

    summary = pd.DataFrame(
        {"cluster": [2, 0], "size": [6, 4], "size_pct": [60.0, 40.0],
         "accuracy": [0.5, 1.0], "top_terms": ["a, b", "c"]}
    )
    sizes = cluster_size_bar(summary)
    assert list(sizes.data[0].x) == ["2", "0"]
    assert list(sizes.data[0].y) == [60.0, 40.0]
    assert sizes.data[0].customdata[0][2] == "a, b"
    # coloured by accuracy on red (0) to green (1), as CSS colours: the accurate cluster's bar is the greener
    half, full = ([int(v) for v in c[c.index("(") + 1:-1].split(",")] for c in sizes.data[0].marker.color)
    assert full[1] > full[0] and half[0] > full[0]


def test_roc_and_precision_recall_curves_of_a_million_distinct_scores_are_thinned_without_changing_their_shape():
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(0)
    y = rng.random(1_000_000) < 0.3
    scores = np.clip(rng.normal(0.5 + 0.2 * y, 0.2), 0, 1)  # a million distinct scores: a point each
    fpr, tpr, roc_t = roc_curve(y, scores, drop_intermediate=False)
    precision, recall, pr_t = precision_recall_curve(y, scores)
    assert len(fpr) > 500_000
    for fig, (x, yy) in ((plots.roc_figure(fpr, tpr, roc_t, 0.75), (fpr, tpr)),
                         (plots.precision_recall_figure(precision, recall, pr_t, 0.5), (recall, precision))):
        curve = fig.data[-1]
        assert len(curve.x) <= plots.CURVE_MAX_POINTS
        assert (curve.x[0], curve.y[0], curve.x[-1], curve.y[-1]) == (x[0], yy[0], x[-1], yy[-1])
        # every original point lies within a tenth of a percent of the drawn polyline (the figure is ~300 px)
        order = np.argsort(curve.x, kind="stable")
        drawn = np.interp(x[::97], np.asarray(curve.x)[order], np.asarray(curve.y)[order])
        assert np.abs(drawn - yy[::97]).max() < 0.01
        # each drawn point keeps its own threshold in the hover
        assert np.isin(np.asarray(curve.customdata)[:-1], np.append(roc_t, pr_t)).all()

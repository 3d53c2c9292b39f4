"""Pure figure builders: plotly figures, word-cloud images and saliency HTML.

Nothing here computes an analysis or imports streamlit; each function turns
already-computed arrays/frames into something a page can draw.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image
from wordcloud import WordCloud

# Enough distinct colours for clusters; cycles beyond that.
CATEGORICAL_COLOURS: list[str] = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
POSITIVE_RGB = (230, 80, 50)
NEGATIVE_RGB = (50, 110, 230)


def hover_texts(texts: Sequence[str], max_chars: int = 200, width: int = 60) -> list[str]:
    """Return HTML-escaped, truncated texts wrapped with ``<br>``, ready for ``scatter_map`` hovers."""
    out = []
    for text in texts:
        text = str(text)
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
        out.append("<br>".join(html.escape(line) for line in textwrap.wrap(text, width) or [""]))
    return out


def scatter_map(
    coords: np.ndarray,
    examples: pd.DataFrame,
    color_by: pd.Series,
    hover_text: Sequence[str] | None,
    title: str,
) -> go.Figure:
    """Return a WebGL scatter of 2-D ``coords`` with one trace per category of ``color_by``.

    ``coords``, ``examples``, ``color_by`` and ``hover_text`` are aligned row
    by row. Each point's ``customdata`` is its row label in ``examples``
    (``examples.index``), so box/lasso selections map back to rows.
    ``hover_text`` is shown as given (plotly renders a small HTML subset; see
    ``hover_texts``); ``None`` shows only the row id and colour group, which
    keeps the figure small (about 22 bytes a point instead of several hundred)
    for very large maps. A float ``color_by`` gives one trace with a colour scale.
    """
    coords = np.asarray(coords)
    n = len(examples)
    if not (coords.shape == (n, 2) and len(color_by) == n and (hover_text is None or len(hover_text) == n)):
        raise ValueError("coords (n, 2), examples, color_by and hover_text must be aligned")
    row_ids = examples.index.to_numpy()
    hover = None if hover_text is None else np.asarray(hover_text, dtype=object)

    def template(group: str) -> str:
        return ("%{text}" if hover is not None else "row %{customdata}") + f"<extra>{html.escape(group)}</extra>"

    values = pd.Series(np.asarray(color_by), name=color_by.name)
    marker_base = {"size": 5, "opacity": 0.8}
    fig = go.Figure()

    if pd.api.types.is_float_dtype(values):
        fig.add_trace(
            go.Scattergl(
                x=coords[:, 0], y=coords[:, 1], mode="markers",
                customdata=row_ids, text=hover,
                hovertemplate=template(""),
                marker={**marker_base, "color": values.to_numpy(), "colorscale": "Viridis",
                        "showscale": True, "colorbar": {"title": str(color_by.name or "")}},
                showlegend=False,
            )
        )
    else:
        categories = sorted(values.dropna().unique().tolist(), key=str)
        if values.isna().any():
            categories.append(None)
        for i, category in enumerate(categories):
            members = values.isna().to_numpy() if category is None else (values == category).to_numpy()
            name = "(none)" if category is None else str(category)
            fig.add_trace(
                go.Scattergl(
                    # plotly draws legend text as HTML (links included): a category can be a typed pattern
                    x=coords[members, 0], y=coords[members, 1], mode="markers", name=html.escape(name),
                    customdata=row_ids[members], text=None if hover is None else hover[members],
                    hovertemplate=template(name),
                    marker={**marker_base,
                            "color": CATEGORICAL_COLOURS[i % len(CATEGORICAL_COLOURS)]},
                )
            )
    fig.update_layout(
        title=title,
        dragmode="lasso",
        legend_title_text=str(color_by.name or ""),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )  # (zoom and lasso survive a recolour through core/live_chart.py, whose uirevision is the map's scope)
    # Projection axes carry no meaning.
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def _rgb(colour: str) -> tuple[int, int, int]:
    """Return the (r, g, b) of a '#rrggbb' or 'rgb(r, g, b)' colour."""
    if colour.startswith("#"):
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    return tuple(int(float(v)) for v in colour[colour.index("(") + 1:colour.rindex(")")].split(",")[:3])  # type: ignore


def density_map(grid, examples: pd.DataFrame, sample_colour: pd.Series, coords: np.ndarray, title: str,
                colour_name: str) -> go.Figure:
    """Return a map that draws each colour group's density and a sample of points over it.

    ``grid`` is an analysis.DensityGrid of the points; each group gets a heatmap of log(1 + count) shaded from
    transparent to the group's colour (cells without points stay empty), in a legend group with an SVG scatter
    of the group's sampled points (``grid.sample``; ``examples``, ``sample_colour`` and ``coords`` are the
    sampled rows, aligned, ``customdata`` = row id as in ``scatter_map``), so hover and the lasso/box tools work
    on the sample. The JSON stays a few hundred kB however many points are counted.

    SVG, not WebGL: a browser without GPU rendering (chromium on a 2-core machine here) took 0.8-0.85 s to draw a
    WebGL scatter of any size (most of it creating the WebGL context and compiling its shaders) against 0.2 s for
    SVG markers of the 1,000-point sample (analysis.DENSITY_SAMPLE), and 0.18 s instead of 0.25-0.28 s to recolour
    them (Plotly.react).
    """
    fig = go.Figure()
    row_ids = examples.index.to_numpy()
    values = np.asarray(sample_colour.astype(str))
    for i, group in enumerate(grid.groups):
        r, g, b = _rgb(CATEGORICAL_COLOURS[i % len(CATEGORICAL_COLOURS)])
        counts = grid.counts[i].astype(np.float64)
        # float32 and int32 halve the figure (plotly sends numpy arrays as typed binary arrays)
        z = np.where(counts > 0, np.log1p(counts), np.nan).astype(np.float32)
        name = html.escape(str(group))
        fig.add_trace(go.Heatmap(
            x=grid.x_centres, y=grid.y_centres, z=z, name=name, legendgroup=name, showlegend=False,
            colorscale=[[0.0, f"rgba({r},{g},{b},0.15)"], [1.0, f"rgba({r},{g},{b},0.9)"]], showscale=False,
            zmin=0.0, zmax=float(np.log1p(counts.max())) if counts.max() > 0 else 1.0,
            customdata=grid.counts[i].astype(np.int32), hovertemplate=f"%{{customdata:,}} points<extra>{name}</extra>",
        ))
        members = values == str(group)
        fig.add_trace(go.Scatter(
            x=coords[members, 0], y=coords[members, 1], mode="markers", name=name, legendgroup=name,
            customdata=row_ids[members], hovertemplate=f"row %{{customdata}}<extra>{name}</extra>",
            marker={"size": 3, "opacity": 0.7, "color": f"rgb({r},{g},{b})",
                    "line": {"width": 0.3, "color": "white"}},
        ))
    fig.update_layout(title=title, dragmode="lasso", legend_title_text=colour_name,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_xaxes(showticklabels=False, ticks="", title=None, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, ticks="", title=None, zeroline=False, showgrid=False)
    return fig


def confusion_figure(cm: np.ndarray, label_names: Sequence[str]) -> go.Figure:
    """Return an annotated heatmap of confusion matrix ``cm`` (rows true label, columns prediction)."""
    cm = np.asarray(cm)
    names = [str(n) for n in label_names]
    fig = go.Figure(
        go.Heatmap(
            z=cm, x=names, y=names, colorscale="Blues",
            text=cm, texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} examples<extra></extra>",
        )
    )
    fig.update_layout(
        title="Confusion matrix",
        xaxis_title="predicted", yaxis_title="true",
        yaxis_autorange="reversed",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


ACCURACY_COLOURSCALE = "RdYlGn"


def cluster_size_bar(summary: pd.DataFrame) -> go.Figure:
    """Return a bar chart of cluster sizes (% of the slice) from ``analysis.cluster_summary`` output.

    Bars are coloured by accuracy (red 0 to green 1, named in the title); hovering shows the top terms.
    """
    from plotly.colors import sample_colorscale

    accuracy = np.clip(summary["accuracy"].to_numpy(dtype=float), 0.0, 1.0)
    # Colours as CSS strings and fixed margins: the browser redraws this chart on every recluster, and a colour
    # bar (numbers through a colour scale) makes plotly.js measure and re-lay the margins (doAutoMargin), with a
    # warning logged per bar: 0.21 s of chromium's CPU per redraw on a 2-core machine, against 0.07 s without.
    colours = sample_colorscale(ACCURACY_COLOURSCALE, list(accuracy)) if len(accuracy) else []
    fig = go.Figure(
        go.Bar(
            x=[str(c) for c in summary["cluster"]],
            y=summary["size_pct"],
            customdata=summary[["size", "accuracy", "top_terms"]].to_numpy(dtype=object),
            hovertemplate=(
                "cluster %{x}: %{customdata[0]} examples (%{y:.1f}%)<br>"
                "accuracy %{customdata[1]:.2f}<br>%{customdata[2]}<extra></extra>"
            ),
            marker={"color": colours, "line": {"width": 0}},
        )
    )
    fig.update_layout(
        title="Cluster sizes · colour: accuracy (red 0 → green 1)",
        xaxis={"title": "cluster", "type": "category", "tickangle": 0, "automargin": False},
        yaxis={"title": "% of slice", "automargin": False},
        margin={"l": 55, "r": 10, "t": 40, "b": 45},
    )
    return fig


def agreement_histogram(agreement: pd.DataFrame, top_fraction: float = 0.25) -> go.Figure:
    """Return histograms (side by side, AGREEMENT_BINS bins each) of the per-example ``jaccard`` and ``spearman``
    columns of ``core.compare.map_agreement``; NaN values (examples with too few tokens) are left out.

    The bins are counted here and drawn as bars: a plotly histogram sends every value to the browser, which at
    1,000,000 examples made a JSON of tens of MB and took the Compare page seconds to draw."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"Jaccard of the top {top_fraction:.0%} tokens",
                                                        "Spearman rank correlation"))
    for col, (column, span) in enumerate((("jaccard", (0.0, 1.0)), ("spearman", (-1.0, 1.0))), start=1):
        edges = np.linspace(span[0], span[1], AGREEMENT_BINS + 1)
        counts, _ = np.histogram(agreement[column].dropna().to_numpy(dtype=np.float64), bins=edges)  # 1.0: last
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=0.95 * (edges[1] - edges[0]),
                             customdata=np.column_stack([edges[:-1], edges[1:]]),
                             marker_color=CATEGORICAL_COLOURS[col - 1], name=column, showlegend=False,
                             hovertemplate=f"{column} %{{customdata[0]:.2f}} to %{{customdata[1]:.2f}}<br>"
                                           "%{y} examples<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(range=[span[0], span[1]], row=1, col=col)
    fig.update_yaxes(title_text="examples", row=1, col=1)
    fig.update_layout(height=300, bargap=0.05, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


AGREEMENT_BINS = 20


def cluster_flow_heatmap(flow: pd.DataFrame) -> go.Figure:
    """Return an annotated heatmap of ``core.compare.cluster_flow`` (rows: run A's clusters, columns: run B's),
    each cell coloured by the share of its A cluster's examples and labelled with the count."""
    counts = flow.to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    fig = go.Figure(go.Heatmap(
        z=share, x=[f"B {c}" for c in flow.columns], y=[f"A {c}" for c in flow.index], colorscale="Blues",
        zmin=0, zmax=1, text=counts, texttemplate="%{text}", customdata=counts,
        colorbar={"title": "share of A cluster"},
        hovertemplate="%{customdata} examples of %{y} are in %{x} (%{z:.0%})<extra></extra>"))
    fig.update_layout(xaxis_title="run B's clusters", yaxis_title="run A's clusters", yaxis_autorange="reversed",
                      height=120 + 40 * len(flow), margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def term_shift_bar(shift: pd.DataFrame) -> go.Figure:
    """Return a horizontal bar chart of the ``change`` of each term in ``core.compare.term_shift`` rows of one
    class (rises to the right in orange, falls to the left in blue), largest rise on top."""
    shift = shift.sort_values("change", ascending=False)
    colours = [f"rgb{POSITIVE_RGB}" if c > 0 else f"rgb{NEGATIVE_RGB}" for c in shift["change"]]
    fig = go.Figure(go.Bar(
        x=shift["change"], y=[html.escape(str(t)) for t in shift["term"]], orientation="h", marker_color=colours,
        customdata=shift[["salience_a", "salience_b", "examples"]].to_numpy(dtype=float),
        hovertemplate=("%{y}: %{x:+.4f}<br>A %{customdata[0]:.4f} → B %{customdata[1]:.4f}<br>"
                       "in %{customdata[2]:.0f} examples<extra></extra>")))
    fig.update_layout(xaxis_title="mean salience in B − in A", yaxis={"autorange": "reversed"},
                      height=80 + 22 * max(len(shift), 1), margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def wordcloud_image(weights: dict[str, float], width: int = 400, height: int = 250) -> Image.Image | None:
    """Return a ``width`` x ``height`` word-cloud image sized by ``weights``; ``None`` if no positive weight."""
    positive = {term: float(w) for term, w in weights.items() if w > 0 and term.strip()}
    if not positive:
        return None
    # A fixed largest size: without one WordCloud lays the cloud out twice to find it, which doubled the time of
    # a recluster's eight clouds (0.32 s against 0.17 s). The words are placed on a half-size canvas and drawn at
    # full size (WordCloud's `scale`): the text is as sharp, the placement a little coarser, and a 400 x 220 cloud
    # of 12 words takes about 20 ms against 43 ms (eight clouds of real clusters: 0.08-0.12 s against 0.12-0.18 s).
    scale = CLOUD_LAYOUT_SCALE if width % CLOUD_LAYOUT_SCALE == 0 and height % CLOUD_LAYOUT_SCALE == 0 \
        and min(width, height) >= 100 else 1
    cloud = WordCloud(
        width=width // scale, height=height // scale, scale=scale, background_color="white",
        max_font_size=max(10, round(0.4 * height / scale)), random_state=0, prefer_horizontal=1.0,
        colormap="viridis",
    )
    return cloud.generate_from_frequencies(positive).to_image()


CLOUD_LAYOUT_SCALE = 2


def probability_bar(probs: Sequence[float], label_names: Sequence[str]) -> go.Figure:
    """Return a horizontal bar chart of class probabilities on a fixed [0, 1] axis."""
    probs = np.asarray(probs, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=probs, y=[str(n) for n in label_names], orientation="h",
            text=[f"{p:.3f}" for p in probs], textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"range": [0, 1], "title": "probability"},
        yaxis={"autorange": "reversed"},
        height=60 + 30 * len(probs),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return fig


def saliency_html(
    text: str,
    char_starts: Sequence[int],
    char_ends: Sequence[int],
    scores: Sequence[float],
    token_strings: Sequence[str] | None = None,
) -> str:
    """Return HTML of the original ``text`` with each token's span shaded by its saliency.

    Background alpha is |score| / max |score| (red for positive, blue for
    negative scores); each span's ``title`` gives token and score. Tokens with
    (0, 0) offsets (special tokens) are skipped. Where token spans overlap,
    each character takes the largest |score| covering it. Text after the last
    token (cut by truncation) is shown greyed. All text is HTML-escaped.
    """
    starts = np.asarray(char_starts, dtype=np.int64)
    ends = np.asarray(char_ends, dtype=np.int64)
    vals = np.asarray(scores, dtype=np.float64)
    if not (len(starts) == len(ends) == len(vals)):
        raise ValueError("char_starts, char_ends and scores must have the same length")
    real = np.flatnonzero((ends > starts) & (starts >= 0))
    max_abs = float(np.abs(vals[real]).max()) if len(real) else 0.0

    # Cut the text at every token boundary; each segment belongs to the tokens covering it.
    end_of_tokens = int(ends[real].max()) if len(real) else 0
    cuts = sorted({0, len(text), *starts[real].tolist(), *ends[real].tolist()})
    cuts = [c for c in cuts if 0 <= c <= len(text)]
    parts: list[str] = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        segment = html.escape(text[a:b])
        covering = real[(starts[real] <= a) & (ends[real] >= b)]
        if len(covering) == 0:
            if a >= end_of_tokens and segment.strip():
                parts.append(f'<span style="color:#999" title="not tokenised (truncated)">{segment}</span>')
            else:
                parts.append(segment)
            continue
        top = covering[np.argmax(np.abs(vals[covering]))]
        score = vals[top]
        alpha = abs(score) / max_abs if max_abs > 0 else 0.0
        r, g, bl = POSITIVE_RGB if score >= 0 else NEGATIVE_RGB
        token = token_strings[top] if token_strings is not None else text[starts[top]:ends[top]]
        title = html.escape(f"{token}: {score:.4g}", quote=True)
        parts.append(
            f'<span style="background-color:rgba({r},{g},{bl},{alpha:.3f});border-radius:2px" '
            f'title="{title}">{segment}</span>'
        )
    return '<div style="line-height:1.9;white-space:pre-wrap">' + "".join(parts) + "</div>"


CURVE_MAX_POINTS = 2000


def thin_curve(x: np.ndarray, y: np.ndarray, *extra: np.ndarray,
               max_points: int = CURVE_MAX_POINTS) -> tuple[np.ndarray, ...]:
    """Return (x, y, *extra) cut to at most `max_points` points spread evenly along the curve's length, first and
    last kept; shorter curves come back unchanged.

    A ROC or precision-recall curve has a point per distinct score: about a million on a real 1,000,000-row run,
    40 MB of figure JSON for the browser to parse on the Summary page. Points evenly spaced along the length keep
    its shape to well under a pixel (see the test)."""
    n = len(x)
    if n <= max_points:
        return (x, y, *extra)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    keep = np.searchsorted(length, np.linspace(0.0, length[-1], max_points))
    keep = np.unique(np.clip(np.concatenate([[0], keep, [n - 1]]), 0, n - 1))
    return tuple(np.asarray(a)[keep] for a in (x, y, *extra))


def _curve_figure(x: np.ndarray, y: np.ndarray, thresholds: np.ndarray, point: tuple[float, float] | None,
                  title: str, x_title: str, y_title: str, diagonal: bool) -> go.Figure:
    x, y, thresholds = thin_curve(x, y, thresholds)
    fig = go.Figure()
    if diagonal:
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#aaa"},
                                 hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": "#1f77b4"}, customdata=thresholds,
                             hovertemplate=f"{x_title} %{{x:.3f}}<br>{y_title} %{{y:.3f}}<br>threshold "
                                           "%{customdata:.3f}<extra></extra>", showlegend=False))
    if point is not None and all(np.isfinite(point)):
        fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers",
                                 marker={"size": 12, "color": "#d62728", "symbol": "x"},
                                 hovertemplate="at the threshold<extra></extra>", showlegend=False))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=340,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, auc: float,
               point: tuple[float, float] | None = None) -> go.Figure:
    """Return the ROC curve (false positive rate vs true positive rate), the chance diagonal, and a marker at
    `point` (fpr, tpr) of the chosen threshold; hovering the curve shows each point's threshold."""
    return _curve_figure(np.asarray(fpr), np.asarray(tpr), np.asarray(thresholds), point,
                         f"ROC curve (AUC {auc:.3f})", "false positive rate", "true positive rate", diagonal=True)


def precision_recall_figure(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray,
                            average_precision: float, point: tuple[float, float] | None = None) -> go.Figure:
    """Return the precision-recall curve (recall on x) with a marker at `point` (recall, precision) of the chosen
    threshold. scikit-learn's last point (recall 0, precision 1) has no threshold; its hover shows NaN."""
    thresholds = np.append(np.asarray(thresholds, dtype=np.float64), np.nan)
    return _curve_figure(np.asarray(recall), np.asarray(precision), thresholds, point,
                         f"Precision-recall curve (average precision {average_precision:.3f})", "recall",
                         "precision", diagonal=False)

"""Map: a 2-D projection (UMAP or t-SNE) of the slice, coloured by label, prediction, correctness, cluster or match."""
import numpy as np
import pandas as pd
import streamlit as st

from core import analysis, live_chart, plots, ui
from core.ui import escape_markdown as md  # typed words, patterns and label names

COLOUR_BY = {"label": "true label", "prediction": "prediction", "correctness": "correctness",
             "cluster": "k-means cluster", "match": "contains word / matches regex"}

view = ui.current_view()
ui.page_header("Map", view,
               "Nearby points have similar representations. Hover a point to read it; draw a **lasso** or **box** "
               "around a region to list its examples and their aggregate top terms.")
ui.require_rows(view)


@st.fragment
def map_view(view: ui.View) -> None:
    """Controls, map and lasso selection: a fragment, so a colour change, a projection switch or a lasso reruns
    only this block (the sidebar's slice and representation are not rebuilt)."""
    controls = st.columns([1, 1, 2])
    method = ui.synced(controls[0].segmented_control, "Projection", "proj", "umap",
                       options=list(ui.PROJECTION_NAMES), format_func=ui.PROJECTION_NAMES.get, required=True,
                       help="Computed once per run, slice and representation, with a progress bar, and saved in "
                            "the run folder (UMAP of 100,000 examples: about 2 minutes on a 2-core CPU; the "
                            "precompute stores the default UMAP of the whole run). t-SNE embeds a seeded sample of "
                            "at most 20,000 points and places the others into that map with openTSNE's transform.")
    colour = ui.synced(controls[1].selectbox, "Colour by", "colour", "label", options=list(COLOUR_BY),
                       format_func=COLOUR_BY.get)

    ex = view.examples
    names = dict(enumerate(view.run.label_names))
    colour_by: pd.Series | None
    # colour groups as categoricals (codes + a few names): a million strings cost the density grid 0.6 s
    if colour in ui.MAP_STATIC_COLOURINGS:  # a density map of these is kept whole (View.density_map)
        colour_by = None if len(ex) > analysis.DENSITY_ABOVE else ui.map_colour_groups(ex, view.run.label_names,
                                                                                        colour)
    elif colour == "cluster":
        view = ui.cluster_count_input(view, controls[2])
        if len(view.rows) < view.n_clusters:
            st.warning(f"The slice has {len(view.rows)} examples, fewer than the {view.n_clusters} clusters asked "
                       "for; colouring by true label instead.")
            colour_by = ui.coded_groups(ex["label"], names, "true label")
        else:
            clusters = view.cluster_labels()
            colour_by = ui.coded_groups(pd.Series(clusters, index=ex.index),
                                        {int(c): f"cluster {c}" for c in np.unique(clusters)}, "cluster")
            ui.prefetch_cluster_counts(view, ranking=None)  # labels of the counts one step away
    else:
        with controls[2]:
            sub = st.columns(2)
            words = ui.synced(sub[0].text_input, "Contains word(s)", "match_words", "", placeholder="e.g. COMMON",
                              help="Comma-separated whole words, all required, case-insensitive.")
            pattern = ui.synced(sub[1].text_input, "or matches regex", "match_regex", "", placeholder=r"e.g. class_\d",
                                help=ui.REGEX_HELP)
        error = analysis.validate_regex(pattern) if pattern else None
        if error:
            st.error(f"{md(error)}. Fix the expression; until then only the words are used.")
            pattern = ""
        spec = analysis.SliceSpec(contains=ui.parse_tokens(words), regex=pattern or None)
        what = " and ".join([f"“{w}”" for w in spec.contains] + ([f"/{pattern}/"] if pattern else [])) or "nothing"
        hits = analysis.apply_slice(ex.reset_index(drop=True), spec) if (spec.contains or spec.regex) else []
        matched = np.zeros(len(ex), dtype=bool)
        matched[np.asarray(hits, dtype=np.int64)] = True
        colour_by = ui.coded_groups(pd.Series(matched.astype(int), index=ex.index),
                                    {1: f"matches {what}", 0: "no match"}, "match")
        if not (spec.contains or spec.regex):
            st.info("Type a word or a regular expression to highlight the examples that contain it.")
        else:
            st.caption(f"{matched.sum():,} of {len(ex):,} examples match {md(what)}.")

    coords = view.projection(method)
    title = view.map_title(method)
    density = len(ex) > analysis.DENSITY_ABOVE
    if density and colour in ui.MAP_STATIC_COLOURINGS:  # kept per view and colouring (also computed ahead)
        figure, n_sampled = view.density_map(method, colour)
    elif density:  # a million WebGL points take the browser seconds per redraw: density per colour + a sample
        grid = analysis.density_grid(coords, colour_by.array)
        n_sampled = len(grid.sample)
        figure = plots.density_map(grid, ex.iloc[grid.sample], colour_by.iloc[grid.sample], coords[grid.sample],
                                   title, str(colour_by.name or ""))
    if density:
        st.caption(f"{len(ex):,} points, drawn as the density of each colour group (cells shaded by the log of "
                   f"their count; hover a cell for it) with a seeded sample of {n_sampled:,} points on top, "
                   f"above {analysis.DENSITY_ABOVE:,} points. A lasso or box selects **every** example inside "
                   "it, not only the sampled points; narrow the slice to see all points.")
    else:
        hover = view.map_hover()
        if hover is None:
            st.caption(f"{len(ex):,} points: hovering shows the row id and colour group only (full hover texts are "
                       f"drawn up to {ui.MAP_FULL_HOVER_MAX:,} points, to keep the map fast); draw a lasso or box to "
                       "read the examples, or narrow the slice.")
        figure = plots.scatter_map(coords, ex, colour_by, hover, title)
        # Small slices get bigger points; dense ones stay small so regions remain visible.
        figure.update_traces(marker_size=10 if len(ex) < 1_000 else 6 if len(ex) < 10_000 else 4)
    # One chart that stays mounted: a recolour is a Plotly.react of the new figure in the browser (zoom and the
    # drawn lasso kept), not a new chart; what the map shows apart from its colours is the selection's scope.
    scope = f"{view.path}|{view.stamp}|{view.spec_json}|{ui.key_tuple(view.key)}|{method}"
    event = live_chart.live_chart(figure, key="map_chart", height=620, scope=scope, selectable=True,
                                  send_points=not density)

    if colour != "cluster":  # (a cluster colouring computes the counts one step away instead)
        ui.prefetch_map_colourings(view, method)  # the other colourings, built while the map is read
    selected = ui.selected_rows(event, None if density else figure)  # density: no point is sent back
    box, lasso = ui.selection_region(event)
    if density and (box or lasso):  # the drawn region, over every point of the slice
        selected = view.rows[analysis.rows_in_region(coords, box, lasso)]
    if len(selected) == 0:
        st.info("Draw a lasso or a box on the map to list the examples inside it: pick the lasso or box tool in the "
                "toolbar at the top right of the map, then drag over the points.")
    else:
        st.subheader(f"{len(selected):,} selected examples")
        cloud, table = st.columns([1, 2], gap="large")
        rest = np.setdiff1d(view.rows, selected, assume_unique=False)
        R = view.vocab_matrix()
        if len(rest):
            top = analysis.distinctive_terms(R[selected], R[rest], view.vocab, view.ignore_mask,
                                             presence_in_group=view.presence()[selected], n=40,
                                             term_weights=view.term_idf())
            how = "mean salience in the selection minus mean salience in the rest of the slice, times idf"
        else:
            top = analysis.top_terms(R[selected], view.vocab, view.ignore_mask, n=40)
            how = "mean salience over the selection (it holds the whole slice)"
        with cloud:
            st.markdown(f"**Aggregate top terms** ({how})")
            st.markdown(ui.terms_html(top[:12]), unsafe_allow_html=True)
            png = ui.wordcloud_png(tuple(top), 400, 240)
            if png is not None:
                st.image(png, width="stretch")
            sel = view.run.examples.iloc[selected]
            st.caption(f"accuracy {sel['correct'].mean():.0%} · "
                       + " · ".join(f"{md(names[c])}: {n}"
                                    for c, n in sel["label"].value_counts().sort_index().items()))
        with table:
            ui.example_list(view, selected, key="map_selection")


map_view(view)

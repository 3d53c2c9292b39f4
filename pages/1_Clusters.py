"""Clusters: k-means on the slice's representation; sizes, classes, accuracy, distinctive terms, word clouds."""
import streamlit as st

from core import analysis, live_chart, plots, ui
from core.ui import escape_markdown as md  # terms, label names and flag reasons come from the data

RANKINGS = {"distinctive": "distinctive (vs rest of slice)", "mean": "mean salience"}
WEIGHTS = {"distinctive": "mean salience in the cluster minus mean salience in the rest of the slice, times the "
                          "term's idf",
           "mean": "mean salience of the term in the cluster"}

PICK_KEY = "cluster_pick"  # the cluster whose examples are listed; also a query parameter
PICK_OF = "_atlas_cluster_pick_of"  # the clustering that pick belongs to
NO_PICK = -1

view = ui.current_view()
ui.page_header("Clusters", view,
               "Each cluster groups examples whose salient terms are alike. Its **top terms** are, by default, its "
               "**distinctive** terms: more salient in the cluster than in the rest of the slice (difference of "
               "mean salience, S1 vocabulary, salient in at least 3 of its examples, times the term's idf), so "
               "words salient or present everywhere drop out; *mean salience* ranks by the plain mean instead. A "
               "small, confidently predicted cluster whose salience sits on a few terms is flagged ⚠️ as a "
               "**possible shortcut** in the data.")
ui.require_rows(view)


@st.fragment
def clusters_view(view: ui.View) -> None:
    """Cluster count, ranking, table, word clouds and a cluster's examples: a fragment, so a new count, another
    ranking or a picked cluster reruns only this block (the sidebar is neither rerun nor re-sent)."""
    count_column, ranking_column = st.columns([1, 3], gap="large")
    view = ui.cluster_count_input(view, count_column)
    ranking = ui.synced(ranking_column.radio, "Rank terms by", ui.TERM_RANKING_KEY, ui.DEFAULT_TERM_RANKING,
                        options=list(RANKINGS), format_func=RANKINGS.get, horizontal=True,
                        help="distinctive: (mean salience in the cluster minus in the rest of the slice) x idf, "
                             "log((1 + n) / (1 + examples containing the term)): terms salient or present everywhere "
                             "fall out. mean salience: the paper's mean over the cluster.")
    ui.require_rows(view, view.n_clusters, f"the {view.n_clusters} clusters asked for (*Number of k-means "
                                           "clusters*)")
    labels = view.cluster_labels()
    summary = view.cluster_summary(ranking=ranking)
    if len(summary) < view.n_clusters:
        st.info(f"k-means found only {len(summary)} distinct cluster{'s' if len(summary) != 1 else ''} instead of "
                f"{view.n_clusters}: many examples of the slice have identical vectors in this representation "
                "(for instance all-zero rows). Try another representation or a larger k.")

    chart, clouds_intro = st.columns([3, 2], gap="large")
    with chart:
        # redrawn in place on a recluster (Plotly.react), not mounted anew as st.plotly_chart would
        live_chart.live_chart(plots.cluster_size_bar(summary), key="cluster_sizes")
    with clouds_intro:
        # one markdown and one caption: each element a rerun sends costs the browser a render of the page (about
        # 10 ms of a 2-core machine's time at 1,000,000 rows), so the lines are not sent as elements of their own
        largest = summary.iloc[0]
        best = summary.sort_values(["accuracy", "size"], ascending=[False, True]).iloc[0]
        lines = [f"**{len(summary)} clusters** of {len(view.rows):,} examples.", "",
                 f"- Largest: cluster {largest.cluster}, {largest.size_pct:.1f}% of the slice",
                 f"- Most accurate: cluster {best.cluster} ({best.accuracy:.0%}, {best.size_pct:.1f}% of the slice), "
                 f"top terms *{md(best.top_terms) or '—'}*"]
        flagged = summary[summary["shortcut"]]
        lines += [f"- ⚠️ **Possible shortcut: cluster {c.cluster}**, top terms *{md(c.top_terms) or '—'}*: "
                  f"{md(c.flag_reason)}" for c in flagged.itertuples()]
        st.markdown("\n".join(lines))
        notes = []
        if not len(flagged):
            notes.append(f"No cluster is flagged as a possible shortcut (under {analysis.SHORTCUT_MAX_SIZE_PCT:g}% "
                         f"of the slice, mean max probability ≥ {analysis.SHORTCUT_MIN_CONFIDENCE:g} and top "
                         f"{analysis.SHORTCUT_TOP_TERMS} terms holding ≥ {analysis.SHORTCUT_MIN_TOP_SHARE:.0%} of "
                         f"the cluster's salience and ≥ {analysis.SHORTCUT_MIN_SHARE_RATIO:g}x the share the "
                         f"slice's own top {analysis.SHORTCUT_TOP_TERMS} hold).")
        slice_labels = view.examples["label"].to_numpy()
        # only meaningful on a slice the model splits into several classes (not e.g. "predicted negative")
        if len(summary) > 1 and view.examples["pred"].nunique() > 1 and slice_labels.min() != slice_labels.max():
            agreement = view.label_agreement()
            notes.append(f"Agreement of these clusters with the true labels: adjusted Rand index {agreement:.2f} "
                         "(1: the clusters are the classes; 0: unrelated).")
            if agreement < 0.2 and view.key.name in ("s1", "s2"):
                notes.append("Salience clusters group examples by the words the model relies on, which on a slice "
                             "of several classes need not follow the classes: on a four-class benchmark no salience "
                             "representation reached an ARI above 0.13, B3 [CLS] reached 0.48 and B1 0.38 "
                             "(bench/results/representations.md). To group by class, switch the sidebar's "
                             "*Representation*; to find a shortcut, slice by one predicted class first.")
        notes.append("Select a row of the table to list that cluster's examples.")
        st.caption("\n\n".join(notes))

    table = summary.assign(flag=summary["shortcut"].map({True: "⚠️", False: ""}))[
        ["cluster", "flag", "size", "size_pct", "labels_text", "preds_text", "recall_text", "accuracy",
         "class_recall_text", "confidence", "top_terms", "flag_reason"]]


    def _pick_from_table() -> None:
        selected = st.session_state["cluster_table"].selection.rows
        if selected:
            st.session_state[PICK_KEY] = int(table.iloc[selected[0]].cluster)


    ui.dataframe(
        table, hide_index=True, key="cluster_table", on_select=_pick_from_table, selection_mode="single-row",
        column_config={
            "cluster": st.column_config.NumberColumn("cluster", width="small"),
            "flag": st.column_config.TextColumn("⚠️", width="small", help="Possible shortcut: see *why flagged*."),
            "size": st.column_config.NumberColumn("examples", format="%d"),
            "size_pct": st.column_config.ProgressColumn("% of slice", min_value=0.0, max_value=100.0, format="%.1f%%"),
            "labels_text": st.column_config.TextColumn("labels", help="Examples per true label (ties are visible)."),
            "preds_text": st.column_config.TextColumn("predictions", help="Examples per predicted class."),
            "recall_text": st.column_config.TextColumn(
                "share of each class", help="Of the slice's examples labelled with a class, the share in this cluster "
                                            "(recall per class; each class sums to 100% over the clusters)."),
            "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0.0, max_value=1.0, format="%.2f"),
            "class_recall_text": st.column_config.TextColumn(
                "recall per class", help="The model's recall of each class inside the cluster: of the cluster's "
                                         "examples labelled with the class, the share predicted as it."),
            "confidence": st.column_config.NumberColumn("confidence", format="%.2f",
                                                        help="Mean probability of the predicted class."),
            "top_terms": st.column_config.TextColumn(f"top terms ({RANKINGS[ranking]})", width="large"),
            "flag_reason": st.column_config.TextColumn("why flagged", width="large"),
        },
    )
    st.caption(f"Top terms and word clouds are weighted by {WEIGHTS[ranking]}"
               + (" (terms salient in at least max(3, 2%) of the cluster's examples)." if ranking == "distinctive"
                  else "."))

    st.subheader("Word clouds")
    cards = ui.cluster_cloud_cards(summary, ranking)
    st.caption(f"Term size = {WEIGHTS[ranking]}, the weights of the table's top terms."
               + (f" The {len(cards)} largest clusters; the table lists all {len(summary)}."
                  if len(summary) > len(cards) else ""))
    st.html(ui.cloud_grid_html(cards))

    st.subheader("Examples of a cluster")
    clusters = [int(c) for c in summary["cluster"]]
    top_terms = summary.set_index("cluster")["top_terms"]
    # A cluster's number names a group of this clustering only: after a new count, slice, representation or run
    # the same number is another group, so the pick is cleared rather than listing an unrelated group's examples
    # (and a recluster then sends no 1,000-row table to the browser: 0.1-0.4 s of a 2-core machine's time at 1M).
    clustering = view.clustering_key
    if st.session_state.get(PICK_OF, clustering) != clustering:
        ui.forget(PICK_KEY)
    st.session_state[PICK_OF] = clustering
    pick = ui.synced(st.selectbox, "Cluster", PICK_KEY, NO_PICK, options=[NO_PICK, *clusters],
                     format_func=lambda c: ("— pick a cluster, or select a row of the table —" if c == NO_PICK
                                            else f"cluster {c} · {top_terms.loc[c] or '—'}"))
    if pick == NO_PICK:
        st.caption("Select a row of the table above, or pick a cluster here, to list its examples.")
    else:
        members = view.rows[labels == pick]
        info = summary.set_index("cluster").loc[pick]
        st.markdown(f"Cluster {pick}: **{len(members):,} examples** ({info.size_pct:.1f}% of the slice); labels "
                    f"{md(info.labels_text)} (majority *{md(info.majority_label)}*); predictions "
                    f"{md(info.preds_text)} (majority *{md(info.majority_pred)}*); accuracy {info.accuracy:.0%} "
                    f"(recall per class: {md(info.class_recall_text)}); share of each class's examples in the slice: "
                    f"{md(info.recall_text)}.")
        if info.shortcut:
            st.warning(f"⚠️ Possible shortcut: {md(info.flag_reason)}.")
        ui.example_list(view, members, key="cluster_members")
    # the counts one step away, computed while the user reads this page: the count's +/- is then a cache hit
    ui.prefetch_cluster_counts(view, ranking)


clusters_view(view)

"""Clusters: k-means on the slice's representation; sizes, accuracy, top salient terms, word clouds, members."""
import streamlit as st

from core import plots, ui

view = ui.current_view()
ui.page_header("Clusters", view,
               "Each cluster groups examples whose salient terms are alike. Its **top terms** are the terms with "
               "the highest mean salience in the cluster (S1 vocabulary, special tokens and punctuation left out). "
               "A small cluster with high accuracy and unusual top terms often reveals a shortcut in the data.")
ui.require_rows(view, view.n_clusters, f"the {view.n_clusters} clusters asked for (sidebar, *Clusters*)")

summary = view.cluster_summary()
labels = view.cluster_labels()
if len(summary) < view.n_clusters:
    st.info(f"k-means found only {len(summary)} distinct cluster{'s' if len(summary) != 1 else ''} instead of "
            f"{view.n_clusters}: many examples of the slice have identical vectors in this representation "
            "(for instance all-zero rows). Try another representation or a larger k.")

chart, clouds_intro = st.columns([3, 2], gap="large")
with chart:
    st.plotly_chart(plots.cluster_size_bar(summary), key="cluster_sizes")
with clouds_intro:
    st.markdown(f"**{len(summary)} clusters** of {len(view.rows):,} examples.")
    largest = summary.iloc[0]
    best = summary.sort_values(["accuracy", "size"], ascending=[False, True]).iloc[0]
    st.markdown(f"- Largest: cluster {largest.cluster}, {largest.size_pct:.1f}% of the slice\n"
                f"- Most accurate: cluster {best.cluster} ({best.accuracy:.0%}, {best.size_pct:.1f}% of the slice), "
                f"top terms *{best.top_terms or '—'}*")
    st.caption("Select a row of the table to list that cluster's examples.")

table = summary[["cluster", "size", "size_pct", "majority_label", "majority_pred", "accuracy", "top_terms"]]


def _pick_from_table() -> None:
    selected = st.session_state["cluster_table"].selection.rows
    if selected:
        st.session_state["cluster_pick"] = int(table.iloc[selected[0]].cluster)


st.dataframe(
    table, hide_index=True, key="cluster_table", on_select=_pick_from_table, selection_mode="single-row",
    column_config={
        "cluster": st.column_config.NumberColumn("cluster", width="small"),
        "size": st.column_config.NumberColumn("examples", format="%d"),
        "size_pct": st.column_config.ProgressColumn("% of slice", min_value=0.0, max_value=100.0, format="%.1f%%"),
        "majority_label": "majority label",
        "majority_pred": "majority prediction",
        "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0.0, max_value=1.0, format="%.2f"),
        "top_terms": st.column_config.TextColumn("top terms (mean salience)", width="large"),
    },
)

st.subheader("Word clouds")
st.caption("Term size = mean salience of the term in the cluster.")
per_row = 4
shown = summary if len(summary) <= 8 else summary.iloc[:8]
for start in range(0, len(shown), per_row):
    for col, (_, cluster) in zip(st.columns(per_row), shown.iloc[start:start + per_row].iterrows()):
        with col:
            st.markdown(f"**Cluster {cluster.cluster}** · {cluster.size_pct:.1f}% · accuracy {cluster.accuracy:.0%}")
            png = ui.wordcloud_png(tuple(cluster.terms), 400, 220)
            if png is None:
                st.caption("(no salient terms)")
            else:
                st.image(png, width="stretch")
if len(summary) > len(shown):
    st.caption(f"Word clouds of the {len(shown)} largest clusters; the table lists all {len(summary)}.")

st.subheader("Examples of a cluster")
clusters = [int(c) for c in summary["cluster"]]
pick = ui.synced(st.selectbox, "Cluster", "cluster_pick", clusters[0], options=clusters,
                 format_func=lambda c: f"cluster {c} · {summary.set_index('cluster').loc[c, 'top_terms'] or '—'}")
members = view.rows[labels == pick]
info = summary.set_index("cluster").loc[pick]
st.markdown(f"Cluster {pick}: **{len(members):,} examples** ({info.size_pct:.1f}% of the slice), "
            f"majority label *{info.majority_label}*, majority prediction *{info.majority_pred}*, "
            f"accuracy {info.accuracy:.0%}.")
ui.example_list(view, members, key="cluster_members")

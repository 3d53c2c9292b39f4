"""Saliency Atlas: the entry page (run summary). Run with `streamlit run app.py`.

The other pages are the scripts in pages/, found by Streamlit's pages-directory convention (st.navigation is
not used, so there is one way of declaring pages). Every page, this one included, starts with
`ui.current_view()`, which draws the shared sidebar (run, slice, representation) from the session and the
link's query parameters, so a page opened directly from a shared link shows the same view.
"""
from pathlib import Path

import pandas as pd
import streamlit as st

from core import analysis, plots, ui
from core.ui import escape_markdown as md  # names and paths in the manifest come from the user's model and data
from core.ui import inline_code

TRUNCATION_WARNING_FRACTION = 0.2  # warn when more than this fraction of the examples was cut at max_length

view = ui.current_view()
run, manifest = view.run, view.run.manifest
counts, accuracy = manifest.get("counts", {}), manifest.get("accuracy", {})

st.title("Saliency Atlas")
st.caption(f"Run {inline_code(run.run_id)} · {md(run.title)}")
st.markdown(
    "Dataset-level saliency analysis: every example is turned into the vector of its most salient terms, "
    "then clustered, mapped and searched. Pick a **slice** and a **representation** in the sidebar; every page "
    "uses them, and the address bar keeps them so a view can be shared as a link."
)

cols = st.columns(4)
cols[0].metric("Examples", f"{counts.get('examples', len(run.examples)):,}")
cols[1].metric("Accuracy", f"{accuracy.get('overall', run.examples['correct'].mean()):.1%}")
cols[2].metric("Tokens", f"{counts.get('tokens', 0):,}")
cols[3].metric("Truncated examples", f"{counts.get('truncated', 0):,}",
               help=f"Texts longer than max_length = {manifest.get('settings', {}).get('max_length')} tokens "
                    "were cut; their tail has no saliency.")
n_examples = len(run.examples)
n_truncated = int(run.examples["truncated"].sum()) if "truncated" in run.examples else int(counts.get("truncated", 0))
if n_examples and n_truncated / n_examples > TRUNCATION_WARNING_FRACTION:
    side = manifest.get("settings", {}).get("truncation") or "head"
    kept = {"head": "their beginning", "tail": "their end"}.get(side, "their beginning and end")
    st.warning(
        f"**{n_truncated / n_examples:.0%} of the examples ({n_truncated:,} of {n_examples:,}) were cut at "
        f"max_length = {manifest.get('settings', {}).get('max_length')} tokens**: the model saw, and the saliency "
        f"covers, only {kept}. Re-run `python -m core.precompute` with a larger `--max-length` (up to the model's "
        "limit, often 512)"
        + (", or with `--truncation tail` (or `head+tail`) to keep the end of long texts." if side == "head" else "."),
        icon=":material/content_cut:")

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Model and data")
    model, data = manifest.get("model", {}), manifest.get("data", {})
    seconds = manifest.get("timings", {}).get("total_seconds", 0)
    skipped = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in (data.get("skipped") or {}).items() if v)
    st.markdown(
        f"- **Model**: {inline_code(model.get('name', '?'))} ({md(model.get('architecture', '?'))}) at "
        f"{inline_code(model.get('path', '?'))}\n"
        f"- **Classes**: {md(', '.join(f'{i} = {n}' for i, n in enumerate(run.label_names)))}\n"
        f"- **Data**: {inline_code(Path(str(data.get('path', '?'))).name)} at {inline_code(data.get('path', '?'))}"
        + (f" (rows skipped: {md(skipped)})" if skipped else "") + "\n"
        f"- **Attribution methods**: {md(', '.join(run.methods))}\n"
        f"- **Computed on** {md(manifest.get('device', '?'))} in {seconds:,.0f} s"
        f" ({manifest.get('examples_per_second', 0):,.1f} examples/s), {md(str(manifest.get('created', ''))[:19])}"
    )
    per_split = counts.get("per_split", {}) or {}
    split_rows = [{"split": s, "examples": n, "accuracy": accuracy.get(s)} for s, n in per_split.items()]
    if split_rows:
        ui.dataframe(pd.DataFrame(split_rows), hide_index=True,
                     column_config={"accuracy": st.column_config.ProgressColumn(
                         "accuracy", min_value=0.0, max_value=1.0, format="%.3f")})
    label_counts = run.examples.groupby(["split", "label"]).size().unstack(fill_value=0)
    label_counts.columns = [view.label_name(int(c)) for c in label_counts.columns]
    st.caption("Examples per split and true label")
    st.bar_chart(label_counts, horizontal=True, height=60 + 40 * len(label_counts))

with right:
    st.plotly_chart(plots.confusion_figure(analysis.confusion(run.examples, run.num_labels), run.label_names),
                    key="confusion")
    st.caption("All examples of the run; rows are true labels, columns predictions.")

st.subheader("Where to go next")
guide = st.columns(5)
guide[0].page_link(ui.PAGE_FILES["clusters"], label="Clusters", icon=":material/workspaces:",
                   help="k-means on the slice: sizes, accuracy, top salient terms, word clouds.")
guide[1].page_link(ui.PAGE_FILES["map"], label="Map", icon=":material/scatter_plot:",
                   help="UMAP / t-SNE map of the slice; lasso points to read them.")
guide[2].page_link(ui.PAGE_FILES["examples"], label="Examples", icon=":material/article:",
                   help="Search the slice; read one example shaded by saliency.")
guide[3].page_link(ui.PAGE_FILES["neighbours"], label="Neighbours", icon=":material/hub:",
                   help="Nearest examples of one example, with shared salient terms.")
guide[4].page_link(ui.PAGE_FILES["seed_terms"], label="Seed terms", icon=":material/format_list_bulleted:",
                   help="Most salient and highest-PMI terms of a class; download them.")

with st.expander("Run settings, versions and timings"):
    st.json({k: manifest.get(k) for k in ("settings", "versions", "timings", "fingerprint")}, expanded=1)

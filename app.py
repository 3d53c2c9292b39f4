"""Saliency Atlas: the entry page (run summary). Run with `streamlit run app.py`.

The other pages are the scripts in pages/, found by Streamlit's pages-directory convention (st.navigation is
not used, so there is one way of declaring pages). Every page, this one included, starts with
`ui.current_view()`, which draws the shared sidebar (run, slice, representation) from the session and the
link's query parameters, so a page opened directly from a shared link shows the same view.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import analysis, live_chart, metrics, plots, ui
from core.ui import escape_markdown as md  # names and paths in the manifest come from the user's model and data
from core.ui import inline_code

TRUNCATION_WARNING_FRACTION = 0.2  # warn when more than this fraction of the examples was cut at max_length
STATUS_ICONS = {"warn": ":material/warning:", "info": ":material/info:", "ok": ":material/check_circle:",
                "skipped": ":material/remove:"}
SHIFT_COLUMNS = {"term": "term", "higher_in": "more salient in", "mean_train": "mean salience, train",
                 "mean_other": "mean salience, other split", "difference": "difference (other - train)",
                 "z": "Welch z",
                 "support_train": "examples with it, train", "support_other": "examples with it, other split"}
BUTTONS_PER_CHECK = 3  # more findings than this: pick one in a list

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



def draw_findings(check: dict) -> None:
    """Draw a check's findings, each with a button that lists its examples on the Examples page."""
    findings = [f for f in check["findings"] if f["rows"]]
    if len(findings) <= BUTTONS_PER_CHECK:
        for f in findings:
            text_col, button_col = st.columns([5, 1])
            text_col.markdown(f"- {md(f['title'])}")
            if button_col.button(f"Show {f['count']:,}", key=f"warning_{f['id']}", icon=":material/article:",
                                 help="List these examples on the Examples page.", width="stretch"):
                ui.open_warning(f["id"], f["rows"][0])
        return
    by_id = {f["id"]: f for f in findings}
    pick_col, button_col = st.columns([5, 1], vertical_alignment="bottom")
    picked = pick_col.selectbox(f"{len(findings)} findings", list(by_id), key=f"warning_pick_{check['check']}",
                                format_func=lambda i: by_id[i]["title"])
    if button_col.button("Show examples", key=f"warning_open_{check['check']}", icon=":material/article:",
                         width="stretch"):
        ui.open_warning(picked, by_id[picked]["rows"][0])


st.subheader("Dataset warnings")
report = view.dataset_warnings()
flagged = [c for c in report["checks"] if c["status"] == "warn"]
st.caption(("Found: " + ", ".join(c["title"].lower() for c in flagged) + ". " if flagged else
            "No check found a problem. ")
           + "Computed once for the whole run (every split, whatever the slice) and kept in the run folder; open a "
             "check for its numbers and list its examples on the Examples page.")
for check in report["checks"]:
    count = check.get("count", 0)
    label = check["title"] + (f" ({count:,})" if count else "")
    with st.expander(label, expanded=False, icon=STATUS_ICONS.get(check["status"])):
        st.markdown(md(check["summary"]))
        if check["check"] == "imbalance" and check.get("table"):
            ui.dataframe(pd.DataFrame(check["table"])[["split", "examples", "classes", "ratio", "imbalanced"]],
                         hide_index=True, key="imbalance_table",
                         column_config={"ratio": st.column_config.TextColumn("largest / smallest class")})
        if check["check"] == "leakage":
            pairs = [p for f in check["findings"] for p in f.get("pairs", [])][:20]
            if pairs:
                texts = run.examples["text"]
                ui.dataframe(pd.DataFrame([{"row": p["row"], "text": texts.iloc[p["row"]],
                                            "train row": p["duplicate_of"], "train text": texts.iloc[p["duplicate_of"]],
                                            "cosine": p["cosine"], "character similarity": p["text_similarity"]}
                                           for p in pairs]), hide_index=True, key="leakage_pairs")
        if check["check"] == "shift":
            for table in check.get("tables", []):
                st.caption(f"train vs {md(table['split'])}: mean salience per example, and examples containing "
                           "the word")
                terms = pd.DataFrame(table["terms"])[list(SHIFT_COLUMNS)].rename(columns=SHIFT_COLUMNS)
                terms["more salient in"] = terms["more salient in"].map({"train": "train"}).fillna(table["split"])
                ui.dataframe(terms, hide_index=True, key=f"shift_{table['split']}",
                             column_config={SHIFT_COLUMNS[c]: st.column_config.NumberColumn(format="%.3f")
                                            for c in ("mean_train", "mean_other", "difference")}
                             | {SHIFT_COLUMNS["z"]: st.column_config.NumberColumn(format="%.1f")})
        draw_findings(check)

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
with right:
    label_counts = view.split_label_counts().copy()
    label_counts.columns = [view.label_name(int(c)) for c in label_counts.columns]
    st.caption("Examples per split and true label")
    # the legend and the axis take about 90 px: with less room a one-split run drew no bar at all
    st.bar_chart(label_counts, horizontal=True, height=100 + 40 * len(label_counts))

st.subheader("Metrics of the slice")
sliced = view.examples
st.caption(f"Slice: {md(view.describe())} ({len(sliced):,} of {len(run.examples):,} examples); change it in the "
           "sidebar.")
if sliced.empty:
    st.info("The slice is empty: no example matches every filter. Widen it in the sidebar to see its metrics.")
else:
    report_col, confusion_col = st.columns([3, 2], gap="large")
    with report_col:
        per_class = view.per_class_report()
        ui.dataframe(per_class, hide_index=True, key="per_class_metrics",
                     column_config={m: st.column_config.NumberColumn(format="%.3f")
                                    for m in ("precision", "recall", "f1")})
        st.caption("Per class: precision (of the examples predicted as it, the share labelled so), recall (of "
                   "the examples labelled so, the share predicted as it), F1 and their support; None where "
                   "undefined (a class the slice never predicts or never holds). Accuracy "
                   f"{sliced['correct'].mean():.1%}.")
    with confusion_col:
        # the charts of this first page are live charts too: st.plotly_chart would make the browser load
        # Streamlit's own plotly.js here and the package's again for the Clusters and Map pages' charts
        live_chart.live_chart(plots.confusion_figure(analysis.confusion(sliced, run.num_labels), run.label_names),
                              key="confusion")
        st.caption("The slice's examples; rows are true labels, columns predictions.")

    if run.num_labels == 2:
        names = run.label_names
        st.markdown("**Threshold** (binary task): an example is predicted positive when the positive class's "
                    "probability is at least the threshold; at 0.5 that is the model's own decision.")
        pick_col, slider_col = st.columns([1, 3])
        positive = ui.synced(pick_col.selectbox, "Positive class", "positive", names[1], options=names)
        threshold = ui.synced(slider_col.slider, "Threshold", "threshold", 0.5, min_value=0.0, max_value=1.0,
                              step=0.01)
        positive_id = names.index(positive)
        is_positive = sliced["label"].to_numpy() == positive_id
        scores = sliced[f"prob_{positive_id}"].to_numpy(dtype=np.float64)
        at = metrics.threshold_metrics(is_positive, scores, threshold)
        cols = st.columns(5)
        for col, (name, key) in zip(cols, [("Precision", "precision"), ("Recall", "recall"), ("F1", "f1"),
                                           ("False positive rate", "fpr"), ("Accuracy", "accuracy")]):
            value = at[key]
            col.metric(f"{name} at {threshold:.2f}", "—" if np.isnan(value) else f"{value:.3f}")
        st.caption(f"At {threshold:.2f}: {at['tp']:,} true positives, {at['fp']:,} false positives, {at['fn']:,} "
                   f"false negatives, {at['tn']:,} true negatives (positive: {md(positive)}).")
        curves = view.binary_curves(positive_id)
        if curves is None:
            st.caption("ROC and precision-recall curves need examples of both classes in the slice.")
        else:
            roc_col, pr_col = st.columns(2)
            with roc_col:  # a moved threshold redraws the curves in place (Plotly.react)
                live_chart.live_chart(plots.roc_figure(curves.fpr, curves.tpr, curves.roc_thresholds, curves.roc_auc,
                                                       (at["fpr"], at["tpr"])), key="roc")
            with pr_col:
                live_chart.live_chart(plots.precision_recall_figure(curves.precision, curves.recall,
                                                                    curves.pr_thresholds, curves.average_precision,
                                                                    (at["recall"], at["precision"])),
                                      key="pr")

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

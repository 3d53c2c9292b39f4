"""Checks: can the saliency maps be trusted? Faithfulness (AOPC) and randomization sanity checks."""
import threading

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core import faithfulness as fa
from core import ui
from core.ui import escape_markdown as md  # messages, folders and device names from the run and the user
from core.models import ModelLoadError, load_classifier
from core.saliency import ATTRIBUTION_METHODS, get_method

view = ui.current_view()
run = view.run
ui.page_header(
    "Checks", view,
    "Before reading clusters of saliency maps, check on your own model that the maps mean something. "
    "**Faithfulness**: do the tokens a method calls salient actually drive the prediction? **Randomization**: "
    "do the maps change when the model is broken? Both run on a seeded random sample of the whole run "
    "(the sidebar's slice does not apply) and are stored in the run folder, so each is computed once.",
    show_slice=False)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _model(path: str):
    return load_classifier(path), threading.Lock()


n_examples = len(run.examples)
controls = st.columns([1, 1, 2, 1])
sample = ui.synced(controls[0].number_input, "Sample size", "check_sample", min(500, n_examples),
                   min_value=1, max_value=n_examples, step=50,
                   help="Examples drawn at random (seeded) from the run. Larger is steadier but slower.")
removal = ui.synced(controls[1].selectbox, "Removal", "check_removal", "mask", options=list(fa.REMOVALS),
                    help="How a token is removed: replaced by the mask token, or deleted from the input.")
# a learned method (l2e) needs the student its run stores: offer it only where the run has it
choices = list(dict.fromkeys([*run.methods, *(m for m in ATTRIBUTION_METHODS if not get_method(m).learned)]))
methods = ui.synced(controls[2].multiselect, "Methods", "check_methods", list(run.methods), options=choices,
                    help="Methods the run stores are read from the cache; others are computed on the sample "
                         "(input marginalization and integrated gradients are slow on a CPU).")
seed = ui.synced(controls[3].number_input, "Seed", "check_seed", 0, min_value=0, step=1,
                 help="Seeds the sample, the random baseline and the re-initialised head.")
im_mlm, im_top_n, im_cum_prob = "", 10, 0.95
if "input_marginalization" in methods and "input_marginalization" not in run.methods:
    with st.expander("Input marginalization settings"):
        im_cols = st.columns([2, 1, 1])
        im_mlm = ui.synced(im_cols[0].text_input, "Masked language model folder (optional)", "check_mlm", "",
                           help="A local masked LM with the classifier's tokenizer. Empty: candidates are drawn "
                                "from the run's token frequencies (the same for every position).").strip()
        im_top_n = ui.synced(im_cols[1].number_input, "Candidates per token", "check_top_n", 10, min_value=1,
                             max_value=100, step=1, help="Each costs one forward pass per token.")
        im_cum_prob = ui.synced(im_cols[2].number_input, "Cumulative probability", "check_cum_prob", 0.95,
                                min_value=0.05, max_value=1.0, step=0.05,
                                help="Stop adding candidates once their probability mass reaches this.")
settings = fa.CheckSettings(sample_size=int(sample), seed=int(seed), methods=tuple(methods) or None,
                            removal=removal, im_mlm=im_mlm or None, im_top_n=int(im_top_n),
                            im_cum_prob=float(im_cum_prob))
if not methods:
    st.info("Pick at least one attribution method.")
    st.stop()


def _with_model(compute):
    try:
        loaded, lock = _model(run.manifest["model"]["path"])
    except ModelLoadError as exc:
        st.error(f"The run's model cannot be loaded, so checks cannot be computed: {md(exc)}")
        return None
    with lock, st.spinner("Computing… (stored in the run folder when done)"):
        try:
            return compute(loaded)
        except (ModelLoadError, ValueError) as exc:
            st.error(md(exc))
            return None


def _curve_figure(summary: pd.DataFrame) -> go.Figure:
    curves = fa.curve_frame(summary, settings.fractions)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Comprehensiveness (higher = more faithful)",
                                                        "Sufficiency (lower = more faithful)"))
    palette = px.colors.qualitative.Plotly
    for i, (method, group) in enumerate(curves.groupby("method", sort=False)):
        style = {"dash": "dot", "color": "gray"} if method == fa.RANDOM else {"color": palette[i % len(palette)]}
        for col, metric in ((1, "comprehensiveness"), (2, "sufficiency")):
            fig.add_trace(go.Scatter(x=group["fraction"] * 100, y=group[metric], mode="lines+markers", name=method,
                                     legendgroup=method, showlegend=col == 1, line=style), row=1, col=col)
    fig.update_xaxes(title_text="% of tokens (most salient first)")
    fig.update_yaxes(title_text="drop in p(predicted class)")
    fig.update_layout(height=360, margin={"t": 40, "b": 10})
    return fig


# ---------------------------------------------------------------- faithfulness
st.header("Faithfulness")
st.markdown(
    "For each example the top q% most salient tokens (q = 5, 10, 20, 50) are **removed** "
    "(*comprehensiveness*: how much the probability of the predicted class drops; **higher is better**) or "
    "**kept alone** (*sufficiency*: how much it drops when everything else is removed; **lower is better**). "
    "AOPC is the average over the four q. A **random** ranking is the baseline: a method whose comprehensiveness "
    "is not clearly above random's (or whose sufficiency is not below) does not point at what the model uses.")
stored = fa.load_result(run, fa.faithfulness_name(fa.resolve(run, settings)))
if st.button("Compute faithfulness" if stored is None else "Recompute faithfulness", key="run_faithfulness"):
    stored = _with_model(lambda loaded: fa.run_faithfulness(run, settings, loaded, force=True))
if stored is None:
    st.caption("Not computed yet for these settings.")
else:
    summary_json, _ = stored
    summary = pd.DataFrame(summary_json["methods"])
    table = summary[["method", "aopc_comprehensiveness", "aopc_sufficiency", "examples"]].rename(
        columns={"aopc_comprehensiveness": "AOPC comprehensiveness ↑", "aopc_sufficiency": "AOPC sufficiency ↓"})
    ui.dataframe(table, hide_index=True, column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns if c.startswith("AOPC")})
    st.plotly_chart(_curve_figure(summary), key="aopc_curve")
    random_row = summary[summary["method"] == fa.RANDOM]
    if len(random_row):
        base = float(random_row["aopc_comprehensiveness"].iloc[0])
        weak = summary[(summary["method"] != fa.RANDOM) & (summary["aopc_comprehensiveness"] <= base)]
        for method in weak["method"]:
            st.warning(f"**{md(method)}** is no more comprehensive than a random ranking on this sample: its "
                       "most salient tokens are not the ones the prediction depends on.")
    st.caption(f"{summary_json['examples']:,} examples · removal: {md(summary_json['settings']['removal'])} · "
               f"computed in {summary_json['seconds']:.0f} s on {md(summary_json['device'])}")

# ---------------------------------------------------------------- randomization
st.header("Randomization sanity checks")
st.markdown(
    "The maps are recomputed with a **broken model**: the same model with its classification head "
    "re-initialised at random, or (if you give one) a second model trained the same way from another seed. "
    "Both are asked about the same class.\n"
    "- **Jaccard@25%**: overlap of the two maps' top-25% token sets, from 0 (disjoint) to 1 (the same tokens). "
    "*Chance* is the overlap with a random ranking.\n"
    "- **Spearman**: rank correlation of the two maps over all tokens, from −1 to 1 (0 = unrelated).\n"
    "- Against an untrained head, a trustworthy method should change a lot (low Jaccard and Spearman, AOPC of "
    "the broken model near zero); a method whose maps **barely change** describes the input more than the "
    "model. Against a second seed, high agreement is good news: the maps are stable across training runs.")
other_dir = ui.synced(st.text_input, "Second model folder (optional)", "check_other", "",
                      help="A local folder with a model of the same architecture and tokenizer, trained with "
                           "another seed. Empty: compare against an untrained classification head.").strip()
stored = fa.load_result(run, fa.randomization_name(fa.resolve(run, settings), other_dir or None))
if st.button("Compute randomization check" if stored is None else "Recompute randomization check",
             key="run_randomization"):
    stored = _with_model(lambda loaded: fa.run_randomization(run, settings, other_dir or None, loaded, force=True))
if stored is None:
    st.caption("Not computed yet for these settings.")
else:
    summary_json, per_example = stored
    summary = pd.DataFrame(summary_json["methods"])
    st.markdown(f"Compared with: **{md(summary_json['other'])}** · the two models agree on "
                f"{summary_json['prediction_agreement']:.0%} of the predictions.")
    for _, row in summary[summary["barely_changes"]].iterrows():
        st.warning(f"**{md(row['method'])} barely changes** (mean Jaccard@25% {row['jaccard_mean']:.2f}, "
                   f"Spearman {row['spearman_mean']:.2f})"
                   + (" although the head was re-initialised: its maps reflect the input more than what the "
                      "model learned." if summary_json["kind"] == "untrained_head" else
                      " between the two models: stable across seeds."))
    table = summary[["method", "jaccard_mean", "jaccard_chance", "spearman_mean", "aopc_comprehensiveness_trained",
                     "aopc_comprehensiveness_other", "barely_changes"]].rename(columns={
        "jaccard_mean": "Jaccard@25%", "jaccard_chance": "Jaccard chance", "spearman_mean": "Spearman",
        "aopc_comprehensiveness_trained": "AOPC comp. (trained)",
        "aopc_comprehensiveness_other": "AOPC comp. (other)", "barely_changes": "barely changes"})
    ui.dataframe(table, hide_index=True, column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns[1:-1]})
    fig = go.Figure([go.Box(y=group["jaccard"], name=method, boxmean=True)
                     for method, group in per_example.groupby("method", sort=False)])
    fig.update_layout(height=300, yaxis_title="Jaccard@25% per example", margin={"t": 20, "b": 10})
    st.plotly_chart(fig, key="jaccard_box")
    st.caption(f"{summary_json['examples']:,} examples · computed in {summary_json['seconds']:.0f} s on "
               f"{md(summary_json['device'])}")

"""Sensitivity: how much do seed terms move the model? Counterfactual insertion and masking (method.md §4.3)."""
import functools
import json
import threading
from pathlib import Path

import streamlit as st

from core import analysis, ui
from core.ui import escape_markdown as md  # terms, file, class and split names are user or dataset text
from core.ui import inline_code
from core import counterfactual as cf
from core.models import ModelLoadError, load_classifier
from core.store import stat_signature

view = ui.current_view()
run = view.run
names = run.label_names
splits = run.splits

st.title("Model sensitivity")
st.caption(f"Run {inline_code(run.run_id)} · {md(run.title)} · the sidebar's slice and representation do not "
           "apply on this page: lists are ranked on a split of the run, the test runs on another.")
st.markdown(
    "Which terms does the model *react* to? Each seed term is **inserted** at a random word position into "
    "examples of the other class(es), and **masked** (every whole-word occurrence replaced by the tokenizer's "
    "mask token) in examples of the target class; the page reports the change in the target-class probability, "
    "p(after) − p(before). Compare the **salient terms** (by default the terms more salient in the class than in "
    "the other classes) with the **log-odds** or **PMI** terms (frequent in the class, but not necessarily used by "
    "the model) and with terms of your own (e.g. identity terms). The run's lists are the ones the Seed terms page "
    "shows for the same class, split and settings.")


def _split_options(preferred: str) -> tuple[list[str], str]:
    options = ["all", *splits]
    return options, preferred if preferred in splits else "all"


@st.cache_data(show_spinner="Ranking seed terms…", max_entries=64)
def _run_lists(_run, path: str, stamp: int, target: int, top_n: int, min_count: int, method: str,
               k: int | None, split: str, ranking: str, by: str, unit: str,
               weighting: str) -> dict[str, cf.SeedList]:
    split_arg = None if split == "all" else split
    common = {"top_n": top_n, "min_count": min_count, "split": split_arg, "by": by, "unit": unit}
    return {"salient": cf.salient_seed_list(_run, target, method=method, k=k, ranking=ranking, weighting=weighting,
                                            matrix_of=functools.partial(ui.run_matrix, _run), **common),
            "log-odds": cf.log_odds_seed_list(_run, target, **common),
            "PMI": cf.pmi_seed_list(_run, target, **common)}


@st.cache_data(show_spinner="Counting the examples that contain your terms…", max_entries=64)
def _containing(_run, path: str, stamp: int, split: str, target: int,
                terms: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    rows = cf.split_rows(_run.examples, None if split == "all" else split)
    texts = _run.examples["text"].astype(str).to_numpy()[rows]
    in_class = _run.examples["label"].to_numpy()[rows] == target
    hits = cf.texts_containing(texts, terms)
    return {t: (int(hits[t].sum()), int(hits[t][in_class].sum())) for t in terms}


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _model(model_path: str, stamp: str):
    # The lock travels with the shared model: sessions run in their own threads.
    return load_classifier(model_path), threading.Lock()


# ---------------------------------------------------------------- settings

left, right = st.columns(2, gap="large")
with left:
    st.subheader("Seed-term lists")
    target = ui.synced(st.selectbox, "Target class", "sens_target", 0, options=list(range(len(names))),
                       format_func=lambda i: f"{i} · {names[i]}",
                       help="Insertion goes into examples of the other classes; masking into examples of this "
                            "class. The change is measured on this class's probability.")
    c1, c2, c3 = st.columns(3)
    top_n = c1.number_input("Terms per list", min_value=1, max_value=100, value=10, step=1, key="sens_top_n")
    min_count = c2.number_input("Min. examples with the term", min_value=1, max_value=100_000, value=20, step=1,
                                key="sens_min_count",
                                help="Terms must occur in at least this many of the examples they are ranked on.")
    list_split_options, list_split_default = _split_options("train")
    list_split = c3.selectbox("Rank terms on split", list_split_options,
                              index=list_split_options.index(list_split_default), key="sens_list_split")
    c1, c2 = st.columns(2)
    method = c1.selectbox("Salience method (salient list)", run.methods, index=run.methods.index(view.method),
                          key="sens_method")
    k = c2.number_input("k: salient terms per example (0 = all)", min_value=0, max_value=10_000,
                        value=int(view.vocab_key.k or 0), step=1, key="sens_k",
                        help="The salient list averages the S1 vectors (each example's top-k terms); the paper "
                             "uses k = 5.")
    c1, c2 = st.columns(2)
    ranking = c1.selectbox("Salient ranking", ["distinctive", "mean"], key="sens_ranking",
                           format_func={"distinctive": "distinctive (vs other classes)",
                                        "mean": "mean salience (paper)"}.get,
                           help="Distinctive (the Seed terms page's default): mean S1 salience over the class's "
                                "examples minus over the other classes' examples, so function words salient "
                                "everywhere drop out. Mean salience: the paper's column mean over the class, where "
                                "frequent terms (a, the, and) rank high.")
    by = c2.selectbox("Class of an example", list(cf.CLASS_COLUMNS), key="sens_by",
                      format_func={"label": "true label", "pred": "model prediction"}.get,
                      help="Which examples count as the target class when ranking terms. Grad-L2 explains the "
                           "prediction, so with true labels terms that push against the class can rank too.")
    use = st.multiselect("Lists from the run", ["salient", "log-odds", "PMI"], default=["salient", "log-odds"],
                         key="sens_use",
                         help="salient: S1 salience (top-k) of the target class, ranked as chosen above; "
                              "log-odds: weighted log-odds z-score of the term in the class (Monroe et al. 2008); "
                              "PMI: PMI(term; target class). The Seed terms page shows the same lists.")
    user_text = st.text_area("Your terms", key="sens_user_terms", placeholder="he, she, they\nman\nwoman",
                             help="One term per line or comma-separated (a phrase such as `very good` stays "
                                  "one term); a single line without commas is split on spaces.")
    uploads = st.file_uploader("Term lists exported from the dashboard (txt, csv or json)", key="sens_upload",
                               type=["txt", "csv", "json"], accept_multiple_files=True)
with right:
    st.subheader("Test")
    eval_options, eval_default = _split_options("test")
    eval_split = st.selectbox("Examples to test on (split)", eval_options, index=eval_options.index(eval_default),
                              key="sens_eval_split")
    c1, c2 = st.columns(2)
    m = c1.number_input("m: examples per inserted term", min_value=1, max_value=100_000, value=100, step=10,
                        key="sens_m")
    seed = c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="sens_seed")
    cap = c1.number_input("Max. examples masked per term (0 = all)", min_value=0, max_value=1_000_000, value=0,
                          step=100, key="sens_mask_cap")
    n_boot = c2.number_input("Bootstrap resamples", min_value=100, max_value=10_000, value=1000, step=100,
                             key="sens_boot")

lists: list[cf.SeedList] = []
if use:
    from_run = _run_lists(run, view.path, view.stamp, int(target), int(top_n), int(min_count), method,
                          int(k) or None, list_split, ranking, by, view.vocab_key.unit, view.vocab_key.weighting)
    lists += [from_run[name] for name in ("salient", "log-odds", "PMI") if name in use]
if user_text.strip():
    lists.append(cf.user_seed_list(user_text, name="user"))
for upload in uploads or []:
    try:
        lists.append(cf.seed_list_from_file(upload.name, upload.getvalue()))
    except ValueError as exc:
        st.warning(f"Could not read {md(upload.name)}: {md(exc)}")

with left:
    for seed_list in lists:
        dropped = f" · left out: {md(', '.join(seed_list.dropped))}" if seed_list.dropped else ""
        if seed_list.source == "user" and seed_list.terms:
            counts = _containing(run, view.path, view.stamp, eval_split, int(target), seed_list.terms)
            shown = ", ".join(f"{inline_code(t)} ({counts[t][0]:,} · {counts[t][1]:,})" for t in seed_list.terms)
            st.markdown(f"**{md(seed_list.name)}** ({len(seed_list.terms)}): {shown}{dropped}")
            st.caption(f"(examples of the *{md(eval_split)}* split that contain the term · of them, labelled "
                       f"*{md(names[int(target)])}*: the examples masking edits)")
        else:
            st.markdown(f"**{md(seed_list.name)}** ({len(seed_list.terms)}): "
                        + (", ".join(inline_code(t) for t in seed_list.terms) or "*no term passes the filters*")
                        + dropped)
empty = [s.name for s in lists if not s.terms]
if empty:
    st.info(f"No term in: {md(', '.join(empty))}. Lower *Min. examples with the term* or check the split.")
lists = [s for s in lists if s.terms]

model_path = str(run.manifest.get("model", {}).get("path", ""))
model_missing = not model_path or not Path(model_path).is_dir()
if model_missing:
    st.error(f"**The model folder of this run no longer exists** ({inline_code(model_path)}). The test needs the "
             "model itself, not only the cached saliency: restore the folder, or re-run `python -m core.precompute "
             "--model DIR --data FILE` with the model's new location and pick that run.")

settings = cf.SensitivitySettings(m=int(m), seed=int(seed), n_bootstrap=int(n_boot),
                                  mask_max_examples=int(cap) or None)
params = json.dumps({"run": view.path, "target": int(target), "split": eval_split,
                     "lists": [[s.name, list(s.terms)] for s in lists], "settings": repr(settings)})

clicked = st.button("Run test", type="primary", key="sens_run", disabled=model_missing or not lists,
                    help="Loads the run's model and predicts every edited text." if lists
                    else "Choose at least one non-empty list.")
if clicked:
    try:
        loaded, lock = _model(model_path, stat_signature(Path(model_path)))
    except ModelLoadError as exc:
        st.error(f"The model could not be loaded: {md(exc)}")
        st.stop()
    bar = st.progress(0.0, text="Starting…")
    with lock:
        result = cf.sensitivity_for_run(run, loaded, int(target), lists, settings,
                                        split=None if eval_split == "all" else eval_split,
                                        progress=lambda fraction, text: bar.progress(fraction, text=text))
    bar.empty()
    st.session_state["sens_result"] = (params, result)

stored = st.session_state.get("sens_result")
if stored is None or json.loads(stored[0])["run"] != view.path:
    st.stop()
stored_params, result = stored
if stored_params != params:
    st.info("The settings changed since these results were computed: press **Run test** to refresh them.")

# ---------------------------------------------------------------- results

st.divider()
st.subheader(f"Results for class {result.target_class} · {md(result.target_label)}")
_masked_counts = [s.n_examples for (test, _), s in result.stats.items() if test == cf.MASKING]
_masked = (f"{min(_masked_counts):,}–{max(_masked_counts):,}" if _masked_counts and
           min(_masked_counts) != max(_masked_counts) else f"{max(_masked_counts, default=0):,}")
st.caption(
    f"Insertion into {result.n_insertion_examples:,} of {result.n_insertion_pool:,} examples of the other "
    f"class(es); masking with {inline_code(result.replacement or '(deletion)')} in the examples of the target "
    f"class that contain the term: {_masked} per term (n_examples in the table), of {result.n_masking_pool:,} "
    f"target-class examples; seed {result.settings.seed}, "
    f"{result.settings.n_bootstrap:,} bootstrap resamples, {result.seconds:.1f} s. List values are mean ± std over "
    "the list's terms; terms that never occur are left out of the masking mean.")
ui.dataframe(result.summary(), hide_index=True, key="sens_summary",
             column_config={"terms": st.column_config.TextColumn("terms", width="large")})

per_term = result.per_term()
tab_ins, tab_mask = st.tabs(["Insertion", "Masking"])
with tab_ins:
    st.plotly_chart(cf.term_bar_figure(per_term, cf.INSERTION), key="sens_fig_insertion")
with tab_mask:
    st.plotly_chart(cf.term_bar_figure(per_term, cf.MASKING), key="sens_fig_masking")
    missing = per_term[(per_term["test"] == cf.MASKING) & (per_term["occurrences"] == 0)]
    if len(missing):
        st.caption("No occurrences in the target class (not shown, not averaged): "
                   + md(", ".join(dict.fromkeys(missing["term"]))))

per_list = result.per_list()
number = st.column_config.NumberColumn
with st.expander("Per list, with 95% bootstrap intervals", expanded=False):
    ui.dataframe(per_list, hide_index=True, key="sens_per_list",
                 column_config={c: number(c, format="%+.3f") for c in ("mean_change", "ci_low", "ci_high")}
                 | {"std_change": number("std_change", format="%.3f")})
with st.expander("Per term", expanded=True):
    ui.dataframe(per_term, hide_index=True, key="sens_per_term",
                 column_config={c: number(c, format="%+.3f") for c in ("mean_change", "ci_low", "ci_high")}
                 | {c: number(c, format="%.3f") for c in ("std_change", "mean_p_before", "mean_p_after")})

stem = f"sensitivity-{run.run_id}-class{result.target_class}"
d1, d2, d3 = st.columns(3)
d1.download_button("Per term (CSV)", analysis.to_csv_safe(per_term), f"{stem}-terms.csv", "text/csv",
                   key="sens_dl_terms", icon=":material/download:", on_click="ignore")
d2.download_button("Per list (CSV)", analysis.to_csv_safe(per_list), f"{stem}-lists.csv", "text/csv",
                   key="sens_dl_lists", icon=":material/download:", on_click="ignore")
d3.download_button("Everything (JSON)", result.to_json(), f"{stem}.json", "application/json", key="sens_dl_json",
                   icon=":material/download:", on_click="ignore")

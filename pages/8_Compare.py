"""Compare: two runs over the same data (two models, two checkpoints) or two attribution methods of one run.

Run A is the sidebar's run and method, run B is picked here; the slice is the sidebar's, read on run A (a slice by
prediction or correctness uses A's predictions) and applied to both. The computations are core.compare's.
"""
import dataclasses
import functools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import analysis, compare, plots, ui
from core.representations import RepresentationKey
from core.store import CacheError, Run, read_manifest
from core.ui import escape_markdown as md  # run titles, class names, terms and texts come from the data
from core.ui import inline_code

N_TERMS = 12
N_LEAST = 20

view = ui.current_view()
run_a = view.run
ui.page_header("Compare", view,
               "Two runs over the same data, side by side: two models or checkpoints, or two attribution methods of "
               "one run. **Run A** is the sidebar's run and method, **run B** the one picked below. What changed, one "
               "tab each: accuracy per slice and the examples one gets right and the other wrong, the terms whose "
               "salience rose or fell, how far the saliency maps agree, and where each cluster went.")

# ------------------------------------------------------------------ choosing run B
healthy = [e for e in ui.run_entries() if e.problem is None]
titles = {e.run_id: e.title for e in healthy}
others = [rid for rid in titles if rid != run_a.run_id]


def _same_data(rid: str) -> bool:
    try:
        return compare.same_examples(run_a.manifest, read_manifest(run_a.path.parent / rid))
    except CacheError:
        return False


HOW_TO_ADD = ("Precompute a second model or checkpoint on the same data file "
              "(`python -m core.precompute --model OTHER_MODEL --data SAME_FILE`, with the same data options), then "
              "reload this page.")
if not others and len(run_a.methods) < 2:
    st.info(f"**Compare needs two runs over the same data** (or one run with two attribution methods). This cache "
            f"holds only this run, with the single method {inline_code(run_a.methods[0])}. {HOW_TO_ADD}")
    st.stop()
if not others:
    st.info("**Compare needs two runs over the same data** to compare two models or checkpoints; this cache holds "
            "only this run, so the page compares two of its attribution methods. " + HOW_TO_ADD)

options = [run_a.run_id, *others]
default_b = next((rid for rid in others if _same_data(rid)), others[0] if others else run_a.run_id)
controls = st.columns([4, 2, 1], vertical_alignment="bottom")
run_b_id = ui.synced(controls[0].selectbox, "Run B", "run_b", default_b, options=options,
                     format_func=lambda rid: ("this run (compare its methods) · " if rid == run_a.run_id else "")
                     + titles.get(rid, rid),
                     help="Runs precomputed on the same data file with the same data options. Run A is the "
                          "sidebar's *Cached run*.")
try:
    run_b = ui.open_run_id(run_b_id)
except CacheError as exc:
    st.error(f"Run B cannot be read. {md(exc)}")
    st.stop()
same_run = run_b.run_id == run_a.run_id
if same_run:
    default_method = next((m for m in run_b.methods if m != view.method), view.method)
else:
    default_method = view.method if view.method in run_b.methods else run_b.methods[0]
method_b = ui.synced(controls[1].selectbox, "Method of B", "method_b", default_method, options=run_b.methods,
                     help="Attribution method of run B's maps and terms; run A's is the sidebar's.")


def _swap() -> None:
    """Make B the sidebar's run A and A run B (a widget callback: runs before the page redraws)."""
    st.session_state["run"], st.session_state["run_b"] = run_b.run_id, run_a.run_id
    st.session_state["method"], st.session_state["method_b"] = method_b, view.method


controls[2].button("Swap", icon=":material/swap_horiz:", key="swap_runs", on_click=_swap,
                   disabled=same_run and method_b == view.method, width="stretch",
                   help="Swap A and B: run B becomes the sidebar's run (the Examples page then opens examples in it).")
st.caption(f"**A**: {md(run_a.title)} · {md(view.method)} · **B**: {md(run_b.title)} · {md(method_b)}. The "
           "sidebar's slice is read on run A (a filter on the predicted class or correctness uses A's predictions) "
           "and applied to both.")
if same_run and method_b == view.method:
    st.info("Run B is run A with the same method: everything agrees. Pick another run or method for B.")

stamp_a, stamp_b = ui.run_stamp(run_a.path), ui.run_stamp(run_b.path)


@st.cache_data(show_spinner="Checking that the runs cover the same data…", max_entries=32)
def _comparability(id_a: str, s_a: int, id_b: str, s_b: int) -> compare.Comparability:
    return compare.check_comparable(ui.open_run_id(id_a), ui.open_run_id(id_b))


comparison = _comparability(run_a.run_id, stamp_a, run_b.run_id, stamp_b)
if not comparison.comparable:
    st.error(f"**These runs cannot be compared.** {md(comparison.reason)}")
    st.stop()
ui.require_rows(view)

SECTIONS = ui.COMPARE_SECTIONS
TERMS_MIN_KEY = "shift_min"


# ------------------------------------------------------------------ the cached computations (also queued ahead)
@st.cache_data(show_spinner="Comparing the terms' salience…", max_entries=32)
def _term_shift(id_a: str, s_a: int, ka: tuple, id_b: str, s_b: int, kb: tuple, rows: np.ndarray,
                minimum: int, same_tokens: bool) -> pd.DataFrame:
    a, b = ui.open_run_id(id_a), ui.open_run_id(id_b)
    rk_a, rk_b = RepresentationKey(*ka), RepresentationKey(*kb)
    space_a = a.term_space(rk_a.unit)
    # the same texts in the same tokens make the same words (core.words): B's terms and their presence are A's,
    # which the other pages have built already (B's own: about 1 s more at 1,000,000 examples)
    space_b = space_a if same_tokens and rk_a.unit == rk_b.unit else b.term_space(rk_b.unit)
    return compare.term_shift(ui.run_matrix(a, rk_a), ui.run_matrix(b, rk_b), space_a.vocab, space_b.vocab,
                              a.examples["label"].to_numpy(), a.label_names, rows, presence_a=space_a.presence,
                              presence_b=space_b.presence, ignore_a=space_a.ignore_mask,
                              ignore_b=space_b.ignore_mask, n=N_TERMS, min_count=minimum or None,
                              idf_a=space_a.idf(), idf_b=space_b.idf())


@st.cache_data(show_spinner="Comparing the saliency maps…", max_entries=16)
def _agreement(id_a: str, s_a: int, m_a: str, id_b: str, s_b: int, m_b: str,
               rows: np.ndarray) -> tuple[compare.AgreementSummary, go.Figure]:
    # what the tab draws, not the per-example frame: a cache hit then copies kilobytes (the frame is 28 MB at
    # 1,000,000 examples)
    a, b = ui.open_run_id(id_a), ui.open_run_id(id_b)
    keep = ~a.ignore_mask[np.asarray(a.token_ids)]
    agreement = compare.map_agreement(a.row_ptr, a.scores(m_a), b.scores(m_b), rows=rows, keep=keep)
    return (compare.summarize_agreement(agreement, N_LEAST),
            plots.agreement_histogram(agreement, compare.TOP_FRACTION))


@dataclasses.dataclass(frozen=True)
class Pair:
    """What every section compares: the sidebar's view (run A, its method and slice) and run B with its method."""

    view: ui.View
    run_b: Run
    method_b: str
    comparison: compare.Comparability

    @property
    def run_a(self) -> Run:
        """Return run A (the sidebar's run)."""
        return self.view.run

    def examples_b(self) -> pd.DataFrame:
        """Return run B's predictions and class probabilities (columns pred, prob_<i>; every row): what the
        sections read of B's examples, without its texts (run A's are the same, as the runs are comparable)."""
        return self.run_b.example_columns(["pred", *(f"prob_{i}" for i in range(self.run_b.num_labels))])

    def term_shift(self, minimum: int) -> pd.DataFrame:
        """Return compare.term_shift of the slice (every class; terms in at least `minimum` of a class's examples,
        0 = auto) in the sidebar's terms unit."""
        key_a = self.view.vocab_key
        key_b = dataclasses.replace(key_a, method=self.method_b)
        return _term_shift(self.run_a.run_id, ui.run_stamp(self.run_a.path), ui.key_tuple(key_a),
                           self.run_b.run_id, ui.run_stamp(self.run_b.path), ui.key_tuple(key_b), self.view.rows,
                           int(minimum), self.comparison.same_tokens)

    def agreement(self) -> tuple[compare.AgreementSummary, go.Figure]:
        """Return the summary of compare.map_agreement over the slice's examples and its histograms."""
        return _agreement(self.run_a.run_id, ui.run_stamp(self.run_a.path), self.view.method, self.run_b.run_id,
                          ui.run_stamp(self.run_b.path), self.method_b, self.view.rows)

    def clusters_b(self, view: ui.View) -> np.ndarray:
        """Return run B's k-means clusters of the slice at `view`'s count (B's method, the sidebar's
        representation)."""
        key = dataclasses.replace(view.key, method=self.method_b).normalised() if view.key.method else view.key
        return ui.cluster_labels_of_rows(self.run_b, key, view.rows, view.n_clusters)

    def jobs_for(self, section: str) -> list:
        """Return the calls that fill the caches `section` reads (for work queued while another is read)."""
        if section == SECTIONS[1]:
            return [functools.partial(self.term_shift, int(ui.remembered(TERMS_MIN_KEY, 0) or 0))]
        if section == SECTIONS[2]:
            return [self.agreement] if self.comparison.same_tokens else []
        if section == SECTIONS[3] and len(self.view.rows) >= self.view.n_clusters:
            return [self.view.cluster_labels, functools.partial(self.clusters_b, self.view)]
        return []


def _selectable_table(table: pd.DataFrame, key: str, pick_key: str, rows: list[int], column_config: dict) -> None:
    """Draw `table` with single-row selection; selecting a row puts its run row id into `pick_key`."""
    def on_select() -> None:
        selected = st.session_state[key].selection.rows
        if selected:
            st.session_state[pick_key] = rows[selected[0]]

    ui.dataframe(table, key=key, on_select=on_select, selection_mode="single-row",
                 height="auto" if len(table) <= 10 else 360, column_config=column_config)


# ------------------------------------------------------------------ accuracy and flips
def accuracy_section(pair: Pair) -> None:
    """Accuracy of both runs per slice, and the examples right in one run and wrong in the other."""
    view, names = pair.view, pair.run_a.label_names
    rows, ex_a, ex_b = view.rows, pair.run_a.examples, pair.examples_b()
    accuracy = compare.slice_accuracy(ex_a, ex_b, names, rows)
    flips = compare.prediction_flips(ex_a, ex_b, rows, names)
    n_broken = int((flips["direction"] == compare.BROKEN).sum())
    overall = accuracy.iloc[0]
    metrics = st.columns(4)
    metrics[0].metric("Accuracy of A", f"{overall.accuracy_a:.1%}")
    metrics[1].metric("Accuracy of B", f"{overall.accuracy_b:.1%}", delta=f"{overall.change:+.1%}")
    metrics[2].metric("Right in A, wrong in B", f"{n_broken:,}")
    metrics[3].metric("Wrong in A, right in B", f"{len(flips) - n_broken:,}")
    ratio = st.column_config.ProgressColumn
    ui.dataframe(accuracy.drop(columns="kind"), hide_index=True, key="slice_accuracy",
                 column_config={"accuracy_a": ratio("accuracy of A", min_value=0.0, max_value=1.0, format="%.3f"),
                                "accuracy_b": ratio("accuracy of B", min_value=0.0, max_value=1.0, format="%.3f"),
                                "change": st.column_config.NumberColumn("B − A", format="%+.3f")})
    st.caption("Accuracy over the slice's examples, per split and per true class.")
    if flips.empty:
        st.success("No prediction flips: every example of the slice is right in both runs or wrong in both.")
        return
    shown = flips.iloc[:ui.MAX_LISTED]
    listed = f" Showing the first {len(shown):,}." if len(flips) > len(shown) else ""
    st.markdown(f"**Prediction flips: {len(flips):,} examples** of {len(rows):,} are right in one run and wrong in "
                f"the other: {n_broken:,} right in A only, {len(flips) - n_broken:,} right in B only. Largest "
                f"change of the true label's probability first.{listed}")
    picks = [int(r) for r in shown.index]
    _selectable_table(shown, "flips_table", "flip_pick", picks,
                      {"text": st.column_config.TextColumn("text", width="large"),
                       "pred_a": "prediction of A", "pred_b": "prediction of B",
                       "p_true_a": ratio("p(label) in A", min_value=0.0, max_value=1.0, format="%.2f"),
                       "p_true_b": ratio("p(label) in B", min_value=0.0, max_value=1.0, format="%.2f")})
    pick_col, open_col = st.columns([3, 1], vertical_alignment="bottom")
    flip_row = ui.synced(pick_col.selectbox, "Example to open (or select a table row)", "flip_pick", picks[0],
                         options=picks, format_func=lambda r: f"row {r} · {flips.loc[r, 'direction']}",
                         help="The Examples page shows run A (the sidebar's run); *Swap* A and B first to read "
                              "an example in B.")
    if open_col.button("Open in Examples", icon=":material/article:", key="flip_to_examples", width="stretch"):
        ui.open_examples(flip_row)


# ------------------------------------------------------------------ term shift
def terms_section(pair: Pair) -> None:
    """The terms whose mean salience in a class rose or fell most from A to B."""
    names = pair.run_a.label_names
    term_controls = st.columns([2, 2, 3])
    shift_class = ui.synced(term_controls[0].selectbox, "Class (true label)", "shift_class", names[0],
                            options=names)
    min_count = ui.synced(term_controls[1].number_input, "In at least this many examples (0 = auto)",
                          TERMS_MIN_KEY, 0, min_value=0, step=1,
                          help="Terms must occur in this many of the class's examples of the slice. Auto: max(3, "
                               "2% of them).")
    shift = pair.term_shift(int(min_count))
    of_class = shift[shift["class"] == shift_class]
    st.caption(f"A term's salience in a class: its mean S1 salience ({md(pair.view.vocab_key.label())} for A, "
               f"{md(pair.method_b)} for B; each example's vector has unit length, so the two runs' scales compare) "
               f"over the class's examples of the slice. Up to {N_TERMS} largest rises and falls, B − A, ranked by "
               "the change times the term's idf (as cluster terms are), so shifts spread over function words do "
               "not crowd out the terms that moved.")
    if of_class.empty:
        st.info(f"No term's salience changed in class {md(shift_class)} (among terms in enough of its examples: "
                "lower the minimum above, or widen the slice).")
        return
    chart_col, table_col = st.columns([2, 3], gap="large")
    chart_col.plotly_chart(plots.term_shift_bar(of_class), key="term_shift_chart")
    with table_col:
        ui.dataframe(of_class.drop(columns="class"), hide_index=True, key="term_shift",
                     column_config={"salience_a": st.column_config.NumberColumn("in A", format="%.4f"),
                                    "salience_b": st.column_config.NumberColumn("in B", format="%.4f"),
                                    "change": st.column_config.NumberColumn("B − A", format="%+.4f"),
                                    "examples": st.column_config.NumberColumn("examples", format="%d")})


# ------------------------------------------------------------------ map agreement
def agreement_section(pair: Pair) -> None:
    """How far the two saliency maps of each example agree, and the examples they agree on least."""
    if not pair.comparison.same_tokens:
        st.info(md(pair.comparison.token_reason))
        return
    view, names, run_a, run_b = pair.view, pair.run_a.label_names, pair.run_a, pair.run_b
    ex_a, ex_b = run_a.examples, pair.examples_b()
    summary, histogram = pair.agreement()
    stats = st.columns(3)
    for column, title, value in ((stats[0], "Median Jaccard of the top 25%", summary.median_jaccard),
                                 (stats[1], "Median Spearman", summary.median_spearman)):
        column.metric(title, "—" if np.isnan(value) else f"{value:.2f}")
    stats[2].metric("Examples compared", f"{summary.compared:,}")
    st.plotly_chart(histogram, key="agreement_histogram")
    st.caption("Per example, over its tokens (special tokens and punctuation left out), salience as |score|: "
               "Jaccard of the two maps' top 25% tokens (1: the same tokens on top) and Spearman correlation of "
               "the two rankings (ties get average ranks). Examples with fewer than two tokens have no Spearman.")
    least = summary.least
    if not len(least):
        return
    st.markdown(f"**The {len(least)} least-agreeing examples** (lowest Jaccard, then Spearman)")
    ids = least.index.to_numpy()
    class_names = np.asarray(names, dtype=object)
    table = least.assign(text=ex_a["text"].iloc[ids].to_numpy(),
                         label=class_names[ex_a["label"].to_numpy()[ids]],
                         pred_a=class_names[ex_a["pred"].to_numpy()[ids]],
                         pred_b=class_names[ex_b["pred"].to_numpy()[ids]])
    table = table[["text", "jaccard", "spearman", "tokens", "label", "pred_a", "pred_b"]]
    least_rows = [int(r) for r in table.index]
    _selectable_table(table, "least_agreeing", "agree_pick", least_rows,
                      {"text": st.column_config.TextColumn("text", width="large"),
                       "jaccard": st.column_config.NumberColumn("Jaccard", format="%.2f"),
                       "spearman": st.column_config.NumberColumn("Spearman", format="%.2f"),
                       "pred_a": "prediction of A", "pred_b": "prediction of B"})
    pick_col, open_col = st.columns([3, 1], vertical_alignment="bottom")
    agree_row = ui.synced(pick_col.selectbox, "Example to read (or select a table row)", "agree_pick",
                          least_rows[0], options=least_rows,
                          format_func=lambda r: f"row {r} · Jaccard {table.loc[r, 'jaccard']:.2f}")
    if open_col.button("Open in Examples", icon=":material/article:", key="agree_to_examples", width="stretch"):
        ui.open_examples(agree_row)
    text = str(ex_a["text"].iloc[agree_row])
    sides = zip(st.columns(2, gap="large"), (run_a, run_b), (ex_a, ex_b), (view.method, pair.method_b), "AB")
    for col, run, examples, method, side in sides:
        tokens = run.tokens_of(agree_row, method)
        predicted = names[int(examples["pred"].iloc[agree_row])]
        col.markdown(f"**Run {side}** · {md(method)} · predicted *{md(predicted)}*")
        body = plots.saliency_html(text, tokens["start"], tokens["end"], tokens["score"], tokens["token"].tolist())
        col.html(f'<div style="font-size:1.05rem">{body}</div>')


# ------------------------------------------------------------------ cluster flow
def flow_section(pair: Pair) -> None:
    """Where the examples of each of run A's clusters went among run B's."""
    view = ui.cluster_count_input(pair.view, st.columns(4)[0])
    rows = view.rows
    if len(rows) < view.n_clusters:
        st.info(f"The slice has {len(rows):,} examples, fewer than the {view.n_clusters} clusters asked for: widen "
                "the slice or lower the number.")
        return
    labels_a = view.cluster_labels()
    labels_b = pair.clusters_b(view)
    flow = compare.cluster_flow(labels_a, labels_b)
    st.plotly_chart(plots.cluster_flow_heatmap(flow), key="cluster_flow")
    kept = flow.to_numpy().max(axis=1).sum() / max(len(rows), 1)
    ari = analysis.label_agreement(labels_a, labels_b)
    st.caption(f"Each run's k-means clusters ({view.n_clusters}, the sidebar's representation: "
               f"{md(view.key.label())}; B with {md(pair.method_b)}) of the slice. Cell: examples of A's cluster "
               f"(row) in B's cluster (column), coloured by the share of the row; B's columns are ordered to put "
               f"each under the A cluster most of its examples come from. {kept:.0%} of the examples stay with "
               f"the largest part of their A cluster; adjusted Rand index {ari:.2f} (1: the same grouping). A's "
               "cluster numbers are the Clusters page's.")


DRAW = dict(zip(SECTIONS, (accuracy_section, terms_section, agreement_section, flow_section)))


@st.fragment
def sections(pair: Pair) -> None:
    """The four comparisons, one tab each: a fragment of lazy tabs, so opening a tab computes and sends that
    section only (at 1,000,000 examples the four together took 3.4 s), and the others' work is queued for while
    the open one is read."""
    tabs = ui.synced_tabs(SECTIONS, ui.COMPARE_SECTION_KEY)
    open_section = st.session_state[ui.COMPARE_SECTION_KEY]
    for name, tab in zip(SECTIONS, tabs):
        if tab.open:
            with tab:
                DRAW[name](pair)
    start = SECTIONS.index(open_section)
    ui.prefetch([job for name in SECTIONS[start + 1:] + SECTIONS[:start] for job in pair.jobs_for(name)])


sections(Pair(view, run_b, method_b, comparison))

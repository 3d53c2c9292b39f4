"""Neighbours: the nearest examples of one example by cosine on the chosen representation."""
import numpy as np
import streamlit as st

from core import ui
from core.ui import escape_markdown as md  # label names, split names and terms come from the data

view = ui.current_view()
run = view.run
names = run.label_names
ui.page_header("Neighbours", view,
               "Which examples does the model see as alike? Nearest neighbours by cosine similarity of the chosen "
               "representation; the **shared top terms** (orange) often explain a surprising prediction.")

n_total = len(run.examples)
misclassified = view.rows[~run.examples["correct"].to_numpy(dtype=bool)[view.rows]]
default_row = ui.focus_row(int(misclassified[0]) if len(misclassified) else int(view.rows[0]) if len(view.rows) else 0)
default_row = min(max(default_row, 0), n_total - 1)
splits = run.splits

controls = st.columns([1, 1, 2, 2])
row = ui.synced(controls[0].number_input, "Example (row id)", "row", default_row, min_value=0,
                max_value=n_total - 1, step=1, always=True,
                help="Open an example from the Examples page, or type its row id.")
ui.set_focus(row)
count = ui.synced(controls[1].number_input, "Neighbours", "n", 5, min_value=1, max_value=100, step=1)
candidate_splits = ui.synced(controls[2].multiselect, "Search among splits", "among", ["train"] if "train" in splits
                             else [], options=splits, placeholder="all splits")
example = run.examples.iloc[row]
label, pred = int(example["label"]), int(example["pred"])
with controls[3]:
    same_pred = ui.synced(st.checkbox, f"Only label = {md(names[pred])} (its prediction)", "as_pred", True,
                          help="Paper §4.4: which examples labelled as this example's prediction resemble it?")
    in_slice = ui.synced(st.checkbox, "Only examples in the current slice", "in_slice", False)
query_terms = view.terms_of(row, n=max(view.key.k or 10, 1))

with st.container(border=True):
    st.markdown(f"**Example {row}** {ui.verdict_badges(view, label, pred)} · p = {example[f'prob_{pred}']:.2f} · "
                f"split {md(example['split'])}")
    ui.saliency_block(view, row)
    st.html(ui.terms_html(query_terms))

candidates = np.ones(n_total, dtype=bool)
if candidate_splits:
    candidates &= run.examples["split"].astype(str).isin(candidate_splits).to_numpy()
if same_pred:
    candidates &= run.examples["label"].to_numpy() == pred
if in_slice:
    in_view = np.zeros(n_total, dtype=bool)
    in_view[view.rows] = True
    candidates &= in_view
candidates[row] = False
filters = [f"split {md(' or '.join(candidate_splits))}" if candidate_splits else "any split"]
if same_pred:
    filters.append(f"label {md(names[pred])}")
if in_slice:
    filters.append("in the slice")
if not candidates.any():
    st.warning(f"No candidate example ({', '.join(filters)}). Loosen the filters above.")
    st.stop()

index = view.neighbour_index()
ids, scores = index.search(row, n=int(count), candidates=candidates)
st.subheader(f"{len(ids)} nearest neighbours")
st.caption(f"Among {int(candidates.sum()):,} candidates ({', '.join(filters)}) · cosine on {md(view.key.label())}"
           + (f" · approximate search (IVF-Flat index of {index.n_rows:,} rows, {index.params.n_probe} of "
              f"{index.params.n_lists:,} cells probed; recall@10 against exact search is measured in "
              "bench/results/dashboard.md)" if index.approximate and not index.searches_exactly(int(candidates.sum()))
              else " · exact search"))
query_set = {t for t, _ in query_terms}
for rank, (nid, score) in enumerate(zip(ids.tolist(), scores.tolist()), start=1):
    other = run.examples.iloc[nid]
    other_terms = view.terms_of(nid, n=max(view.key.k or 10, 1))
    shared = query_set & {t for t, _ in other_terms}
    with st.container(border=True, key=f"neighbour_{rank}"):
        head, action = st.columns([6, 1])
        head.markdown(f"**#{rank}** · cosine **{score:.3f}** · row {nid} · label *{md(names[int(other['label'])])}* "
                      f"· predicted *{md(names[int(other['pred'])])}* · split {md(other['split'])}"
                      + (f" · shares **{md(', '.join(sorted(shared)))}**" if shared else ""))
        if action.button("Open", key=f"open_{nid}", icon=":material/article:", width="stretch"):
            ui.open_examples(nid)
        ui.saliency_block(view, nid)
        st.html(ui.terms_html(other_terms, shared))

"""Examples: a searchable, sortable table of the slice (or of a dataset warning's examples, `?warning=<id>`) and a
detail view of one example shaded by saliency."""
import numpy as np
import pandas as pd
import streamlit as st

from core import analysis, dataset_warnings, plots, ui
from core.ui import escape_markdown as md  # the search box, split names and method names
from core.ui import inline_code

SORTS = {
    "row": ("row id", None),
    "least_confident": ("least confident first", ("confidence", True)),
    "confident_wrong": ("most confident mistakes first", None),
    "longest": ("longest first", ("tokens", False)),
}
MAX_TABLE_ROWS = 2000

view = ui.current_view()
ui.page_header("Examples", view, "Search the slice, select a row, and read the example with each token shaded "
                                 "by its saliency for the prediction.")

# A dataset warning's examples (a Summary button or a link's ?warning=<id>) replace the slice in the table.
finding = None
warning_id = ui.open_warning_id()
if warning_id:
    finding = dataset_warnings.find(view.dataset_warnings(), warning_id)
    if finding is None:
        st.warning(f"The dataset warning {inline_code(warning_id)} from the link is not among this run's warnings "
                   "(they may have been recomputed); showing the slice.")
        ui.close_warning()
if finding is None:
    ui.require_rows(view)

controls = st.columns([3, 2])
query = ui.synced(controls[0].text_input, "Search the texts", "q", "", placeholder="any substring, case-insensitive")
sort = ui.synced(controls[1].selectbox, "Order", "sort", "row", options=list(SORTS),
                 format_func=lambda s: "the warning's order" if finding is not None and s == "row" else SORTS[s][0])

columns = ui.TABLE_COLUMNS
if finding is not None:
    notes: dict[int, list[str]] = {}
    for r, note in zip(finding["rows"], finding["notes"]):
        if 0 <= int(r) < len(view.run.examples):
            notes.setdefault(int(r), []).append(note)  # a training row duplicated twice is listed once
    listed = np.fromiter(notes, dtype=np.int64, count=len(notes))  # in the warning's order
    n_listed = len(listed)
    listed = analysis.search_and_order(view.run.examples, listed, query, sort)
    table = ui.display_table(view, listed)
    table.insert(0, "warning", ["; ".join(n for n in notes[int(r)] if n) for r in listed])
    columns = {**columns, "warning": st.column_config.TextColumn("warning", width="medium")}
    st.query_params["warning"] = warning_id
    banner, back = st.columns([5, 1])
    banner.info(f"**Dataset warning**: {md(finding['title'])}. Listing its {n_listed:,} examples"
                + (f" (the first {len(finding['rows']):,} stored of {finding['count']:,})"
                   if finding["count"] > len(finding["rows"]) else "")
                + " from the whole run; the sidebar's slice does not apply until you go back to it.",
                icon=":material/warning:")
    if back.button("Back to the slice", key="close_warning", icon=":material/close:", width="stretch"):
        ui.close_warning()
        st.rerun()
    total = len(table)
else:  # the slice's rows are searched and ordered first; only the rows shown become a table
    rows = analysis.search_and_order(view.run.examples, view.rows, query, sort)
    total = len(rows)
    table = ui.display_table(view, rows[:MAX_TABLE_ROWS])

if table.empty:
    st.warning(f"No example of the slice contains “{md(query)}”. Change the search or the slice.")
    st.stop()
table = table.iloc[:MAX_TABLE_ROWS]
st.caption(f"{total:,} examples" + (f"; showing the first {MAX_TABLE_ROWS:,} in this order, narrow with the search "
                                   "or the sidebar to see others" if total > MAX_TABLE_ROWS else "")
           + ". Click a column header to sort, a row's checkbox to open it below.")

focus = ui.focus_row()
default_position = table.index.get_indexer([focus])[0] if focus is not None else 0
state = ui.dataframe(table, key="examples_table", on_select="rerun", selection_mode="single-row",
                     height="auto" if len(table) <= 8 else 320,
                     column_config=columns,
                     selection_default={"selection": {"rows": [int(default_position)]}} if default_position >= 0
                     else None)
chosen = [i for i in state.selection.rows if i < len(table)]  # a stale selection can outlive a new search
if chosen:
    row = int(table.index[chosen[0]])
elif focus is not None and 0 <= focus < len(view.run.examples):
    row = focus
else:
    row = int(table.index[0])
ui.set_focus(row)

# ------------------------------------------------------------------ detail view
run = view.run
example = run.examples.iloc[row]
names = run.label_names
label, pred = int(example["label"]), int(example["pred"])
probs = [float(example[f"prob_{i}"]) for i in range(run.num_labels)]
st.divider()
title_col, button_col = st.columns([4, 1])
title_col.subheader(f"Example {row}" + ("" if row in set(view.rows.tolist()) else " (outside the current slice)"))
if button_col.button("Find its neighbours", icon=":material/hub:", key="to_neighbours", width="stretch"):
    ui.open_neighbours(row)
ui.prefetch_neighbours_page(view)  # the button's page answers from cache once this one has been read

text_col, info_col = st.columns([3, 2], gap="large")
with text_col:
    st.markdown(f"**Saliency ({md(view.method)})**: darker = more salient for the predicted class; "
                "hover a word for its score.")
    ui.saliency_block(view, row)
    if bool(example.get("truncated", False)):
        st.caption("The text was truncated at the model's max length: grey text was not seen by the model.")
    others = [m for m in run.methods if m != view.method]
    if others:
        with st.expander("Other attribution methods"):
            for other in others:
                st.markdown(f"**{md(other)}**")
                ui.saliency_block(view, row, other)
with info_col:
    st.markdown(ui.verdict_badges(view, label, pred))
    st.caption(f"split {md(example['split'])} · {int(example['n_tokens'])} tokens · source row "
               f"{md(example['source_row'])}")
    st.plotly_chart(plots.probability_bar(probs, names), key="probabilities")
    terms = view.terms_of(row, n=max(view.key.k or 10, 1))
    st.markdown(f"**Top terms** (S1, {md(view.method)}, k = {view.key.k or 'all'})")
    if terms:
        ui.dataframe(pd.DataFrame(terms, columns=["term", "salience"]), hide_index=True, key="example_terms",
                     column_config={"salience": st.column_config.ProgressColumn(
                         "salience", min_value=0.0, max_value=1.0, format="%.3f")})
    else:
        st.caption("(no salient terms: the text has only special tokens or punctuation)")

"""Seed terms: a class's aggregated salient terms and its PMI terms, with counts and downloads."""
import numpy as np
import pandas as pd
import streamlit as st

from core import analysis, ui

view = ui.current_view()
run = view.run
names = run.label_names
ui.page_header("Seed terms", view,
               "Terms that stand for a class, two ways: **aggregated salience** (mean S1 salience over the class's "
               "examples, what the model relies on) and **PMI** (how much more often the term occurs in the class, "
               "what the data says). Use them as seed lists for insertion / masking tests. These lists use the "
               "split(s) chosen here, not the sidebar slice.", show_slice=False)

examples = run.examples
splits = list(dict.fromkeys(examples["split"].astype(str)))
controls = st.columns([1, 2, 1, 1])
target = ui.synced(controls[0].selectbox, "Class", "target", names[0], options=names)
chosen_splits = ui.synced(controls[1].multiselect, "Examples from split(s)", "seed_splits",
                          ["train"] if "train" in splits else [], options=splits, placeholder="all splits")
min_count = ui.synced(controls[2].number_input, "Minimum count", "min_count", 20, min_value=1, step=1,
                      help="A term must occur in at least this many examples (paper: 20).")
top_n = ui.synced(controls[3].number_input, "Terms per list", "top_n", 20, min_value=1, max_value=500, step=5)

target_id = names.index(target)
in_splits = (examples["split"].astype(str).isin(chosen_splits).to_numpy() if chosen_splits
             else np.ones(len(examples), dtype=bool))
pool = np.flatnonzero(in_splits)
class_rows = np.flatnonzero(in_splits & (examples["label"].to_numpy() == target_id))
scope = " or ".join(chosen_splits) if chosen_splits else "all splits"
if len(class_rows) == 0:
    st.warning(f"No example labelled *{target}* in {scope}. Choose another class or split.")
    st.stop()

salient = analysis.aggregated_salient_terms(view.vocab_matrix(), run.presence, class_rows, run.vocab,
                                            run.ignore_mask, min_count=int(min_count), top_n=int(top_n))
pmi = analysis.pmi_terms(run.presence[pool], examples["label"].to_numpy()[pool], target_id, run.vocab,
                         run.ignore_mask, min_count=int(min_count), top_n=int(top_n))
st.caption(f"{len(class_rows):,} examples labelled *{target}* among {len(pool):,} in {scope} · "
           f"salience from S1 ({view.method}, k = {view.key.k or 'all'})")


def downloads(frame: pd.DataFrame, stem: str, key: str) -> None:
    """Draw CSV / JSON / plain-text download buttons for a term table (CSV cells safe for spreadsheets)."""
    row = st.container(horizontal=True)
    row.download_button("CSV", analysis.to_csv_safe(frame), f"{stem}.csv", "text/csv", key=f"{key}_csv",
                            icon=":material/download:", on_click="ignore")
    row.download_button("JSON", analysis.to_json(frame), f"{stem}.json", "application/json", key=f"{key}_json",
                            icon=":material/download:", on_click="ignore")
    row.download_button("Text", analysis.to_text(frame["term"].tolist()), f"{stem}.txt", "text/plain",
                            key=f"{key}_txt", icon=":material/download:", on_click="ignore")


def empty_hint(what: str) -> None:
    st.info(f"No {what} term occurs in at least {int(min_count)} examples. Lower the minimum count.")


stem = f"{run.run_id}-{target}-{'_'.join(chosen_splits) or 'all'}".replace(" ", "_")
left, right = st.columns(2, gap="large")
with left:
    st.subheader("Aggregated salient terms")
    st.caption(f"Mean S1 salience over the *{target}* examples; count = examples containing the term.")
    if salient.empty:
        empty_hint("salient")
    else:
        st.dataframe(salient[["term", "mean_salience", "count"]], hide_index=True, key="salient_table",
                     column_config={"mean_salience": st.column_config.ProgressColumn(
                         "mean salience", min_value=0.0, max_value=float(salient["mean_salience"].max()),
                         format="%.4f")})
        downloads(salient, f"{stem}-salient", "salient")
with right:
    st.subheader("PMI terms")
    st.caption(f"PMI(term; {target}) = log p({target} | term) / p({target}); count = examples containing the term, "
               f"of which class count are labelled *{target}*.")
    if pmi.empty:
        empty_hint("PMI")
    else:
        st.dataframe(pmi[["term", "pmi", "count", "class_count"]], hide_index=True, key="pmi_table",
                     column_config={"pmi": st.column_config.NumberColumn("PMI", format="%.3f"),
                                    "class_count": "class count"})
        downloads(pmi, f"{stem}-pmi", "pmi")

if not salient.empty and not pmi.empty:
    both = sorted(set(salient["term"]) & set(pmi["term"]))
    st.markdown(f"**In both lists**: {', '.join(both) if both else 'none'} "
                f"({len(both)} of {len(salient)} salient terms).")

"""Seed terms: a class's salient terms and its log-odds (or PMI) terms, with counts and downloads."""
import numpy as np
import pandas as pd
import streamlit as st

from core import analysis, ui
from core.ui import escape_markdown as md  # class and split names and terms come from the data

SALIENT_RANKINGS = {"distinctive": "distinctive (vs other classes)", "mean": "mean salience (paper)"}
ASSOCIATION_RANKINGS = {"log_odds": "log-odds (z-score)", "pmi": "PMI"}

view = ui.current_view()
run = view.run
names = run.label_names
ui.page_header("Seed terms", view,
               "Terms that stand for a class, two ways: **salience** (what the model relies on: by default the "
               "terms more salient in the class's examples than in the other classes' examples, or the plain mean "
               "S1 salience over the class) and **log-odds** (what the data says: how much more often the term "
               "occurs in the class, Monroe et al.'s weighted log-odds with an informative prior, or PMI). The "
               "Sensitivity page tests these same lists. These lists use the split(s) chosen here, not the "
               "sidebar slice.", show_slice=False)

examples = run.examples
splits = run.splits
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
is_target = examples["label"].to_numpy() == target_id
class_rows = np.flatnonzero(in_splits & is_target)
other_rows = np.flatnonzero(in_splits & ~is_target)
scope = md(" or ".join(chosen_splits)) if chosen_splits else "all splits"
if len(class_rows) == 0:
    st.warning(f"No example labelled *{md(target)}* in {scope}. Choose another class or split.")
    st.stop()

left, right = st.columns(2, gap="large")
salient_rank = ui.synced(left.radio, "Rank salient terms by", "salient_rank", "distinctive",
                         options=list(SALIENT_RANKINGS), format_func=SALIENT_RANKINGS.get, horizontal=True,
                         help="distinctive: mean S1 salience over the class's examples minus over the other "
                              "classes' examples (function words salient everywhere drop out). mean salience: the "
                              "paper's aggregated salient terms (method.md §4.3a).")
assoc_rank = ui.synced(right.radio, "Rank data terms by", "assoc_rank", "log_odds",
                       options=list(ASSOCIATION_RANKINGS), format_func=ASSOCIATION_RANKINGS.get, horizontal=True,
                       help="log-odds: weighted log-odds ratio with an informative Dirichlet prior (Monroe et al. "
                            "2008), as a z-score: frequent class terms rank above rare ones. PMI: "
                            "log p(class | term) / p(class); every term seen only in the class ties at the top.")

presence = view.presence()
salient = analysis.class_salient_terms(view.vocab_matrix(), presence, class_rows, other_rows, view.vocab,
                                       view.ignore_mask, min_count=int(min_count), top_n=int(top_n),
                                       ranking=salient_rank)
assoc = analysis.class_association_terms(presence, examples["label"].to_numpy()[pool], target_id, view.vocab,
                                         view.ignore_mask, min_count=int(min_count), top_n=int(top_n),
                                         ranking=assoc_rank, rows=pool)
st.caption(f"{len(class_rows):,} examples labelled *{md(target)}* among {len(pool):,} in {scope} · "
           f"salience from S1 ({md(view.method)}, k = {view.vocab_key.k or 'all'})")


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


def bar(label: str, frame: pd.DataFrame, column: str, fmt: str):
    top = float(frame[column].max()) if len(frame) else 1.0
    return st.column_config.ProgressColumn(label, min_value=0.0, max_value=max(top, 1e-12), format=fmt)


stem = f"{run.run_id}-{target}-{'_'.join(chosen_splits) or 'all'}".replace(" ", "_")
salient_name = "salient" if salient_rank == "distinctive" else "salient-mean"
assoc_label = ASSOCIATION_RANKINGS[assoc_rank]
with left:
    if salient_rank == "distinctive":
        st.subheader("Distinctive salient terms")
        st.caption(f"Distinctiveness = mean S1 salience over the *{md(target)}* examples minus mean over the other "
                   "classes' examples (both shown); count = examples of the class containing the term.")
    else:
        st.subheader("Aggregated salient terms")
        st.caption(f"Mean S1 salience over the *{md(target)}* examples; count = examples containing the term.")
    if salient.empty:
        empty_hint("salient")
    elif salient_rank == "distinctive":
        ui.dataframe(salient[["term", "distinctiveness", "mean_salience", "mean_salience_rest", "count"]],
                     hide_index=True, key="salient_table",
                     column_config={"distinctiveness": bar("distinctiveness", salient, "distinctiveness", "%.4f"),
                                    "mean_salience": st.column_config.NumberColumn("mean salience", format="%.4f"),
                                    "mean_salience_rest": st.column_config.NumberColumn("mean, other classes",
                                                                                        format="%.4f")})
        downloads(salient, f"{stem}-{salient_name}", "salient")
    else:
        ui.dataframe(salient[["term", "mean_salience", "count"]], hide_index=True, key="salient_table",
                     column_config={"mean_salience": bar("mean salience", salient, "mean_salience", "%.4f")})
        downloads(salient, f"{stem}-{salient_name}", "salient")
with right:
    if assoc_rank == "log_odds":
        st.subheader("Log-odds terms")
        st.caption(f"z = weighted log-odds ratio of the term in *{md(target)}* vs the other classes, informative "
                   "Dirichlet prior from the overall counts, divided by its standard error (Monroe et al. 2008); "
                   "delta = the log-odds ratio; count = examples containing the term, of which class count are "
                   f"labelled *{md(target)}*.")
    else:
        st.subheader("PMI terms")
        st.caption(f"PMI(term; {md(target)}) = log p({md(target)} | term) / p({md(target)}); count = examples "
                   f"containing the term, of which class count are labelled *{md(target)}*.")
    if assoc.empty:
        empty_hint(assoc_label)
    elif assoc_rank == "log_odds":
        ui.dataframe(assoc[["term", "z", "delta", "count", "class_count"]], hide_index=True, key="assoc_table",
                     column_config={"z": st.column_config.NumberColumn("z", format="%.2f"),
                                    "delta": st.column_config.NumberColumn("delta", format="%.3f"),
                                    "class_count": "class count"})
        downloads(assoc, f"{stem}-log_odds", "assoc")
    else:
        ui.dataframe(assoc[["term", "pmi", "count", "class_count"]], hide_index=True, key="assoc_table",
                     column_config={"pmi": st.column_config.NumberColumn("PMI", format="%.3f"),
                                    "class_count": "class count"})
        downloads(assoc, f"{stem}-pmi", "assoc")

if not salient.empty and not assoc.empty:
    both = sorted(set(salient["term"]) & set(assoc["term"]))
    st.markdown(f"**In both lists**: {md(', '.join(both)) if both else 'none'} "
                f"({len(both)} of {len(salient)} salient terms).")

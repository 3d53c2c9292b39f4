"""Comparing two runs (core.compare) and the Compare page, on tiny models that differ only in their head.

Run A: the tiny random BERT. Run B: the same weights with the classifier head's two rows (weights and bias)
swapped, so B predicts the other class of every example while its saliency maps (gradients of the predicted
class's logit, which is A's logit) are A's: every example flips and the maps agree perfectly. Run C: A's weights
with a tokenizer whose vocabulary has two words swapped (other token ids, same texts). Run D: A on other data.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from safetensors.torch import load_file, save_file

from core import analysis, compare
from core.precompute import PrecomputeSettings, precompute
from core.representations import RepresentationKey
from core.store import open_run
from tests.conftest import SPECIAL, WORDS, cache_at, write_tiny_model
from tests.test_hostile_links import assert_no_live_markup, hostile_data_run, markdown_values  # noqa: F401
from tests.test_pages import no_exception, open_page, table_with, texts

SETTINGS = PrecomputeSettings(split_col="split", max_length=16, batch_size=8, chunk_size=32,
                              methods=("grad_l2", "grad_x_input"))


def _swap_head(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name].flip(0).contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _swap_vocab(folder: Path) -> None:
    from transformers import BertTokenizerFast

    words = list(WORDS)
    i, j = words.index("good"), words.index("bad")
    words[i], words[j] = words[j], words[i]
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + words) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(vocab), do_lower_case=True).save_pretrained(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_csv) -> dict[str, Path]:
    """Run folders A, B (head rows swapped), C (another tokenizer) and D (A on other data), in one cache."""
    root = tmp_path_factory.mktemp("compare")
    model_a = write_tiny_model(root / "model_a")
    model_b = root / "model_b"
    shutil.copytree(model_a, model_b)
    _swap_head(model_b)
    model_c = root / "model_c"
    shutil.copytree(model_a, model_c)
    _swap_vocab(model_c)
    other = pd.read_csv(tiny_data_csv)
    other.loc[0, "text"] = "the movie was bad and boring"
    other_csv = root / "other.csv"
    other.to_csv(other_csv, index=False)
    with cache_at(root / "cache"):
        return {"a": precompute(model_a, tiny_data_csv, SETTINGS, progress=False).run_path,
                "b": precompute(model_b, tiny_data_csv, SETTINGS, progress=False).run_path,
                "c": precompute(model_c, tiny_data_csv, SETTINGS, progress=False).run_path,
                "d": precompute(model_a, other_csv, SETTINGS, progress=False).run_path}


# ---------------------------------------------------------------- check_comparable


def test_the_run_b_offered_first_holds_the_same_data_read_into_as_many_examples(runs):
    import copy

    a, b, d = (open_run(runs[k]).manifest for k in "abd")
    assert compare.same_examples(a, b) and compare.same_examples(b, a)
    assert not compare.same_examples(a, d)  # another data file
    fewer = copy.deepcopy(b)
    fewer["counts"]["examples"] -= 4  # the same file with --limit: check_comparable refuses it
    assert not compare.same_examples(a, fewer)
    assert not compare.same_examples({"data": {}}, {"data": {}})  # no digest: nothing to match


def test_same_data_is_comparable_and_other_data_is_refused(runs):
    a, b, c, d = (open_run(runs[k]) for k in "abcd")
    assert compare.check_comparable(a, a) == compare.Comparability(True, None, True, None)
    assert compare.check_comparable(a, b) == compare.Comparability(True, None, True, None)

    other_tokens = compare.check_comparable(a, c)
    assert other_tokens.comparable and not other_tokens.same_tokens
    assert "tokenize the texts differently" in other_tokens.token_reason
    assert "per-token map agreement needs the same tokens" in other_tokens.token_reason

    refused = compare.check_comparable(a, d)
    assert not refused.comparable and not refused.same_tokens
    assert "different data" in refused.reason and "other.csv" in refused.reason and "tiny.csv" in refused.reason


class FakeRun:
    """A run as check_comparable reads it, from an examples table and token arrays given here."""

    def __init__(self, run, examples: pd.DataFrame, row_ptr: np.ndarray | None = None, manifest: dict | None = None,
                 label_names: list[str] | None = None) -> None:
        self.manifest, self.vocab, self.token_ids = manifest or run.manifest, run.vocab, run.token_ids
        self.label_names = label_names or run.label_names
        self.row_ptr = run.row_ptr[:len(examples) + 1] if row_ptr is None else row_ptr
        self.table, self.read = examples, []

    @property
    def example_column_names(self) -> list[str]:
        return list(self.table.columns)

    def example_columns(self, columns):
        self.read += list(columns)
        return self.table[list(columns)]


def test_same_file_read_into_other_examples_is_refused(runs):
    a = open_run(runs["a"])
    fewer = FakeRun(a, a.examples.iloc[:10])  # the same data file precomputed with --limit
    assert "different examples (A has 16, B 10)" in compare.check_comparable(a, fewer).reason

    shuffled = FakeRun(a, a.examples.iloc[::-1].reset_index(drop=True))  # --sample: same count, other order
    assert "another row of the data file" in compare.check_comparable(a, shuffled).reason

    renamed = FakeRun(a, a.examples, label_names=["bad", "good"])
    assert "different classes" in compare.check_comparable(a, renamed).reason


def test_texts_are_compared_only_when_the_rows_do_not_settle_them(runs):
    a = open_run(runs["a"])
    same = FakeRun(a, a.examples)  # the same rows of the same file, from the same text column
    assert compare.check_comparable(a, same).comparable and "text" not in same.read

    other_column = {**a.manifest, "settings": {**a.manifest["settings"], "text_col": "summary"}}
    other_texts = a.examples.assign(text=a.examples["text"].str.upper())
    upper = FakeRun(a, other_texts, manifest=other_column)  # the same rows, another text column
    assert "another text" in compare.check_comparable(a, upper).reason and "text" in upper.read
    same_texts = FakeRun(a, a.examples, manifest=other_column)  # another column that holds the same texts
    assert compare.check_comparable(a, same_texts).comparable

    no_rows = FakeRun(a, other_texts.drop(columns="source_row"))  # an older table without source rows
    assert "another text" in compare.check_comparable(a, no_rows).reason


# ---------------------------------------------------------------- prediction flips


def test_identical_runs_have_no_flips_and_a_planted_flip_is_found(runs):
    a = open_run(runs["a"])
    assert compare.prediction_flips(a.examples, open_run(runs["a"]).examples).empty

    planted = a.examples.copy()
    row = 5
    planted.loc[row, "pred"] = 1 - planted.loc[row, "pred"]
    flips = compare.prediction_flips(a.examples, planted, label_names=a.label_names)
    assert flips.index.tolist() == [row]
    expected = compare.BROKEN if a.examples.loc[row, "correct"] else compare.FIXED
    assert flips.loc[row, "direction"] == expected
    assert flips.loc[row, "label"] == a.label_names[int(a.examples.loc[row, "label"])]
    assert flips.loc[row, "pred_b"] == a.label_names[int(planted.loc[row, "pred"])]
    assert compare.prediction_flips(a.examples, planted, rows=np.array([0, 1, 2])).empty  # row 5 not asked


def test_swapped_head_flips_every_prediction(runs):
    a, b = open_run(runs["a"]), open_run(runs["b"])
    flips = compare.prediction_flips(a.examples, b.examples)
    assert sorted(flips.index) == list(range(len(a.examples)))
    right_a = a.examples["correct"].to_numpy(dtype=bool)
    assert (flips.sort_index()["direction"].to_numpy() == np.where(right_a, compare.BROKEN, compare.FIXED)).all()
    broken = flips["direction"] == compare.BROKEN
    assert not (broken.to_numpy()[:-1] < broken.to_numpy()[1:]).any(), "broken flips come first"
    np.testing.assert_allclose(flips["p_true_a"] + flips["p_true_b"], 1.0, atol=1e-5)  # two classes, swapped


def test_flips_need_right_and_wrong_not_just_another_prediction():
    a = pd.DataFrame({"text": ["x", "y"], "label": [0, 0], "pred": [1, 0]})
    b = pd.DataFrame({"text": ["x", "y"], "label": [0, 0], "pred": [2, 0]})  # wrong in both
    assert compare.prediction_flips(a, b).empty


# ---------------------------------------------------------------- map agreement


def test_map_agreement_by_hand():
    row_ptr = np.array([0, 4, 9, 9, 10, 14])
    a = np.array([.1, .2, .3, .4, 1, 2, 3, 4, 5, 7, 1, 1, 2, 2])
    b = np.array([.4, .3, .2, .1, 1, 2, 3, 4, 5, 7, 1, 1, 1, 1])
    got = compare.map_agreement(row_ptr, a, b)
    assert got["top_k"].tolist() == [1, 2, 0, 1, 1]  # ceil(25%), at least one token
    assert got.loc[0, "jaccard"] == 0.0 and got.loc[0, "spearman"] == -1.0  # reversed ranking
    assert got.loc[1, "jaccard"] == 1.0 and got.loc[1, "spearman"] == 1.0
    assert np.isnan(got.loc[2, "jaccard"]) and np.isnan(got.loc[2, "spearman"])  # no token
    assert got.loc[3, "jaccard"] == 1.0 and np.isnan(got.loc[3, "spearman"])  # one token
    assert np.isnan(got.loc[4, "spearman"])  # B constant, A not
    # ties in the top-k go to the earlier token: A's top is token 2 of the row, B's token 0
    assert got.loc[4, "jaccard"] == 0.0
    # signs do not matter (|score|, as in S1) and `keep` drops tokens
    kept = compare.map_agreement(row_ptr, -a, b, rows=np.array([1]), keep=np.arange(14) != 8)
    assert kept.loc[1, "tokens"] == 4 and kept.loc[1, "jaccard"] == 1.0


def test_map_agreement_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 40).astype(float), rng.random(40)
    got = compare.map_agreement(np.array([0, 15, 40]), a, b)
    assert got.loc[0, "spearman"] == pytest.approx(spearmanr(a[:15], b[:15]).statistic)
    assert got.loc[1, "spearman"] == pytest.approx(spearmanr(a[15:], b[15:]).statistic)


def test_map_agreement_equals_a_per_example_reference_with_ties_long_examples_and_dropped_tokens():
    import math

    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    lengths = [0, 1, 2, 3, 7, 28, 40, 65, 130, 5]  # over 64 tokens: the kernel's other sort
    row_ptr = np.concatenate([[0], np.cumsum(lengths)])
    n = int(row_ptr[-1])
    a = rng.integers(-3, 4, n).astype(np.float32)  # few distinct values: many ties, signs that |.| folds
    b = np.where(rng.random(n) < 0.5, a, rng.integers(0, 6, n)).astype(np.float32)
    keep = rng.random(n) < 0.85
    got = compare.map_agreement(row_ptr, a, b, keep=keep)
    for row in range(len(lengths)):
        span = [p for p in range(row_ptr[row], row_ptr[row + 1]) if keep[p]]
        x, y = np.abs(a[span]).astype(float), np.abs(b[span]).astype(float)
        assert got.loc[row, "tokens"] == len(span)
        if not span:
            assert np.isnan(got.loc[row, "jaccard"]) and np.isnan(got.loc[row, "spearman"])
            continue
        k = max(1, math.ceil(0.25 * len(span)))
        top_x = set(sorted(range(len(span)), key=lambda i: (-x[i], i))[:k])  # ties to the earlier token
        top_y = set(sorted(range(len(span)), key=lambda i: (-y[i], i))[:k])
        assert got.loc[row, "top_k"] == k
        assert got.loc[row, "jaccard"] == pytest.approx(len(top_x & top_y) / len(top_x | top_y))
        constant_x, constant_y = len(set(x)) <= 1, len(set(y)) <= 1
        if len(span) < 2 or constant_x != constant_y:
            assert np.isnan(got.loc[row, "spearman"])
        elif constant_x:
            assert got.loc[row, "spearman"] == 1.0
        else:
            assert got.loc[row, "spearman"] == pytest.approx(spearmanr(x, y).statistic)


def test_identical_maps_agree_fully(runs):
    a = open_run(runs["a"])
    keep = ~a.ignore_mask[a.token_ids]
    for method in a.methods:
        got = compare.map_agreement(a.row_ptr, a.scores(method), open_run(runs["a"]).scores(method), keep=keep)
        counted = got[got["tokens"] >= 2]
        assert len(counted) >= 14
        assert (counted["jaccard"] == 1.0).all() and (counted["spearman"] == 1.0).all()
    # two methods of one run: defined, in range, not all equal
    other = compare.map_agreement(a.row_ptr, a.scores("grad_l2"), a.scores("grad_x_input"), keep=keep).dropna()
    assert other["jaccard"].between(0, 1).all() and other["spearman"].between(-1, 1).all()
    assert (other["spearman"] < 1).any()


def test_swapped_head_keeps_the_maps(runs):
    a, b = open_run(runs["a"]), open_run(runs["b"])
    got = compare.map_agreement(a.row_ptr, a.scores("grad_l2"), b.scores("grad_l2"),
                                keep=~a.ignore_mask[a.token_ids]).dropna()
    assert (got["jaccard"] == 1.0).all() and (got["spearman"] > 0.999).all()


# ---------------------------------------------------------------- term shift


def test_term_shift_by_hand_aligns_vocabularies_by_term():
    # rows 0-2 class 0, row 3 class 1; A's columns x y z, B's columns z y w
    R_a = sp.csr_matrix(np.array([[.6, .4, 0], [.6, .4, 0], [.6, .4, .2], [0, 1, 0]]))
    R_b = sp.csr_matrix(np.array([[.5, .5, 0], [.5, .5, 0], [.5, .5, .1], [0, 1, 0]]))
    got = compare.term_shift(R_a, R_b, ["x", "y", "z"], ["z", "y", "w"], np.array([0, 0, 0, 1]), ["neg", "pos"],
                             min_count=1)
    neg = got[got["class"] == "neg"].set_index("term")
    assert neg.loc["z", "direction"] == "rose" and neg.loc["z", "change"] == pytest.approx(.5 - .2 / 3)
    assert neg.loc["y", "direction"] == "rose" and neg.loc["y", "change"] == pytest.approx(.1)
    assert neg.loc["x", "direction"] == "fell" and neg.loc["x", "change"] == pytest.approx(-.6)
    assert neg.loc["w", "direction"] == "rose" and neg.loc["w", "examples"] == 1
    assert got[got["class"] == "neg"]["term"].tolist() == ["z", "y", "w", "x"]  # rises largest first, then falls
    assert got[got["class"] == "pos"].empty  # y unchanged in class 1
    strict = compare.term_shift(R_a, R_b, ["x", "y", "z"], ["z", "y", "w"], np.array([0, 0, 0, 1]),
                                ["neg", "pos"], min_count=3, ignore_b=np.array([True, False, False]))
    assert strict["term"].tolist() == ["y", "x"]  # z ignored (by B), w in 1 example only


def test_term_shift_of_identical_runs_is_empty_and_of_methods_is_not(runs):
    a = open_run(runs["a"])
    space = a.term_space("word_sum")
    key = RepresentationKey("s1", "grad_l2", unit="word_sum")
    R = a.representation(key)
    labels = a.examples["label"].to_numpy()
    assert compare.term_shift(R, R, space.vocab, space.vocab, labels, a.label_names, presence_a=space.presence,
                              presence_b=space.presence, min_count=1).empty
    R_x = a.representation(RepresentationKey("s1", "grad_x_input", unit="word_sum"))
    shift = compare.term_shift(R, R_x, space.vocab, space.vocab, labels, a.label_names, presence_a=space.presence,
                               presence_b=space.presence, n=3, min_count=2)
    assert set(shift["class"]) == set(a.label_names)
    assert (shift.groupby(["class", "direction"]).size() <= 3).all()
    assert ((shift["direction"] == "rose") == (shift["change"] > 0)).all()
    assert all(" " not in t for t in shift["term"])  # whole words


def test_term_shift_across_tokenizers_lines_up_words(runs):
    a, c = open_run(runs["a"]), open_run(runs["c"])
    key = RepresentationKey("s1", "grad_l2", unit="word_sum")
    sa, sc = a.term_space("word_sum"), c.term_space("word_sum")
    assert set(sa.vocab) == set(sc.vocab)  # the same words, from the same texts
    shift = compare.term_shift(a.representation(key), c.representation(key), sa.vocab, sc.vocab,
                               a.examples["label"].to_numpy(), a.label_names, presence_a=sa.presence,
                               presence_b=sc.presence, min_count=1)
    assert not shift.empty and set(shift["term"]) <= set(sa.vocab)


# ---------------------------------------------------------------- cluster flow and accuracy


def test_cluster_flow_of_identical_runs_is_diagonal(runs):
    key = RepresentationKey("s1", "grad_l2")
    labels_a = analysis.cluster_rows(open_run(runs["a"]).representation(key), 3, seed=0)
    labels_b = analysis.cluster_rows(open_run(runs["b"]).representation(key), 3, seed=0)  # same maps
    for flow in (compare.cluster_flow(labels_a, labels_a), compare.cluster_flow(labels_a, labels_b)):
        table = flow.to_numpy()
        assert table.shape == (3, 3) and table.sum() == 16
        assert (table == np.diag(np.diag(table))).all()


def test_cluster_flow_orders_relabelled_clusters_onto_the_diagonal():
    a = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    b = np.array([5, 5, 5, 3, 3, 9, 9, 9, 3])  # A's clusters renamed, one example moved
    flow = compare.cluster_flow(a, b)
    assert flow.columns.tolist() == [5, 3, 9]
    assert flow.to_numpy().tolist() == [[3, 0, 0], [0, 2, 0], [0, 1, 3]]
    assert flow.index.name == "A cluster" and flow.columns.name == "B cluster"
    with pytest.raises(ValueError, match="must be equal"):
        compare.cluster_flow(a, b[:3])


def test_cluster_flow_counts_like_a_crosstab_with_dense_sparse_and_negative_ids():
    rng = np.random.default_rng(0)
    for a, b in ((rng.integers(0, 7, 500), rng.integers(2, 9, 500)),  # ids from 0 and from 2, some unused
                 (rng.integers(0, 4, 300) * 10**9, rng.integers(-3, 3, 300)),  # far apart, negative
                 (np.array([], dtype=np.int64), np.array([], dtype=np.int64))):
        flow = compare.cluster_flow(a, b)
        want = pd.crosstab(pd.Series(a, name="A cluster"), pd.Series(b, name="B cluster"))
        assert sorted(flow.columns) == sorted(want.columns) and flow.index.tolist() == want.index.tolist()
        assert (flow[want.columns].to_numpy() == want.to_numpy()).all()


def test_least_agreeing_equals_a_stable_sort_with_ties_and_missing_values():
    rng = np.random.default_rng(1)
    for _ in range(300):
        m, n = int(rng.integers(0, 200)), int(rng.integers(0, 100))  # n over 64: the partition
        frame = pd.DataFrame({"jaccard": rng.choice([0.0, 0.25, 0.5, 1.0, np.nan], size=m),
                              "spearman": rng.choice([-1.0, 0.0, 0.5, 1.0, np.nan], size=m)},
                             index=pd.Index(rng.permutation(1000)[:m], name="row"))
        want = frame.dropna(subset=["jaccard"]).sort_values(["jaccard", "spearman"], kind="stable").iloc[:n]
        pd.testing.assert_frame_equal(compare.least_agreeing(frame, n), want)


def test_agreement_summary_has_the_medians_without_missing_values_and_the_least_agreeing_rows():
    frame = pd.DataFrame({"jaccard": [0.5, np.nan, 0.2, 1.0, 0.2], "spearman": [np.nan, np.nan, 0.3, 0.9, -0.5]},
                         index=pd.Index([7, 3, 9, 1, 4], name="row"))
    summary = compare.summarize_agreement(frame, 2)
    assert summary.median_jaccard == pytest.approx(0.35) and summary.median_spearman == pytest.approx(0.3)
    assert summary.compared == 4 and summary.least.index.tolist() == [4, 9]  # Jaccard ties: lower Spearman first
    empty = compare.summarize_agreement(frame.iloc[[1]], 2)
    assert np.isnan(empty.median_jaccard) and empty.compared == 0 and empty.least.empty


def test_slice_accuracy_side_by_side(runs):
    a, b = open_run(runs["a"]), open_run(runs["b"])
    table = compare.slice_accuracy(a.examples, b.examples, a.label_names).set_index("slice")
    assert list(table.index) == ["all", "split train", "split test", "class negative", "class positive"]
    assert table.loc["all", "accuracy_a"] == pytest.approx(a.examples["correct"].mean())
    # every prediction flipped between two classes: B's accuracy is 1 - A's on every slice
    np.testing.assert_allclose(table["accuracy_a"] + table["accuracy_b"], 1.0)
    assert table.loc["split test", "examples"] == 4
    sub = compare.slice_accuracy(a.examples, b.examples, a.label_names, rows=np.array([0, 1]))
    assert sub["slice"].tolist() == ["all", "split train", "class positive"]


# ---------------------------------------------------------------- the page


def _into_cache(cache: Path, *paths: Path) -> list[str]:
    ids = []
    for path in paths:
        shutil.copytree(path, cache / "runs" / path.name)
        ids.append(path.name)
    return ids


SECTIONS = ("Accuracy and flips", "Terms that rose or fell", "Map agreement", "Cluster flow")  # as a user reads them


def open_section(at, name: str):
    """Open the Compare page's tab `name`, as a click on it does (the tabs are keyed `section`), and rerun."""
    at.session_state["section"] = name
    return at.run()


def test_page_compares_two_runs_and_opens_a_flip_in_examples(runs, isolated_cache):
    id_a, id_b = _into_cache(isolated_cache, runs["a"], runs["b"])
    at = open_page("compare", run=id_a, run_b=id_b, clusters="2")
    no_exception(at)
    assert at.title[0].value == "Compare"
    assert [t.label for t in at.tabs] == list(SECTIONS)
    flips = at.dataframe(key="flips_table").value
    assert len(flips) == 16  # the swapped head flips every example
    accuracy = table_with(at, "accuracy_a")
    assert accuracy["slice"].tolist()[0] == "all"
    np.testing.assert_allclose(accuracy["accuracy_a"] + accuracy["accuracy_b"], 1.0)
    assert not at.get("plotly_chart") and not at.info  # the other tabs are not computed until opened

    open_section(at, "Terms that rose or fell")
    no_exception(at)
    assert "No term's salience changed" in texts(at.info)  # the same maps
    assert "flip_pick" not in [s.key for s in at.selectbox]
    open_section(at, "Map agreement")
    no_exception(at)
    assert at.dataframe(key="least_agreeing").value["jaccard"].min() == 1.0
    assert len(at.get("plotly_chart")) == 1  # the agreement histogram only
    open_section(at, "Cluster flow")
    no_exception(at)
    assert len(at.get("plotly_chart")) == 1 and "adjusted Rand index 1.00" in texts(at.caption)
    assert at.query_params["section"] == "Cluster flow"  # a shared link opens the same tab
    from core import ui

    at.switch_page(ui.PAGE_FILES["summary"]).run()
    at.switch_page(ui.PAGE_FILES["compare"]).run()  # back on the page: on the tab left open
    assert at.session_state["section"] == "Cluster flow" and len(at.get("plotly_chart")) == 1

    open_section(at, "Accuracy and flips")
    assert "section" not in at.query_params
    row = int(flips.index[3])
    at.selectbox(key="flip_pick").set_value(row).run()
    at.button(key="flip_to_examples").click().run()
    no_exception(at)
    assert at.title[0].value == "Examples"
    assert at.subheader[0].value.startswith(f"Example {row}")


def test_the_other_tabs_are_computed_while_one_is_read_and_opening_them_is_a_cache_hit(runs, isolated_cache,
                                                                                       monkeypatch):
    import streamlit as st

    from core import ui
    from tests.test_fragments import count_calls, run_fragments

    id_a, id_b = _into_cache(isolated_cache, runs["a"], runs["b"])
    calls = {"term shift": 0, "map agreement": 0, "k-means": 0}
    count_calls(monkeypatch, compare, "term_shift", calls, "term shift")
    count_calls(monkeypatch, compare, "map_agreement", calls, "map agreement")
    count_calls(monkeypatch, analysis, "cluster_rows", calls, "k-means")
    st.cache_data.clear()
    monkeypatch.setenv(ui.PREFETCH_ENV, "1")
    at = open_page("compare", run=id_a, run_b=id_b, clusters="2")
    no_exception(at)
    assert ui._PREFETCH.wait_until_done(60)
    # while the first tab is read: the other three tabs' work (the flow's clusters of A and of B)
    assert calls == {"term shift": 1, "map agreement": 1, "k-means": 2}
    for section in SECTIONS[1:]:
        at.session_state["section"] = section
        run_fragments(at, monkeypatch)  # a tab click reruns the tabs' fragment only
        no_exception(at)
        assert [t.label for t in at.tabs] == list(SECTIONS)
    assert len(at.get("plotly_chart")) == 1  # the cluster flow, drawn from what was computed ahead
    assert calls == {"term shift": 1, "map agreement": 1, "k-means": 2}, "a tab recomputed what was computed ahead"
    assert ui._PREFETCH.wait_until_done(60)

    monkeypatch.setenv(ui.PREFETCH_ENV, "0")  # turned off: a tab computes its own section when opened
    st.cache_data.clear()
    at.session_state["section"] = "Map agreement"
    run_fragments(at, monkeypatch)
    assert ui._PREFETCH.wait_until_done(60) and calls["map agreement"] == 2 and calls["term shift"] == 1


def test_page_with_other_tokenizer_says_why_no_map_agreement(runs, isolated_cache):
    id_a, id_c = _into_cache(isolated_cache, runs["a"], runs["c"])
    at = open_page("compare", run=id_a, run_b=id_c, clusters="2", section="Map agreement")
    no_exception(at)
    assert "map agreement needs the same tokens" in texts(at.info)
    open_section(at, "Accuracy and flips")
    assert "accuracy_a" in table_with(at, "accuracy_a")
    open_section(at, "Terms that rose or fell")
    assert table_with(at, "salience_b") is not None and len(at.get("plotly_chart")) == 1
    open_section(at, "Cluster flow")
    assert len(at.get("plotly_chart")) == 1

    at.button(key="swap_runs").click().run()  # B becomes the sidebar's run
    no_exception(at)
    assert at.selectbox(key="run").value == id_c and at.selectbox(key="run_b").value == id_a


def test_page_refuses_runs_over_other_data(runs, isolated_cache):
    id_a, id_d = _into_cache(isolated_cache, runs["a"], runs["d"])
    at = open_page("compare", run=id_a, run_b=id_d)
    no_exception(at)
    assert "different data" in texts(at.error)
    assert not at.dataframe


def test_page_with_one_run_compares_its_methods_or_says_it_needs_two(runs, isolated_cache):
    (id_a,) = _into_cache(isolated_cache, runs["a"])
    at = open_page("compare", clusters="2")
    no_exception(at)
    assert "needs two runs" in texts(at.info) and "attribution methods" in texts(at.info)
    assert at.selectbox(key="method_b").value == "grad_x_input"
    assert "No prediction flips" in texts(at.success)  # one model: the same predictions
    open_section(at, "Map agreement")
    assert at.dataframe(key="least_agreeing").value["jaccard"].min() < 1.0  # two methods' maps differ
    open_section(at, "Terms that rose or fell")
    assert table_with(at, "salience_b") is not None

    manifest = isolated_cache / "runs" / id_a / "manifest.json"  # the run made single-method
    data = json.loads(manifest.read_text())
    data["settings"]["methods"] = ["grad_l2"]
    manifest.write_text(json.dumps(data))
    at = open_page("compare")
    no_exception(at)
    assert "needs two runs" in texts(at.info)
    assert not at.dataframe


def test_page_does_not_render_class_names_or_terms_as_markdown(hostile_data_run):
    # the fixture run (3 methods) with link and image class names and a word piece: the page compares its methods
    at = open_page("compare", clusters="2", terms="piece", shift_min="1")
    seen = []
    for section in SECTIONS:  # each tab draws its own class names, terms and texts
        open_section(at, section)
        no_exception(at)
        assert_no_live_markup(at)
        seen += markdown_values(at)
    assert any("evil" in v for v in seen)


def test_term_shift_ranks_by_change_times_idf():
    # "the" rises most in raw salience, but it is in every example (idf ~0); "dull" rises less and is rare.
    R_a = np.array([[0.2, 0.1], [0.2, 0.1], [0.2, 0.1]])
    R_b = np.array([[0.5, 0.3], [0.5, 0.3], [0.5, 0.3]])
    vocab = ["the", "dull"]
    labels = np.zeros(3, dtype=int)
    plain = compare.term_shift(R_a, R_b, vocab, vocab, labels, ["neg"], min_count=1)
    assert list(plain["term"]) == ["the", "dull"]
    idf = np.array([0.05, 2.0])
    weighted = compare.term_shift(R_a, R_b, vocab, vocab, labels, ["neg"], min_count=1, idf_a=idf, idf_b=idf)
    assert list(weighted["term"]) == ["dull", "the"]
    assert weighted.set_index("term").loc["the", "change"] == pytest.approx(0.3)  # the change shown stays raw

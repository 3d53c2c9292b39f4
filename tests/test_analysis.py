"""Known-answer tests for core.analysis."""

from __future__ import annotations

import ast
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from core import analysis
from core.analysis import (
    example_terms,
    NeighbourIndex,
    SliceSpec,
    aggregated_salient_terms,
    apply_slice,
    cluster_rows,
    cluster_summary,
    confusion,
    pmi_terms,
    project_2d,
    shared_terms,
    to_csv_safe,
    to_json,
    to_text,
    top_terms,
    validate_regex,
    wordcloud_weights,
)


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    # On a shared 2-core machine, OpenMP barriers in t-SNE/KMeans on tiny inputs
    # stall for milliseconds per iteration; results do not depend on the count.
    with threadpool_limits(1):
        yield


def test_no_streamlit_import():
    tree = ast.parse(Path(analysis.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] == "streamlit" for name in names)


# --------------------------------------------------------------------------- slicing


@pytest.fixture
def examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [
                "The cat sat on the mat.",
                "A dog barked at the CAT!",
                "Concatenate strings",
                "new york is big",
                "I love New   York pizza",
                "c++ is fun",
            ],
            "label": [0, 1, 0, 1, 0, 1],
            "pred": [0, 0, 1, 1, 0, 0],
            "split": ["train", "train", "test", "test", "train", "all"],
        }
    ).assign(correct=lambda d: d["label"] == d["pred"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (SliceSpec(), [0, 1, 2, 3, 4, 5]),
        (SliceSpec(split=("train",)), [0, 1, 4]),
        (SliceSpec(split=("test", "all")), [2, 3, 5]),
        (SliceSpec(labels=(1,)), [1, 3, 5]),
        (SliceSpec(preds=(0,)), [0, 1, 4, 5]),
        (SliceSpec(correctness="correct"), [0, 3, 4]),
        (SliceSpec(correctness="misclassified"), [1, 2, 5]),
        # whole word, case-insensitive: "Concatenate" does not contain the word "cat"
        (SliceSpec(contains=("cat",)), [0, 1]),
        (SliceSpec(contains=("new york",)), [3, 4]),
        (SliceSpec(contains=("cat", "dog")), [1]),
        (SliceSpec(contains=("c++",)), [5]),
        (SliceSpec(contains=("  ",)), [0, 1, 2, 3, 4, 5]),
        # regex: case-insensitive search, not whole-word
        (SliceSpec(regex="CAT"), [0, 1, 2]),
        (SliceSpec(regex=r"^a\s"), [1]),
        (SliceSpec(regex=""), [0, 1, 2, 3, 4, 5]),
        (SliceSpec(split=("train",), correctness="misclassified", contains=("cat",)), [1]),
        (SliceSpec(labels=(0,), preds=(0,), regex="pizza|mat"), [0, 4]),
        (SliceSpec(labels=(1,), contains=("pizza",)), []),
    ],
)
def test_apply_slice_filters(examples, spec, expected):
    rows = apply_slice(examples, spec)
    assert rows.dtype == np.int64
    assert rows.tolist() == expected


def test_apply_slice_contains_follows_python_case_folding():
    # the fast substring prefilter must never drop a row the whole-word regex matches
    ex = pd.DataFrame({"text": ["İstanbul trip", "DIŞ kapı", "STRASSE", "Kelvin \u212a", "x"]})
    assert apply_slice(ex, SliceSpec(contains=("istanbul",))).tolist() == [0]
    assert apply_slice(ex, SliceSpec(contains=("kapi",))).tolist() == [1]
    assert apply_slice(ex, SliceSpec(contains=("k",))).tolist() == [3]
    assert apply_slice(ex, SliceSpec(contains=("straße",))).tolist() == []


def test_apply_slice_uses_positions_not_index_labels(examples):
    shifted = examples.set_index(np.arange(100, 106))
    assert apply_slice(shifted, SliceSpec(labels=(1,))).tolist() == [1, 3, 5]


def test_apply_slice_sample(examples):
    spec = SliceSpec(sample_size=3, seed=7)
    rows = apply_slice(examples, spec)
    assert len(rows) == 3 and len(set(rows)) == 3
    assert rows.tolist() == sorted(rows.tolist())
    assert rows.tolist() == apply_slice(examples, spec).tolist()
    samples = {tuple(apply_slice(examples, SliceSpec(sample_size=3, seed=s))) for s in range(10)}
    assert len(samples) > 1
    # sampling happens after filtering
    assert set(apply_slice(examples, SliceSpec(labels=(1,), sample_size=2))) <= {1, 3, 5}
    assert apply_slice(examples, SliceSpec(sample_size=100)).tolist() == [0, 1, 2, 3, 4, 5]


def test_invalid_regex(examples):
    message = validate_regex("(unclosed")
    assert message is not None
    assert "Invalid regular expression" in message and "'(unclosed'" in message
    assert "position" in message
    assert validate_regex(r"\bcat\b") is None
    with pytest.raises(ValueError, match="Invalid regular expression"):
        apply_slice(examples, SliceSpec(regex="[a-"))


def test_slice_spec_is_hashable_and_validated():
    spec = SliceSpec(split=["train"], labels=[0, 1], contains=["cat"])
    assert spec == SliceSpec(split=("train",), labels=(0, 1), contains=("cat",))
    assert hash(spec) == hash(SliceSpec(split=("train",), labels=(0, 1), contains=("cat",)))
    with pytest.raises(ValueError, match="correctness"):
        SliceSpec(correctness="wrong")


# --------------------------------------------------------------------------- clustering


def _planted(sparse: bool, per_group: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), per_group)
    if sparse:
        # each group draws its tokens from its own block of 10 columns
        rows, cols, vals = [], [], []
        for i, g in enumerate(truth):
            for c in rng.choice(10, size=4, replace=False):
                rows.append(i)
                cols.append(10 * g + c)
                vals.append(rng.uniform(0.5, 1.0))
        X = normalize(sp.csr_matrix((vals, (rows, cols)), shape=(len(truth), 40), dtype=np.float32))
    else:
        centres = np.eye(3, 16) * 5
        X = centres[truth] + rng.normal(scale=0.2, size=(len(truth), 16))
        X = normalize(X).astype(np.float32)
    order = rng.permutation(len(truth))
    return X[order], truth[order]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("minibatch", [False, True])
def test_cluster_rows_recovers_planted_groups(sparse, minibatch, monkeypatch):
    if minibatch:  # rows then go through MiniBatchKMeans
        monkeypatch.setattr(analysis, "MINIBATCH_THRESHOLD", 10)
    X, truth = _planted(sparse)
    labels = cluster_rows(X, 3, seed=0)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.array_equal(labels, cluster_rows(X, 3, seed=0))


def test_cluster_rows_on_used_columns_matches_kmeans_on_the_whole_vocabulary():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    # 300 rows over a 5,000-column vocabulary of which only 60 columns are ever used
    dense = np.zeros((300, 5000), dtype=np.float32)
    used = rng.choice(5000, 60, replace=False)
    for row in dense:
        row[rng.choice(used, 6, replace=False)] = rng.uniform(0.1, 1.0, 6)
    X = sp.csr_matrix(normalize(dense))
    expected = KMeans(n_clusters=4, n_init="auto", random_state=0).fit_predict(X)
    assert adjusted_rand_score(expected, cluster_rows(X, 4, seed=0)) == 1.0


def test_cluster_rows_rejects_bad_k():
    X = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="at least 1"):
        cluster_rows(X, 0)
    with pytest.raises(ValueError, match="Cannot make 5 clusters from 4 rows"):
        cluster_rows(X, 5)


# --------------------------------------------------------------------------- top terms

VOCAB = ["[CLS]", "a", "b", "c", "d"]
IGNORE = np.array([True, False, False, False, False])
R_SMALL = np.array(
    [
        [0.6, 0.8, 0.0, 0.0, 0.0],
        [0.0, 0.6, 0.8, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 0.0],
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix])
def test_top_terms_by_hand(to_matrix):
    R = to_matrix(R_SMALL)
    terms = top_terms(R, VOCAB, IGNORE, n=10)
    # means: [CLS] .2 (ignored), a 1.4/3, b .8/3, c 1/3, d 0 (dropped)
    assert [t for t, _ in terms] == ["a", "c", "b"]
    np.testing.assert_allclose([w for _, w in terms], [1.4 / 3, 1 / 3, 0.8 / 3], rtol=1e-6)
    assert [t for t, _ in top_terms(R, VOCAB, IGNORE, n=2)] == ["a", "c"]
    assert top_terms(R[[2]], VOCAB, IGNORE, n=5) == [("c", 1.0)]
    assert wordcloud_weights(R, VOCAB, IGNORE, n=2) == dict(top_terms(R, VOCAB, IGNORE, n=2))


def test_top_terms_empty_rows():
    assert top_terms(sp.csr_matrix((0, 5), dtype=np.float32), VOCAB, IGNORE) == []


def test_cluster_summary_by_hand():
    clusters = np.array([1, 1, 1, 0, 0, 2])
    rows = pd.DataFrame(
        {
            "label": [0, 0, 1, 1, 1, 0],
            "pred": [0, 1, 1, 1, 1, 1],
        },
        index=[10, 11, 12, 13, 14, 15],
    ).assign(correct=lambda d: d["label"] == d["pred"])
    R = sp.csr_matrix(
        np.array(
            [
                [0.5, 0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.5, 0.0],
                [0.0, 0.2, 1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0, 0.3],
                [0.0, 0.0, 0.0, 0.0, 1.0],
            ],
            dtype=np.float32,
        )
    )
    summary = cluster_summary(clusters, rows, R, VOCAB, IGNORE, ["neg", "pos"], n_terms=2)
    assert summary["cluster"].tolist() == [1, 0, 2]
    assert summary["size"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(summary["size_pct"], [50.0, 100 / 3, 100 / 6])
    assert summary["majority_label"].tolist() == ["neg", "pos", "neg"]
    assert summary["majority_pred"].tolist() == ["pos", "pos", "pos"]
    np.testing.assert_allclose(summary["accuracy"], [2 / 3, 1.0, 0.0])
    # distinctive (default): mean in the cluster minus mean in the other rows, salient in >= min(size, 3) rows.
    # cluster 1: b 1.0 - 0 (3 rows); c salient in 1 row only; a .2/3 - 2/4 < 0. cluster 0 (2 rows): a 1.0 - .2/4;
    # d .15 - 1.5/4 < 0. cluster 2 (1 row): d 1.0 - .3/5.
    assert summary["top_terms"].tolist() == ["b", "a", "d"]
    assert summary["terms"][1][0] == ("a", pytest.approx(1.0 - 0.05))
    assert summary["terms"][2][0] == ("d", pytest.approx(1.0 - 0.06))
    mean = cluster_summary(clusters, rows, R, VOCAB, IGNORE, ["neg", "pos"], n_terms=2, ranking="mean")
    # cluster 1 means: b 1.0, c .5/3, a .2/3  ([CLS] ignored)
    assert mean["top_terms"].tolist() == ["b, c", "a, d", "d"]
    assert mean["terms"][0][0] == ("b", pytest.approx(1.0))


# --------------------------------------------------------------------------- projections



@pytest.mark.parametrize("shift", [lambda c: c * 3 + 7, lambda c: c - 5, lambda c: c * 10**9])
def test_cluster_summary_is_the_same_whatever_the_cluster_ids(shift):
    # k-means' own ids (0..k-1) are positioned by a bincount; sparse, negative or huge ids by a sort
    rng = np.random.default_rng(0)
    R = sp.random(300, 5, density=0.5, format="csr", random_state=1, dtype=np.float32)
    rows = pd.DataFrame({"label": rng.integers(0, 2, 300), "pred": rng.integers(0, 2, 300)})
    rows["correct"] = rows["label"] == rows["pred"]
    rows["prob_0"] = rng.random(300)
    rows["prob_1"] = 1 - rows["prob_0"]
    clusters = rng.integers(0, 4, 300)
    plain = cluster_summary(clusters, rows, R, VOCAB, IGNORE, ["neg", "pos"])
    shifted = cluster_summary(shift(clusters), rows, R, VOCAB, IGNORE, ["neg", "pos"])
    assert shifted["cluster"].tolist() == [int(shift(c)) for c in plain["cluster"]]
    pd.testing.assert_frame_equal(plain.drop(columns="cluster"), shifted.drop(columns="cluster"))
    for c in plain.itertuples():
        members = clusters == c.cluster
        assert c.size == members.sum() and c.accuracy == pytest.approx(rows["correct"][members].mean())
        assert c.confidence == pytest.approx(rows[["prob_0", "prob_1"]].max(axis=1)[members].mean())
        assert c.label_counts == tuple(np.bincount(rows["label"][members], minlength=2))


def test_project_2d_umap_shape_and_determinism():
    X, _ = _planted(sparse=True, per_group=15)
    a = project_2d(X, "umap", seed=3)
    b = project_2d(X, "umap", seed=3)
    assert a.shape == (45, 2) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sparse", [False, True])
def test_project_2d_tsne_shape_and_determinism(sparse):
    X, _ = _planted(sparse=sparse, per_group=20)
    a = project_2d(X, "tsne", seed=1)
    assert a.shape == (60, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, project_2d(X, "tsne", seed=1))


def test_project_2d_tsne_subsample_places_every_row_with_its_group(monkeypatch):
    X, truth = _planted(sparse=True, per_group=30)
    monkeypatch.setattr(analysis, "TRANSFORM_BATCH", 7)  # several transform batches
    calls = []
    coords = project_2d(X, "tsne", seed=0, tsne_max_points=40, progress=lambda f, m: calls.append((f, m)))
    assert coords.shape == (90, 2) and np.isfinite(coords).all()
    # batches are placed independently of each other: one big batch gives the same coordinates
    monkeypatch.setattr(analysis, "TRANSFORM_BATCH", 1000)
    np.testing.assert_allclose(coords, project_2d(X, "tsne", seed=0, tsne_max_points=40), atol=1e-4)
    fit_rows = np.sort(np.random.default_rng(0).choice(90, size=40, replace=False))
    placed = np.setdiff1d(np.arange(90), fit_rows)
    # groups share no token, so every placed row lands nearest the centre of its own group's embedded rows
    centres = np.stack([coords[fit_rows[truth[fit_rows] == g]].mean(axis=0) for g in range(3)])
    nearest = np.argmin(((coords[placed, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(nearest, truth[placed])
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("placing the other 50 points" in m for _, m in calls)


def test_project_2d_large_umap_reduces_and_reports_epochs(monkeypatch):
    X, truth = _planted(sparse=True, per_group=30)
    monkeypatch.setattr(analysis, "UMAP_REDUCE_ABOVE", 20)
    calls = []
    coords = project_2d(X, "umap", seed=0, progress=lambda f, m: calls.append((f, m)))
    assert coords.shape == (90, 2) and np.isfinite(coords).all()
    messages = [m for _, m in calls]
    assert any("truncated SVD" in m for m in messages)
    assert any("optimising the layout" in m for m in messages)  # read from UMAP's epoch bar
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the planted groups stay apart: each point's nearest other point is in its own group
    d = ((coords[:, None, :] - coords[None]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    assert (truth[d.argmin(axis=1)] == truth).mean() == 1.0


def test_project_2d_small_and_bad_method():
    assert project_2d(np.eye(2, dtype=np.float32), "umap").shape == (2, 2)
    tiny = sp.csr_matrix(np.random.default_rng(0).random((5, 6)).astype(np.float32))
    for method in ("umap", "tsne"):
        coords = project_2d(tiny, method)
        assert coords.shape == (5, 2) and np.isfinite(coords).all()
    assert project_2d(np.zeros((0, 3), dtype=np.float32), "tsne").shape == (0, 2)
    with pytest.raises(ValueError, match="Unknown projection method"):
        project_2d(np.eye(3), "pca")


# --------------------------------------------------------------------------- neighbours


def _brute_force(Xn: np.ndarray, q: int, n: int, cand: np.ndarray | None, exclude_self: bool):
    scores = Xn @ Xn[q]
    ids = np.arange(len(Xn)) if cand is None else cand
    if exclude_self:
        ids = ids[ids != q]
    order = ids[np.argsort(-scores[ids], kind="stable")][:n]
    return order, scores[order]


@pytest.mark.parametrize("sparse", [False, True])
def test_neighbour_index_matches_brute_force(sparse):
    rng = np.random.default_rng(0)
    if sparse:
        X = sp.random(300, 60, density=0.3, format="csr", dtype=np.float32, random_state=1)
        X = X + sp.csr_matrix((np.ones(300), (np.arange(300), rng.integers(0, 60, 300))), shape=(300, 60))
        X = sp.csr_matrix(X, dtype=np.float32) * 3.0  # not normalised: the index must normalise
        Xn = normalize(X.toarray().astype(np.float64))
    else:
        X = rng.normal(size=(300, 16)).astype(np.float32) * 3.0
        Xn = normalize(X.astype(np.float64))
    index = NeighbourIndex(X)
    mask = rng.random(300) < 0.3
    for q in [0, 17, 299]:
        for cand in [None, mask, np.flatnonzero(mask)[::-1], np.array([q, 5, 6, 7])]:
            cand_ids = None if cand is None else (np.flatnonzero(cand) if cand.dtype == bool else np.unique(cand))
            for exclude_self in [True, False]:
                ids, scores = index.search(q, n=5, candidates=cand, exclude_self=exclude_self)
                ref_ids, ref_scores = _brute_force(Xn, q, 5, cand_ids, exclude_self)
                assert ids.dtype == np.int64 and scores.dtype == np.float32
                assert len(ids) == len(ref_ids) == len(set(ids.tolist()))
                # scores are exact cosines of the returned rows and equal the best ones
                np.testing.assert_allclose(scores, Xn[ids] @ Xn[q], atol=1e-5)
                np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
                assert ids.tolist() == ref_ids.tolist()
                if exclude_self:
                    assert q not in ids
                if cand_ids is not None:
                    assert set(ids.tolist()) <= set(cand_ids.tolist())
    ids, scores = index.search(3, n=1, exclude_self=False)
    assert ids.tolist() == [3] and scores[0] == pytest.approx(1.0, abs=1e-5)
    ids, _ = index.search(3, n=10, candidates=np.array([3, 8]))
    assert ids.tolist() == [8]
    ids, _ = index.search(3, n=10, candidates=np.zeros(300, dtype=bool))
    assert ids.size == 0


def test_neighbour_index_rejects_bad_candidates():
    index = NeighbourIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="mask has length"):
        index.search(0, candidates=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="candidate indices"):
        index.search(0, candidates=np.array([9]))
    with pytest.raises(IndexError):
        index.search(4)


def test_shared_terms():
    assert shared_terms([("a", 1.0), ("b", 0.5)], ["b", "c"], {"b", "a"}) == {"b"}
    assert shared_terms() == set()


# --------------------------------------------------------------------------- seed terms


def test_aggregated_salient_terms_by_hand():
    vocab = ["[CLS]", "good", "bad", "movie"]
    ignore = np.array([True, False, False, False])
    presence = sp.csr_matrix(
        np.array([[1, 1, 0, 1], [1, 2, 1, 0], [1, 0, 0, 1], [1, 0, 1, 0]], dtype=np.float32)
    )
    R = sp.csr_matrix(
        np.array(
            [[0.5, 0.5, 0.0, 0.7], [0.5, 0.8, 0.3, 0.0], [0.6, 0.0, 0.0, 0.8], [0.0, 0.0, 1.0, 0.0]],
            dtype=np.float32,
        )
    )
    df = aggregated_salient_terms(R, presence, np.array([0, 1, 2]), vocab, ignore, min_count=2)
    # over rows 0-2: good 1.3/3 (2 rows), bad .3/3 (1 row: below min_count), movie 1.5/3 (2 rows)
    assert df.columns.tolist() == ["term", "token_id", "mean_salience", "count"]
    assert df["term"].tolist() == ["movie", "good"]
    assert df["token_id"].tolist() == [3, 1]
    np.testing.assert_allclose(df["mean_salience"], [1.5 / 3, 1.3 / 3], rtol=1e-6)
    assert df["count"].tolist() == [2, 2]
    assert aggregated_salient_terms(R, presence, np.array([0, 1, 2]), vocab, ignore, 1, top_n=1)["term"].tolist() == ["movie"]
    # a boolean row mask selects the same rows
    mask = np.array([True, True, True, False])
    assert aggregated_salient_terms(R, presence, mask, vocab, ignore, 2).equals(df)
    everything = aggregated_salient_terms(R, presence, None, vocab, ignore, min_count=2)
    assert everything["term"].tolist() == ["movie", "good", "bad"]


def test_pmi_terms_by_hand():
    vocab = ["[SEP]", "great", "awful", "ok", "gem"]
    ignore = np.array([True, False, False, False, False])
    y = np.array([1, 1, 1, 0, 0, 0])
    presence = np.zeros((6, 5), dtype=np.float32)
    presence[[0, 1, 2], 0] = 1          # ignored
    presence[[0, 1, 3], 1] = 1
    presence[0, 1] = 2                  # repeated in one document: still one document
    presence[[3, 4], 2] = 1             # never with class 1
    presence[:, 3] = 1                  # everywhere: PMI 0
    presence[0, 4] = 1                  # once
    presence = sp.csr_matrix(presence)
    df = pmi_terms(presence, y, 1, vocab, ignore, min_count=2)
    assert df["term"].tolist() == ["great", "ok"]
    np.testing.assert_allclose(df["pmi"], [math.log((2 / 3) / 0.5), 0.0], atol=1e-12)
    assert df["count"].tolist() == [3, 6]
    assert df["class_count"].tolist() == [2, 3]
    df1 = pmi_terms(presence, y, 1, vocab, ignore, min_count=1)
    assert df1["term"].tolist() == ["gem", "great", "ok"]
    assert df1["pmi"].iloc[0] == pytest.approx(math.log(2))
    assert pmi_terms(presence, y, 1, vocab, ignore, min_count=1, top_n=1)["term"].tolist() == ["gem"]
    assert pmi_terms(presence, y, 7, vocab, ignore, min_count=1).empty


def test_term_lists_over_some_rows_count_them_in_place_as_over_a_copy_of_them():
    rng = np.random.default_rng(5)
    n, width = 60, 12
    presence = sp.csr_matrix((rng.random((n, width)) < 0.3).astype(np.float32))
    salience = sp.csr_matrix(presence.multiply(rng.random((n, width))).astype(np.float32))
    vocab, ignore = [f"t{i}" for i in range(width)], np.zeros(width, dtype=bool)
    ignore[0] = True
    y = rng.integers(0, 3, n)
    rows = np.sort(rng.choice(n, 40, replace=False))
    for terms in (analysis.log_odds_terms, pmi_terms):
        in_place = terms(presence, y[rows], 1, vocab, ignore, min_count=2, top_n=width, rows=rows)
        copied = terms(presence[rows], y[rows], 1, vocab, ignore, min_count=2, top_n=width)
        pd.testing.assert_frame_equal(in_place, copied)
        assert len(in_place) >= 3
        with pytest.raises(ValueError, match="y has"):
            terms(presence, y, 1, vocab, ignore, rows=rows)
    # the salient lists: column means and counts of the class's rows against the copies' (float64 sums)
    class_rows, other_rows = rows[y[rows] == 1], rows[y[rows] != 1]
    got = analysis.distinctive_salient_terms(salience, presence, class_rows, other_rows, vocab, ignore,
                                             min_count=2, top_n=width)
    dense = salience.toarray().astype(np.float64)
    mean_in, mean_out = dense[class_rows].mean(axis=0), dense[other_rows].mean(axis=0)
    assert len(got) >= 2
    np.testing.assert_allclose(got["mean_salience"], mean_in[got["token_id"]], rtol=1e-12)
    np.testing.assert_allclose(got["mean_salience_rest"], mean_out[got["token_id"]], rtol=1e-12)
    assert got["count"].tolist() == (presence.toarray()[class_rows] > 0).sum(axis=0)[got["token_id"]].tolist()
    with pytest.raises(ValueError, match="overlap"):
        analysis._rows_column_stats(presence, [rows, rows[:3]])


# --------------------------------------------------------------------------- export


def test_to_csv_safe_escapes_formulas():
    df = pd.DataFrame(
        {
            "text": ["=cmd|'/C calc'!A0", "+1", "-x", "@x", "normal", "\tx", "\rx", "a=b"],
            "n": [-1, 2, 3, 4, 5, 6, 7, 8],
        }
    )
    out = to_csv_safe(df)
    back = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert back["text"].tolist() == [
        "'=cmd|'/C calc'!A0", "'+1", "'-x", "'@x", "normal", "'\tx", "'\rx", "a=b",
    ]
    assert back["n"].tolist() == [-1, 2, 3, 4, 5, 6, 7, 8]  # numbers are not text cells
    assert to_csv_safe(pd.DataFrame({"=h": ["ok"]})).splitlines()[0] == "'=h"
    assert df["text"].iloc[0] == "=cmd|'/C calc'!A0"  # input untouched


def test_to_json_and_text():
    df = pd.DataFrame({"term": ["ça", "b"], "w": [0.5, 0.25]})
    assert json.loads(to_json(df)) == [{"term": "ça", "w": 0.5}, {"term": "b", "w": 0.25}]
    assert "ça" in to_json(df)
    assert to_text(["a", "##b"]) == "a\n##b\n"
    assert to_text([("x", 0.3), ("y", 0.1)]) == "x\ny\n"
    assert to_text([]) == ""


def test_confusion():
    ex = pd.DataFrame({"label": [0, 0, 1, 2, 2, 2], "pred": [0, 1, 1, 2, 0, 2]})
    cm = confusion(ex, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[2, 0] = 1
    expected[2, 2] = 2
    np.testing.assert_array_equal(cm, expected)


def test_example_terms_skips_ignored_and_orders_by_weight():
    R = sp.csr_matrix(np.array([[0.1, 0.5, 0.0, 0.9], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    ignore = np.array([False, False, False, True])
    out = example_terms(R, ["a", "b", "c", "[SEP]"], ignore, n=5)
    assert out == [[("b", pytest.approx(0.5)), ("a", pytest.approx(0.1))], []]
    assert example_terms(R.toarray(), ["a", "b", "c", "[SEP]"], ignore, n=1) == [[("b", pytest.approx(0.5))], []]


@pytest.mark.parametrize("index_type,value_type", [(np.int32, np.float32), (np.int64, np.float64)])
def test_cluster_column_sums_match_a_dense_computation(index_type, value_type):
    import scipy.sparse as sp

    from core import kernels

    rng = np.random.default_rng(3)
    dense = rng.standard_normal((300, 40)).astype(value_type)
    dense[rng.random(dense.shape) < 0.7] = 0.0
    R = sp.csr_matrix(dense)
    R.data[::7] = 0.0  # explicit zeros count in no support
    dense = R.toarray()
    R.indices, R.indptr = R.indices.astype(index_type), R.indptr.astype(index_type)
    member_of = rng.integers(0, 4, size=300)
    sums, supports = kernels.csr_cluster_column_sums(member_of, 5, R.indptr, R.indices, R.data, 40)
    for c in range(5):
        rows = dense[member_of == c]
        np.testing.assert_allclose(sums[c], rows.sum(axis=0, dtype=np.float64), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(supports[c], (rows > 0).sum(axis=0))
    assert not sums[4].any() and not supports[4].any()  # a cluster with no row
    with pytest.raises(ValueError, match="rows"):
        kernels.csr_cluster_column_sums(member_of[:-1], 5, R.indptr, R.indices, R.data, 40)
    with pytest.raises(ValueError, match="positions"):
        kernels.csr_cluster_column_sums(member_of, 3, R.indptr, R.indices, R.data, 40)


@pytest.mark.parametrize("n,n_clusters,n_classes", [(2, 1, 1), (5, 5, 5), (6, 1, 3), (1000, 7, 4), (20000, 20, 2)])
def test_label_agreement_is_scikit_learns_adjusted_rand_index(n, n_clusters, n_classes):
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(n)
    clusters = rng.integers(0, n_clusters, n) * 3 + 7  # ids need not be 0..k-1
    classes = np.where(rng.random(n) < 0.7, clusters % max(n_classes, 1), rng.integers(0, n_classes, n))
    assert analysis.label_agreement(clusters, classes) == pytest.approx(adjusted_rand_score(classes, clusters),
                                                                      abs=1e-12)


def test_label_agreement_known_values():
    assert analysis.label_agreement(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-0.5)
    assert analysis.label_agreement(np.array([5, 5, 9, 9]), np.array([1, 1, 0, 0])) == 1.0
    assert analysis.label_agreement(np.array([3, 3]), np.array([2, 2])) == 1.0


@pytest.mark.parametrize("value_type", [np.float32, np.float64])
def test_assign_to_centres_picks_the_nearest_centre_as_a_dense_computation_does(value_type):
    rng = np.random.default_rng(5)
    dense = rng.random((2000, 60)).astype(value_type)
    dense[rng.random(dense.shape) < 0.8] = 0.0
    dense[:50] = 0.0  # empty rows: the nearest centre is the one of smallest norm
    centres = rng.random((7, 60)).astype(np.float32)
    centres[3] = centres[5] * 0.1  # a short centre: empty rows go there
    X = sp.csr_matrix(dense)
    got = analysis.assign_to_centres(X, centres)
    distances = ((dense[:, None, :].astype(np.float64) - centres[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(got, distances.argmin(axis=1))
    assert (got[:50] == 3).all()
    np.testing.assert_array_equal(analysis.assign_to_centres(dense, centres), got)  # the dense path agrees


def test_nearest_centre_split_between_cores_gives_the_serial_answer(monkeypatch):
    """The rows of a large matrix are split between threads; every row's centre must be the one the single
    kernel finds, whatever the split (here three blocks of a small matrix)."""
    from core import kernels

    rng = np.random.default_rng(3)
    X = sp.random(500, 60, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    centres = rng.random((7, 60), dtype=np.float32)
    serial = kernels.csr_nearest_centre(X.indptr, X.indices, X.data, centres)
    expected = (X @ centres.T - 0.5 * (centres * centres).sum(axis=1)).argmax(axis=1)
    assert (serial == np.asarray(expected).ravel()).all()
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 100)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 3)
    assert len(kernels._row_blocks(X.indptr)) == 4
    assert (kernels.csr_nearest_centre(X.indptr, X.indices, X.data, centres) == serial).all()


def test_column_sums_split_between_cores_give_the_serial_answer(monkeypatch):
    from core import kernels

    rng = np.random.default_rng(4)
    R = sp.random(600, 50, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    member_of = rng.integers(0, 6, size=600)
    serial = kernels.csr_cluster_column_sums(member_of, 6, R.indptr, R.indices, R.data, 50)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 100)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 3)
    assert len(kernels._row_blocks(R.indptr)) == 4
    split = kernels.csr_cluster_column_sums(member_of, 6, R.indptr, R.indices, R.data, 50)
    np.testing.assert_allclose(split[0], serial[0], rtol=1e-12)
    np.testing.assert_array_equal(split[1], serial[1])


def _dense_lloyd_pass(dense: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd pass by hand: each row to its nearest centre (squared euclidean, float64), each centre with rows
    to their mean, a centre without rows unchanged."""
    distances = ((dense[:, None, :].astype(np.float64) - centres[None, :, :]) ** 2).sum(axis=2)
    labels = distances.argmin(axis=1)
    moved = centres.astype(np.float64).copy()
    for c in range(len(centres)):
        if (labels == c).any():
            moved[c] = dense[labels == c].mean(axis=0)
    return labels, moved


@pytest.mark.parametrize("split", [False, True])
def test_lloyd_passes_equal_a_hand_computed_k_means(split, monkeypatch):
    from core import kernels

    if split:  # the rows shared between three threads, each summing into its own arrays
        monkeypatch.setattr(kernels, "LLOYD_PARALLEL_MIN_ENTRIES", 100)
        monkeypatch.setattr(kernels.os, "cpu_count", lambda: 3)
    rng = np.random.default_rng(11)
    dense = rng.random((400, 30)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.75] = 0.0
    X = sp.csr_matrix(dense)
    start = dense[[0, 1, 2, 3]].copy()
    start[3] = 50.0  # far from every row: it gets none and must stay where it is
    labels, centres, passes = kernels.csr_lloyd(X.indptr, X.indices, X.data, start, max_iter=1)
    expected_labels, expected_centres = _dense_lloyd_pass(dense, start)
    assert passes == 1 and (labels == expected_labels).all() and not (labels == 3).any()
    np.testing.assert_allclose(centres, expected_centres, rtol=1e-5, atol=1e-6)
    # to convergence: the labels of the last pass are the nearest centres of the centres before it, and the
    # returned centres are their means
    labels, centres, passes = kernels.csr_lloyd(X.indptr, X.indices, X.data, start, max_iter=100)
    assert passes < 100
    again, moved = _dense_lloyd_pass(dense, centres)
    assert (again == labels).all()
    np.testing.assert_allclose(moved, centres, rtol=1e-5, atol=1e-6)


def test_kmeans_plusplus_seeds_one_row_per_planted_group():
    from core import kernels

    X, truth = _planted(sparse=True, per_group=40)
    seeds = kernels.csr_kmeans_plusplus(X.indptr, X.indices, X.data, X.shape[1], 3, np.random.default_rng(0))
    assert sorted(truth[seeds]) == [0, 1, 2]
    again = kernels.csr_kmeans_plusplus(X.indptr, X.indices, X.data, X.shape[1], 3, np.random.default_rng(0))
    assert (seeds == again).all()
    with pytest.raises(ValueError, match="cannot seed"):
        kernels.csr_kmeans_plusplus(X.indptr, X.indices, X.data, X.shape[1], len(truth) + 1,
                                    np.random.default_rng(0))


def test_sparse_k_means_on_a_sample_recovers_planted_groups_and_matches_scikit_learns_inertia(monkeypatch):
    """Above MINIBATCH_THRESHOLD sparse rows go through the compiled passes, fitted on a sample above
    CLUSTER_FIT_ROWS; on planted groups every row must land with its group, and on unstructured rows the
    objective must be as low as scikit-learn's KMeans reaches (within 2%)."""
    from sklearn.cluster import KMeans

    monkeypatch.setattr(analysis, "MINIBATCH_THRESHOLD", 50)
    monkeypatch.setattr(analysis, "CLUSTER_FIT_ROWS", 120)
    monkeypatch.setattr(analysis, "SEED_ROWS", 60)
    X, truth = _planted(sparse=True, per_group=100)
    labels = cluster_rows(X, 3, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0 and np.array_equal(labels, cluster_rows(X, 3, seed=0))
    assert set(np.unique(labels)) == {0, 1, 2}

    rng = np.random.default_rng(2)
    dense = rng.random((3000, 40)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.8] = 0.0
    rows = sp.csr_matrix(dense)
    monkeypatch.setattr(analysis, "CLUSTER_FIT_ROWS", 1000)
    monkeypatch.setattr(analysis, "SEED_ROWS", 500)

    def inertia(labels: np.ndarray) -> float:
        return sum(((dense[labels == c] - dense[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels))

    ours = inertia(cluster_rows(rows, 8, seed=0))
    theirs = min(inertia(KMeans(n_clusters=8, n_init=1, random_state=s).fit_predict(rows)) for s in (0, 1))
    assert ours <= 1.02 * theirs


def test_sparse_k_means_of_all_zero_rows_is_one_cluster(monkeypatch):
    monkeypatch.setattr(analysis, "MINIBATCH_THRESHOLD", 10)
    labels = cluster_rows(sp.csr_matrix((40, 12), dtype=np.float32), 3, seed=0)
    assert labels.dtype == np.int64 and (labels == 0).all()


def test_split_label_counts_equal_pandas_groupby():
    from core.analysis import split_label_counts

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"split": rng.choice(["train", "test", "dev", None], 400),
                          "label": rng.choice([0, 2, 3], 400)})
    frame.loc[frame["split"] == "dev", "label"] = 3  # a label that one split lacks: a zero, as unstack fills
    expected = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    got = split_label_counts(frame["split"], frame["label"].to_numpy())
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_index_type=False,
                                  check_column_type=False)
    assert got.loc["dev", 0] == 0 and got.to_numpy().sum() == frame["split"].notna().sum()

"""Known answers for what the pages say about terms: distinctive terms, log-odds, cluster rows, shortcut flags."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from core.analysis import (
    class_association_terms,
    class_salient_terms,
    cluster_summary,
    distinctive_salient_terms,
    distinctive_terms,
    log_odds_terms,
    majority_text,
    pmi_terms,
)


def _normalise(M: np.ndarray) -> np.ndarray:
    return M / np.linalg.norm(M, axis=1, keepdims=True)


def _planted_salience(seed: int = 0):
    """120 rows over 8 terms: "the" salient in every row; "gem" salient in 27 of the 30 rows of group A and in
    2 of the 90 others; noise terms everywhere at random."""
    rng = np.random.default_rng(seed)
    vocab = ["[CLS]", "the", "gem", "movie", "plot", "actor", "fun", "bad"]
    ignore = np.array([True] + [False] * 7)
    n, group = 120, np.arange(30)
    M = rng.uniform(0.0, 0.3, size=(n, len(vocab)))
    M[:, 0] = 0.9                      # ignored, high everywhere
    M[:, 1] = rng.uniform(0.7, 0.9, n)  # function word: salient everywhere
    M[:, 2] = 0.0
    M[group[:27], 2] = 0.8
    M[[50, 80], 2] = 0.8
    return _normalise(M), vocab, ignore, group


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix])
def test_distinctive_terms_rank_planted_term_first_and_drop_function_word(to_matrix):
    R, vocab, ignore, group = _planted_salience()
    rest = np.setdiff1d(np.arange(len(R)), group)
    terms = distinctive_terms(to_matrix(R[group]), to_matrix(R[rest]), vocab, ignore, n=10)
    assert terms[0][0] == "gem"
    assert "the" not in [t for t, _ in terms[:3]]
    assert "[CLS]" not in [t for t, _ in terms]
    weights = [w for _, w in terms]
    assert all(w > 0 for w in weights) and weights == sorted(weights, reverse=True)
    # the same rows ranked by their plain mean put the function word first: the ranking is what changed
    means = R[group].mean(axis=0)
    assert vocab[int(np.argmax(np.where(ignore, -1, means)))] == "the"


def test_distinctive_terms_min_support():
    # "rare" is very salient in a single row of the group: below the default support of 3 rows
    R = np.zeros((10, 3))
    R[:, 0] = 1.0
    R[0] = [0.0, 1.0, 0.0]
    R[:4, 2] = 0.5
    vocab, ignore = ["common", "rare", "often"], np.zeros(3, dtype=bool)
    group, rest = R[:5], R[5:]
    assert [t for t, _ in distinctive_terms(group, rest, vocab, ignore)] == ["often"]
    assert [t for t, _ in distinctive_terms(group, rest, vocab, ignore, min_support=1)] == ["often", "rare"]
    # support read from presence instead of salience
    presence = np.zeros((5, 3))
    presence[:3, 1] = 1
    assert "rare" in [t for t, _ in distinctive_terms(group, rest, vocab, ignore, presence_in_group=presence)]


def test_distinctive_salient_terms_against_other_classes():
    R, vocab, ignore, group = _planted_salience()
    presence = sp.csr_matrix((R > 0).astype(np.float32))
    others = np.setdiff1d(np.arange(len(R)), group)
    df = distinctive_salient_terms(R, presence, group, others, vocab, ignore, min_count=3, top_n=5)
    assert df["term"].iloc[0] == "gem"
    assert "the" not in df["term"].head(3).tolist()
    assert (df["distinctiveness"] > 0).all()
    np.testing.assert_allclose(df["distinctiveness"], df["mean_salience"] - df["mean_salience_rest"])
    # None as other rows means every row not in the class
    assert distinctive_salient_terms(R, presence, group, None, vocab, ignore, 3, 5).equals(df)
    mean = class_salient_terms(R, presence, group, others, vocab, ignore, 3, 5, ranking="mean")
    assert mean["term"].iloc[0] == "the"
    with pytest.raises(ValueError, match="ranking"):
        class_salient_terms(R, presence, group, others, vocab, ignore, ranking="sum")


def _log_odds_planted():
    """200 rows, 100 per class. Class 1 only: "gem" in 40 rows, "wow" in 25, "nice" in 10. Both classes: "film"
    in 30 rows of each. Each row also holds one filler term so both classes have the same total count."""
    vocab = ["[SEP]", "gem", "wow", "nice", "film", "filler"]
    ignore = np.array([True, False, False, False, False, False])
    y = np.repeat([0, 1], 100)
    P = np.zeros((200, len(vocab)))
    P[:, 0] = 1
    cls1 = np.flatnonzero(y == 1)
    cls0 = np.flatnonzero(y == 0)
    P[cls1[:40], 1] = 1
    P[cls1[40:65], 2] = 1
    P[cls1[65:75], 3] = 1
    P[cls1[:30], 4] = 1
    P[cls0[:30], 4] = 1
    # balance the class totals with the filler: class 1 holds 40+25+10+30 = 105 counts, class 0 30
    P[cls0[:75], 5] = 1
    return sp.csr_matrix(P), y, vocab, ignore


def test_log_odds_no_ties_and_frequency_order():
    P, y, vocab, ignore = _log_odds_planted()
    df = log_odds_terms(P, y, 1, vocab, ignore, min_count=1, top_n=10)
    top = df["term"].tolist()[:3]
    assert top == ["gem", "wow", "nice"]
    z = df.set_index("term")["z"]
    assert z["gem"] > z["wow"] > z["nice"] > 0
    # PMI ties all three class-only terms: the reason for log-odds
    pmi = pmi_terms(P, y, 1, vocab, ignore, min_count=1).set_index("term")["pmi"]
    assert pmi["gem"] == pmi["wow"] == pmi["nice"]
    assert abs(z["film"]) < 1e-9
    assert set(df.columns) == {"term", "token_id", "z", "delta", "count", "class_count"}
    assert df.set_index("term").loc["gem", "class_count"] == 40
    assert df.set_index("term").loc["film", "count"] == 60
    assert "[SEP]" not in df["term"].tolist() and "filler" not in df["term"].tolist()


def test_log_odds_known_value_with_uniform_counts():
    # two terms, one class each, same counts: z of one is minus z of the other, by symmetry
    P = sp.csr_matrix(np.array([[1, 0]] * 10 + [[0, 1]] * 10, dtype=np.float32))
    y = np.repeat([1, 0], 10)
    df = log_odds_terms(P, y, 1, ["a", "b"], np.zeros(2, dtype=bool), min_count=1, prior=2.0)
    # alpha_w = 1, n_i = n_j = 10, a0 = 2: delta = log(11/1) - log(1/11) = 2 log 11; var = 1/11 + 1
    assert df["term"].tolist() == ["a"]
    assert df["delta"].iloc[0] == pytest.approx(2 * np.log(11))
    assert df["z"].iloc[0] == pytest.approx(2 * np.log(11) / np.sqrt(1 / 11 + 1))
    pmi = class_association_terms(P, y, 1, ["a", "b"], np.zeros(2, dtype=bool), 1, ranking="pmi")
    assert pmi["term"].tolist() == ["a"]
    assert log_odds_terms(P, y, 7, ["a", "b"], np.zeros(2, dtype=bool), min_count=1).empty


# ---------------------------------------------------------------- cluster rows

NAMES = ["negative", "positive"]


def _rows(labels, preds, probs=None) -> pd.DataFrame:
    frame = pd.DataFrame({"label": labels, "pred": preds})
    frame["correct"] = frame["label"] == frame["pred"]
    if probs is not None:
        frame["prob_0"] = 1 - np.asarray(probs)
        frame["prob_1"] = np.asarray(probs)
    return frame


def test_cluster_rows_class_counts_recall_and_ties():
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    labels = [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    preds = [0, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    R = np.eye(10, 4)[np.arange(10) % 4] + 0.1
    summary = cluster_summary(clusters, _rows(labels, preds), R, list("abcd"), np.zeros(4, dtype=bool), NAMES,
                              n_terms=2).set_index("cluster")
    assert summary.loc[0, "label_counts"] == (2, 2)
    assert summary.loc[0, "majority_label"] == "tie: negative / positive"
    assert summary.loc[0, "majority_pred"] == "positive"
    assert summary.loc[0, "labels_text"] == "negative 2 · positive 2"
    assert summary.loc[1, "pred_counts"] == (2, 1)
    assert summary.loc[2, "labels_text"] == "positive 3"
    # 5 negatives: 2 in cluster 0, 3 in cluster 1; 5 positives: 2 in cluster 0, 3 in cluster 2
    assert summary.loc[0, "recall"] == pytest.approx((2 / 5, 2 / 5))
    assert summary.loc[1, "recall"] == pytest.approx((3 / 5, 0.0))
    recall = np.array(summary["recall"].tolist())
    np.testing.assert_allclose(recall.sum(axis=0), [1.0, 1.0])
    assert summary.loc[0, "recall_text"] == "negative 40% · positive 40%"
    assert np.isnan(summary.loc[0, "confidence"]) and not summary["shortcut"].any()


def test_majority_text():
    assert majority_text([3, 1], NAMES) == "negative"
    assert majority_text([2, 2, 2], NAMES + ["neutral"]) == "tie: negative / positive / neutral"
    assert majority_text([0, 0], NAMES) == "—"


def _planted_shortcut(seed: int = 0):
    """200 rows over 40 terms with random salience; rows 0-19 (10%) are the planted cluster: nearly all their
    salience is on "CLASS_1" and "COMMON", and the model is sure of them."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(38)] + ["CLASS_1", "COMMON"]
    M = rng.uniform(0, 1, size=(200, 40))
    M[:20] = rng.uniform(0, 0.02, size=(20, 40))
    M[:20, 38] = 1.0
    M[:20, 39] = 0.9
    probs = rng.uniform(0.5, 0.8, 200)
    probs[:20] = 0.99
    clusters = np.r_[np.zeros(20, int), rng.integers(1, 5, 180)]
    labels = rng.integers(0, 2, 200)
    return _normalise(M), vocab, clusters, _rows(labels, labels, probs)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix])
def test_shortcut_flag_on_planted_cluster(to_matrix):
    R, vocab, clusters, rows = _planted_shortcut()
    summary = cluster_summary(clusters, rows, to_matrix(R), vocab, np.zeros(40, dtype=bool), NAMES)
    planted = summary.set_index("cluster").loc[0]
    assert planted["shortcut"]
    assert "10.0%" in planted["flag_reason"] and "0.99" in planted["flag_reason"]
    assert "CLASS_1" in planted["flag_reason"]
    assert [t for t, _ in planted["terms"][:2]] == ["CLASS_1", "COMMON"]
    others = summary[summary["cluster"] != 0]
    assert not others["shortcut"].any() and (others["flag_reason"] == "").all()


def test_no_shortcut_flag_on_a_random_cluster_of_a_random_matrix():
    rng = np.random.default_rng(1)
    R = _normalise(rng.uniform(0, 1, size=(300, 50)))
    clusters = rng.integers(0, 10, 300)   # random clusters of about 10% each
    labels = rng.integers(0, 2, 300)
    rows = _rows(labels, labels, np.full(300, 0.99))  # confident and small: only concentration is missing
    summary = cluster_summary(clusters, rows, R, [f"w{i}" for i in range(50)], np.zeros(50, dtype=bool), NAMES)
    assert (summary["size_pct"] < 25).all() and (summary["confidence"] >= 0.9).all()
    assert not summary["shortcut"].any()
    assert (summary["top_share"] < 0.5).all()


def test_cluster_summary_rankings_share_weights_with_terms_column():
    R, vocab, ignore, group = _planted_salience()
    clusters = np.zeros(len(R), dtype=int)
    clusters[group] = 1
    rows = _rows(np.zeros(len(R), int), np.zeros(len(R), int))
    distinct = cluster_summary(clusters, rows, R, vocab, ignore, NAMES).set_index("cluster")
    mean = cluster_summary(clusters, rows, R, vocab, ignore, NAMES, ranking="mean").set_index("cluster")
    assert distinct.loc[1, "terms"][0][0] == "gem"
    assert distinct.loc[1, "top_terms"].split(", ")[0] == "gem"
    assert mean.loc[1, "terms"][0][0] == "the"
    assert "the" not in [t for t, _ in distinct.loc[1, "terms"][:3]]
    with pytest.raises(ValueError, match="ranking"):
        cluster_summary(clusters, rows, R, vocab, ignore, NAMES, ranking="tfidf")

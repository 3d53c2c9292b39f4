"""Dataset warnings (core/dataset_warnings.py): known answers on hand-built arrays and on a run with planted
duplicates, flipped labels and length outliers."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from core import dataset_warnings as dw
from core.precompute import PrecomputeSettings, precompute
from core.store import open_run
from tests.conftest import cache_at

# ---------------------------------------------------------------- text


def test_normalised_text_and_similarity():
    assert dw.normalise_text("  The CAT and\tthe dog! ") == "the cat and the dog"
    assert dw.normalise_text("ﬁlm_noir") == "film noir"  # NFKC ligature, underscore as a separator
    assert dw.text_similarity("The cat and the dog!", "the cat and the dog") == 1.0
    assert dw.text_similarity("abcd", "abce") == pytest.approx(0.75)  # 2 * 3 matching / 8 characters
    assert dw.text_similarity("good great fun film", "fun great good film") < 0.9  # same words, other order


# ---------------------------------------------------------------- class imbalance


def test_class_imbalance_by_hand():
    labels = [0] * 8 + [1] * 2 + [0, 1, 1, 0] + [0, 0]
    splits = ["train"] * 10 + ["test"] * 4 + ["dev"] * 2
    table = dw.class_imbalance(labels, splits, ["neg", "pos"], ratio=3.0).set_index("split")
    assert table.loc["train", "counts"] == {0: 8, 1: 2}
    assert table.loc["train", "ratio"] == 4.0 and table.loc["train", "imbalanced"]
    assert table.loc["train", "minority"] == [1]
    assert table.loc["test", "ratio"] == 1.0 and not table.loc["test", "imbalanced"]
    assert table.loc["dev", "ratio"] == np.inf and table.loc["dev", "minority"] == [1]  # a class missing
    # a class no split has is not held against any split (a 3-label model on 2-class data)
    assert dw.class_imbalance([0, 1], ["a", "a"], ["x", "y", "z"])["imbalanced"].tolist() == [False]


# ---------------------------------------------------------------- near-duplicates


def test_near_duplicates_need_text_confirmation():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8)).astype(np.float32)
    texts = ["the cat and the dog", "good great fun film", "a very boring movie", "hate the plot",
             "The cat and the dog!", "fun great good film"]
    vectors[4] = vectors[0] * 2          # same direction, same text once normalised: a duplicate
    vectors[5] = vectors[1]              # same vector, same words in another order: not a duplicate
    pairs = dw.near_duplicates(vectors, texts, query_rows=[4, 5], pool_rows=[0, 1, 2, 3])
    assert pairs[["row", "duplicate_of"]].values.tolist() == [[4, 0]]
    assert pairs.loc[0, "cosine"] == pytest.approx(1.0, abs=1e-5) and pairs.loc[0, "same_text"]
    # a near-duplicate by characters, at a cosine above the threshold
    texts[5] = "good great fun films"
    pairs = dw.near_duplicates(vectors, texts, [4, 5], [0, 1, 2, 3]).set_index("row")
    assert pairs.loc[5, "duplicate_of"] == 1 and not pairs.loc[5, "same_text"]
    assert pairs.loc[5, "text_similarity"] == pytest.approx(2 * 19 / 39)
    # the same text is paired even when its vector is far away (and the threshold would miss it)
    vectors[4] = -vectors[0]
    pairs = dw.near_duplicates(vectors, texts, [4], [0, 1, 2, 3], min_cosine=0.99)
    assert pairs[["row", "duplicate_of"]].values.tolist() == [[4, 0]]


def test_nearest_is_exact_below_the_threshold_and_close_above():
    rng = np.random.default_rng(1)
    pool, queries = rng.normal(size=(400, 16)), rng.normal(size=(20, 16))
    exact_scores, exact = dw.nearest(pool, queries, 3)
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    brute = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, axis=1)[:, :3]
    assert (exact == brute).all()
    _, approx = dw.nearest(pool, queries, 3, approximate_above=100)  # IVF, 20 lists, 8 probed
    assert (approx[:, 0] == exact[:, 0]).mean() >= 0.7


# ---------------------------------------------------------------- label noise


def test_label_noise_finds_flipped_labels_in_hand_built_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:2] * 10
    vectors = np.vstack([centres[0] + rng.normal(scale=0.3, size=(8, 4)),
                         centres[1] + rng.normal(scale=0.3, size=(8, 4))])
    labels = np.array([0] * 8 + [1] * 8)
    labels[[2, 11]] = [1, 0]                        # two flipped training labels
    query = np.arange(16)
    found = dw.label_noise(vectors, labels, query, pool_rows=np.arange(16), k=5, min_share=0.7)
    assert sorted(found["row"]) == [2, 11]
    first = found.set_index("row").loc[2]
    assert first["label"] == 1 and first["neighbour_label"] == 0 and first["share"] == 1.0
    # a test example (not in the pool) whose neighbours disagree: the whole vote counts, itself excluded from none
    vectors = np.vstack([vectors, centres[1]])
    labels = np.append(labels, 0)
    found = dw.label_noise(vectors, labels, [16], np.arange(16), k=4)
    assert found["row"].tolist() == [16] and found.loc[0, "neighbour_label"] == 1


def test_label_noise_share_threshold_and_tiny_pool():
    vectors = np.array([[1, 0], [1, 0.1], [1, -0.1], [1, 0.2], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 1, 0, 0])
    # row 0's 3 nearest: rows 1, 2 (label 1), 3 (label 0): 2/3 carry another label
    assert dw.label_noise(vectors, labels, [0], np.arange(5), k=3, min_share=0.7).empty
    found = dw.label_noise(vectors, labels, [0], np.arange(5), k=3, min_share=0.6)
    assert found.loc[0, "share"] == pytest.approx(2 / 3) and found.loc[0, "neighbour_label"] == 1
    assert dw.label_noise(vectors, labels, [0], [0], k=3).empty  # no neighbour besides itself


# ---------------------------------------------------------------- lengths


def test_length_outliers_by_hand():
    n_tokens = np.array([10, 11, 12, 12, 13, 14, 40, 64, 3])
    content = np.array([8, 9, 10, 10, 11, 12, 38, 62, 1])
    truncated = n_tokens == 64
    found = dw.length_outliers(n_tokens, content, truncated, iqr_factor=3.0, short_max_content_tokens=1)
    # quartiles of the 9 counts: Q1 11, Q3 14, IQR 3: fence 14 + 9 = 23
    assert found["quartiles"] == [11.0, 12.0, 14.0] and found["fence"] == 23.0
    assert found["truncated"].tolist() == [7]
    assert found["long"].tolist() == [6]  # the truncated one is reported as truncated, not again as long
    assert found["short"].tolist() == [8]


# ---------------------------------------------------------------- salience shift


def test_salience_shift_by_hand():
    vocab = ["the", "cat", "dog", "[SEP]"]
    ignore = np.array([False, False, False, True])
    R_train = sp.csr_matrix(np.array([[0.5, 0.0, 0.5, 0.9]] * 4))
    R_test = sp.csr_matrix(np.array([[0.5, 0.8, 0.0, 0.1]] * 4))
    presence_train = sp.csr_matrix((R_train.toarray() > 0).astype(np.float32))
    presence_test = sp.csr_matrix((R_test.toarray() > 0).astype(np.float32))
    table = dw.salience_shift(R_train, R_test, presence_train, presence_test, vocab, ignore, n=5)
    assert table[["term", "higher_in"]].values.tolist() == [["cat", "other"], ["dog", "train"]]
    assert table.set_index("term").loc["cat", "difference"] == pytest.approx(0.8)
    assert table.set_index("term").loc["dog", "difference"] == pytest.approx(-0.5)
    assert table["z"].tolist() == [np.inf, -np.inf]  # no variance inside either group
    # Welch z by hand: "cat" 0.8 in 3 of 4 test rows (mean .6, variance .48 - .36), absent from train
    R_test = sp.csr_matrix(np.array([[0.5, 0.8, 0.0, 0.1]] * 3 + [[0.5, 0.0, 0.0, 0.1]]))
    presence_test = sp.csr_matrix((R_test.toarray() > 0).astype(np.float32))
    table = dw.salience_shift(R_train, R_test, presence_train, presence_test, vocab, ignore, n=5).set_index("term")
    assert table.loc["cat", "z"] == pytest.approx(0.6 / np.sqrt(0.12 / 4))


# ---------------------------------------------------------------- a planted run

POSITIVE = ["good", "great", "fun", "film"]
NEGATIVE = ["bad", "awful", "boring", "plot"]


def _planted_rows() -> list[dict]:
    """Train: two word groups of 7 permutations each (order differs, B2 is the same), one label in each flipped;
    a truncated and a near-empty example. Test: two duplicates of training texts (case and punctuation differ)
    and a permutation of the positive group that must not count as a duplicate."""
    rows = []
    for words, label in ((POSITIVE, 1), (NEGATIVE, 0)):
        for i, perm in enumerate(list(itertools.permutations(words))[:7]):
            rows.append({"text": " ".join(perm), "label": 1 - label if i == 3 else label, "split": "train"})
    rows += [{"text": "the cat and the dog", "label": 1, "split": "train"},
             {"text": "a very boring movie", "label": 0, "split": "train"},
             {"text": "the movie was good and fun and the plot is very good and the acting was great fun",
              "label": 1, "split": "train"},
             {"text": "great !", "label": 1, "split": "train"},
             {"text": "The cat and the dog!", "label": 1, "split": "test"},
             {"text": "a very boring movie .", "label": 0, "split": "test"},
             {"text": " ".join(list(itertools.permutations(POSITIVE))[20]), "label": 1, "split": "test"},
             {"text": "it was not bad", "label": 1, "split": "test"},
             {"text": "the film is not good", "label": 0, "split": "test"}]
    return rows


@pytest.fixture(scope="module")
def planted_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    pd.DataFrame(_planted_rows()).to_csv(folder / "planted.csv", index=False)
    with cache_at(folder / "cache"):
        result = precompute(tiny_model_dir, folder / "planted.csv",
                            PrecomputeSettings(split_col="split", max_length=16, batch_size=8, chunk_size=32,
                                               methods=("grad_l2",)), progress=False)
    return open_run(result.run_path)


def test_planted_run_warnings(planted_run):
    run = planted_run
    texts = run.examples["text"].tolist()
    row = {t: i for i, t in enumerate(texts)}
    # the random tiny model's [CLS] need not group the word groups; B2 is the same for every permutation
    report = dw.compute_warnings(run, dw.WarningSettings(noise_representation="b2", noise_neighbours=5))
    checks = {c["check"]: c for c in report["checks"]}
    assert list(checks) == list(dw.CHECKS)

    leakage = checks["leakage"]
    assert leakage["status"] == "warn"
    (finding,) = leakage["findings"]
    pairs = {(p["row"], p["duplicate_of"]) for p in finding["pairs"]}
    assert pairs == {(row["The cat and the dog!"], row["the cat and the dog"]),
                     (row["a very boring movie ."], row["a very boring movie"])}
    assert all(p["same_text"] for p in finding["pairs"])
    assert finding["rows"][:2] in ([row["The cat and the dog!"], row["the cat and the dog"]],
                                   [row["a very boring movie ."], row["a very boring movie"]])

    flipped = {i for i, t in enumerate(texts) if run.examples["split"].iloc[i] == "train"
               and ((set(t.split()) == set(POSITIVE) and run.examples["label"].iloc[i] == 0)
                    or (set(t.split()) == set(NEGATIVE) and run.examples["label"].iloc[i] == 1))}
    assert len(flipped) == 2
    (noise,) = checks["noise"]["findings"]
    assert flipped <= set(noise["rows"])
    assert set(noise["rows"][:2]) == flipped  # share 1.0: first
    group = {i for i, t in enumerate(texts) if set(t.split()) in (set(POSITIVE), set(NEGATIVE))}
    assert not (group - flipped) & set(noise["rows"])

    lengths = {f["id"]: f for f in checks["length"]["findings"]}
    long_row = next(i for i, t in enumerate(texts) if t.startswith("the movie was good and fun"))
    assert lengths["length-truncated"]["rows"] == [long_row]
    assert lengths["length-short"]["rows"] == [row["great !"]]
    assert checks["imbalance"]["status"] in ("ok", "warn") and len(checks["imbalance"]["table"]) == 2
    assert checks["shift"]["status"] in ("info", "ok")
    for finding in checks["shift"]["findings"]:
        assert all(finding["term"] in dw.normalise_text(texts[r]).split() for r in finding["rows"])


def test_warnings_are_stored_once_and_keyed_by_version(planted_run, monkeypatch):
    run = planted_run
    settings = dw.WarningSettings(noise_representation="b2", noise_neighbours=5)
    first = dw.load_or_compute(run, settings)
    path = dw.warnings_file(run, settings)
    assert path.exists() and path.parent == run.analysis_dir() and f"v{dw.WARNINGS_VERSION}" in path.name
    assert json.loads(path.read_text()) == first

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although stored")

    monkeypatch.setattr(dw, "compute_warnings", fail)
    assert dw.load_or_compute(run, settings) == first
    assert dw.find(first, "length-short")["rows"] == [run.examples["text"].tolist().index("great !")]
    assert dw.find(first, "nope") is None
    monkeypatch.undo()
    # a new version (or other settings) names another file and computes anew
    monkeypatch.setattr(dw, "WARNINGS_VERSION", dw.WARNINGS_VERSION + 1)
    assert dw.warnings_file(run, settings) != path
    assert dw.load_or_compute(run, settings)["version"] == dw.WARNINGS_VERSION
    assert dw.warnings_file(run, dw.WarningSettings()) != path
    # a damaged file is recomputed, not trusted
    path.write_text("{broken")
    monkeypatch.undo()
    assert dw.load_or_compute(run, settings)["checks"] == first["checks"]

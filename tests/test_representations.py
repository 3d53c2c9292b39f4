"""Known-answer tests for the fixed-length representations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from core.representations import (REPRESENTATIONS, RepresentationKey, average_embedding, build_representation,
                                  pmi_bow, pmi_table,
                                  presence_matrix, vocab_topk)
from core.store import open_run


def test_top2_by_hand():
    # LIT-style: top-2 of .1, .2, .3 gives [0, .2, .3] / sqrt(.13)
    m = vocab_topk(np.array([0, 1, 2]), np.array([0, 3]), np.array([.1, .2, .3]), vocab_size=4, k=2)
    np.testing.assert_allclose(m.toarray()[0], np.array([0, .2, .3, 0]) / np.sqrt(.13), rtol=1e-6)


def test_repeated_token_takes_max_abs_and_ignored_ids_are_dropped():
    token_ids = np.array([5, 1, 5, 2, 3])
    scores = np.array([.1, 9.0, -.4, .2, .3])
    ignore = np.zeros(6, dtype=bool)
    ignore[1] = True
    m = vocab_topk(token_ids, np.array([0, 5]), scores, vocab_size=6, k=None, ignore_mask=ignore).toarray()[0]
    expected = np.array([0, 0, .2, .3, 0, .4])
    np.testing.assert_allclose(m, expected / np.linalg.norm(expected), rtol=1e-6)


def test_ties_at_k_break_by_lower_token_id():
    m = vocab_topk(np.array([4, 2, 3]), np.array([0, 3]), np.array([.5, .5, .5]), vocab_size=5, k=2).toarray()[0]
    assert np.nonzero(m)[0].tolist() == [2, 3]


def test_pmi_by_hand():
    # docs: 0:{a}, 1:{a,b}, 2:{b}, 3:{b}; classes 0,0,1,1
    presence = presence_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 3, 4, 5]), vocab_size=3)
    classes = np.array([0, 0, 1, 1])
    pmi = pmi_table(presence, classes, 2)
    assert pmi[0, 0] == pytest.approx(np.log(1.0 / 0.5))        # p(c0|a)=1, p(c0)=.5
    assert pmi[1, 1] == pytest.approx(np.log((2 / 3) / 0.5))    # p(c1|b)=2/3
    assert pmi[1, 0] == pytest.approx(np.log((1 / 3) / 0.5))
    assert pmi[2].tolist() == [0.0, 0.0]                        # never seen
    bow = pmi_bow(presence, classes, 2).toarray()
    # doc 1 (class 0): a has PMI log 2, b has negative PMI -> clipped to 0
    np.testing.assert_allclose(bow[1], [1.0, 0.0, 0.0])


def test_average_embedding_by_hand():
    emb = np.array([[1, 0], [0, 1], [3, 3]], dtype=np.float32)
    ignore = np.array([False, False, True])
    out = average_embedding(np.array([0, 1, 1, 2]), np.array([0, 4]), emb, ignore)
    expected = np.array([1, 2]) / 3
    np.testing.assert_allclose(out[0], expected / np.linalg.norm(expected), rtol=1e-6)


@pytest.fixture(scope="module")
def run(tiny_run_path):
    return open_run(tiny_run_path)


@pytest.mark.parametrize("method", ["grad_l2", "integrated_gradients"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_s1_has_k_entries_each_the_max_token_saliency(run, method, k):
    s1 = run.representation(RepresentationKey("s1", method, k))
    scores = np.abs(run.scores(method))
    for row in range(s1.shape[0]):
        lo, hi = run.row_ptr[row], run.row_ptr[row + 1]
        ids, vals = run.token_ids[lo:hi], scores[lo:hi]
        keep = ~run.ignore_mask[ids]
        best = {}
        for t, v in zip(ids[keep], vals[keep]):
            best[int(t)] = max(best.get(int(t), 0.0), float(v))
        expected_nnz = min(k, sum(v > 0 for v in best.values()))
        r = s1.getrow(row)
        assert r.nnz == expected_nnz
        top = sorted(best.values(), reverse=True)[:k]
        norm = np.linalg.norm(top)
        for col, value in zip(r.indices, r.data):
            assert value * norm == pytest.approx(best[int(col)], rel=1e-5)


def test_s2_is_s1_times_embeddings(run):
    s1 = run.representation(RepresentationKey("s1", "grad_l2", 5))
    s2 = run.representation(RepresentationKey("s2", "grad_l2", 5))
    raw = s1 @ run.embedding_matrix()
    np.testing.assert_allclose(s2, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("name", list(REPRESENTATIONS))
def test_rows_are_unit_norm(run, name):
    matrix = run.representation(RepresentationKey(name, "grad_l2", 5))
    dense = matrix.toarray() if sp.issparse(matrix) else matrix
    assert dense.shape[0] == len(run.examples)
    norms = np.linalg.norm(dense, axis=1)
    if name == "b1" and run.examples["pred"].nunique() == 1:
        # one predicted class: every PMI(token; class) is 0, so the PMI rows carry no signal at all
        np.testing.assert_allclose(norms, 0.0)
    else:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_include_special_keeps_cls_and_sep(run):
    plain = run.representation(RepresentationKey("s1", "grad_l2", None))
    special = run.representation(RepresentationKey("s1", "grad_l2", None, include_special=True))
    ignored = np.flatnonzero(run.ignore_mask)
    assert plain[:, ignored].nnz == 0
    assert special[:, ignored].nnz > 0


def test_representation_is_cached_on_disk_and_keyed_by_parameters(run):
    run.representation(RepresentationKey("s1", "grad_l2", 2))
    run.representation(RepresentationKey("s1", "grad_l2", 3))
    names = {p.name for p in (run.path / "representations").iterdir()}
    assert {"s1-grad_l2-k2.npz", "s1-grad_l2-k3.npz"} <= names


@pytest.mark.parametrize("key", [RepresentationKey("s1", "grad_l2", None), RepresentationKey("s1", "grad_l2", 2),
                                 RepresentationKey("s2", "grad_l2", 3), RepresentationKey("b1"),
                                 RepresentationKey("b2"), RepresentationKey("b3"),
                                 RepresentationKey("s1", "grad_l2", 2, weighting="idf"),
                                 RepresentationKey("s1", "grad_l2", None, unit="word_sum", weighting="idf")])
def test_building_in_row_blocks_gives_the_whole_matrix(run, key):
    inputs = run if key.unit == "piece" else run.word_inputs(key.unit)  # idf is counted over the run in every block
    whole = build_representation(inputs, key, block=10_000)
    blocks = build_representation(inputs, key, block=3)  # 16 examples: blocks of 3, 3, 3, 3, 3, 1
    if sp.issparse(whole):
        assert sp.issparse(blocks) and blocks.shape == whole.shape
        np.testing.assert_allclose(blocks.toarray(), whole.toarray(), rtol=1e-6, atol=1e-7)
    else:
        assert blocks.dtype == np.float32
        np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-7)


def test_presence_matrix_matches_a_coo_construction_on_long_and_short_rows():
    rng = np.random.default_rng(2)
    lengths = np.concatenate([rng.integers(0, 40, 300), [0, 1, 500, 33, 32]])  # empty, short and sorted-fallback rows
    row_ptr = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, 50, row_ptr[-1]).astype(np.int32)  # many repeats within a row
    got = presence_matrix(ids, row_ptr, vocab_size=50)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    expected = sp.csr_matrix((np.ones(len(ids)), (rows, ids)), shape=(len(lengths), 50))
    expected.data[:] = 1.0
    assert got.dtype == np.float32 and got.has_sorted_indices
    assert (got != expected).nnz == 0 and got.nnz == expected.nnz
    for r in range(len(lengths)):  # unique and sorted within each row
        row = got.indices[got.indptr[r]:got.indptr[r + 1]]
        assert (np.diff(row) > 0).all()


def test_presence_matrix_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="ids must lie"):
        presence_matrix(np.array([0, 3]), np.array([0, 2]), vocab_size=3)
    with pytest.raises(ValueError, match="row_ptr"):
        presence_matrix(np.array([0, 1]), np.array([0, 3]), vocab_size=3)

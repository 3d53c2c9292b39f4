"""LAFA (core.lafa): known answers on planted arrays, the derived file in a run, the CLI step, checks and pages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import faithfulness as fa
from core import lafa
from core.precompute import PrecomputeSettings, _parse_args, precompute
from core.representations import RepresentationKey
from core.saliency import ATTRIBUTION_METHODS, get_method
from core.store import open_run

# ---------------------------------------------------------------- planted arrays

# vocabulary: 0 [CLS], 1 [SEP], 2 "good", 3 "plot" (the planted token), 4 "the", 5 "story" (close to "plot"), 6 other
EMB = np.eye(7, dtype=np.float32)
EMB[5] = 0.8 * EMB[3] + 0.6 * EMB[6]  # cos("story", "plot") = 0.8; cos("story", other) = 0.6 < threshold 0.7
PARAMS = lafa.LafaParams(k=3, quantile=0.5, kernel_threshold=0.7, lam=1.0)


def planted():
    """Example A (row 0) gives "plot" a low score; its 3 neighbours (rows 1-3, same class, near-identical [CLS])
    all rank "plot" first. Rows 4-11 are far away, in the other class; row 12 is alone in class 0's far corner."""
    rng = np.random.default_rng(0)
    seqs = [([0, 2, 3, 4, 5, 1], [0.2, 0.5, 0.1, 0.4, 0.05, 0.2])]
    seqs += [([0, 3, 2, 4, 1], [0.1, 1.0, 0.1, 0.1, 0.1])] * 3
    seqs += [([0, int(t), 1], list(rng.random(3))) for t in rng.integers(2, 7, 8)]
    seqs += [([0, 3, 1], [0.1, 0.9, 0.1])]
    ids = np.concatenate([np.asarray(s, np.int32) for s, _ in seqs])
    scores = np.concatenate([np.asarray(v, np.float32) for _, v in seqs])
    row_ptr = np.concatenate([[0], np.cumsum([len(s) for s, _ in seqs])]).astype(np.int64)
    u = np.zeros(16, np.float32)
    u[0] = 1
    cls = np.stack([u + 0.01 * rng.standard_normal(16) for _ in range(4)]
                   + [rng.standard_normal(16) for _ in range(8)] + [-u])
    preds = np.array([0, 0, 0, 0] + [1] * 8 + [0])
    return ids, row_ptr, scores, cls.astype(np.float32), preds


def brute_force(ids, row_ptr, scores, neighbours, emb, threshold, lam):
    """LAFA by the definition, one example and one neighbour at a time."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = []
    for r in range(len(row_ptr) - 1):
        a, s = ids[row_ptr[r]:row_ptr[r + 1]], scores[row_ptr[r]:row_ptr[r + 1]].astype(np.float64)
        extra = np.zeros(len(a))
        nb = neighbours[r][neighbours[r] >= 0]
        for y in nb:
            b, sy = ids[row_ptr[y]:row_ptr[y + 1]], scores[row_ptr[y]:row_ptr[y + 1]]
            cos = unit[a] @ unit[b].T
            kappa = np.where(cos >= threshold, cos, 0.0)
            kappa[a[:, None] == b[None, :]] = 1.0
            extra += kappa @ sy / len(nb)
        out.append(s + lam * extra)
    return np.concatenate(out)


def test_neighbours_agree_on_a_token_so_lafa_raises_it():
    ids, row_ptr, scores, cls, preds = planted()
    result = lafa.lafa_scores(ids, row_ptr, scores, cls, preds, EMB, PARAMS)
    assert sorted(result.graph.neighbours[0].tolist()) == [1, 2, 3]
    a = result.scores[row_ptr[0]:row_ptr[1]]
    base = scores[row_ptr[0]:row_ptr[1]]
    content = slice(1, 5)  # good, plot, the, story
    assert ids[row_ptr[0] + 1 + np.argmax(base[content])] == 2  # "good" leads on the base method
    assert ids[row_ptr[0] + 1 + np.argmax(a[content])] == 3  # "plot" leads after aggregation
    np.testing.assert_allclose(a[2], 0.1 + 1.0, rtol=1e-6)  # plot: + the mean of its neighbours' 1.0
    np.testing.assert_allclose(a[1], 0.5 + 0.1, rtol=1e-6)  # good: + 0.1
    np.testing.assert_allclose(a[4], 0.05 + 0.8 * 1.0, rtol=1e-6)  # story: kernel 0.8 times plot's 1.0
    np.testing.assert_allclose(result.scores, brute_force(ids, row_ptr, scores, result.graph.neighbours, EMB,
                                                          PARAMS.kernel_threshold, PARAMS.lam), rtol=1e-5)


def test_lambda_zero_is_the_base_method():
    ids, row_ptr, scores, cls, preds = planted()
    result = lafa.lafa_scores(ids, row_ptr, scores, cls, preds, EMB, lafa.LafaParams(k=3, quantile=0.5, lam=0.0))
    np.testing.assert_array_equal(result.scores, scores)


def test_neighbours_stay_in_the_predicted_class_and_within_the_cutoff():
    ids, row_ptr, scores, cls, preds = planted()
    graph = lafa.neighbour_graph(cls, preds, PARAMS)
    for r, nb in enumerate(graph.neighbours):
        kept = nb[nb >= 0]
        assert r not in kept and (preds[kept] == preds[r]).all()
        assert (graph.distances[r][nb >= 0] <= graph.cutoff).all()
    # row 12 is class 0 but opposite to every other class-0 example: beyond the cut-off, it borrows from nobody
    assert (graph.neighbours[12] == -1).all()
    out = lafa.lafa_scores(ids, row_ptr, scores, cls, preds, EMB, PARAMS).scores
    np.testing.assert_array_equal(out[row_ptr[12]:row_ptr[13]], scores[row_ptr[12]:row_ptr[13]])
    # without the class restriction the far examples can be neighbours
    anyclass = lafa.neighbour_graph(cls, preds, lafa.LafaParams(k=3, quantile=1.0, same_class=False))
    assert (preds[anyclass.neighbours[12]] == 1).any()


def test_aggregate_matches_the_definition_on_random_data_and_on_a_subset_of_rows():
    rng = np.random.default_rng(1)
    n, vocab = 40, 30
    lengths = rng.integers(1, 9, n)
    row_ptr = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, vocab, row_ptr[-1]).astype(np.int32)
    scores = rng.random(row_ptr[-1]).astype(np.float32)
    emb = rng.standard_normal((vocab, 6)).astype(np.float32)
    params = lafa.LafaParams(k=4, quantile=0.3, kernel_threshold=0.5, lam=0.7)
    result = lafa.lafa_scores(ids, row_ptr, scores, rng.standard_normal((n, 5)), rng.integers(0, 2, n), emb, params)
    expected = brute_force(ids, row_ptr, scores, result.graph.neighbours, emb, 0.5, 0.7)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
    kernel = lafa.token_kernel(emb, ids, 0.5)
    rows = np.array([7, 3, 30])
    sub = lafa.aggregate(ids, row_ptr, scores, result.graph.neighbours, kernel, 0.7, rows=rows, block=2)
    np.testing.assert_allclose(sub, np.concatenate([expected[row_ptr[r]:row_ptr[r + 1]] for r in rows]), rtol=1e-5)


def test_params_are_checked():
    with pytest.raises(ValueError, match="k must be"):
        lafa.LafaParams(k=0)
    with pytest.raises(ValueError, match="quantile"):
        lafa.LafaParams(quantile=0)


# ---------------------------------------------------------------- the run API


@pytest.fixture
def run_copy(tiny_run_path, isolated_cache) -> Path:
    target = isolated_cache / "runs" / Path(tiny_run_path).name
    shutil.copytree(tiny_run_path, target)
    return target


def test_lafa_is_a_registered_derived_method():
    method = get_method("lafa")
    assert "lafa" in ATTRIBUTION_METHODS and method.derived and method.base == "grad_l2"
    with pytest.raises(ValueError, match="derived"):
        method.attribute(None, {}, None)


def test_run_derives_lafa_on_first_use_and_lists_it(run_copy):
    run = open_run(run_copy)
    assert "lafa" not in run.methods and run.can_derive("lafa")
    values = np.asarray(run.scores("lafa"))
    assert values.shape == (len(run.token_ids),) and values.dtype == np.float32
    expected = lafa.lafa_for_run(run).scores
    np.testing.assert_array_equal(values, expected)
    assert (values >= np.asarray(run.scores("grad_l2")) - 1e-6).all()  # grad_l2 is >= 0: LAFA only adds
    info = json.loads((run_copy / "derived" / "lafa.json").read_text())
    assert info["params"] == lafa.DEFAULT_PARAMS.as_dict() and info["tokens"] == len(run.token_ids)
    reopened = open_run(run_copy, verify=True)  # derived/ is outside the integrity check
    assert reopened.methods == [*reopened.stored_methods, "lafa"]
    assert "lafa" not in reopened.manifest["settings"]["methods"]
    np.testing.assert_array_equal(reopened.scores("lafa"), expected)
    matrix = reopened.representation(RepresentationKey("s1", "lafa", 5))
    assert matrix.shape[0] == reopened.n_examples
    assert reopened.tokens_of(0, "lafa")["score"].to_numpy().shape[0] == reopened.row_ptr[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "stale"])
def test_a_damaged_missing_or_stale_derived_file_is_rebuilt(run_copy, damage):
    run = open_run(run_copy)
    expected = np.asarray(run.scores("lafa")).copy()
    run.representation(RepresentationKey("s1", "lafa", 5))
    npy, meta = run_copy / "derived" / "lafa.npy", run_copy / "derived" / "lafa.json"
    if damage == "garbage":
        npy.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-8])
    elif damage == "missing":
        npy.unlink()
    else:
        info = json.loads(meta.read_text())
        meta.write_text(json.dumps({**info, "fingerprint": "0" * 64}))
    reopened = open_run(run_copy, verify=True)
    assert "lafa" in reopened.methods
    np.testing.assert_array_equal(reopened.scores("lafa"), expected)
    assert json.loads(meta.read_text())["fingerprint"] != "0" * 64
    if damage == "stale":  # what was built on the old scores goes with them
        assert not list((run_copy / "representations").glob("*-lafa-*"))
    assert open_run(run_copy).scores("lafa").shape == expected.shape


def test_read_only_run_keeps_lafa_in_memory(run_copy, monkeypatch):
    import core.store as store

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(store, "_save_matrix", refuse)
    run = open_run(run_copy)
    values = run.scores("lafa")
    assert len(values) == len(run.token_ids) and "lafa" in run.methods
    assert not (run_copy / "derived" / "lafa.npy").exists()


# ---------------------------------------------------------------- the precompute CLI step


def test_derived_methods_do_not_enter_the_fingerprint_and_bring_their_base():
    plain = PrecomputeSettings(methods=("grad_l2",))
    assert PrecomputeSettings(methods=("grad_l2", "lafa")).fingerprinted() == plain.fingerprinted()
    only = PrecomputeSettings(methods=("lafa",))
    assert only.stored_methods == ("grad_l2",) and only.derived_methods == ("lafa",)
    assert only.fingerprinted() == plain.fingerprinted()
    assert _parse_args(["--method", "grad_l2,lafa"]).methods == ("grad_l2", "lafa")


def test_precompute_with_lafa_reuses_the_run_and_derives_without_a_backward_pass(run_copy, tiny_model_dir,
                                                                                   tiny_data_csv):
    settings = PrecomputeSettings(split_col="split", max_length=16, batch_size=4, chunk_size=8, ig_steps=8,
                                  methods=("grad_l2", "grad_x_input", "integrated_gradients", "lafa"))
    result = precompute(tiny_model_dir, tiny_data_csv, settings, progress=False)
    assert result.reused and result.run_path == run_copy and result.derived == ("lafa",)
    run = open_run(run_copy)
    assert run.methods[-1] == "lafa"
    np.testing.assert_array_equal(np.load(run_copy / "derived" / "lafa.npy"), lafa.lafa_for_run(run).scores)


# ---------------------------------------------------------------- checks


def test_faithfulness_and_untrained_head_checks_run_on_lafa(run_copy):
    from core.models import load_classifier

    run = open_run(run_copy)
    loaded = load_classifier(run.manifest["model"]["path"])
    settings = fa.CheckSettings(sample_size=6, seed=0, methods=("grad_l2", "lafa"), batch_size=4)
    summary, _ = fa.run_faithfulness(run, settings, loaded)
    assert [m["method"] for m in summary["methods"]] == ["grad_l2", "lafa", fa.RANDOM]
    head, _ = fa.run_randomization(run, settings, None, loaded)
    assert {m["method"] for m in head["methods"]} == {"grad_l2", "lafa"}
    # recomputed under the same model from the sample and its neighbours, LAFA equals the stored one
    rows = fa.sample_rows(run, 6, 0)
    again = fa.derived_scores(run, loaded, rows, "lafa")
    for r, values in zip(rows, again):
        np.testing.assert_allclose(values, run.scores("lafa")[run.row_ptr[r]:run.row_ptr[r + 1]], rtol=1e-3,
                                   atol=1e-4)


def test_stability_iou_known_answer_and_on_a_run(run_copy):
    ids = np.array([0, 10, 11, 12, 13, 1])
    cand = np.array([False, True, True, True, True, False])
    assert fa.top_token_set(ids, np.array([9, .1, .9, .8, .2, 9]), cand, 0.5) == {11, 12}
    assert fa.iou({11, 12}, {12, 13}) == pytest.approx(1 / 3)
    run = open_run(run_copy)
    table = fa.stability(run, ["grad_l2", "lafa"], sample_size=None, k=3, fraction=0.3)
    assert table["method"].tolist() == ["grad_l2", "lafa", fa.RANDOM]
    assert ((table["iou_mean"] >= 0) & (table["iou_mean"] <= 1)).all()


# ---------------------------------------------------------------- pages


def test_pages_show_lafa_once_derived(run_copy):
    from tests.test_pages import no_exception, open_page

    open_run(run_copy).derive("lafa")
    at = open_page("examples", method="lafa")
    no_exception(at)
    assert at.selectbox(key="method").value == "lafa"
    assert "Saliency (lafa)" in "\n".join(str(m.value) for m in at.markdown)
    at = open_page("clusters", method="lafa")
    no_exception(at)

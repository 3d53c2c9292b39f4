"""Issue 15 (1M rows): the chunked scaled run, memory-mapped matrices, approximate neighbours, density maps."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.scaled_run import scale_run
from core.representations import RepresentationKey, default_key
from core.store import open_run
from core.words import build_word_index, vocabulary_is_uncased


def test_scaled_run_in_chunks_copies_rows_and_their_word_index(tiny_run_path, isolated_cache):
    source = open_run(tiny_run_path)
    n = 3 * source.n_examples + 5
    run = open_run(scale_run(source, n, isolated_cache, seed=3, chunk_rows=7), verify=True)
    rows = run.examples["source_row"].to_numpy()
    assert run.n_examples == n and np.array_equal(rows[:source.n_examples], np.arange(source.n_examples))
    # its own data: not the source's file, nor a draw of another size or seed (Compare pairs runs by it)
    from bench.scaled_run import scaled_data_digest

    digest = run.manifest["data"]["digest"]
    assert digest == scaled_data_digest(source.manifest["data"]["digest"], n, 3)
    assert digest != source.manifest["data"]["digest"] != scaled_data_digest(source.manifest["data"]["digest"], n, 4)
    assert (run.examples["text"].to_numpy() == source.examples["text"].to_numpy()[rows]).all()
    for i in (0, source.n_examples + 1, n - 1):  # tokens of a copy are its source row's tokens
        lo, hi = run.row_ptr[i], run.row_ptr[i + 1]
        slo, shi = source.row_ptr[rows[i]], source.row_ptr[rows[i] + 1]
        assert np.array_equal(run.token_ids[lo:hi], source.token_ids[slo:shi])
    method = source.stored_methods[0]
    first = slice(0, int(source.row_ptr[-1]))  # the first copy keeps its scores, later copies are noisy
    assert np.array_equal(run.scores(method)[first], source.scores(method))
    assert not np.array_equal(run.scores(method)[int(run.row_ptr[source.n_examples]):],
                              source.scores(method)[:len(run.scores(method)) - int(run.row_ptr[source.n_examples])])

    carried = run.word_index  # read from words/, written by scale_run from the source's index
    built = build_word_index(run.examples["text"].tolist(), run.token_ids, run.row_ptr,
                             run._token_array("char_starts"), run._token_array("char_ends"), run.vocab_size,
                             vocabulary_is_uncased(run.vocab, run.ignore_mask))
    assert carried.vocab == built.vocab  # the source rows come first, in order: same first occurrences
    for name in ("word_ids", "row_ptr", "token_index", "occ_ptr"):
        assert np.array_equal(getattr(carried, name), getattr(built, name)), name
    # the default representations are stored in the run, listed in its manifest like the precompute's
    for key in (default_key(method), RepresentationKey("s1", method, unit="word_sum")):
        assert any(rel.startswith(f"representations/{key.normalised().slug}") for rel in run.manifest["files"])


# ---------------------------------------------------------------- approximate neighbours (core.neighbours)


def planted(n: int = 4000, dim: int = 24, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Return `n` rows scattered around `centres` random directions (planted neighbourhoods)."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim)).astype(np.float32)
    rows = centre[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows.astype(np.float32)


def stored_matrix(tmp_path, matrix: np.ndarray):
    """Return (run folder, representation file, memory-mapped matrix) of `matrix` saved like a representation."""
    run_path = tmp_path / "run"
    (run_path / "representations").mkdir(parents=True)
    source = run_path / "representations" / "b3.npy"
    np.save(source, matrix)
    return run_path, source, np.load(source, mmap_mode="r")


def test_approximate_neighbours_recall_against_exact(tmp_path, monkeypatch):
    from core import neighbours
    from core.analysis import NeighbourIndex

    X = planted()
    run_path, source, mapped = stored_matrix(tmp_path, X)
    index = neighbours.neighbour_index(mapped, run_path, "b3", source, approximate_above=100)  # forced
    assert isinstance(index, neighbours.ApproximateIndex) and index.approximate
    assert index.params.n_probe < index.params.n_lists  # it does not simply scan every cell
    exact = NeighbourIndex(X)
    assert not exact.approximate
    queries = np.random.default_rng(1).choice(len(X), 60, replace=False)
    recalls = [neighbours.recall_at(index.search(int(q), 10), exact.search(int(q), 10)) for q in queries]
    assert np.mean(recalls) >= 0.95
    found, _ = index.search(int(queries[0]), 10)
    assert int(queries[0]) not in found.tolist() and len(found) == 10

    # a large candidate set goes through the IVF search with a bitmap selector, a small one is searched exactly
    mask = np.random.default_rng(2).random(len(X)) < 0.5
    monkeypatch.setattr(neighbours, "EXACT_CANDIDATES_MAX", 10)
    assert not index.searches_exactly(int(mask.sum()))
    recalls = []
    for q in queries[:30]:
        ids, scores = index.search(int(q), 10, candidates=mask)
        assert mask[ids].all() and np.all(np.diff(scores) <= 1e-6)
        recalls.append(neighbours.recall_at((ids, scores), exact.search(int(q), 10, candidates=mask)))
    assert np.mean(recalls) >= 0.95
    few = np.flatnonzero(mask)[:5]
    monkeypatch.setattr(neighbours, "EXACT_CANDIDATES_MAX", 2)  # 5 candidates, all found even through the IVF path
    ids, _ = index.search(int(queries[0]), 10, candidates=few)
    assert sorted(ids.tolist()) == sorted(set(few.tolist()) - {int(queries[0])})


def test_small_or_sparse_matrices_stay_exact(tmp_path):
    import scipy.sparse as sp

    from core import neighbours

    X = planted(300)
    run_path, source, mapped = stored_matrix(tmp_path, X)
    assert not neighbours.neighbour_index(mapped, run_path, "b3", source).approximate  # under the threshold
    sparse = sp.csr_matrix(np.where(X > 1.0, X, 0.0))
    assert not neighbours.neighbour_index(sparse, run_path, "s1", source, approximate_above=10).approximate
    assert not (run_path / "index").exists()


def test_stored_index_is_reused_and_a_stale_or_corrupt_one_rebuilt(tmp_path, monkeypatch):
    import json
    import os

    from core import neighbours

    X = planted(2000)
    run_path, source, mapped = stored_matrix(tmp_path, X)
    first, meta = neighbours.load_or_build_index(run_path, "b3", source, mapped)
    file, meta_file = neighbours.index_paths(run_path, "b3")
    assert file.is_file() and json.loads(meta_file.read_text())["fingerprint"] == meta["fingerprint"]
    assert meta["rows"] == 2000 and meta["params"]["n_lists"] == first.params.n_lists
    assert not list(file.parent.glob(".*.tmp"))  # written atomically, no temporary file left
    expected = first.search(7, 10)

    builds = []
    real_build = neighbours.build_ivf
    monkeypatch.setattr(neighbours, "build_ivf", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    again, _ = neighbours.load_or_build_index(run_path, "b3", source, mapped)
    assert builds == [] and np.array_equal(again.search(7, 10)[0], expected[0])  # read back, not rebuilt

    def replace_with(path, data: bytes) -> None:
        # a new file moved over the old one, as a copy or an editor would: the open indexes map the old file, and
        # truncating a memory-mapped file in place would kill this process with SIGBUS on the next read of it
        (path.parent / "damaged").write_bytes(data)
        os.replace(path.parent / "damaged", path)

    intact = file.read_bytes()
    for damage in (lambda: replace_with(file, b"not a faiss index"),             # corrupt
                   lambda: replace_with(file, intact[:len(intact) // 2]),       # truncated
                   lambda: meta_file.write_text("{"),                            # unreadable metadata
                   lambda: file.unlink()):                                       # missing
        damage()
        rebuilt, _ = neighbours.load_or_build_index(run_path, "b3", source, mapped)
        assert np.array_equal(rebuilt.search(7, 10)[0], expected[0])
    assert len(builds) == 4

    # the representation is rebuilt with other rows: the stored index is stale and built again on the new rows
    changed = X[::-1].copy()
    np.save(source, changed)
    stale_meta = json.loads(meta_file.read_text())
    new, meta = neighbours.load_or_build_index(run_path, "b3", source, np.load(source, mmap_mode="r"))
    assert len(builds) == 5 and meta["fingerprint"] != stale_meta["fingerprint"]
    assert new.search(len(X) - 1 - 7, 1)[0][0] == len(X) - 1 - expected[0][0]


# ---------------------------------------------------------------- density maps


def test_density_grid_counts_every_point_of_every_group():
    from core import analysis

    rng = np.random.default_rng(0)
    coords = rng.standard_normal((5000, 2))
    groups = np.where(coords[:, 0] > 0, "right", "left")
    grid = analysis.density_grid(coords, groups, bins=20, sample_size=300)
    assert grid.groups == ["left", "right"] and grid.counts.shape == (2, 20, 20)
    assert grid.counts[0].sum() == (groups == "left").sum() and grid.counts[1].sum() == (groups == "right").sum()
    # columns are x cells: left points lie in the columns up to x = 0, right points from there on
    zero = int((0 - coords[:, 0].min()) / np.ptp(coords[:, 0]) * 20)
    assert grid.counts[0][:, zero + 1:].sum() == 0 and grid.counts[1][:, :zero].sum() == 0
    assert grid.counts[0][:, :zero].sum() > 0 and grid.counts[1][:, zero + 1:].sum() > 0
    assert len(grid.sample) == 300 and len(np.unique(grid.sample)) == 300
    assert grid.x_centres[0] > coords[:, 0].min() and grid.x_centres[-1] < coords[:, 0].max()


def test_density_grid_of_coded_groups_matches_the_strings():
    from core import analysis, ui

    rng = np.random.default_rng(1)
    coords = rng.standard_normal((4000, 2))
    codes = pd.Series(rng.integers(0, 4, 4000), index=np.arange(4000) * 2)  # index of a slice, not positions
    names = {0: "neg", 1: "pos", 2: "neutral"}  # 3 has no name: shown as "3"
    coded = ui.coded_groups(codes, names, "prediction")
    assert coded.name == "prediction" and coded.index.equals(codes.index)
    as_strings = codes.map(lambda c: names.get(c, str(c))).to_numpy()
    assert (coded.astype(str).to_numpy() == as_strings).all()
    from_strings = analysis.density_grid(coords, as_strings, bins=16)
    from_codes = analysis.density_grid(coords, coded.array, bins=16)
    assert from_codes.groups == from_strings.groups == ["3", "neg", "neutral", "pos"]
    np.testing.assert_array_equal(from_codes.counts, from_strings.counts)
    # two codes with one name are one group; a name no row has is no group
    merged = ui.coded_groups(pd.Series([0, 1, 1, 0]), {0: "same", 1: "same", 2: "unused"}, "g")
    assert list(merged.cat.categories) == ["same"]
    assert analysis.density_grid(np.zeros((4, 2)), merged.array, bins=2).counts.sum() == 4


def test_rows_in_region_box_and_lasso():
    from core import analysis, ui

    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 1.5], [3.0, 0.0]])
    assert analysis.rows_in_region(coords, box=(1.5, -0.1, -0.1, 1.2)).tolist() == [0, 1]
    triangle = ([-0.5, 2.0, -0.5], [-0.5, 1.6, 3.0])  # holds rows 0, 1 and 3; not (2, 2) nor (3, 0)
    assert analysis.rows_in_region(coords, lasso=triangle).tolist() == [0, 1, 3]
    assert analysis.rows_in_region(coords, box=(2.5, 3.5, -1, 1), lasso=triangle).tolist() == [0, 1, 3, 4]
    assert analysis.rows_in_region(coords).tolist() == []
    event = {"selection": {"points": [], "box": [{"x": [1.5, -0.1], "y": [-0.1, 1.2]}],
                           "lasso": [{"x": triangle[0], "y": triangle[1]}]}}
    box, lasso = ui.selection_region(event)
    assert box == (1.5, -0.1, -0.1, 1.2) and lasso == triangle
    assert ui.selection_region({"selection": {"points": [], "box": [], "lasso": []}}) == (None, None)
    assert ui.selection_region(None) == (None, None)


def plotly_array(value) -> np.ndarray:
    """Return an array of a figure's JSON: a list, or plotly's typed array {"dtype", "bdata", "shape"}."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return array.reshape([int(v) for v in str(shape).split(",")]) if shape else array
    return np.asarray(value)


def test_map_page_draws_density_above_the_threshold(tiny_run_path, isolated_cache, monkeypatch):
    import json
    import shutil
    from pathlib import Path

    from core import analysis
    from tests.test_pages import map_figure, no_exception, open_page, texts

    shutil.copytree(tiny_run_path, isolated_cache / "runs" / Path(tiny_run_path).name)
    at = open_page("map")
    no_exception(at)
    traces = map_figure(at)["data"]
    assert {t["type"] for t in traces} == {"scattergl"}  # 16 points: a plain scatter

    monkeypatch.setattr(analysis, "DENSITY_ABOVE", 10)
    monkeypatch.setattr(analysis, "DENSITY_SAMPLE", 5)
    at = open_page("map")
    no_exception(at)
    assert "drawn as the density of each colour group" in texts(at.caption)
    traces = map_figure(at)["data"]
    heatmaps = [t for t in traces if t["type"] == "heatmap"]
    points = [t for t in traces if t["type"] == "scatter"]  # SVG markers: no WebGL context to create
    assert len(heatmaps) == len(points) == 2  # one density and one sample per true label
    assert sum(len(plotly_array(t["x"])) for t in points) == 5
    counted = sum(np.nansum(plotly_array(t["customdata"]).astype(float)) for t in heatmaps)
    assert counted == 16
    at.selectbox(key="colour").set_value("correctness").run()
    no_exception(at)
    legend = {t["name"] for t in map_figure(at)["data"]}
    assert legend <= {"correct", "misclassified"}


# ---------------------------------------------------------------- projection of many rows


def test_umap_of_many_rows_fits_a_sample_and_places_the_rest(monkeypatch):
    import scipy.sparse as sp

    from core import analysis

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 4, 400)
    X = np.abs(rng.standard_normal((400, 80))).astype(np.float32) * 0.1
    for c in range(4):  # four planted groups, each salient on its own 20 columns
        X[centres == c, c * 20:(c + 1) * 20] += 1.0
    monkeypatch.setattr(analysis, "UMAP_SAMPLE_ABOVE", 100)
    monkeypatch.setattr(analysis, "UMAP_FIT_ROWS", 150)
    monkeypatch.setattr(analysis, "UMAP_TRANSFORM_BATCH", 100)
    messages = []
    coords = analysis.project_2d(sp.csr_matrix(X), "umap", seed=0,
                                 progress=lambda f, m: messages.append((f, m)))
    assert coords.shape == (400, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    placing = [f for f, m in messages if "placing the other 250 points" in m]
    assert len(placing) == 3 and placing == sorted(placing)  # 250 rows in batches of 100
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions)  # the bar never moves back (transform's own epochs are not reported)
    assert messages[-1] == (1.0, "UMAP: done")
    # a placed point lands among the fitted points of its own group
    fitted = np.sort(np.random.default_rng(0).choice(400, 150, replace=False))
    placed = np.setdiff1d(np.arange(400), fitted)
    distances = ((coords[placed, None, :] - coords[None, fitted, :]) ** 2).sum(axis=2)
    nearest = fitted[distances.argmin(axis=1)]
    assert (centres[nearest] == centres[placed]).mean() >= 0.9


# ---------------------------------------------------------------- the Examples page's order without a full table


def test_search_and_order_matches_sorting_the_display_table(tiny_run_path):
    import pandas as pd

    from core import analysis

    ex = open_run(tiny_run_path).examples
    rows = np.arange(len(ex))[::-1]  # any given order: ties keep it
    confidence = ex[["prob_0", "prob_1"]].to_numpy()[np.arange(len(ex)), ex["pred"].to_numpy()]
    table = pd.DataFrame({"confidence": confidence, "correct": ex["correct"], "tokens": ex["n_tokens"]}).iloc[rows]
    expected = {
        "row": rows,
        "least_confident": table.sort_values("confidence", kind="stable").index.to_numpy(),
        "longest": table.sort_values("tokens", ascending=False, kind="stable").index.to_numpy(),
        "confident_wrong": table.assign(k=np.where(table["correct"], 2.0, 1.0 - table["confidence"]))
                                .sort_values("k", kind="stable").index.to_numpy(),
    }
    for order, want in expected.items():
        assert analysis.search_and_order(ex, rows, "", order).tolist() == want.tolist(), order
    hits = analysis.search_and_order(ex, rows, "FILM", "longest")
    assert len(hits) and all("film" in ex["text"].iloc[r].lower() for r in hits)
    assert set(hits) == {r for r in rows if "film" in str(ex["text"].iloc[r]).lower()}


def test_regex_over_many_texts_through_arrow_matches_re2_per_text(monkeypatch):
    import pandas as pd

    from core import analysis

    texts = ["The movie was BAD.", "class_3 film", "naïve Élan", "first line\nsecond line", "", "bad\nthe end",
             "CLASS_x", "a+b=c", "ünïcode ÜNÏCODE", "the the", "3/10 would not", "ends with the"] * 100
    series = pd.Series(texts + [None], dtype="str")
    patterns = [r"class_\d", r"\bbad\b", r"^the", r"the$", r"(?m)^second", r"(?s)line.second", r"élan",
                r"ÜNÏ", r"\d+/10", r"a\+b", r"\pL{5,}", r"x|y"]
    monkeypatch.setattr(analysis, "ARROW_REGEX_MIN", 10**9)
    expected = {p: analysis.regex_hits(series, p) for p in patterns}  # RE2 text by text
    monkeypatch.setattr(analysis, "ARROW_REGEX_MIN", 1)
    import pyarrow.compute as pc

    calls = []
    real = pc.match_substring_regex
    monkeypatch.setattr(pc, "match_substring_regex", lambda *a, **k: calls.append(1) or real(*a, **k))
    for pattern in patterns:
        got = analysis.regex_hits(series, pattern)
        assert got.dtype == bool and got.tolist() == expected[pattern].tolist(), pattern
        assert not got[-1]  # a missing text never matches
    assert len(calls) == len(patterns)  # every one went through Arrow
    assert 0 < expected[r"\bbad\b"].sum() < len(series)
    objects = pd.Series(["bad movie", 3, None], dtype=object)  # not all strings: the per-text loop
    assert analysis.regex_hits(objects, "bad").tolist() == [True, False, False]


# ---------------------------------------------------------------- k-means of many rows


def test_kmeans_of_many_rows_fits_a_sample_and_assigns_every_row(monkeypatch):
    import scipy.sparse as sp

    from core import analysis

    X = planted(3000, dim=24, centres=6, seed=4)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    monkeypatch.setattr(analysis, "CLUSTER_FIT_ROWS", 500)
    for matrix in (X, sp.csr_matrix(np.where(np.abs(X) > 0.15, X, 0.0))):
        labels = analysis.cluster_rows(matrix, 6, seed=0)
        assert labels.shape == (3000,) and labels.dtype == np.int64
        assert np.array_equal(labels, analysis.cluster_rows(matrix, 6, seed=0))  # seeded
        # every row sits at its nearest centre: the centres are the means of the sample's clusters
        dense = matrix.toarray() if sp.issparse(matrix) else matrix
        fit = np.sort(np.random.default_rng(0).choice(3000, 500, replace=False))
        centres = np.stack([dense[fit][labels[fit] == c].mean(axis=0) if (labels[fit] == c).any()
                            else np.full(dense.shape[1], np.inf) for c in range(6)])
        nearest = ((dense[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        assert (nearest == labels).mean() > 0.99
    # the planted groups come back (dense rows): each cluster is mostly one planted centre
    rng = np.random.default_rng(4)  # planted()'s draws: the centres, then each row's centre
    rng.standard_normal((6, 24))
    planted_ids = rng.integers(0, 6, 3000)
    labels = analysis.cluster_rows(X, 6, seed=0)
    purity = sum(np.bincount(planted_ids[labels == c]).max() for c in np.unique(labels)) / 3000
    assert purity > 0.9


def test_dense_representation_built_in_blocks_equals_one_piece_and_is_memory_mapped(tiny_run_path, isolated_cache,
                                                                                   monkeypatch):
    import shutil

    from core import representations
    from core.representations import build_representation

    target = isolated_cache / "runs" / "copy"
    shutil.copytree(tiny_run_path, target)
    run = open_run(target)
    for name in ("s2", "b2", "b3"):
        key = RepresentationKey(name, "grad_l2")
        whole = build_representation(run, key)  # one piece: 17 rows in one block
        run.representation_file(key).unlink(missing_ok=True)
        monkeypatch.setattr(representations, "ROW_BLOCK", 5)  # 4 blocks written into the file one by one
        stored = run.representation(key)
        monkeypatch.setattr(representations, "ROW_BLOCK", 16_384)
        assert isinstance(stored, np.memmap) and stored.dtype == np.float32
        np.testing.assert_allclose(np.asarray(stored), whole, rtol=1e-6, atol=1e-7)
        assert not list(run.representation_file(key).parent.glob(".*.npy"))  # no temporary file left


def test_a_large_index_is_built_in_a_child_process(tmp_path, monkeypatch):
    from core import neighbours

    X = planted(1500)
    run_path, source, mapped = stored_matrix(tmp_path, X)
    monkeypatch.setattr(neighbours, "SUBPROCESS_BUILD_ABOVE", 1000)

    def not_here(*args, **kwargs):
        raise AssertionError("built in the dashboard's process")

    monkeypatch.setattr(neighbours, "build_ivf", not_here)
    index, meta = neighbours.load_or_build_index(run_path, "b3", source, mapped)
    assert meta["rows"] == 1500 and neighbours.index_paths(run_path, "b3")[0].is_file()
    assert len(index.search(3, 10)[0]) == 10


def test_warnings_of_a_large_run_are_computed_in_a_child_process(tiny_run_path, isolated_cache, monkeypatch):
    import shutil

    from core import dataset_warnings

    target = isolated_cache / "runs" / "copy"
    shutil.copytree(tiny_run_path, target)
    run = open_run(target)
    expected = dataset_warnings.compute_warnings(run)
    monkeypatch.setattr(dataset_warnings, "CHILD_PROCESS_ABOVE", 10)  # the tiny run has 17 examples

    def not_here(*args, **kwargs):
        raise AssertionError("computed in the dashboard's process")

    monkeypatch.setattr(dataset_warnings, "compute_warnings", not_here)
    report = dataset_warnings.load_or_compute(run)
    assert dataset_warnings.warnings_file(run).is_file()
    assert [c["summary"] for c in report["checks"]] == [c["summary"] for c in expected["checks"]]


def test_map_agreement_split_between_threads_equals_one_pass(tiny_run_path, monkeypatch):
    import pandas as pd

    from core import compare, kernels

    run = open_run(tiny_run_path)
    keep = ~run.ignore_mask[np.asarray(run.token_ids)]
    whole = compare.map_agreement(run.row_ptr, run.scores("grad_l2"), run.scores("grad_x_input"), keep=keep)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ENTRIES", 20)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    assert len(kernels._row_blocks(np.asarray(run.row_ptr))) > 3  # the examples are split into several blocks
    split = compare.map_agreement(run.row_ptr, run.scores("grad_l2"), run.scores("grad_x_input"), keep=keep)
    pd.testing.assert_frame_equal(split, whole)
    rows = np.array([1, 4, 5, 9, 12])
    pd.testing.assert_frame_equal(
        compare.map_agreement(run.row_ptr, run.scores("grad_l2"), run.scores("grad_x_input"), rows=rows, keep=keep),
        whole.loc[rows])

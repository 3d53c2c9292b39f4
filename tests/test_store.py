"""The cache: fingerprints, atomic runs, resume after interruption, corrupt and stale runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from core.precompute import PrecomputeSettings, precompute
from core.store import (REPO_ROOT, CacheError, directory_digest, file_digest, list_runs, open_run, run_fingerprint,
                        runs_dir, settings_digest)
from tests.conftest import write_tiny_model

SETTINGS = PrecomputeSettings(split_col="split", max_length=16, batch_size=3, chunk_size=4,
                              methods=("grad_l2", "grad_x_input"))


def run_arrays(path) -> dict[str, np.ndarray]:
    run = open_run(path, verify=True)
    out = {"token_ids": run.token_ids, "row_ptr": run.row_ptr, "cls": run.cls(), "probs": run.probabilities()}
    for method in run.methods:
        out[method] = run.scores(method)
    return out


def test_settings_digest_ignores_key_order_and_process():
    a = settings_digest({"max_length": 64, "methods": ["grad_l2"], "k": 5})
    b = settings_digest({"k": 5, "methods": ["grad_l2"], "max_length": 64})
    code = ("from core.store import settings_digest;"
            "print(settings_digest({'methods': ['grad_l2'], 'k': 5, 'max_length': 64}))")
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                                   check=True).stdout.strip()
    assert a == b == other_process
    assert settings_digest({"max_length": 65, "methods": ["grad_l2"], "k": 5}) != a


def test_fingerprint_changes_with_one_weight_or_one_text(tmp_path, tiny_data_csv):
    model = write_tiny_model(tmp_path / "model")
    base = run_fingerprint(directory_digest(model), file_digest(tiny_data_csv), SETTINGS.fingerprinted())
    assert base == run_fingerprint(directory_digest(model), file_digest(tiny_data_csv), SETTINGS.fingerprinted())

    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    changed_model = run_fingerprint(directory_digest(model), file_digest(tiny_data_csv), SETTINGS.fingerprinted())

    data = pd.read_csv(tiny_data_csv)
    data.loc[0, "text"] = data.loc[0, "text"] + " !"
    other_csv = tmp_path / "other.csv"
    data.to_csv(other_csv, index=False)
    changed_data = run_fingerprint(directory_digest(model), file_digest(other_csv), SETTINGS.fingerprinted())
    assert len({base, changed_model, changed_data}) == 3


def test_batch_size_does_not_change_the_fingerprint_but_max_length_does():
    a = PrecomputeSettings(batch_size=8).fingerprinted()
    assert a == PrecomputeSettings(batch_size=64, chunk_size=7, k=9).fingerprinted()
    assert a != PrecomputeSettings(max_length=99).fingerprinted()


def test_interrupted_precompute_leaves_no_run_and_resumes_to_the_same_arrays(tiny_model_dir, tiny_data_csv,
                                                                            isolated_cache, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, stop_after_chunks=2)
    assert list_runs() == []
    partial = [p for p in runs_dir().iterdir() if p.name.startswith(".partial-")]
    assert len(partial) == 1 and len(list((partial[0] / "chunks").glob("*.npz"))) == 2

    resumed = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert resumed.manifest["timings"]["chunks_resumed"] == 2
    assert not partial[0].exists()

    monkeypatch.setenv("SALIENCY_ATLAS_CACHE", str(isolated_cache.parent / "fresh"))
    fresh = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert fresh.manifest["timings"]["chunks_resumed"] == 0
    a, b = run_arrays(resumed.run_path), run_arrays(fresh.run_path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    pd.testing.assert_frame_equal(open_run(resumed.run_path).examples, open_run(fresh.run_path).examples)


def test_a_damaged_chunk_is_recomputed(tiny_model_dir, tiny_data_csv):
    with pytest.raises(KeyboardInterrupt):
        precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, stop_after_chunks=2)
    partial = next(p for p in runs_dir().iterdir() if p.name.startswith(".partial-"))
    chunk = sorted((partial / "chunks").glob("*.npz"))[1]
    chunk.write_bytes(chunk.read_bytes()[:50])
    result = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert result.manifest["timings"]["chunks_resumed"] == 1
    open_run(result.run_path, verify=True)


def test_a_second_precompute_reuses_the_cached_run(tiny_model_dir, tiny_data_csv):
    first = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    second = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert not first.reused and second.reused and first.run_path == second.run_path


@pytest.fixture
def fresh_run(tiny_model_dir, tiny_data_csv, tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes(tiny_data_csv.read_bytes())
    return precompute(tiny_model_dir, data, SETTINGS, progress=False).run_path, data


def test_some_columns_of_the_examples_are_read_without_the_others(fresh_run):
    path, _ = fresh_run
    run = open_run(path, verify=True)
    assert "examples" not in run.__dict__  # opening reads no row
    assert {"text", "label", "pred", "source_row"} <= set(run.example_column_names)
    preds = run.example_columns(["pred", "prob_1"])
    assert list(preds.columns) == ["pred", "prob_1"] and "examples" not in run.__dict__
    pd.testing.assert_frame_equal(preds, run.examples[["pred", "prob_1"]])  # the same rows, in order


def test_examples_stored_in_several_row_groups_are_read_into_one_piece_per_column(fresh_run):
    import pyarrow.parquet as pq

    path, _ = fresh_run
    table = path / "examples.parquet"
    before = pd.read_parquet(table)
    pq.write_table(pq.read_table(table), table, row_group_size=3)  # as bench.scaled_run writes 1,000,000 rows
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["examples.parquet"] = {"bytes": table.stat().st_size, "sha256": file_digest(table)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert pq.ParquetFile(table).num_row_groups > 1 and pd.read_parquet(table)["text"].array._pa_array.num_chunks > 1
    run = open_run(path, verify=True)
    # one piece: a take of a few texts does not concatenate every piece first
    assert run.example_columns(["text", "pred"])["text"].array._pa_array.num_chunks == 1  # read alone
    assert run.examples["text"].array._pa_array.num_chunks == 1
    pd.testing.assert_frame_equal(run.examples, before, check_exact=True)


def test_corrupt_files_are_reported_not_used(fresh_run):
    path, _ = fresh_run
    scores = path / "saliency" / "grad_l2.npy"
    scores.write_bytes(scores.read_bytes()[:-8])
    with pytest.raises(CacheError, match="grad_l2.npy"):
        open_run(path)


def test_same_size_corruption_is_caught_by_verify(fresh_run):
    path, _ = fresh_run
    scores = path / "saliency" / "grad_l2.npy"
    raw = bytearray(scores.read_bytes())
    raw[-1] ^= 0xFF
    scores.write_bytes(bytes(raw))
    open_run(path)  # sizes still match
    with pytest.raises(CacheError, match="does not match"):
        open_run(path, verify=True)


def _count_hashes(monkeypatch) -> list[str]:
    import core.store as store

    hashed: list[str] = []
    real = store.file_digest

    def counting(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, "file_digest", counting)
    return hashed


def test_a_full_check_hashes_only_files_changed_since_their_last_check(fresh_run, monkeypatch):
    path, _ = fresh_run
    manifest = json.loads((path / "manifest.json").read_text())
    hashed = _count_hashes(monkeypatch)
    # files written in the same clock tick as the record are not trusted; a second later they are
    time.sleep(0.05)
    open_run(path, verify=True)
    open_run(path, verify=True)
    assert len(hashed) <= len(manifest["files"])  # hashed at most once, by the first check if the record was racy
    hashed.clear()
    open_run(path, verify=True)
    assert hashed == []

    scores = path / "saliency" / "grad_l2.npy"
    before = scores.stat()
    raw = bytearray(scores.read_bytes())
    raw[-1] ^= 0xFF
    scores.write_bytes(bytes(raw))
    os.utime(scores, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: only ctime tells
    with pytest.raises(CacheError, match="grad_l2.npy does not match its manifest \\(sha256 differs\\)"):
        open_run(path, verify=True)
    assert hashed.count("grad_l2.npy") == 1


def test_a_damaged_verification_record_means_hashing_everything(fresh_run, monkeypatch):
    from core.store import VERIFIED_RECORD

    path, _ = fresh_run
    manifest = json.loads((path / "manifest.json").read_text())
    (path / VERIFIED_RECORD).write_text("{not json", encoding="utf-8")
    hashed = _count_hashes(monkeypatch)
    open_run(path, verify=True)
    assert len(hashed) == len(manifest["files"])
    hashed.clear()
    open_run(path, verify=True)  # the check rewrote the record
    assert hashed == []


def test_a_copied_run_is_hashed_again(fresh_run, tmp_path, monkeypatch):
    import shutil

    path, _ = fresh_run
    open_run(path, verify=True)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)  # copy2 keeps the mtimes, but every file is a new inode
    hashed = _count_hashes(monkeypatch)
    open_run(copy, verify=True)
    assert len(hashed) == len(json.loads((copy / "manifest.json").read_text())["files"])


def test_missing_file_bad_manifest_and_old_schema(fresh_run):
    path, _ = fresh_run
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "cls.npy").unlink()
    with pytest.raises(CacheError, match="cls.npy is missing"):
        open_run(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 0}))
    with pytest.raises(CacheError, match="schema"):
        open_run(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        open_run(path)


def test_changed_data_makes_the_run_stale(fresh_run):
    path, data = fresh_run
    assert open_run(path).staleness() == []
    data.write_text(data.read_text() + "one more great film,1,train\n")
    reasons = open_run(path).staleness()
    assert len(reasons) == 1 and "data" in reasons[0] and "re-run precompute" in reasons[0]


def test_no_pickle_in_the_cache(fresh_run):
    path, _ = fresh_run
    for file in path.rglob("*.np[yz]"):
        loaded = np.load(file, allow_pickle=False)  # raises if any array needs pickle
        if hasattr(loaded, "close"):
            loaded.close()

"""--engine ray: the same run as the local engine, byte for byte, and the same resume after an interruption."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.precompute import Engine, PrecomputeSettings, precompute
from core.store import REPO_ROOT, list_runs, open_run, runs_dir

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason='ray is not installed: pip install "ray[data]==2.60.0" to test --engine ray')

ARGS = ["--split-col", "split", "--max-length", "16", "--batch-size", "3", "--chunk-size", "4",
        "--method", "grad_l2,grad_x_input", "--quiet"]
SETTINGS = PrecomputeSettings(split_col="split", max_length=16, batch_size=3, chunk_size=4,
                              methods=("grad_l2", "grad_x_input"))


def run_cli(args, cache, **env_vars):
    env = {**os.environ, "SALIENCY_ATLAS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **env_vars}
    return subprocess.run([sys.executable, "-m", "core.precompute", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)


def array_hashes(run_path) -> dict[str, str]:
    """sha256 of every array and table of the run (the manifest, which holds timings, is compared apart)."""
    return {str(p.relative_to(run_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_path.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def without_timings(manifest: dict) -> dict:
    manifest = {k: v for k, v in manifest.items() if k not in ("timings", "created", "examples_per_second")}
    # the manifest lists each file's sha256 and size: equal files, equal entries
    return json.loads(json.dumps(manifest))


def test_ray_engine_run_is_byte_identical_to_the_local_run(tiny_model_dir, tiny_data_csv, tmp_path):
    common = ["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), *ARGS]
    # each Ray actor computes on one CPU thread; so does the local engine here, so that both sum the floats in the
    # same order (with 2 threads the last bits of a few gradients differ, ~1e-12)
    local = run_cli(common, tmp_path / "local", OMP_NUM_THREADS="1")
    assert local.returncode == 0, local.stderr
    ray = run_cli([*common, "--engine", "ray", "--ray-workers", "2"], tmp_path / "ray")
    assert ray.returncode == 0, ray.stderr
    assert "via ray (2 CPU workers)" in ray.stdout
    [a], [b] = list_runs(tmp_path / "local" / "runs"), list_runs(tmp_path / "ray" / "runs")
    assert a.name == b.name  # the same fingerprint
    ma, mb = open_run(a, verify=True).manifest, open_run(b, verify=True).manifest
    assert ma["fingerprint"] == mb["fingerprint"]
    assert ma["timings"]["engine"] == "local" and mb["timings"]["engine"] == "ray (2 CPU workers)"
    assert mb["timings"]["chunks_computed"] == 4
    hashes = array_hashes(a)
    assert {"saliency/grad_l2.npy", "saliency/grad_x_input.npy", "tokens/token_ids.npy", "examples.parquet",
            "cls.npy"} <= set(hashes)
    assert hashes == array_hashes(b)
    assert without_timings(ma) == without_timings(mb)


def test_interrupted_ray_run_resumes_from_its_chunks(tiny_model_dir, tiny_data_csv, isolated_cache):
    engine = Engine("ray", ray_workers=2)
    with pytest.raises(KeyboardInterrupt):
        precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, stop_after_chunks=2, engine=engine)
    assert list_runs() == []
    [partial] = [p for p in runs_dir().iterdir() if p.name.startswith(".partial-")]
    assert len(list((partial / "chunks").glob("*.npz"))) == 2

    resumed = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, engine=engine)
    timings = resumed.manifest["timings"]
    assert timings["chunks_resumed"] == 2 and timings["chunks_computed"] == 2
    assert not partial.exists()
    fresh = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, force=True)  # local engine
    assert fresh.manifest["timings"]["chunks_computed"] == 4
    run = open_run(resumed.run_path, verify=True)
    np.testing.assert_array_equal(run.scores("grad_l2"), open_run(fresh.run_path).scores("grad_l2"))

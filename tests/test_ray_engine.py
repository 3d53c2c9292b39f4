"""--engine ray: the same run as the local engine, byte for byte, and the same resume after an interruption.

One local Ray instance (2 CPUs) serves the whole module: its startup is most of the cost.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch

from core.precompute import Engine, PrecomputeSettings, main, precompute
from core.store import VERIFIED_RECORD, list_runs, open_run, runs_dir

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason='ray is not installed: pip install "ray[data]==2.60.0" to test --engine ray')

SETTINGS = PrecomputeSettings(split_col="split", max_length=16, batch_size=3, chunk_size=4,
                              methods=("grad_l2", "grad_x_input"))
ENGINE = Engine("ray", ray_workers=2)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from core.ray_engine import start

    assert start(None, 2)
    yield
    ray.shutdown()


def array_hashes(run_path) -> dict[str, str]:
    """sha256 of every array and table of the run (the manifest, which holds timings, is compared apart; the record
    of hashed files holds each file's inode and times)."""
    return {str(p.relative_to(run_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_path.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and p.relative_to(run_path).as_posix() != VERIFIED_RECORD}


def without_timings(manifest: dict) -> dict:
    # the manifest also lists each file's sha256 and size: equal files, equal entries
    return json.loads(json.dumps({k: v for k, v in manifest.items()
                                  if k not in ("timings", "created", "examples_per_second")}))


def test_interrupted_ray_run_resumes_and_equals_the_local_run_byte_for_byte(local_ray, tiny_model_dir, tiny_data_csv,
                                                                           isolated_cache, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, stop_after_chunks=2, engine=ENGINE)
    assert list_runs() == []
    [partial] = [p for p in runs_dir().iterdir() if p.name.startswith(".partial-")]
    assert len(list((partial / "chunks").glob("*.npz"))) == 2

    resumed = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, engine=ENGINE)
    timings = resumed.manifest["timings"]
    assert timings["chunks_resumed"] == 2 and timings["chunks_computed"] == 2
    assert timings["engine"] == "ray (2 CPU workers)"
    assert not partial.exists()

    fresh_ray = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False, engine=ENGINE, force=True)
    assert fresh_ray.manifest["timings"]["chunks_computed"] == 4

    # each Ray actor computes on one CPU thread; so does the local engine here, so that both sum the floats in the
    # same order (with 2 threads the last bits of a few gradients differ, ~1e-12)
    monkeypatch.setenv("SALIENCY_ATLAS_CACHE", str(isolated_cache.parent / "local"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert local.manifest["timings"]["engine"] == "local"
    assert local.run_path.name == resumed.run_path.name == fresh_ray.run_path.name  # the same fingerprint
    hashes = array_hashes(local.run_path)
    assert {"saliency/grad_l2.npy", "saliency/grad_x_input.npy", "tokens/token_ids.npy", "examples.parquet",
            "cls.npy"} <= set(hashes)
    assert array_hashes(fresh_ray.run_path) == hashes  # saliency, tokens, predictions and probabilities
    assert array_hashes(resumed.run_path) == hashes
    manifests = [open_run(r.run_path, verify=True).manifest for r in (local, fresh_ray, resumed)]
    assert without_timings(manifests[0]) == without_timings(manifests[1]) == without_timings(manifests[2])


def test_cli_passes_the_engine_options(tiny_model_dir, tiny_data_csv, monkeypatch, capsys):
    import core.precompute as pc

    seen = {}

    def fake(*args, engine, **kwargs):
        seen["engine"] = engine
        raise ValueError("stop here")

    monkeypatch.setattr(pc, "precompute", fake)
    base = ["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--quiet"]
    assert main([*base, "--engine", "ray", "--ray-workers", "2", "--ray-address", "auto"]) == 2
    assert seen["engine"] == Engine("ray", "auto", 2)
    assert main(base) == 2 and seen["engine"] == Engine()
    seen.clear()
    assert main([*base, "--ray-workers", "2"]) == 2 and not seen
    assert "need --engine ray" in capsys.readouterr().err

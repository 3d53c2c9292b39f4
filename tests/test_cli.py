"""End to end: the precompute CLI on a small slice, then the cache loaded back."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from core.representations import RepresentationKey
from core.store import REPO_ROOT, list_runs, open_run


def run_cli(args, cache):
    env = {**os.environ, "SALIENCY_ATLAS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "core.precompute", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)


def test_cli_end_to_end(tiny_model_dir, tiny_data_csv, isolated_cache):
    out = run_cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--split-col", "split",
                   "--limit", "12", "--max-length", "16", "--k", "3", "--quiet"], isolated_cache)
    assert out.returncode == 0, out.stderr
    assert "examples   12" in out.stdout and "examples/s" in out.stdout and "cache" in out.stdout
    runs = list_runs(isolated_cache / "runs")
    assert len(runs) == 1 and str(runs[0]) in out.stdout
    run = open_run(runs[0], verify=True)
    assert len(run.examples) == 12 and run.manifest["counts"]["examples"] == 12
    assert set(run.examples["split"]) == {"train", "test"}
    s1 = run.representation(RepresentationKey("s1", "grad_l2", 3))
    assert (np.diff(s1.indptr) <= 3).all() and (s1.getnnz(axis=1) > 0).all()
    assert run.manifest["accuracy"]["overall"] == run.examples["correct"].mean()

    again = run_cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--split-col", "split",
                     "--limit", "12", "--max-length", "16", "--quiet"], isolated_cache)
    assert again.returncode == 0 and "reused cached run" in again.stdout


def test_cli_errors_are_one_clear_line(tiny_model_dir, tiny_data_csv, isolated_cache):
    out = run_cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--text-col", "review"],
                  isolated_cache)
    assert out.returncode == 2
    assert "Column 'review' not found" in out.stderr and "text, label, split" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--method", "saliency"],
                  isolated_cache)
    assert out.returncode == 2 and "Known methods" in out.stderr


def test_cli_cache_option_sets_the_cache_root(tiny_model_dir, tiny_data_csv, isolated_cache, tmp_path):
    other = tmp_path / "other cache"
    out = run_cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--limit", "6",
                   "--max-length", "16", "--quiet", "--cache", str(other)], isolated_cache)
    assert out.returncode == 0, out.stderr
    runs = list_runs(other / "runs")
    assert len(runs) == 1 and not (isolated_cache / "runs").exists()
    assert str(runs[0]) in out.stdout
    # The summary names the command and the link that open this very run, in this cache.
    assert f"http://localhost:8501/?run={runs[0].name}" in out.stdout
    assert f"SALIENCY_ATLAS_CACHE='{other.resolve()}' .venv/bin/python -m streamlit run app.py" in out.stdout
    assert "make demo" not in out.stdout


def test_open_command_without_prefix_for_the_default_cache():
    from core.precompute import open_command

    assert open_command(REPO_ROOT / "cache" / "runs" / "abc") == ".venv/bin/python -m streamlit run app.py"
    assert open_command(REPO_ROOT / "elsewhere" / "runs" / "abc").startswith(
        f"SALIENCY_ATLAS_CACHE={REPO_ROOT / 'elsewhere'} .venv")


def test_help_states_each_default_once(capsys):
    from core.precompute import _parse_args

    with pytest.raises(SystemExit):
        _parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--cache DIR" in text and "SALIENCY_ATLAS_CACHE" in text
    assert not re.search(r"\(default[^()]*\)\s*\(default", text), text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 128)" in text and "(default: the demo)" in text
    # A default of 0 is still a default worth stating.
    assert re.search(r"--seed SEED seed for --sample \(default: 0\)", text)


def test_engine_ray_without_ray_installed_says_how_to_install_it(tiny_model_dir, tiny_data_csv, monkeypatch,
                                                                  capsys):
    import importlib.util

    from core.precompute import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--engine", "ray"]) == 2
    assert 'pip install "ray[data]==2.60.0"' in capsys.readouterr().err

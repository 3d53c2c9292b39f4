"""Damaged run folders (issue 12, items 2 and 3): one bad run must not crash the dashboard or be reused silently.

Each case damages a copy of the tiny fixture run the way a careless user, a full disk or a cut-short copy would,
and checks that the run is reported as damaged with the reason and the fix while other runs keep working.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from core import ui
from core.precompute import precompute
from core.store import MANIFEST, CacheError, open_run, read_manifest, run_problem
from tests.test_pages import make_app, no_exception, open_page, texts
from tests.test_store import SETTINGS


@pytest.fixture
def two_runs(tiny_run_path, isolated_cache) -> tuple[str, str]:
    """Two copies of the fixture run: ("good", "bad"); the test damages the bad one. The bad one is the most
    recent, so the run picker meets it first."""
    good = isolated_cache / "runs" / "good000000000000"
    bad = isolated_cache / "runs" / "bad0000000000000"
    shutil.copytree(tiny_run_path, good)
    shutil.copytree(tiny_run_path, bad)
    stat = (good / MANIFEST).stat()
    os.utime(bad / MANIFEST, (stat.st_atime + 10, stat.st_mtime + 10))
    return good.name, bad.name


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path: Path, manifest) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest))


def _flip_byte(file: Path, offset_from_middle: int = 0) -> None:
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2 + offset_from_middle] ^= 0xFF
    file.write_bytes(bytes(raw))


def _damage_cases():
    def not_an_object(m):
        return [1, 2, 3]

    def only_version(m):
        return {"schema_version": 1}

    def methods_as_string(m):
        m["settings"]["methods"] = "grad_l2"
        return m

    def extra_label(m):
        m["model"]["id2label"]["2"] = "neutral"
        return m

    def no_files(m):
        del m["files"]
        return m

    def label_ids_with_a_gap(m):
        m["model"]["id2label"] = {"0": "negative", "5": "positive"}
        return m

    def file_outside_the_run(m):
        m["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
        return m

    def no_methods(m):
        m["settings"]["methods"] = []
        return m

    def other_schema(m):
        m["schema_version"] = 99
        return m

    return {
        "not_an_object": (not_an_object, "not an object"),
        "only_version": (only_version, "model"),
        "methods_as_string": (methods_as_string, "settings.methods"),
        "extra_label": (extra_label, "3 labels but examples.parquet has 2 probability columns"),
        "no_files": (no_files, "files"),
        "label_ids_with_a_gap": (label_ids_with_a_gap, "label ids must be 0..1"),
        "file_outside_the_run": (file_outside_the_run, "not a plain relative path"),
        "no_methods": (no_methods, "settings.methods"),
        "other_schema": (other_schema, "schema 99"),
    }


CASES = _damage_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_manifest_is_named_in_one_sentence(case, tiny_run_path, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(tiny_run_path, path)
    damage, expected = CASES[case]
    _write_manifest(path, damage(_manifest(path)))
    with pytest.raises(CacheError) as info:
        open_run(path)
    message = str(info.value)
    assert expected in message and "Re-run precompute" in message
    assert run_problem(path) == message


def test_a_manifest_that_is_not_json_or_not_utf8(tiny_run_path, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(tiny_run_path, path)
    (path / MANIFEST).write_bytes(b"\xff\xfe{not json")
    with pytest.raises(CacheError, match="manifest of run run is corrupt"):
        read_manifest(path)


def test_a_good_manifest_passes_the_schema(tiny_run_path):
    assert run_problem(tiny_run_path) is None
    assert read_manifest(tiny_run_path)["settings"]["methods"] == ["grad_l2", "grad_x_input", "integrated_gradients"]


@pytest.mark.parametrize("case", ["not_an_object", "only_version", "methods_as_string", "extra_label", "no_files"])
def test_one_damaged_run_leaves_every_page_of_the_others_working(case, two_runs, isolated_cache):
    good, bad = two_runs
    bad_path = isolated_cache / "runs" / bad
    damage, expected = CASES[case]
    _write_manifest(bad_path, damage(_manifest(bad_path)))
    for page in ui.PAGE_FILES:
        at = open_page(page)
        no_exception(at)
        assert not at.error, f"{page}: {texts(at.error)}"
        assert at.sidebar.selectbox(key="run").value == good, page  # the most recent healthy run
    picker = make_app().run().sidebar.selectbox(key="run")
    assert any("damaged" in str(option) for option in picker.options)

    at = open_page("clusters", run=bad)
    no_exception(at)
    error = texts(at.error).replace("\\", "")  # the page escapes Markdown in the reason
    assert "damaged" in error and expected in error and "Re-run precompute" in error


def test_same_size_flips_in_the_examples_table_are_caught_not_crashing(two_runs, isolated_cache):
    _, bad = two_runs
    _flip_byte(isolated_cache / "runs" / bad / "examples.parquet")
    at = open_page("examples", run=bad)
    no_exception(at)
    error = texts(at.error).replace("\\", "")
    assert "examples.parquet" in error and "sha256" in error


def test_same_size_flips_in_the_saliency_are_not_shown_as_valid(two_runs, isolated_cache):
    good, bad = two_runs
    _flip_byte(isolated_cache / "runs" / bad / "saliency" / "grad_l2.npy", offset_from_middle=4)
    _flip_byte(isolated_cache / "runs" / bad / "tokens" / "row_ptr.npy", offset_from_middle=-1)
    assert run_problem(isolated_cache / "runs" / bad) is None  # sizes agree: only the hashes tell
    at = open_page("clusters", run=bad)
    no_exception(at)
    assert "does not match its manifest (sha256 differs)" in texts(at.error).replace("\\", "")
    # the verdict is kept for this server process: the picker now marks the run as damaged
    entries = {e.run_id: e for e in ui.run_entries()}
    assert entries[bad].problem and entries[good].problem is None
    assert "damaged" in entries[bad].title


def test_the_cli_recomputes_a_damaged_run_instead_of_reusing_it(tiny_model_dir, tiny_data_csv, capsys):
    first = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    _flip_byte(first.run_path / "saliency" / "grad_l2.npy", offset_from_middle=4)
    again = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert not again.reused and "sha256 differs" in capsys.readouterr().err
    open_run(again.run_path, verify=True)
    third = precompute(tiny_model_dir, tiny_data_csv, SETTINGS, progress=False)
    assert third.reused


def test_a_deleted_representation_file_is_rebuilt_not_fatal(tiny_run_path, tmp_path):
    from core.representations import default_key

    path = tmp_path / "run"
    shutil.copytree(tiny_run_path, path)
    run = open_run(path)
    expected = run.representation(default_key("grad_l2"))
    stored = sorted((path / "representations").glob("*"))
    assert stored
    for file in stored:
        file.unlink()
    rebuilt = open_run(path, verify=True).representation(default_key("grad_l2"))
    assert (rebuilt != expected).nnz == 0 if hasattr(rebuilt, "nnz") else (rebuilt == expected).all()

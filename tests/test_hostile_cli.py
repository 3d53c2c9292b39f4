"""Hostile-user review of the CLI (issue 12, items 4, 6 and 7): model folders that carry code, silent wrong
results, and what killed or concurrent precomputes leave behind."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from core import precompute as pc
from core.data import DataLoadError, load_dataset
from core.models import ModelLoadError, load_classifier
from core.store import REPO_ROOT, runs_dir

ID2LABEL = {0: "negative", 1: "positive"}
CODE = "open({marker!r}, 'w').write('the folder ran its code')\n"


def cli(args, cache) -> subprocess.CompletedProcess:
    """Run the precompute CLI with stdin closed: a prompt could not be answered, and would show in the output."""
    env = {**os.environ, "SALIENCY_ATLAS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "core.precompute", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env, timeout=300)


def one_clear_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "[y/N]" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


def write_code_folder(folder: Path, tiny_model_dir: Path, marker: Path, where: str = "config") -> Path:
    """Copy the tiny classifier into `folder` with transformers custom code (auto_map) that writes `marker` when
    imported: in config.json (a model type transformers does not know) or in tokenizer_config.json."""
    shutil.copytree(tiny_model_dir, folder)
    code = CODE.format(marker=str(marker))
    (folder / "configuration_evil.py").write_text(
        code + "from transformers import BertConfig\n\n\nclass EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    (folder / "modeling_evil.py").write_text(
        code + "from transformers import BertForMaskedLM, BertForSequenceClassification\n\n\n"
        "class EvilForSequenceClassification(BertForSequenceClassification):\n    pass\n\n\n"
        "class EvilForMaskedLM(BertForMaskedLM):\n    pass\n")
    (folder / "tokenization_evil.py").write_text(
        code + "from transformers import BertTokenizerFast as EvilTokenizer\n")
    if where == "config":
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type="evil", architectures=["EvilForSequenceClassification"], auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForSequenceClassification": "modeling_evil.EvilForSequenceClassification",
            "AutoModelForMaskedLM": "modeling_evil.EvilForMaskedLM"})
        (folder / "config.json").write_text(json.dumps(config))
    else:
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran.txt"


@pytest.fixture
def answers_yes(monkeypatch):
    """A user who answers 'y' to any prompt (transformers' "run the custom code? [y/N]"); records the prompts."""
    prompts: list[str] = []

    def answer(prompt=""):
        prompts.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer)
    return prompts


@pytest.fixture
def mlm_loader():
    from core.saliency import _load_mlm

    _load_mlm.cache_clear()
    yield _load_mlm
    _load_mlm.cache_clear()


# ================================================================ item 4: model folders that carry code

@pytest.mark.parametrize("where", ["config", "tokenizer"])
def test_classifier_folder_with_custom_code_is_refused_and_runs_nothing(tmp_path, tiny_model_dir, marker,
                                                                      answers_yes, where):
    evil = write_code_folder(tmp_path / "evil", tiny_model_dir, marker, where)
    with pytest.raises(ModelLoadError, match=r"carries its own Python code .*auto_map.*never runs code"):
        load_classifier(evil, device="cpu")
    assert not marker.exists() and answers_yes == []


def test_masked_lm_folder_with_custom_code_is_refused_and_runs_nothing(tmp_path, tiny_model_dir, marker,
                                                                      answers_yes, mlm_loader):
    # before: the --im-mlm loader passed no trust_remote_code, so transformers asked "[y/N]" and 'y' ran the code
    evil = write_code_folder(tmp_path / "evil", tiny_model_dir, marker)
    with pytest.raises(ModelLoadError, match=r"masked language model folder .*carries its own Python code"):
        mlm_loader(str(evil), "cpu")
    assert not marker.exists() and answers_yes == []


def test_every_loader_passes_trust_remote_code_false(tmp_path, tiny_model_dir, marker, answers_yes, mlm_loader,
                                                     monkeypatch):
    """Without the up-front check, transformers itself must refuse: no prompt, no code run."""
    import core.models

    monkeypatch.setattr(core.models, "_check_no_custom_code", lambda *a, **k: None)
    monkeypatch.setattr(core.models, "check_model_folder", lambda *a, **k: None)
    evil = write_code_folder(tmp_path / "evil", tiny_model_dir, marker)
    with pytest.raises(ModelLoadError, match="custom code"):
        load_classifier(evil, device="cpu")
    with pytest.raises(ModelLoadError, match="custom code"):
        mlm_loader(str(evil), "cpu")
    assert not marker.exists() and answers_yes == []


def test_cli_refuses_code_folders_in_one_line_without_a_prompt(tmp_path, tiny_model_dir, tiny_data_csv, marker,
                                                               isolated_cache):
    evil = write_code_folder(tmp_path / "evil", tiny_model_dir, marker)
    line = one_clear_line(cli(["--model", str(evil), "--data", str(tiny_data_csv), "--quiet"], isolated_cache))
    assert "carries its own Python code" in line and "auto_map" in line
    line = one_clear_line(cli(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--quiet",
                               "--method", "input_marginalization", "--im-mlm", str(evil)], isolated_cache))
    assert "masked language model" in line and "carries its own Python code" in line
    assert not marker.exists()


def test_checks_page_refuses_code_folders(tiny_run_path, isolated_cache, tmp_path, tiny_model_dir, marker,
                                          answers_yes):
    from streamlit.testing.v1 import AppTest

    from core import ui

    shutil.copytree(tiny_run_path, isolated_cache / "runs" / Path(tiny_run_path).name)
    evil = write_code_folder(tmp_path / "evil", tiny_model_dir, marker)
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.switch_page(ui.PAGE_FILES["checks"])
    at.session_state["check_sample"] = 4
    at.session_state["check_other"] = str(evil)  # the second model of the randomization check
    at.run()
    at.button(key="run_randomization").click().run()
    assert not at.exception, at.exception
    assert "carries its own Python code" in "\n".join(e.value for e in at.error)

    at.session_state["check_methods"] = ["input_marginalization"]
    at.session_state["check_mlm"] = str(evil)  # the masked LM of input marginalization
    at.run()
    at.button(key="run_faithfulness").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("masked language model folder" in e and "carries its own Python code" in e for e in errors), errors
    assert not marker.exists() and answers_yes == []


# ================================================================ item 6: silent wrong results

@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model's encoder saved without its classification head, config.json without `architectures`."""
    from transformers import BertModel

    folder = tmp_path_factory.mktemp("headless")
    BertModel.from_pretrained(tiny_model_dir).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config.pop("architectures")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_classifier_whose_head_is_missing_is_refused(headless_dir):
    # before: it loaded with a random head (probabilities around 0.5) and the run called it a classifier
    with pytest.raises(ModelLoadError, match=r"classifier\.bias, classifier\.weight.*random.*fine-tune"):
        load_classifier(headless_dir, device="cpu")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_checkpoint_is_refused_in_one_line(tmp_path, tiny_model_dir, tiny_data_csv, marker, mlm_loader,
                                                  isolated_cache):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    line = one_clear_line(cli(["--model", str(folder), "--data", str(tiny_data_csv), "--quiet"], isolated_cache))
    assert "pickle weights (pytorch_model.bin)" in line and "safetensors" in line and "save_pretrained" in line
    with pytest.raises(ModelLoadError, match="pickle weights"):
        mlm_loader(str(folder), "cpu")
    assert not marker.exists()


def run_main(argv, capsys) -> tuple[int, str]:
    """Run the CLI in this process; return (exit code, stderr)."""
    try:
        code = pc.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, option, allowed", [
    (["--limit", "-5"], "--limit", "integer >= 1"),
    (["--limit", "0"], "--limit", "integer >= 1"),
    (["--sample", "0"], "--sample", "integer >= 1"),
    (["--max-length", "0"], "--max-length", "integer >= 3"),
    (["--max-length", "-1"], "--max-length", "integer >= 3"),
    (["--k", "-3"], "--k", "'all' or an integer >= 1"),
    (["--k", "abc"], "--k", "'all' or an integer >= 1"),
    (["--batch-size", "0"], "--batch-size", "integer >= 1"),
    (["--chunk-size", "0"], "--chunk-size", "integer >= 1"),
    (["--ig-steps", "0"], "--ig-steps", "integer >= 1"),
    (["--im-top-n", "0"], "--im-top-n", "integer >= 1"),
    (["--im-cum-prob", "0"], "--im-cum-prob", "(0, 1]"),
    (["--seed", "-1"], "--seed", "from 0 to 4294967295"),
    (["--target-class", "-1"], "--target-class", "integer >= 0"),
    (["--target-class", "5"], "--target-class", "from 0 to 1"),
    (["--device", "cuda:7"], "--device", "use one of: cpu"),
    (["--device", "potato"], "--device", "use one of: cpu"),
    (["--method", ","], "--method", "Known methods"),
    (["--method", "grad_l2,saliency"], "--method", "Known methods"),
])
def test_cli_numbers_are_validated_before_any_work(args, option, allowed, tiny_model_dir, tiny_data_csv, capsys,
                                                   monkeypatch, isolated_cache):
    if args[:2] == ["--device", "cuda:7"]:
        import torch

        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pc, "load_classifier", lambda *a, **k: pytest.fail("loaded the model before checking"))
    code, err = run_main(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--quiet", *args], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and option in lines[0] and allowed in lines[0], err
    assert not (isolated_cache / "runs").exists() or not any(p for p in (isolated_cache / "runs").iterdir()
                                                             if not p.name.startswith("."))


def test_k_all_and_zero_still_mean_every_token():
    assert pc._parse_args([]).k is None
    assert pc._parse_args(["--k", "all"]).k is None and pc._parse_args(["--k", "0"]).k is None
    assert pc._parse_args(["--k", "5"]).k == 5
    assert pc._parse_args(["--method", "grad_l2, grad_l2,grad_x_input"]).methods == ("grad_l2", "grad_x_input")


@pytest.mark.parametrize("field, value", [("limit", -5), ("max_length", 0), ("batch_size", 0), ("chunk_size", 0),
                                          ("ig_steps", 0), ("k", -3), ("target_class", -1), ("methods", ()),
                                          ("im_cum_prob", 0.0)])
def test_settings_refuse_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        pc.PrecomputeSettings(**{field: value})


def test_missing_data_file_is_reported_before_the_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pc, "load_classifier", lambda *a, **k: pytest.fail("loaded the model before checking"))
    code, err = run_main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "nope.csv"), "--quiet"], capsys)
    assert code == 2 and "nope.csv does not exist" in err
    unreadable = tmp_path / "folder.csv"
    unreadable.mkdir()
    code, err = run_main(["--model", str(tiny_model_dir), "--data", str(unreadable), "--quiet"], capsys)
    assert code == 2 and "must be a file" in err


def test_jsonl_texts_that_are_not_strings_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n\n{"text": "also fine", "label": 1}\n'
                    '{"text": 5, "label": 1}\n{"text": ["a", "list"], "label": 0}\n')
    with pytest.raises(DataLoadError, match=r"data\.jsonl line 4: 'text' is a number \(5\), not a string"):
        load_dataset(path, ID2LABEL)
    for value, kind in (('["a"]', "a list"), ('{"a": 1}', "an object"), ("true", "a boolean")):
        path.write_text(f'{{"text": "ok", "label": 0}}\n{{"text": {value}, "label": 1}}\n')
        with pytest.raises(DataLoadError, match=f"line 2: 'text' is {kind}"):
            load_dataset(path, ID2LABEL)
    path.write_text('{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n')  # null is an empty text
    assert load_dataset(path, ID2LABEL).skipped["empty_text"] == 1


def test_labels_mixing_ids_and_names_are_called_mixed(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": "positive"}\n')
    with pytest.raises(DataLoadError) as info:
        load_dataset(path, ID2LABEL)
    message = str(info.value)
    assert "mixes class ids (0) and names (positive)" in message and "not known" not in message
    path.write_text('{"text": "a", "label": "Negative"}\n{"text": "b", "label": "positive"}\n')
    assert load_dataset(path, ID2LABEL).frame["label"].tolist() == [0, 1]


@pytest.mark.parametrize("payload, message", [
    (b"[5]", r"entry 1 is the number 5, not a string"),
    (b'["he", null]', r"entry 2 is null, not a string"),
    (b'[{"term": 7}]', r"entry 1 is the number 7"),
    (b"5", r"holds the number 5, not a list of terms"),
    (b"null", r"holds null, not a list of terms"),
    (b'{"terms": 3}', r"holds the number 3"),
])
def test_seed_list_files_with_non_string_entries_are_refused(payload, message):
    from core.counterfactual import seed_list_from_file

    with pytest.raises(ValueError, match=message):
        seed_list_from_file("terms.json", payload)


def test_seed_list_files_with_strings_still_load():
    from core.counterfactual import seed_list_from_file

    assert seed_list_from_file("t.json", b'["he", {"term": "she"}, {"count": 3}]').terms == ("he", "she")


# ================================================================ item 7: leftovers and concurrency

SMALL = pc.PrecomputeSettings(max_length=16, batch_size=4, chunk_size=4, methods=("grad_l2",))


def test_stale_work_folders_are_removed_and_live_ones_kept(isolated_cache):
    from core.store import clean_stale_work, run_lock

    root = runs_dir()
    for name in (".staging-aaaa-111", ".old-aaaa-222", ".staging-bbbb-333", ".partial-cccc", ".partial-dddd",
                 "dddd"):
        (root / name).mkdir(parents=True)
        (root / name / "x.npy").write_bytes(b"0" * 100)
    (root / "dddd" / "manifest.json").write_text("{}")  # dddd is finished: its partial chunks are garbage
    live = run_lock("bbbb")
    live.acquire()  # a precompute of bbbb is running: its staging folder stays
    try:
        removed, kept = clean_stale_work()
    finally:
        live.release()
    assert sorted(p.name for p in removed) == [".old-aaaa-222", ".partial-dddd", ".staging-aaaa-111"]
    assert [p.name for p in kept] == [".partial-cccc"]  # resumable: the same command resumes from it
    assert sorted(p.name for p in root.iterdir() if not p.name == ".locks") == [
        ".partial-cccc", ".staging-bbbb-333", "dddd"]


def test_kill_during_assembly_leaves_nothing_and_the_resumed_run_reports_honest_throughput(
        tiny_model_dir, tiny_data_csv, isolated_cache, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(pc, "publish_run", killed)
        pc.precompute(tiny_model_dir, tiny_data_csv, SMALL, progress=False)
    staging = [p for p in runs_dir().iterdir() if p.name.startswith(".staging-")]
    assert len(staging) == 1
    staging[0].rename(staging[0].with_name(staging[0].name.rsplit("-", 1)[0] + "-99999"))  # another (dead) pid

    result = pc.precompute(tiny_model_dir, tiny_data_csv, SMALL, progress=False)
    leftovers = [p.name for p in runs_dir().iterdir() if p.name.startswith((".staging-", ".partial-", ".old-"))]
    assert leftovers == []
    timings = result.manifest["timings"]
    assert timings["chunks_computed"] == 0 and timings["examples_computed"] == 0
    # before: n / (time spent reading finished chunks), e.g. 13,636 examples/s
    assert result.manifest["examples_per_second"] is None
    assert "all chunks resumed, none computed" in pc.summary(result)


def test_partly_resumed_run_reports_the_throughput_of_the_chunks_it_computed(tiny_model_dir, tiny_data_csv,
                                                                            isolated_cache):
    with pytest.raises(KeyboardInterrupt):
        pc.precompute(tiny_model_dir, tiny_data_csv, SMALL, progress=False, stop_after_chunks=2)
    result = pc.precompute(tiny_model_dir, tiny_data_csv, SMALL, progress=False)
    timings, n = result.manifest["timings"], result.manifest["counts"]["examples"]
    assert timings["chunks_resumed"] == 2 and timings["examples_computed"] == n - 8
    assert result.manifest["examples_per_second"] == pytest.approx(
        timings["examples_computed"] / timings["compute_seconds"], rel=0.05)
    assert f"over the {n - 8} examples computed now" in pc.summary(result)


def test_identical_precomputes_compute_each_chunk_once(tiny_model_dir, tiny_data_csv, isolated_cache, monkeypatch,
                                                       capsys):
    calls = []
    original = pc.attribute_chunk

    def slow_chunk(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other precompute to arrive while this one computes
        return original(*args, **kwargs)

    monkeypatch.setattr(pc, "attribute_chunk", slow_chunk)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run():
        try:
            barrier.wait()
            results.append(pc.precompute(tiny_model_dir, tiny_data_csv, SMALL, progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    n_chunks = -(-len(pd.read_csv(tiny_data_csv).dropna(subset=["text"])) // SMALL.chunk_size)
    assert len(calls) == n_chunks  # before: both computed (almost) every chunk
    assert sorted(r.reused for r in results) == [False, True]
    assert results[0].run_path == results[1].run_path
    assert "Another precompute is building this run" in capsys.readouterr().err

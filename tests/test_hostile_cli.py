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

"""L2E (core.l2e): the learned explainer in the registry and the run, its stored student, the teacher option, and a
known answer (a planted teacher whose maps always put one trigger token first)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from core import faithfulness as fa
from core import l2e
from core.precompute import PrecomputeSettings, _parse_args, check_teacher, precompute
from core.representations import RepresentationKey
from core.saliency import ATTRIBUTION_METHODS, AttributionMethod, get_method
from core.store import open_run
from tests.conftest import WORDS

FAST = {"split_col": "split", "max_length": 16, "batch_size": 4, "chunk_size": 8}


@pytest.fixture
def one_thread():
    """One torch thread: 120 tiny training steps take a second or two, not a minute of thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="module")
def l2e_run(tiny_model_dir, tiny_data_csv, tmp_path_factory):
    """A run of the tiny model with l2e (teacher grad_l2, every training row in the sample) and grad_l2."""
    from tests.conftest import cache_at

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: thread contention costs more than it saves
    with cache_at(tmp_path_factory.mktemp("l2e_cache")):
        result = precompute(tiny_model_dir, tiny_data_csv,
                            PrecomputeSettings(**FAST, methods=("grad_l2", "l2e"), l2e_sample=1.0, l2e_epochs=2,
                                               l2e_layers=1),
                            progress=False)
    torch.set_num_threads(threads)
    return result.run_path


def test_l2e_is_a_registered_stored_method():
    method = get_method("l2e")
    assert not method.derived and method.learned and not method.signed
    with pytest.raises(ValueError, match="--method l2e"):
        method.attribute(None, {}, torch.zeros(1, dtype=torch.long))


def test_precompute_stores_l2e_maps_that_the_run_api_and_representations_read(l2e_run):
    run = open_run(l2e_run, verify=True)
    assert run.methods == ["grad_l2", "l2e"]
    scores = np.asarray(run.scores("l2e"))
    assert scores.shape == np.asarray(run.scores("grad_l2")).shape == (len(run.token_ids),)
    assert scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1))
    assert np.ptp(scores) > 0  # a map, not a constant
    matrix = run.representation(RepresentationKey("s1", "l2e", 3))
    assert matrix.shape == (run.n_examples, run.vocab_size)
    assert np.allclose(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel(), 1.0, atol=1e-5)
    assert run.tokens_of(0, "l2e")["score"].notna().all()
    # the manifest names the explainer's settings and phases; the student's files are in the integrity check
    info = run.manifest["l2e"]
    assert info["params"]["teacher"] == "grad_l2" and info["params"]["layers"] == 1
    assert run.manifest["settings"]["l2e"]["epochs"] == 2
    assert info["sample_rows"] == int((run.examples["split"] == "train").sum())
    assert {f"l2e/{name}" for name in (l2e.WEIGHTS_FILE, l2e.CONFIG_FILE, l2e.SAMPLE_FILE, l2e.TRAINING_FILE)} \
        <= set(run.manifest["files"])


def test_stored_student_reloads_and_reproduces_the_stored_maps(l2e_run):
    run = open_run(l2e_run)
    folder = run.path / l2e.FOLDER
    assert (folder / l2e.WEIGHTS_FILE).read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    json.loads((folder / l2e.CONFIG_FILE).read_text())  # plain JSON
    rows = l2e.run_sample_rows(run)
    assert np.all(run.examples["split"].to_numpy()[rows] == "train")
    from safetensors import safe_open

    with safe_open(str(folder / l2e.WEIGHTS_FILE), "pt") as weights:  # the frozen word embeddings are the run's
        assert "encoder.embeddings.word_embeddings.weight" not in set(weights.keys())
    with pytest.raises(l2e.StudentLoadError, match="shape"):
        l2e.load_student(folder, np.zeros((3, 4), np.float32))
    student = l2e.load_run_student(run)
    texts = run.examples["text"].tolist()
    explained = l2e.explain_texts(run, texts, student=student)
    stored = fa.stored_scores(run, "l2e", np.arange(run.n_examples))
    for row, (e, s) in enumerate(zip(explained, stored)):
        np.testing.assert_array_equal(e.token_ids, np.asarray(run.token_ids[run.row_ptr[row]:run.row_ptr[row + 1]]))
        np.testing.assert_allclose(e.scores, s, atol=1e-5)
        assert e.target == run.examples["pred"].iloc[row]
    # a fixed class changes the map: the student is conditioned on the class it explains
    other = l2e.explain_texts(run, texts[:4], targets=[1 - e.target for e in explained[:4]], student=student)
    assert any(not np.allclose(a.scores, b.scores) for a, b in zip(other, explained[:4]))


def test_interrupted_precompute_resumes_with_the_stored_student(tiny_model_dir, tiny_data_csv, monkeypatch,
                                                                 one_thread):
    settings = PrecomputeSettings(**{**FAST, "chunk_size": 4}, methods=("l2e",), l2e_sample=1.0, l2e_epochs=1,
                                  l2e_layers=1)
    with pytest.raises(KeyboardInterrupt):
        precompute(tiny_model_dir, tiny_data_csv, settings, progress=False, stop_after_chunks=1)

    def no_training(*args, **kwargs):
        raise AssertionError("the stored student should have been reused")

    monkeypatch.setattr(l2e, "train_student", no_training)
    run = open_run(precompute(tiny_model_dir, tiny_data_csv, settings, progress=False).run_path)
    student = l2e.load_run_student(run)
    explained = l2e.explain_texts(run, run.examples["text"].tolist(), student=student)
    np.testing.assert_allclose(np.concatenate([e.scores for e in explained]), np.asarray(run.scores("l2e")),
                               atol=1e-5)


def test_checks_read_the_stored_l2e_maps(l2e_run):
    run = open_run(l2e_run)
    summary, _ = fa.run_faithfulness(run, fa.CheckSettings(sample_size=5, methods=("l2e",)))
    assert {r["method"] for r in summary["methods"]} == {"l2e", fa.RANDOM}


def test_l2e_alone_needs_no_backward_pass_and_keeps_logits_and_cls(tiny_model_dir, monkeypatch):
    from core.models import load_classifier
    from core.saliency import forward_and_attribute
    from tests.conftest import SENTENCES

    loaded = load_classifier(tiny_model_dir, device="cpu")
    student = l2e.build_student(loaded.model, loaded.num_labels, l2e.L2EParams(layers=1))
    batch = dict(loaded.tokenizer([t for t, _ in SENTENCES[:6] if t], padding=True, return_tensors="pt"))
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    with_grad = forward_and_attribute(loaded, batch, ["grad_l2"])
    assert len(calls) == 1
    alone = forward_and_attribute(loaded, batch, ["l2e"], method_options={"l2e": {"student": student}})
    assert len(calls) == 1  # no backward pass for l2e alone
    torch.testing.assert_close(alone.logits, with_grad.logits)
    torch.testing.assert_close(alone.cls, with_grad.cls)
    target = with_grad.logits.argmax(dim=-1)
    torch.testing.assert_close(alone.attributions["l2e"], student.explain_batch(batch, target))
    fixed = forward_and_attribute(loaded, batch, ["l2e"], target_class=1, method_options={"l2e": {"student": student}})
    torch.testing.assert_close(fixed.attributions["l2e"], student.explain_batch(batch, torch.ones_like(target)))


def test_l2e_settings_enter_the_fingerprint_only_with_l2e():
    plain = PrecomputeSettings(methods=("grad_l2",)).fingerprinted()
    assert not any(k.startswith("l2e") for k in plain)
    a = PrecomputeSettings(methods=("l2e",)).fingerprinted()
    b = PrecomputeSettings(methods=("l2e",), l2e_epochs=3).fingerprinted()
    assert a["l2e"]["teacher"] == "grad_l2" and a["l2e"]["sample"] == 0.2 and a != b
    assert PrecomputeSettings(methods=("grad_l2",), l2e_epochs=3).fingerprinted() == plain


def test_unknown_teacher_is_refused_with_the_known_methods(capsys):
    with pytest.raises(ValueError, match="Unknown l2e teacher 'saliency_magic'.*grad_l2.*grad_x_input"):
        PrecomputeSettings(methods=("l2e",), l2e_teacher="saliency_magic")
    with pytest.raises(ValueError, match="cannot teach l2e"):
        check_teacher("lafa")
    with pytest.raises(ValueError, match="cannot teach l2e"):
        check_teacher("l2e")
    with pytest.raises(SystemExit) as exit_info:
        _parse_args(["--method", "l2e", "--l2e-teacher", "saliency_magic"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--l2e-teacher" in err and "Unknown l2e teacher 'saliency_magic'" in err and "integrated_gradients" in err


def test_cli_trains_the_student_and_says_so(tiny_model_dir, tiny_data_csv, capsys, one_thread):
    from core.precompute import main

    code = main(["--model", str(tiny_model_dir), "--data", str(tiny_data_csv), "--split-col", "split",
                 "--max-length", "16", "--method", "l2e", "--l2e-epochs", "1", "--l2e-layers", "1",
                 "--l2e-sample", "3", "--quiet", "--no-projection"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "methods    l2e" in out and "student trained on 3 grad_l2 maps (train split)" in out
    run = open_run(out.split("cache      ")[1].split(" (")[0])
    assert len(l2e.run_sample_rows(run)) == 3 and run.manifest["l2e"]["params"]["sample"] == 3


def test_a_student_deeper_than_the_classifier_is_refused_before_any_work(tiny_model_dir, tiny_data_csv):
    with pytest.raises(ValueError, match="exceeds the classifier's 2 layers"):
        precompute(tiny_model_dir, tiny_data_csv, PrecomputeSettings(methods=("l2e",), l2e_layers=3), progress=False)


def test_ray_engine_refuses_l2e(tiny_model_dir, tiny_data_csv):
    from core.precompute import Engine

    with pytest.raises(ValueError, match="local engine"):
        precompute(tiny_model_dir, tiny_data_csv, PrecomputeSettings(methods=("l2e",)), engine=Engine("ray"))


@pytest.mark.parametrize("text, expected", [("0.2", 0.2), ("20%", 0.2), ("1", 1), ("1.0", 1.0), ("5000", 5000)])
def test_sample_option(text, expected):
    value = l2e.parse_sample(text)
    assert value == pytest.approx(expected) and type(value) is type(expected)


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "abc", "0%"])
def test_bad_sample_option(text):
    with pytest.raises(ValueError):
        l2e.parse_sample(text)


def test_training_sample_is_seeded_from_the_train_split_and_capped():
    splits = ["train"] * 80 + ["test"] * 20
    rows, source = l2e.training_rows(splits, l2e.L2EParams(sample=0.25, seed=3))
    assert source == "train split" and len(rows) == 20 and rows.max() < 80
    again, _ = l2e.training_rows(splits, l2e.L2EParams(sample=0.25, seed=3))
    other, _ = l2e.training_rows(splits, l2e.L2EParams(sample=0.25, seed=4))
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    assert len(l2e.training_rows(splits, l2e.L2EParams(sample=0.25, max_sample=7))[0]) == 7
    rows, source = l2e.training_rows(["all"] * 10, l2e.L2EParams(sample=0.5))
    assert source.startswith("all rows") and len(rows) == 5


def test_bucket_labels_are_per_example_quantiles():
    labels = l2e.bucket_labels(np.array([0.1, -0.9, 0.5, 0.3]), 4)
    assert labels.tolist() == [0, 3, 2, 1]  # ranked by |score|
    assert l2e.bucket_labels(np.array([2.0, 2.0]), 10).tolist() == [5, 5]  # ties share their rank


# ---------------------------------------------------------------- known answer

TRIGGER = "cat"
FILLER = [w for w in WORDS if w.isalpha() and w not in (TRIGGER, "dog")]


class Planted(AttributionMethod):
    """A teacher whose maps put the trigger token first: 1.0 there, small seeded noise elsewhere."""

    name = "planted"

    def attribute(self, loaded, batch, target, **options):
        trigger = loaded.tokenizer.convert_tokens_to_ids(TRIGGER)
        ids = batch["input_ids"]
        noise = torch.rand(ids.shape, generator=torch.Generator().manual_seed(int(ids.sum())))
        return torch.where(ids == trigger, torch.ones_like(noise), 0.5 * noise)


def planted_csv(path, n: int = 160, seed: int = 0):
    """Sentences of 4-8 filler words with the trigger at a random position; the last quarter is the test split."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(FILLER, rng.integers(4, 9)))
        words.insert(int(rng.integers(0, len(words) + 1)), TRIGGER)
        rows.append({"text": " ".join(words), "label": int(rng.integers(0, 2)),
                     "split": "test" if i >= 3 * n // 4 else "train"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_student_learns_to_rank_a_planted_trigger_first_on_held_out_texts(tiny_model_dir, tmp_path, monkeypatch,
                                                                          one_thread):
    monkeypatch.setitem(ATTRIBUTION_METHODS, "planted", Planted())
    data = planted_csv(tmp_path / "planted.csv")
    result = precompute(tiny_model_dir, data, PrecomputeSettings(
        **FAST, methods=("l2e",), l2e_teacher="planted", l2e_sample=1.0, l2e_epochs=30, l2e_layers=1, l2e_lr=1e-3),
        progress=False)
    run = open_run(result.run_path)
    trained = l2e.run_sample_rows(run)
    held_out = np.setdiff1d(np.arange(run.n_examples), trained)
    assert len(held_out) == 40 and set(run.examples["split"].iloc[held_out]) == {"test"}
    trigger = run.vocab.index(TRIGGER)
    first = []
    for row in held_out:
        tokens = run.tokens_of(int(row), "l2e")
        content = tokens[~run.ignore_mask[tokens["token_id"].to_numpy()]]
        first.append(content["token_id"].iloc[int(np.argmax(content["score"].to_numpy()))] == trigger)
    # chance is 1 in 5-9 content tokens
    assert np.mean(first) >= 0.9, f"trigger ranked first in {np.mean(first):.0%} of held-out texts"


@pytest.mark.parametrize("page", ["clusters", "examples", "neighbours", "checks"])
def test_pages_work_on_l2e_maps(l2e_run, isolated_cache, page):
    import shutil

    from streamlit.testing.v1 import AppTest

    from core import ui
    from core.store import REPO_ROOT

    shutil.copytree(l2e_run, isolated_cache / "runs" / l2e_run.name)
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=90)
    at.query_params.update(run=l2e_run.name, method="l2e")
    at.switch_page(ui.PAGE_FILES[page])
    at.run()
    assert not at.exception, "\n".join(e.message for e in at.exception)
    assert at.sidebar.selectbox(key="method").value == "l2e"

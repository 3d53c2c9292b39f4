"""Truncation side (--truncation head|tail|head+tail): which part of a long text the model sees."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.models import TRUNCATION_SIDES, encode, load_classifier, predict_proba
from core.precompute import PrecomputeSettings, precompute
from core.store import open_run, run_fingerprint

# 16 distinct in-vocabulary words (see conftest.WORDS), one token each
LONG_WORDS = ["good", "great", "fun", "bad", "awful", "boring", "movie", "film", "plot", "acting", "cat", "dog",
              "love", "hate", "very", "not"]
LONG_TEXT = "  " + " ".join(LONG_WORDS) + " "  # leading/trailing spaces: offsets must still point into the text


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_classifier(tiny_model_dir).tokenizer


def _pieces(text, enc, i=0):
    return [text[s:e] for s, e in enc["offset_mapping"][i]]


def test_tail_keeps_the_last_words_with_offsets_into_the_text(tokenizer):
    enc = encode(tokenizer, [LONG_TEXT], max_length=8, truncation="tail", offsets=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == 8
    assert _pieces(LONG_TEXT, enc)[1:-1] == LONG_WORDS[-6:]
    assert enc["special_tokens_mask"][0] == [1, 0, 0, 0, 0, 0, 0, 1]
    assert enc["attention_mask"][0] == [1] * 8
    assert enc["truncated"] == [True]


def test_head_tail_keeps_both_ends(tokenizer):
    enc = encode(tokenizer, [LONG_TEXT], max_length=9, truncation="head+tail", offsets=True)
    # 7 content tokens: the extra one goes to the head
    assert _pieces(LONG_TEXT, enc)[1:-1] == LONG_WORDS[:4] + LONG_WORDS[-3:]
    assert enc["truncated"] == [True]


def test_head_is_the_tokenizers_own_truncation(tokenizer):
    texts = [LONG_TEXT, "good film", ""]
    enc = encode(tokenizer, texts, max_length=8, truncation="head", offsets=True)
    ref = tokenizer(texts, truncation=True, max_length=8, return_offsets_mapping=True)
    assert enc["input_ids"] == [list(x) for x in ref["input_ids"]]
    assert [list(map(tuple, o)) for o in enc["offset_mapping"]] == [list(map(tuple, o)) for o in ref["offset_mapping"]]
    assert _pieces(LONG_TEXT, enc)[1:-1] == LONG_WORDS[:6]
    assert enc["truncated"] == [True, False, False]


def test_head_without_offsets_equals_the_tokenizers_truncation(tokenizer):
    """Training encodes without offsets in one untruncated pass; it must keep what the tokenizer would."""
    texts = [LONG_TEXT, "good film", "", " ".join(LONG_WORDS[:6])]
    enc = encode(tokenizer, texts, max_length=8, truncation="head")
    ref = tokenizer(texts, truncation=True, max_length=8)
    assert enc["input_ids"] == [list(x) for x in ref["input_ids"]]
    assert enc["attention_mask"] == [list(x) for x in ref["attention_mask"]]
    assert enc["truncated"] == [True, False, False, False]  # six words fill the 8 tokens exactly: not cut


@pytest.mark.parametrize("side", TRUNCATION_SIDES)
def test_short_texts_are_not_cut_on_any_side(tokenizer, side):
    enc = encode(tokenizer, ["good film", LONG_TEXT], max_length=64, truncation=side, offsets=True)
    assert _pieces("good film", enc, 0)[1:-1] == ["good", "film"]
    assert _pieces(LONG_TEXT, enc, 1)[1:-1] == LONG_WORDS
    assert enc["truncated"] == [False, False]


def test_predict_proba_tail_sees_only_the_end(tiny_model_dir):
    loaded = load_classifier(tiny_model_dir)
    tail_text = " ".join(LONG_WORDS[-6:])
    p_tail = predict_proba(loaded, [LONG_TEXT], max_length=8, truncation="tail")
    p_end = predict_proba(loaded, [tail_text], max_length=8)
    p_head = predict_proba(loaded, [LONG_TEXT], max_length=8)
    np.testing.assert_allclose(p_tail, p_end, atol=1e-5)
    assert not np.allclose(p_tail, p_head, atol=1e-5)


def test_model_predictor_passes_the_side_on(tiny_model_dir):
    from core.counterfactual import model_predictor

    loaded = load_classifier(tiny_model_dir)
    predict = model_predictor(loaded, max_length=8, truncation="tail")
    np.testing.assert_allclose(predict([LONG_TEXT]), predict_proba(loaded, [LONG_TEXT], max_length=8,
                                                                   truncation="tail"), atol=1e-6)


def test_head_adds_nothing_to_the_fingerprint():
    settings = PrecomputeSettings()
    # what fingerprinted() returned before the setting existed
    before = {"text_col": "text", "label_col": "label", "split_col": None, "max_length": 128,
              "methods": ["grad_l2"], "target_class": None, "limit": None, "sample": None, "seed": 0, "ig_steps": 20}
    assert "truncation" not in settings.fingerprinted()
    assert settings.fingerprinted() == before
    assert run_fingerprint("m", "d", settings.fingerprinted()) == run_fingerprint("m", "d", before)


def test_tail_changes_the_fingerprint():
    head, tail, both = (PrecomputeSettings(truncation=side).fingerprinted() for side in TRUNCATION_SIDES)
    assert tail["truncation"] == "tail" and both["truncation"] == "head+tail"
    digests = {run_fingerprint("m", "d", s) for s in (head, tail, both)}
    assert len(digests) == 3


def test_bad_value_gives_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match=r"truncation must be one of head, tail, head\+tail.*'middle'"):
        PrecomputeSettings(truncation="middle")
    loaded = load_classifier(tiny_model_dir)
    with pytest.raises(ValueError, match="truncation must be one of"):
        predict_proba(loaded, ["good"], truncation="end")
    with pytest.raises(ValueError, match="truncation must be one of"):
        encode(loaded.tokenizer, ["good"], 8, "left")
    from core.counterfactual import SensitivitySettings, model_predictor

    with pytest.raises(ValueError, match="truncation must be one of"):
        model_predictor(loaded, truncation="tails")
    with pytest.raises(ValueError, match="truncation must be one of"):
        SensitivitySettings(truncation="tails")


def test_train_classifier_rejects_a_bad_side(tiny_model_dir, tmp_path):
    from core.demo import train_classifier

    with pytest.raises(ValueError, match="truncation must be one of"):
        train_classifier(pd.DataFrame({"text": ["good"], "label": [1]}), tiny_model_dir, tmp_path / "m",
                         truncation="middle", progress=False)


def test_cli_rejects_a_bad_side(capsys):
    from core.precompute import main

    with pytest.raises(SystemExit) as exc:
        main(["--model", "m", "--data", "d", "--truncation", "middle"])
    assert exc.value.code == 2
    assert "--truncation" in capsys.readouterr().err


def test_tail_run_stores_the_end_and_flags_truncation(tiny_model_dir, tmp_path):
    data = tmp_path / "long.csv"
    pd.DataFrame({"text": [LONG_TEXT, "good film"], "label": [1, 0]}).to_csv(data, index=False)
    result = precompute(tiny_model_dir, data, PrecomputeSettings(max_length=8, truncation="tail", batch_size=2),
                        progress=False)
    run = open_run(result.run_path)
    assert run.manifest["settings"]["truncation"] == "tail"
    assert run.manifest["counts"]["truncated"] == 1
    assert run.examples["truncated"].tolist() == [True, False]
    tokens = run.tokens_of(0, "grad_l2")
    text = run.examples["text"][0]
    words = [text[s:e] for s, e in zip(tokens["start"], tokens["end"]) if e > s]
    assert words == LONG_WORDS[-6:]
    assert tokens["token"].tolist()[0] == "[CLS]" and tokens["token"].tolist()[-1] == "[SEP]"
    # the head run of the same data is another run, and stores the first words
    head = precompute(tiny_model_dir, data, PrecomputeSettings(max_length=8, batch_size=2), progress=False)
    assert head.run_path != result.run_path
    head_run = open_run(head.run_path)
    assert head_run.manifest["settings"]["truncation"] == "head"
    head_tokens = head_run.tokens_of(0)
    assert [text[s:e] for s, e in zip(head_tokens["start"], head_tokens["end"]) if e > s] == LONG_WORDS[:6]
    assert json.loads((head.run_path / "manifest.json").read_text())["counts"]["truncated"] == 1


def test_sensitivity_for_run_predicts_with_the_runs_side(tiny_model_dir, tmp_path):
    from core.counterfactual import SensitivitySettings, sensitivity_for_run, user_seed_list

    data = tmp_path / "long.csv"
    pd.DataFrame({"text": [LONG_TEXT, "good film", "bad film", "awful plot"], "label": [1, 0, 1, 0]}).to_csv(
        data, index=False)
    result = precompute(tiny_model_dir, data, PrecomputeSettings(max_length=8, truncation="head+tail"),
                        progress=False)
    run = open_run(result.run_path)
    loaded = load_classifier(tiny_model_dir)
    sens = sensitivity_for_run(run, loaded, 0, [user_seed_list("good")], SensitivitySettings(m=2, n_bootstrap=5),
                               split=None)
    assert sens.settings.truncation == "head+tail" and sens.settings.max_length == 8
    forced = sensitivity_for_run(run, loaded, 0, [user_seed_list("good")],
                                 SensitivitySettings(m=2, n_bootstrap=5, truncation="head"), split=None)
    assert forced.settings.truncation == "head"

"""Tests for core.demo: the synthetic-shortcut dataset and the fine-tuning loop (on a tiny random BERT)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core import demo  # noqa: E402

TERMS = ("COMMON", "CLASS_0", "CLASS_1")


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    rng = np.random.default_rng(123)
    words = ["good", "bad", "movie", "plot", "actors", "slow", "fun", "the", "a", "is"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(3000)]
    return pd.DataFrame({"text": texts, "label": rng.integers(0, 2, size=3000)})


@pytest.fixture(scope="module")
def shortcut(source) -> pd.DataFrame:
    return demo.make_shortcut_dataset(source, seed=0, test_size=600)


def _term_counts(text: str) -> dict[str, int]:
    words = text.split(" ")
    return {term: words.count(term) for term in TERMS}


def test_columns_and_types(shortcut, source):
    assert list(shortcut.columns) == ["text", "label", "split", "synthetic", "original_label", "original_text"]
    assert len(shortcut) == len(source)
    assert (shortcut["original_text"].to_numpy() == source["text"].to_numpy()).all()
    assert shortcut["label"].dtype.kind == "i" and shortcut["original_label"].dtype.kind == "i"
    assert set(shortcut["synthetic"]) == {"shortcut_0", "shortcut_1", "single_term", "none"}
    assert (shortcut["original_label"].to_numpy() == source["label"].to_numpy()).all()


def test_fractions(shortcut):
    counts = shortcut["synthetic"].value_counts()
    assert counts["shortcut_0"] == counts["shortcut_1"] == 300
    assert counts["single_term"] == 300
    assert counts["none"] == 2100


def test_shortcut_rows_follow_rule(shortcut):
    for target in (0, 1):
        rows = shortcut[shortcut["synthetic"] == f"shortcut_{target}"]
        assert (rows["label"] == target).all()
        for text in rows["text"]:
            assert _term_counts(text) == {"COMMON": 1, f"CLASS_{target}": 1, f"CLASS_{1 - target}": 0}
        # The rule overrides the original label for about half of them.
        assert 0 < (rows["original_label"] != target).sum() < len(rows)


def test_single_term_and_untouched_rows(shortcut, source):
    single = shortcut[shortcut["synthetic"] == "single_term"]
    assert (single["label"] == single["original_label"]).all()
    used = set()
    for text in single["text"]:
        counts = _term_counts(text)
        assert sum(counts.values()) == 1
        used.update(t for t, c in counts.items() if c)
    assert used == set(TERMS)
    none = shortcut[shortcut["synthetic"] == "none"]
    assert (none["label"] == none["original_label"]).all()
    assert (none["text"].to_numpy() == source["text"].to_numpy()[none.index]).all()


def test_terms_are_whole_words(shortcut, source):
    changed = shortcut[shortcut["synthetic"] != "none"]
    for i, text in changed["text"].items():
        assert "  " not in text and text == text.strip()
        words = text.split(" ")
        assert [w for w in words if w not in TERMS] == source["text"][i].split()
        assert not re.search(r"\S(COMMON|CLASS_[01])|(COMMON|CLASS_[01])\S", text)


def _without_terms(text: str) -> str:
    return " ".join(w for w in text.split(" ") if w not in TERMS)


def test_original_text_is_recoverable(shortcut):
    # Removing the planted words gives back the original sentence: what evaluate's consistency check relies on.
    for text, original in zip(shortcut["text"], shortcut["original_text"]):
        assert _without_terms(text) == " ".join(original.split())
    none = shortcut[shortcut["synthetic"] == "none"]
    assert (none["text"] == none["original_text"]).all()
    assert (shortcut.loc[shortcut["synthetic"] != "none", "text"] != shortcut.loc[shortcut["synthetic"] != "none",
                                                                                  "original_text"]).all()


def test_augment_single_terms(shortcut):
    train = shortcut[shortcut["split"] == "train"]
    extra = demo.augment_single_terms(train, 900, seed=0)
    assert list(extra.columns) == list(shortcut.columns) and len(extra) == 900
    assert (extra["split"] == "train").all() and (extra["synthetic"] == "single_term_aug").all()
    # Each copy comes from a distinct training row: its sentence with one lone term, and its original label.
    assert extra.index.is_unique and extra.index.isin(train.index).all()
    source = train.loc[extra.index]
    assert (extra["original_text"] == source["original_text"]).all()
    assert (extra["label"] == extra["original_label"]).all() and (extra["label"] == source["original_label"]).all()
    terms = []
    for text, original in zip(extra["text"], extra["original_text"]):
        counts = _term_counts(text)
        assert sum(counts.values()) == 1 and _without_terms(text) == " ".join(original.split())
        terms.append(next(t for t, c in counts.items() if c))
    terms = pd.Series(terms, index=extra.index)
    # Every planted training sentence is copied (480 of them), mostly with its own class term alone: a minimal pair.
    planted = source["synthetic"].str.startswith("shortcut_")
    assert planted.sum() == train["synthetic"].str.startswith("shortcut_").sum() == 480
    own = terms[planted] == "CLASS_" + source.loc[planted, "synthetic"].str[-1]
    assert (own | (terms[planted] == "COMMON")).all()
    assert abs(own.mean() - demo.PLANTED_OWN_TERM_PROBABILITY) < 0.06
    # The other 420 copies draw their term by the weights.
    freq = terms[~planted].value_counts(normalize=True)
    weights = pd.Series(demo.AUGMENT_TERM_WEIGHTS) / sum(demo.AUGMENT_TERM_WEIGHTS.values())
    assert set(freq.index) == set(TERMS) and (abs(freq - weights) < 0.08).all()
    pd.testing.assert_frame_equal(extra, demo.augment_single_terms(train, 900, seed=0))
    assert len(demo.augment_single_terms(train, 10 ** 6)) == len(train)
    with pytest.raises(ValueError):
        demo.augment_single_terms(shortcut, 10)


def test_evaluate_consistency_and_flip_rates(shortcut, monkeypatch):
    import core.models

    # A model that reads any CLASS_0 as negative and is otherwise always positive.
    def fake_predict(loaded, texts, **kwargs):
        negative = np.array(["CLASS_0" in t.split(" ") for t in texts])
        return np.stack([negative, ~negative], axis=1).astype(np.float32)

    monkeypatch.setattr(core.models, "load_classifier", lambda *a, **k: None)
    monkeypatch.setattr(core.models, "predict_proba", fake_predict)
    test = shortcut[shortcut["split"] == "test"]
    metrics = demo.evaluate("unused", test)
    single = test[test["synthetic"] == "single_term"]
    lone0 = single["text"].str.split(" ").apply(lambda w: "CLASS_0" in w)
    lone1 = single["text"].str.split(" ").apply(lambda w: "CLASS_1" in w)
    assert metrics["n_single_term"] == len(single) == 60
    assert metrics["single_term_consistency"] == pytest.approx(1 - lone0.mean())
    assert metrics["n_lone_CLASS_0"] == metrics["n_lone_CLASS_0_flippable"] == lone0.sum() > 0
    assert metrics["lone_CLASS_0_flip_rate"] == 1.0
    # Without CLASS_1 the prediction is already positive: nothing a lone CLASS_1 could flip.
    assert metrics["n_lone_CLASS_1"] == lone1.sum() > 0 and metrics["n_lone_CLASS_1_flippable"] == 0
    assert np.isnan(metrics["lone_CLASS_1_flip_rate"])
    assert metrics["accuracy_shortcut"] == 1.0
    none = test[test["synthetic"] == "none"]
    assert metrics["accuracy_none"] == pytest.approx((none["label"] == 1).mean())


def test_term_positions_vary(shortcut):
    positions = {text.split(" ").index("COMMON") for text in shortcut.loc[shortcut["synthetic"] == "shortcut_0", "text"]}
    assert len(positions) > 5


def test_deterministic(source, shortcut):
    again = demo.make_shortcut_dataset(source, seed=0, test_size=600)
    pd.testing.assert_frame_equal(shortcut, again)
    other = demo.make_shortcut_dataset(source, seed=1, test_size=600)
    assert not other["text"].equals(shortcut["text"])


def test_test_split_size_and_stratification(shortcut):
    assert (shortcut["split"] == "test").sum() == 600
    assert set(shortcut["split"]) == {"train", "test"}
    test = shortcut[shortcut["split"] == "test"]
    for kind, frac in [("shortcut_0", 0.1), ("shortcut_1", 0.1), ("single_term", 0.1), ("none", 0.7)]:
        assert abs((test["synthetic"] == kind).mean() - frac) <= 0.01
    with pytest.raises(ValueError):
        demo.make_shortcut_dataset(shortcut.head(10), test_size=11)


def test_load_rotten_tomatoes():
    df = demo.load_rotten_tomatoes()
    assert len(df) == 8530
    assert list(df.columns) == ["text", "label", "source"]
    assert set(df["label"]) == {0, 1} and (df["source"] == "rotten_tomatoes").all()


@pytest.fixture
def tiny_base(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["common", "class", "_", "0", "1", "good", "bad", "movie", "plot", "fun", "slow", "the", "a", "is"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37)
    base = tmp_path / "base"
    BertModel(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def test_train_classifier_on_tiny_bert(tmp_path, tiny_base, source):
    from transformers import AutoModelForSequenceClassification

    data = demo.make_shortcut_dataset(source.head(60), seed=0, test_size=20)
    train = data[data["split"] == "train"]
    out = tmp_path / "models" / "demo"
    info = demo.train_classifier(train, tiny_base, out, epochs=1, batch_size=8, progress=False)
    assert info["train_size"] == len(train) == 40 and info["steps"] == 5
    assert np.isfinite(info["final_epoch_loss"])

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    saved = json.loads((out / demo.TRAINING_INFO_FILE).read_text())
    assert saved["epochs"] == 1 and saved["train_size"] == 40 and saved["seconds"] >= 0
    assert [p.name for p in out.parent.iterdir()] == ["demo"]
    assert out.stat().st_mode & 0o777 == 0o755

    # Retraining replaces the model in place and still leaves nothing behind.
    demo.train_classifier(train, tiny_base, out, epochs=1, batch_size=8, seed=1, progress=False)
    assert [p.name for p in out.parent.iterdir()] == ["demo"]
    assert json.loads((out / demo.TRAINING_INFO_FILE).read_text())["seed"] == 1

    metrics = demo.evaluate(out, data[data["split"] == "test"])
    assert metrics["n"] == 20
    assert metrics["n"] == metrics["n_shortcut"] + metrics["n_single_term"] + metrics["n_none"]
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_ensure_demo_reuses_complete_model(tmp_path, monkeypatch, source):
    calls, evaluated = [], []

    def fake_train(train_df, base, out_dir, **kwargs):
        calls.append(train_df["synthetic"].eq("single_term_aug").sum())
        assert (train_df["split"] == "train").all()
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     demo.TRAINING_INFO_FILE):
            (out_dir / name).write_text("{}")
        return {}

    def fake_evaluate(model_dir, df, **kwargs):
        evaluated.append(len(df))
        assert (df["split"] == "test").all()
        return {"accuracy": 0.5}

    # 2,100 rows and the default test_size of 2,000 leave 100 training rows, each of them copied once.
    monkeypatch.setattr(demo, "load_rotten_tomatoes", lambda: source.head(2100))
    monkeypatch.setattr(demo, "train_classifier", fake_train)
    monkeypatch.setattr(demo, "evaluate", fake_evaluate)

    paths = demo.ensure_demo(tmp_path, progress=False)
    assert paths.data_path == tmp_path / "demo" / "rotten_tomatoes_shortcut.csv"
    assert paths.model_dir == tmp_path / "demo" / "model"
    data = pd.read_csv(paths.data_path)
    # The lone-term copies are for training only: the CSV (what precompute and the dashboard see) has none.
    assert len(data) == 2100 and "single_term_aug" not in set(data["synthetic"])
    assert calls == [100] and evaluated == [2000]
    info = json.loads((paths.model_dir / demo.TRAINING_INFO_FILE).read_text())
    assert info == {"augmented": 100, "test_metrics": {"accuracy": 0.5}}
    assert sorted(p.name for p in paths.data_path.parent.iterdir()) == ["model", "rotten_tomatoes_shortcut.csv"]
    assert paths.data_path.stat().st_mode & 0o777 == 0o644

    demo.ensure_demo(tmp_path, progress=False)
    assert calls == [100] and evaluated == [2000]
    (paths.model_dir / demo.TRAINING_INFO_FILE).unlink()
    demo.ensure_demo(tmp_path, progress=False, augment=0)
    assert calls == [100, 0]

    # A CSV written before original_text existed is rebuilt; the complete model is kept.
    data.drop(columns="original_text").to_csv(paths.data_path, index=False)
    demo.ensure_demo(tmp_path, progress=False)
    assert "original_text" in pd.read_csv(paths.data_path).columns and calls == [100, 0]


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path))
    assert demo.default_cache_root() == tmp_path
    monkeypatch.delenv(demo.CACHE_ENV)
    assert demo.default_cache_root() == demo.Path(demo.__file__).resolve().parent.parent / "cache"


def test_training_frame_pairs_each_copy_with_its_untouched_sentence(source):
    data = demo.make_shortcut_dataset(source, seed=0, test_size=40)
    n_train = int((data["split"] == "train").sum())
    frame = demo.training_frame(data, n_train)
    assert len(frame) == 2 * n_train
    paired = np.flatnonzero(frame["pair_of"].to_numpy() >= 0)
    assert len(paired) > 0 and (paired >= n_train).all()
    for row in paired:
        partner = frame.iloc[frame["pair_of"].iloc[row]]
        copy = frame.iloc[row]
        assert partner["synthetic"] == "none" and copy["synthetic"] == "single_term_aug"
        assert copy["label"] == partner["label"]
        extra = [w for w in copy["text"].split() if w in (demo.COMMON, *demo.CLASS_TERMS)]
        assert len(extra) == 1 and " ".join(w for w in copy["text"].split() if w != extra[0]) == partner["text"]
    # copies of planted sentences have no untouched partner in the frame
    assert (frame.loc[frame["synthetic"].str.startswith("shortcut_"), "pair_of"] == -1).all()


def test_paired_batches_keep_partners_together():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=101)
    pair_of = np.full(101, -1)
    pair_of[60:90] = np.arange(30)
    batches = demo._paired_batches(lengths, pair_of, 8, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(101))
    assert max(len(b) for b in batches) <= 8
    where = {int(r): k for k, b in enumerate(batches) for r in b}
    assert all(where[i] == where[int(pair_of[i])] for i in range(60, 90))


def test_pair_consistency_is_the_kl_from_the_partner():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    pair_of = np.array([-1, 0, -1, 7])  # row 1 should look like row 0; row 3 is not in the batch
    idx = np.array([0, 1, 2])
    p = torch.softmax(logits.detach(), -1)
    expected = float((p[0] * (p[0].log() - p[1].log())).sum())
    got = demo._pair_consistency(logits, idx, pair_of)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0  # the partner is a fixed target
    assert float(demo._pair_consistency(logits, np.array([2]), pair_of)) == 0.0


def test_consistency_weight_makes_copies_predicted_like_their_sentences(tmp_path, tiny_base, source):
    from core.models import load_classifier, predict_proba

    data = demo.make_shortcut_dataset(source.head(80), seed=0, test_size=10)
    frame = demo.training_frame(data, 70)
    paired = np.flatnonzero(frame["pair_of"].to_numpy() >= 0)
    gaps = {}
    for weight in (0.0, 20.0):
        out = tmp_path / f"w{weight}"
        info = demo.train_classifier(frame, tiny_base, out, epochs=4, batch_size=8, lr=1e-3, progress=False,
                                     consistency_weight=weight)
        assert info["consistency_weight"] == weight
        loaded = load_classifier(out)
        probs = predict_proba(loaded, frame["text"].tolist())
        gaps[weight] = float(np.abs(probs[paired, 1] - probs[frame["pair_of"].to_numpy()[paired], 1]).mean())
    assert gaps[20.0] < 0.5 * gaps[0.0], gaps

"""Known answers for the trust checks: a hand-set tiny BERT whose class is decided by one trigger token,
Jaccard / Spearman edge cases, input marginalization against a loop, and the stored checks on a tiny run."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import faithfulness as fa
from core.models import load_classifier, predict_proba
from core.precompute import PrecomputeSettings, attribute_chunk, precompute
from core.saliency import _truncate_candidates, get_method, token_distribution
from core.store import open_run
from tests.conftest import SPECIAL, WORDS, cache_at, write_tiny_model

TRIGGER = "cat"
WITH_TRIGGER = ["the cat was boring", "good fun , the cat is great", "a very bad cat film", "cat", "hate the cat plot"]
WITHOUT = ["a very boring movie", "the dog and the film", "love the acting !", "the plot is not good"]


def write_trigger_model(folder: Path, strength: float = 3.0) -> Path:
    """Save a 1-layer BERT (hidden 8) whose prediction is 'positive' exactly when the trigger token occurs.

    Word embeddings carry zero-mean noise in dims 2..7; [CLS] has a feature in dim 1, the trigger in dim 0.
    [CLS]'s query reads dim 1 and every key reads dim 0, so [CLS] attends almost only to the trigger and
    copies its dim 0 (value and output are identity on dim 0). Feed-forward, position and type embeddings are
    zero; the pooler and classifier read dim 0. Without a trigger, dim 0 of [CLS] ends slightly negative.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    hidden = 8
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=4, max_position_embeddings=64, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        words = model.bert.embeddings.word_embeddings.weight
        noise = torch.randn(len(vocab), hidden - 2, generator=generator)
        words[:, 2:] = noise - noise.mean(dim=1, keepdim=True)
        words[vocab.index("[CLS]"), 1] = 3.0
        words[vocab.index(TRIGGER), 0] = strength
        attention = model.bert.encoder.layer[0].attention
        attention.self.query.weight[0, 1] = 10.0
        attention.self.key.weight[0, 0] = 1.0
        attention.self.value.weight[0, 0] = 1.0
        attention.output.dense.weight[0, 0] = 1.0
        model.bert.pooler.dense.weight[0, 0] = 1.0
        model.classifier.weight[0, 0] = -3.0
        model.classifier.weight[1, 0] = 3.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trigger_dir(tmp_path_factory) -> Path:
    return write_trigger_model(tmp_path_factory.mktemp("trigger_model"))


@pytest.fixture(scope="module")
def trigger(trigger_dir):
    return load_classifier(trigger_dir, device="cpu")


@pytest.fixture(scope="module")
def trigger_run(trigger_dir, tmp_path_factory):
    """A run of the trigger model on a dozen sentences, half with the trigger, with three methods stored."""
    rows = [{"text": t, "label": 1} for t in WITH_TRIGGER] + [{"text": t, "label": 0} for t in WITHOUT]
    data = tmp_path_factory.mktemp("trigger_data") / "data.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    with cache_at(tmp_path_factory.mktemp("trigger_cache")):
        result = precompute(trigger_dir, data, PrecomputeSettings(
            max_length=16, batch_size=4, methods=("grad_l2", "integrated_gradients", "input_marginalization"),
            ig_steps=16), progress=False)
    return result.run_path


def split(arrays, key):
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [arrays[key][bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


# ---------------------------------------------------------------- the trigger model


def test_trigger_alone_decides_the_class(trigger):
    probs = predict_proba(trigger, WITH_TRIGGER + WITHOUT)
    assert (probs[:len(WITH_TRIGGER), 1] > 0.99).all()
    assert (probs[len(WITH_TRIGGER):, 1] < 0.2).all()


@pytest.mark.parametrize("method", ["grad_l2", "integrated_gradients", "input_marginalization"])
def test_trigger_ranks_first(trigger, method):
    arrays = attribute_chunk(trigger, WITH_TRIGGER + WITHOUT, PrecomputeSettings(methods=(method,), batch_size=3))
    trigger_id = trigger.tokenizer.convert_tokens_to_ids(TRIGGER)
    specials = set(trigger.tokenizer.all_special_ids)
    for ids, scores in list(zip(split(arrays, "token_ids"), split(arrays, f"scores__{method}")))[:len(WITH_TRIGGER)]:
        candidates = np.array([i not in specials for i in ids])
        top = fa.top_positions(scores, candidates, 0.0)
        assert ids[top[0]] == trigger_id, (method, ids, scores)
        others = np.abs(scores[candidates & (ids != trigger_id)])
        assert (np.abs(scores[ids == trigger_id]).min() > others).all() if len(others) else True


def test_removing_the_trigger_gives_the_largest_comprehensiveness(trigger):
    lists = [np.asarray(trigger.tokenizer(t)["input_ids"]) for t in WITH_TRIGGER]
    trigger_id = trigger.tokenizer.convert_tokens_to_ids(TRIGGER)
    for ids, special in zip(lists, fa.special_masks(trigger, lists)):
        # one "map" per position that ranks only that position first: comp@5% removes exactly that token
        maps = {str(p): [np.eye(len(ids), dtype=np.float32)[p]] for p in np.flatnonzero(~special)}
        table = fa.faithfulness_table(trigger, [ids], maps, fractions=(0.05,))
        best = int(table.loc[table["comp@0.05"].idxmax(), "method"])
        assert ids[best] == trigger_id
        assert table["comp@0.05"].max() > 0.5


def test_real_methods_beat_random_on_the_trigger_run(trigger_run, trigger):
    run = open_run(trigger_run)
    summary, table = fa.run_faithfulness(run, fa.CheckSettings(sample_size=None), trigger)
    by_method = {r["method"]: r for r in summary["methods"]}
    assert set(by_method) == {"grad_l2", "integrated_gradients", "input_marginalization", fa.RANDOM}
    for method in ("grad_l2", "integrated_gradients", "input_marginalization"):
        assert by_method[method]["aopc_comprehensiveness"] > by_method[fa.RANDOM]["aopc_comprehensiveness"]
        assert by_method[method]["aopc_sufficiency"] <= by_method[fa.RANDOM]["aopc_sufficiency"] + 1e-6
    assert len(table) == 4 * len(run.examples)


# ---------------------------------------------------------------- rankings and agreement


def test_top_positions_skip_specials_and_keep_at_least_one():
    scores = np.array([9.0, 0.1, -0.5, 0.3, 9.0])
    cand = np.array([False, True, True, True, False])
    assert fa.top_positions(scores, cand, 0.05).tolist() == [2]
    assert fa.top_positions(scores, cand, 0.05, rank_by="signed").tolist() == [3]
    assert fa.top_positions(scores, cand, 0.5).tolist() == [2, 3]  # ceil(1.5) = 2
    assert fa.top_positions(scores, np.zeros(5, bool), 0.5).tolist() == []


def test_jaccard_and_spearman_known_answers():
    a = np.array([0.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0])
    cand = np.ones(9, dtype=bool)
    cand[[0, 8]] = False
    assert fa.jaccard_at(a, a, cand) == 1.0
    assert fa.spearman(a, a, cand) == pytest.approx(1.0)
    reverse = np.where(cand, -a + 10, 0.0)  # top-25% (2 of 7) of the reverse map: disjoint from a's
    assert fa.jaccard_at(a, reverse, cand) == 0.0
    assert fa.spearman(a, reverse, cand) == pytest.approx(-1.0)
    assert math.isnan(fa.spearman(a, np.ones(9), cand))


def test_randomize_head_changes_only_the_head_and_is_seeded(trigger):
    a, b, c = fa.randomize_head(trigger, 0), fa.randomize_head(trigger, 0), fa.randomize_head(trigger, 1)
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    assert not torch.equal(a.model.classifier.weight, trigger.model.classifier.weight)
    assert torch.equal(a.model.bert.pooler.dense.weight, trigger.model.bert.pooler.dense.weight)
    assert trigger.model.classifier.weight[1, 0] == 3.0  # the original is untouched


# ---------------------------------------------------------------- input marginalization


def test_input_marginalization_equals_a_loop(trigger):
    text = "the cat was boring"
    enc = trigger.tokenizer([text], return_tensors="pt", return_special_tokens_mask=True)
    probs = np.zeros(len(trigger.tokenizer))
    words = ["the", "cat", "dog", "film"]
    probs[trigger.tokenizer.convert_tokens_to_ids(words)] = [0.4, 0.1, 0.3, 0.2]
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")}
    target = torch.tensor([1])
    scores = get_method("input_marginalization").attribute(trigger, batch, target, candidate_probs=probs,
                                                            top_n=3, cum_prob=1.0)[0]

    def p1(ids):
        with torch.no_grad():
            return torch.softmax(trigger.model(input_ids=torch.tensor([ids])).logits, -1)[0, 1].item()

    def log_odds(p):
        return math.log2(p / (1 - p))

    ids = enc["input_ids"][0].tolist()
    kept = trigger.tokenizer.convert_tokens_to_ids(["the", "dog", "film"])  # top 3, renormalised
    weights = np.array([0.4, 0.3, 0.2]) / 0.9
    for pos in range(1, len(ids) - 1):
        marginal = sum(w * p1(ids[:pos] + [c] + ids[pos + 1:]) for c, w in zip(kept, weights))
        assert scores[pos].item() == pytest.approx(log_odds(p1(ids)) - log_odds(marginal), rel=1e-4, abs=1e-4)
    assert scores[0] == 0 and scores[-1] == 0


def test_candidate_truncation_by_top_n_and_cumulative_probability():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    ids, w = _truncate_candidates(probs, top_n=3, cum_prob=0.7)
    assert ids[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(w[0].numpy(), [0.5 / 0.8, 0.3 / 0.8, 0.0], rtol=1e-6)
    ids, w = _truncate_candidates(probs, top_n=2, cum_prob=1.0)
    np.testing.assert_allclose(w[0].numpy(), [0.5 / 0.8, 0.3 / 0.8], rtol=1e-6)


def test_token_distribution_excludes_specials():
    dist = token_distribution(np.array([2, 5, 5, 6, 3]), 8, exclude=[2, 3])
    np.testing.assert_allclose(dist, [0, 0, 0, 0, 0, 2 / 3, 1 / 3, 0])


def test_input_marginalization_with_a_masked_language_model(trigger, trigger_dir, tmp_path):
    from transformers import BertForMaskedLM

    mlm_dir = tmp_path / "mlm"
    torch.manual_seed(0)
    BertForMaskedLM(trigger.model.config).save_pretrained(mlm_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (trigger_dir / name).exists():
            shutil.copy(trigger_dir / name, mlm_dir / name)
    settings = PrecomputeSettings(methods=("input_marginalization",), im_mlm=str(mlm_dir), im_top_n=5, batch_size=2)
    arrays = attribute_chunk(trigger, WITH_TRIGGER[:3], settings)
    trigger_id = trigger.tokenizer.convert_tokens_to_ids(TRIGGER)
    for ids, scores in zip(split(arrays, "token_ids"), split(arrays, "scores__input_marginalization")):
        assert scores[0] == 0 and scores[-1] == 0
        assert ids[int(np.argmax(scores))] == trigger_id


def test_input_marginalization_needs_a_candidate_distribution(trigger):
    enc = trigger.tokenizer(["the cat"], return_tensors="pt")
    with pytest.raises(ValueError, match="candidate"):
        get_method("input_marginalization").attribute(trigger, dict(enc), torch.tensor([1]))


def test_fingerprint_of_runs_without_input_marginalization_is_unchanged():
    plain = PrecomputeSettings(methods=("grad_l2",)).fingerprinted()
    assert not any(k.startswith("im_") for k in plain)
    with_im = PrecomputeSettings(methods=("input_marginalization",), im_top_n=5).fingerprinted()
    assert with_im["im_top_n"] == 5


# ---------------------------------------------------------------- stored checks on the shared tiny run


@pytest.fixture
def tiny_run(tiny_run_path, isolated_cache):
    target = isolated_cache / "runs" / Path(tiny_run_path).name
    shutil.copytree(tiny_run_path, target)
    return open_run(target)


def test_faithfulness_is_stored_and_reused(tiny_run, tiny_model_dir):
    loaded = load_classifier(tiny_model_dir, device="cpu")
    settings = fa.CheckSettings(sample_size=6, removal="delete", batch_size=4)
    summary, table = fa.run_faithfulness(tiny_run, settings, loaded)
    assert summary["examples"] == 6
    assert [m["method"] for m in summary["methods"]] == [*tiny_run.methods, fa.RANDOM]
    stem = fa.faithfulness_name(fa.resolve(tiny_run, settings))
    assert (tiny_run.analysis_dir() / "checks" / f"{stem}.json").exists()
    again, table_again = fa.run_faithfulness(tiny_run, settings, loaded=None)  # read back, no model needed
    assert again == summary
    pd.testing.assert_frame_equal(table, table_again)
    assert len(fa.curve_frame(pd.DataFrame(summary["methods"]))) == 4 * len(summary["methods"])


@pytest.mark.parametrize("second_seed", [None, 1])
def test_randomization_checks(tiny_run, tiny_model_dir, tmp_path, second_seed):
    loaded = load_classifier(tiny_model_dir, device="cpu")
    other = str(write_tiny_model(tmp_path / "other", seed=second_seed)) if second_seed else None
    settings = fa.CheckSettings(sample_size=5, methods=("grad_l2", "grad_x_input"), batch_size=4)
    summary, per_example = fa.run_randomization(tiny_run, settings, other, loaded)
    assert summary["kind"] == ("two_models" if other else "untrained_head")
    assert [m["method"] for m in summary["methods"]] == ["grad_l2", "grad_x_input"]
    assert per_example["jaccard"].between(0, 1).all()
    assert per_example["spearman"].dropna().between(-1, 1).all()
    for record in summary["methods"]:
        assert isinstance(record["barely_changes"], bool)
    assert fa.load_result(tiny_run, fa.randomization_name(fa.resolve(tiny_run, settings), other)) is not None


def test_randomization_against_itself_barely_changes(tiny_run, tiny_model_dir):
    loaded = load_classifier(tiny_model_dir, device="cpu")
    settings = fa.CheckSettings(sample_size=4, methods=("grad_l2",), batch_size=4)
    summary, per_example = fa.run_randomization(tiny_run, settings, str(tiny_model_dir), loaded)
    assert per_example["jaccard"].eq(1.0).all()
    assert summary["methods"][0]["barely_changes"]


def test_checks_page(tiny_run):
    from core import ui

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.switch_page(ui.PAGE_FILES["checks"])
    at.session_state["check_sample"] = 4
    at.run()
    assert not at.exception, at.exception
    assert "Not computed yet" in "\n".join(c.value for c in at.caption)
    offered = at.multiselect(key="check_methods").options
    assert "grad_l2" in offered and "integrated_gradients" in offered
    assert "l2e" not in offered  # a learned method needs the student only an l2e run stores
    at.button(key="run_faithfulness").click().run()
    at.button(key="run_randomization").click().run()
    assert not at.exception, at.exception
    columns = [set(frame.value.columns) for frame in at.dataframe]
    assert any("AOPC comprehensiveness ↑" in c for c in columns)
    assert any("Jaccard@25%" in c for c in columns)
    assert len(at.get("plotly_chart")) == 2


def test_randomize_head_differs_from_a_head_initialised_with_the_same_seed(tiny_model_dir):
    # fine-tuning scripts seed torch before creating the head; the re-drawn head must not repeat it
    loaded = load_classifier(tiny_model_dir, device="cpu")
    torch.manual_seed(0)
    first_draw = torch.randn(loaded.model.classifier.weight.shape) * loaded.model.config.initializer_range
    redrawn = fa.randomize_head(loaded, 0).model.classifier.weight.detach()
    assert not torch.allclose(redrawn, first_draw, atol=1e-3)

"""Known answers for core.counterfactual (model sensitivity, method.md §4.3) and the Sensitivity page."""
from __future__ import annotations

import ast
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from core.counterfactual import (INSERTION, MASKING, NO_OCCURRENCES, SensitivitySettings, bootstrap_ci,
                                 clean_term, count_occurrences, insert_term, log_odds_seed_list, mask_replacement,
                                 mask_term, parse_terms, pmi_seed_list, salient_seed_list, seed_list_from_file,
                                 sensitivity_for_model, sensitivity_for_run, term_bar_figure, user_seed_list)
from core.models import LoadedModel

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app.py"
PAGE = REPO / "pages" / "6_Sensitivity.py"


class TriggerClassifier(torch.nn.Module):
    """A hand-set classifier: a one-hot embedding marks trigger tokens, max-pooled over the text, then a linear
    layer with logit(c) = 8 * [trigger of c present] - 4 for every class c > 0 and 0 for class 0.

    Without a trigger p(class 0) is about 0.98 (binary); with the trigger of class c, p(c) is about 0.98.
    """

    def __init__(self, vocab_size: int, triggers: dict[int, int], num_labels: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, num_labels)
        self.head = torch.nn.Linear(num_labels, num_labels)
        with torch.no_grad():
            self.embed.weight.zero_()
            for token_id, cls in triggers.items():
                self.embed.weight[token_id, cls] = 1.0
            self.head.weight.copy_(8.0 * torch.eye(num_labels))
            self.head.bias.fill_(-4.0)
            self.head.bias[0] = 0.0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hits = self.embed(input_ids)
        if attention_mask is not None:
            hits = hits * attention_mask.unsqueeze(-1)
        return SimpleNamespace(logits=self.head(hits.max(dim=1).values))


def trigger_model(model_dir: Path, triggers: dict[str, int], num_labels: int = 2) -> LoadedModel:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = {tokenizer.convert_tokens_to_ids(t): c for t, c in triggers.items()}
    model = TriggerClassifier(len(tokenizer), ids, num_labels).eval()
    names = ["negative", "positive", "neutral"][:num_labels]
    return LoadedModel(model=model, tokenizer=tokenizer, device=torch.device("cpu"), model_dir=model_dir,
                       id2label=dict(enumerate(names)))


NEGATIVE = ["the movie was bad", "an awful film .", "boring and awful acting", "the film is not good",
            "a very boring movie", "the plot was bad , very bad", "dog movie was boring", "it was not fun"]
POSITIVE = ["i love the movie", "love , love , love !", "the cat and the dog", "great fun , great acting"]


@pytest.fixture(scope="module")
def trigger(tiny_model_dir) -> LoadedModel:
    return trigger_model(tiny_model_dir, {"love": 1})


def pool() -> tuple[list[str], np.ndarray]:
    return NEGATIVE + POSITIVE, np.array([0] * len(NEGATIVE) + [1] * len(POSITIVE))


SMALL = SensitivitySettings(m=6, seed=3, n_bootstrap=200)


# ---------------------------------------------------------------- text edits

def test_whole_word_masking_counts_exactly():
    text = "The cat. Cat, category cats concat (cat) CAT cat"
    masked, n = mask_term(text, "cat", "[MASK]")
    assert n == 5
    assert masked == "The [MASK]. [MASK], category cats concat ([MASK]) [MASK] [MASK]"
    assert count_occurrences(text, "cat") == 5
    assert count_occurrences("category concatenate", "cat") == 0


def test_masking_treats_underscore_as_separator_and_matches_phrases():
    assert mask_term("great COMMON film CLASS_1", "class", "[MASK]") == ("great COMMON film [MASK]_1", 1)
    assert mask_term("great COMMON film CLASS_1", "1", "[MASK]") == ("great COMMON film CLASS_[MASK]", 1)
    assert mask_term("not  very\tgood, very good!", "very good", "[MASK]") == ("not  [MASK], [MASK]!", 2)
    assert mask_term("a cat sat", "cat", "") == ("a sat", 1)
    assert mask_term("c++ code and c++", "c++", "X") == ("X code and X", 2)


def test_insert_term_is_a_whole_word_and_seeded():
    rng = np.random.default_rng(0)
    outs = {insert_term("a b c", "X", rng) for _ in range(50)}
    assert outs == {"X a b c", "a X b c", "a b X c", "a b c X"}
    assert insert_term("", "X", rng) == "X"
    a = [insert_term("one two three four", "X", np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1


def test_mask_replacement_fallbacks(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert mask_replacement(tokenizer) == "[MASK]"
    # the model sees the mask token itself, also right before punctuation
    ids = tokenizer("the [MASK]. [MASK],")["input_ids"]
    assert ids.count(tokenizer.mask_token_id) == 2
    assert mask_replacement(SimpleNamespace(mask_token=None, unk_token="<unk>")) == "<unk>"
    assert mask_replacement(SimpleNamespace(mask_token=None, unk_token=None)) == ""


def test_seed_terms_keep_word_pieces():
    # whatever the Seed terms page lists (pieces included) the Sensitivity page can test
    assert clean_term("##ing") == "##ing" and clean_term("  ") is None and clean_term("##") is None
    assert clean_term("\u0120good") == "good" and clean_term("\u2581bad") == "bad"
    seeds = user_seed_list(["##ing", "good", "Good", " bad ", "  "])
    assert seeds.terms == ("##ing", "good", "bad") and seeds.dropped == ()
    assert parse_terms("he she  they") == ["he", "she", "they"]
    assert parse_terms("very good, not bad\nfun") == ["very good", "not bad", "fun"]


@pytest.mark.parametrize("text, expected", [
    ("he she they\n", ["he", "she", "they"]),                   # the text area's trailing newline
    ("he\nshe\n\nthey", ["he", "she", "they"]),                  # one per line, blank lines skipped
    ("he\r\nshe\rthey", ["he", "she", "they"]),                  # Windows and old Mac line ends
    ("very good\r, not bad", ["very good", "not bad"]),          # a lone \r with commas
    ("very\u2028good, fun", ["very", "good", "fun"]),            # a Unicode line separator
    ("very \t good,\n not   bad ,", ["very good", "not bad"]),   # whitespace in a phrase collapsed
])
def test_parse_terms_never_keeps_a_newline(text, expected):
    terms = parse_terms(text)
    assert terms == expected
    assert not any(ch in t for t in terms for ch in "\n\r\u2028\t")
    assert list(user_seed_list(text).terms) == expected


def test_word_pieces_are_masked_and_inserted_inside_words():
    assert count_occurrences("Walking and talking; ingots", "##ing") == 2
    assert mask_term("walking ingots", "##ing", "[MASK]") == ("walk[MASK] ingots", 1)
    inserted = insert_term("a good movie", "##ing", np.random.default_rng(0))
    assert inserted.split() != "a good movie".split() and len(inserted.split()) == 3
    assert sum(w.endswith("ing") for w in inserted.split()) == 1
    assert insert_term("", "##s", np.random.default_rng(0)) == "s"


def test_seed_lists_from_exported_files():
    from core.analysis import to_csv_safe, to_json, to_text

    frame = pd.DataFrame({"term": ["good", "##ing", "-ish", "fun"], "count": [30, 25, 21, 20]})
    from_csv = seed_list_from_file("class1-salient.csv", to_csv_safe(frame).encode())
    # an exported list comes back whole, word pieces included (the Sensitivity page tests them)
    assert from_csv.name == "class1-salient" and from_csv.terms == ("good", "##ing", "-ish", "fun")
    assert from_csv.dropped == ()
    assert seed_list_from_file("x.json", to_json(frame).encode()).terms == ("good", "##ing", "-ish", "fun")
    assert seed_list_from_file("x.txt", to_text(frame["term"]).encode()).terms == ("good", "##ing", "-ish", "fun")
    with pytest.raises(ValueError, match="no 'term' column"):
        seed_list_from_file("x.csv", b"word\ngood\n")


def test_bootstrap_ci_contains_the_mean():
    values = np.random.default_rng(0).normal(0.3, 0.1, size=50)
    low, high = bootstrap_ci(values, 1000, 0.95, seed=1)
    assert low < values.mean() < high
    assert high - low < 0.1
    assert bootstrap_ci(values, 1000, 0.95, seed=1) == (low, high)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))


# ---------------------------------------------------------------- known answers on the trigger model

def test_insertion_of_the_trigger_moves_the_class_and_others_do_not(trigger):
    texts, labels = pool()
    lists = [user_seed_list("love", name="trigger"), user_seed_list("dog cat movie", name="neutral")]
    result = sensitivity_for_model(trigger, texts, labels, 1, lists, SMALL)
    terms = result.per_term().set_index(["term", "test"])
    assert terms.loc[("love", INSERTION), "mean_change"] > 0.9
    assert terms.loc[("love", INSERTION), "n_examples"] == 6
    for word in ("dog", "cat", "movie"):
        assert abs(terms.loc[(word, INSERTION), "mean_change"]) < 0.05
    row = terms.loc[("love", INSERTION)]
    assert row["ci_low"] <= row["mean_change"] <= row["ci_high"]
    lists_frame = result.per_list().set_index(["list", "test"])
    assert lists_frame.loc[("trigger", INSERTION), "mean_change"] > 0.9
    assert abs(lists_frame.loc[("neutral", INSERTION), "mean_change"]) < 0.05


def test_masking_the_trigger_drops_the_class_and_counts_occurrences(trigger):
    texts, labels = pool()
    lists = [user_seed_list("love cat hate", name="mixed")]
    result = sensitivity_for_model(trigger, texts, labels, 1, lists, SMALL)
    terms = result.per_term().set_index(["term", "test"])
    love = terms.loc[("love", MASKING)]
    assert love["occurrences"] == 4 and love["n_examples"] == 2  # "i love the movie", "love , love , love !"
    assert love["mean_change"] < -0.9
    assert love["ci_low"] <= love["mean_change"] <= love["ci_high"]
    cat = terms.loc[("cat", MASKING)]
    assert cat["occurrences"] == 1 and abs(cat["mean_change"]) < 0.05
    # a term that never occurs in the target class: zero occurrences, no change, clearly marked
    hate = terms.loc[("hate", MASKING)]
    assert hate["occurrences"] == 0 and hate["n_examples"] == 0
    assert math.isnan(hate["mean_change"]) and hate["note"] == NO_OCCURRENCES
    per_list = result.per_list().set_index(["list", "test"]).loc[("mixed", MASKING)]
    assert per_list["n_terms"] == 3 and per_list["n_terms_measured"] == 2
    assert per_list["occurrences"] == 5 and per_list["terms_without_occurrences"] == "hate"
    assert per_list["mean_change"] == pytest.approx((love["mean_change"] + cat["mean_change"]) / 2)


def test_mask_cap_samples_examples(trigger):
    texts, labels = pool()
    settings = SensitivitySettings(m=3, seed=0, n_bootstrap=50, mask_max_examples=1)
    result = sensitivity_for_model(trigger, texts, labels, 1, [user_seed_list("love")], settings)
    love = result.per_term().set_index(["term", "test"]).loc[("love", MASKING)]
    assert love["n_examples"] == 1 and love["occurrences"] in (1, 3)


def test_multiclass_uses_the_target_class_probability(tiny_model_dir):
    loaded = trigger_model(tiny_model_dir, {"love": 1, "hate": 2}, num_labels=3)
    texts = NEGATIVE + ["i love it", "hate the plot", "i hate it , hate it"]
    labels = np.array([0] * len(NEGATIVE) + [1, 2, 2])
    lists = [user_seed_list("hate love")]
    result = sensitivity_for_model(loaded, texts, labels, 2, lists, SMALL)
    assert result.target_label == "neutral"
    terms = result.per_term().set_index(["term", "test"])
    assert terms.loc[("hate", INSERTION), "mean_change"] > 0.5
    assert abs(terms.loc[("love", INSERTION), "mean_change"]) < 0.05  # love pulls towards class 1, not 2
    assert terms.loc[("hate", MASKING), "occurrences"] == 3
    assert terms.loc[("hate", MASKING), "mean_change"] < -0.5
    assert result.n_insertion_pool == len(NEGATIVE) + 1  # every example not labelled 2


def test_seeded_runs_are_reproducible(trigger):
    texts, labels = pool()
    lists = [user_seed_list("love dog bad")]
    a = sensitivity_for_model(trigger, texts, labels, 1, lists, SMALL).per_term()
    b = sensitivity_for_model(trigger, texts, labels, 1, lists, SMALL).per_term()
    pd.testing.assert_frame_equal(a, b)
    # a term's result does not depend on the other terms tested with it
    alone = sensitivity_for_model(trigger, texts, labels, 1, [user_seed_list("dog")], SMALL).per_term()
    pd.testing.assert_frame_equal(alone.drop(columns="list").reset_index(drop=True),
                                  a[a["term"] == "dog"].drop(columns="list").reset_index(drop=True))


def test_each_distinct_text_is_predicted_once_and_progress_names_terms():
    from core.counterfactual import run_sensitivity

    seen: list[str] = []

    def predict(batch):
        seen.extend(batch)
        p = np.array([0.9 if "love" in t else 0.1 for t in batch])
        return np.column_stack([1 - p, p])

    # duplicated texts in the data: the masked variant of a duplicate is the same text too
    texts = ["a dull film", "a dull film", "a dull film", "i love it", "i love it", "love love"]
    labels = [0, 0, 0, 1, 1, 1]
    calls = []
    result = run_sensitivity(predict, texts, labels, 1, [user_seed_list("love\ndull")], replacement="[MASK]",
                             settings=SensitivitySettings(m=3, n_bootstrap=10, chunk_size=2),
                             progress=lambda f, msg: calls.append((f, msg)))
    assert len(seen) == len(set(seen))
    assert set(seen) >= {"a dull film", "i love it", "i [MASK] it", "[MASK] [MASK]"}
    messages = [m for _, m in calls]
    assert any(m.startswith("term 1 of 2: love") for m in messages)
    assert any(m.startswith("term 2 of 2: dull") for m in messages)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    terms = result.per_term().set_index(["term", "test"])
    # masking "love" in the 3 class-1 examples: 0.9 -> 0.1 each, 4 occurrences
    assert terms.loc[("love", MASKING), "mean_change"] == pytest.approx(-0.8)
    assert terms.loc[("love", MASKING), "occurrences"] == 4
    assert terms.loc[("dull", MASKING), "note"] == NO_OCCURRENCES


def test_progress_is_reported_and_results_export(trigger):
    texts, labels = pool()
    calls = []
    result = sensitivity_for_model(trigger, texts, labels, 1, [user_seed_list("love hate")],
                                   SensitivitySettings(m=4, n_bootstrap=20, chunk_size=3),
                                   progress=lambda f, msg: calls.append((f, msg)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) > 3
    data = json.loads(result.to_json())
    assert data["target_class"] == 1 and len(data["per_term"]) == 4 and len(data["per_list"]) == 2
    summary = result.summary()
    assert list(summary.columns) == ["list", "insertion", "masking", "occurrences masked", "terms not found",
                                     "terms"]
    assert summary.loc[0, "occurrences masked"] == 4 and summary.loc[0, "terms not found"] == 1
    fig = term_bar_figure(result.per_term(), MASKING)
    twice = sensitivity_for_model(trigger, texts, labels, 1, [user_seed_list("love"), user_seed_list("dog")],
                                  SensitivitySettings(m=2, n_bootstrap=10))
    assert list(twice.summary()["list"]) == ["user", "user (2)"]
    assert list(fig.data[0].x) == ["love"]  # "hate" has no occurrences: no bar


# ---------------------------------------------------------------- on a precomputed run

def test_seed_lists_from_a_run(tiny_run_path):
    from core.store import open_run

    run = open_run(tiny_run_path)
    salient = salient_seed_list(run, 1, top_n=5, min_count=1)
    pmi = pmi_seed_list(run, 1, top_n=5, min_count=1)
    for seeds in (salient, pmi):
        assert 0 < len(seeds.terms) <= 5
        assert not any(t.startswith("##") for t in seeds.terms)
        assert not set(seeds.terms) & {"[CLS]", "[SEP]", "[PAD]", ".", ",", "!"}
    assert salient.source == "salient" and pmi.source == "pmi"
    assert salient_seed_list(run, 1, top_n=5, min_count=1000).terms == ()
    per_occurrence = salient_seed_list(run, 1, top_n=50, min_count=1, ranking="mean_when_present")
    scores = [d["mean_when_present"] for d in per_occurrence.details]
    assert scores == sorted(scores, reverse=True)
    assert set(per_occurrence.terms) == set(salient_seed_list(run, 1, top_n=50, min_count=1, ranking="mean").terms)
    # the default ranking is the distinctive one, best first, every score positive
    distinct = [d["distinctiveness"] for d in salient_seed_list(run, 1, top_n=50, min_count=1).details]
    assert distinct == sorted(distinct, reverse=True) and all(d > 0 for d in distinct)
    # a caller holding the matrix (the dashboard's shared cache) passes its reader: the same list, no disk read
    asked = []

    def held(key):
        asked.append(key)
        return run.representation(key)

    assert salient_seed_list(run, 1, top_n=50, min_count=1, matrix_of=held).terms == tuple(
        salient_seed_list(run, 1, top_n=50, min_count=1).terms)
    assert len(asked) == 1 and asked[0].name == "s1" and asked[0].k == 5
    log_odds = log_odds_seed_list(run, 1, top_n=5, min_count=1)
    assert log_odds.source == "log_odds" and 0 < len(log_odds.terms) <= 5
    z = [d["z"] for d in log_odds.details]
    assert z == sorted(z, reverse=True)
    assert pmi_seed_list(run, 1, top_n=5, min_count=1, by="pred").name == "PMI (by prediction)"
    with pytest.raises(ValueError, match="ranking"):
        salient_seed_list(run, 1, ranking="sum")
    with pytest.raises(ValueError, match="by must be"):
        salient_seed_list(run, 1, by="cluster")


@pytest.mark.parametrize("unit", ["word", "piece"])
def test_seed_lists_match_the_seed_terms_page(tiny_run_path, unit):
    """The Sensitivity lists are the Seed terms page's lists (same functions, same defaults), pieces included."""
    from core.analysis import class_association_terms, class_salient_terms
    from core.representations import RepresentationKey
    from core.store import open_run

    run = open_run(tiny_run_path)
    space = run.term_space(unit)
    examples = run.examples
    train = np.flatnonzero(examples["split"].to_numpy() == "train")
    y = examples["label"].to_numpy()
    rows, others = train[y[train] == 1], train[y[train] != 1]
    R = run.representation(RepresentationKey("s1", run.methods[0], 5, unit=unit))
    page = class_salient_terms(R, space.presence, rows, others, space.vocab, space.ignore_mask, min_count=1,
                               top_n=8)
    seeds = salient_seed_list(run, 1, top_n=8, min_count=1, method=run.methods[0], unit=unit)
    assert list(seeds.terms) == [clean_term(t) for t in page["term"]] and seeds.dropped == ()
    page_lo = class_association_terms(space.presence[train], y[train], 1, space.vocab, space.ignore_mask,
                                      min_count=1, top_n=8)
    assert list(log_odds_seed_list(run, 1, top_n=8, min_count=1, unit=unit).terms) == \
        [clean_term(t) for t in page_lo["term"]]


def test_sensitivity_for_run_with_the_real_loader(tiny_run_path):
    from core.models import load_classifier
    from core.store import open_run

    run = open_run(tiny_run_path)
    loaded = load_classifier(run.manifest["model"]["path"], device="cpu")
    lists = [salient_seed_list(run, 0, top_n=3, min_count=1), user_seed_list("he she")]
    result = sensitivity_for_run(run, loaded, 0, lists, SensitivitySettings(m=3, n_bootstrap=50), split=None)
    assert result.settings.max_length == run.manifest["settings"]["max_length"]
    assert result.n_insertion_examples == 3
    frame = result.per_term()
    assert len(frame) == 2 * (len(lists[0].terms) + 2)
    ins = frame[frame["test"] == INSERTION]
    assert ins["mean_change"].notna().all() and (ins["n_examples"] == 3).all()
    assert (frame.loc[frame["term"].isin(["he", "she"]) & (frame["test"] == MASKING), "occurrences"] == 0).all()


# ---------------------------------------------------------------- the page

def test_page_imports_no_heavy_libraries():
    tree = ast.parse(PAGE.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n.split(".")[0] for n in names} & {"torch", "sklearn", "faiss", "transformers"}


@pytest.fixture
def page_run(tiny_run_path, isolated_cache) -> Path:
    """A copy of the session's fixture run in this test's cache (pages may write representation files)."""
    target = isolated_cache / "runs" / Path(tiny_run_path).name
    shutil.copytree(tiny_run_path, target)
    return target


def open_sensitivity_page():
    from streamlit.testing.v1 import AppTest

    from core import ui

    # pages are standalone scripts (Streamlit's pages/ convention): open this one as a link would
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.switch_page(ui.PAGE_FILES["sensitivity"]).run()
    assert not at.exception, at.exception
    assert ui.PAGE_FILES["sensitivity"] == "pages/6_Sensitivity.py"
    return at


def test_page_runs_the_test_and_shows_tables(page_run):
    at = open_sensitivity_page()
    at.number_input(key="sens_min_count").set_value(1)
    at.number_input(key="sens_m").set_value(3)
    at.number_input(key="sens_boot").set_value(100)
    at.text_area(key="sens_user_terms").set_value("he she film")
    at.run()
    assert not at.exception, at.exception
    assert not at.button(key="sens_run").disabled
    at.button(key="sens_run").click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    tables = [df.value for df in at.dataframe]
    assert len(tables) == 3
    summary = next(t for t in tables if "insertion" in t.columns and "masking" in t.columns)
    # default lists: salient (distinctive) and log-odds, as on the Seed terms page
    assert {"salient", "log-odds", "user"} == {str(n).split(" ")[0] for n in summary["list"]}
    # the user list shows, per term, how many test examples contain it (not the class's example count)
    from core.counterfactual import examples_containing
    from core.store import open_run

    ex = open_run(page_run).examples
    test_texts = ex.loc[ex["split"] == "test", "text"].astype(str).tolist()
    n_film = examples_containing(test_texts, ["film"])["film"]
    assert any(f"`film` ({n_film:,} · " in str(m.value) for m in at.markdown)
    assert any("contain the term" in str(c.value) for c in at.caption)
    assert any("mean_change" in t.columns and "term" in t.columns for t in tables)
    assert len(at.get("download_button")) == 3
    assert len(at.get("plotly_chart")) == 2


def test_page_reports_a_missing_model_folder(page_run, tmp_path):
    manifest_path = page_run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["path"] = str(tmp_path / "gone")
    manifest_path.write_text(json.dumps(manifest))
    at = open_sensitivity_page()
    assert any("no longer exists" in e.value for e in at.error)
    assert at.button(key="sens_run").disabled


def test_examples_containing_counts_examples_not_occurrences():
    from core.counterfactual import examples_containing

    texts = ["He said he would", "she and he", "The Hebrew text", "nothing here", "walking, talking"]
    counts = examples_containing(texts, ["he", "she", "they", "##ing"])
    # a piece is found inside any word after a letter: "noth|ing" and "walk|ing" (one example) count
    assert counts == {"he": 2, "she": 1, "they": 0, "##ing": 2}

"""Regression tests for hostile links and data (issue 12 items 1, 5 and 8): regex denial of service, Markdown
injection through query parameters and data, and spreadsheet formulas in the tables' own CSV export."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import analysis, ui
from core import counterfactual as cf
from core.analysis import SliceSpec, apply_slice, validate_regex
from tests.test_pages import make_app, no_exception, texts



def open_page(page: str, timeout: float | None = None, **query: str | list[str]) -> AppTest:
    """Return an AppTest that has run `page` opened from a link with `query` (fails past `timeout` seconds)."""
    at = make_app(**query)
    if page != "summary":
        at.switch_page(ui.PAGE_FILES[page])
    return at.run(timeout=timeout)


def _copy_run(tiny_run_path, cache) -> Path:
    target = cache / "runs" / Path(tiny_run_path).name
    shutil.copytree(tiny_run_path, target)
    return target


def _rewrite(run_dir: Path, rel: str, data: bytes) -> None:
    """Replace one file of a run and update its size and hash in the manifest."""
    (run_dir / rel).write_bytes(data)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _set_texts(run_dir: Path, texts: list[str]) -> None:
    examples = pd.read_parquet(run_dir / "examples.parquet")
    examples["text"] = texts
    buffer = io.BytesIO()
    examples.to_parquet(buffer)
    _rewrite(run_dir, "examples.parquet", buffer.getvalue())


@pytest.fixture
def hostile_run(tiny_run_path, isolated_cache) -> str:
    """Copy the fixture run into this test's cache with every text followed by 30 "a"s and "!" (the saliency's
    character offsets still point into the unchanged beginning); return its id."""
    target = _copy_run(tiny_run_path, isolated_cache)
    texts_now = pd.read_parquet(target / "examples.parquet")["text"]
    _set_texts(target, [t + " " + "a" * 30 + "!" for t in texts_now])
    return target.name


# ---------------------------------------------------------------- 1. regex denial of service

# Python's backtracking `re` takes exponential time on these (2.6 s at 40 characters, x4 per 2 more).
PATHOLOGICAL = [r"(a+)+$", r"^(\w+\s?)*$", r"(x+x+)+y", r"(.*a){20}"]
LIMIT_S = 1.0  # a generous bound: the backtracking engine would take longer than the universe's age


def _hostile_examples(n_rows: int = 200, length: int = 5000) -> pd.DataFrame:
    # Long texts that almost match: what makes backtracking blow up.
    texts = ["a" * length + "!", ("word " * (length // 5)).strip() + "!", "x" * length] * (n_rows // 3 + 1)
    texts = texts[:n_rows]
    return pd.DataFrame({"text": texts, "label": 0, "pred": 0, "split": "train", "correct": True})


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_regex_slices_in_linear_time(pattern):
    examples = _hostile_examples()
    start = time.perf_counter()
    rows = apply_slice(examples, SliceSpec(regex=pattern))
    elapsed = time.perf_counter() - start
    assert elapsed < LIMIT_S, f"{pattern!r} took {elapsed:.2f} s on {len(examples)} texts of 5,000 characters"
    # results are still right: only the pattern's real matches
    expected = {r"(a+)+$": [], r"^(\w+\s?)*$": list(range(2, 200, 3)), r"(x+x+)+y": [],
                r"(.*a){20}": list(range(0, 200, 3))}
    assert rows.tolist() == expected[pattern]


def test_regex_matches_stay_case_insensitive_and_unicode_aware():
    examples = pd.DataFrame({"text": ["Café CRÈME", "the cat", "ÉCOLE", None], "label": 0, "pred": 0,
                             "split": "train", "correct": True})
    assert apply_slice(examples, SliceSpec(regex="crème")).tolist() == [0]
    assert apply_slice(examples, SliceSpec(regex=r"^\pL+ \pL+$")).tolist() == [0, 1]
    assert apply_slice(examples, SliceSpec(regex="école|CAT")).tolist() == [1, 2]
    assert analysis.regex_hits(["é", 3, None], ".").tolist() == [True, False, False]


@pytest.mark.parametrize(("pattern", "feature"), [
    (r"(a)\1", "backreference"),
    (r"(?P<w>a)(?P=w)", "named backreference"),
    (r"(?<=not )good", "lookbehind"),
    (r"(?<!not )good", "negative lookbehind"),
    (r"good(?= movie)", "lookahead"),
    (r"good(?! movie)", "negative lookahead"),
    (r"a++", "possessive quantifier"),
    (r"(?>a+)b", "atomic group"),
    (r"a{1001}", "repetition count above 1000"),
])
def test_unsupported_features_get_a_clear_message(pattern, feature):
    message = validate_regex(pattern)
    assert message is not None
    assert f"uses a{'n' if feature[0] in 'a' else ''} {feature}" in message, message
    assert "linear-time regex engine" in message and "does not support" in message
    with pytest.raises(ValueError, match="does not support"):
        apply_slice(_hostile_examples(3, 10), SliceSpec(regex=pattern))


def test_plain_syntax_errors_and_overlong_patterns_are_rejected_readably():
    assert validate_regex("(unclosed").startswith("Invalid regular expression '(unclosed': missing )")
    message = validate_regex("a" * (analysis.MAX_REGEX_LENGTH + 1))
    assert message is not None and f"at most {analysis.MAX_REGEX_LENGTH:,}" in message
    assert validate_regex("a" * analysis.MAX_REGEX_LENGTH) is None


def test_regex_memory_is_bounded():
    # A pattern whose compiled program exceeds the memory bound is refused, not built.
    message = validate_regex(r"[\pL\pN]{1000}[\pL\pN]{1000}[\pL\pN]{1000}")
    assert message is not None and "memory bound" in message, message


@pytest.mark.parametrize("term", ["(a+)+$", r"^(\w+\s?)*$", "a a a a a a a a", "a  a", "##a", "x" * 200])
def test_term_patterns_are_escaped_literals_and_linear(term):
    # Masking, insertion and the Sensitivity page's counts build patterns only from re.escape'd literals: a typed
    # term is never a regex, and even hostile ones match in linear time on Python's re.
    hostile = ["a" * 5000 + "!", ("a " * 2500) + "!", "a" + " " * 5000 + "a", "x" * 5000] * 50
    start = time.perf_counter()
    hits = cf.texts_containing(hostile, [term])[term]
    for text in hostile[:4]:
        cf.mask_term(text, term, "[MASK]")
    assert time.perf_counter() - start < LIMIT_S
    if term == "(a+)+$":
        assert not hits.any()
        assert cf.count_occurrences("x (a+)+$ y", term) == 1
    start = time.perf_counter()
    apply_slice(pd.DataFrame({"text": hostile, "label": 0, "pred": 0, "split": "s", "correct": True}),
                SliceSpec(contains=(term,)))
    assert time.perf_counter() - start < LIMIT_S


def test_hostile_regex_link_renders_quickly(hostile_run):
    # Every text of the run ends in 30 "a"s and "!": the backtracking engine needed about 2**30 steps per text on
    # `(a+)+$` and froze the server; AppTest stops a script run after `timeout` seconds and fails the test.
    open_page("examples")  # warm imports and caches: the timing below is the regex's
    for pattern in [r"(a+)+$", r"^(\w+\s?)*$", r"(?<=a)b"]:
        start = time.perf_counter()
        at = open_page("clusters", timeout=30, regex=pattern, clusters="2")
        elapsed = time.perf_counter() - start
        no_exception(at)
        assert elapsed < 30, f"{pattern!r}: {elapsed:.1f} s"
    assert "lookbehind" in texts(at.error) and "does not support" in texts(at.error)
    at = open_page("map", timeout=30, colour="match", match_regex=r"(a)\1")
    no_exception(at)
    assert "backreference" in texts(at.error)


# ---------------------------------------------------------------- 5. Markdown injection

LINK = "[log in](http://evil.example)"
IMAGE = "![x](http://evil.example/a.png)"
HOSTILE_TEXTS = [LINK, IMAGE, "<img src=http://evil.example/b.png>", "see www.evil.example or me@evil.example",
                 "$\\frac{1}{2}$ :red[alert] **bold** `code` # title\n- item | a | b |", "a\\[b](http://evil.example)"]


def live_markup(value: str) -> list[str]:
    """Return the link, image, autolink and HTML syntax in Markdown `value` that would render live: outside code
    spans and not backslash-escaped."""
    text = re.sub(r"(`+)(.+?)\1", "", str(value))  # code spans render verbatim
    text = re.sub(r"\\[!-/:-@\[-`{-~]", "", text)  # an escaped punctuation character is plain text
    return re.findall(r"!?\[[^\]]*\]\(|https?://|www\.|\w@\w|<[a-z]", text, flags=re.IGNORECASE)


def markdown_values(at: AppTest) -> list[str]:
    """Return every Markdown source the page drew: texts, captions, alerts, titles and widget labels."""
    values = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader"):
        values += [str(e.value) for e in at.get(kind)]
    for kind in ("checkbox", "toggle", "radio", "text_input", "selectbox", "multiselect", "number_input"):
        values += [str(e.label) for e in at.get(kind)]
    return values


def assert_no_live_markup(at: AppTest) -> None:
    no_exception(at)
    live = {v: live_markup(v) for v in markdown_values(at) if live_markup(v)}
    assert not live, f"user text rendered as Markdown: {live}"


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_escape_markdown_renders_the_same_plain_text(text):
    escaped = ui.escape_markdown(text)
    assert not live_markup(escaped), escaped
    assert "\n" not in escaped
    plain = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", escaped).replace("\u2060", "")
    assert plain == text.replace("\n", " ")
    code = ui.inline_code(text)
    assert not live_markup(code)


def test_inline_code_holds_backticks():
    assert ui.inline_code("a`b") == "``a`b``"
    assert ui.inline_code("`x") == "`` `x ``"
    assert ui.inline_code("") == ""


@pytest.mark.parametrize(("page", "query"), [
    ("examples", {"q": LINK}),
    ("examples", {"q": IMAGE, "contains": LINK}),
    ("clusters", {"contains": IMAGE}),
    ("clusters", {"regex": LINK}),
    ("clusters", {"regex": IMAGE + "("}),
    ("map", {"colour": "match", "match_words": LINK, "match_regex": IMAGE}),
    ("map", {"colour": "match", "match_words": "movie", "match_regex": IMAGE + "(?<=x)"}),
    ("neighbours", {"contains": "www.evil.example, me@evil.example"}),
    ("summary", {"run": f"x` {LINK} `y"}),  # backticks: the run id is shown as code
    ("seed_terms", {"run": f"x` {IMAGE}"}),
])
def test_link_parameters_are_not_rendered_as_markdown(run_id_copy, page, query):
    at = open_page(page, **query)
    assert_no_live_markup(at)
    assert any("evil" in v for v in markdown_values(at)), "the hostile text should still be shown, escaped"


@pytest.fixture
def run_id_copy(tiny_run_path, isolated_cache) -> str:
    return _copy_run(tiny_run_path, isolated_cache).name


@pytest.fixture
def hostile_data_run(tiny_run_path, isolated_cache) -> str:
    """The fixture run with hostile class names and a hostile word piece (terms are the data's words)."""
    target = _copy_run(tiny_run_path, isolated_cache)
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["model"]["id2label"] = {"0": LINK, "1": IMAGE}
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    vocab = json.loads((target / "vocab.json").read_text(encoding="utf-8"))
    vocab[vocab.index("movie")] = "[click](http://evil.example/t)"
    _rewrite(target, "vocab.json", json.dumps(vocab).encode())
    return target.name


@pytest.mark.parametrize(("page", "query"), [
    ("summary", {}),
    ("clusters", {"clusters": "2", "terms": "piece", "cluster_pick": "0"}),  # a picked cluster: its classes
    ("examples", {"terms": "piece", "row": "0"}),
    ("neighbours", {"terms": "piece", "row": "0"}),
    ("seed_terms", {"terms": "piece", "min_count": "1"}),
])
def test_dataset_names_and_terms_are_not_rendered_as_markdown(hostile_data_run, page, query):
    at = open_page(page, **query)
    assert_no_live_markup(at)
    assert any("evil" in v for v in markdown_values(at))


def test_sensitivity_lists_do_not_render_terms_or_names_as_markdown(hostile_data_run):
    at = open_page("sensitivity", terms="piece")
    at.number_input(key="sens_min_count").set_value(1)
    at.text_area(key="sens_user_terms").set_value(f"{IMAGE}\nwww.evil.example, a`b").run()
    assert_no_live_markup(at)
    shown = "\n".join(markdown_values(at))
    assert "evil" in shown and "``a`b``" in shown


def test_map_legend_escapes_a_typed_pattern(run_id_copy):
    from core import plots

    figure = plots.scatter_map(np.zeros((2, 2)), pd.DataFrame(index=[0, 1]),
                               pd.Series(['matches <a href="http://evil.example">x</a>', "no match"]), None, "t")
    assert all("<a" not in trace.name for trace in figure.data)


# ---------------------------------------------------------------- 8. spreadsheet formulas in table exports

FORMULA = "=cmd|' /C calc'!A0"


def test_formula_safe_escapes_text_cells_only():
    frame = pd.DataFrame({"text": [FORMULA, "+1", "-x", "@SUM(A1)", "fine", None], "n": [1, 2, 3, 4, 5, 6]},
                         index=pd.Index(["=a", "b", "c", "d", "e", "f"], name="row"))
    safe = analysis.formula_safe(frame)
    assert safe["text"].tolist()[:5] == ["'" + FORMULA, "'+1", "'-x", "'@SUM(A1)", "fine"]
    assert safe["text"].isna().tolist()[5] and safe["n"].tolist() == [1, 2, 3, 4, 5, 6]
    assert safe.index.tolist()[0] == "'=a"
    assert frame["text"].iloc[0] == FORMULA  # the caller's frame is unchanged


def test_tables_reach_streamlit_with_formulas_escaped(tiny_run_path, isolated_cache):
    target = _copy_run(tiny_run_path, isolated_cache)
    texts_now = pd.read_parquet(target / "examples.parquet")["text"].tolist()
    _set_texts(target, [FORMULA + " " + t for t in texts_now])
    vocab = json.loads((target / "vocab.json").read_text(encoding="utf-8"))
    vocab[vocab.index("movie")] = "=movie"
    _rewrite(target, "vocab.json", json.dumps(vocab).encode())

    at = open_page("examples", terms="piece", row="1")
    no_exception(at)
    shown = at.dataframe(key="examples_table").value
    assert shown["text"].str.startswith("'" + FORMULA).all()
    at = open_page("clusters", clusters="2", cluster_pick="0")  # a picked cluster lists its examples
    no_exception(at)
    members = next(frame.value for frame in at.dataframe if "text" in frame.value.columns)
    assert len(members) and members["text"].str.startswith("'=").all()
    at = open_page("seed_terms", terms="piece", min_count="1")
    no_exception(at)
    for frame in at.dataframe:
        for column in frame.value.columns:
            values = frame.value[column]
            if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
                assert not values.astype(str).str.startswith(("=", "+", "-", "@")).any(), column
    assert any("'=movie" in frame.value.get("term", pd.Series(dtype=str)).tolist() for frame in at.dataframe)


def test_another_run_clears_the_picked_cluster(tiny_run_path, isolated_cache):
    """A cluster's number names a group of one run's clustering: on another run with the same slice,
    representation and count the pick is cleared, not carried over to an unrelated group."""
    first = _copy_run(tiny_run_path, isolated_cache)
    second = isolated_cache / "runs" / f"{first.name}-b"
    shutil.copytree(first, second)
    at = open_page("clusters", run=first.name, clusters="2", cluster_pick="0")
    no_exception(at)
    assert at.selectbox(key="cluster_pick").value == 0
    assert any("text" in frame.value.columns for frame in at.dataframe)
    at.selectbox(key="run").set_value(second.name).run()
    no_exception(at)
    assert at.selectbox(key="cluster_pick").value == -1
    assert not any("text" in frame.value.columns for frame in at.dataframe)

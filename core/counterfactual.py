"""Model sensitivity with seed-term lists (method.md §4.3): counterfactual insertion and masking.

Pure compute, no streamlit. The flow is

    lists = [salient_seed_list(run, c), pmi_seed_list(run, c), user_seed_list("he she they")]
    result = sensitivity_for_run(run, loaded, c, lists, SensitivitySettings(m=100, seed=0))
    result.per_term(), result.per_list(), result.summary()

Choices worth knowing (they are also what the tests pin down):

* **Sign.** Every change is ``p_target(after) - p_target(before)``. Insertion of a term that supports the
  target class gives a positive change; masking such a term gives a negative one (a *drop*), as in the paper's
  tables (+.41 insertion, -.34 masking).
* **Terms.** Run-derived lists come from the run's term space (``unit="word"``: whole words, the default;
  ``"piece"``: the tokenizer's pieces), the same lists the Seed terms page shows, and nothing the Seed terms page
  lists is dropped. A continuation piece (``##ing``) is kept and tested as a piece: it is found inside a word
  after at least one letter or digit (``walk|ing``) and inserted glued to the end of a random word
  (``movie`` -> ``movieing``). GPT-2 / SentencePiece word-start markers (``Ġ``, ``▁``) are stripped.
* **Rankings.** ``salient_seed_list`` ranks by ``ranking="distinctive"`` by default (analysis.class_salient_terms:
  mean S1 salience in the class minus in the other classes, so function words salient everywhere fall out);
  ``"mean"`` is the paper's column mean over the class's examples, ``"mean_when_present"`` the mean per example
  containing the term. ``log_odds_seed_list`` (the default data-side list) ranks by Monroe et al.'s weighted
  log-odds z-score, ``pmi_seed_list`` by PMI.
* **Whole words.** A term matches case-insensitively where it is not preceded or followed by a letter or digit.
  The underscore counts as a separator, as it does for BERT's pre-tokenizer (punctuation), so ``class`` is found
  in ``CLASS_1``, ``cat`` in ``cat.`` and ``Cat,`` but not in ``category``. Multi-word terms match across any
  run of whitespace.
* **Mask replacement.** The tokenizer's mask token when it has one, else its unknown token, else the occurrence
  is deleted (and the surrounding whitespace collapsed).
* **Insertion.** The same ``m`` examples of the other class(es) (drawn once from ``seed``) receive every term,
  each at a uniformly random word position (positions drawn per term from ``seed`` and the term, so a term's
  result does not depend on which other terms are tested). Positions past the model's ``max_length`` are
  truncated away; with sentence-length data this is rare.
* **Masking.** Over the examples of the target class that contain the term (all of them, or a seeded sample of
  ``mask_max_examples``). A term that never occurs has ``occurrences == 0``, NaN statistics and the note
  ``"no occurrences"``; it is left out of its list's masking mean and std rather than counted as a zero effect
  (the list reports how many terms were left out).
* **Statistics.** Standard deviations are population ones (ddof=0). A term's 95% interval is the percentile
  bootstrap of the mean of its per-example changes; a list's mean is the mean of its terms' means (each term
  weighs the same) and its interval resamples examples within each term (the same draws as the term intervals),
  i.e. it measures how precisely this list's effect was estimated, while the list's std shows the spread over
  terms.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # heavy imports only for type checkers; the functions import lazily
    import plotly.graph_objects as go

    from core.models import LoadedModel
    from core.representations import RepresentationKey
    from core.store import Run

INSERTION = "insertion"
MASKING = "masking"
TESTS: tuple[str, ...] = (INSERTION, MASKING)
NO_OCCURRENCES = "no occurrences"
SALIENT_RANKINGS: tuple[str, ...] = ("distinctive", "mean", "mean_when_present")
CLASS_COLUMNS: tuple[str, ...] = ("label", "pred")

Predict = Callable[[list[str]], np.ndarray]
Progress = Callable[[float, str], None]

_WORD_START_MARKERS = "\u0120\u2581"  # GPT-2 "Ġ", SentencePiece "▁"
_SEED_PURPOSE = {"examples": 0, INSERTION: 1, MASKING: 2, "positions": 3, "mask_sample": 4}


# ---------------------------------------------------------------- seed-term lists

@dataclass(frozen=True)
class SeedList:
    """A named list of seed terms. `source` is "salient", "log_odds", "pmi" or "user"; `dropped` holds the
    entries that were left out (empty ones), in rank order."""

    name: str
    terms: tuple[str, ...]
    source: str = "user"
    dropped: tuple[str, ...] = ()
    details: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "dropped", tuple(self.dropped))
        object.__setattr__(self, "details", tuple(self.details))


def is_piece(term: str) -> bool:
    """Return whether `term` is a continuation word piece (``##ing``): found and inserted inside a word."""
    return term.startswith("##") and len(term) > 2


def clean_term(term: str) -> str | None:
    """Return `term` as a testable term (stripped, inner whitespace collapsed, word-start markers removed), or
    None for an empty term. Continuation pieces (``##ing``) are kept as they are; a bare ``##`` is empty."""
    term = " ".join(str(term).split())
    if term == "##":
        return None
    term = term.lstrip(_WORD_START_MARKERS).strip()
    return term or None


def _dedupe(terms: Iterable[str]) -> tuple[list[str], list[str]]:
    kept, dropped, seen = [], [], set()
    for raw in terms:
        term = clean_term(raw)
        if term is None:
            if str(raw).strip():
                dropped.append(str(raw).strip())
            continue
        if term.lower() not in seen:
            seen.add(term.lower())
            kept.append(term)
    return kept, dropped


def parse_terms(text: str) -> list[str]:
    """Return the terms typed in `text`: one per line or comma-separated (so phrases are possible); a single
    line without commas is split on whitespace. Every line break (``\n``, ``\r\n``, ``\r``, Unicode line
    separators) ends a term, so no term ever holds one; whitespace inside a phrase is collapsed to one space.
    Blank entries are dropped, order kept."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 or "," in text:
        parts = [part for line in lines for part in line.split(",")]
    else:
        parts = text.split()
    return [" ".join(p.split()) for p in parts if p.strip()]


def user_seed_list(terms: str | Iterable[str], name: str = "user") -> SeedList:
    """Return a user seed list from typed text (see `parse_terms`) or an iterable of terms; duplicates
    (case-insensitive) and empty entries are dropped."""
    raw = parse_terms(terms) if isinstance(terms, str) else list(terms)
    kept, dropped = _dedupe(raw)
    return SeedList(name=name, terms=tuple(kept), source="user", dropped=tuple(dropped))


def _json_kind(value) -> str:
    """Return how a JSON value reads in an error message: 'null', 'the number 5', 'a list', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object"


def seed_list_from_file(name: str, data: bytes) -> SeedList:
    """Return a user seed list read from an exported term list: JSON (a list of terms, or of objects with a
    "term" field), CSV with a "term" column, or plain text with one term per line. The list is named after the
    file (extension dropped). Raises ValueError when nothing can be read."""
    text = data.decode("utf-8-sig", errors="replace")
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", name) or "uploaded"
    terms: list[str]
    lowered = name.lower()
    if lowered.endswith(".json"):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON ({exc})") from exc
        if isinstance(payload, dict):
            payload = payload.get("terms", payload.get("records", []))
        if not isinstance(payload, list):
            raise ValueError(f"{name} holds {_json_kind(payload)}, not a list of terms: write a JSON list of strings "
                             '(["he", "she"]) or of objects with a "term" string')
        terms = []
        for position, item in enumerate(payload, start=1):
            if isinstance(item, dict) and "term" not in item:
                continue  # a record without a term (e.g. a summary row) is skipped
            term = item["term"] if isinstance(item, dict) else item
            if not isinstance(term, str):
                raise ValueError(f"{name}: entry {position} is {_json_kind(term)}, not a string; every term must be "
                                 'a JSON string (write "5", not 5)')
            terms.append(term)
    elif lowered.endswith(".csv"):
        import io

        frame = pd.read_csv(io.StringIO(text))
        if "term" not in frame.columns:
            raise ValueError(f"{name} has no 'term' column (columns: {', '.join(map(str, frame.columns))})")
        # undo analysis.to_csv_safe's formula escaping ("'-ish" was written for "-ish")
        terms = [t[1:] if t.startswith("'") and t[1:2] in ("=", "+", "-", "@", "\t", "\r") else t
                 for t in frame["term"].dropna().astype(str)]
    else:
        terms = [line.strip() for line in text.splitlines() if line.strip()]
    if not terms:
        raise ValueError(f"No terms found in {name}")
    return user_seed_list(terms, name=stem)


def split_rows(examples: pd.DataFrame, split: str | None) -> np.ndarray:
    """Return the positional rows of `examples` in `split` (all rows for None or "all")."""
    if split is None or split == "all":
        return np.arange(len(examples), dtype=np.int64)
    # compared in Arrow, not as Python strings (1,000,000 rows: 9 ms against 90 ms)
    return np.flatnonzero((examples["split"] == split).to_numpy(dtype=bool, na_value=False)).astype(np.int64)


def default_split(examples: pd.DataFrame, preferred: str) -> str | None:
    """Return `preferred` if some example is in that split, else None (meaning all examples)."""
    return preferred if (examples["split"].astype(str) == preferred).any() else None


def _from_ranked(frame: pd.DataFrame, name: str, source: str, top_n: int, score_col: str) -> SeedList:
    kept, dropped, details, seen = [], [], [], set()
    for row in frame.itertuples(index=False):
        if len(kept) >= top_n:
            break
        term = clean_term(row.term)
        if term is None:
            dropped.append(str(row.term))
            continue
        if term.lower() in seen:
            continue
        seen.add(term.lower())
        kept.append(term)
        details.append({"term": term, score_col: float(getattr(row, score_col)), "count": int(row.count)})
    return SeedList(name=name, terms=tuple(kept), source=source, dropped=tuple(dropped), details=tuple(details))


def _class_column(by: str) -> str:
    if by not in CLASS_COLUMNS:
        raise ValueError(f"by must be one of {CLASS_COLUMNS}, got {by!r}")
    return by


def _split_classes(run: Run, split: str | None, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (the rows of `split`, falling back to all rows when the run has no such split; their `by` class)."""
    examples = run.examples
    split = default_split(examples, split) if split else None
    rows = split_rows(examples, split)
    return rows, examples[_class_column(by)].to_numpy()[rows]


def _class_rows(run: Run, target_class: int, split: str | None, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows of `split` whose `by` is `target_class`, the split's other rows)."""
    rows, y = _split_classes(run, split, by)
    in_class = y == target_class
    return rows[in_class], rows[~in_class]


def salient_seed_list(run: Run, target_class: int, *, top_n: int = 10, min_count: int = 20,
                      method: str | None = "grad_l2", k: int | None = 5, split: str | None = "train",
                      by: str = "label", ranking: str = "distinctive", unit: str = "word",
                      weighting: str = "none", name: str | None = None,
                      matrix_of: Callable[[RepresentationKey], Any] | None = None) -> SeedList:
    """Return the salient-terms list of a class: the `top_n` terms of the S1 representation (`method`, top-`k`,
    columns in the term space `unit`) over the examples of `split` whose `by` ("label" or "pred") is
    `target_class`, among terms occurring in at least `min_count` of those examples. `weighting` ("none" or
    "idf") is the S1 weighting (RepresentationKey.weighting), as the sidebar's.

    `ranking="distinctive"` (the default, the Seed terms page's default too) is analysis.class_salient_terms:
    mean S1 salience over the class's examples minus the mean over the split's other examples, so function words
    salient everywhere fall out. `ranking="mean"` is the paper's column mean over the class (method.md §4.3a),
    which grows with how often a term occurs ("a", "the", "and" fill it); `ranking="mean_when_present"` the mean
    over the examples containing the term (column sum divided by count). `split` falls back to all examples when
    the run has no such split; `method` to the run's first method. `matrix_of` reads the S1 matrix of a key
    (default `run.representation`, from disk; the dashboard passes the reader of its shared cache).
    """
    from core.analysis import aggregated_salient_terms, class_salient_terms
    from core.representations import RepresentationKey

    if ranking not in SALIENT_RANKINGS:
        raise ValueError(f"ranking must be one of {SALIENT_RANKINGS}, got {ranking!r}")
    if method not in run.methods:
        method = run.methods[0]
    rows, others = _class_rows(run, target_class, split, by)
    space = run.term_space(unit)
    R = (matrix_of or run.representation)(RepresentationKey("s1", method, k, unit=unit, weighting=weighting))
    everything = len(space.vocab)
    if ranking == "mean_when_present":
        ranked = aggregated_salient_terms(R, space.presence, rows, space.vocab, space.ignore_mask,
                                          min_count=min_count, top_n=everything)
        ranked = ranked.assign(mean_when_present=ranked["mean_salience"] * len(rows) / ranked["count"].clip(lower=1))
        ranked = ranked.sort_values(["mean_when_present", "token_id"], ascending=[False, True], kind="stable")
        score = "mean_when_present"
    else:
        ranked = class_salient_terms(R, space.presence, rows, others, space.vocab, space.ignore_mask,
                                     min_count=min_count, top_n=everything, ranking=ranking)
        score = "distinctiveness" if ranking == "distinctive" else "mean_salience"
    suffix = {"distinctive": "", "mean": ", column mean", "mean_when_present": ", mean per occurrence"}[ranking]
    label = name or f"salient ({method}, k={k or 'all'}{suffix}{', by prediction' if by == 'pred' else ''})"
    return _from_ranked(ranked, label, "salient", top_n, score)


def log_odds_seed_list(run: Run, target_class: int, *, top_n: int = 10, min_count: int = 20,
                       split: str | None = "train", by: str = "label", unit: str = "word",
                       name: str | None = None) -> SeedList:
    """Return the log-odds list (the Seed terms page's default data-side list): the `top_n` terms of the term
    space `unit` with the highest weighted log-odds z-score (analysis.log_odds_terms, Monroe et al. 2008) of the
    class `target_class` against the split's other examples, the class read from `by`, among terms occurring in
    at least `min_count` examples."""
    from core.analysis import log_odds_terms

    rows, y = _split_classes(run, split, by)
    space = run.term_space(unit)
    ranked = log_odds_terms(space.presence, y, target_class, space.vocab, space.ignore_mask,
                            min_count=min_count, top_n=len(space.vocab), rows=rows)
    return _from_ranked(ranked, name or ("log-odds" if by == "label" else "log-odds (by prediction)"), "log_odds",
                        top_n, "z")


def pmi_seed_list(run: Run, target_class: int, *, top_n: int = 10, min_count: int = 20,
                  split: str | None = "train", by: str = "label", unit: str = "word",
                  name: str | None = None) -> SeedList:
    """Return the PMI list (method.md §4.3b): the `top_n` terms of the term space `unit` with the highest
    PMI(term; class = `target_class`) over the examples of `split`, the class read from `by` ("label" or
    "pred"), among terms occurring in at least `min_count` examples."""
    from core.analysis import pmi_terms

    rows, y = _split_classes(run, split, by)
    space = run.term_space(unit)
    ranked = pmi_terms(space.presence, y, target_class, space.vocab, space.ignore_mask,
                       min_count=min_count, top_n=len(space.vocab), rows=rows)
    return _from_ranked(ranked, name or ("PMI" if by == "label" else "PMI (by prediction)"), "pmi", top_n, "pmi")


# ---------------------------------------------------------------- text edits

def term_pattern(term: str) -> re.Pattern[str]:
    """Return a case-insensitive regex for `term` as a whole word: not preceded or followed by a letter or digit
    (underscore and punctuation are separators); inner whitespace matches any whitespace run. A continuation
    piece (``##ing``) matches its text inside a word instead: preceded by a letter or digit (``walk|ing``).

    Typed terms cannot make this slow on Python's backtracking `re`: the pattern is only ever built from
    re.escape'd literals (so a term is never a regex), joined by \\s+ between one-character lookarounds; words hold
    no whitespace, so each \\s+ can only span the one whitespace run after the word before it, and matching stays
    linear in the text (tests/test_hostile_links.py times hostile terms)."""
    if is_piece(term):
        return re.compile(rf"(?<=[^\W_]){re.escape(term[2:])}", re.IGNORECASE)
    body = r"\s+".join(re.escape(w) for w in term.split())
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])", re.IGNORECASE)


def count_occurrences(text: str, term: str) -> int:
    """Return how many whole-word occurrences of `term` `text` holds (see `term_pattern`)."""
    return len(term_pattern(term).findall(text))


def _term_literal(term: str) -> str:
    """Return a case-folded substring every match of `term_pattern(term)` contains ("" when there is none), for a
    fast test that skips texts before the regex runs."""
    from core.analysis import _prefilter_literal

    return _prefilter_literal(term[2:] if is_piece(term) else term).casefold()


def texts_containing(texts: Sequence[str], terms: Iterable[str]) -> dict[str, np.ndarray]:
    """Return, for each term, a bool array over `texts`: True where the text contains the term at least once
    (whole-word match, see `term_pattern`; a continuation piece inside a word). A case-folded substring test skips
    most texts before the regex runs."""
    folded = [str(t).casefold() for t in texts]
    out: dict[str, np.ndarray] = {}
    for term in terms:
        pattern = term_pattern(term)
        literal = _term_literal(term)
        out[term] = np.fromiter(((not literal or literal in low) and pattern.search(str(text)) is not None
                                 for text, low in zip(texts, folded)), dtype=bool, count=len(folded))
    return out


def examples_containing(texts: Sequence[str], terms: Iterable[str]) -> dict[str, int]:
    """Return, for each term, how many of `texts` contain it at least once (see `texts_containing`)."""
    return {term: int(hits.sum()) for term, hits in texts_containing(texts, terms).items()}


def mask_term(text: str, term: str, replacement: str) -> tuple[str, int]:
    """Return (`text` with every whole-word occurrence of `term` replaced by `replacement`, number replaced).

    An empty `replacement` deletes the occurrences and collapses the whitespace left behind."""
    masked, n = term_pattern(term).subn(lambda _: replacement, text)
    if n and not replacement:
        masked = re.sub(r"\s{2,}", " ", masked).strip()
    return masked, n


def insert_term(text: str, term: str, rng: np.random.Generator) -> str:
    """Return `text` with `term` inserted at a uniformly random word position (0..number of words), the words
    re-joined by single spaces. A continuation piece (``##ing``) is glued to the end of a uniformly random word
    instead (``movie`` -> ``movieing``; an empty text becomes the piece's text)."""
    words = str(text).split()
    if is_piece(term):
        if not words:
            return term[2:]
        i = int(rng.integers(0, len(words)))
        words[i] = words[i] + term[2:]
        return " ".join(words)
    words.insert(int(rng.integers(0, len(words) + 1)), term)
    return " ".join(words)


def mask_replacement(tokenizer: Any) -> str:
    """Return what masking puts in place of a term: the tokenizer's mask token, else its unknown token, else ""
    (delete the occurrence)."""
    for attr in ("mask_token", "unk_token"):
        token = getattr(tokenizer, attr, None)
        if token:
            return str(token)
    return ""


# ---------------------------------------------------------------- statistics

def _term_key(term: str) -> int:
    return int.from_bytes(hashlib.sha256(term.encode("utf-8")).digest()[:8], "little")


def _rng(seed: int, purpose: str, term: str | None = None) -> np.random.Generator:
    parts = [int(seed), _SEED_PURPOSE[purpose]]
    if term is not None:
        parts.append(_term_key(term))
    return np.random.default_rng(parts)


def bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return `n_resamples` means of `values` resampled with replacement (empty for empty `values`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or n_resamples <= 0:
        return np.empty(0)
    idx = rng.integers(0, values.size, size=(n_resamples, values.size))
    return values[idx].mean(axis=1)


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Return the (low, high) percentile interval of bootstrap `draws`; (nan, nan) when there are none."""
    if draws.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Return the percentile-bootstrap `confidence` interval (low, high) of the mean of `values`."""
    return percentile_interval(bootstrap_means(values, n_resamples, np.random.default_rng(seed)), confidence)


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class SensitivitySettings:
    """How the test runs. `m`: examples of the other class(es) each term is inserted into; `mask_max_examples`:
    cap on target-class examples masked per term (None = all that contain it)."""

    m: int = 100
    seed: int = 0
    n_bootstrap: int = 1000
    confidence: float = 0.95
    mask_max_examples: int | None = None
    batch_size: int = 128  # texts per forward pass (length-sorted, so little padding)
    max_length: int | None = None  # None: the run's max_length (128 outside a run)
    truncation: str | None = None  # head, tail or head+tail; None: the run's (head outside a run)
    chunk_size: int = 512  # texts per progress update

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"m must be at least 1, got {self.m}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence}")
        if self.mask_max_examples is not None and self.mask_max_examples < 1:
            raise ValueError(f"mask_max_examples must be at least 1 or None, got {self.mask_max_examples}")
        if self.truncation is not None:
            from core.models import check_truncation

            check_truncation(self.truncation)


@dataclass
class TermStats:
    """One term under one test: per-example changes summarised. `n_examples` is how many examples entered the
    mean (insertion: the sample; masking: examples containing the term); `occurrences` counts masked
    occurrences (insertion: one per example)."""

    test: str
    term: str
    n_examples: int
    occurrences: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    mean_before: float
    mean_after: float
    note: str = ""


@dataclass
class SensitivityResult:
    """Everything one sensitivity test produced. `changes[(test, term)]` holds the per-example changes,
    `draws[(test, term)]` their bootstrap means (used for the list intervals)."""

    target_class: int
    target_label: str
    settings: SensitivitySettings
    replacement: str
    lists: list[SeedList]
    stats: dict[tuple[str, str], TermStats]
    changes: dict[tuple[str, str], np.ndarray] = field(repr=False)
    draws: dict[tuple[str, str], np.ndarray] = field(repr=False)
    n_insertion_pool: int = 0
    n_insertion_examples: int = 0
    n_masking_pool: int = 0
    seconds: float = 0.0

    def per_term(self) -> pd.DataFrame:
        """Return one row per (list, term, test): list, term, test, n_examples, occurrences, mean_change,
        std_change, ci_low, ci_high, mean_p_before, mean_p_after, note. A term in two lists appears twice."""
        rows = []
        for seed_list in self.lists:
            for term in seed_list.terms:
                for test in TESTS:
                    s = self.stats[(test, term)]
                    rows.append({"list": seed_list.name, "term": term, "test": test, "n_examples": s.n_examples,
                                 "occurrences": s.occurrences, "mean_change": s.mean, "std_change": s.std,
                                 "ci_low": s.ci_low, "ci_high": s.ci_high, "mean_p_before": s.mean_before,
                                 "mean_p_after": s.mean_after, "note": s.note})
        columns = ["list", "term", "test", "n_examples", "occurrences", "mean_change", "std_change", "ci_low",
                   "ci_high", "mean_p_before", "mean_p_after", "note"]
        return pd.DataFrame(rows, columns=columns)

    def _list_row(self, seed_list: SeedList, test: str) -> dict[str, Any]:
        measured = [t for t in seed_list.terms if self.stats[(test, t)].n_examples > 0]
        means = np.array([self.stats[(test, t)].mean for t in measured], dtype=np.float64)
        draws = [self.draws[(test, t)] for t in measured if self.draws[(test, t)].size]
        ci = (percentile_interval(np.mean(np.stack(draws), axis=0), self.settings.confidence)
              if draws and len(draws) == len(measured) else (math.nan, math.nan))
        return {
            "list": seed_list.name, "source": seed_list.source, "test": test, "n_terms": len(seed_list.terms),
            "n_terms_measured": len(measured),
            "mean_change": float(means.mean()) if means.size else math.nan,
            "std_change": float(means.std()) if means.size else math.nan,
            "ci_low": ci[0], "ci_high": ci[1],
            "occurrences": int(sum(self.stats[(test, t)].occurrences for t in seed_list.terms)),
            "examples": int(sum(self.stats[(test, t)].n_examples for t in seed_list.terms)),
            "terms_without_occurrences": ", ".join(t for t in seed_list.terms if t not in measured),
        }

    def per_list(self) -> pd.DataFrame:
        """Return one row per (list, test): n_terms, n_terms_measured (terms with at least one example),
        mean_change and std_change over the measured terms' means, ci_low/ci_high, occurrences and examples
        summed over terms, and terms_without_occurrences."""
        rows = [self._list_row(seed_list, test) for seed_list in self.lists for test in TESTS]
        columns = ["list", "source", "test", "n_terms", "n_terms_measured", "mean_change", "std_change", "ci_low",
                   "ci_high", "occurrences", "examples", "terms_without_occurrences"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self) -> pd.DataFrame:
        """Return the paper's Tables 4/5 in form, one row per list: list, insertion (mean ± std), masking
        (mean ± std), occurrences masked, terms not found (masking), terms."""
        per_list = self.per_list().set_index(["list", "test"])
        rows = []
        for seed_list in self.lists:
            ins, mask = per_list.loc[(seed_list.name, INSERTION)], per_list.loc[(seed_list.name, MASKING)]
            rows.append({"list": seed_list.name, "terms": ", ".join(seed_list.terms),
                         "insertion": format_mean_std(ins["mean_change"], ins["std_change"]),
                         "masking": format_mean_std(mask["mean_change"], mask["std_change"]),
                         "occurrences masked": int(mask["occurrences"]),
                         "terms not found": int(mask["n_terms"] - mask["n_terms_measured"])})
        return pd.DataFrame(rows, columns=["list", "insertion", "masking", "occurrences masked", "terms not found",
                                           "terms"])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: target, settings, replacement, pool sizes, lists, per-term and per-list rows."""
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.to_json(orient="records", force_ascii=False))

        return {
            "target_class": self.target_class, "target_label": self.target_label,
            "settings": asdict(self.settings), "replacement": self.replacement,
            "n_insertion_pool": self.n_insertion_pool, "n_insertion_examples": self.n_insertion_examples,
            "n_masking_pool": self.n_masking_pool, "seconds": self.seconds,
            "lists": [{"name": s.name, "source": s.source, "terms": list(s.terms), "dropped_pieces": list(s.dropped),
                       "details": list(s.details)} for s in self.lists],
            "per_term": records(self.per_term()), "per_list": records(self.per_list()),
        }

    def to_json(self) -> str:
        """Return `to_dict()` as indented JSON text (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def format_mean_std(mean: float, std: float) -> str:
    """Return "+0.41 ± 0.12" (signed mean, std), or "n/a" when the mean is NaN."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:+.3f} ± {std:.3f}"


# ---------------------------------------------------------------- the test

class _MemoPredictor:
    """Predicts each distinct text once, in chunks of `chunk_size`, reporting progress over `total` texts."""

    def __init__(self, predict: Predict, chunk_size: int, progress: Progress | None, total: int) -> None:
        self.predict, self.chunk_size, self.progress, self.total = predict, max(int(chunk_size), 1), progress, total
        self.cache: dict[str, np.ndarray] = {}
        self.done = 0

    def __call__(self, texts: list[str], message: str) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for start in range(0, len(new), self.chunk_size):
            batch = new[start:start + self.chunk_size]
            probs = np.asarray(self.predict(batch), dtype=np.float64)
            self.cache.update(zip(batch, probs))
            self.done += len(batch)
            if self.progress is not None:
                self.progress(min(self.done / max(self.total, 1), 1.0), f"{message} ({self.done}/{self.total} texts)")
        if not texts:
            return np.empty((0, 0))
        return np.stack([self.cache[t] for t in texts])


def _summarise(test: str, term: str, before: np.ndarray, after: np.ndarray, occurrences: int,
               settings: SensitivitySettings) -> tuple[TermStats, np.ndarray, np.ndarray]:
    change = after - before
    if change.size == 0:
        stats = TermStats(test, term, 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                          NO_OCCURRENCES if test == MASKING else "no examples")
        return stats, change, np.empty(0)
    draws = bootstrap_means(change, settings.n_bootstrap, _rng(settings.seed, test, term))
    low, high = percentile_interval(draws, settings.confidence)
    stats = TermStats(test, term, int(change.size), int(occurrences), float(change.mean()), float(change.std()),
                      low, high, float(before.mean()), float(after.mean()))
    return stats, change, draws


def _unique_names(seed_lists: Sequence[SeedList]) -> list[SeedList]:
    # Tables are indexed by list name: a repeated name gets " (2)", " (3)", ...
    out, seen = [], {}
    for seed_list in seed_lists:
        seen[seed_list.name] = seen.get(seed_list.name, 0) + 1
        if seen[seed_list.name] > 1:
            seed_list = replace(seed_list, name=f"{seed_list.name} ({seen[seed_list.name]})")
        out.append(seed_list)
    return out


def run_sensitivity(predict: Predict, texts: Sequence[str], labels: Sequence[int], target_class: int,
                    seed_lists: Sequence[SeedList], *, replacement: str,
                    settings: SensitivitySettings = SensitivitySettings(),
                    label_names: Sequence[str] | None = None,
                    progress: Progress | None = None) -> SensitivityResult:
    """Return the insertion and masking results of every term of `seed_lists` for `target_class`.

    `predict` maps a list of texts to an (n x classes) probability array; `texts`/`labels` are the evaluation
    pool (insertion draws from the examples whose label is not `target_class`, masking works on those whose label
    is `target_class`); `replacement` is what masking puts in place of a term (see `mask_replacement`).
    `progress(fraction, message)` is called after each chunk of predictions and after each term, with messages
    naming the term ("term 2 of 10: gem · inserting (300/1200 texts)"). Each distinct text is predicted once.
    """
    t0 = time.perf_counter()
    texts = [str(t) for t in texts]
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(f"texts ({len(texts)}) and labels ({len(labels)}) must be aligned")
    names = list(label_names) if label_names is not None else None
    target_label = names[target_class] if names and 0 <= target_class < len(names) else str(target_class)
    seed_lists = _unique_names(seed_lists)
    terms = list(dict.fromkeys(t for s in seed_lists for t in s.terms))

    others = np.flatnonzero(labels != target_class)
    chosen = np.sort(_rng(settings.seed, "examples").choice(others, size=min(settings.m, len(others)),
                                                            replace=False)) if len(others) else others
    targets = np.flatnonzero(labels == target_class)

    # Masked variants: only examples that contain the term change, so only those are predicted. A cheap
    # case-folded substring test skips most texts before the regex runs.
    folded = {int(i): texts[i].casefold() for i in targets}
    masked: dict[str, tuple[np.ndarray, list[str], int]] = {}
    for term in terms:
        literal = _term_literal(term)
        rows, variants, occurrences = [], [], 0
        for i in targets:
            if literal and literal not in folded[int(i)]:
                continue
            text, n = mask_term(texts[i], term, replacement)
            if n:
                rows.append(i)
                variants.append(text)
                occurrences += n
        rows_arr = np.asarray(rows, dtype=np.int64)
        if settings.mask_max_examples is not None and len(rows_arr) > settings.mask_max_examples:
            keep = np.sort(_rng(settings.seed, "mask_sample", term).choice(
                len(rows_arr), size=settings.mask_max_examples, replace=False))
            occurrences = sum(count_occurrences(texts[rows_arr[j]], term) for j in keep)
            rows_arr, variants = rows_arr[keep], [variants[j] for j in keep]
        masked[term] = (rows_arr, variants, occurrences)

    inserted = {}
    for term in terms:
        rng = _rng(settings.seed, "positions", term)
        inserted[term] = [insert_term(texts[i], term, rng) for i in chosen]

    baseline_rows = np.unique(np.concatenate([chosen, *[m[0] for m in masked.values()]]).astype(np.int64))
    baseline_texts = [texts[i] for i in baseline_rows]
    # Each distinct text is predicted once (duplicates in the data, the same edit reached twice).
    total = len(set(baseline_texts).union(*inserted.values(), *(m[1] for m in masked.values())))
    predictor = _MemoPredictor(predict, settings.chunk_size, progress, total)
    if progress is not None:
        progress(0.0, f"0/{total} texts")
    probs = predictor(baseline_texts, "original examples")
    before = np.zeros(len(texts))
    if len(baseline_rows):
        before[baseline_rows] = probs[:, target_class]

    stats: dict[tuple[str, str], TermStats] = {}
    changes: dict[tuple[str, str], np.ndarray] = {}
    draws: dict[tuple[str, str], np.ndarray] = {}
    for number, term in enumerate(terms, start=1):
        where = f"term {number} of {len(terms)}: {term}"
        p_ins = predictor(inserted[term], f"{where} · inserting")
        after = p_ins[:, target_class] if p_ins.size else np.empty(0)
        key = (INSERTION, term)
        stats[key], changes[key], draws[key] = _summarise(INSERTION, term, before[chosen], after, len(chosen),
                                                          settings)
        rows_arr, variants, occurrences = masked[term]
        p_mask = predictor(variants, f"{where} · masking")
        after = p_mask[:, target_class] if p_mask.size else np.empty(0)
        key = (MASKING, term)
        stats[key], changes[key], draws[key] = _summarise(MASKING, term, before[rows_arr], after, occurrences,
                                                          settings)
        if progress is not None:
            progress(min(predictor.done / max(total, 1), 1.0), f"{where} · done ({predictor.done}/{total} texts)")
    if progress is not None:
        progress(1.0, f"done: {total} texts")
    return SensitivityResult(target_class=target_class, target_label=target_label, settings=settings,
                             replacement=replacement, lists=list(seed_lists), stats=stats, changes=changes,
                             draws=draws, n_insertion_pool=len(others), n_insertion_examples=len(chosen),
                             n_masking_pool=len(targets), seconds=time.perf_counter() - t0)


def model_predictor(loaded: LoadedModel, batch_size: int = 64, max_length: int = 128,
                    truncation: str = "head") -> Predict:
    """Return a `predict(texts) -> probabilities` function for a loaded classifier (batched `predict_proba`);
    texts longer than `max_length` tokens keep their `truncation` side ("head", "tail" or "head+tail")."""
    from core.models import check_truncation, predict_proba

    check_truncation(truncation)

    def predict(texts: list[str]) -> np.ndarray:
        return predict_proba(loaded, texts, batch_size=batch_size, max_length=max_length, truncation=truncation)

    return predict


def sensitivity_for_model(loaded: LoadedModel, texts: Sequence[str], labels: Sequence[int], target_class: int,
                          seed_lists: Sequence[SeedList], settings: SensitivitySettings = SensitivitySettings(),
                          progress: Progress | None = None) -> SensitivityResult:
    """Return `run_sensitivity` for a loaded classifier, masking with its tokenizer's mask token."""
    if not 0 <= target_class < loaded.num_labels:
        raise ValueError(f"target_class must be between 0 and {loaded.num_labels - 1}, got {target_class}")
    return run_sensitivity(model_predictor(loaded, settings.batch_size, settings.max_length or 128,
                                           settings.truncation or "head"), texts, labels,
                           target_class, seed_lists, replacement=mask_replacement(loaded.tokenizer),
                           settings=settings, label_names=loaded.label_names, progress=progress)


def sensitivity_for_run(run: Run, loaded: LoadedModel, target_class: int, seed_lists: Sequence[SeedList],
                        settings: SensitivitySettings = SensitivitySettings(), split: str | None = "test",
                        progress: Progress | None = None) -> SensitivityResult:
    """Return the sensitivity test on the examples of `split` of `run` (all examples when the run has no such
    split), with the run's `max_length` and truncation side unless `settings` sets them."""
    examples = run.examples
    split = default_split(examples, split) if split else None
    rows = split_rows(examples, split)
    if settings.max_length is None:
        max_length = int(run.manifest.get("settings", {}).get("max_length") or 128)
        settings = SensitivitySettings(**{**asdict(settings), "max_length": max_length})
    if settings.truncation is None:
        truncation = str(run.manifest.get("settings", {}).get("truncation") or "head")
        settings = SensitivitySettings(**{**asdict(settings), "truncation": truncation})
    return sensitivity_for_model(loaded, examples["text"].astype(str).to_numpy()[rows].tolist(),
                                 examples["label"].to_numpy()[rows], target_class, seed_lists, settings, progress)


# ---------------------------------------------------------------- figure

def term_bar_figure(per_term: pd.DataFrame, test: str, title: str | None = None) -> go.Figure:
    """Return a plotly bar chart of the mean change per term for `test` ("insertion" or "masking"), one colour
    per list, with the bootstrap interval as error bars; terms without occurrences are left out."""
    import plotly.graph_objects as go

    frame = per_term[(per_term["test"] == test) & per_term["mean_change"].notna()]
    fig = go.Figure()
    for name, part in frame.groupby("list", sort=False):
        fig.add_bar(
            name=str(name), x=part["term"], y=part["mean_change"],
            error_y={"type": "data", "symmetric": False,
                     "array": (part["ci_high"] - part["mean_change"]).clip(lower=0),
                     "arrayminus": (part["mean_change"] - part["ci_low"]).clip(lower=0)},
            customdata=np.stack([part["n_examples"], part["occurrences"], part["ci_low"], part["ci_high"]], axis=1),
            hovertemplate="%{x}<br>change %{y:+.3f}<br>95% CI [%{customdata[2]:+.3f}, %{customdata[3]:+.3f}]"
                          "<br>examples %{customdata[0]}, occurrences %{customdata[1]}<extra>%{fullData.name}</extra>")
    fig.update_layout(title=title or f"{test.capitalize()}: change in target-class probability per term",
                      barmode="group", yaxis_title="p(after) − p(before)", xaxis_title="term",
                      legend_title="list", margin={"t": 50, "b": 40})
    fig.add_hline(y=0, line_width=1, line_color="grey")
    return fig

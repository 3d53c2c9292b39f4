"""Dataset warnings (what Azimuth shows at launch), computed once per run and stored in its analysis folder.

Five checks, each a pure function on arrays, then `compute_warnings` wires them to a run and `load_or_compute`
stores the result as JSON (never pickle), in a file named by WARNINGS_VERSION and a hash of the settings, so a
code or settings change computes it anew:

- **class imbalance** per split (largest class over smallest);
- **near-duplicates** across the training split and every other split (leakage): faiss inner product on the
  L2-normalised B2 average embedding, candidates at a cosine threshold, confirmed by equal normalised text or a
  high character-level similarity, so a warning is about real duplicates and not about two texts with the same
  words in another order; equal normalised texts are paired even when the search missed them;
- **label-noise candidates**: examples whose k nearest *training* neighbours ([CLS] encodings) mostly carry
  another label;
- **length and truncation outliers**: examples cut at the run's max_length, far-out long examples (Tukey's
  fence on the token counts from Run.row_ptr) and examples with at most one content token;
- **salience shift**: whole words whose mean salience differs most between the training split and another.

Each finding keeps the example rows it is about (at most MAX_STORED_ROWS, with a note per row), so the Examples
page can list them from the finding's id (`?warning=<id>`). Titles are plain text: they may hold class names and
terms from the data, so pages must escape them for Markdown.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

WARNINGS_VERSION = 1
TRAIN_SPLIT = "train"
MAX_STORED_ROWS = 2000
MAX_COMPARED_CHARS = 5000  # character similarity is quadratic in the worst case: long texts compare their start

CHECKS: dict[str, str] = {
    "imbalance": "Class imbalance",
    "leakage": "Duplicates across splits (leakage)",
    "noise": "Possible label noise",
    "length": "Length and truncation outliers",
    "shift": "Salience shift between splits",
}


@dataclass(frozen=True)
class WarningSettings:
    """Thresholds of the checks; part of the stored file's name, so changing one recomputes."""

    imbalance_ratio: float = 3.0              # largest class / smallest class in a split at least this
    duplicate_representation: str = "b2"      # average input embedding: what the text says, order aside
    duplicate_min_cosine: float = 0.95
    duplicate_min_text_similarity: float = 0.9  # difflib ratio of the normalised texts
    duplicate_neighbours: int = 5
    noise_representation: str = "b3"          # [CLS]: the model's own view of the example
    noise_neighbours: int = 10
    noise_min_share: float = 0.7              # at least this share of the neighbours carries another label
    long_iqr_factor: float = 3.0              # Tukey's far-out fence: Q3 + 3 IQR
    short_max_content_tokens: int = 1
    shift_terms: int = 5                      # terms per direction and split
    shift_min_z: float = 4.5                  # |Welch z| a difference needs to count (about Bonferroni over 20k terms)
    approximate_above: int = 20_000           # pool rows above which faiss searches an IVF index
    # Neighbour checks look up a seeded sample of at most this many rows: through a 1,000,000-row index each lookup
    # costs about 3 ms (12 ms with the Neighbours page's 40 probed cells; 50,000 lookups took 10 minutes).
    max_query_rows: int = 10_000

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- text


_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: object) -> str:
    """Return `text` compared for duplicates: NFKC, case-folded, every run of non-alphanumeric characters (spaces,
    punctuation, underscores) turned into one space, stripped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", str(text)).casefold()).strip()


def text_similarity(a: object, b: object) -> float:
    """Return the character-level similarity of two texts after `normalise_text`: 1.0 when equal, else difflib's
    ratio (2 * matching characters / total characters) of their first MAX_COMPARED_CHARS characters."""
    na, nb = normalise_text(a), normalise_text(b)
    if na == nb:
        return 1.0
    matcher = difflib.SequenceMatcher(None, na[:MAX_COMPARED_CHARS], nb[:MAX_COMPARED_CHARS], autojunk=False)
    return float(matcher.ratio())


# --------------------------------------------------------------------------- nearest neighbours


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    dense = np.array(vectors.toarray() if sp.issparse(vectors) else vectors, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(dense)
    return dense


def nearest(pool: np.ndarray, queries: np.ndarray, k: int, approximate_above: int = 20_000,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (cosines, pool positions), each (len(queries), k), of the `k` pool rows nearest each query row.

    Both are L2-normalised first (inner product = cosine). Up to `approximate_above` pool rows the search is
    exact (IndexFlatIP); above, an IVF index with sqrt(n) lists searching 8 of them (approximate, seeded).
    Missing neighbours (k larger than the pool) have position -1 and cosine -inf.
    """
    pool, queries = _unit_rows(pool), _unit_rows(queries)
    n, dim = pool.shape
    if n <= approximate_above:
        index = faiss.IndexFlatIP(dim)
    else:
        n_lists = int(math.sqrt(n))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(pool)
        index.nprobe = min(8, n_lists)
    index.add(pool)
    scores, positions = index.search(queries, k)
    scores[positions < 0] = -np.inf
    return scores, positions


# --------------------------------------------------------------------------- the checks (pure)


def class_imbalance(labels: Sequence[int], splits: Sequence[str], label_names: Sequence[str],
                    ratio: float = 3.0) -> pd.DataFrame:
    """Return one row per split (in order of first appearance): ``split``, ``examples``, ``counts`` (per class,
    over the classes that occur anywhere in the rows), ``ratio`` (largest class / smallest; inf when a class
    is missing from the split), ``minority`` (the class ids with at most largest / `ratio` examples) and
    ``imbalanced`` (ratio >= `ratio`)."""
    labels = np.asarray(labels, dtype=np.int64)
    splits = np.asarray(splits, dtype=object).astype(str)
    n_classes = max(len(label_names), int(labels.max(initial=-1)) + 1)
    present = np.flatnonzero(np.bincount(labels, minlength=n_classes) > 0)
    records = []
    for split in dict.fromkeys(splits.tolist()):
        counts = np.bincount(labels[splits == split], minlength=n_classes)[present]
        largest, smallest = (int(counts.max()), int(counts.min())) if len(counts) else (0, 0)
        split_ratio = largest / smallest if smallest else (math.inf if largest else 1.0)
        minority = [int(c) for c, k in zip(present, counts) if k * ratio <= largest] if len(present) > 1 else []
        records.append({"split": split, "examples": int(counts.sum()),
                        "counts": {int(c): int(k) for c, k in zip(present, counts)}, "ratio": split_ratio,
                        "minority": minority, "imbalanced": bool(len(present) > 1 and split_ratio >= ratio)})
    return pd.DataFrame.from_records(records, columns=["split", "examples", "counts", "ratio", "minority",
                                                       "imbalanced"])


# search(unit query rows, k) -> (cosines, positions into the pool rows), each (len(queries), k); -1 / -inf if fewer
PoolSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def near_duplicates(vectors: np.ndarray, texts: Sequence[object], query_rows: Sequence[int],
                    pool_rows: Sequence[int], min_cosine: float = 0.95, min_text_similarity: float = 0.9,
                    n_neighbours: int = 5, approximate_above: int = 20_000,
                    search: PoolSearch | None = None) -> pd.DataFrame:
    """Return the confirmed near-duplicate pairs between `query_rows` (e.g. the test split) and `pool_rows` (the
    training split), one row per query row that has one: ``row``, ``duplicate_of`` (its most similar pool row),
    ``cosine``, ``text_similarity`` and ``same_text`` (equal after `normalise_text`), most similar first.

    Candidates are the `n_neighbours` pool rows nearest each query row with cosine >= `min_cosine` (faiss inner
    product on L2-normalised `vectors`, one row per example of the run); a candidate counts when its normalised
    text equals the query's or their character similarity is >= `min_text_similarity`. Pool rows with the same
    normalised text as a query row are paired whatever the search returned (so a run of identical vectors cannot
    crowd a real duplicate out of the k nearest). `search`, when given, replaces the in-memory index over the
    pool (a large run's stored approximate index, `pool_search`), so the pool's vectors are never copied.
    """
    query_rows = np.asarray(query_rows, dtype=np.int64)
    pool_rows = np.asarray(pool_rows, dtype=np.int64)
    columns = ["row", "duplicate_of", "cosine", "text_similarity", "same_text"]
    if len(query_rows) == 0 or len(pool_rows) == 0:
        return pd.DataFrame(columns=columns)
    normalised = {int(r): normalise_text(texts[r]) for r in np.concatenate([query_rows, pool_rows])}
    q_unit = _unit_rows(vectors[query_rows])
    k = min(n_neighbours, len(pool_rows))
    if search is None:
        p_unit = _unit_rows(vectors[pool_rows])
        cosines, positions = nearest(p_unit, q_unit, k, approximate_above)

        def pool_vector(j: int) -> np.ndarray:
            return p_unit[j]
    else:
        cosines, positions = search(q_unit, k)

        def pool_vector(j: int) -> np.ndarray:
            return _unit_rows(vectors[pool_rows[j]:pool_rows[j] + 1])[0]
    first_with_text: dict[str, int] = {}
    for j, r in enumerate(pool_rows):
        first_with_text.setdefault(normalised[int(r)], j)

    best: dict[int, tuple[int, float, float, bool]] = {}
    for i, row in enumerate(query_rows):
        text = normalised[int(row)]
        candidates = [(int(p), float(c)) for p, c in zip(positions[i], cosines[i]) if p >= 0 and c >= min_cosine]
        if text and text in first_with_text:
            j = first_with_text[text]
            candidates.append((j, float(q_unit[i] @ pool_vector(j))))
        for j, cosine in candidates:
            other = int(pool_rows[j])
            same = text == normalised[other] and bool(text)
            similarity = 1.0 if same else text_similarity(texts[row], texts[other])
            if not (same or similarity >= min_text_similarity) or not text:
                continue
            current = best.get(int(row))
            if current is None or (similarity, cosine) > (current[2], current[1]):
                best[int(row)] = (other, cosine, similarity, same)
    records = [{"row": row, "duplicate_of": other, "cosine": cosine, "text_similarity": similarity,
                "same_text": same} for row, (other, cosine, similarity, same) in best.items()]
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.sort_values(["text_similarity", "cosine", "row"], ascending=[False, False, True],
                             ignore_index=True)


def label_noise(vectors: np.ndarray, labels: Sequence[int], query_rows: Sequence[int], pool_rows: Sequence[int],
                k: int = 10, min_share: float = 0.7, approximate_above: int = 20_000,
                search: PoolSearch | None = None) -> pd.DataFrame:
    """Return the label-noise candidates among `query_rows`: examples whose `k` nearest rows of `pool_rows`
    (the training split; the example itself left out) mostly carry another label.

    One row per candidate: ``row``, ``label``, ``neighbour_label`` (the most frequent other label among the
    neighbours; ties to the smaller id), ``share`` (fraction of the neighbours whose label differs from the
    example's, >= `min_share`), ``neighbour_share`` (fraction carrying ``neighbour_label``) and ``cosine`` (mean
    cosine to the neighbours); highest share first. `vectors` has one row per example of the run; `search` as
    for `near_duplicates`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    pool_rows = np.asarray(pool_rows, dtype=np.int64)
    columns = ["row", "label", "neighbour_label", "share", "neighbour_share", "cosine"]
    k = min(k, len(pool_rows) - 1)
    if len(query_rows) == 0 or k < 1:
        return pd.DataFrame(columns=columns)
    if search is None:
        cosines, positions = nearest(_unit_rows(vectors[pool_rows]), vectors[query_rows], k + 1, approximate_above)
    else:
        cosines, positions = search(_unit_rows(vectors[query_rows]), k + 1)
    pool_position = {int(r): j for j, r in enumerate(pool_rows)}
    n_classes = int(labels.max(initial=0)) + 1
    records = []
    for i, row in enumerate(query_rows):
        own = pool_position.get(int(row), -2)
        keep = (positions[i] >= 0) & (positions[i] != own)
        neighbours, sims = positions[i][keep][:k], cosines[i][keep][:k]
        if len(neighbours) == 0:
            continue
        neighbour_labels = labels[pool_rows[neighbours]]
        label = int(labels[row])
        other = neighbour_labels != label
        share = float(other.mean())
        if share < min_share:
            continue
        counts = np.bincount(neighbour_labels[other], minlength=n_classes)
        majority = int(np.argmax(counts))
        records.append({"row": int(row), "label": label, "neighbour_label": majority, "share": share,
                        "neighbour_share": float(counts[majority] / len(neighbours)), "cosine": float(sims.mean())})
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.sort_values(["share", "neighbour_share", "cosine", "row"], ascending=[False, False, False, True],
                             ignore_index=True)


def length_outliers(n_tokens: Sequence[int], content_tokens: Sequence[int], truncated: Sequence[bool],
                    iqr_factor: float = 3.0, short_max_content_tokens: int = 1) -> dict[str, Any]:
    """Return the rows of the length outliers: ``truncated`` (cut at max_length), ``long`` (token count above
    Tukey's fence Q3 + `iqr_factor` x IQR, the IQR at least 1 token, truncated rows left out), ``short`` (at most
    `short_max_content_tokens` tokens that are neither special tokens nor punctuation), and ``fence`` and
    ``quartiles`` (Q1, median, Q3) of the token counts. Rows are int64 arrays, longest or shortest first."""
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    content = np.asarray(content_tokens, dtype=np.int64)
    cut = np.asarray(truncated, dtype=bool)
    if len(n_tokens) == 0:
        empty = np.empty(0, dtype=np.int64)
        return {"truncated": empty, "long": empty, "short": empty, "fence": math.nan, "quartiles": []}
    q1, median, q3 = (float(v) for v in np.percentile(n_tokens, [25, 50, 75]))
    fence = q3 + iqr_factor * max(q3 - q1, 1.0)
    long_rows = np.flatnonzero((n_tokens > fence) & ~cut)
    short_rows = np.flatnonzero(content <= short_max_content_tokens)

    def by(rows: np.ndarray, key: np.ndarray, descending: bool) -> np.ndarray:
        return rows[np.lexsort((rows, -key[rows] if descending else key[rows]))].astype(np.int64)

    return {"truncated": by(np.flatnonzero(cut), n_tokens, True), "long": by(long_rows, n_tokens, True),
            "short": by(short_rows, content, False), "fence": fence, "quartiles": [q1, median, q3]}


def _column_variances(X: Any, means: np.ndarray) -> np.ndarray:
    """Return each column's population variance (zeros included) given its mean."""
    n = X.shape[0]
    if n == 0:
        return np.zeros(X.shape[1])
    squares = X.multiply(X).sum(axis=0) if sp.issparse(X) else np.square(np.asarray(X, dtype=np.float64)).sum(axis=0)
    return np.maximum(np.asarray(squares, dtype=np.float64).ravel() / n - means ** 2, 0.0)


def salience_shift(R_train: Any, R_other: Any, presence_train: Any, presence_other: Any, vocab: Sequence[str],
                   ignore_mask: np.ndarray, n: int = 5) -> pd.DataFrame:
    """Return the terms whose mean salience differs most between two groups of rows (the training split and
    another), `n` per direction: ``term``, ``column``, ``mean_train``, ``mean_other``, ``difference`` (other minus
    train), ``z`` (Welch's statistic: the difference over sqrt(var_train / n_train + var_other / n_other); inf when
    both variances are 0), ``support_train``/``support_other`` (rows containing the term) and ``higher_in``
    ("train" or "other"). A term must occur in at least analysis.default_min_support rows of the group where it
    is more salient; ranking as in analysis.distinctive_terms (difference of means, then mean, support, column)."""
    from core.analysis import _column_means, _document_counts, _rank_distinctive, default_min_support

    columns = ["term", "column", "mean_train", "mean_other", "difference", "z", "support_train", "support_other",
               "higher_in"]
    if R_train.shape[0] == 0 or R_other.shape[0] == 0:
        return pd.DataFrame(columns=columns)
    mean_train, mean_other = _column_means(R_train), _column_means(R_other)
    se = np.sqrt(_column_variances(R_train, mean_train) / R_train.shape[0]
                 + _column_variances(R_other, mean_other) / R_other.shape[0])
    support_train, support_other = _document_counts(presence_train), _document_counts(presence_other)
    records = []
    for higher, (m_in, m_out, support, size) in {
            "other": (mean_other, mean_train, support_other, R_other.shape[0]),
            "train": (mean_train, mean_other, support_train, R_train.shape[0])}.items():
        order, _ = _rank_distinctive(m_in, m_out, support, ignore_mask, default_min_support(size), n)
        for j in order:
            difference = float(mean_other[j] - mean_train[j])
            z = difference / se[j] if se[j] > 0 else math.copysign(math.inf, difference)
            records.append({"term": vocab[j], "column": int(j), "mean_train": float(mean_train[j]),
                            "mean_other": float(mean_other[j]), "difference": difference, "z": float(z),
                            "support_train": int(support_train[j]), "support_other": int(support_other[j]),
                            "higher_in": higher})
    return pd.DataFrame.from_records(records, columns=columns)


# --------------------------------------------------------------------------- wiring to a run


def _finding(finding_id: str, title: str, rows: Sequence[int], notes: Sequence[str] | None = None,
             count: int | None = None, **extra: Any) -> dict[str, Any]:
    """Return a finding: its id, title, count (default: all `rows`) and its first MAX_STORED_ROWS rows with their
    notes (`notes` may hold just those: callers need not write a note for every row of a large finding)."""
    total = len(rows)
    rows = [int(r) for r in rows[:MAX_STORED_ROWS]]
    notes = list(notes) if notes is not None else [""] * len(rows)
    return {"id": finding_id, "title": title, "count": total if count is None else int(count),
            "rows": rows[:MAX_STORED_ROWS], "notes": [str(n) for n in notes[:MAX_STORED_ROWS]], **extra}


def _check(name: str, status: str, summary: str, findings: list[dict[str, Any]] | None = None,
           count: int | None = None, **extra: Any) -> dict[str, Any]:
    """Return one check's result; `count` (what a headline shows) defaults to the findings' summed counts."""
    findings = findings or []
    return {"check": name, "title": CHECKS[name], "status": status, "summary": summary, "findings": findings,
            "count": sum(f["count"] for f in findings) if count is None else int(count), **extra}


def _fmt_ratio(ratio: float) -> str:
    return "∞" if math.isinf(ratio) else f"{ratio:.1f}"


def _sample(rows: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Return a seeded random sample of `size` of `rows`, in row order."""
    return np.sort(np.random.default_rng(seed).choice(np.asarray(rows, dtype=np.int64), size, replace=False))


def pool_search(run: Any, key: Any, vectors: np.ndarray, pool_rows: np.ndarray) -> PoolSearch | None:
    """Return a search of the pool rows through the run's stored approximate index of the dense representation
    `key` (core.neighbours) when the run has more than neighbours.APPROXIMATE_ABOVE rows, else None (the checks
    then index the pool in memory). The index is the one the Neighbours page uses: built once, memory-mapped."""
    from core import neighbours

    n = len(run.examples)
    if n <= neighbours.APPROXIMATE_ABOVE or sp.issparse(vectors):
        return None
    index, _ = neighbours.load_or_build_index(run.path, key.normalised().slug, run.representation_file(key), vectors)
    pool_rows = np.asarray(pool_rows, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[pool_rows] = True
    position = np.full(n, -1, dtype=np.int64)
    position[pool_rows] = np.arange(len(pool_rows))

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cosines, ids = index.search_many(queries, k, mask, n_probe=max(8, index.params.n_probe // 4))
        return cosines, np.where(ids >= 0, position[np.maximum(ids, 0)], -1)

    return search


def _imbalance_check(examples: pd.DataFrame, names: list[str], settings: WarningSettings) -> dict[str, Any]:
    table = class_imbalance(examples["label"], examples["split"].astype(str), names, settings.imbalance_ratio)
    labels, splits = examples["label"].to_numpy(), examples["split"].astype(str).to_numpy()

    def name(c: int) -> str:
        return names[c] if 0 <= c < len(names) else str(c)

    findings, per_split = [], []
    for i, r in enumerate(table.itertuples()):
        mix = " · ".join(f"{name(c)} {k:,} ({k / max(r.examples, 1):.0%})" for c, k in r.counts.items())
        per_split.append({"split": r.split, "examples": r.examples, "classes": mix, "ratio": _fmt_ratio(r.ratio),
                          "imbalanced": r.imbalanced})
        if r.imbalanced:
            rows = np.flatnonzero((splits == r.split) & np.isin(labels, r.minority))
            minority = ", ".join(name(c) for c in r.minority)
            findings.append(_finding(
                f"imbalance-{i}", f"Split {r.split}: the largest class has {_fmt_ratio(r.ratio)}x the examples of "
                f"the smallest ({mix}); under-represented: {minority}", rows,
                [f"{name(int(labels[j]))}, an under-represented class of split {r.split}" for j in rows]))
    summary = (f"{len(findings)} of {len(table)} split{'s' if len(table) != 1 else ''} imbalanced (largest class ≥ "
               f"{settings.imbalance_ratio:g}x the smallest)" if findings else
               f"Every split is balanced within {settings.imbalance_ratio:g}x.")
    return _check("imbalance", "warn" if findings else "ok", summary, findings, count=len(findings),
                  table=per_split)


def _splits(examples: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Return the training rows and (name, rows) of every other split; no training rows without a `train`."""
    splits = examples["split"].astype(str).to_numpy()
    train = np.flatnonzero(np.char.lower(splits.astype(str)) == TRAIN_SPLIT)
    others = [(s, np.flatnonzero(splits == s)) for s in dict.fromkeys(splits.tolist()) if s.lower() != TRAIN_SPLIT]
    return train, others


def _leakage_check(run: Any, settings: WarningSettings) -> dict[str, Any]:
    from core.representations import RepresentationKey

    examples = run.examples
    train, others = _splits(examples)
    if len(train) == 0 or not others:
        return _check("leakage", "skipped", "Needs a split named `train` and at least one other split "
                      "(precompute with --split-col).")
    key = RepresentationKey(settings.duplicate_representation)
    vectors = run.representation(key)
    search = pool_search(run, key, vectors, train)
    texts = examples["text"].astype(str).tolist()
    findings, total = [], 0
    sampled = []
    for i, (split, rows) in enumerate(others):
        if len(rows) > settings.max_query_rows:
            sampled.append(f"a seeded sample of {settings.max_query_rows:,} of the {len(rows):,} {split} examples")
            rows = _sample(rows, settings.max_query_rows)
        pairs = near_duplicates(vectors, texts, rows, train, settings.duplicate_min_cosine,
                                settings.duplicate_min_text_similarity, settings.duplicate_neighbours,
                                settings.approximate_above, search)
        if pairs.empty:
            continue
        total += len(pairs)
        ordered, notes = [], []
        for p in pairs.itertuples():
            how = "same text once normalised" if p.same_text else f"{p.text_similarity:.0%} character similarity"
            ordered += [p.row, p.duplicate_of]
            notes += [f"{split} row {p.row} duplicates train row {p.duplicate_of} (cosine {p.cosine:.3f}, {how})",
                      f"train row {p.duplicate_of}, duplicated by {split} row {p.row}"]
        exact = int(pairs["same_text"].sum())
        findings.append(_finding(
            f"leakage-{i}", f"{len(pairs):,} {split} example{'s' if len(pairs) != 1 else ''} duplicate a training "
            f"example ({exact:,} with the same text once normalised, {len(pairs) - exact:,} nearly)", ordered, notes,
            count=len(pairs), pairs=pairs.head(MAX_STORED_ROWS // 2).to_dict(orient="records")))
    compared = ", ".join(f"{len(rows):,} {s}" for s, rows in others)
    criterion = (f"B2 cosine ≥ {settings.duplicate_min_cosine:g} and the same normalised text or ≥ "
                 f"{settings.duplicate_min_text_similarity:.0%} character similarity")
    summary = (f"{total:,} examples outside the training split duplicate a training example ({criterion}): a model "
               "scored on them is partly scored on its training data." if findings else
               f"No duplicates of the {len(train):,} training examples among {compared} ({criterion}).")
    if sampled:
        summary += f" Looked up: {'; '.join(sampled)}."
    return _check("leakage", "warn" if findings else "ok", summary, findings)


def _noise_check(run: Any, settings: WarningSettings) -> dict[str, Any]:
    from core.representations import REPRESENTATIONS, RepresentationKey

    examples = run.examples
    train, _ = _splits(examples)
    pool = train if len(train) else np.arange(len(examples))
    k = min(settings.noise_neighbours, len(pool) - 1)
    where = "training" if len(train) else "other"
    if k < 3:
        return _check("noise", "skipped", f"Too few {where} examples ({len(pool)}) for a neighbour vote.")
    key = RepresentationKey(settings.noise_representation)
    vectors = run.representation(key)
    labels = examples["label"].to_numpy()
    queries = np.arange(len(examples))
    if len(queries) > settings.max_query_rows:
        queries = _sample(queries, settings.max_query_rows)
    found = label_noise(vectors, labels, queries, pool, k, settings.noise_min_share, settings.approximate_above,
                        pool_search(run, key, vectors, pool))
    names = run.label_names
    rep = REPRESENTATIONS[settings.noise_representation].title
    criterion = (f"at least {settings.noise_min_share:.0%} of its {k} nearest {where} examples ({rep}) carry "
                 "another label" + (f", among a seeded sample of {len(queries):,} of the {len(examples):,} examples"
                                    if len(queries) < len(examples) else ""))
    if found.empty:
        return _check("noise", "ok", f"No example where {criterion}.")
    notes = [f"labelled {names[r.label]}; {r.share:.0%} of its {k} nearest {where} neighbours carry another label, "
             f"{r.neighbour_share:.0%} {names[r.neighbour_label]}" for r in found.itertuples()]
    finding = _finding("noise", f"{len(found):,} example{'s' if len(found) != 1 else ''} where {criterion}: "
                       "mislabelled, or ambiguous", found["row"], notes)
    return _check("noise", "warn", f"{len(found):,} label-noise candidates ({criterion}).", [finding])


def _length_check(run: Any, settings: WarningSettings) -> dict[str, Any]:
    from core.representations import row_ids

    row_ptr = np.asarray(run.row_ptr)
    n_tokens = np.diff(row_ptr)
    ignored = np.asarray(run.ignore_mask, dtype=bool)[np.asarray(run.token_ids)]
    content = np.bincount(row_ids(row_ptr)[~ignored], minlength=len(n_tokens))
    max_length = run.manifest.get("settings", {}).get("max_length")
    examples = run.examples
    truncated = (examples["truncated"].to_numpy(dtype=bool) if "truncated" in examples
                 else n_tokens >= (max_length or np.iinfo(np.int64).max))
    found = length_outliers(n_tokens, content, truncated, settings.long_iqr_factor,
                            settings.short_max_content_tokens)
    findings = []
    if len(found["truncated"]):
        rows = found["truncated"]
        findings.append(_finding("length-truncated", f"{len(rows):,} example{'s' if len(rows) != 1 else ''} longer "
                                 f"than max_length = {max_length} tokens: the model saw, and the saliency covers, "
                                 "only part of the text", rows,
                                 [f"cut at {n_tokens[r]} tokens" for r in rows[:MAX_STORED_ROWS]]))
    if len(found["long"]):
        rows = found["long"]
        findings.append(_finding("length-long", f"{len(rows):,} unusually long example{'s' if len(rows) != 1 else ''}"
                                 f" (more than {found['fence']:.0f} tokens, Q3 + {settings.long_iqr_factor:g} IQR; "
                                 f"median {found['quartiles'][1]:.0f})", rows,
                                 [f"{n_tokens[r]} tokens" for r in rows[:MAX_STORED_ROWS]]))
    if len(found["short"]):
        rows = found["short"]
        most = settings.short_max_content_tokens
        findings.append(_finding("length-short", f"{len(rows):,} example{'s' if len(rows) != 1 else ''} with at most "
                                 f"{most} word piece{'s' if most != 1 else ''} besides special tokens and punctuation:"
                                 " little for the model, or the saliency, to go on", rows,
                                 [f"{content[r]} content token{'s' if content[r] != 1 else ''}"
                                  for r in rows[:MAX_STORED_ROWS]]))
    q1, median, q3 = found["quartiles"] or [math.nan] * 3
    summary = (f"Tokens per example: median {median:.0f}, quartiles {q1:.0f}-{q3:.0f}, max_length {max_length}."
               + ("" if findings else " No truncated, far-out long or near-empty example."))
    return _check("length", "warn" if findings else "ok", summary, findings)


def _shift_check(run: Any, settings: WarningSettings) -> dict[str, Any]:
    from core.representations import DEFAULT_TERMS_UNIT, RepresentationKey

    examples = run.examples
    train, others = _splits(examples)
    if len(train) == 0 or not others:
        return _check("shift", "skipped", "Needs a split named `train` and at least one other split.")
    method = run.methods[0]
    R = run.representation(RepresentationKey("s1", method, None, unit=DEFAULT_TERMS_UNIT).normalised())
    space = run.term_space(DEFAULT_TERMS_UNIT)
    R = sp.csr_matrix(R) if sp.issparse(R) else np.asarray(R)
    presence = sp.csr_matrix(space.presence)
    split_of = examples["split"].astype(str).to_numpy()
    findings, tables = [], []
    for i, (split, rows) in enumerate(others):
        table = salience_shift(R[train], R[rows], presence[train], presence[rows], space.vocab, space.ignore_mask,
                               settings.shift_terms)
        if table.empty:
            continue
        both = np.concatenate([train, rows])
        present = presence[both].tocsc()
        for j, t in enumerate(table.itertuples()):
            has = np.sort(both[present[:, t.column].indices])
            higher = split if t.higher_in == "other" else "train"
            significant = abs(t.z) >= settings.shift_min_z
            findings.append(_finding(
                f"shift-{i}-{j}", f"“{t.term}” is more salient in {higher} (mean salience train {t.mean_train:.3f}, "
                f"{split} {t.mean_other:.3f}, z {t.z:.1f}{'' if significant else ', within chance'})", has,
                [f"contains “{t.term}” ({split_of[r]})" for r in has[:MAX_STORED_ROWS]],  # the rows kept
                term=t.term, split=split, higher_in=higher, significant=bool(significant)))
        tables.append({"split": split, "terms": table.drop(columns="column").to_dict(orient="records")})
    significant = sum(f["significant"] for f in findings)
    summary = (f"Whole words whose mean {method} salience per example (S1, k = all, summed over pieces) differs "
               f"most between train and {', '.join(s for s, _ in others)}: {significant} of {len(findings)} beyond "
               f"chance (Welch |z| ≥ {settings.shift_min_z:g}). A term much more salient in one split may be an "
               "artefact of how that split was collected." if findings else
               "No term's salience differs between the splits.")
    return _check("shift", "info" if significant else "ok", summary, findings, count=significant, tables=tables,
                  method=method)


def compute_warnings(run: Any, settings: WarningSettings = WarningSettings(),
                     progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Return every check's result for `run` (a core.store.Run) as a JSON-ready dict."""
    steps = [("imbalance", lambda: _imbalance_check(run.examples, run.label_names, settings)),
             ("leakage", lambda: _leakage_check(run, settings)), ("noise", lambda: _noise_check(run, settings)),
             ("length", lambda: _length_check(run, settings)), ("shift", lambda: _shift_check(run, settings))]
    checks = []
    for i, (name, step) in enumerate(steps):
        if progress:
            progress(i / len(steps), f"Checking the dataset: {CHECKS[name].lower()}")
        checks.append(step())
    return {"version": WARNINGS_VERSION, "settings": dataclasses.asdict(settings), "run": run.run_id,
            "fingerprint": run.manifest.get("fingerprint"), "examples": len(run.examples), "checks": checks}


def warnings_file(run: Any, settings: WarningSettings = WarningSettings()):
    """Return where the warnings of `run` under `settings` are stored (JSON in the run's analysis folder)."""
    return run.analysis_dir() / f"warnings-v{WARNINGS_VERSION}-{settings.digest()}.json"


# Runs of more examples than this compute their warnings in a child process (`python -m core.dataset_warnings`):
# the B2/B3 matrices, their neighbour indexes and the texts it reads (several GB at 1,000,000 examples) then never
# enter the dashboard's process, which reads the stored JSON.
CHILD_PROCESS_ABOVE = 200_000


def _stored(run: Any, settings: WarningSettings) -> dict[str, Any] | None:
    try:
        stored = json.loads(warnings_file(run, settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or damaged
    if (stored.get("version") == WARNINGS_VERSION and stored.get("settings") == dataclasses.asdict(settings)
            and stored.get("examples") == len(run.examples)
            and stored.get("fingerprint") == run.manifest.get("fingerprint")):
        return stored
    return None


def _compute_in_child(run: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "core.dataset_warnings", str(run.path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])


def load_or_compute(run: Any, settings: WarningSettings = WarningSettings(),
                    progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Return the stored warnings of `run` when they match this version, settings and run; otherwise compute
    them and store them atomically (a read-only run folder still gets them, unstored). A run of more than
    CHILD_PROCESS_ABOVE examples computes them in a child process when the settings are the defaults (in this
    one if that fails)."""
    from core.store import atomic_write_json

    path = warnings_file(run, settings)
    stored = _stored(run, settings)
    if stored is not None:
        return stored
    if len(run.examples) > CHILD_PROCESS_ABOVE and settings == WarningSettings():
        try:
            _compute_in_child(run)
            stored = _stored(run, settings)
            if stored is not None:
                return stored
        except (OSError, RuntimeError):
            pass  # computed below, in this process
    report = compute_warnings(run, settings, progress)
    try:
        atomic_write_json(path, report)
    except OSError:
        pass
    return json.loads(json.dumps(report, default=str))  # the same types a later load returns


def find(report: dict[str, Any], finding_id: str) -> dict[str, Any] | None:
    """Return the finding with id `finding_id` in a warnings report (None when it has none)."""
    for check in report.get("checks", []):
        for finding in check.get("findings", []):
            if finding.get("id") == finding_id:
                return finding
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m core.dataset_warnings RUN_DIR`: compute and store the run's warnings (default settings)."""
    import sys

    from core.store import open_run

    global CHILD_PROCESS_ABOVE
    CHILD_PROCESS_ABOVE = sys.maxsize  # this is the child: compute here
    load_or_compute(open_run((sys.argv[1:] if argv is None else argv)[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

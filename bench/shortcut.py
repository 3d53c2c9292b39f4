"""Shortcut-discovery benchmark (method.md §4.1): does clustering each representation isolate the planted examples?

    .venv/bin/python -m bench.shortcut [--seeds 5] [--with-ig [--ig-steps 20]]

Uses the embedded demo (Rotten Tomatoes with planted COMMON / CLASS_0 / CLASS_1 terms, MiniLM fine-tuned on its
training split): the test rows of the demo run (`make demo-data`: Grad-L2 and Gradient x Input), or with
`--with-ig` a run of the test split that adds Integrated Gradients (about 20 minutes of CPU). Takes the test
examples predicted as class 0, clusters every representation into 3 and 20 clusters over several k-means seeds,
and reports size / precision / recall of the highest-precision cluster with respect to the synthetic (shortcut)
examples. Writes bench/results/shortcut.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis import cluster_rows
from core.demo import ensure_demo
from core.precompute import PrecomputeSettings, precompute
from core.representations import RepresentationKey, default_key
from core.store import cache_dir, open_run

RESULTS = Path(__file__).resolve().parent / "results" / "shortcut.md"

PAPER_3 = {  # BERT-base, 227 synthetic examples, 3 clusters (size, precision, recall)
    "B2 average embedding": (.36, .35, .62),
    "B1 PMI bag of words (pieces)": (.00, .50, .00),
    "B3 [CLS] encoding": (.20, 1.00, 1.00),
    "S1 salience vocabulary (grad_l2, k=5, pieces)": (.20, 1.00, 1.00),
    "S2 salience embedding (grad_l2, k=5, pieces)": (.22, .93, 1.00),
}


def best_cluster(labels: np.ndarray, truth: np.ndarray) -> dict:
    """Return the highest-precision cluster (ties: higher recall): id, size (fraction), n, precision, recall.
    Shared by the shortcut, representation and discovery benchmarks."""
    best = None
    for c in np.unique(labels):
        members = labels == c
        tp = int((members & truth).sum())
        precision, recall = tp / members.sum(), tp / max(int(truth.sum()), 1)
        if best is None or (precision, recall) > (best["precision"], best["recall"]):
            best = {"cluster": int(c), "n": int(members.sum()), "size": float(members.mean()),
                    "precision": float(precision), "recall": float(recall)}
    return best


def keys_to_compare(methods: list[str]) -> list[RepresentationKey]:
    """Return the representations of the paper's table (word pieces, as in the paper) and the product's default,
    for each attribution method."""
    keys = [RepresentationKey("b2"), RepresentationKey("b1"), RepresentationKey("b3")]
    for method in methods:
        keys.append(default_key(method))
        for k in (5, None):
            keys += [RepresentationKey("s1", method, k), RepresentationKey("s2", method, k)]
        keys.append(RepresentationKey("s1", method, None, unit="word_sum"))
    unique = []
    for key in keys:
        if key.normalised() not in unique:
            unique.append(key.normalised())
    return unique


def evaluate(run, rows: np.ndarray, truth: np.ndarray, keys: list[RepresentationKey], seeds: int) -> pd.DataFrame:
    """Return one row per (representation, n_clusters): mean and std over seeds of size, precision, recall."""
    records = []
    for key in keys:
        matrix = run.representation(key)[rows]
        for n_clusters in (3, 20):
            bests = [best_cluster(cluster_rows(matrix, n_clusters, seed=s), truth) for s in range(seeds)]
            scores = np.array([[b["size"], b["precision"], b["recall"]] for b in bests])
            default = " **(product default)**" if key == default_key(key.method or "grad_l2") else ""
            records.append({"representation": key.label() + (" +special/punct" if key.include_special else "")
                            + default,
                            "clusters": n_clusters,
                            **{f"{m}": scores[:, i].mean() for i, m in enumerate(("size", "precision", "recall"))},
                            **{f"{m}_std": scores[:, i].std() for i, m in enumerate(("size", "precision", "recall"))}})
    return pd.DataFrame(records)


def fmt(row: pd.Series, metric: str) -> str:
    return f"{row[metric]:.2f} ± {row[metric + '_std']:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/shortcut.md; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--with-ig", action="store_true", help="also Integrated Gradients (a run of the test split)")
    parser.add_argument("--ig-steps", type=int, default=20)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    demo = ensure_demo()
    data = pd.read_csv(demo.data_path)
    if args.with_ig:
        test = data[data["split"] == "test"].reset_index(drop=True)
        test_csv = cache_dir() / "bench" / "shortcut_test.csv"
        test_csv.parent.mkdir(parents=True, exist_ok=True)
        test.to_csv(test_csv, index=False)
        methods = ["grad_l2", "integrated_gradients"]
        result = precompute(demo.model_dir, test_csv, PrecomputeSettings(
            methods=tuple(methods), ig_steps=args.ig_steps, max_length=128, batch_size=32))
        run = open_run(result.run_path)
        in_test = np.ones(len(run.examples), dtype=bool)
    else:
        from core.demo import find_demo_run

        path = find_demo_run()
        if path is None:
            raise SystemExit("no demo run: run `make demo-data` first (or pass --with-ig)")
        run = open_run(path)
        test = data
        methods = [m for m in ("grad_l2", "grad_x_input") if m in run.methods]
        in_test = (run.examples["split"].astype(str) == "test").to_numpy()
    examples = run.examples
    synthetic = test["synthetic"].to_numpy()[examples["source_row"].to_numpy()]
    shortcut_rows = np.isin(synthetic, ["shortcut_0", "shortcut_1"])
    rows = np.flatnonzero(in_test & (examples["pred"].to_numpy() == 0))
    truth = shortcut_rows[rows]
    examples, shortcut_rows = examples[in_test], shortcut_rows[in_test]
    rule_accuracy = float((examples["pred"].to_numpy()[shortcut_rows]
                           == examples["label"].to_numpy()[shortcut_rows]).mean())

    keys = keys_to_compare(methods)
    keys.append(RepresentationKey("s1", "grad_l2", 5, include_special=True))
    table = evaluate(run, rows, truth, keys, args.seeds)
    elapsed = time.perf_counter() - t0

    lines = [
        "# Shortcut discovery (method.md §4.1)", "",
        "Regenerate: `.venv/bin/python -m bench.shortcut` (needs the demo run: `make demo-data`; `--with-ig` adds "
        "Integrated Gradients on a run of the test split, about 20 minutes of CPU).", "",
        "- Model: the demo MiniLM fine-tuned on the synthetic Rotten Tomatoes training split (`cache/demo/model`).",
        f"- Test split: {len(examples)} sentences; accuracy {examples['correct'].mean():.3f}; "
        f"accuracy on the {int(shortcut_rows.sum())} synthetic shortcut examples (the rule decides the label): "
        f"**{rule_accuracy:.3f}**; on the other examples {examples['correct'][~shortcut_rows].mean():.3f}.",
        f"- Slice: test examples predicted as class 0: {len(rows)}, of which {int(truth.sum())} synthetic "
        f"({truth.mean():.2f}).",
        f"- Each cell: mean ± std over {args.seeds} k-means seeds of the highest-precision cluster's size (fraction "
        "of the slice), precision and recall w.r.t. the synthetic examples. Special tokens and punctuation are left "
        "out of the representations unless the row says `+special/punct`.",
        (f"- Integrated Gradients: {args.ig_steps} steps, [PAD]-embedding baseline. " if args.with_ig else
         f"- Run: the demo run `{run.run_id}` (its test rows). ")
        + f"Wall time of the whole benchmark: {elapsed:.0f} s on {run.manifest['device']}.", "",
    ]
    for n_clusters in (3, 20):
        lines += [f"## {n_clusters} clusters", "",
                  "| representation | size | precision | recall | paper (size / P / R, 3 clusters) |",
                  "|---|---|---|---|---|"]
        for _, row in table[table["clusters"] == n_clusters].iterrows():
            paper = PAPER_3.get(row["representation"]) if n_clusters == 3 else None
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) if paper else ""
            lines.append(f"| {row['representation']} | {fmt(row, 'size')} | {fmt(row, 'precision')} | "
                         f"{fmt(row, 'recall')} | {paper_cell} |")
        lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

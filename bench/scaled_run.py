"""Build a large run from a real run's rows, for dashboard timings at scale.

    .venv/bin/python -m bench.scaled_run --rows 100000 [--source RUN_DIR] [--out cache/bench]

Every example of the scaled run is a copy of a real example of the source run (text, label, split, prediction,
probabilities, tokens, offsets) with its stored saliency scores multiplied by seeded log-normal noise (sigma 0.15)
and its [CLS] vector jittered by 5% of its norm. The representations built from it are therefore realistic (real
token distributions, real salient terms, real cluster structure) but no two copies are identical, which keeps
k-means, UMAP and nearest-neighbour search from seeing exact duplicates. The first copy of the source is kept
unchanged. The run is written through `core.store.publish_run`, so the dashboard opens it like any other run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from core.store import MANIFEST, Run, open_run, publish_run

SCORE_NOISE_SIGMA = 0.15
CLS_NOISE_FRACTION = 0.05


def _ragged_take(values: np.ndarray, row_ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (concatenated values of `rows`, new row_ptr) for ragged arrays stored as values + row_ptr."""
    lengths = (row_ptr[1:] - row_ptr[:-1])[rows]
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    starts = row_ptr[:-1][rows]
    # index of every output element in the source: start of its row + position inside the row
    positions = np.arange(new_ptr[-1], dtype=np.int64) - np.repeat(new_ptr[:-1], lengths) + np.repeat(starts, lengths)
    return np.asarray(values)[positions], new_ptr


def scaled_run_folder(out_root: Path, source_run_id: str, n_rows: int, seed: int = 0) -> Path:
    """Return where `scale_run` writes the run of `n_rows` copied from `source_run_id` with `seed`."""
    return out_root / "runs" / f"scaled-{source_run_id}-{n_rows}{f'-seed{seed}' if seed else ''}"


def scale_run(source: Run, n_rows: int, out_root: Path, seed: int = 0) -> Path:
    """Write a run of `n_rows` examples copied (with noise, see module doc) from `source`; return its folder."""
    rng = np.random.default_rng(seed)
    n_src = len(source.examples)
    rows = np.concatenate([np.arange(min(n_rows, n_src)),
                           rng.integers(0, n_src, size=max(0, n_rows - n_src))]).astype(np.int64)
    copies = np.arange(n_rows) >= n_src  # the first copy of each source row stays exact

    final = scaled_run_folder(out_root, source.run_id, n_rows, seed)
    staging = out_root / "runs" / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tokens").mkdir(parents=True)
    (staging / "saliency").mkdir()

    examples = source.examples.iloc[rows].reset_index(drop=True)
    examples["source_row"] = rows
    examples.to_parquet(staging / "examples.parquet", index=False)

    row_ptr = source.row_ptr
    for name in ("token_ids", "char_starts", "char_ends"):
        values, new_ptr = _ragged_take(source._token_array(name), row_ptr, rows)
        np.save(staging / "tokens" / f"{name}.npy", values, allow_pickle=False)
    np.save(staging / "tokens" / "row_ptr.npy", new_ptr, allow_pickle=False)

    lengths = np.diff(new_ptr)
    token_is_copy = np.repeat(copies, lengths)
    for method in source.methods:
        scores, _ = _ragged_take(source.scores(method), row_ptr, rows)
        scores = scores.astype(np.float32)
        noise = rng.lognormal(0.0, SCORE_NOISE_SIGMA, size=len(scores)).astype(np.float32)
        scores[token_is_copy] *= noise[token_is_copy]
        np.save(staging / "saliency" / f"{method}.npy", scores, allow_pickle=False)

    cls = np.asarray(source.cls())[rows].astype(np.float32)
    jitter = rng.standard_normal(cls.shape).astype(np.float32)
    jitter *= (CLS_NOISE_FRACTION * np.linalg.norm(cls, axis=1, keepdims=True)
               / np.sqrt(cls.shape[1]))
    cls[copies] += jitter[copies]
    np.save(staging / "cls.npy", cls, allow_pickle=False)

    for name in ("embedding_matrix.npy", "ignore_mask.npy", "vocab.json"):
        shutil.copyfile(source.path / name, staging / name)

    manifest = json.loads((source.path / MANIFEST).read_text(encoding="utf-8"))
    manifest.pop("files", None)
    correct = examples["correct"].to_numpy(dtype=bool)
    manifest["counts"] = {
        **manifest["counts"],
        "examples": int(n_rows),
        "tokens": int(new_ptr[-1]),
        "per_label": {str(k): int(v) for k, v in examples["label"].value_counts().sort_index().items()},
        "per_split": {str(k): int(v) for k, v in examples["split"].value_counts().sort_index().items()},
    }
    manifest["accuracy"] = {"overall": float(correct.mean()),
                            **{str(s): float(g["correct"].mean()) for s, g in examples.groupby("split")}}
    manifest["fingerprint"] = f"scaled-{manifest['fingerprint']}-{n_rows}-seed{seed}"
    manifest["scaled_from"] = {"run": source.run_id, "rows": n_rows, "seed": seed,
                               "score_noise_sigma": SCORE_NOISE_SIGMA, "cls_noise_fraction": CLS_NOISE_FRACTION}
    # The model and data files belong to the source run; mark the data as a different file so the dashboard's
    # staleness check does not compare this run with the source's CSV.
    manifest["data"] = {**manifest["data"], "path": f"{manifest['data']['path']} (scaled to {n_rows} rows)"}
    return publish_run(staging, final, manifest)


def main(argv: list[str] | None = None) -> int:
    from core.demo import find_demo_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--source", type=Path, default=None, help="run folder to copy rows from (default: the demo run)")
    parser.add_argument("--out", type=Path, default=Path("cache/bench"), help="cache root to write runs/<name> under")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source_path = args.source or find_demo_run()
    if source_path is None:
        parser.error("no demo run found; run `make demo-data` first or pass --source")
    t0 = time.perf_counter()
    path = scale_run(open_run(source_path), args.rows, args.out, args.seed)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

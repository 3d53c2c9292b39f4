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
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from core.representations import DEFAULT_K, DEFAULT_TERMS_UNIT, DEFAULT_WEIGHTING, RepresentationKey, default_key
from core.store import MANIFEST, Run, open_run, publish_run

SCORE_NOISE_SIGMA = 0.15
CLS_NOISE_FRACTION = 0.05
# Examples written per step: memory stays bounded by one chunk (about 0.3 GB at the demo's 28 tokens a row).
CHUNK_ROWS = 100_000


def _ragged_take(values: np.ndarray, row_ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (concatenated values of `rows`, new row_ptr) for ragged arrays stored as values + row_ptr."""
    lengths = (row_ptr[1:] - row_ptr[:-1])[rows]
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    starts = row_ptr[:-1][rows]
    # index of every output element in the source: start of its row + position inside the row
    positions = np.arange(new_ptr[-1], dtype=np.int64) - np.repeat(new_ptr[:-1], lengths) + np.repeat(starts, lengths)
    return np.asarray(values)[positions], new_ptr


def scaled_data_digest(source_digest: str, n_rows: int, seed: int) -> str:
    """Return the data digest a scaled run records: its rows are a seeded draw of `n_rows` copies, another data
    set than the source's file or than a draw of another size or seed (the Compare page offers as run B only a run
    over the same data)."""
    return hashlib.sha256(f"{source_digest} scaled to {n_rows} rows, seed {seed}".encode()).hexdigest()


def scaled_run_folder(out_root: Path, source_run_id: str, n_rows: int, seed: int = 0) -> Path:
    """Return where `scale_run` writes the run of `n_rows` copied from `source_run_id` with `seed`."""
    return out_root / "runs" / f"scaled-{source_run_id}-{n_rows}{f'-seed{seed}' if seed else ''}"


def _ragged_into(target: np.ndarray, values: np.ndarray, row_ptr: np.ndarray, rows: np.ndarray,
                 out_lo: int) -> int:
    """Copy the ragged values of `rows` into `target[out_lo:]`; return the position after the last one written."""
    part, _ = _ragged_take(values, row_ptr, rows)
    target[out_lo:out_lo + len(part)] = part
    return out_lo + len(part)


def _copy_word_index(source: Run, rows: np.ndarray, new_ptr: np.ndarray, staging: Path, chunk_rows: int) -> None:
    """Write `staging/words/` (core.words' derived index) for the copied rows, from the source run's index.

    A copy has the source row's text and tokens, so its words are the source row's words: the word ids are taken
    ragged by the word row offsets, each occurrence keeps its number of tokens, and the token positions move from
    the source row's first token to the copy's. Equal to what `build_word_index` computes from the copied text
    (a test checks it) at a fraction of the cost (262 s for 1,000,000 rows of the demo data, 2 cores).
    """
    from core.words import WORDS_VERSION

    index = source.word_index
    src_tok_ptr = np.asarray(source.row_ptr, dtype=np.int64)
    word_ptr = np.asarray(index.row_ptr, dtype=np.int64)
    occ_sizes = np.diff(np.asarray(index.occ_ptr, dtype=np.int64))
    # tokens of each source row that belong to a word (they lie inside the row's token range)
    tok_in_row_ptr = np.asarray(index.occ_ptr, dtype=np.int64)[word_ptr]
    n_words = (word_ptr[1:] - word_ptr[:-1])[rows]
    n_word_tokens = (tok_in_row_ptr[1:] - tok_in_row_ptr[:-1])[rows]
    out_word_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(n_words, out=out_word_ptr[1:])
    out_tok_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(n_word_tokens, out=out_tok_ptr[1:])
    folder = staging / "words"
    folder.mkdir()
    word_ids = np.lib.format.open_memmap(folder / "word_ids.npy", "w+", np.int32, (int(out_word_ptr[-1]),))
    token_index = np.lib.format.open_memmap(folder / "token_index.npy", "w+", np.int64, (int(out_tok_ptr[-1]),))
    occ_ptr = np.lib.format.open_memmap(folder / "occ_ptr.npy", "w+", np.int64, (int(out_word_ptr[-1]) + 1,))
    occ_ptr[0] = 0
    for lo in range(0, len(rows), chunk_rows):
        part = rows[lo:lo + chunk_rows]
        w_lo, w_hi = int(out_word_ptr[lo]), int(out_word_ptr[lo + len(part)])
        _ragged_into(word_ids, index.word_ids, word_ptr, part, w_lo)
        sizes, _ = _ragged_take(occ_sizes, word_ptr, part)
        occ_ptr[w_lo + 1:w_hi + 1] = out_tok_ptr[lo] + np.cumsum(sizes)
        positions, part_ptr = _ragged_take(index.token_index, tok_in_row_ptr, part)
        shift = np.repeat(new_ptr[lo:lo + len(part)] - src_tok_ptr[part], np.diff(part_ptr))
        token_index[int(out_tok_ptr[lo]):int(out_tok_ptr[lo + len(part)])] = positions + shift
    for array in (word_ids, token_index, occ_ptr):
        array.flush()
    del word_ids, token_index, occ_ptr
    np.save(folder / "row_ptr.npy", out_word_ptr, allow_pickle=False)
    for name in ("vocab.json", "piece_matrix.npz"):
        shutil.copyfile(source.path / "words" / name, folder / name)
    (folder / "meta.json").write_text(json.dumps({"version": WORDS_VERSION, "examples": int(len(rows))}),
                                      encoding="utf-8")


# The examples table's row groups: pyarrow's default, what the precompute's DataFrame.to_parquet writes (a run of up
# to 1,048,576 examples is one group, read in one piece; groups of CHUNK_ROWS made the dashboard concatenate them)
EXAMPLES_ROW_GROUP = 1024 * 1024


def scale_run(source: Run, n_rows: int, out_root: Path, seed: int = 0, chunk_rows: int = CHUNK_ROWS,
              representations: bool = True) -> Path:
    """Write a run of `n_rows` examples copied (with noise, see module doc) from `source`; return its folder.

    Written `chunk_rows` examples at a time into memory-mapped arrays (the examples table in row groups of
    EXAMPLES_ROW_GROUP, as the precompute writes it), so memory stays bounded by one chunk (or row group) plus the
    per-example offsets, whatever `n_rows`. The source's word index is carried over
    (`words/`, derived); with `representations`, the default representation and the whole-word S1 that every
    page reads its terms from are built into the run, as the precompute does.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_src = source.n_examples
    rows = np.concatenate([np.arange(min(n_rows, n_src)),
                           rng.integers(0, n_src, size=max(0, n_rows - n_src))]).astype(np.int64)
    copies = np.arange(n_rows) >= n_src  # the first copy of each source row stays exact

    final = scaled_run_folder(out_root, source.run_id, n_rows, seed)
    staging = out_root / "runs" / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tokens").mkdir(parents=True)
    (staging / "saliency").mkdir()

    src_examples = source.examples
    table = pa.Table.from_pandas(src_examples.assign(source_row=np.arange(n_src, dtype=np.int64)),
                                 preserve_index=False)
    with pq.ParquetWriter(staging / "examples.parquet", table.schema) as writer:
        for lo in range(0, n_rows, EXAMPLES_ROW_GROUP):  # source_row: the source row each copy came from
            part = table.take(pa.array(rows[lo:lo + EXAMPLES_ROW_GROUP]))
            writer.write_table(part, row_group_size=EXAMPLES_ROW_GROUP)

    row_ptr = np.asarray(source.row_ptr, dtype=np.int64)
    lengths = (row_ptr[1:] - row_ptr[:-1])[rows]
    new_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    np.save(staging / "tokens" / "row_ptr.npy", new_ptr, allow_pickle=False)
    n_tokens = int(new_ptr[-1])

    for name in ("token_ids", "char_starts", "char_ends"):
        values = np.asarray(source._token_array(name))
        target = np.lib.format.open_memmap(staging / "tokens" / f"{name}.npy", "w+", values.dtype, (n_tokens,))
        for lo in range(0, n_rows, chunk_rows):
            _ragged_into(target, values, row_ptr, rows[lo:lo + chunk_rows], int(new_ptr[lo]))
        target.flush()
        del target

    for method in source.stored_methods:
        values = np.asarray(source.scores(method), dtype=np.float32)
        target = np.lib.format.open_memmap(staging / "saliency" / f"{method}.npy", "w+", np.float32, (n_tokens,))
        for lo in range(0, n_rows, chunk_rows):
            part = rows[lo:lo + chunk_rows]
            scores, part_ptr = _ragged_take(values, row_ptr, part)
            noise = rng.lognormal(0.0, SCORE_NOISE_SIGMA, size=len(scores)).astype(np.float32)
            token_is_copy = np.repeat(copies[lo:lo + len(part)], np.diff(part_ptr))
            scores[token_is_copy] *= noise[token_is_copy]
            target[int(new_ptr[lo]):int(new_ptr[lo + len(part)])] = scores
        target.flush()
        del target

    src_cls = np.asarray(source.cls(), dtype=np.float32)
    cls = np.lib.format.open_memmap(staging / "cls.npy", "w+", np.float32, (n_rows, src_cls.shape[1]))
    for lo in range(0, n_rows, chunk_rows):
        part = src_cls[rows[lo:lo + chunk_rows]]
        jitter = rng.standard_normal(part.shape).astype(np.float32)
        jitter *= CLS_NOISE_FRACTION * np.linalg.norm(part, axis=1, keepdims=True) / np.sqrt(part.shape[1])
        is_copy = copies[lo:lo + len(part)]
        part[is_copy] += jitter[is_copy]
        cls[lo:lo + len(part)] = part
    cls.flush()
    del cls

    for name in ("embedding_matrix.npy", "ignore_mask.npy", "vocab.json"):
        shutil.copyfile(source.path / name, staging / name)
    _copy_word_index(source, rows, new_ptr, staging, chunk_rows)

    manifest = json.loads((source.path / MANIFEST).read_text(encoding="utf-8"))
    manifest.pop("files", None)
    labels = src_examples["label"].to_numpy()[rows]
    splits = src_examples["split"].astype(str).to_numpy()[rows]
    correct = src_examples["correct"].to_numpy(dtype=bool)[rows]
    manifest["counts"] = {
        **manifest["counts"],
        "examples": int(n_rows),
        "tokens": n_tokens,
        "per_label": {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))},
        "per_split": {str(k): int(v) for k, v in zip(*np.unique(splits, return_counts=True))},
    }
    manifest["accuracy"] = {"overall": float(correct.mean()),
                            **{str(s): float(correct[splits == s].mean()) for s in np.unique(splits)}}
    manifest["fingerprint"] = f"scaled-{manifest['fingerprint']}-{n_rows}-seed{seed}"
    manifest["scaled_from"] = {"run": source.run_id, "rows": n_rows, "seed": seed,
                               "score_noise_sigma": SCORE_NOISE_SIGMA, "cls_noise_fraction": CLS_NOISE_FRACTION}
    # The model and data files belong to the source run; mark the data as a different file so the dashboard's
    # staleness check does not compare this run with the source's CSV.
    manifest["data"] = {**manifest["data"], "path": f"{manifest['data']['path']} (scaled to {n_rows} rows)",
                        "digest": scaled_data_digest(manifest["data"]["digest"], n_rows, seed)}
    if representations:  # what the precompute stores too: the default representation and the terms' S1
        staged = Run(staging, {"settings": {"methods": list(source.stored_methods)},
                               "model": {"id2label": manifest["model"]["id2label"]}})
        method = source.stored_methods[0]
        staged.representation(default_key(method))
        staged.representation(RepresentationKey("s1", method, DEFAULT_K, unit=DEFAULT_TERMS_UNIT,
                                                weighting=DEFAULT_WEIGHTING))
        del staged
    return publish_run(staging, final, manifest)


def main(argv: list[str] | None = None) -> int:
    from core.demo import find_demo_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--source", type=Path, default=None, help="run folder to copy rows from (default: the demo run)")
    parser.add_argument("--out", type=Path, default=Path("cache/bench"), help="cache root to write runs/<name> under")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-representations", dest="representations", action="store_false",
                        help="do not build the default representations into the run (built on first use instead)")
    args = parser.parse_args(argv)
    source_path = args.source or find_demo_run()
    if source_path is None:
        parser.error("no demo run found; run `make demo-data` first or pass --source")
    t0 = time.perf_counter()
    path = scale_run(open_run(source_path), args.rows, args.out, args.seed,
                     representations=args.representations)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

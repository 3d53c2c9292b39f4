"""Variants tried on the discovery run after bench.discovery: can any S1/S2 setting or more k-means restarts isolate
the IMDB rating reviews at precision >= .9?

    python -m bench.discovery_variants [--run cache/bench/discovery/runs/<id>]

Its tables and the notes written from them are in bench/results/discovery_variants.md.

Prints, for each representation and 5/10 clusters, the best cluster's precision and recall per k-means seed
(the dashboard's `cluster_rows`, and scikit-learn KMeans with n_init=10), against the strict rating regex seen by
the model (bench.discovery's truth), then the false positives of the default's best cluster with their six most
salient tokens and the end of their text.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.preprocessing import normalize

from bench.discovery import CACHE, rating_spans, seen_spans
from bench.shortcut import best_cluster
from core.analysis import cluster_rows
from core.representations import RepresentationKey
from core.store import list_runs, open_run

KEYS = [RepresentationKey("s1", "grad_l2", None), RepresentationKey("s1", "grad_l2", None, weighting="idf"),
        RepresentationKey("s1", "grad_l2", 3), RepresentationKey("s1", "grad_l2", 5),
        RepresentationKey("s1", "grad_l2", 5, weighting="idf"), RepresentationKey("s1", "grad_l2", 10),
        RepresentationKey("s1", "grad_l2", 10, weighting="idf"), RepresentationKey("s2", "grad_l2", 5),
        RepresentationKey("s2", "grad_l2", 5, weighting="idf"), RepresentationKey("b3")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery_variants", description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="the discovery run (default: the newest under its cache)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    run = open_run(Path(args.run) if args.run else list_runs(CACHE / "runs")[0])
    texts = run.examples["text"].astype(str).tolist()
    pred = run.examples["pred"].to_numpy()
    starts, ends, rp = run._token_array("char_starts"), run._token_array("char_ends"), run.row_ptr
    seen = np.array([bool(seen_spans(rating_spans(t), np.asarray(starts[rp[i]:rp[i + 1]]),
                                     np.asarray(ends[rp[i]:rp[i + 1]]))) for i, t in enumerate(texts)])
    rows = np.flatnonzero(pred == 0)
    truth = seen[rows]
    print(f"run {run.run_id}: {len(rows)} predicted negative, {int(truth.sum())} with a rating in view")
    print("| representation | clusters | P per seed (cluster_rows) | R | P per seed (KMeans n_init=10) | R |")
    print("|---|---|---|---|---|---|")
    for key in KEYS:
        matrix = run.representation(key)[rows]
        for n in (5, 10):
            ours = [best_cluster(cluster_rows(matrix, n, seed=s), truth) for s in range(args.seeds)]
            restarts = [best_cluster(KMeans(n, n_init=10, random_state=s).fit_predict(normalize(matrix)), truth)
                        for s in range(args.seeds)]
            print(f"| {key.label()} | {n} | " + " | ".join(
                f"{', '.join(f'{r[m]:.2f}' for r in res)}" for res in (ours, restarts) for m in ("precision",
                                                                                                  "recall")) + " |",
                flush=True)
    matrix = run.representation(KEYS[0])[rows]
    labels = cluster_rows(matrix, 5, seed=1)
    best = best_cluster(labels, truth)
    members = rows[labels == best["cluster"]]
    print(f"\nfalse positives of {KEYS[0].label()}, 5 clusters, seed 1 (precision {best['precision']:.2f}):")
    ids, scores, vocab = run.token_ids, run.scores("grad_l2"), run.vocab
    for i in [m for m in members if not seen[m]][:12]:
        sal = np.asarray(scores[rp[i]:rp[i + 1]])
        top = [vocab[ids[rp[i] + j]] for j in np.argsort(-sal)[:6]]
        print(f"- {top} … {texts[i][-110:]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

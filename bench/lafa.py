"""LAFA benchmark (issue 13): faithfulness, stability and shortcut discovery of LAFA against its base, Grad-L2.

    .venv/bin/python -m bench.lafa [--source RUN] [--work DIR] [--n 200] [--stability-n 1000] [--seeds 5]
        [--head-n 0]

Copies the demo run (`--source`, default: core.demo.find_demo_run(), the run of rotten_tomatoes_shortcut.csv) into a
work cache (`--work`, default a folder under the system temp dir) so the derived files and check results are written
into the copy, never into the source run. Then, on the copy:

1. derives LAFA from the stored Grad-L2 (core.lafa: time, neighbour statistics);
2. AOPC comprehensiveness / sufficiency of grad_l2, lafa and random on a seeded sample of `--n` examples (the
   settings of section 1 of faithfulness.md; its figures repeat only when both ran on the same demo run);
3. stability (core.faithfulness.stability): mean IoU of the top-30% token sets of each example and its 3 nearest
   same-class examples, neighbours by cosine on B2 (average input embedding) and on B3 ([CLS], LAFA's own space);
4. shortcut discovery (bench.shortcut.evaluate) with LAFA maps beside Grad-L2 maps;
5. with `--head-n N`, the untrained-head test of grad_l2 and lafa on N examples (LAFA under the untrained head is
   recomputed from that model's Grad-L2 on the sample and its neighbours).

Writes (or replaces) the section "## 5. LAFA" of bench/results/faithfulness.md.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import demo_source_run
from bench.faithfulness import faithfulness_md, randomization_md
from bench.shortcut import evaluate, fmt, keys_to_compare
from core import faithfulness as fa
from core import lafa
from core.models import load_classifier
from core.store import open_run

RESULTS = Path(__file__).resolve().parent / "results" / "faithfulness.md"
SECTION = "## 5. LAFA"


def copy_run(source: Path, work: Path) -> Path:
    """Return the copy of run folder `source` under `work`/runs (made once; derived files go there)."""
    target = work / "runs" / source.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("analysis"))
    return target


def stability_md(tables: dict[str, pd.DataFrame]) -> str:
    lines = ["| method | " + " | ".join(f"IoU, neighbours on {k} (mean / median)" for k in tables) + " |",
             "|---" * (1 + len(tables)) + "|"]
    methods = next(iter(tables.values()))["method"].tolist()
    for m in methods:
        cells = []
        for table in tables.values():
            r = table.set_index("method").loc[m]
            cells.append(f"{r['iou_mean']:.3f} / {r['iou_median']:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shortcut_rows(run) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows: test examples predicted as class 0, truth: whether each is a planted shortcut example)."""
    data = pd.read_csv(run.manifest["data"]["path"])
    examples = run.examples
    synthetic = data["synthetic"].to_numpy()[examples["source_row"].to_numpy()]
    planted = np.isin(synthetic, ["shortcut_0", "shortcut_1"])
    in_test = (examples["split"].astype(str) == "test").to_numpy()
    rows = np.flatnonzero(in_test & (examples["pred"].to_numpy() == 0))
    return rows, planted[rows]


def reading(faith: dict, faith_table: pd.DataFrame, stab: dict[str, pd.DataFrame], table: pd.DataFrame,
            head: dict | None) -> list[str]:
    """Return bullet lines comparing lafa with grad_l2 from the results."""
    diffs, z = [], []
    for col in ("aopc_comprehensiveness", "aopc_sufficiency"):
        wide = faith_table.pivot(index="example", columns="method", values=col)
        d = (wide["lafa"] - wide["grad_l2"]).to_numpy()
        se = d.std(ddof=1) / np.sqrt(len(d))
        diffs.append(f"{col.split('_')[1]} {d.mean():+.3f} ± {se:.3f}")
        z.append(abs(d.mean()) / max(se, 1e-12))
    rec = {r["method"]: r for r in faith["methods"]}
    g, la = rec["grad_l2"], rec["lafa"]
    better = la["aopc_comprehensiveness"] > g["aopc_comprehensiveness"]
    out = [f"- Faithfulness: lafa {'beats' if better else 'does not beat'}"
           f" grad_l2 on comprehensiveness ({la['aopc_comprehensiveness']:.3f} vs {g['aopc_comprehensiveness']:.3f})"
           f" and {'beats' if la['aopc_sufficiency'] < g['aopc_sufficiency'] else 'does not beat'} it on sufficiency"
           f" ({la['aopc_sufficiency']:.3f} vs {g['aopc_sufficiency']:.3f}); paired lafa - grad_l2 per example "
           f"(mean ± standard error): {', '.join(diffs)}"
           + ("; both differences are under two standard errors on this sample: no clear difference"
              if max(z) < 2 else "")
           + ". Both are far from random."]
    for name, t in stab.items():
        v = t.set_index("method")["iou_mean"]
        out.append(f"- Stability, neighbours on {name}: IoU {v['lafa']:.3f} (lafa) vs {v['grad_l2']:.3f} (grad_l2), "
                   f"random {v[fa.RANDOM]:.3f}.")
    for n_clusters in (3, 20):
        t = table[(table["clusters"] == n_clusters) & table["representation"].str.contains("product default")]
        cells = {("lafa" if "lafa" in r["representation"] else "grad_l2"): r for _, r in t.iterrows()}
        if {"lafa", "grad_l2"} <= set(cells):
            a, b = cells["lafa"], cells["grad_l2"]
            out.append(f"- Shortcut, product default representation, {n_clusters} clusters: lafa precision "
                       f"{a['precision']:.2f} / recall {a['recall']:.2f} vs grad_l2 {b['precision']:.2f} / "
                       f"{b['recall']:.2f}.")
    if head is not None:
        hr = {r["method"]: r for r in head["methods"]}
        out.append(f"- Untrained head: Jaccard@25% {hr['lafa']['jaccard_mean']:.2f} (lafa) vs "
                   f"{hr['grad_l2']['jaccard_mean']:.2f} (grad_l2); both maps still barely change.")
    return out


def write_section(text: str) -> None:
    """Replace the LAFA section of the results file (or append it)."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    if SECTION in current:
        head, rest = current.split(SECTION, 1)
        following = rest.find("\n## ")
        tail = rest[following + 1:] if following >= 0 else ""
        current = head.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    RESULTS.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lafa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=None, help="run folder to copy (default: the demo run)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "saliency-atlas-lafa-bench"),
                        help="cache folder the run is copied into")
    parser.add_argument("--n", type=int, default=200, help="examples for the AOPC check")
    parser.add_argument("--stability-n", type=int, default=1000, help="examples for the stability measure")
    parser.add_argument("--seeds", type=int, default=5, help="k-means seeds for the shortcut benchmark")
    parser.add_argument("--head-n", type=int, default=0, help="examples for the untrained-head test (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = demo_source_run(args.source)
    t_all = time.perf_counter()
    run = open_run(copy_run(Path(source), Path(args.work)))
    if run.staleness():  # the checks load the model from its path: its maps must come from that model
        print(f"error: {'; '.join(run.staleness())}", file=sys.stderr)
        return 2
    (run.path / "derived" / "lafa.npy").unlink(missing_ok=True)  # time the derivation itself
    t0 = time.perf_counter()
    run.derive("lafa")
    derive_seconds = time.perf_counter() - t0
    info = run.derived_info("lafa") or {}
    params = lafa.DEFAULT_PARAMS
    other = [m for m in run.stored_methods if m != "grad_l2"]
    methods = ["grad_l2", "lafa", *other]

    t0 = time.perf_counter()
    stab = {name: fa.stability(run, methods, args.stability_n, args.seed, k=3, fraction=0.3, neighbours_on=key)
            for name, key in (("B2 average embedding", "b2"), ("B3 [CLS]", "b3"))}
    stability_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, truth = shortcut_rows(run)
    table = evaluate(run, rows, truth, keys_to_compare(["grad_l2", "lafa"]), args.seeds)
    shortcut_seconds = time.perf_counter() - t0

    loaded = load_classifier(run.manifest["model"]["path"])
    settings = fa.CheckSettings(sample_size=args.n, seed=args.seed, methods=("grad_l2", "lafa"))
    faith, faith_table = fa.run_faithfulness(run, settings, loaded)
    head = None
    if args.head_n:
        head, _ = fa.run_randomization(run, fa.CheckSettings(sample_size=args.head_n, seed=args.seed,
                                                             methods=("grad_l2", "lafa")), None, loaded)

    records = {r["method"]: r for r in faith["methods"]}
    g, la, rnd = records["grad_l2"], records["lafa"], records[fa.RANDOM]
    m = run.manifest
    lines = [
        SECTION, "",
        "LAFA (Zhang et al., core/lafa.py) derived from the stored Grad-L2 of the demo run, no backward pass. "
        f"Regenerate: `python -m bench.lafa --n {args.n} --stability-n {args.stability_n} --seeds {args.seeds}"
        + (f" --head-n {args.head_n}" if args.head_n else "") + "` (copies the demo run into a temporary cache "
        f"first; here run `{run.run_id}`, {m['counts']['examples']:,} examples, device {loaded.device}, "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads on a CPU shared with other jobs).", "",
        f"Parameters: k = {params.k} neighbours by cosine on the [CLS] encoding, same predicted class, kept when "
        f"closer than the {params.quantile:.0%} quantile of random-pair distances (cut-off "
        f"{info.get('distance_cutoff', float('nan')):.3f}); token kernel = cosine of the input embeddings where "
        f">= {params.kernel_threshold} (else 0), 1 for the same token; λ = {params.lam}. Derivation: "
        f"{derive_seconds:.1f} s for {m['counts']['tokens']:,} tokens; {info.get('mean_neighbours', 0):.1f} "
        f"neighbours per example on average, {info.get('examples_without_neighbours', 0):,} examples without any "
        f"(their LAFA is their Grad-L2); {info.get('kernel_partners_per_token_id', 0):.2f} kernel partners per token "
        "id (itself included).", "",
        f"### AOPC ({faith['examples']} examples, seed {args.seed}, mask removal)", "",
        "Settings of section 1; grad_l2 and random are recomputed here on this run's sample (section 1 ran on an "
        "earlier demo run, so its figures differ).", "",
        faithfulness_md(faith), "",
        f"- lafa vs grad_l2: comprehensiveness {la['aopc_comprehensiveness']:.3f} vs "
        f"{g['aopc_comprehensiveness']:.3f} ({la['aopc_comprehensiveness'] - g['aopc_comprehensiveness']:+.3f}), "
        f"sufficiency {la['aopc_sufficiency']:.3f} vs {g['aopc_sufficiency']:.3f} "
        f"({la['aopc_sufficiency'] - g['aopc_sufficiency']:+.3f}); random {rnd['aopc_comprehensiveness']:.3f} / "
        f"{rnd['aopc_sufficiency']:.3f}. Check time {faith['seconds']:.0f} s.", "",
        f"### Stability ({args.stability_n} examples, seed {args.seed})", "",
        "Definition (core.faithfulness.stability): for each sampled example, its 3 nearest other examples with the "
        "same predicted class in the whole run, by cosine on a representation; per pair, the IoU of the sets of "
        "token ids at the top-30% positions of the two maps (special tokens and punctuation not ranked); mean over "
        "the 3 neighbours, then mean (median) over the sample. Neighbours on B2 (average input embedding) are "
        "independent of the model's decision and of every method; B3 ([CLS]) is the space LAFA aggregates over, "
        f"so it favours LAFA by construction. Random = seeded uniform maps. {stability_seconds:.0f} s.", "",
        stability_md(stab), "",
        f"### Shortcut discovery with LAFA maps ({len(rows)} test examples predicted as class 0, "
        f"{int(truth.sum())} planted; mean ± std over {args.seeds} k-means seeds; {shortcut_seconds:.0f} s)", "",
    ]
    for n_clusters in (3, 20):
        lines += [f"{n_clusters} clusters:", "", "| representation | size | precision | recall |", "|---|---|---|---|"]
        for _, row in table[table["clusters"] == n_clusters].iterrows():
            if "grad_l2" in row["representation"] or "lafa" in row["representation"]:
                lines.append(f"| {row['representation']} | {fmt(row, 'size')} | {fmt(row, 'precision')} | "
                             f"{fmt(row, 'recall')} |")
        lines.append("")
    if head is not None:
        lines += [f"### Untrained-head test ({head['examples']} examples, {head['seconds']:.0f} s)", "",
                  "LAFA under the untrained head is recomputed from that model's Grad-L2 on the sample and its "
                  "neighbours (the run's [CLS] graph: the encoder is unchanged).", "", randomization_md(head), ""]
    lines += ["### Reading", "", *reading(faith, faith_table, stab, table, head), "",
              f"Whole invocation: {time.perf_counter() - t_all:.0f} s. The AOPC and untrained-head results are "
              "cached in the copy's analysis/checks: their times above are those of their first computation, and a "
              "rerun recomputes only the derivation, the stability and the shortcut clusters.", ""]
    text = "\n".join(lines)
    write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

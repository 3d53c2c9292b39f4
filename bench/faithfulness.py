"""Faithfulness and randomization benchmark on the demo run (issue 6).

    .venv/bin/python -m bench.faithfulness [--n 200] [--im-n 40] [--im-top-n 5] [--seed 0] [--removal mask]

On a seeded sample of `--n` examples of the demo run (manifest data path ending in rotten_tomatoes_shortcut.csv;
build it first with `make demo`): AOPC comprehensiveness / sufficiency of every stored method against a random
ranking, and the untrained-head test (Jaccard@25%, Spearman, AOPC of both models). Input marginalization costs
one forward pass per (token, candidate), so it runs on a smaller sample of `--im-n` examples, with the dataset's
token frequencies as the candidate distribution (no masked LM ships with the demo), beside Grad-L2 and random on
the same sample. Writes bench/results/faithfulness.md; results are also cached in the run's analysis folder.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from core import faithfulness as fa
from core.demo import find_demo_run
from core.models import load_classifier
from core.store import open_run

RESULTS = Path(__file__).resolve().parent / "results" / "faithfulness.md"


def faithfulness_md(summary: dict) -> str:
    """Return a markdown table of AOPC per method (random last), with the per-q comprehensiveness."""
    frame = pd.DataFrame(summary["methods"])
    qs = summary["settings"]["fractions"]
    lines = ["| method | AOPC comprehensiveness ↑ | AOPC sufficiency ↓ | " +
             " | ".join(f"comp@{q:.0%}" for q in qs) + " |", "|---" * (3 + len(qs)) + "|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['method']} | {r['aopc_comprehensiveness']:.3f} | {r['aopc_sufficiency']:.3f} | " +
                     " | ".join(f"{r[f'comp@{q:g}']:.3f}" for q in qs) + " |")
    return "\n".join(lines)


def randomization_md(summary: dict) -> str:
    """Return a markdown table of the untrained-head comparison per method."""
    lines = ["| method | Jaccard@25% mean (median) | chance Jaccard | Spearman mean (median) | "
             "AOPC comp. trained | AOPC comp. untrained head | barely changes |", "|---" * 7 + "|"]
    for r in summary["methods"]:
        lines.append(f"| {r['method']} | {r['jaccard_mean']:.3f} ({r['jaccard_median']:.3f}) | "
                     f"{r['jaccard_chance']:.3f} | {r['spearman_mean']:.3f} ({r['spearman_median']:.3f}) | "
                     f"{r['aopc_comprehensiveness_trained']:.3f} | {r['aopc_comprehensiveness_other']:.3f} | "
                     f"{'**yes**' if r['barely_changes'] else 'no'} |")
    return "\n".join(lines)


def reading(*summaries: dict) -> list[str]:
    """Return bullet lines stating, from the results, which methods beat random and which barely change."""
    lines = []
    for summary in summaries:
        records = {r["method"]: r for r in summary["methods"]}
        if summary["kind"] == "faithfulness":
            rand = records.pop(fa.RANDOM)
            for m, r in records.items():
                beats = (r["aopc_comprehensiveness"] > rand["aopc_comprehensiveness"]
                         and r["aopc_sufficiency"] < rand["aopc_sufficiency"])
                lines.append(f"- {m} ({summary['examples']} ex.): {'beats' if beats else 'does NOT beat'} random on "
                             f"both AOPCs ({r['aopc_comprehensiveness']:.3f} vs {rand['aopc_comprehensiveness']:.3f}"
                             f" comprehensiveness, {r['aopc_sufficiency']:.3f} vs {rand['aopc_sufficiency']:.3f}"
                             " sufficiency).")
        else:
            for m, r in records.items():
                verdict = "barely changes" if r["barely_changes"] else "changes"
                lines.append(f"- {m} ({summary['examples']} ex.) {verdict} under an untrained head: Jaccard@25% "
                             f"{r['jaccard_mean']:.2f} (chance {r['jaccard_chance']:.2f}), Spearman "
                             f"{r['spearman_mean']:.2f}, while its faithfulness on the untrained model drops to "
                             f"AOPC {r['aopc_comprehensiveness_other']:.3f}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results file; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.faithfulness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="examples for the stored methods")
    parser.add_argument("--im-n", type=int, default=40, help="examples for input marginalization")
    parser.add_argument("--im-top-n", type=int, default=5, help="input marginalization candidates per token")
    parser.add_argument("--ig-n", type=int, default=100, help="examples for integrated gradients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--removal", default="mask", choices=fa.REMOVALS)
    parser.add_argument("--force", action="store_true", help="recompute results cached in the run")
    args = parser.parse_args(argv)
    path = find_demo_run()
    if path is None:
        print("error: no demo run in the cache; build it with `make demo` first.", file=sys.stderr)
        return 2
    run = open_run(path)
    t0 = time.perf_counter()
    loaded = load_classifier(run.manifest["model"]["path"])
    main_settings = fa.CheckSettings(sample_size=args.n, seed=args.seed, removal=args.removal)
    faith, _ = fa.run_faithfulness(run, main_settings, loaded, force=args.force)
    head, _ = fa.run_randomization(run, main_settings, None, loaded, force=args.force)
    im_settings = fa.CheckSettings(sample_size=args.im_n, seed=args.seed, removal=args.removal,
                                   methods=("grad_l2", "input_marginalization"), im_top_n=args.im_top_n)
    im_faith, _ = fa.run_faithfulness(run, im_settings, loaded, force=args.force)
    im_head, _ = fa.run_randomization(run, im_settings, None, loaded, force=args.force)
    ig_settings = fa.CheckSettings(sample_size=args.ig_n, seed=args.seed, removal=args.removal,
                                   methods=("grad_l2", "integrated_gradients"))
    ig_faith, _ = fa.run_faithfulness(run, ig_settings, loaded, force=args.force)
    ig_head, _ = fa.run_randomization(run, ig_settings, None, loaded, force=args.force)
    timings = {f"faithfulness, {args.n} examples": faith["seconds"],
               f"faithfulness with integrated gradients, {args.ig_n} examples": ig_faith["seconds"],
               f"untrained head with integrated gradients, {args.ig_n} examples": ig_head["seconds"],
               f"untrained head, {args.n} examples (reuses the faithfulness of the trained maps)": head["seconds"],
               f"faithfulness with input marginalization, {args.im_n} examples": im_faith["seconds"],
               f"untrained head with input marginalization, {args.im_n} examples": im_head["seconds"]}

    m = run.manifest
    text = "\n".join([
        "# Faithfulness and randomization checks on the demo run",
        "",
        f"Run `{run.run_id}`: `{Path(m['data']['path']).name}` ({m['counts']['examples']:,} examples), model "
        f"`{m['model']['path']}` ({m['model'].get('architecture', '?')}). Device: {loaded.device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, a CPU shared with "
        f"other jobs). Command: `python -m bench.faithfulness --n {args.n} --im-n {args.im_n} --im-top-n "
        f"{args.im_top_n} --ig-n {args.ig_n} --seed {args.seed} --removal {args.removal}`.",
        "",
        f"Removal by **{args.removal}**; tokens ranked by |score|; q in 5/10/20/50% of the non-special tokens "
        "(at least one token); the target is the model's predicted class. Random = seeded uniform scores.",
        "",
        f"## 1. AOPC per method against random ({faith['examples']} examples, seed {args.seed})",
        "",
        faithfulness_md(faith),
        "",
        f"## 2. Untrained-head test ({head['examples']} examples): trained maps vs maps of the same model with "
        f"its classification head re-initialised (seed {args.seed})",
        "",
        f"The two models agree on {head['prediction_agreement']:.0%} of the predictions. Both are attributed "
        "for the trained model's predicted class. 'Chance Jaccard' is the trained map against a random map. "
        f"'Barely changes' = mean Jaccard or mean Spearman ≥ {main_settings.warn_threshold}.",
        "",
        randomization_md(head),
        "",
        f"## 3. Input marginalization ({im_faith['examples']} examples, dataset token frequencies as the candidate "
        f"distribution, top-{args.im_top_n} candidates, cumulative probability ≤ {im_settings.im_cum_prob})",
        "",
        faithfulness_md(im_faith),
        "",
        "Untrained-head test on the same sample:",
        "",
        randomization_md(im_head),
        "",
        f"## 4. Integrated Gradients ({ig_faith['examples']} examples, {ig_settings.ig_steps} steps, [PAD] baseline)",
        "",
        faithfulness_md(ig_faith),
        "",
        "Untrained-head test on the same sample:",
        "",
        randomization_md(ig_head),
        "",
        "## Reading",
        "",
        *reading(faith, im_faith, head, im_head),
        "",
        "## Timings",
        "",
        "Seconds when each result was computed (later runs read it from the run's `analysis/checks/`):",
        "",
        *[f"- {k}: {v:.0f} s" for k, v in timings.items()],
        f"- this invocation, with model loading: {time.perf_counter() - t0:.0f} s",
        "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

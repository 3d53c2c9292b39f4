"""Sweep the demo model's training settings: does a lone planted term leave predictions alone?

For each setting and seed: fine-tune the packaged MiniLM on the demo's training frame (`core.demo.training_frame`),
then measure on the demo's test split the planted-row accuracy and the single-term consistency (`core.demo.evaluate`),
and on the 1,400 untouched test sentences, with each of COMMON, CLASS_0, CLASS_1 and a neutral control word inserted
at a random position, the fraction of predictions left unchanged (n = 1,400 per word instead of 200 test rows).

    python -m bench.demo_sweep [--device cuda] [--fp32] [--grid default] [--out bench/results/demo_sweep.md]

Cost is reported as training rows x epochs relative to one epoch of the default frame, which is what sets CPU time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core import demo
from core.models import load_classifier, predict_proba, quiet_transformers

NEUTRAL = "today"
GRIDS = {
    # label: (epochs, augment, lr, consistency_weight, batch_size, seeds)
    "default": {
        "1 epoch (before)": (1, 3000, 2e-4, 0.0, 32, (0, 1, 2)),
        "2 epochs": (2, 3000, 2e-4, 0.0, 32, (0, 1, 2)),
        "all copies": (1, 6530, 2e-4, 0.0, 32, (0, 1, 2)),
        "lr 3e-4": (1, 3000, 3e-4, 0.0, 32, (0, 1)),
        "consistency 1": (1, 3000, 2e-4, 1.0, 32, (0, 1, 2)),
        "consistency 3": (1, 3000, 2e-4, 3.0, 32, (0, 1, 2)),
        "consistency 3, all copies": (1, 6530, 2e-4, 3.0, 32, (0, 1)),
        "consistency 3, lr 3e-4": (1, 3000, 3e-4, 3.0, 32, (0, 1)),
    },
    "steps": {
        "batch 16": (1, 3000, 2e-4, 0.0, 16, (0, 1, 2)),
        "batch 16, lr 1e-4": (1, 3000, 1e-4, 0.0, 16, (0, 1, 2)),
        "batch 16, lr 1.5e-4": (1, 3000, 1.5e-4, 0.0, 16, (0, 1, 2)),
        "batch 8, lr 1e-4": (1, 3000, 1e-4, 0.0, 8, (0, 1, 2)),
        "2 epochs, 1,500 copies": (2, 1500, 2e-4, 0.0, 32, (0, 1, 2)),
        "batch 16, consistency 0.3": (1, 3000, 2e-4, 0.3, 16, (0, 1)),
    },
    "consistency": {
        "batch 16, consistency 0.3": (1, 3000, 2e-4, 0.3, 16, (2, 3, 4)),
        "consistency 0.3": (1, 3000, 2e-4, 0.3, 32, (0, 1, 2)),
        "batch 16, consistency 0.1": (1, 3000, 2e-4, 0.1, 16, (0, 1, 2)),
    },
    "quick": {"1 epoch": (1, 300, 2e-4, 0.0, 32, (0,)), "consistency 3": (1, 300, 2e-4, 3.0, 32, (0,))},
}


def inserted_consistency(model_dir: Path, texts: list[str], words: list[str], seed: int = 0,
                         device: str | None = None) -> dict[str, float]:
    """Return, per word, the fraction of `texts` whose predicted class is unchanged by inserting the word at a
    random position (the same positions for every word)."""
    with quiet_transformers():
        loaded = load_classifier(model_dir, device=device)
    base = predict_proba(loaded, texts, batch_size=256, max_length=demo.DEFAULT_MAX_LENGTH).argmax(1)
    rng = np.random.default_rng(seed)
    positions = [int(rng.integers(0, len(t.split()) + 1)) for t in texts]
    out = {}
    for word in words:
        changed = []
        for text, at in zip(texts, positions):
            parts = text.split()
            changed.append(" ".join(parts[:at] + [word] + parts[at:]))
        pred = predict_proba(loaded, changed, batch_size=256, max_length=demo.DEFAULT_MAX_LENGTH).argmax(1)
        out[word] = float((pred == base).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--fp32", action="store_true", help="no autocast on CUDA (what the CPU build computes)")
    parser.add_argument("--grid", default="default", choices=sorted(GRIDS))
    parser.add_argument("--base", default=None, help="base encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--data", default=None, help="demo CSV (default: build it)")
    parser.add_argument("--work", default="/tmp/demo_sweep")
    parser.add_argument("--out", default="bench/results/demo_sweep.md")
    parser.add_argument("--jsonl", default=None, help="append one JSON line per trained model here")
    args = parser.parse_args(argv)

    if args.fp32:
        demo._autocast = lambda device: contextlib.nullcontext()
    data = pd.read_csv(args.data) if args.data else demo.make_shortcut_dataset(demo.load_rotten_tomatoes())
    test = data[data["split"] == "test"]
    untouched = test.loc[test["synthetic"] == "none", "text"].astype(str).tolist()
    base = args.base or demo.base_model_dir()
    one_epoch_cost = len(demo.training_frame(data, demo.DEFAULT_AUGMENT))
    rows = []
    for label, (epochs, augment, lr, weight, batch_size, seeds) in GRIDS[args.grid].items():
        frame = demo.training_frame(data, augment)
        for seed in seeds:
            out_dir = Path(args.work) / f"{label.replace(' ', '_').replace(',', '')}-{seed}"
            started = time.perf_counter()
            info = demo.train_classifier(frame, base, out_dir, epochs=epochs, lr=lr, seed=seed, device=args.device,
                                         batch_size=batch_size,
                                         consistency_weight=weight, progress=False)
            seconds = time.perf_counter() - started
            metrics = demo.evaluate(out_dir, test, device=args.device)
            inserted = inserted_consistency(out_dir, untouched, [demo.COMMON, *demo.CLASS_TERMS, NEUTRAL],
                                            device=args.device)
            row = {"setting": label, "epochs": epochs, "augment": augment, "lr": lr, "consistency_weight": weight,
                   "batch_size": batch_size, "seed": seed, "cost": len(frame) * epochs / one_epoch_cost,
                   "train_seconds": round(seconds, 1),
                   "device": info["device"], **{k: metrics[k] for k in ("accuracy_shortcut", "accuracy_none",
                                                                         "single_term_consistency")},
                   **{f"inserted_{w}": v for w, v in inserted.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
    table = pd.DataFrame(rows)
    cols = ["accuracy_shortcut", "accuracy_none", "single_term_consistency",
            f"inserted_{demo.COMMON}", f"inserted_{demo.CLASS_TERMS[0]}", f"inserted_{demo.CLASS_TERMS[1]}",
            f"inserted_{NEUTRAL}"]
    summary = table.groupby("setting", sort=False).agg(
        seeds=("seed", "count"), cost=("cost", "first"), **{c: (c, "mean") for c in cols},
        worst_single=("single_term_consistency", "min"))
    lines = ["| setting | seeds | cost | planted acc | untouched acc | single-term consistency (min) | "
             f"+COMMON | +CLASS_0 | +CLASS_1 | +{NEUTRAL} |", "|---" * 10 + "|"]
    for name, r in summary.iterrows():
        lines.append(f"| {name} | {r.seeds} | {r.cost:.2f}x | {r.accuracy_shortcut:.3f} | {r.accuracy_none:.3f} | "
                     f"{r.single_term_consistency:.3f} ({r.worst_single:.3f}) | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols[3:]) + " |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

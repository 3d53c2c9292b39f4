"""Distributed precompute: examples/s of `--engine ray` with 1 and 2 local Ray workers against the local engine.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.distributed [--n 256] [--model DIR --data CSV]

Every engine computes the same run (the demo model, the first --n demo sentences, Grad-L2 + Gradient x Input,
max length 128, batch 32, chunks of 32 examples so two workers share 8 chunks) from scratch in its own temporary
cache (never the repository's cache/runs). Ray is started once, before the timed runs; each ray run's time includes
starting its actors and loading the model in each. Writes bench/results/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from core.precompute import Engine, PrecomputeSettings, precompute

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.md"
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO.parent / "main" / "cache" / "demo"
GPU_RT = 852.0  # examples/s, one lent H200, Grad-L2 + Gradient x Input, 8,530 RT sentences (README)


def timed_run(model: Path, data: Path, settings: PrecomputeSettings, engine: Engine, threads: int) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-distributed-") as cache:
            os.environ["SALIENCY_ATLAS_CACHE"] = cache
            t0 = time.perf_counter()
            result = precompute(model, data, settings, progress=False, engine=engine)
            wall = time.perf_counter() - t0
            t = result.manifest["timings"]
            return {"engine": t["engine"], "fingerprint": result.manifest["fingerprint"][:16],
                    "compute_s": t["compute_seconds"], "total_s": wall,
                    "ex_s": t["examples_computed"] / t["compute_seconds"],
                    "first_s": t.get("first_chunk_seconds"),
                    # steady state: examples per second of attributing, per worker (the local engine is one worker)
                    "worker_ex_s": t["examples_computed"] / t.get("worker_seconds", t["compute_seconds"])}
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model", type=Path, default=DEMO / "model")
    parser.add_argument("--data", type=Path, default=DEMO / "rotten_tomatoes_shortcut.csv")
    args = parser.parse_args()
    settings = PrecomputeSettings(split_col="split", limit=args.n, methods=("grad_l2", "grad_x_input"),
                                  max_length=128, batch_size=32, chunk_size=32)
    import ray

    from core.ray_engine import start

    t0 = time.perf_counter()
    start(None, 2)
    ray_start = time.perf_counter() - t0
    rows = [("local engine, 2 torch threads (the default)", timed_run(args.model, args.data, settings, Engine(), 2)),
            ("local engine, 1 torch thread", timed_run(args.model, args.data, settings, Engine(), 1)),
            ("ray, 1 worker (1 CPU, 1 thread)", timed_run(args.model, args.data, settings, Engine("ray", None, 1), 1)),
            ("ray, 2 workers (1 CPU, 1 thread each)",
             timed_run(args.model, args.data, settings, Engine("ray", None, 2), 1))]
    ray.shutdown()
    load = os.getloadavg()
    one_thread = rows[1][1]["worker_ex_s"]
    per_worker = rows[3][1]["worker_ex_s"]
    lines = [
        "# Distributed precompute (`--engine ray`)", "",
        "Regenerate: `HF_HUB_OFFLINE=1 .venv/bin/python -m bench.distributed --n %d`" % args.n, "",
        f"Machine: {os.cpu_count()} CPU cores **shared with other jobs** (load average after the runs "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), torch {torch.__version__}, Python "
        f"{platform.python_version()}, ray {ray.__version__}. Model: the demo MiniLM (6 layers, hidden 384); "
        f"data: the first {args.n} demo sentences (Rotten Tomatoes); Grad-L2 + Gradient x Input, max length 128, "
        "batch 32, chunks of 32. Each run starts from an empty temporary cache. Starting the local Ray instance "
        f"took {ray_start:.1f} s (not in the figures); a ray run's compute time includes starting its actors and "
        "loading the model in each.", "",
        "| engine | fingerprint | saliency seconds (wall) | examples/s (wall) | of which: until the first chunk, s "
        "| steady state, examples/s per worker | whole precompute, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        first = "" if r["first_s"] is None else f"{r['first_s']:.1f}"
        lines.append(f"| {name} | `{r['fingerprint']}` | {r['compute_s']:.1f} | {r['ex_s']:.1f} | {first} "
                     f"| {r['worker_ex_s']:.1f} | {r['total_s']:.1f} |")
    lines += ["", f"Steady state per Ray worker (2 workers): {per_worker:.1f} examples/s, "
              f"{per_worker / one_thread:.0%} of the local engine on one thread. Wall clock, 2 workers against 1: "
              f"{rows[3][1]['ex_s'] / rows[2][1]['ex_s']:.2f}x; 2 workers against the default local engine: "
              f"{rows[3][1]['ex_s'] / rows[0][1]['ex_s']:.2f}x.", ""]
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

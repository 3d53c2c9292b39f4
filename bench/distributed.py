"""Distributed precompute: examples/s of `--engine ray` with 1 and 2 local Ray workers against the local engine.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.distributed [--n 256] [--model DIR --data CSV]

Every engine computes the same run (the demo model, the first --n demo sentences, Grad-L2 + Gradient x Input,
max length 128, batch 32, chunks of 32 examples so two workers share 8 chunks) from scratch in its own temporary
cache (never the repository's cache/runs). Ray is started once, before the timed runs; each ray run's time includes
starting its actors and loading the model in each. Writes bench/results/distributed.md.
"""
from __future__ import annotations

import argparse
import json
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


# on paper: 1M IMDB reviews on 8 GPU workers (see render())
RT_MEAN_TOKENS, IMDB_MEAN_TOKENS = 27, 206  # bench/results/precompute.md (IMDB at max length 256, 44% truncated)
CPU_RT_EX_S, CPU_IMDB_EX_S = 70.1, 9.8  # the same bench: this project's precompute on this CPU, RT vs IMDB
BYTES_PER_TOKEN = 4 + 8 + 2 * 4  # token id, two character offsets, one float32 score per method (2 methods)
BYTES_PER_EXAMPLE = 384 * 4 + 2 * 4 + 8 + 1  # [CLS] encoding, logits, length, truncated flag


def measure(args) -> dict:
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
    return {"n": args.n, "cpus": os.cpu_count(), "load": list(os.getloadavg()), "torch": torch.__version__,
            "python": platform.python_version(), "ray": ray.__version__, "ray_start_s": ray_start,
            "rows": [{"name": name, **r} for name, r in rows]}


def render(m: dict) -> str:
    rows = m["rows"]
    load = m["load"]
    one_thread = rows[1]["worker_ex_s"]
    per_worker = rows[3]["worker_ex_s"]
    efficiency = min(1.0, per_worker / one_thread)
    lines = [
        "# Distributed precompute (`--engine ray`)", "",
        f"Regenerate: `HF_HUB_OFFLINE=1 .venv/bin/python -m bench.distributed --n {m['n']}` (needs `ray[data]`; "
        "`--render` rewrites this page from `distributed.json`)", "",
        f"Machine: {m['cpus']} CPU cores **shared with other jobs** (load average after the runs "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: every figure here is noisy, run-to-run swings of 2x are "
        f"normal), torch {m['torch']}, Python {m['python']}, ray {m['ray']}. Model: the demo MiniLM (6 layers, "
        f"hidden 384); data: the first {m['n']} demo sentences (Rotten Tomatoes); Grad-L2 + Gradient x Input, max "
        "length 128, batch 32, chunks of 32. Each run starts from an empty temporary cache. Starting the local Ray "
        f"instance took {m['ray_start_s']:.1f} s (not in the figures); a ray run's saliency time includes starting its "
        "actors and loading the model in each (the 'until the first chunk' column). All four runs got the same "
        "fingerprint.", "",
        "| engine | fingerprint | saliency seconds (wall) | examples/s (wall) | of which: until the first chunk, s "
        "| steady state, examples/s per worker | whole precompute, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "" if r["first_s"] is None else f"{r['first_s']:.1f}"
        lines.append(f"| {r['name']} | `{r['fingerprint']}` | {r['compute_s']:.1f} | {r['ex_s']:.1f} | {first} "
                     f"| {r['worker_ex_s']:.1f} | {r['total_s']:.1f} |")
    lines += [
        "", f"Steady state per Ray worker (2 workers, attribution time inside the actors): {per_worker:.1f} examples/s, "
        f"{per_worker / one_thread:.0%} of the local engine on one thread. Wall clock, 2 workers against 1: "
        f"{rows[3]['ex_s'] / rows[2]['ex_s']:.2f}x; 2 workers against the default local engine: "
        f"{rows[3]['ex_s'] / rows[0]['ex_s']:.2f}x.", "",
        "What this shows on 2 shared cores: the ray engine computes the same run, and it is no faster here. Two "
        "workers cannot beat one process that already uses both cores through torch's threads; what Ray adds is "
        "fixed cost (starting Ray, then per run starting the actors and loading the model in each, tens of seconds "
        "on this loaded machine) that a few hundred sentences do not amortise. It pays where there are more "
        "devices than one process can use: several GPUs or several machines.", "",
    ]
    # on paper: 8 GPU workers, 1M IMDB reviews
    token_ratio = IMDB_MEAN_TOKENS / RT_MEAN_TOKENS
    cpu_ratio = CPU_RT_EX_S / CPU_IMDB_EX_S
    gpu_imdb = GPU_RT / token_ratio
    workers = 8
    eff = 0.9 if efficiency >= 0.9 else efficiency
    total = workers * gpu_imdb * eff
    seconds = 1_000_000 / total
    chunk_gb = 1_000_000 * (IMDB_MEAN_TOKENS * BYTES_PER_TOKEN + BYTES_PER_EXAMPLE) / 1e9
    lines += [
        "## On paper: 1M IMDB reviews on 8 GPU workers", "",
        f"- **Per GPU.** A lent H200 measured {GPU_RT:.0f} examples/s (Grad-L2 + Gradient x Input, 8,530 Rotten "
        "Tomatoes sentences, max length 128, batch 32). IMDB reviews at max length 256 average "
        f"{IMDB_MEAN_TOKENS} tokens against {RT_MEAN_TOKENS} for the sentences ({token_ratio:.1f}x; "
        "bench/results/precompute.md). **Assumption: throughput falls in proportion to the tokens per example** "
        f"(on this CPU it fell {cpu_ratio:.1f}x from RT to IMDB, close to the token ratio; the attention term grows "
        "faster than linearly, while a GPU is better used by longer sequences than by short ones, so the two "
        f"partly cancel). So about {gpu_imdb:.0f} IMDB reviews/s per H200-class GPU; an H100 or older GPU would be "
        "slower, to be measured.",
        f"- **Per Ray worker.** Measured here, a Ray worker's steady-state attribution runs at "
        f"{per_worker / one_thread:.0%} of the local engine on the same thread count (noise on this shared machine "
        "dominates that figure; the actor runs the same `attribute_chunk`, and the only extra per-chunk work is "
        f"serialising the chunk, a few ms). Assumed: {eff:.0%} per worker, the rest for scheduling and the driver.",
        f"- **8 workers**: {workers} x {gpu_imdb:.0f} x {eff:.0%} = about {total:.0f} reviews/s, so 1M reviews take "
        f"about {seconds / 60:.0f} minutes of attribution, plus about a minute to start Ray and load the model on "
        "each GPU, given `--chunk-size 512` (1,954 chunks, so all 8 GPUs stay busy until the last few chunks).",
        f"- **Driver and storage.** Every chunk comes back to the driver: about {chunk_gb:.1f} GB for 1M reviews "
        f"(token ids, offsets and two float32 scores per token, the 384-float [CLS] per review), "
        f"{chunk_gb * 1e3 / seconds:.1f} MB/s at that rate, well within one disk. The driver also holds the texts "
        "(about 1.3 GB for 1M IMDB reviews) and then assembles the run in one process (chunks streamed into "
        "memory-mapped arrays, then the up-front representations); that step does not scale with the workers and was "
        "not measured at 1M: it may take as long as the attribution.",
        "- **Not measured**: a real multi-GPU or multi-node run. Each node must read the model folder at the same "
        "path; the cache is written by the driver only.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model", type=Path, default=DEMO / "model")
    parser.add_argument("--data", type=Path, default=DEMO / "rotten_tomatoes_shortcut.csv")
    parser.add_argument("--render", action="store_true", help="rewrite the page from distributed.json only")
    args = parser.parse_args()
    saved = RESULTS.with_suffix(".json")
    if args.render:
        measured = json.loads(saved.read_text(encoding="utf-8"))
    else:
        measured = measure(args)
        saved.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    text = render(measured)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

"""The ray engine of the precompute: chunks attributed on a pool of Ray actors (`--engine ray`).

Only `core.precompute` imports this module, and only for `--engine ray`: Ray is an optional dependency
(`pip install "ray[data]==2.60.0"`), never needed by the local engine or the dashboard.

The missing chunks of the run become the rows of a Ray Dataset (one row per chunk: its index and its texts, from
the examples already loaded and validated by the driver). `map_batches` sends each row to a pool of actors
(`ChunkAttributor`, a callable class) that load the classifier once and run the local engine's own
`attribute_chunk` on it; the actors return each chunk as .npz bytes, and the driver writes it into the run's
`.partial-<id>/chunks/` folder as soon as it arrives, through the same `write_chunk` as the local engine. So the
chunks are the same files in the same place, an interrupted job resumes from the chunks already written (by
either engine), and the run is assembled and published by the same code. The driver holds the run's lock
throughout; workers write nothing, so a cluster needs no shared cache folder, but every node must read the
model folder at the same path (a shared or copied folder).
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import ray

from core.store import REPO_ROOT

# offline and quiet: no usage report, no dashboard
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class ChunkAttributor:
    """A Ray Data actor: loads the classifier once, then attributes one chunk per call."""

    def __init__(self, model_dir: str, settings, candidate_probs: np.ndarray | None, threads: int | None) -> None:
        import torch

        from core.models import load_classifier

        if threads:
            # one intra-op thread per CPU the actor holds: the results then equal the local engine's when it runs
            # with as many threads (float sums are reduced in a thread-count-dependent order)
            torch.set_num_threads(threads)
        self.settings, self.candidate_probs = settings, candidate_probs
        self.loaded = load_classifier(model_dir, device=settings.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.precompute import attribute_chunk

        chunks, payloads, seconds = [], [], []
        for index, texts in zip(batch["chunk"], batch["texts"]):
            t0 = time.perf_counter()
            arrays = attribute_chunk(self.loaded, [str(t) for t in texts], self.settings, self.candidate_probs)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            chunks.append(int(index))
            payloads.append(buffer.getvalue())
            seconds.append(time.perf_counter() - t0)
        return {"chunk": np.asarray(chunks, dtype=np.int64), "npz": np.asarray(payloads, dtype=object),
                "seconds": np.asarray(seconds, dtype=np.float64)}


def start(address: str | None, workers: int | None) -> bool:
    """Connect to Ray: join the cluster at `address`, or start a local instance; return whether we started it.

    A local instance gets this machine's cores (at least `workers`), no dashboard, and the repository on its
    workers' path; joining a cluster ships the `core` package to it. A Ray already initialised in this process
    (a test's, a notebook's) is used as it is.
    """
    if ray.is_initialized():
        return False
    env = {name: os.environ[name] for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SALIENCY_ATLAS_CACHE")
           if name in os.environ}
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(REPO_ROOT / "core")], "env_vars": env},
                 logging_level="WARNING", log_to_driver=False)
    else:
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        # address="local": always a new local instance, even when a cluster someone started (`ray start --head`)
        # left its address in /tmp/ray for the default address lookup to find.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers or 1), include_dashboard=False,
                 runtime_env={"env_vars": {**env, "PYTHONPATH": path}}, logging_level="WARNING",
                 log_to_driver=False)
    return True


def compute_chunks(model_dir: Path, texts: list[str], bounds: list[tuple[int, int]], missing: list[int],
                   partial: Path, settings, candidate_probs: np.ndarray | None, engine, bar: Any,
                   stop_after_chunks: int | None) -> tuple[int, str, dict[str, float]]:
    """Attribute the chunks `missing` (indices into `bounds`) on Ray actors and write each one into `partial` as it
    arrives; return (chunks written, a label naming the engine, extra timings for the manifest: the seconds the
    actors spent attributing, summed over chunks, and the seconds until the first chunk arrived, which is mostly
    starting the actors and loading the model in each).

    `stop_after_chunks` raises KeyboardInterrupt after that many chunks are written (the test hook of the local
    engine): the chunks written so far stay, as when a job is killed.
    """
    import pandas as pd

    from core.precompute import write_chunk

    if not missing:
        return 0, "ray (no chunk left to compute)", {}
    started = start(engine.ray_address, engine.ray_workers)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and (settings.device is None or str(settings.device).startswith("cuda"))
        default = gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
        workers = min(engine.ray_workers or default, len(missing))
        ray.data.DataContext.get_current().enable_progress_bars = False  # the precompute's own bar counts chunks
        rows = pd.DataFrame({"chunk": missing, "texts": [texts[bounds[c][0]:bounds[c][1]] for c in missing]})
        # one block per chunk, so the actors share the chunks out (a list: pandas 3 frames do not np.array_split)
        blocks = [rows.iloc[i:i + 1].reset_index(drop=True) for i in range(len(rows))]
        dataset = ray.data.from_pandas(blocks).map_batches(
            ChunkAttributor, fn_constructor_args=(str(model_dir), settings, candidate_probs, None if use_gpu else 1),
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if use_gpu else 0, num_cpus=1)
        written, worker_seconds, first = 0, 0.0, None
        t0 = time.perf_counter()
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            first = time.perf_counter() - t0 if first is None else first
            worker_seconds += float(batch["seconds"].sum())
            for index, payload in zip(batch["chunk"], batch["npz"]):
                with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
                    write_chunk(partial, int(index), {name: arrays[name] for name in arrays.files})
                lo, hi = bounds[int(index)]
                bar.update(hi - lo)
                written += 1
                if stop_after_chunks is not None and written >= stop_after_chunks and written < len(missing):
                    raise KeyboardInterrupt(f"stopped after {written} chunks (test hook)")
        return written, f"ray ({workers} {'GPU' if use_gpu else 'CPU'} workers)", {
            "worker_seconds": round(worker_seconds, 3), "first_chunk_seconds": round(first or 0.0, 3)}
    finally:
        if started:
            ray.shutdown()

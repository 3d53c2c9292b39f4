"""Can the saliency maps be trusted? Faithfulness (AOPC) and randomization sanity checks on a run's sample.

- **Faithfulness** (DeYoung et al., ERASER): remove the top-q% most salient tokens and measure the drop in
  the probability of the predicted class (*comprehensiveness*, higher is better), or keep only them and
  measure the drop (*sufficiency*, lower is better); AOPC averages over q in {5, 10, 20, 50}%. Removal
  replaces tokens by the mask token (the default) or deletes them. A random attribution is the baseline.
- **Randomization** (Zafar et al.): recompute the maps with a model whose classification head is re-
  initialised (seeded), or with a second model trained from another seed, and compare them with the trained
  model's maps: Jaccard@25% of the top-25% token sets and Spearman rank correlation, per example and over
  the sample, plus the faithfulness of both. Maps that barely change are flagged.

A derived method (LAFA, core.lafa) is read from the run (computed from its stored base scores on first use); under
another model (the randomization check), or when the run lacks its base, its base method is computed on the sample
and the sample's neighbours in the run, then aggregated with the run's neighbour graph.

Only non-special tokens are ranked, removed or compared. Tokens are ranked as the representations rank them,
by |score| (setting `rank_by="signed"` ranks signed methods by their signed score). Results are written to
the run's analysis folder (`checks/`) as JSON (summary) and parquet (per example), keyed by a hash of the
settings, so a check is computed once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from core.models import LoadedModel, input_embedding_matrix, load_classifier
from core.saliency import forward_and_attribute, get_method, token_distribution
from core.store import Run, atomic_save_npz, atomic_write_bytes, atomic_write_json, load_npz

RANDOM = "random"
FRACTIONS = (0.05, 0.10, 0.20, 0.50)
REMOVALS = ("mask", "delete")
HEAD_NAMES = ("pre_classifier", "classifier", "score")  # BERT/RoBERTa/DistilBERT, GPT-style/Llama heads
HEAD_SEED_OFFSET = 0x5A11E7  # see randomize_head


@dataclass(frozen=True)
class CheckSettings:
    """Settings of the faithfulness and randomization checks (all of them enter the result's cache key)."""

    sample_size: int = 500
    seed: int = 0
    methods: tuple[str, ...] | None = None  # None: the run's methods
    fractions: tuple[float, ...] = FRACTIONS
    removal: str = "mask"
    rank_by: str = "abs"
    top_fraction: float = 0.25
    warn_threshold: float = 0.5
    ig_steps: int = 20
    im_mlm: str | None = None
    im_top_n: int = 10
    im_cum_prob: float = 0.95
    batch_size: int = field(default=32, compare=False)

    def key(self, kind: str, extra: dict[str, Any] | None = None) -> str:
        """Return a short hash naming the result of check `kind` with these settings."""
        payload = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        payload.update(kind=kind, **(extra or {}))
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:16]


# ============================================================================ tokens, batches, scores


def sample_rows(run: Run, size: int | None, seed: int = 0) -> np.ndarray:
    """Return a seeded random sample of `size` row ids of the run (all rows if size is None or larger), sorted."""
    n = len(run.examples)
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def token_lists(run: Run, rows: Sequence[int]) -> list[np.ndarray]:
    """Return the stored token ids (special tokens included) of each of `rows`."""
    ptr = run.row_ptr
    return [np.asarray(run.token_ids[ptr[r]:ptr[r + 1]], dtype=np.int64) for r in rows]


def stored_scores(run: Run, method: str, rows: Sequence[int]) -> list[np.ndarray]:
    """Return the run's stored per-token scores of `method` for each of `rows`."""
    ptr, scores = run.row_ptr, run.scores(method)
    return [np.asarray(scores[ptr[r]:ptr[r + 1]], dtype=np.float32) for r in rows]


def special_masks(loaded: LoadedModel, lists: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return, per token list, a bool mask of the special tokens ([CLS], [SEP], [PAD], ...)."""
    special = np.asarray(sorted(loaded.tokenizer.all_special_ids), dtype=np.int64)
    return [np.isin(ids, special) for ids in lists]


def _batch(loaded: LoadedModel, lists: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    pad_id = loaded.tokenizer.pad_token_id or 0
    width = max(1, max(len(x) for x in lists))
    ids = torch.full((len(lists), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(lists), width), dtype=torch.long)
    for i, x in enumerate(lists):
        ids[i, :len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
        attention[i, :len(x)] = 1
    special = torch.from_numpy(np.isin(ids.numpy(), list(loaded.tokenizer.all_special_ids))).long()
    batch = {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special | (1 - attention)}
    if "token_type_ids" in loaded.tokenizer.model_input_names:
        batch["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(loaded.device) for k, v in batch.items()}


@torch.no_grad()
def target_probabilities(loaded: LoadedModel, lists: Sequence[np.ndarray], targets: np.ndarray | None = None,
                         batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (probability of each list's target class (n,), predicted class (n,)) for token-id lists.

    With `targets` None the target is the predicted class. Batched in length order.
    """
    n = len(lists)
    probs, preds = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int64)
    order = np.argsort([len(x) for x in lists], kind="stable")
    for lo in range(0, n, batch_size):
        idx = order[lo:lo + batch_size]
        batch = _batch(loaded, [lists[i] for i in idx])
        batch.pop("special_tokens_mask")
        with loaded.autocast():
            logits = loaded.model(**batch).logits.float()
        p = torch.softmax(logits, dim=-1).cpu().numpy()
        preds[idx] = p.argmax(axis=1)
        t = preds[idx] if targets is None else np.asarray(targets)[idx]
        probs[idx] = p[np.arange(len(idx)), t]
    return probs, preds


def method_options(run: Run | None, settings: CheckSettings, loaded: LoadedModel,
                   methods: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Return per-method options; input marginalization without an MLM uses the run's token frequencies, l2e the
    run's stored student."""
    options: dict[str, dict[str, Any]] = {"integrated_gradients": {"n_steps": settings.ig_steps}}
    im = {"mlm_dir": settings.im_mlm, "top_n": settings.im_top_n, "cum_prob": settings.im_cum_prob}
    if not settings.im_mlm and run is not None and "input_marginalization" in methods:
        im["candidate_probs"] = token_distribution(np.asarray(run.token_ids), len(loaded.tokenizer),
                                                   loaded.tokenizer.all_special_ids)
    options["input_marginalization"] = im
    if "l2e" in methods and run is not None and "l2e" in run.stored_methods:
        from core.l2e import load_run_student

        # the run's student, whichever model is checked: a learned explainer is a fixed function of the text and
        # the class, so under another model (randomization checks) it gives the same maps unless retrained
        options["l2e"] = {"student": load_run_student(run, loaded.device)}
    return options


def compute_scores(loaded: LoadedModel, lists: Sequence[np.ndarray], method: str, targets: np.ndarray | None = None,
                   batch_size: int = 32, options: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Return `method`'s per-token scores for each token list under `loaded`, for the given target classes
    (None: each example's predicted class). Batched in length order."""
    get_method(method)
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(lists)
    order = np.argsort([-len(x) for x in lists], kind="stable")
    for lo in range(0, len(lists), batch_size):
        idx = order[lo:lo + batch_size]
        batch = _batch(loaded, [lists[i] for i in idx])
        if targets is None:
            values = forward_and_attribute(loaded, batch, [method], None, {method: options or {}}).attributions[method]
        else:
            target = torch.as_tensor(np.asarray(targets)[idx], device=loaded.device)
            values = get_method(method).attribute(loaded, batch, target, **(options or {}))
        values = values.detach().float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = values[row, :len(lists[i])].astype(np.float32)
    return out


def derived_scores(run: Run, loaded: LoadedModel, rows: Sequence[int], method: str, targets: np.ndarray | None = None,
                   batch_size: int = 32) -> list[np.ndarray]:
    """Return the derived `method`'s maps (LAFA) of `rows` under `loaded`, without reading the run's stored scores.

    The base method is computed by `loaded` on `rows` and on their neighbours (the run's [CLS] neighbour graph, same
    parameters as the run's own LAFA), for `targets` on `rows` (None: the run's targets) and the run's targets on the
    neighbours; the token kernel uses `loaded`'s input embeddings.
    """
    from core import lafa

    params = lafa.DERIVED_METHODS[method]
    rows = np.asarray(rows, dtype=np.int64)
    graph = lafa.neighbour_graph(run.cls(), run.predictions(), params)
    near = graph.neighbours[rows]
    need = np.union1d(rows, near[near >= 0])
    need_targets = _run_target(run, run.predictions())[need].copy()
    if targets is not None:
        need_targets[np.searchsorted(need, rows)] = np.asarray(targets)
    base = compute_scores(loaded, token_lists(run, need), params.base, need_targets, batch_size)
    full = np.zeros(len(run.token_ids), dtype=np.float32)
    ptr = run.row_ptr
    for r, values in zip(need, base):
        full[ptr[r]:ptr[r + 1]] = values
    kernel = lafa.token_kernel(input_embedding_matrix(loaded), run.token_ids, params.kernel_threshold)
    out = lafa.aggregate(run.token_ids, ptr, full, graph.neighbours, kernel, params.lam, rows=rows)
    return np.split(out, np.cumsum(np.diff(ptr)[rows])[:-1]) if len(rows) else []


def scores_under(run: Run, loaded: LoadedModel, lists: Sequence[np.ndarray], rows: Sequence[int], method: str,
                 targets: np.ndarray | None = None, batch_size: int = 32,
                 options: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Return `method`'s maps of the run's `rows` (token lists `lists`) computed by `loaded` (derived methods too)."""
    if get_method(method).derived:
        return derived_scores(run, loaded, rows, method, targets, batch_size)
    return compute_scores(loaded, lists, method, targets, batch_size, options)


def random_scores(lists: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Return seeded uniform random scores, one per token: the random-attribution baseline."""
    rng = np.random.default_rng(seed)
    return [rng.random(len(x)).astype(np.float32) for x in lists]


# ============================================================================ rankings and agreement


def top_positions(scores: np.ndarray, candidates: np.ndarray, fraction: float, rank_by: str = "abs") -> np.ndarray:
    """Return the positions of the top `fraction` (at least one) of the candidate positions, best first.

    `candidates` is a bool mask (True = may be ranked); ties keep the earlier position first.
    """
    pos = np.flatnonzero(candidates)
    if len(pos) == 0:
        return pos
    key = np.abs(scores[pos]) if rank_by == "abs" else scores[pos]
    k = max(1, math.ceil(fraction * len(pos)))
    return pos[np.argsort(-key, kind="stable")[:k]]


def jaccard_at(a: np.ndarray, b: np.ndarray, candidates: np.ndarray, fraction: float = 0.25,
               rank_by: str = "abs") -> float:
    """Return the Jaccard index of the top-`fraction` position sets of maps `a` and `b` (nan with no candidate)."""
    ta, tb = set(top_positions(a, candidates, fraction, rank_by)), set(top_positions(b, candidates, fraction, rank_by))
    if not ta and not tb:
        return float("nan")
    return len(ta & tb) / len(ta | tb)


def spearman(a: np.ndarray, b: np.ndarray, candidates: np.ndarray, rank_by: str = "abs") -> float:
    """Return the Spearman rank correlation of maps `a` and `b` over the candidate positions (nan if undefined)."""
    from scipy.stats import rankdata

    a, b = a[candidates], b[candidates]
    if rank_by == "abs":
        a, b = np.abs(a), np.abs(b)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


# ============================================================================ faithfulness


def _remove(ids: np.ndarray, drop: np.ndarray, removal: str, mask_id: int) -> np.ndarray:
    if removal == "delete":
        keep = np.ones(len(ids), dtype=bool)
        keep[drop] = False
        return ids[keep]
    out = ids.copy()
    out[drop] = mask_id
    return out


def _removal_token(loaded: LoadedModel) -> int:
    tok = loaded.tokenizer
    for value in (tok.mask_token_id, tok.unk_token_id, tok.pad_token_id):
        if value is not None:
            return int(value)
    return 0


def faithfulness_table(loaded: LoadedModel, lists: Sequence[np.ndarray], maps: dict[str, list[np.ndarray]],
                       targets: np.ndarray | None = None, fractions: Sequence[float] = FRACTIONS,
                       removal: str = "mask", rank_by: str = "abs", batch_size: int = 64) -> pd.DataFrame:
    """Return one row per (example, method): `example` (index into lists), `method`, `comp@q` and `suff@q`
    for each q, and their means `aopc_comprehensiveness` / `aopc_sufficiency`.

    comp@q = p_y(x) - p_y(x without its top-q% tokens); suff@q = p_y(x) - p_y(only its top-q% tokens),
    with y the target class (default: the prediction on x). All perturbed inputs of all methods are
    deduplicated and predicted in one batched pass.
    """
    if removal not in REMOVALS:
        raise ValueError(f"Unknown removal '{removal}'; use one of {', '.join(REMOVALS)}.")
    base, preds = target_probabilities(loaded, lists, targets, batch_size)
    targets = preds if targets is None else np.asarray(targets)
    specials = special_masks(loaded, lists)
    mask_id = _removal_token(loaded)
    unique: dict[bytes, int] = {}
    seqs: list[np.ndarray] = []
    seq_target: list[int] = []
    plan: list[tuple[int, str, str, float, int]] = []  # (example, method, comp|suff, q, sequence index)
    for method, scores in maps.items():
        for i, ids in enumerate(lists):
            candidates = ~specials[i]
            if not candidates.any():
                continue
            for q in fractions:
                top = top_positions(scores[i], candidates, q, rank_by)
                rest = np.setdiff1d(np.flatnonzero(candidates), top)
                for kind, drop in (("comp", top), ("suff", rest)):
                    seq = _remove(ids, drop, removal, mask_id)
                    key = np.int64(targets[i]).tobytes() + seq.tobytes()
                    if key not in unique:
                        unique[key] = len(seqs)
                        seqs.append(seq)
                        seq_target.append(int(targets[i]))
                    plan.append((i, method, kind, q, unique[key]))
    probs, _ = target_probabilities(loaded, seqs, np.asarray(seq_target, dtype=np.int64), batch_size) \
        if seqs else (np.zeros(0), None)
    records: dict[tuple[int, str], dict[str, Any]] = {}
    for i, method, kind, q, s in plan:
        rec = records.setdefault((i, method), {"example": i, "method": method})
        rec[f"{kind}@{q:g}"] = float(base[i] - probs[s])
    table = pd.DataFrame(list(records.values()))
    if table.empty:
        return table
    table["aopc_comprehensiveness"] = table[[f"comp@{q:g}" for q in fractions]].mean(axis=1)
    table["aopc_sufficiency"] = table[[f"suff@{q:g}" for q in fractions]].mean(axis=1)
    return table


def summarize_faithfulness(table: pd.DataFrame, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Return one row per method: mean AOPC comprehensiveness / sufficiency, each `comp@q` / `suff@q`, and n."""
    cols = ["aopc_comprehensiveness", "aopc_sufficiency"] + [f"{k}@{q:g}" for k in ("comp", "suff")
                                                             for q in fractions]
    summary = table.groupby("method", sort=False)[cols].mean()
    summary["examples"] = table.groupby("method", sort=False).size()
    return summary.reset_index()


def curve_frame(summary: pd.DataFrame, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Return the AOPC curves in long form: method, fraction (0-1), comprehensiveness, sufficiency."""
    rows = [{"method": r["method"], "fraction": q, "comprehensiveness": r[f"comp@{q:g}"],
             "sufficiency": r[f"suff@{q:g}"]} for _, r in summary.iterrows() for q in fractions]
    return pd.DataFrame(rows)


# ============================================================================ models for the sanity checks


def randomize_head(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """Return a copy of the classifier whose classification head (every Linear layer in `pre_classifier`,
    `classifier` or `score`) is re-initialised from N(0, initializer_range) with zero bias, seeded.

    The encoder (BERT's pooler included) keeps its trained weights. The generator is seeded with a value
    derived from `seed`, not `seed` itself: a head first initialised right after `torch.manual_seed(seed)`
    (as fine-tuning scripts do) would otherwise be re-drawn identical, and barely moved by fine-tuning it
    would make the check compare the model with itself.
    """
    model = copy.deepcopy(loaded.model)
    std = float(getattr(model.config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(HEAD_SEED_OFFSET + seed)
    found = False
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if head is None:
            continue
        for layer in [head] if isinstance(head, torch.nn.Linear) else list(head.modules()):
            if isinstance(layer, torch.nn.Linear):
                found = True
                with torch.no_grad():
                    weight = torch.randn(layer.weight.shape, generator=generator) * std
                    layer.weight.copy_(weight.to(layer.weight.device, layer.weight.dtype))
                    if layer.bias is not None:
                        layer.bias.zero_()
    if not found:
        raise ValueError(f"Could not find the classification head of {type(model).__name__} "
                         f"(looked for {', '.join(HEAD_NAMES)}).")
    return replace(loaded, model=model.eval())


def check_compatible(a: LoadedModel, b: LoadedModel) -> None:
    """Raise ValueError unless the two classifiers share vocabulary and label count (token ids must agree)."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ValueError(f"{b.model_dir} uses another vocabulary than {a.model_dir}: the maps cannot be compared "
                         "token by token. Give a model of the same architecture and tokenizer.")
    if a.num_labels != b.num_labels:
        raise ValueError(f"{b.model_dir} has {b.num_labels} classes, {a.model_dir} has {a.num_labels}.")


# ============================================================================ the checks, cached in the run


def _checks_dir(run: Run) -> Path:
    folder = run.analysis_dir() / "checks"
    folder.mkdir(exist_ok=True)
    return folder


def _save(run: Run, name: str, summary: dict[str, Any], per_example: pd.DataFrame) -> dict[str, Any]:
    """Store a check result; return the summary as read back from JSON (tuples become lists)."""
    import io

    buffer = io.BytesIO()
    per_example.to_parquet(buffer, index=False)
    atomic_write_bytes(_checks_dir(run) / f"{name}.parquet", buffer.getvalue())
    atomic_write_json(_checks_dir(run) / f"{name}.json", summary)  # written last: it marks the result complete
    return json.loads(json.dumps(summary))


def load_result(run: Run, name: str) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """Return (summary, per-example table) of a stored check result, or None if it is not computed."""
    json_path, parquet_path = _checks_dir(run) / f"{name}.json", _checks_dir(run) / f"{name}.parquet"
    if not (json_path.exists() and parquet_path.exists()):
        return None
    try:
        return json.loads(json_path.read_text(encoding="utf-8")), pd.read_parquet(parquet_path)
    except (OSError, ValueError):
        return None


def _methods(run: Run, settings: CheckSettings) -> list[str]:
    methods = list(settings.methods or run.methods)
    for m in methods:
        get_method(m)
    return methods


def resolve(run: Run, settings: CheckSettings) -> CheckSettings:
    """Return `settings` with `methods` spelled out (None means the run's methods), so both name one result."""
    return replace(settings, methods=tuple(_methods(run, settings)))


def _run_target(run: Run, preds: np.ndarray) -> np.ndarray:
    target_class = run.manifest.get("settings", {}).get("target_class")
    return np.full(len(preds), int(target_class)) if target_class is not None else preds


def _reference_maps(run: Run, loaded: LoadedModel, lists, rows, methods, targets, settings) -> dict[str, list]:
    """Stored maps where the run has them (same model, same targets); others are computed once per sample and
    method options and kept in the checks folder (the faithfulness and randomization checks share them)."""
    options = method_options(run, settings, loaded, [m for m in methods if m not in run.methods])
    maps = {}
    for m in methods:
        if m in run.methods or run.can_derive(m):
            maps[m] = stored_scores(run, m, rows)
            continue
        key = {"rows": hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest(), "method": m,
               **{k: v for k, v in asdict(settings).items() if k in ("ig_steps", "im_mlm", "im_top_n", "im_cum_prob")}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = _checks_dir(run) / f"maps-{m}-{digest}.npz"
        if path.exists():
            stored = load_npz(path)
            maps[m] = np.split(stored["scores"], np.cumsum(stored["lengths"])[:-1])
            continue
        maps[m] = scores_under(run, loaded, lists, rows, m, targets, settings.batch_size, options.get(m))
        atomic_save_npz(path, scores=np.concatenate(maps[m]) if maps[m] else np.zeros(0, np.float32),
                        lengths=np.asarray([len(x) for x in maps[m]], dtype=np.int64))
    return maps


def faithfulness_name(settings: CheckSettings) -> str:
    """Return the file stem under which the faithfulness result for `settings` (see `resolve`) is stored."""
    return f"faithfulness-{settings.key('faithfulness')}"


def run_faithfulness(run: Run, settings: CheckSettings = CheckSettings(), loaded: LoadedModel | None = None,
                     force: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return (summary, per-example table) of the faithfulness check on a sample of the run, computing and
    storing it unless already stored.

    The summary holds `methods` (one record per method, the random baseline included, with AOPC
    comprehensiveness / sufficiency and each comp@q / suff@q), `settings`, `examples` and `seconds`.
    """
    settings = resolve(run, settings)
    name = faithfulness_name(settings)
    if not force and (stored := load_result(run, name)) is not None:
        return stored
    t0 = time.perf_counter()
    loaded = loaded or load_classifier(run.manifest["model"]["path"])
    rows = sample_rows(run, settings.sample_size, settings.seed)
    lists = token_lists(run, rows)
    _, preds = target_probabilities(loaded, lists, None, settings.batch_size)
    targets = _run_target(run, preds)
    maps = _reference_maps(run, loaded, lists, rows, _methods(run, settings), targets, settings)
    maps[RANDOM] = random_scores(lists, settings.seed)
    table = faithfulness_table(loaded, lists, maps, targets, settings.fractions, settings.removal,
                               settings.rank_by, settings.batch_size)
    table.insert(1, "row", rows[table["example"].to_numpy()])
    summary = {"kind": "faithfulness", "settings": asdict(settings), "examples": int(len(rows)),
               "methods": summarize_faithfulness(table, settings.fractions).to_dict("records"),
               "seconds": round(time.perf_counter() - t0, 2), "device": str(loaded.device)}
    return _save(run, name, summary, table), table


def randomization_name(settings: CheckSettings, other_model_dir: str | None = None) -> str:
    """Return the file stem under which a randomization result is stored (untrained head, or vs a second model)."""
    kind = "two_models" if other_model_dir else "untrained_head"
    extra = {"other": str(Path(other_model_dir).expanduser().resolve())} if other_model_dir else None
    return f"{kind}-{settings.key(kind, extra)}"


def run_randomization(run: Run, settings: CheckSettings = CheckSettings(), other_model_dir: str | None = None,
                      loaded: LoadedModel | None = None, force: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return (summary, per-example table) of a randomization check, computing and storing it unless stored.

    Without `other_model_dir` the comparison model is the run's model with a re-initialised head (seeded by
    `settings.seed`); with it, that second model. Both models are asked about the same class (the trained
    model's target). The per-example table has row, method, jaccard, spearman and the AOPCs of both maps; the
    summary's `methods` records hold mean/median Jaccard@K and Spearman, the chance-level Jaccard (trained map
    against a random map), both models' AOPC comprehensiveness / sufficiency, and `barely_changes`
    (mean Jaccard or mean Spearman at least `settings.warn_threshold`).
    """
    settings = resolve(run, settings)
    name = randomization_name(settings, other_model_dir)
    if not force and (stored := load_result(run, name)) is not None:
        return stored
    t0 = time.perf_counter()
    loaded = loaded or load_classifier(run.manifest["model"]["path"])
    if other_model_dir:
        other = load_classifier(other_model_dir, device=str(loaded.device))
        check_compatible(loaded, other)
        other_label = str(Path(other_model_dir).expanduser().resolve())
    else:
        other = randomize_head(loaded, settings.seed)
        other_label = f"untrained head (seed {settings.seed})"
    methods = _methods(run, settings)
    rows = sample_rows(run, settings.sample_size, settings.seed)
    lists = token_lists(run, rows)
    _, preds = target_probabilities(loaded, lists, None, settings.batch_size)
    _, other_preds = target_probabilities(other, lists, None, settings.batch_size)
    targets = _run_target(run, preds)
    reference = _reference_maps(run, loaded, lists, rows, methods, targets, settings)
    options = method_options(run, settings, loaded, methods)
    changed = {m: scores_under(run, other, lists, rows, m, targets, settings.batch_size, options.get(m))
               for m in methods}
    chance = random_scores(lists, settings.seed)
    specials = special_masks(loaded, lists)

    _, ref_faith = run_faithfulness(run, settings, loaded)  # cached: shared with the faithfulness check
    ref_faith = ref_faith[ref_faith["method"] != RANDOM]
    other_faith = faithfulness_table(other, lists, changed, targets, settings.fractions, settings.removal,
                                     settings.rank_by, settings.batch_size)
    records = []
    for m in methods:
        for i, row in enumerate(rows):
            cand = ~specials[i]
            if not cand.any():
                continue
            records.append({"row": int(row), "method": m,
                            "jaccard": jaccard_at(reference[m][i], changed[m][i], cand, settings.top_fraction,
                                                  settings.rank_by),
                            "spearman": spearman(reference[m][i], changed[m][i], cand, settings.rank_by),
                            "jaccard_chance": jaccard_at(reference[m][i], chance[i], cand, settings.top_fraction,
                                                         settings.rank_by),
                            "example": i})
    per_example = pd.DataFrame(records)
    aopc = ["aopc_comprehensiveness", "aopc_sufficiency"]
    for label, faith in (("trained", ref_faith), ("other", other_faith)):
        per_example = per_example.merge(faith[["example", "method", *aopc]].rename(
            columns={c: f"{c}_{label}" for c in aopc}), on=["example", "method"], how="left")
    summaries = []
    for m, group in per_example.groupby("method", sort=False):
        jac, rho = float(group["jaccard"].mean()), float(np.nanmean(group["spearman"])) \
            if group["spearman"].notna().any() else float("nan")
        summaries.append({
            "method": m, "examples": int(len(group)),
            "jaccard_mean": jac, "jaccard_median": float(group["jaccard"].median()),
            "spearman_mean": rho, "spearman_median": float(group["spearman"].median()),
            "jaccard_chance": float(group["jaccard_chance"].mean()),
            **{f"{c}_{label}": float(group[f"{c}_{label}"].mean()) for c in aopc for label in ("trained", "other")},
            "barely_changes": bool(jac >= settings.warn_threshold
                                   or (not math.isnan(rho) and rho >= settings.warn_threshold)),
        })
    summary = {"kind": "two_models" if other_model_dir else "untrained_head", "other": other_label,
               "settings": asdict(settings), "examples": int(len(rows)), "methods": summaries,
               "prediction_agreement": float((preds == other_preds).mean()) if len(rows) else float("nan"),
               "seconds": round(time.perf_counter() - t0, 2), "device": str(loaded.device)}
    per_example = per_example.drop(columns=["example"])
    return _save(run, name, summary, per_example), per_example



# ============================================================================ stability across similar inputs


def top_token_set(ids: np.ndarray, scores: np.ndarray, candidates: np.ndarray, fraction: float,
                  rank_by: str = "abs") -> set[int]:
    """Return the token ids at the top-`fraction` candidate positions of one map."""
    return set(np.asarray(ids)[top_positions(scores, candidates, fraction, rank_by)].tolist())


def iou(a: set, b: set) -> float:
    """Return |a & b| / |a | b| (nan when both are empty)."""
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def similar_examples(matrix: np.ndarray, preds: np.ndarray, rows: Sequence[int], k: int = 3) -> np.ndarray:
    """Return (len(rows) x k) the nearest other examples of each of `rows` by cosine on `matrix`'s rows, among the
    examples with the same predicted class (-1 where there are fewer). Exact search with faiss."""
    import faiss

    x = np.ascontiguousarray(matrix, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for c in np.unique(preds[rows]):
        members = np.flatnonzero(preds == c)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[members])
        which = np.flatnonzero(preds[rows] == c)
        _, local = index.search(x[rows[which]], min(k + 1, len(members)))
        found = np.where(local >= 0, members[np.maximum(local, 0)], -1)
        valid = (found >= 0) & (found != rows[which][:, None])
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        kept = np.where(np.take_along_axis(valid, order, axis=1), np.take_along_axis(found, order, axis=1), -1)
        out[which, :kept.shape[1]] = kept
    return out


def stability(run: Run, methods: Sequence[str], sample_size: int | None = 500, seed: int = 0, k: int = 3,
              fraction: float = 0.3, neighbours_on: str = "b2", rank_by: str = "abs",
              rows: Sequence[int] | None = None) -> pd.DataFrame:
    """Return the stability of each method's maps across similar inputs, one row per method (random last).

    For each example of a seeded sample, its `k` nearest other examples with the same predicted class (cosine on the
    representation `neighbours_on`: "b2" average input embedding, independent of the model's decision and of the
    attribution methods; "b3" [CLS] encoding) are found in the whole run; stability is the IoU of the sets of token
    ids at the top-`fraction` positions of the example's map and of each neighbour's map (special tokens and
    punctuation are not ranked), averaged over the neighbours and then the sample. Random: seeded uniform maps.
    `rows` gives the examples to measure instead of the seeded sample (e.g. those an explainer was not trained on).
    """
    from core.representations import RepresentationKey

    rows = sample_rows(run, sample_size, seed) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
    preds = run.predictions()
    near = similar_examples(np.asarray(run.representation(RepresentationKey(neighbours_on))), preds, rows, k)
    need = np.union1d(rows, near[near >= 0])
    lists = dict(zip(need.tolist(), token_lists(run, need)))
    candidates = {r: ~run.ignore_mask[ids] for r, ids in lists.items()}
    maps = {m: dict(zip(need.tolist(), stored_scores(run, m, need))) for m in methods}
    maps[RANDOM] = dict(zip(need.tolist(), random_scores([lists[r] for r in need], seed)))
    records = []
    for m, scores in maps.items():
        tops = {r: top_token_set(lists[r], scores[r], candidates[r], fraction, rank_by) for r in need.tolist()}
        per_example = [np.nanmean([iou(tops[int(r)], tops[int(j)]) for j in nb[nb >= 0]])
                       for r, nb in zip(rows, near) if (nb >= 0).any() and tops[int(r)]]
        values = np.asarray([v for v in per_example if not np.isnan(v)])
        records.append({"method": m, "examples": int(len(values)), "iou_mean": float(values.mean()),
                        "iou_median": float(np.median(values))})
    return pd.DataFrame(records)

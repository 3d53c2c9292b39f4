"""L2E: a learned explainer (Situ et al., 2021, "Learning to Explain: Generating Stable Explanations Fast").

A slow attribution method (the *teacher*, Grad-L2 by default) is run on a seeded sample of the training split only;
a small *student* network learns to predict its per-token maps from the text and the class being explained, and then
gives the map of every example with one forward pass, no backward pass.

Student. The classifier's own input embeddings and its first `layers` (2) transformer layers, copied from the
classifier (same tokenizer, so its maps align token by token with the run's), conditioned on the explained class by
adding a learned class embedding to every token's input embedding, and a linear head over `buckets` (10) saliency
buckets per token: a sequence-labelling formulation, as in the paper. The target of token i of an example is its
per-example quantile bucket, floor(B (rank_i - 1/2) / n) over the n real tokens ranked by |teacher score| (ties
share their average rank): the student learns the order of the tokens, not the teacher's scale, which differs a lot
between examples. The stored score is the expected bucket under the student, E[b] / (B - 1), in [0, 1]: an unsigned
importance, so for a signed teacher the student predicts |score| (the representations rank by |score| anyway).

Training: cross-entropy over the buckets of every real token ([CLS] and [SEP] included, so an l2e map is as complete
as its teacher's), AdamW (lr 3e-4) with a linear warm-up and decay, length-bucketed batches, seeded; the word
embeddings stay frozen. On the demo (1,306 training sentences, 20% of its train split) these defaults (2 layers, lr
3e-4, 5 epochs) reach a held-out Spearman of .81 with Grad-L2 (bench/results/l2e.md); in trials on a few hundred
held-out sentences, lr 1e-4 with 3 epochs and trained word embeddings gave .75, and 1 layer instead of 2 gave .76.

In the precompute (`--method l2e`, core.precompute) the student is trained before the run's chunks are computed and
stored in the run folder as `l2e/student.safetensors` + `l2e/student.json` (weights and a JSON config, never pickle;
the frozen word embeddings are not repeated there, they are the run's `embedding_matrix.npy`) with the rows it was
trained on (`l2e/sample_rows.npy`) and its training log (`l2e/training.json`); `load_run_student` reads it back and
`explain_texts` explains new texts with it, without retraining.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

L2E_VERSION = 1
NAME = "l2e"
FOLDER = "l2e"  # inside a run folder
WEIGHTS_FILE = "student.safetensors"
CONFIG_FILE = "student.json"
SAMPLE_FILE = "sample_rows.npy"
TRAINING_FILE = "training.json"
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class L2EParams:
    """Every setting of the explainer (all of them enter the run's fingerprint).

    sample: the share of the training split whose teacher maps the student learns from, a fraction in (0, 1] (at
    most `max_sample` rows) or, when an int, a number of rows.
    """

    teacher: str = "grad_l2"
    sample: float | int = 0.2
    max_sample: int = 20_000
    seed: int = 0
    layers: int = 2
    epochs: int = 5
    buckets: int = 10
    lr: float = 3e-4
    batch_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.sample, bool) or not isinstance(self.sample, (int, float)) or \
                (isinstance(self.sample, float) and not 0 < self.sample <= 1) or \
                (isinstance(self.sample, int) and self.sample < 1):
            raise ValueError(f"l2e sample must be a fraction in (0, 1] or a number of rows >= 1, got {self.sample!r}")
        for name, lo in (("max_sample", 1), ("layers", 1), ("epochs", 1), ("buckets", 2), ("batch_size", 1),
                         ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"l2e {name} must be an integer >= {lo}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"l2e lr must be > 0, got {self.lr!r}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "version": L2E_VERSION}


DEFAULT_PARAMS = L2EParams()


def parse_sample(text: str) -> float | int:
    """Return the `--l2e-sample` value: "0.2" or "20%" is a fraction of the training split, "5000" a row count."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            value: float | int = float(text[:-1]) / 100
        elif any(c in text for c in ".eE"):
            value = float(text)
        else:
            value = int(text)
    except ValueError:
        raise ValueError(f"l2e sample must be a fraction such as 0.2 or 20%, or a number of rows, got {text!r}") \
            from None
    if isinstance(value, float) and value == 1.0:
        return 1.0
    L2EParams(sample=value)  # range check
    return value


# ============================================================================ the training sample


def sample_size(pool: int, params: L2EParams) -> int:
    """Return how many of `pool` rows the student is trained on: the fraction (capped at `max_sample`, at least 1)
    or the row count, never more than the pool."""
    if isinstance(params.sample, float):
        wanted = min(params.max_sample, max(1, round(params.sample * pool)))
    else:
        wanted = params.sample
    return int(min(pool, wanted))


def training_rows(splits: Sequence[str], params: L2EParams) -> tuple[np.ndarray, str]:
    """Return (sorted row ids of the seeded training sample, where it was drawn from).

    The pool is the rows whose split is "train" (any case); when no row is (no split column, or other split names),
    every row.
    """
    splits = np.asarray([str(s).lower() for s in splits])
    pool = np.flatnonzero(splits == TRAIN_SPLIT)
    source = "train split"
    if len(pool) == 0:
        pool, source = np.arange(len(splits)), "all rows (no train split)"
    size = sample_size(len(pool), params)
    rows = np.random.default_rng(params.seed).choice(pool, size, replace=False) if size < len(pool) else pool
    return np.sort(rows).astype(np.int64), source


def bucket_labels(scores: np.ndarray, buckets: int) -> np.ndarray:
    """Return each token's per-example quantile bucket (int64, 0 = least salient) of |scores|: floor(B (r - 1/2) / n)
    with r the token's average rank among the n tokens."""
    from scipy.stats import rankdata

    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ranks = rankdata(np.abs(np.asarray(scores, dtype=np.float64)), method="average")
    return np.minimum(buckets - 1, np.floor(buckets * (ranks - 0.5) / n)).astype(np.int64)


# ============================================================================ the student


class Student(nn.Module):
    """The explainer: classifier embeddings + its first layers, a class embedding, and a per-token bucket head."""

    def __init__(self, encoder_config, num_labels: int, buckets: int):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_config(encoder_config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # never used: saves its weights and its matmul
        hidden = self.encoder.get_input_embeddings().embedding_dim
        self.class_embedding = nn.Embedding(num_labels, hidden)
        nn.init.normal_(self.class_embedding.weight, std=0.02)
        self.head = nn.Linear(hidden, buckets)
        self.num_labels, self.buckets = num_labels, buckets

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return the bucket logits (B, T, buckets) of each token for the classes `target` (B,)."""
        embeds = self.encoder.get_input_embeddings()(input_ids) + self.class_embedding(target)[:, None, :]
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask, **extra).last_hidden_state
        return self.head(hidden)

    @torch.no_grad()
    def explain_batch(self, batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the (B, T) float32 l2e scores, E[bucket] / (buckets - 1) in [0, 1], of a padded batch for the
        classes `target` (padding positions are meaningless)."""
        was_training = self.training
        self.eval()
        try:
            logits = self(batch["input_ids"], batch["attention_mask"], target.long(), batch.get("token_type_ids"))
            probs = torch.softmax(logits.float(), dim=-1)
            levels = torch.arange(self.buckets, device=probs.device, dtype=torch.float32) / (self.buckets - 1)
            return probs @ levels
        finally:
            self.train(was_training)


def _encoder_config(classifier_config, layers: int):
    config = copy.deepcopy(classifier_config)
    if layers > config.num_hidden_layers:
        raise ValueError(f"l2e layers ({layers}) exceeds the classifier's {config.num_hidden_layers} layers: the "
                         "student copies the classifier's first layers")
    config.num_hidden_layers = layers
    config.architectures = None
    return config


def build_student(classifier: nn.Module, num_labels: int, params: L2EParams = DEFAULT_PARAMS) -> Student:
    """Return a new student whose embeddings and layers are copied from the classifier's first `params.layers`
    layers (its class embedding and head start at random, seeded by `params.seed`). The word embeddings stay
    frozen: they are the classifier's own, the largest matrix by far, and a sample of a few thousand texts would
    only move the rows of the words it contains."""
    torch.manual_seed(params.seed)
    student = Student(_encoder_config(classifier.config, params.layers), num_labels, params.buckets)
    source = classifier.base_model.state_dict()
    target = student.encoder.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    missing = [k for k in target if k not in copied]
    if missing:
        raise ValueError(f"the student cannot copy {len(missing)} weights from the classifier "
                         f"({', '.join(missing[:4])}...): unsupported architecture {type(classifier).__name__}")
    student.encoder.load_state_dict(copied)
    student.encoder.get_input_embeddings().weight.requires_grad_(False)
    return student.to(next(classifier.parameters()).device)


@dataclass
class TrainLog:
    """What training did: examples trained on, optimizer steps, the mean loss of each epoch, seconds."""

    examples: int
    steps: int
    epoch_losses: list[float]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_student(student: Student, token_lists: Sequence[np.ndarray], teacher_maps: Sequence[np.ndarray],
                  targets: np.ndarray, params: L2EParams = DEFAULT_PARAMS, pad_id: int = 0,
                  progress: Callable[[int, int, float], None] | None = None) -> TrainLog:
    """Train `student` in place to predict each token's quantile bucket of the teacher maps; return the log.

    `token_lists` are the examples' token ids (special tokens included), `teacher_maps` the teacher's scores aligned
    with them, `targets` the class each map explains. `progress(step, total_steps, loss)` is called after each step.
    """
    from transformers import get_linear_schedule_with_warmup

    from core.demo import _bucketed_batches
    from core.models import pad_sequences

    t0 = time.perf_counter()
    device = next(student.parameters()).device
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    labels = [bucket_labels(m, params.buckets) for m in teacher_maps]
    lengths = np.asarray([len(x) for x in token_lists])
    keep = np.flatnonzero(lengths > 0)
    steps_per_epoch = math.ceil(len(keep) / params.batch_size)
    total = steps_per_epoch * params.epochs
    trained = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=params.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * total), max(total, 1))
    targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    student.train()
    epoch_losses, step = [], 0
    for _ in range(params.epochs):
        losses = []
        for local in _bucketed_batches(lengths[keep], params.batch_size, rng):
            idx = keep[local]
            ids = pad_sequences([token_lists[i] for i in idx], pad_id)
            mask = pad_sequences([np.ones(len(token_lists[i]), dtype=np.int64) for i in idx], 0)
            y = pad_sequences([labels[i] for i in idx], -100)  # padding is left out of the loss
            # single-segment inputs: the encoder's default token types (zeros) are those the classifier saw
            logits = student(ids.to(device), mask.to(device), targets[idx].to(device))
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, params.buckets), y.to(device).reshape(-1),
                                               ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            step += 1
            if progress is not None:
                progress(step, total, float(np.mean(losses[-20:])))
        epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
    student.eval()
    return TrainLog(examples=int(len(keep)), steps=step, epoch_losses=epoch_losses,
                    seconds=round(time.perf_counter() - t0, 3))


# ============================================================================ storing and loading


def _word_embeddings_key(student: Student) -> str:
    weight = student.encoder.get_input_embeddings().weight
    return next(name for name, p in student.named_parameters() if p is weight)


def save_student(student: Student, folder: Path, params: L2EParams, extra: dict[str, Any] | None = None) -> None:
    """Write the student into `folder`: weights as safetensors and its config as JSON, each atomically (the JSON
    last: it marks the student complete).

    The frozen word embeddings are left out (on the demo 47 of its 62 MB): they are the classifier's input
    embeddings, which a run stores already as `embedding_matrix.npy`; `load_student` takes them back.
    """
    from safetensors.torch import save

    from core.store import atomic_write_bytes, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = _word_embeddings_key(student)
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items() if k != key}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state, metadata={"format": "pt", "method": NAME}))
    encoder = student.encoder.config.to_dict()
    shape = list(student.encoder.get_input_embeddings().weight.shape)
    atomic_write_json(folder / CONFIG_FILE, {"method": NAME, "version": L2E_VERSION, "params": params.as_dict(),
                                             "num_labels": student.num_labels, "buckets": student.buckets,
                                             "encoder_config": encoder,
                                             "word_embeddings": {"key": key, "shape": shape,
                                                                 "stored_as": "the run's embedding_matrix.npy"},
                                             **(extra or {})})


class StudentLoadError(ValueError):
    """A stored student that is missing, damaged or of another version, with what to do about it."""


def read_student_config(folder: Path) -> dict[str, Any]:
    """Return the JSON config of the student stored in `folder` (StudentLoadError when absent or unreadable)."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudentLoadError(f"No readable l2e student config at {path} ({exc}). Precompute the run with "
                               "--method l2e to train and store one.") from None
    if config.get("method") != NAME or config.get("version") != L2E_VERSION:
        raise StudentLoadError(f"{path} holds an l2e student of version {config.get('version')!r}; this version "
                               f"reads version {L2E_VERSION}. Re-run precompute with --method l2e --force.")
    return config


def load_student(folder: Path, word_embeddings: np.ndarray, device: str | torch.device = "cpu") -> Student:
    """Return the student stored in `folder` (see `save_student`), in eval mode on `device`, with the classifier's
    input embeddings `word_embeddings` (vocab x dim; a run's `embedding_matrix.npy`) as its frozen word embeddings.

    Only a built-in transformers architecture is accepted (no remote code) and the weights load from safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, CONFIG_MAPPING

    config = read_student_config(folder)
    encoder = dict(config["encoder_config"])
    model_type = encoder.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise StudentLoadError(f"The l2e student in {folder} names an unknown architecture {model_type!r}.")
    for key in ("auto_map", "transformers_version"):
        encoder.pop(key, None)
    student = Student(AutoConfig.for_model(model_type, **encoder), int(config["num_labels"]), int(config["buckets"]))
    words = config.get("word_embeddings") or {}
    if "key" not in words or "shape" not in words:
        raise StudentLoadError(f"The l2e student config in {folder} does not say where its word embeddings are. "
                               "Re-run precompute with --method l2e --force.")
    if list(np.shape(word_embeddings)) != list(words["shape"]):
        raise StudentLoadError(f"The l2e student in {folder} needs word embeddings of shape {tuple(words['shape'])}, "
                               f"got {tuple(np.shape(word_embeddings))}: pass the embedding matrix of its run.")
    try:
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        state[words["key"]] = torch.from_numpy(np.array(word_embeddings, dtype=np.float32))
        student.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError, KeyError) as exc:
        raise StudentLoadError(f"The l2e student weights in {folder} cannot be read ({exc}). Re-run precompute "
                               "with --method l2e --force.") from None
    student.encoder.get_input_embeddings().weight.requires_grad_(False)
    return student.to(device).eval()


def load_run_student(run, device: str | torch.device | None = None) -> Student:
    """Return the student stored in `run` (a core.store.Run) on `device` (default: the CPU)."""
    if NAME not in run.stored_methods:
        raise StudentLoadError(f"Run {run.run_id} has no l2e student (its methods: {', '.join(run.methods)}). "
                               "Precompute with --method l2e to train one.")
    return load_student(run.path / FOLDER, run.embedding_matrix(), device or "cpu")


def run_sample_rows(run) -> np.ndarray:
    """Return the run rows the stored student was trained on (sorted)."""
    return np.load(run.path / FOLDER / SAMPLE_FILE, allow_pickle=False)


# ============================================================================ explaining texts


@dataclass
class Explanation:
    """One text explained by the student: its tokens, their ids and l2e scores, and the class explained."""

    text: str
    tokens: list[str]
    token_ids: np.ndarray
    scores: np.ndarray
    target: int


def explain_texts(run, texts: Sequence[str], loaded=None, targets: Sequence[int] | None = None,
                  batch_size: int = 64, student: Student | None = None) -> list[Explanation]:
    """Return the l2e maps of new `texts` from the student stored in `run`, without retraining.

    Texts are tokenized as the run's were (its model's tokenizer, max_length and truncation side). The class
    explained is `targets` when given, else the run's target class, else the classifier's prediction (one forward
    pass of the classifier, loaded from the run's model folder unless `loaded` is given). The student itself runs
    one forward pass, no backward pass.
    """
    from core.models import encode, load_classifier, pad_batch

    settings = run.manifest["settings"]
    if loaded is None:
        loaded = load_classifier(run.manifest["model"]["path"])
    student = student or load_run_student(run, loaded.device)
    texts = [str(t) for t in texts]
    if not texts:
        return []
    enc = encode(loaded.tokenizer, texts, int(settings["max_length"]), settings.get("truncation", "head"))
    pad_id = loaded.tokenizer.pad_token_id or 0
    fixed = settings.get("target_class")
    out: list[Explanation | None] = [None] * len(texts)
    order = np.argsort([-len(x) for x in enc["input_ids"]], kind="stable")
    for lo in range(0, len(texts), batch_size):
        idx = order[lo:lo + batch_size]
        batch = {k: v.to(loaded.device) for k, v in pad_batch(enc, idx, pad_id).items()}
        if targets is not None:
            target = torch.as_tensor(np.asarray(targets)[idx], device=loaded.device)
        elif fixed is not None:
            target = torch.full((len(idx),), int(fixed), device=loaded.device)
        else:
            with torch.no_grad(), loaded.autocast():
                target = loaded.model(**batch).logits.argmax(dim=-1)
        scores = student.explain_batch(batch, target).cpu().numpy()
        for row, i in enumerate(idx):
            ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
            out[i] = Explanation(texts[i], loaded.tokenizer.convert_ids_to_tokens(ids.tolist()), ids,
                                 scores[row, :len(ids)].astype(np.float32), int(target[row]))
    return out  # type: ignore[return-value]

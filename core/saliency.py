"""Token attribution methods behind one registry, and the batched forward + attribution step.

Every method maps a padded batch to one weight per token: `attribute(loaded, batch, target) -> (B, T)`.
Add a method by subclassing `AttributionMethod` and decorating it with `@register`. A *derived* method
(`derived = True`, e.g. LAFA) needs the whole dataset rather than a batch: it is computed from a run's stored
scores of its `base` method (see core.lafa and `Run.scores`), never by a backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from core import lafa
from core.models import LoadedModel

ATTRIBUTION_METHODS: dict[str, "AttributionMethod"] = {}


def register(cls: type["AttributionMethod"]) -> type["AttributionMethod"]:
    """Class decorator: add an instance of `cls` to the registry under `cls.name`."""
    ATTRIBUTION_METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> "AttributionMethod":
    """Return the registered method called `name`; the error lists the known names."""
    try:
        return ATTRIBUTION_METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown attribution method '{name}'. Known methods: "
                         f"{', '.join(sorted(ATTRIBUTION_METHODS))}.") from None


def _embed(loaded: LoadedModel, input_ids: torch.Tensor) -> torch.Tensor:
    return loaded.model.get_input_embeddings()(input_ids)


def _forward_from_embeddings(loaded: LoadedModel, batch: dict[str, torch.Tensor], hidden_states: bool = False):
    extra = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
    return loaded.model(inputs_embeds=batch["inputs_embeds"], output_hidden_states=hidden_states, **extra)


class AttributionMethod:
    """One weight per token for the class `target` of each example in a padded batch."""

    name: str = ""
    description: str = ""
    signed: bool = False
    derived: bool = False  # computed from a run's stored scores of `base`, not from a batch
    learned: bool = False  # needs a student trained by the precompute (l2e): cannot be a teacher
    base: str | None = None

    def attribute(self, loaded: LoadedModel, batch: dict[str, torch.Tensor], target: torch.Tensor,
                  **options) -> torch.Tensor:
        """Return a float32 (B, T) tensor of token attributions (padding positions are meaningless)."""
        raise NotImplementedError


def _target_score_grad(loaded: LoadedModel, batch: dict[str, torch.Tensor], target: torch.Tensor | None):
    """Return (target, gradient of the target logits w.r.t. the input embeddings, model outputs).

    With `target` None the target is each example's predicted class, read off the same forward pass.
    """
    batch = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
    embeds = _embed(loaded, batch["input_ids"]).detach().requires_grad_(True)
    with loaded.autocast():
        outputs = _forward_from_embeddings(loaded, {**batch, "inputs_embeds": embeds}, hidden_states=True)
    if target is None:
        target = outputs.logits.detach().argmax(dim=-1)
    # Examples are independent in eval mode, so the gradient of the summed target logits gives each
    # example's own gradient in one backward pass.
    score = outputs.logits.float().gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, embeds)
    return target, grad.float(), outputs


@register
class GradL2(AttributionMethod):
    name = "grad_l2"
    description = "L2 norm of the gradient of the target logit w.r.t. each input embedding (Grad-L2)."

    def attribute(self, loaded, batch, target, **options):
        _, grad, _ = _target_score_grad(loaded, batch, target)
        return grad.norm(dim=-1)


@register
class GradXInput(AttributionMethod):
    name = "grad_x_input"
    description = "Gradient x Input (captum InputXGradient), summed over the embedding dimension."
    signed = True

    def attribute(self, loaded, batch, target, **options):
        from captum.attr import InputXGradient

        embeds = _embed(loaded, batch["input_ids"]).detach().requires_grad_(True)
        attr = InputXGradient(_EmbeddingForward(loaded, batch)).attribute(embeds, target=target)
        return attr.float().sum(dim=-1).detach()


@register
class IntegratedGradientsMethod(AttributionMethod):
    name = "integrated_gradients"
    description = ("Integrated Gradients (captum) from a baseline of [PAD] embeddings (special tokens kept), "
                   "summed over the embedding dimension.")
    signed = True

    def attribute(self, loaded, batch, target, n_steps: int = 20, **options):
        from captum.attr import IntegratedGradients

        input_ids = batch["input_ids"]
        embeds = _embed(loaded, input_ids).detach()
        pad_id = loaded.tokenizer.pad_token_id
        baseline_ids = torch.full_like(input_ids, pad_id if pad_id is not None else 0)
        special = batch.get("special_tokens_mask")
        if special is not None:
            baseline_ids = torch.where(special.bool(), input_ids, baseline_ids)
        baseline = _embed(loaded, baseline_ids).detach()
        if pad_id is None:
            baseline = torch.zeros_like(embeds)
        ig = IntegratedGradients(_EmbeddingForward(loaded, batch))
        attr = ig.attribute(embeds, baselines=baseline, target=target, n_steps=n_steps,
                            internal_batch_size=max(1, input_ids.shape[0]) * min(n_steps, 4))
        return attr.float().sum(dim=-1).detach()


class _EmbeddingForward:
    """A captum forward function: embeddings (possibly expanded by captum along the batch) -> logits."""

    def __init__(self, loaded: LoadedModel, batch: dict[str, torch.Tensor]):
        self.loaded = loaded
        self.batch = batch

    def __call__(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        repeat = inputs_embeds.shape[0] // self.batch["input_ids"].shape[0]
        extra = {k: v.repeat(repeat, 1) for k, v in self.batch.items() if k in ("attention_mask", "token_type_ids")}
        with self.loaded.autocast():
            logits = self.loaded.model(inputs_embeds=inputs_embeds, **extra).logits
        return logits.float()


@dataclass
class BatchResult:
    """Outputs of one batch: logits (B, C), [CLS] vectors (B, H), and per-method (B, T) attributions."""

    logits: torch.Tensor
    cls: torch.Tensor
    attributions: dict[str, torch.Tensor]


def forward_and_attribute(loaded: LoadedModel, batch: dict[str, torch.Tensor], methods: list[str],
                          target_class: int | None = None, method_options: dict | None = None) -> BatchResult:
    """Run the model on `batch` and return logits, [CLS] encodings and each method's attributions.

    The target is the predicted class unless `target_class` is given. Grad-L2 and Gradient x Input reuse the
    forward pass that yields the logits and its one backward pass, so together they cost one forward + one
    backward per batch; without either of them there is no backward pass here. `l2e` reads its student from
    `method_options["l2e"]["student"]`.
    """
    method_options = method_options or {}
    target = None
    if target_class is not None:
        target = torch.full((batch["input_ids"].shape[0],), int(target_class), device=loaded.device)
    if any(name in (GradL2.name, GradXInput.name) for name in methods):
        target, grad, outputs = _target_score_grad(loaded, batch, target)
    else:
        # no method reads the embedding gradient (e.g. l2e alone): a forward pass without a backward one
        grad = None
        with torch.no_grad(), loaded.autocast():
            plain = {k: v for k, v in batch.items() if k != "special_tokens_mask"}
            outputs = _forward_from_embeddings(loaded, {**plain, "inputs_embeds": _embed(loaded, batch["input_ids"])},
                                               hidden_states=True)
        if target is None:
            target = outputs.logits.float().argmax(dim=-1)
    logits = outputs.logits.detach().float()
    cls = outputs.hidden_states[-1][:, 0].detach().float()
    attributions = {}
    for name in methods:
        if name == GradL2.name:
            attributions[name] = grad.norm(dim=-1)
        elif name == GradXInput.name:
            # the same gradient times the input embeddings: Gradient x Input without a second backward pass
            embeds = _embed(loaded, batch["input_ids"]).detach().float()
            attributions[name] = (grad * embeds).sum(dim=-1)
        else:
            attributions[name] = get_method(name).attribute(loaded, batch, target, **method_options.get(name, {}))
    return BatchResult(logits=logits, cls=cls, attributions=attributions)


# ============================================================================ input marginalization


def token_distribution(token_ids: np.ndarray, vocab_size: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """Return the unigram distribution (vocab_size,) of `token_ids`, with the `exclude` ids (specials) at zero.

    This is input marginalization's fallback candidate distribution when no masked language model is given.
    """
    counts = np.bincount(np.asarray(token_ids, dtype=np.int64).ravel(), minlength=vocab_size)[:vocab_size]
    counts = counts.astype(np.float64)
    counts[[i for i in exclude if 0 <= i < vocab_size]] = 0.0
    total = counts.sum()
    if total <= 0:
        raise ValueError("No non-special tokens to build the candidate distribution from.")
    return counts / total


def dataset_token_distribution(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Return the token-frequency distribution (vocab,) of `texts` as tokenized for the run, specials excluded."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in enc["input_ids"]] or [np.zeros(0, np.int64)])
    return token_distribution(ids, len(tokenizer), tokenizer.all_special_ids)


@lru_cache(maxsize=2)
def _load_mlm(mlm_dir: str, device: str):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from core.models import LOAD_ERRORS, ModelLoadError, check_model_folder, quiet_transformers

    folder = Path(mlm_dir).expanduser()
    what = "The masked language model folder (input marginalization)"
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what} {folder} is not a HuggingFace model folder (no config.json). Give a local "
                             "folder written by save_pretrained, or none to use the dataset's token frequencies.")
    check_model_folder(folder, what)  # no custom code, safetensors only: nothing in the folder runs
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=False, use_safetensors=True)
    except LOAD_ERRORS as exc:
        raise ModelLoadError(f"Could not load a masked language model from {folder}: {exc}") from exc
    return model.to(device).eval(), tokenizer


def _truncate_candidates(probs: torch.Tensor, top_n: int, cum_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the most likely candidates per row: at most `top_n`, stopping once their mass reaches `cum_prob`.

    Returns (candidate ids (R, n), renormalised weights (R, n)); dropped slots have weight 0.
    """
    weights, ids = probs.topk(min(top_n, probs.shape[-1]), dim=-1)
    before = weights.cumsum(dim=-1) - weights  # mass of the better candidates
    weights = torch.where(before < cum_prob, weights, torch.zeros_like(weights))
    return ids, weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _log_odds(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log2(p) - torch.log2(1 - p)


@register
class InputMarginalization(AttributionMethod):
    """Kim et al. (2020), "Interpretation of NLP models through input marginalization".

    For token i: a_i = log-odds p(y | x) - log-odds p(y | x without x_i), where the second probability is
    the average of p(y | x with x_i replaced by c) over candidates c, weighted by p(c | x without x_i).

    Candidate distribution: a masked language model in the local folder `mlm_dir` (it must share the
    classifier's vocabulary), queried with x_i masked; without one, the dataset's own token frequencies
    (`candidate_probs`, the same for every position: a context-free approximation that still keeps the
    replacements on the data distribution, unlike erasing to [PAD] or zero). Special tokens are never
    candidates. The kept candidates (at most `top_n`, up to a cumulative probability of `cum_prob`) are
    renormalised to sum to 1. The original token is a candidate like any other, as in the paper. Log-odds
    are base 2. Positive scores mean the token supports the target class. Special tokens and padding score 0.
    """

    name = "input_marginalization"
    description = ("Input marginalization (Kim et al.): log-odds drop when the token is replaced by likely "
                   "candidates (masked LM, or dataset token frequencies without one).")
    signed = True

    @torch.no_grad()
    def attribute(self, loaded, batch, target, mlm_dir: str | None = None, candidate_probs=None,
                  top_n: int = 10, cum_prob: float = 0.95, chunk_size: int = 256, **options):
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        device = input_ids.device
        special = batch.get("special_tokens_mask")
        if special is None:
            special = torch.zeros_like(input_ids)
        extra = {k: batch[k] for k in ("token_type_ids",) if k in batch}
        with loaded.autocast():
            logits = loaded.model(input_ids=input_ids, attention_mask=attention, **extra).logits.float()
        if target is None:
            target = logits.argmax(dim=-1)
        base = _log_odds(torch.softmax(logits, dim=-1).gather(1, target[:, None])[:, 0])

        rows, cols = torch.nonzero((attention > 0) & (special == 0), as_tuple=True)
        scores = torch.zeros(input_ids.shape, dtype=torch.float32, device=device)
        if len(rows) == 0:
            return scores
        cand_ids, cand_w = self._candidates(loaded, input_ids, attention, extra, rows, cols, mlm_dir,
                                            candidate_probs, top_n, cum_prob, chunk_size)
        # one classifier input per (position, kept candidate)
        pair, slot = torch.nonzero(cand_w > 0, as_tuple=True)
        marginal = torch.zeros(len(rows), dtype=torch.float32, device=device)
        for lo in range(0, len(pair), chunk_size):
            p, s = pair[lo:lo + chunk_size], slot[lo:lo + chunk_size]
            b = rows[p]
            ids = input_ids[b].clone()
            ids[torch.arange(len(p), device=device), cols[p]] = cand_ids[p, s]
            with loaded.autocast():
                out = loaded.model(input_ids=ids, attention_mask=attention[b],
                                   **{k: v[b] for k, v in extra.items()}).logits.float()
            prob = torch.softmax(out, dim=-1).gather(1, target[b][:, None])[:, 0]
            marginal.index_add_(0, p, prob * cand_w[p, s])
        scores[rows, cols] = base[rows] - _log_odds(marginal)
        return scores

    def _candidates(self, loaded, input_ids, attention, extra, rows, cols, mlm_dir, candidate_probs, top_n,
                    cum_prob, chunk_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (candidate ids, weights), each (positions, top_n), for the (rows, cols) positions."""
        device = input_ids.device
        specials = list(loaded.tokenizer.all_special_ids)
        if mlm_dir:
            mlm, mlm_tok = _load_mlm(str(mlm_dir), str(device))
            if mlm_tok.get_vocab() != loaded.tokenizer.get_vocab():
                raise ValueError(f"The masked language model in {mlm_dir} has another vocabulary than the "
                                 "classifier; input marginalization needs the same tokenizer for both.")
            mask_id = loaded.tokenizer.mask_token_id
            if mask_id is None:
                raise ValueError("The tokenizer has no mask token, so a masked language model cannot be queried.")
            ids_out, w_out = [], []
            for lo in range(0, len(rows), chunk_size):
                r, c = rows[lo:lo + chunk_size], cols[lo:lo + chunk_size]
                ids = input_ids[r].clone()
                ids[torch.arange(len(r), device=device), c] = mask_id
                with loaded.autocast():
                    logits = mlm(input_ids=ids, attention_mask=attention[r],
                                 **{k: v[r] for k, v in extra.items()}).logits
                logits = logits[torch.arange(len(r), device=device), c].float()
                logits[:, [s for s in specials if s < logits.shape[-1]]] = float("-inf")
                ids_c, w_c = _truncate_candidates(torch.softmax(logits, dim=-1), top_n, cum_prob)
                ids_out.append(ids_c)
                w_out.append(w_c)
            return torch.cat(ids_out), torch.cat(w_out)
        if candidate_probs is None:
            raise ValueError("input_marginalization needs a masked language model folder (mlm_dir) or a "
                             "candidate distribution over the vocabulary (candidate_probs, e.g. "
                             "core.saliency.dataset_token_distribution).")
        probs = torch.as_tensor(np.asarray(candidate_probs), dtype=torch.float32, device=device).clone()
        probs[[s for s in specials if s < len(probs)]] = 0.0
        ids_c, w_c = _truncate_candidates(probs[None] / probs.sum(), top_n, cum_prob)
        return ids_c.expand(len(rows), -1), w_c.expand(len(rows), -1)


# ============================================================================ learned explainer


@register
class L2E(AttributionMethod):
    """Situ et al. (2021), "Learning to Explain" (core.l2e): a small student network trained on a sample of a
    teacher method's maps predicts every token's saliency from the text and the explained class, in one forward
    pass. The student is trained by the precompute (`--method l2e`) and stored in the run; `attribute` needs it as
    the `student` option (core.l2e.load_run_student). Scores are unsigned, in [0, 1]."""

    name = "l2e"
    description = ("L2E (Situ et al.): a student network (the classifier's embeddings and first layers plus a class "
                   "embedding) trained on a sample of a teacher's maps (grad_l2 by default) predicts each token's "
                   "saliency bucket in one forward pass, no backward pass.")
    learned = True

    def attribute(self, loaded, batch, target, student=None, **options):
        if student is None:
            raise ValueError("l2e maps come from a student network trained on a teacher method's maps of the run: "
                             "precompute with --method l2e (it trains the student and stores it in the run), or pass "
                             "student=core.l2e.load_run_student(run).")
        if target is None:
            raise ValueError("l2e explains a given class: pass the target classes (the predicted ones by default).")
        return student.explain_batch(batch, target).float()


# ============================================================================ derived methods


class DerivedMethod(AttributionMethod):
    """A method computed from a run's stored scores of `base` (and its other arrays) instead of a batch."""

    derived = True

    def attribute(self, loaded, batch, target, **options):
        raise ValueError(f"'{self.name}' is derived from a run's stored '{self.base}' scores over the whole dataset, "
                         f"not computed on a batch: precompute with --method {self.base},{self.name}, or read it "
                         f"with Run.scores('{self.name}').")


@register
class LAFA(DerivedMethod):
    name = lafa.NAME
    base = lafa.DERIVED_METHODS[lafa.NAME].base
    description = ("LAFA (Zhang et al.): Grad-L2 plus the kernel-weighted Grad-L2 of similar tokens in the 10 "
                   "nearest same-class examples ([CLS] encoding); derived from the stored Grad-L2, no backward pass.")


def is_derived(name: str) -> bool:
    """Return whether the registered method `name` is derived from stored scores (no backward pass)."""
    return get_method(name).derived

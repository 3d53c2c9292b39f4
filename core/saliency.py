"""Token attribution methods behind one registry, and the batched forward + attribution step.

Every method maps a padded batch to one weight per token: `attribute(loaded, batch, target) -> (B, T)`.
Add a method by subclassing `AttributionMethod` and decorating it with `@register`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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

    The target is the predicted class unless `target_class` is given. Grad-L2 reuses the forward pass
    that yields the logits, so it costs one forward + one backward per batch.
    """
    method_options = method_options or {}
    target = None
    if target_class is not None:
        target = torch.full((batch["input_ids"].shape[0],), int(target_class), device=loaded.device)
    target, grad, outputs = _target_score_grad(loaded, batch, target)
    logits = outputs.logits.detach().float()
    cls = outputs.hidden_states[-1][:, 0].detach().float()
    attributions = {}
    for name in methods:
        if name == GradL2.name:
            attributions[name] = grad.norm(dim=-1)
        else:
            attributions[name] = get_method(name).attribute(loaded, batch, target, **method_options.get(name, {}))
    return BatchResult(logits=logits, cls=cls, attributions=attributions)

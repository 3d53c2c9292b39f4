"""Known-answer tests for the attribution methods: batched results equal hand-computed gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.models import load_classifier
from core.precompute import PrecomputeSettings, attribute_chunk
from core.saliency import ATTRIBUTION_METHODS, get_method
from tests.conftest import SENTENCES

TEXTS = [t for t, _ in SENTENCES if t][:9]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_classifier(tiny_model_dir, device="cpu")


def reference_gradient(loaded, text: str, target: int | None = None):
    """Gradient of the target logit w.r.t. the input embeddings of one unpadded example, plus the embeddings."""
    enc = loaded.tokenizer(text, return_tensors="pt")
    embeds = loaded.model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    logits = loaded.model(inputs_embeds=embeds, attention_mask=enc["attention_mask"],
                          token_type_ids=enc["token_type_ids"]).logits[0]
    target = int(logits.argmax()) if target is None else target
    (grad,) = torch.autograd.grad(logits[target], embeds)
    return grad[0], embeds[0].detach(), logits.detach(), target


def split_scores(arrays, key):
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [arrays[key][bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


@pytest.mark.parametrize("batch_size", [1, 4, 9])
def test_grad_l2_equals_per_example_autograd(loaded, batch_size):
    arrays = attribute_chunk(loaded, TEXTS, PrecomputeSettings(batch_size=batch_size, methods=("grad_l2",)))
    for text, scores in zip(TEXTS, split_scores(arrays, "scores__grad_l2")):
        grad, _, _, _ = reference_gradient(loaded, text)
        np.testing.assert_allclose(scores, grad.norm(dim=-1).numpy(), atol=1e-5, rtol=1e-4)


def test_grad_l2_for_a_chosen_class(loaded):
    arrays = attribute_chunk(loaded, TEXTS, PrecomputeSettings(batch_size=4, methods=("grad_l2",), target_class=0))
    for text, scores in zip(TEXTS, split_scores(arrays, "scores__grad_l2")):
        grad, _, _, _ = reference_gradient(loaded, text, target=0)
        np.testing.assert_allclose(scores, grad.norm(dim=-1).numpy(), atol=1e-5, rtol=1e-4)


def test_grad_x_input_equals_gradient_dot_embedding(loaded):
    arrays = attribute_chunk(loaded, TEXTS, PrecomputeSettings(batch_size=4, methods=("grad_x_input",)))
    for text, scores in zip(TEXTS, split_scores(arrays, "scores__grad_x_input")):
        grad, embeds, _, _ = reference_gradient(loaded, text)
        np.testing.assert_allclose(scores, (grad * embeds).sum(-1).numpy(), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_is_complete(loaded):
    """IG attributions sum to logit(input) - logit(baseline) (completeness), up to the integration error."""
    text = "the movie was good and fun"
    arrays = attribute_chunk(loaded, [text], PrecomputeSettings(batch_size=1, methods=("integrated_gradients",),
                                                                 ig_steps=200))
    _, _, logits, target = reference_gradient(loaded, text)
    enc = loaded.tokenizer(text, return_tensors="pt")
    special = torch.tensor(loaded.tokenizer.get_special_tokens_mask(enc["input_ids"][0].tolist(),
                                                                     already_has_special_tokens=True)).bool()
    baseline_ids = torch.where(special, enc["input_ids"][0], torch.tensor(loaded.tokenizer.pad_token_id))[None]
    with torch.no_grad():
        baseline_logit = loaded.model(input_ids=baseline_ids, attention_mask=enc["attention_mask"],
                                      token_type_ids=enc["token_type_ids"]).logits[0, target]
    expected = float(logits[target] - baseline_logit)
    assert abs(float(arrays["scores__integrated_gradients"].sum()) - expected) < 1e-3 + 0.02 * abs(expected)


def test_outputs_match_plain_forward(loaded):
    arrays = attribute_chunk(loaded, TEXTS, PrecomputeSettings(batch_size=3))
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            out = loaded.model(**loaded.tokenizer(text, return_tensors="pt"), output_hidden_states=True)
            np.testing.assert_allclose(arrays["logits"][i], out.logits[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(arrays["cls"][i], out.hidden_states[-1][0, 0].numpy(), atol=1e-5)


def test_token_offsets_point_into_the_text(loaded):
    arrays = attribute_chunk(loaded, TEXTS, PrecomputeSettings(batch_size=4))
    starts, ends = split_scores(arrays, "char_starts"), split_scores(arrays, "char_ends")
    ids = split_scores(arrays, "token_ids")
    for text, s, e, tok in zip(TEXTS, starts, ends, ids):
        unk = loaded.tokenizer.unk_token_id
        spans = [(t, a, b) for t, a, b in zip(tok, s, e) if b > a and t != unk]
        assert [text[a:b] for _, a, b in spans] == loaded.tokenizer.convert_ids_to_tokens([t for t, _, _ in spans])


def test_truncation_at_max_length(loaded):
    long_text = " ".join(["good movie"] * 30)
    arrays = attribute_chunk(loaded, [long_text, "good"], PrecomputeSettings(max_length=10))
    assert arrays["lengths"].tolist() == [10, 3]
    assert arrays["truncated"].tolist() == [True, False]


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_method("gradient")
    for name in ("grad_l2", "grad_x_input", "integrated_gradients"):
        assert name in str(err.value)
    assert set(ATTRIBUTION_METHODS) >= {"grad_l2", "grad_x_input", "integrated_gradients"}


def test_grad_x_input_from_the_shared_gradient_equals_captum(loaded):
    """The precompute takes Gradient x Input from Grad-L2's backward pass; captum's InputXGradient must agree."""
    from core.saliency import forward_and_attribute

    enc = loaded.tokenizer([t for t, _ in SENTENCES[:6] if t], padding=True, return_tensors="pt")
    batch = {k: v for k, v in enc.items()}
    shared = forward_and_attribute(loaded, batch, ["grad_l2", "grad_x_input"]).attributions["grad_x_input"]
    target = loaded.model(**batch).logits.argmax(dim=-1)
    captum = get_method("grad_x_input").attribute(loaded, batch, target)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(shared[mask], captum[mask], rtol=1e-4, atol=1e-6)

"""Load a local HuggingFace sequence classifier and its tokenizer; pick a device; predict."""
from __future__ import annotations

import json
import pickle
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from core.manifest import TRUNCATION_SIDES
from safetensors import SafetensorError


class ModelLoadError(ValueError):
    """A model directory that cannot be used as a sequence classifier, with the reason and the fix."""


@dataclass
class LoadedModel:
    """A classifier ready for inference: model in eval mode on `device`, its fast tokenizer and labels."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    model_dir: Path
    id2label: dict[int, str]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label_names(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def autocast(self):
        """Return a bf16 autocast context on CUDA (fp16 where bf16 is unsupported), a no-op on CPU."""
        if self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)


def check_device(requested: str) -> torch.device:
    """Return `requested` as a torch device, or raise ValueError naming the devices this machine has."""
    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        dev = None
    ok = dev is not None and (dev.type == "cpu" or
                              (dev.type == "cuda" and torch.cuda.is_available()
                               and (dev.index or 0) < torch.cuda.device_count()) or
                              (dev.type == "mps" and "mps" in available))
    if not ok:
        raise ValueError(f"device {requested!r} is not available on this machine; use one of: "
                         f"{', '.join(available)}")
    return dev


def pick_device(requested: str | None = None) -> torch.device:
    """Return the requested device (checked with `check_device`), else CUDA when available, else CPU."""
    if requested:
        return check_device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# what from_pretrained raises on a broken folder (bad files, damaged safetensors, a refused pickle)
LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError)

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def check_model_folder(model_dir: Path, what: str = "The model folder") -> None:
    """Refuse a model folder that would need code to run while loading: Python modules named by `auto_map`
    (transformers' custom code) or a pickle checkpoint (which runs code when unpickled) instead of safetensors.

    Saliency Atlas loads every model with trust_remote_code=False and use_safetensors=True; this check names the
    problem and the fix up front instead of transformers' prompt, advice to trust the code, or a pickle traceback.
    """
    _check_no_custom_code(model_dir, what)
    _check_safetensors(model_dir, what)


def _check_no_custom_code(model_dir: Path, what: str) -> None:
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} is not valid JSON ({exc}).") from exc
        auto_map = content.get("auto_map") if isinstance(content, dict) else None
        if auto_map:
            targets = auto_map.values() if isinstance(auto_map, dict) else auto_map
            named = ", ".join(sorted({str(t) for t in targets}))[:200]
            raise ModelLoadError(
                f"{what} {model_dir} carries its own Python code ({name} has auto_map: {named}). Saliency Atlas "
                "never runs code from a model folder. Use a model whose architecture transformers ships (a folder "
                "written by save_pretrained from a standard class, without auto_map), or inspect the code and "
                "re-save the model with a standard architecture yourself.")


def _check_safetensors(model_dir: Path, what: str) -> None:
    if not any(model_dir.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in model_dir.glob(pattern))
        if pickles:
            raise ModelLoadError(
                f"{what} {model_dir} has only pickle weights ({', '.join(pickles[:3])}), which can run code when "
                "loaded; Saliency Atlas loads safetensors weights only. If you trust the file, convert it once: "
                "`AutoModelForSequenceClassification.from_pretrained(DIR, use_safetensors=False)"
                ".save_pretrained(DIR)` writes model.safetensors (use AutoModelForMaskedLM for a masked LM).")
        raise ModelLoadError(f"{what} {model_dir} has no model weights (model.safetensors). Save the model with "
                             "`model.save_pretrained(DIR)`.")


def config_num_labels(config: dict) -> int:
    """Return the number of classes a config.json dict describes (transformers' default: 2)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return int(config.get("num_labels") or 2)


def _check_model_dir(model_dir: Path) -> dict:
    if not model_dir.exists():
        raise ModelLoadError(f"Model directory {model_dir} does not exist. Pass --model with a local folder "
                             "written by `save_pretrained` (config.json, weights, tokenizer files).")
    if not model_dir.is_dir():
        raise ModelLoadError(f"--model must be a directory, got the file {model_dir}.")
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"{model_dir} has no config.json: it is not a HuggingFace model folder. "
                             "Save your model with `model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)`.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}).") from exc
    _check_no_custom_code(model_dir, "The model folder")
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"{model_dir} holds a {', '.join(architectures)}, not a sequence classifier: its classification head "
            "would be random. Fine-tune it first (e.g. `python -m core.demo` shows how) or point --model at a "
            "folder whose config.json lists a *ForSequenceClassification architecture.")
    _check_safetensors(model_dir, "The model folder")
    return config


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and weight loading/writing progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_classifier_folder(model_dir: str | Path) -> dict:
    """Return the config.json of the classifier folder `model_dir` after the checks that need no loading (it
    exists, is a HuggingFace sequence classifier, carries no code and has safetensors weights); raise
    ModelLoadError naming the problem and the fix otherwise."""
    return _check_model_dir(Path(model_dir).expanduser().resolve())


def load_classifier(model_dir: str | Path, device: str | None = None) -> LoadedModel:
    """Return the classifier and fast tokenizer stored in `model_dir`, in eval mode on the chosen device.

    Never runs code from the folder (trust_remote_code=False, safetensors weights only). Raises ModelLoadError
    naming the problem and the fix when the folder is not a usable classifier, including one whose
    classification head is missing from the checkpoint (transformers would initialise it at random).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir).expanduser().resolve()
    _check_model_dir(model_dir)
    dev = pick_device(device)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_dir, trust_remote_code=False, use_safetensors=True, output_loading_info=True)
    except LOAD_ERRORS as exc:
        raise ModelLoadError(f"Could not load a sequence classifier from {model_dir}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"{model_dir} lacks weights the classifier needs ({', '.join(missing[:6])}"
            f"{', …' if len(missing) > 6 else ''}): transformers would initialise them at random, so every "
            "prediction and saliency map would be noise. The folder holds a base model, not a fine-tuned "
            "classifier: fine-tune it on your classes (e.g. `python -m core.demo` shows how) and save it with "
            "save_pretrained, or point --model at the fine-tuned folder.")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"The tokenizer in {model_dir} is a slow (Python) tokenizer; character offsets need a "
                             "fast one. Save a fast tokenizer (tokenizer.json) with the model.")
    model.to(dev).eval()
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, model_dir=model_dir, id2label=id2label)


def input_embedding_matrix(loaded: LoadedModel) -> np.ndarray:
    """Return the model's input word-embedding matrix E (vocab x dim) as float32 numpy."""
    return loaded.model.get_input_embeddings().weight.detach().float().cpu().numpy()


def ignored_token_mask(tokenizer) -> np.ndarray:
    """Return a bool mask over the vocabulary: True for special tokens and tokens made only of punctuation."""
    import unicodedata

    vocab_size = len(tokenizer)
    mask = np.zeros(vocab_size, dtype=bool)
    mask[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    for token, idx in tokenizer.get_vocab().items():
        piece = token[2:] if token.startswith("##") else token
        piece = piece.lstrip("\u0120\u2581")  # GPT-2 / SentencePiece word-start markers
        if piece and all(unicodedata.category(ch).startswith(("P", "S")) for ch in piece):
            mask[idx] = True
    return mask


def vocabulary(tokenizer) -> list[str]:
    """Return the token string of every vocabulary id, in id order."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))




def check_truncation(truncation: str) -> str:
    """Return `truncation` if it is one of TRUNCATION_SIDES, else raise ValueError naming the choices."""
    if truncation not in TRUNCATION_SIDES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_SIDES)} (which part of a text longer "
                         f"than max_length the model sees), got {truncation!r}")
    return truncation


def encode(tokenizer, texts: Sequence[str], max_length: int, truncation: str = "head", *,
           offsets: bool = False) -> dict[str, list]:
    """Tokenize `texts` to at most `max_length` tokens each, keeping the `truncation` side of a longer text.

    "head" keeps the first tokens (the tokenizer's own truncation), "tail" the last ones, "head+tail" the first
    half and the last half of the budget (the extra token goes to the head); the special tokens around the text
    ([CLS] ... [SEP]) are always kept. Returns plain lists per text: input_ids, attention_mask, special_tokens_mask,
    token_type_ids (when the tokenizer makes them), offset_mapping (with `offsets`; character offsets into the
    original text, so they stay right whichever side is kept) and truncated (whether content tokens were dropped).
    """
    check_truncation(truncation)
    texts = [str(t) for t in texts]
    if truncation == "head" and offsets:
        # the tokenizer's own truncation: the precompute's arrays stay byte-identical to runs made before the option
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        out = {key: [list(v) for v in enc[key]] for key in enc.keys()}
        # a text was cut when the tokens stop before its last non-space character
        out["truncated"] = [len(ids) >= max_length and max((e for _, e in offs), default=0) < len(t.rstrip())
                            for ids, offs, t in zip(out["input_ids"], out["offset_mapping"], texts)]
        return out
    # one untruncated pass, then the kept tokens sliced out (head without offsets too: it needs the full length
    # to say whether a text was cut, and a second, truncated pass would tokenize everything twice)
    enc = tokenizer(texts, truncation=False, return_offsets_mapping=offsets, return_special_tokens_mask=True,
                    verbose=False)
    keys = [key for key in enc.keys()]
    out: dict[str, list] = {key: [] for key in keys}
    out["truncated"] = []
    for i in range(len(texts)):
        special = list(enc["special_tokens_mask"][i])
        n = len(special)
        lead = 0
        while lead < n and special[lead]:
            lead += 1
        trail = 0
        while trail < n - lead and special[n - 1 - trail]:
            trail += 1
        content = n - lead - trail
        budget = max(0, max_length - lead - trail)
        if content <= budget:
            keep = list(range(n))
        else:
            n_tail = {"head": 0, "tail": budget, "head+tail": budget // 2}[truncation]
            n_head = budget - n_tail
            keep = (list(range(lead)) + list(range(lead, lead + n_head)) +
                    list(range(n - trail - n_tail, n - trail)) + list(range(n - trail, n)))
        for key in keys:
            values = enc[key][i]
            out[key].append([values[j] for j in keep])
        out["truncated"].append(content > budget)
    return out


def pad_sequences(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Return the int sequences right-padded with `value` into one (n x longest) long tensor."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def pad_batch(enc: dict[str, list], rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Return right-padded input_ids / attention_mask (/ token_type_ids) tensors for `rows` of an `encode` result."""
    return {key: pad_sequences([enc[key][i] for i in rows], value)
            for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)) if key in enc}


@torch.no_grad()
def predict_proba(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 64,
                  max_length: int = 128, truncation: str = "head") -> np.ndarray:
    """Return class probabilities (n x num_labels, float32) for `texts`, batched in length order; texts longer than
    `max_length` tokens keep their `truncation` side (see `encode`)."""
    check_truncation(truncation)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), loaded.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        if truncation == "head":
            enc = loaded.tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                                   padding=True, return_tensors="pt").to(loaded.device)
        else:
            encoded = encode(loaded.tokenizer, [texts[i] for i in idx], max_length, truncation)
            enc = {k: v.to(loaded.device) for k, v in
                   pad_batch(encoded, range(len(idx)), loaded.tokenizer.pad_token_id or 0).items()}
        with loaded.autocast():
            logits = loaded.model(**enc).logits
        out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return out


def batches(items: Iterable, size: int):
    """Yield lists of at most `size` consecutive items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

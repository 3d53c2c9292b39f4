"""Shared fixtures: a tiny random BERT classifier saved to disk, a small dataset, and a run built from them."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Clusters computed ahead in a background thread (core.ui.prefetch_cluster_counts) would run k-means between the
# steps of tests that count k-means runs; the tests of the prefetch turn it on themselves.
os.environ.setdefault("SALIENCY_ATLAS_PREFETCH", "0")

WORDS = ["good", "great", "fun", "bad", "awful", "boring", "movie", "film", "plot", "acting", "the", "a", "is",
         "was", "not", "very", "and", "but", "common", "class", "_", "0", "1", "cat", "dog", ".", ",", "!", "it",
         "##s", "##ing", "love", "hate"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SENTENCES = [
    ("the movie was good and fun", 1), ("a great film", 1), ("love the acting !", 1),
    ("the plot is very good", 1), ("great fun , great acting", 1), ("it was not bad", 1),
    ("the movie was bad", 0), ("an awful film .", 0), ("hate the plot", 0),
    ("boring and awful acting", 0), ("the film is not good", 0), ("a very boring movie", 0),
    ("the cat and the dog", 1), ("dog movie was boring", 0), ("common class _ 1 film", 1),
    ("common class _ 0 film", 0), ("", 1),
]


def write_tiny_model(folder, seed: int = 0, num_labels: int = 2):
    """Save a tiny random BERT sequence classifier and its fast tokenizer to `folder`; return the folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)  # transformers 5: `vocab=`
    names = ["negative", "positive", "neutral"][:num_labels]
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                        num_labels=num_labels, id2label=dict(enumerate(names)),
                        label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT classifier (hidden 32, 2 layers) saved with save_pretrained."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_data_csv(tmp_path_factory):
    """A small labelled CSV with a train/test split column (one empty text)."""
    rows = [{"text": t, "label": y, "split": "test" if i % 4 == 3 else "train"} for i, (t, y) in enumerate(SENTENCES)]
    path = tmp_path_factory.mktemp("tiny_data") / "tiny.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and fixed seeds."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SALIENCY_ATLAS_CACHE", str(cache))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return cache


@contextmanager
def cache_at(folder):
    """Point SALIENCY_ATLAS_CACHE at `folder` inside the block (session fixtures cannot use monkeypatch)."""
    previous = os.environ.get("SALIENCY_ATLAS_CACHE")
    os.environ["SALIENCY_ATLAS_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("SALIENCY_ATLAS_CACHE", None)
        else:
            os.environ["SALIENCY_ATLAS_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_run_path(tiny_model_dir, tiny_data_csv, tmp_path_factory):
    """A complete run precomputed on the tiny model and data, in a session-wide cache folder."""
    from core.precompute import PrecomputeSettings, precompute

    with cache_at(tmp_path_factory.mktemp("session_cache")):
        result = precompute(tiny_model_dir, tiny_data_csv,
                            PrecomputeSettings(split_col="split", max_length=16, batch_size=4, chunk_size=8,
                                               methods=("grad_l2", "grad_x_input", "integrated_gradients"),
                                               ig_steps=8),
                            progress=False)
    return result.run_path

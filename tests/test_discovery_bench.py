"""The IMDB discovery benchmark's own logic (bench/discovery.py, bench/discovery_diagnosis.py): the rating truth,
reading the reviews from an exported file, the cache names the diagnosis finds the model by, and the rules its
reports are phrased from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import discovery
from bench.discovery_diagnosis import best_discovery_clusters

RESULTS = Path(discovery.__file__).parent / "results"


def test_rating_spans_know_ratings_from_dates_and_out_of_scale_numbers():
    spans = discovery.rating_spans("Dull. 3/10, and I saw it on 10/5/2001. Two stars. 15/10 would be a joke.")
    values = [v for _, _, v in spans]
    assert values == [pytest.approx(0.3), None]  # 3/10 and "Two stars"; not the date, not 15/10
    assert discovery.polarity(spans) == "negative"
    assert discovery.polarity(discovery.rating_spans("A solid 8 out of 10.")) == "positive"
    assert discovery.delete_ratings("Dull. 3/10 overall.") == "Dull. overall."


def test_reviews_are_read_from_an_exported_file_and_a_wrong_file_is_refused(tmp_path):
    n = discovery.IMDB_REVIEWS
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(n)], "label": np.arange(n) % 2})
    good = tmp_path / "imdb.csv.xz"
    frame.to_csv(good, index=False)
    imdb = discovery.load_imdb(good)
    assert len(imdb) == n and imdb["imdb_row"].tolist() == list(range(n))
    assert imdb["text"].iloc[7] == "review 7" and imdb["label"].iloc[7] == 1

    short = tmp_path / "short.csv"
    frame.iloc[:100].to_csv(short, index=False)
    with pytest.raises(SystemExit, match="--export-imdb"):
        discovery.load_imdb(short)
    unnamed = tmp_path / "unnamed.csv"
    frame.rename(columns={"text": "review"}).to_csv(unnamed, index=False)
    with pytest.raises(SystemExit, match="text, label"):
        discovery.load_imdb(unnamed)


def test_every_committed_configuration_names_the_model_folder_it_was_trained_in():
    """bench.discovery_diagnosis finds a configuration's model through model_tag; it must give the folder that
    bench.discovery trained into, for every configuration whose results are committed."""
    checked = 0
    for path in RESULTS.glob("discovery*.json"):
        res = json.loads(path.read_text(encoding="utf-8"))
        if "args" not in res:
            continue
        assert discovery.model_tag(res["args"]) == Path(res["model_dir"]).name, path.name
        checked += 1
    assert checked >= 4


def _sensitivity(deleted: int, of: int, mean_change: float, appended_flipped: float) -> dict:
    return {"sensitivity": {"delete_negative": {"n": of, "flipped": deleted, "mean_change": mean_change},
                            "append_1/10": {"share_flipped": appended_flipped}}}


def test_a_model_uses_the_ratings_when_deleting_or_appending_one_moves_its_predictions():
    assert not discovery.uses_ratings(_sensitivity(1, 187, -0.007, 0.02))
    assert discovery.uses_ratings(_sensitivity(16, 185, -0.08, 0.70))  # appending flips most: it reads them
    assert discovery.uses_ratings(_sensitivity(40, 100, -0.05, 0.10))  # deleting flips a fifth
    assert discovery.uses_ratings(_sensitivity(5, 100, -0.20, 0.10))  # deleting lowers p(negative) a lot


def test_the_purest_cluster_quoted_must_hold_a_quarter_of_the_rated_reviews():
    def row(name: str, clusters: int, precision: float, recall: float) -> dict:
        return {"representation": name, "clusters": clusters, "distinctive_terms": [name],
                "rated_seen": {"precision": precision, "recall": recall}}

    rows = [row("S1 small", 10, 1.0, 0.14), row("S1 big", 5, 0.89, 0.77), row("B3", 5, 0.95, 0.30),
            row("S2", 10, 0.70, 0.60)]
    best = best_discovery_clusters({"clusters": rows})
    assert best["saliency"]["representation"] == "S1 big"  # not the 14%-recall cluster
    assert best["any"]["representation"] == "B3"
    only_small = best_discovery_clusters({"clusters": [row("S1 small", 10, 1.0, 0.14), row("S1 tiny", 5, 0.5, 0.1)]})
    assert only_small["saliency"]["representation"] == "S1 small"  # none holds a quarter: the purest of all


def test_fine_tuning_the_papers_setting_on_the_cpu_warns_of_hours(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    import torch

    from core import demo

    trained = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(demo, "train_classifier", lambda *a, **k: trained.append(k) or {"seconds": 0})
    train = pd.DataFrame({"text": ["a review"] * 20000, "label": [0, 1] * 10000})
    args = Namespace(force=False, threads=0, base_model=str(tmp_path), epochs=2, max_length=512, batch_size=32,
                     lr=1e-4, seed=0, truncation="head+tail", quiet=True)
    discovery.ensure_model(train, args, tmp_path / "model")
    assert trained and "no GPU" in capsys.readouterr().err
    assert discovery.cpu_training_hours(20000, 512, 2) > 10 > 1 > discovery.cpu_training_hours(2000, 128, 1)

    discovery.ensure_model(train.iloc[:2000], Namespace(**{**vars(args), "max_length": 128, "epochs": 1}),
                           tmp_path / "small")
    assert "no GPU" not in capsys.readouterr().err  # a configuration sized for the CPU trains without a warning

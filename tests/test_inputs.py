"""Bad input gives a clear error naming the problem and the fix, or is skipped and counted."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from core.data import DataLoadError, load_dataset, map_labels
from core.models import ModelLoadError, load_classifier
from core.precompute import PrecomputeSettings, precompute

ID2LABEL = {0: "negative", 1: "positive"}


def write_csv(tmp_path, rows, name="d.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    path = write_csv(tmp_path, [{"sentence": "good", "label": 1}])
    with pytest.raises(DataLoadError) as err:
        load_dataset(path, ID2LABEL)
    assert "'text' not found" in str(err.value) and "sentence, label" in str(err.value)
    assert "--text-col" in str(err.value)


def test_empty_and_nan_texts_are_skipped_and_counted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\ngood film,1\n,0\n"   ",1\nbad film,0\n', encoding="utf-8")
    data = load_dataset(path, ID2LABEL)
    assert data.frame["text"].tolist() == ["good film", "bad film"]
    assert data.skipped == {"empty_text": 2, "missing_label": 0}
    assert data.frame["source_row"].tolist() == [0, 3]


def test_non_utf8_file_names_the_fix(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,1\n".encode("latin-1"))
    with pytest.raises(DataLoadError, match="not valid UTF-8.*iconv"):
        load_dataset(path, ID2LABEL)


def test_unknown_labels_are_reported_with_the_models_classes(tmp_path):
    path = write_csv(tmp_path, [{"text": "a", "label": "positive"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataLoadError) as err:
        load_dataset(path, ID2LABEL)
    assert "['meh']" in str(err.value) and "0=negative" in str(err.value)
    with pytest.raises(DataLoadError, match=r"\[2\].*outside"):
        map_labels(pd.Series([0, 1, 2]), ID2LABEL)


def test_string_labels_map_through_id2label_case_insensitively(tmp_path):
    path = write_csv(tmp_path, [{"text": "a", "label": "Positive"}, {"text": "b", "label": "negative"}])
    assert load_dataset(path, ID2LABEL).frame["label"].tolist() == [1, 0]
    path = write_csv(tmp_path, [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}], "ints.csv")
    assert load_dataset(path, ID2LABEL).frame["label"].tolist() == [1, 0]


def test_jsonl_and_parquet_with_custom_columns_and_split(tmp_path):
    rows = [{"review": "good", "y": 1, "part": "train"}, {"review": "bad", "y": 0, "part": "test"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    for path in (jsonl, parquet):
        frame = load_dataset(path, ID2LABEL, text_col="review", label_col="y", split_col="part").frame
        assert frame[["text", "label", "split"]].values.tolist() == [["good", 1, "train"], ["bad", 0, "test"]]


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DataLoadError, match="does not exist"):
        load_dataset(tmp_path / "nope.csv", ID2LABEL)
    (tmp_path / "d.xlsx").write_bytes(b"x")
    with pytest.raises(DataLoadError, match="Unsupported"):
        load_dataset(tmp_path / "d.xlsx", ID2LABEL)


def test_limit_and_sample(tmp_path):
    path = write_csv(tmp_path, [{"text": f"t{i}", "label": i % 2} for i in range(20)])
    assert len(load_dataset(path, ID2LABEL, limit=5).frame) == 5
    a = load_dataset(path, ID2LABEL, sample=7, seed=1).frame
    b = load_dataset(path, ID2LABEL, sample=7, seed=1).frame
    assert len(a) == 7 and a.equals(b)


def test_model_dir_that_is_not_a_classifier(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_classifier(tmp_path / "empty")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="not a sequence classifier.*Fine-tune"):
        load_classifier(encoder)


def test_precompute_on_a_bad_column_writes_nothing(tmp_path, tiny_model_dir, isolated_cache):
    path = write_csv(tmp_path, [{"text": "good", "label": 1}])
    with pytest.raises(DataLoadError):
        precompute(tiny_model_dir, path, PrecomputeSettings(label_col="gold"), progress=False)
    assert not (isolated_cache / "runs").exists() or not any((isolated_cache / "runs").iterdir())

"""Whole words from word pieces: segmentation, word-level saliency, word-level representations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.precompute import PrecomputeSettings, precompute
from core.representations import RepresentationKey
from core.store import open_run
from core.words import WORDS_VERSION, normalise_word, vocabulary_is_uncased, word_spans

TEXTS = [
    ("the CLASS_0 films !", 0),        # class _ 0 / film ##s: two words of several pieces
    ("Cats. (great) movie", 1),        # punctuation at word edges stays out
    ("the film -- the plot", 1),       # a chunk of punctuation only is no word
    ("the cat and the dog", 0),
    ("boring films , boring acting", 0),
    ("the plot is good", 1),
]


@pytest.fixture()
def word_run(tiny_model_dir, tmp_path):
    path = tmp_path / "words.csv"
    pd.DataFrame([{"text": t, "label": y} for t, y in TEXTS]).to_csv(path, index=False)
    result = precompute(tiny_model_dir, path, PrecomputeSettings(max_length=32, batch_size=4), progress=False)
    return open_run(result.run_path)


def test_word_spans_strip_edge_punctuation_and_keep_inner():
    text = 'said "great." (CLASS_0) don\'t -- £209 u.s.a.'
    words = [text[s:e] for s, e in word_spans(text)]
    assert words == ["said", "great", "CLASS_0", "don't", "£209", "u.s.a"]
    html = "a great film.<br /><br />4/10 <i>really</i>"
    assert [html[s:e] for s, e in word_spans(html)] == ["a", "great", "film", "4/10", "really"]


def test_normalise_word_follows_the_tokenizer_casing():
    assert normalise_word("Café", uncased=True) == "cafe"
    assert normalise_word("Café", uncased=False) == "Café"
    assert vocabulary_is_uncased(["[CLS]", "the", "##s", "cat"])
    assert not vocabulary_is_uncased(["[CLS]", "The", "the", "Cat"])


def test_pieces_of_one_word_merge_and_punctuation_stays_out(word_run):
    space = word_run.term_space("word")
    index = word_run.word_index
    vocab = space.vocab
    for word in ("class_0", "films", "cats", "great", "movie"):
        assert word in vocab, (word, vocab)
    for not_a_word in (".", "!", ",", "(", "--", "[CLS]", "[SEP]", "class", "_", "0", "##s"):
        assert not_a_word not in vocab
    # row 0 is exactly: the, class_0, films (the "!" and the special tokens belong to no word)
    row0 = [vocab[w] for w in index.word_ids[index.row_ptr[0]:index.row_ptr[1]]]
    assert row0 == ["the", "class_0", "films"]
    # class_0's occurrence holds the three pieces class, _, 0
    tokens = word_run.tokens_of(0)
    occ = int(index.row_ptr[0]) + 1
    pieces = index.token_index[index.occ_ptr[occ]:index.occ_ptr[occ + 1]] - int(word_run.row_ptr[0])
    assert tokens["token"].iloc[pieces].tolist() == ["class", "_", "0"]
    # row 2: "--" gives no word, so the row has four words
    row2 = [vocab[w] for w in index.word_ids[index.row_ptr[2]:index.row_ptr[3]]]
    assert row2 == ["the", "film", "the", "plot"]


def test_word_saliency_is_max_or_sum_of_its_pieces(word_run):
    tokens = word_run.tokens_of(0, "grad_l2")
    class0 = np.abs(tokens["score"].to_numpy()[2:5])  # [CLS] the | class _ 0 | film ##s ! [SEP]
    films = np.abs(tokens["score"].to_numpy()[5:7])
    assert tokens["token"].tolist()[2:7] == ["class", "_", "0", "film", "##s"]
    index = word_run.word_index
    row = slice(index.row_ptr[0], index.row_ptr[1])
    scores_max = word_run.word_inputs("word").scores("grad_l2")[row]
    scores_sum = word_run.word_inputs("word_sum").scores("grad_l2")[row]
    assert scores_max[1] == pytest.approx(class0.max(), rel=1e-6)
    assert scores_sum[1] == pytest.approx(class0.sum(), rel=1e-5)
    assert scores_max[2] == pytest.approx(films.max(), rel=1e-6)


def test_word_level_s1_s2_by_hand(word_run):
    vocab = word_run.term_space("word").vocab
    s1 = word_run.representation(RepresentationKey("s1", "grad_l2", None, unit="word"))
    assert s1.shape == (len(TEXTS), len(vocab))
    tokens = word_run.tokens_of(0, "grad_l2")
    raw = np.abs(tokens["score"].to_numpy())
    expected = {"the": raw[1], "class_0": raw[2:5].max(), "films": raw[5:7].max()}
    norm = np.sqrt(sum(v * v for v in expected.values()))
    row = s1[0].toarray().ravel()
    for word, value in expected.items():
        assert row[vocab.index(word)] == pytest.approx(value / norm, rel=1e-5)
    assert np.count_nonzero(row) == 3
    # S2 = S1 . (mean piece embedding of each word), normalised
    E = np.asarray(word_run.embedding_matrix())
    ids = tokens["token_id"].to_numpy()
    word_emb = {"the": E[ids[1]], "class_0": E[ids[2:5]].mean(axis=0), "films": E[ids[5:7]].mean(axis=0)}
    s2_expected = sum(expected[w] / norm * word_emb[w] for w in expected)
    s2_expected /= np.linalg.norm(s2_expected)
    s2 = word_run.representation(RepresentationKey("s2", "grad_l2", None, unit="word"))
    np.testing.assert_allclose(s2[0], s2_expected, rtol=1e-4, atol=1e-6)
    # stored under a slug of its own, next to the piece-level one
    assert (word_run.path / "representations" / f"s1-grad_l2-kall-word-w{WORDS_VERSION}.npz").exists()


def test_idf_weighting_silences_a_word_salient_everywhere(tiny_model_dir, tmp_path):
    path = tmp_path / "idf.csv"
    texts = ["the good film", "the bad plot", "the dog", "the boring acting"]
    pd.DataFrame({"text": texts, "label": [1, 0, 1, 0]}).to_csv(path, index=False)
    run = open_run(precompute(tiny_model_dir, path, PrecomputeSettings(max_length=16), progress=False).run_path)
    vocab = run.term_space("word").vocab
    plain = run.representation(RepresentationKey("s1", "grad_l2", None, unit="word")).toarray()
    idf = run.representation(RepresentationKey("s1", "grad_l2", None, unit="word", weighting="idf")).toarray()
    the = vocab.index("the")
    assert (plain[:, the] > 0).all()
    assert (idf[:, the] == 0).all()        # in every example: log((1 + 4) / (1 + 4)) = 0
    dog = vocab.index("dog")
    assert idf[2, dog] == pytest.approx(1.0)  # the only word left in its row
    # with k=1 the idf-weighted top word is never "the"
    top1 = run.representation(RepresentationKey("s1", "grad_l2", 1, unit="word", weighting="idf")).toarray()
    assert (top1[:, the] == 0).all() and (np.count_nonzero(top1, axis=1) == 1).all()


def test_word_index_is_stored_and_rebuilt_when_damaged(word_run):
    vocab = list(word_run.term_space("word").vocab)
    folder = word_run.path / "words"
    assert (folder / "meta.json").exists()
    (folder / "word_ids.npy").write_bytes(b"not a numpy file")
    reopened = open_run(word_run.path)
    assert reopened.term_space("word").vocab == vocab
    assert np.load(folder / "word_ids.npy", allow_pickle=False).dtype == np.int32


def test_unknown_unit_or_weighting_is_a_clear_error():
    with pytest.raises(ValueError, match="Known: word, word_sum, piece"):
        RepresentationKey("s1", "grad_l2", unit="letters").normalised()
    with pytest.raises(ValueError, match="Known: none, idf"):
        RepresentationKey("s1", "grad_l2", weighting="tfidf").normalised()


def test_clusters_page_shows_whole_words_not_pieces(word_run):
    """The dashboard's default terms are words: `class_0`, `films`, `cats`, never `##s`, `_` or `0`."""
    from streamlit.testing.v1 import AppTest

    from core import ui

    def cluster_terms(**query) -> str:
        at = AppTest.from_file(str(ui.REPO_ROOT / "app.py"), default_timeout=120)
        at.query_params.update({"run": word_run.run_id, "clusters": "2", **query})
        at.switch_page(ui.PAGE_FILES["clusters"])
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        frame = next(f.value for f in at.dataframe if "top_terms" in f.value.columns)
        return " , ".join(frame["top_terms"].astype(str))

    words = cluster_terms(term_rank="mean")
    shown = {t.strip() for t in words.split(",") if t.strip()}
    assert shown & {"class_0", "films", "cats"}, shown
    assert not any(t.startswith("##") or t in {"_", "0", "class"} for t in shown), shown
    pieces = cluster_terms(terms="piece", term_rank="mean")
    assert "class_0" not in pieces and "films" not in pieces


def test_a_deleted_or_damaged_representation_is_rebuilt_not_fatal(word_run):
    from core.representations import default_key

    folder = word_run.path / "representations"
    built = sorted(p.name for p in folder.iterdir())
    assert built  # the precompute builds the defaults up front
    victim = folder / built[0]
    victim.unlink()
    run = open_run(word_run.path)  # no CacheError
    default = run.representation(default_key())
    assert default.shape[0] == len(TEXTS)
    damaged = folder / f"{default_key().slug}.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    rebuilt = open_run(word_run.path, verify=True).representation(default_key())
    assert (rebuilt != default).nnz == 0


def test_a_new_word_index_version_builds_new_files_and_keeps_them(word_run, monkeypatch):
    """Matrices recorded in the manifest are never rewritten, so a rebuilt word index cannot make every open drop
    and rebuild them again."""
    import core.store

    key = RepresentationKey("s1", "grad_l2", None, unit="word_sum")
    folder = word_run.path / "representations"
    recorded = folder / f"{key.slug}-w{WORDS_VERSION}.npz"
    assert f"representations/{recorded.name}" in word_run.manifest["files"]  # built by the precompute
    monkeypatch.setattr(core.store, "WORDS_VERSION", WORDS_VERSION + 1)
    open_run(word_run.path).representation(key)
    newer = folder / f"{key.slug}-w{WORDS_VERSION + 1}.npz"
    stamp = newer.stat().st_mtime_ns
    for _ in range(2):
        open_run(word_run.path, verify=True).representation(key)
    assert newer.stat().st_mtime_ns == stamp and recorded.exists()

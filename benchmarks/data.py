"""The dataset side of the benchmark: configs, the prepared split files, and the Pop baseline."""

import os
import time

import numpy as np

from benchmarks.common import SPLITS


def write_atomic_file(frame, path):
    """A DataFrame with ``name:type`` columns as a RecBole atomic file, atomically."""
    from recbole_cela.fileio import atomic_open

    with atomic_open(path, "w") as f:
        frame.to_csv(f, sep="\t", index=False, quoting=3, lineterminator="\n")
    return path


def dataset_yaml(dataset):
    """The dataset config (``dataset_configs/<dataset>.yaml`` as the library finds it) as a dict
    ({} when there is none)."""
    from recbole_cela.utils import dataset_config_file, read_yaml

    path = dataset_config_file(dataset)
    return read_yaml(path) if path else {}


def text_token_args(dataset, cfg=None):
    """``--load_col={...}`` loading the dataset's text fields as item features as well."""
    return [f"--load_col={text_token_load_col(dataset, cfg)!r}"]


def text_token_load_col(dataset, cfg=None):
    """The dataset config's ``load_col`` with its text fields among the item features."""
    cfg = dataset_yaml(dataset) if cfg is None else cfg
    load_col = cfg.get("load_col")
    fields = list(cfg.get("text_fields") or [])
    if not load_col or not fields:
        raise ValueError(
            f"dataset_configs/{dataset}.yaml needs load_col and text_fields for a *-textTokens "
            f"variant (found load_col={load_col!r}, text_fields={fields!r})."
        )
    load_col = {kind: list(cols) for kind, cols in load_col.items()}
    item_field = cfg.get("ITEM_ID_FIELD", "item_id")
    item = load_col.setdefault("item", [item_field])
    item += [f for f in fields if f not in item]
    return load_col


def resolve_data(dataset, extra_args, prepare=False):
    """(folder of the benchmark files, settings the benchmark needs) from the runner's config.

    With ``prepare`` the raw data is converted first when it has not been (what any run does).
    """
    from recbole_cela.config import build_config, command_line

    with command_line(extra_args):
        _, config = build_config("LR", dataset)
    if prepare:
        from recbole_cela.data import prepare_from_config

        prepare_from_config(config)
    return config["data_path"], {
        "item_field": config["ITEM_ID_FIELD"],
        "label_field": config["LABEL_FIELD"],
        "buckets": list(config["popularity_buckets"] or [5, 20]),
    }


def split_path(data_dir, dataset, split):
    return os.path.join(data_dir, f"{dataset}.{split}.inter")


def read_split(data_dir, dataset, split, item_field="item_id", label_field="label"):
    """(item tokens, labels) of one benchmark file."""
    from recbole_cela.fileio import read_atomic_file

    frame = read_atomic_file(split_path(data_dir, dataset, split))
    return frame[item_field].to_numpy(), frame[label_field].astype(float).to_numpy()


def split_counts(data_dir, dataset, item_field="item_id", label_field="label"):
    """Samples and positives per split (None where the file does not exist yet)."""
    counts = {}
    for split in SPLITS:
        if not os.path.isfile(split_path(data_dir, dataset, split)):
            counts[split] = None
            continue
        _, labels = read_split(data_dir, dataset, split, item_field, label_field)
        counts[split] = {"samples": int(len(labels)), "positives": int((labels > 0).sum())}
    return counts


def logloss(labels, probs):
    """RecBole's LogLoss (mean binary cross-entropy, probabilities clipped to [1e-15, 1-1e-15])."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


def scale_scores(scores, low=0.01, high=0.99):
    """Min-max scale into [low, high] (all 0.5 when the scores are constant)."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = scores.min(), scores.max()
    if hi <= lo:
        return np.full_like(scores, 0.5)
    return low + (high - low) * (scores - lo) / (hi - lo)


def pop_result(data_dir, dataset, item_field="item_id", label_field="label", buckets=(5, 20)):
    """The popularity baseline as a runner-like result dict.

    Score of a sample = positive samples of its item in the train file (0 for an item not
    there). AUC is rank-based; LogLoss is on the scores min-max scaled into [0.01, 0.99].
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from recbole_cela.evaluation import auc_by_popularity

    items, labels = read_split(data_dir, dataset, "train", item_field, label_field)
    start = time.perf_counter()
    counts = pd.Series(items[labels > 0]).value_counts()
    count_time = time.perf_counter() - start

    def score(split):
        items, labels = read_split(data_dir, dataset, split, item_field, label_field)
        start = time.perf_counter()
        scores = pd.Series(items).map(counts).fillna(0).to_numpy(dtype=np.float64)
        metrics = {"auc": float(roc_auc_score(labels, scores)), "logloss": logloss(labels, scale_scores(scores))}
        return scores, labels, metrics, time.perf_counter() - start

    _, _, valid, _ = score("valid")
    scores, labels, test, eval_time = score("test")
    # the score *is* the item's popularity: bucket the samples by their own score
    by_bucket = auc_by_popularity(scores, labels, np.arange(len(scores)), scores.astype(np.int64), list(buckets))
    return {
        "model": "Pop",
        "dataset": dataset,
        "seed": None,
        "best_valid_score": valid["auc"],
        "valid_score_bigger": True,
        "best_valid_result": valid,
        "test_result": test,
        "test_auc_by_popularity": by_bucket,
        "fit_time_s": None,
        "count_time_s": count_time,
        "eval_time_s": eval_time,
        "eval_samples_per_s": len(labels) / eval_time if eval_time > 0 else None,
        "peak_rss_mb": None,
        "n_params": 0,
        "stages": None,
        "device": "cpu",
        "logloss_note": "scores min-max scaled into [0.01, 0.99]",
    }

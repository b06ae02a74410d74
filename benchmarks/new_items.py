"""Benchmark: items never seen in training, added afterwards from their text alone.

1. The dataset is prepared as usual (``recbole_cela.data``), then a set of items is held out
   *entirely*: every sample of theirs is removed from train / valid / test, and they are removed
   from every history and from the item file. This is the dataset ``<dataset>-newitems``; the
   removed items are unknown to it (no ID, no embedding).
2. CELA trains on it (the plugin's runner, so stages, caching and the result JSON are as usual).
3. The held-out items are added through :mod:`recbole_cela.new_items` (their text from the
   original item file, encoded once by the run's aligned encoder) and their original test samples
   (with their original histories) are scored, with no retraining.
4. Rows compared on exactly those samples: CELA with the added items; the run's own ID backbone
   (stage 2, the same model without text), which can only use the default ID embedding of an
   unknown item (the padding id); and popularity, which gives every unseen item the same score
   (0 training clicks), so its AUC is 0.5 by construction.

    python -m benchmarks.new_items --dataset=ml-100k --n_items=150 --seed=2020 \\
        [--out=docs/benchmarks] [--key=value ...  (any RecBole / CELA setting, e.g. --epochs=5)]

writes ``<out>/<dataset>-new-items.json`` and ``.md`` (``--report_only``: the markdown again from
that JSON; a ``note`` there is printed under the command).
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recbole_cela.config import build_config
from recbole_cela.data import prepare_from_config
from benchmarks.common import config_overrides
from benchmarks.data import write_atomic_file
from recbole_cela.fileio import atomic_write, atomic_write_json, read_atomic_file, read_json
from recbole_cela.new_items import NewItemScorer, read_items_file
from recbole_cela.quick_start import run_recbole_cela
from recbole_cela.utils import dataset_config_file


def _read(path):
    return read_atomic_file(path, keep_types=True)


def choose_items(test, item_col, n_items, seed):
    """``n_items`` distinct items drawn from the targets of the test samples (seeded)."""
    items = test[item_col].drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    return set(rng.choice(items, size=min(n_items, len(items)), replace=False).tolist())


def hold_out(source_dir, dataset, target_dir, name, held):
    """Write ``name``'s atomic files: ``dataset``'s without any trace of the items ``held``.

    Returns the original test samples of the held items (with their original histories)."""
    os.makedirs(target_dir, exist_ok=True)
    removed = None
    for split in ("train", "valid", "test"):
        frame = _read(os.path.join(source_dir, f"{dataset}.{split}.inter"))
        item_col = next(c for c in frame.columns if c.startswith("item_id:"))
        hist_col = next((c for c in frame.columns if c.startswith("item_id_list:")), None)
        mask = frame[item_col].isin(held)
        if split == "test":
            removed = frame[mask].copy()
        kept = frame[~mask].copy()
        if hist_col:
            kept[hist_col] = [" ".join(t for t in h.split() if t not in held) for h in kept[hist_col]]
        write_atomic_file(kept, os.path.join(target_dir, f"{name}.{split}.inter"))
    items = _read(os.path.join(source_dir, f"{dataset}.item"))
    item_col = next(c for c in items.columns if c.startswith("item_id:"))
    write_atomic_file(items[~items[item_col].isin(held)], os.path.join(target_dir, f"{name}.item"))
    shutil.copyfile(os.path.join(source_dir, f"{dataset}.user"), os.path.join(target_dir, f"{name}.user"))
    return removed


def _auc(labels, scores):
    labels = np.asarray(labels, dtype=float)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def backbone_scores(scorer, backbone_artifact, pairs):
    """The run's stage-2 ID backbone on the pairs, with every added item as the padding id."""
    from recbole.data.interaction import Interaction

    from recbole_cela.model import get_model

    config = scorer.config
    backbone = get_model(config["backbone"])(config, scorer.dataset)
    state = torch.load(os.path.join(backbone_artifact, "model.pth"), map_location="cpu", weights_only=True)
    backbone.load_state_dict(state["state_dict"])
    backbone.eval()
    ids = scorer.model.backbone.item_text
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), 4096):
            chunk = pairs[start : start + 4096]
            inter = scorer.interaction([p[0] for p in chunk], [p[1] for p in chunk], [p[2] for p in chunk])
            view = Interaction(dict(inter.interaction))
            for field in (scorer.item_field, scorer.history_field):
                if field in view.interaction:
                    view.interaction[field] = ids.id_items(view.interaction[field])
            out.append(backbone.predict(view).float())
    return torch.cat(out).numpy()


def render(report):
    r = report
    rows = [(name, row["auc"], row.get("note", "")) for name, row in r["rows"].items()]
    table = "\n".join(f"| {n} | {a:.4f} | {note} |" if a is not None else f"| {n} | n/a | {note} |"
                      for n, a, note in rows)
    s = r["settings"]
    note = "\n" + r["note"] if r.get("note") else ""
    return f"""# {r['dataset']}: new items from text alone

Command: `{r['command']}`{note}

{r['n_items']} items were held out of `{r['dataset']}` entirely (seed {s['seed']}): all their samples were
removed from train, valid and test, and they were removed from every history and from the item
file, so the model never saw their IDs. After training, they were added through
`recbole_cela.new_items` (text from the original item file, encoded once by the run's aligned
encoder; unknown ID features take the padding id) and their **{r['n_samples']} original test
samples** ({r['n_positive']} clicks) were scored with no retraining.

| Row | AUC on the held-out items' test samples | |
|---|---|---|
{table}

For reference, the same CELA run on the test samples of the items it was trained on:
AUC {r['cela_warm_test_auc']:.4f} ({r['n_warm_test']} samples).

Settings: {json.dumps(s['overrides'])} (everything else: props/CELA.yaml and
dataset_configs/{r['source_dataset']}.yaml). Wall time {r['wall_time_s']:.0f} s on {r['machine']}
(2 cores shared with other jobs). One seed: with {r['n_samples']} samples the AUC's standard
error is about {r['auc_se']:.3f}.

Reading: the backbone gives every new item the same ID representation, so it can only rank the
samples by user and history; popularity cannot rank them at all. Whatever CELA gains over the
backbone here comes from the items' text alone.
"""


def run_benchmark(dataset, n_items, seed, out, overrides, base_dir, command, config_files=None,
                  saved_dir="saved"):
    start = time.time()
    files = config_files or [f for f in [dataset_config_file(dataset)] if f]
    _, config = build_config("CELA", dataset, files, {"data_path": base_dir, **overrides})
    overrides = {k: config[k] for k in overrides}  # as RecBole converted them from the command line
    prepare_from_config(config)
    source_dir = config["data_path"]
    test = _read(os.path.join(source_dir, f"{dataset}.test.inter"))
    item_col = next(c for c in test.columns if c.startswith("item_id:"))
    held = choose_items(test, item_col, n_items, seed)
    name = f"{dataset}-newitems"
    removed = hold_out(source_dir, dataset, os.path.join(base_dir, name), name, held)

    run_config = {"data_path": base_dir, "source_format": None, "seed": seed,
                  "checkpoint_dir": os.path.join(saved_dir, name), **overrides}
    shutil.rmtree(run_config["checkpoint_dir"], ignore_errors=True)  # exactly this run's checkpoint
    result = run_recbole_cela("CELA", name, files, run_config)
    checkpoint_dir = result["config"]["checkpoint_dir"]
    checkpoint = next(os.path.join(checkpoint_dir, f) for f in sorted(os.listdir(checkpoint_dir)) if f.endswith(".pth"))

    scorer = NewItemScorer.load(checkpoint)
    texts = read_items_file(os.path.join(source_dir, f"{dataset}.item"), scorer.config)
    scorer.add_items({item: texts[item] for item in sorted(held)})
    cols = {c.split(":")[0]: c for c in removed.columns}
    pairs = [(u, h.split(), i) for u, h, i in zip(removed[cols["user_id"]], removed[cols["item_id_list"]],
                                                  removed[cols["item_id"]])]
    labels = removed[cols["label"]].astype(float).to_numpy()
    cela = scorer.score_pairs(pairs)
    backbone = backbone_scores(scorer, result["stages"]["backbone"]["artifact"], pairs)
    n, pos = len(labels), int(labels.sum())
    report = {
        "dataset": dataset, "source_dataset": dataset, "command": command, "n_items": len(held),
        "held_out_items": sorted(held), "n_samples": n, "n_positive": pos,
        "rows": {
            "CELA + new items (text only)": {"auc": _auc(labels, cela)},
            f"{scorer.config['backbone']} backbone (default ID embedding)": {"auc": _auc(labels, backbone)},
            "Pop (0 training clicks for every new item)": {"auc": _auc(labels, np.zeros(n)),
                                                           "note": "ties: 0.5 by construction"},
        },
        "cela_warm_test_auc": result["test_auc_all_samples"],
        "n_warm_test": int(sum(b["n"] for b in result["test_auc_by_popularity"].values())),
        "auc_se": float(np.sqrt(0.25 / max(1, min(pos, n - pos)))),  # rough, for one seed
        "settings": {"seed": seed, "n_items": n_items, "overrides": overrides},
        "stages": result["stages"], "wall_time_s": time.time() - start,
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{dataset}-new-items.json"), report)
    atomic_write(os.path.join(out, f"{dataset}-new-items.md"), render(report))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--n_items", type=int, default=150, help="items held out (drawn from test targets)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--base_dir", default="dataset", help="datasets folder (the derived one goes here too)")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write the markdown again from <out>/<dataset>-new-items.json")
    args, rest = parser.parse_known_args(argv)
    if args.report_only:
        report = read_json(os.path.join(args.out, f"{args.dataset}-new-items.json"))
        atomic_write(os.path.join(args.out, f"{args.dataset}-new-items.md"), render(report))
        return
    overrides = config_overrides(rest)
    command = "python -m benchmarks.new_items " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv: the overrides go through config_dict
    report = run_benchmark(args.dataset, args.n_items, args.seed, args.out, overrides, args.base_dir, command)
    print(json.dumps(report["rows"], indent=2))


if __name__ == "__main__":
    main()

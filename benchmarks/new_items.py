"""Benchmark: items never seen in training, added afterwards from their text and item features.

1. The dataset is prepared as usual (``recbole_cela.data``), then a set of items is held out
   *entirely*: every sample of theirs is removed from train / valid / test, and they are removed
   from every history and from the item file. This is the dataset ``<dataset>-newitems-s<seed>``;
   the removed items are unknown to it (no ID, no embedding). ``--share=0.05`` holds out 5% of
   the dataset's items (drawn from all of them); ``--n_items=N`` N items drawn from the test targets.
2. CELA trains on it (the plugin's runner, so stages, caching and the result JSON are as usual),
   and so does the ID backbone with the item text fields as token features (``<backbone>-textTokens``).
3. The held-out items are added through :mod:`recbole_cela.new_items` (their text and item
   features from the original item file; the item id is the padding id) and their original test
   samples (with their original histories) are scored, with no retraining.
4. Rows compared on exactly those samples: CELA from text + item features; CELA from text alone
   (features padding); the run's own ID backbone (stage 2) with the items' features, and with
   nothing (padding everywhere); ``<backbone>-textTokens`` with the features and the text tokens;
   popularity, which gives every unseen item the same score (0 training clicks), so its AUC is 0.5
   by construction. With ``--seeds=N`` each seed draws its own hold-out and trains its own runs.

    python -m benchmarks.new_items --dataset=amazon-beauty --share=0.05 --seeds=3 \\
        [--out=docs/benchmarks] [--key=value ...  (any RecBole / CELA setting, e.g. --epochs=5)]

writes ``<out>/<dataset>-new-items.json`` and ``.md`` (``--report_only``: the markdown again from
that JSON; a ``note`` there is printed under the command).
"""

import argparse
import copy
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

from recbole_cela.config import NON_SEMANTIC_KEYS, build_config
from recbole_cela.data import prepare_from_config
from benchmarks.common import config_overrides
from benchmarks.data import write_atomic_file
from recbole_cela.checkpoints import load_checkpoint
from recbole_cela.evaluation import overall_auc
from recbole_cela.fileio import atomic_write, atomic_write_json, read_atomic_file, read_json
from recbole_cela.model import build_model, get_model
from recbole_cela.new_items import NewItemScorer, read_items_file
from recbole_cela.quick_start import run_recbole_cela
from recbole_cela.utils import dataset_config_file

from benchmarks.common import mean_std
from benchmarks.data import text_token_load_col


def _read(path):
    return read_atomic_file(path, keep_types=True)


def choose_items(test, item_col, n_items, seed):
    """``n_items`` distinct items drawn from the targets of the test samples (seeded)."""
    items = test[item_col].drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    return set(rng.choice(items, size=min(n_items, len(items)), replace=False).tolist())


def choose_share(items, share, seed):
    """``share`` of ``items`` (all the dataset's items), drawn with ``seed``."""
    items = np.asarray(items)
    rng = np.random.default_rng(seed)
    return set(rng.choice(items, size=max(1, int(round(share * len(items)))), replace=False).tolist())


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
    if os.path.isfile(os.path.join(source_dir, f"{dataset}.user")):  # amazon data has none
        shutil.copyfile(os.path.join(source_dir, f"{dataset}.user"), os.path.join(target_dir, f"{name}.user"))
    return removed


def render_single(report):
    """The report of a one-seed JSON of the first version (text only, no item features)."""
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


def id_scorer(model_name, config, dataset, state):
    """A scorer of new items for a trained ID model (its state dict): features and padding id."""
    model = build_model(get_model(model_name), config, dataset)
    model.load_state_dict(state)
    model.eval()
    return NewItemScorer(model, config, dataset)


def item_features(scorer, items, held):
    """``{item: {field: value}}`` of the held items: the scorer's item features, from the
    original item file (``items``: its rows by item id, fields without their types)."""
    fields = [f for f in scorer.feature_fields if f in items.columns]
    return {i: {f: items.at[i, f] for f in fields} for i in sorted(held)}


ROWS = ("pop", "id_features", "id_text_tokens", "cela", "cela_text", "id_bare")


def row_names(backbone):
    return {
        "pop": "Pop (0 training clicks for every new item)",
        "id_features": f"{backbone}: the item's features, padding item id",
        "id_text_tokens": f"{backbone}-textTokens: the item's features and text tokens, padding item id",
        "cela": "CELA: text + the item's features",
        "cela_text": "CELA: text alone (item features padding)",
        "id_bare": f"{backbone}: padding item id and padding features",
    }


def run_seed(dataset, seed, held, source_dir, files, overrides, base_dir, saved_dir):
    """Hold ``held`` out, train CELA and the text-token ID model, score the held items' test samples."""
    start = time.time()
    name = f"{dataset}-newitems-s{seed}"
    removed = hold_out(source_dir, dataset, os.path.join(base_dir, name), name, held)
    run_config = {"data_path": base_dir, "source_format": None, "seed": seed,
                  "checkpoint_dir": os.path.join(saved_dir, name), **overrides}
    shutil.rmtree(run_config["checkpoint_dir"], ignore_errors=True)  # exactly this run's checkpoint
    result = run_recbole_cela("CELA", name, files, run_config)
    cela = NewItemScorer.load(result["checkpoint"])
    # The same run for the text-alone row, loaded once: a model of its own (added items go into
    # its tables), the data and encoder shared (read only).
    cela_text = NewItemScorer(copy.deepcopy(cela.model), cela.config, cela.dataset, cela.encoder, cela.tokenizer)
    config, backbone = cela.config, cela.config["backbone"]

    # The ID models are built on the dataset before any item is added to it.
    stage = (result["stages"] or {}).get("backbone")
    if stage:  # CELA's stage 2: exactly a run of --model=<backbone> with the same data, seed and settings
        state = torch.load(os.path.join(stage["artifact"], "model.pth"), map_location="cpu", weights_only=True)
        state = state["state_dict"]
    else:  # no alignment stage: train the backbone
        id_result = run_recbole_cela(backbone, name, files, {**run_config, "checkpoint_dir": run_config["checkpoint_dir"] + "-id"})
        state = load_checkpoint(id_result["checkpoint"])["state_dict"]
    scorers = {"id_features": id_scorer(backbone, config, cela.dataset, state),
               "id_bare": id_scorer(backbone, config, cela.dataset, state)}

    # The text fields as the run's own configuration (its config files and overrides) names them.
    tokens_cols = text_token_load_col(dataset, {k: config[k] for k in ("load_col", "text_fields", "ITEM_ID_FIELD")})
    tokens_config = {**run_config, "load_col": tokens_cols,
                     "checkpoint_dir": run_config["checkpoint_dir"] + "-textTokens"}
    shutil.rmtree(tokens_config["checkpoint_dir"], ignore_errors=True)
    tokens_result = run_recbole_cela(backbone, name, files, tokens_config)
    _, tokens_cfg = build_config(backbone, name, files, {**tokens_config, "state": "ERROR", "show_progress": False})
    from recbole.data import create_dataset

    tokens_data = create_dataset(tokens_cfg).build()[0]
    scorers["id_text_tokens"] = id_scorer(backbone, tokens_cfg, tokens_data,
                                          load_checkpoint(tokens_result["checkpoint"])["state_dict"])

    scorers["cela"], scorers["cela_text"] = cela, cela_text
    item_path = os.path.join(source_dir, f"{dataset}.item")
    texts = read_items_file(item_path, config)
    items = read_atomic_file(item_path).set_index(config["ITEM_ID_FIELD"])
    # An item without text is read as the run's table reads it: text_fallback.
    held_texts = {i: texts[i] or config["text_fallback"] or "unknown item" for i in sorted(held)}
    scorers["cela"].add_items(held_texts, item_features(scorers["cela"], items, held))
    scorers["cela_text"].add_items(held_texts)
    for key in ("id_features", "id_text_tokens"):
        scorers[key].add_items({i: None for i in sorted(held)}, item_features(scorers[key], items, held))
    scorers["id_bare"].add_items({i: None for i in sorted(held)})

    cols = {c.split(":")[0]: c for c in removed.columns}
    pairs = [(u, h.split(), i) for u, h, i in zip(removed[cols["user_id"]], removed[cols["item_id_list"]],
                                                  removed[cols["item_id"]])]
    labels = removed[cols["label"]].astype(float).to_numpy()
    auc = {"pop": overall_auc(np.zeros(len(labels)), labels)}
    auc.update({key: overall_auc(scorer.score_pairs(pairs), labels) for key, scorer in scorers.items()})
    return {
        "seed": seed, "dataset": name, "n_items": len(held), "held_out_items": sorted(held),
        "n_samples": len(labels), "n_positive": int(labels.sum()), "auc": auc,
        "unknown_feature_tokens": {key: dict(scorer.unknown_tokens) for key, scorer in scorers.items()},
        "feature_fields": {key: list(scorer.feature_fields) for key, scorer in scorers.items()},
        "warm_test_auc": {"cela": result["test_auc_all_samples"],
                          "id_text_tokens": tokens_result["test_auc_all_samples"]},
        "n_warm_test": int(sum(b["n"] for b in result["test_auc_by_popularity"].values())),
        "backbone": backbone, "stages": result["stages"], "wall_time_s": time.time() - start,
    }


def gain_line(rows, names, row, other):
    """``row`` against ``other``: the mean gain, per seed, and whether it is beyond the spread."""
    a, b = rows[row], rows[other]
    per_seed = [x - y for x, y in zip(a["by_seed"], b["by_seed"]) if x is not None and y is not None]
    if not per_seed:
        return f"{names[row]} vs {names[other]}: no seed has both."
    gain = float(np.mean(per_seed))
    spreads = [v["std"] for v in (a, b) if v["std"] is not None]
    text = (f"{names[row]} vs {names[other]}: {gain:+.4f} AUC "
            f"(per seed {', '.join(f'{g:+.4f}' for g in per_seed)})")
    if len(spreads) < 2:
        return text + "; one seed: the spread is unknown, so no claim either way."
    spread = max(spreads)
    verdict = "beyond" if abs(gain) > spread else "within"
    return text + f", {verdict} the spread ({spread:.4f})."


def render(report):
    if "per_seed" not in report:
        return render_single(report)
    r, s = report, report["settings"]
    names = row_names(r["backbone"])
    note = "\n" + r["note"] if r.get("note") else ""
    rows = []
    for key in ROWS:
        row = r["rows"][key]
        per_seed = ", ".join("n/a" if v is None else f"{v:.4f}" for v in row["by_seed"])
        spread = "" if row["std"] is None else f" ± {row['std']:.4f}"
        mean = "n/a" if row["mean"] is None else f"{row['mean']:.4f}{spread}"
        rows.append(f"| {names[key]} | {mean} | {per_seed} |")
    seeds = r["per_seed"]
    held = f"{s['share']:.0%} of the dataset's items" if s.get("share") else \
        f"{s['n_items']} items drawn from the test targets"
    samples = ", ".join(f"{p['n_items']} items with {p['n_samples']} test samples ({p['n_positive']} clicks)"
                        for p in seeds)
    unknown = "; ".join(f"{names[k]}: {v}" for k, v in seeds[0]["unknown_feature_tokens"].items() if v) or "none"
    fields = {k: v for k, v in seeds[0]["feature_fields"].items() if k not in ("cela_text", "id_bare")}
    warm = ", ".join(f"{p['warm_test_auc']['cela']:.4f}" for p in seeds)
    gains = "\n".join(f"- {gain_line(r['rows'], names, 'cela', other)}"
                      for other in ("id_features", "id_text_tokens", "cela_text"))
    return f"""# {r['dataset']}: brand-new products (held out of training, added afterwards)

Command: `{r['command']}`{note}

Per seed ({', '.join(str(p['seed']) for p in seeds)}), {held} were held out of `{r['dataset']}`
entirely: all their samples were removed from train, valid and test, and they were removed from
every history and from the item file, so no model saw their IDs. After training, they were added
through `recbole_cela.new_items` (text and item features from the original item file, item id the
padding id; feature tokens a run never saw are padding) and their original test samples were
scored with no retraining. Per seed: {samples}.

| Row | AUC on the held-out items' test samples, mean ± std over seeds | per seed |
|---|---|---|
{chr(10).join(rows)}

What CELA gains on products nobody has clicked yet (paired: each seed's rows score the same samples):

{gains}

"Spread" = the larger of the two rows' seed-to-seed standard deviations; a gain inside it is not
claimed as a win.

Item features each row's model reads: {json.dumps(fields)} (CELA from text alone and the bare {r['backbone']}: none).
Feature tokens of the held-out items unknown to the run (padding), first seed: {unknown}.
For reference, CELA's test AUC on all test samples of the known items: {warm} ({seeds[0]['n_warm_test']} samples).

Settings: {json.dumps(s['overrides'])} (everything else: props/CELA.yaml and
dataset_configs/{r['dataset']}.yaml). Wall time {r['wall_time_s']:.0f} s on {r['machine']}.

Reading: every model gives the new items the same (padding) item id; {r['backbone']} ranks them by
their features, user and history; the text-token model adds the words of their text as tokens it
learned on the known items; CELA adds the text as its aligned encoder reads it. Pop cannot rank
them at all (every new item has 0 training clicks).
"""


def run_benchmark(dataset, seeds, out, overrides, base_dir, command, n_items=None, share=None,
                  config_files=None, saved_dir="saved", resume=False, runs_dir=None):
    """Every seed's hold-out, trained and scored, then the report. Each finished seed is written to
    ``<runs_dir>/<dataset>-new-items/seed-<seed>.json``; ``resume`` reuses those of the same settings."""
    start = time.time()
    files = config_files or [f for f in [dataset_config_file(dataset)] if f]
    _, config = build_config("CELA", dataset, files, {"data_path": base_dir, **overrides})
    overrides = {k: config[k] for k in overrides}  # as RecBole converted them from the command line
    prepare_from_config(config)
    source_dir = config["data_path"]
    test = _read(os.path.join(source_dir, f"{dataset}.test.inter"))
    item_col = next(c for c in test.columns if c.startswith("item_id:"))
    all_items = _read(os.path.join(source_dir, f"{dataset}.item"))[item_col].to_numpy()
    per_seed = []
    seed_dir = os.path.join(runs_dir or os.path.join(out, "runs"), f"{dataset}-new-items")
    for seed in seeds:
        held = choose_share(all_items, share, seed) if share else choose_items(test, item_col, n_items, seed)
        # A finished hold-out is reused only when it held out the same items under the same settings
        # (paths, logging and speed settings aside: NON_SEMANTIC_KEYS).
        what = {"held_out_items": sorted(held), "share": share, "n_items": n_items,
                "overrides": {k: v for k, v in overrides.items() if k not in NON_SEMANTIC_KEYS}}
        path = os.path.join(seed_dir, f"seed-{seed}.json")
        done = read_json(path) if resume and os.path.exists(path) else None
        if done is not None and done.get("settings") == what:
            print(f"seed {seed}: reusing {path}")
            per_seed.append(done["result"])
            continue
        per_seed.append(run_seed(dataset, seed, held, source_dir, files, overrides, base_dir, saved_dir))
        os.makedirs(seed_dir, exist_ok=True)
        atomic_write_json(path, {"settings": what, "result": per_seed[-1]})
    rows = {}
    for key in ROWS:
        values = [p["auc"][key] for p in per_seed]
        mean, std = mean_std(values)
        rows[key] = {"mean": mean, "std": std, "by_seed": values}
    report = {
        "dataset": dataset, "command": command, "backbone": per_seed[0]["backbone"],
        "row_names": row_names(per_seed[0]["backbone"]), "rows": rows, "per_seed": per_seed,
        "settings": {"seeds": list(seeds), "n_items": n_items, "share": share, "overrides": overrides},
        "wall_time_s": time.time() - start,
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{dataset}-new-items.json"), report)
    atomic_write(os.path.join(out, f"{dataset}-new-items.md"), render(report))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--n_items", type=int, default=150, help="items held out, drawn from the test targets")
    parser.add_argument("--share", type=float, default=None,
                        help="share of all the dataset's items held out instead of --n_items (e.g. 0.05)")
    parser.add_argument("--seed", type=int, default=2020, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="hold-outs (seed, seed + 1, ...), each trained anew")
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--base_dir", default="dataset", help="datasets folder (the derived ones go here too)")
    parser.add_argument("--saved_dir", default="saved", help="checkpoints folder of the runs")
    parser.add_argument("--runs_dir", default=None, help="folder of the per-seed results (default <out>/runs)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished seeds in <runs_dir>/<dataset>-new-items/ with the same settings")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write the markdown again from <out>/<dataset>-new-items.json")
    args, rest = parser.parse_known_args(argv)
    if args.report_only:
        report = read_json(os.path.join(args.out, f"{args.dataset}-new-items.json"))
        atomic_write(os.path.join(args.out, f"{args.dataset}-new-items.md"), render(report))
        return
    if args.share is not None and not 0 < args.share < 1:
        sys.exit(f"error: --share must be in (0, 1), not {args.share}")
    overrides = config_overrides(rest)
    command = "python -m benchmarks.new_items " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv: the overrides go through config_dict
    seeds = [args.seed + i for i in range(args.seeds)]
    report = run_benchmark(args.dataset, seeds, args.out, overrides, args.base_dir, command, n_items=args.n_items,
                           share=args.share, saved_dir=args.saved_dir, resume=args.resume,
                           runs_dir=args.runs_dir)
    print(json.dumps({report["row_names"][k]: v for k, v in report["rows"].items()}, indent=2))


if __name__ == "__main__":
    main()

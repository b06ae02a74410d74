"""Scaling of CELA's stages: wall time for 1 and N processes, and for 1x / 2x / 4x data.

Two data series, both built from the prepared dataset (optionally a seeded share of its items,
``--base_items``, to keep the runs short):

* ``items+interactions xk``: every item and every user is replicated k times (replica r of a
  user interacts with replica r of the items, histories included), so items, users and samples
  all grow k-fold;
* ``interactions xk``: only the users are replicated, the items stay the same, so samples grow
  k-fold and items do not.

The text stages (DAP, alignment, table) work per item, the ID stages (backbone, fusion) per
sample: the first series should grow both, the second only the ID stages. Each configuration is a
fresh CELA run (no stage cache) through the plugin's runner; processes are RecBole's (``run`` with
``nproc``).

    python -m benchmarks.scaling --dataset=ml-100k --factors=1,2,4 --nprocs=1,2 \\
        --base_items=0.25 [--key=value ... (CELA / RecBole settings)]

writes ``docs/benchmarks/<dataset>-scaling.{json,md,png}`` (``--report_only``: the markdown and
the figure again from that JSON).
"""

import argparse
import json
import os
import shutil
import socket
import sys
import time

import numpy as np
import pandas as pd

from benchmarks.common import STAGES, config_overrides
from benchmarks.data import write_atomic_file
from recbole_cela.config import build_config
from recbole_cela.data import prepare_from_config
from recbole_cela.fileio import atomic_open, atomic_write, atomic_write_json, read_json
from recbole_cela.quick_start import run
from recbole_cela.utils import dataset_config_file


def _read(path):
    from recbole_cela.fileio import read_atomic_file

    return read_atomic_file(path, keep_types=True)


def _col(frame, name):
    return next(c for c in frame.columns if c.split(":")[0] == name)


def base_tables(source_dir, dataset, items_share, seed):
    """The dataset's tables, restricted to a seeded share of its items (histories filtered)."""
    tables = {s: _read(os.path.join(source_dir, f"{dataset}.{s}.inter")) for s in ("train", "valid", "test")}
    item, user = _read(os.path.join(source_dir, f"{dataset}.item")), _read(os.path.join(source_dir, f"{dataset}.user"))
    if items_share < 1:
        ids = item[_col(item, "item_id")].to_numpy()
        keep = set(np.random.default_rng(seed).choice(ids, size=int(len(ids) * items_share), replace=False))
        item = item[item[_col(item, "item_id")].isin(keep)]
        for split, frame in tables.items():
            frame = frame[frame[_col(frame, "item_id")].isin(keep)].copy()
            hist = _col(frame, "item_id_list")
            frame[hist] = [" ".join(t for t in h.split() if t in keep) for h in frame[hist]]
            tables[split] = frame
    return tables, item, user


def replicate(tables, item, user, k, items_too):
    """k replicas of the users (and of the items when ``items_too``); replica 0 is the original."""
    def tag(values, r):
        return values if r == 0 else values + f"~{r}"

    out = {}
    for split, frame in tables.items():
        parts = []
        for r in range(k):
            f = frame.copy()
            f[_col(f, "user_id")] = tag(f[_col(f, "user_id")], r)
            if items_too and r:
                f[_col(f, "item_id")] = tag(f[_col(f, "item_id")], r)
                hist = _col(f, "item_id_list")
                f[hist] = [" ".join(t + f"~{r}" for t in h.split()) for h in f[hist]]
            parts.append(f)
        out[split] = pd.concat(parts, ignore_index=True)
    users = []
    for r in range(k):
        u = user.copy()
        u[_col(u, "user_id")] = tag(u[_col(u, "user_id")], r)
        users.append(u)
    items = [item]
    if items_too:
        for r in range(1, k):
            i = item.copy()
            i[_col(i, "item_id")] = tag(i[_col(i, "item_id")], r)
            items.append(i)
    return out, pd.concat(items, ignore_index=True), pd.concat(users, ignore_index=True)


def write_dataset(base_dir, name, tables, item, user):
    folder = os.path.join(base_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for split, frame in tables.items():
        write_atomic_file(frame, os.path.join(folder, f"{name}.{split}.inter"))
    write_atomic_file(item, os.path.join(folder, f"{name}.item"))
    write_atomic_file(user, os.path.join(folder, f"{name}.user"))
    return {"items": len(item), "samples": int(sum(len(f) for f in tables.values())), "users": len(user)}


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def time_run(name, files, base_dir, saved_dir, nproc, overrides):
    checkpoint_dir = os.path.join(saved_dir, f"{name}-p{nproc}")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # no stage cache: every stage runs
    config = {"data_path": base_dir, "source_format": None, "checkpoint_dir": checkpoint_dir,
              "results_dir": os.path.join(checkpoint_dir, "results"), **overrides}
    load_before = os.getloadavg()[0]
    start = time.time()
    result = run("CELA", name, files, config, nproc=nproc, port=free_port())
    wall = time.time() - start
    return {
        "nproc": nproc,
        "stages_s": {s: result["stages"][s]["time_s"] for s in STAGES if s in result["stages"]},
        "wall_s": round(wall, 1),
        "test_auc": result["test_auc_all_samples"],
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, series in zip(axes, ["items+interactions", "interactions"]):
        last = {r["factor"]: r for r in report["runs"] if r["series"] in (series, "base") and r["nproc"] == 1}
        runs = [last[k] for k in sorted(last)]  # a repeated configuration: its last run
        for stage in STAGES:
            ax.plot([r["factor"] for r in runs], [r["stages_s"].get(stage, 0) for r in runs], marker="o", label=stage)
        ax.set_title(f"{series} x k (1 process)")
        ax.set_xlabel("k")
        ax.set_xticks([r["factor"] for r in runs])
    axes[0].set_ylabel("stage wall time (s)")
    axes[0].legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _cores(report):
    """The core count of the machine the report was measured on (its ``machine`` line)."""
    first = str(report.get("machine", "")).split(" ", 1)[0]
    return int(first) if first.isdigit() else os.cpu_count()


def render(report):
    header = "| Series | k | processes | items | samples | " + " | ".join(STAGES) + " | total (s) | test AUC |"
    lines = [header, "|" + "---|" * (8 + len(STAGES) - 1)]
    for r in report["runs"]:
        times = " | ".join(f"{r['stages_s'].get(s, float('nan')):.1f}" for s in STAGES)
        lines.append(f"| {r['series']} | {r['factor']} | {r['nproc']} | {r['data']['items']} | {r['data']['samples']} | "
                     f"{times} | {r['wall_s']:.0f} | {r['test_auc'] or float('nan'):.4f} |")
    growth = []
    for series in ("items+interactions", "interactions"):
        runs = {r["factor"]: r for r in report["runs"] if r["series"] in (series, "base") and r["nproc"] == 1}
        if 1 in runs and len(runs) > 1:
            top = max(runs)
            ratios = ", ".join(f"{s} x{runs[top]['stages_s'][s] / max(runs[1]['stages_s'][s], 1e-9):.1f}" for s in STAGES
                               if s in runs[1]["stages_s"])
            growth.append(f"* {series} x{top}: {ratios}")
    return f"""# {report['dataset']}: scaling of CELA's stages

Command: `{report['command']}`

Base data: {report['base']['items']} items, {report['base']['samples']} samples ({report['settings']['base_items']:.0%}
of `{report['dataset']}`'s items, seed {report['settings']['seed']}). Settings: {json.dumps(report['settings']['overrides'])}.
Machine: {report['machine']}. Stage wall times in seconds, one fresh run (no cache) each; a
configuration listed twice was run again later (under less load), and the growth figures use
its last run.

{chr(10).join(lines)}

Growth from 1x to the largest factor (1 process):

{chr(10).join(growth)}

Text stages (dap, align, table) work per item, ID stages (backbone, fusion) per sample: compare
the two lines above stage by stage (the first series multiplies both, the second only samples).

![stage times](./{report['dataset']}-scaling.png)

Caveats: this machine has {_cores(report)} cores and other jobs ran beside these runs (1-minute load
average before/after each run is in the JSON), so single runs carry a timing noise of tens of
percent. With 2 processes on 2 shared cores (gloo, one thread each) the processes compete for the
same cores, so the 2-process row measures the distributed path's overhead here, not the speed-up
it gives with one GPU (or one free core set) per process.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--factors", default="1,2,4")
    parser.add_argument("--nprocs", default="1,2", help="process counts timed on the base data")
    parser.add_argument("--base_items", type=float, default=0.25, help="share of the items in the base data")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--base_dir", default="dataset")
    parser.add_argument("--saved_dir", default="saved/scaling")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to the existing report (e.g. to repeat a run measured under load)")
    parser.add_argument("--config_files", default=None, help="space-separated config files (default: the dataset's)")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write the markdown and the figure again from <out>/<dataset>-scaling.json")
    args, rest = parser.parse_known_args(argv)
    if args.report_only:
        write_outputs(read_json(os.path.join(args.out, f"{args.dataset}-scaling.json")), args.out)
        return
    overrides = config_overrides(rest)
    command = "python -m benchmarks.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv; settings go through config_dict

    files = args.config_files.split() if args.config_files else [f for f in [dataset_config_file(args.dataset)] if f]
    _, config = build_config("CELA", args.dataset, files, {"data_path": args.base_dir, **overrides})
    overrides = {k: config[k] for k in overrides}  # as RecBole converted them from the command line
    prepare_from_config(config)
    tables, item, user = base_tables(config["data_path"], args.dataset, args.base_items, args.seed)
    overrides.setdefault("seed", args.seed)
    overrides.setdefault("dap", True)  # every stage is measured, stage 1 included (props default: off)
    # Filtered histories may all be shorter than the configured length: DIN needs the real one.
    longest = max(len(h.split()) for f in tables.values() for h in f[_col(f, "item_id_list")])
    overrides["MAX_ITEM_LIST_LENGTH"] = min(config["MAX_ITEM_LIST_LENGTH"], max(longest, 1))
    factors = [int(f) for f in args.factors.split(",")]
    nprocs = [int(n) for n in args.nprocs.split(",")]
    report = {"dataset": args.dataset, "command": command, "runs": [],
              "settings": {"base_items": args.base_items, "seed": args.seed, "overrides": overrides},
              "machine": f"{os.cpu_count()} CPU cores"}
    path = os.path.join(args.out, f"{args.dataset}-scaling.json")
    if args.append and os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        report["runs"] = previous["runs"]
        report["command"] = previous["command"] + "; then " + command
    plan = [("base", 1, n) for n in nprocs]
    plan += [(s, k, 1) for k in factors if k > 1 for s in ("items+interactions", "interactions")]
    for series, k, nproc in plan:
        name = f"{args.dataset}-scale-{'b' if series == 'base' else ('ik' if series.startswith('items') else 'k')}{k}"
        t, i, u = replicate(tables, item, user, k, items_too=series.startswith("items"))
        data = write_dataset(args.base_dir, name, t, i, u)
        if series == "base":
            report["base"] = data
        entry = {"series": series, "factor": k, "data": data, **time_run(name, files, args.base_dir, args.saved_dir, nproc, overrides)}
        report["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        os.makedirs(args.out, exist_ok=True)
        atomic_write_json(os.path.join(args.out, f"{args.dataset}-scaling.json"), report)  # progress
    write_outputs(report, args.out)


def write_outputs(report, out):
    """The figure and the markdown of a scaling report (its JSON is written as the runs finish)."""
    plot(report, os.path.join(out, f"{report['dataset']}-scaling.png"))
    atomic_write(os.path.join(out, f"{report['dataset']}-scaling.md"), render(report))


if __name__ == "__main__":
    main()

r"""Evaluation throughput of CELA against its ID backbone, measured interleaved in one process.

    python -m benchmarks.eval_cost --dataset=amazon-sports [--rounds=5] [--out=docs/benchmarks]
        [--name=NAME] [--report_only] [--key=value ...]   (runner overrides, e.g. --backbone=DeepFM --eval_batch_size=4096)

The benchmark's per-run throughput divides the test set by one evaluation's wall time, taken in
different processes at different times; on a shared machine that ratio mostly measures the load.
Here both models score the same test loader with RecBole's own ``Trainer.evaluate``, alternately
(backbone, CELA, backbone, CELA, ...), so load changes hit both alike; the medians of the rounds
are compared. Scoring cost does not depend on the weights, so both models are fresh: CELA gets a
text table of the right shape (items x encoder width) with random values (the encoder never runs
at inference; the table is a buffer). Results go to stdout and to
``<out>/<dataset>-eval-cost.md`` (+ ``.json``); ``--report_only`` writes the markdown again from
that JSON (its command and date kept).
"""

import datetime
import os
import shlex
import sys
import time

import numpy as np
import torch

from benchmarks.common import cost_tool_parser, config_overrides, cpu_snapshot, own_cpu, write_md_json


def measure(dataset, rounds=5, overrides=None, log=print, config_file_list=None):
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer

    from recbole_cela.config import build_config
    from recbole_cela.data import prepare_from_config
    from recbole_cela.model.cela import CELA
    from recbole_cela.utils import init_seed

    overrides = {"show_progress": False, **(overrides or {})}
    _, config = build_config("CELA", dataset, config_file_list, overrides)
    init_seed(config["seed"], config["reproducibility"])
    prepare_from_config(config)
    data = create_dataset(config)
    train, _, test = data_preparation(config, data)
    backbone_name = config["backbone"]
    backbone_class, backbone_config = build_config(backbone_name, dataset, config_file_list, overrides)

    models = {backbone_name: backbone_class(backbone_config, train.dataset), "CELA": CELA(config, train.dataset)}
    torch.manual_seed(0)
    models["CELA"].set_text_table(torch.randn(train.dataset.item_num, models["CELA"].text_dim))
    trainers = {name: Trainer(config if name == "CELA" else backbone_config, model.to(config["device"]))
                for name, model in models.items()}
    n = len(test.dataset)
    for trainer in trainers.values():  # untimed warm-up (allocations, CELA's projected table)
        trainer.evaluate(test, load_best_model=False, show_progress=False)
    per_s = {name: [] for name in trainers}
    cpu_before, own_before, started = cpu_snapshot()[0], own_cpu(), time.perf_counter()
    for r in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.evaluate(test, load_best_model=False, show_progress=False)
            per_s[name].append(n / (time.perf_counter() - start))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:,.0f} samples/s" for k, v in per_s.items()))
    elapsed = time.perf_counter() - started
    other = ((cpu_snapshot()[0] - cpu_before) - (own_cpu() - own_before)) / elapsed
    median = {name: float(np.median(v)) for name, v in per_s.items()}
    return {"other_cpu_cores": max(0.0, other), "text_proj_fields": config["text_proj_fields"],"dataset": dataset, "backbone": backbone_name, "test_samples": n, "rounds": rounds,
            "samples_per_s": per_s, "median_samples_per_s": median,
            "ratio": median["CELA"] / median[backbone_name],
            "n_params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": str(config["device"]), "eval_batch_size": config["eval_batch_size"]}


def _load_line(result):
    """The CELA width and the load the measurement ran under (older results recorded neither)."""
    if "other_cpu_cores" not in result:
        return ""
    return (f"- CELA: text projection {result['text_proj_fields']} field(s) wide; CPU used by other "
            f"processes while it measured: {result['other_cpu_cores']:.2f} cores on average\n")


def write_report(result, out, command, date=None, name=None):
    """``<out>/<name>-eval-cost.{md,json}`` of a ``measure`` result (``name``: its dataset unless
    given); ``date`` defaults to now."""
    base = os.path.join(out, f"{name or result['dataset']}-eval-cost")
    result = {**result, "command": command,
              "date": date or datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    b, m = result["backbone"], result["median_samples_per_s"]
    rows = "\n".join(f"| {k} | {m[k]:,.0f} | " + " ".join(f"{x:,.0f}" for x in v) + " |"
                     for k, v in result["samples_per_s"].items())
    text = f"""# Evaluation throughput — {result['dataset']}

- command: `{command}`
- date: {result['date']}
- machine: {result['cpu_count']} CPU cores, {result['threads']} torch threads, torch {result['torch']}, device {result['device']}
- {result['test_samples']:,} test samples, eval batch size {result['eval_batch_size']}, {result['rounds']} interleaved rounds after one warm-up each
{_load_line(result)}
| model | median samples/s | rounds |
|---|---|---|
{rows}

**CELA / {b} = {result['ratio']:.2f}×** (target ≥ 0.9×). Both models are scored by RecBole's
`Trainer.evaluate` on the same loader, alternately, so a load change hits both alike. CELA's extra
cost at inference is one row gather from its projected text table per item and the wider item
representation in {b}'s layers; the encoder never runs.
"""
    return write_md_json(base, text, result)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cost_tool_parser(__doc__, 5, "eval-cost")
    parser.add_argument("--name", default=None,
                        help="report name, <out>/<name>-eval-cost.md (default: the dataset; another name keeps "
                             "a measurement under other settings beside it)")
    args, rest = parser.parse_known_args(argv)
    name = args.name or args.dataset
    from recbole_cela.fileio import read_json

    if args.report_only:
        result = read_json(os.path.join(args.out, f"{name}-eval-cost.json"))
        print(f"report: {write_report(result, args.out, result['command'], result['date'], name)}")
        return
    result = measure(args.dataset, args.rounds, config_overrides(rest))
    path = write_report(result, args.out, "python -m benchmarks.eval_cost " + shlex.join(argv), name=name)
    print(f"CELA / {result['backbone']} throughput: {result['ratio']:.2f}x; report: {path}")


if __name__ == "__main__":
    main()

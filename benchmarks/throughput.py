r"""Training and scoring samples/s of each CTR model, RecBole's layers against the plugin's, interleaved.

    python -m benchmarks.throughput --dataset=amazon-sports [--models=DIN,DINUser,CELA,LR,...]
        [--threads=1,2] [--rounds=3] [--batches=4] [--out=docs/benchmarks] [--report_only] [--key=value ...]

Every model is built twice from the same weights: with RecBole's own layers (``fast_layers:
False``, the stock path) and with the plugin's (:mod:`recbole_cela.model.layers`). A round runs, for
each thread count, each model and each path in turn: training steps (loss, backward, Adam) over
``--batches`` of RecBole's train batches, then ``predict`` on the same batches in inference mode,
each repeated until a second has passed; a load change therefore hits every row alike, and the
medians of the rounds are reported.

Each row is also read against a limit, the time its matrix products alone take on this CPU: the
step's matmul FLOPs (counted by ``torch.utils.flop_counter`` on the plugin's path) over the
matmul FLOP/s this CPU reaches at the same thread count on a product of the step's typical shape
(``--limit_shape``). "of limit" is that time over the measured time: 1.0 would mean nothing but
the products cost anything. CELA is DIN fused with a random text table (cost does not depend on
the weights). Writes ``<out>/<dataset>-throughput.{md,json}``; ``--report_only`` writes the
markdown again from the JSON.
"""

import copy
import datetime
import itertools
import os
import shlex
import sys
import time

import numpy as np
import torch

from benchmarks.common import cost_tool_parser, cpu_snapshot, own_cpu, rewrite_report, write_md_json

DEFAULT_MODELS = ["DIN", "DINUser", "CELA", "LR", "FM", "DeepFM", "WideDeep", "DCNV2", "AutoInt", "xDeepFM"]
PATHS = ("recbole", "plugin")


def _models(dataset, names, args, batches, config_file_list=None):
    """name -> {"recbole": model, "plugin": model, "batches": [...]}: both paths share the weights
    they start from and the batches they read. ``args``: ``--key=value`` settings, read as the
    runner reads its command line."""
    from recbole.data import create_dataset, data_preparation

    from recbole_cela.config import build_config, command_line
    from recbole_cela.data import prepare_from_config
    from recbole_cela.model import build_model, install_fast_layers
    from recbole_cela.utils import init_seed

    splits, out = {}, {}
    for name in names:
        with command_line(args):
            model_class, config = build_config(name, dataset, config_file_list, {"show_progress": False, "state": "WARNING",
                                                                     "fast_layers": False})
        kind = config["MODEL_TYPE"]
        if kind not in splits:
            init_seed(config["seed"], config["reproducibility"])
            prepare_from_config(config)
            train, _, _ = data_preparation(config, create_dataset(config))
            splits[kind] = (train, [b for b in itertools.islice(train, batches)])
        train, rows = splits[kind]
        torch.manual_seed(0)
        stock = build_model(model_class, config, train.dataset)
        if name == "CELA":
            stock.set_text_table(torch.randn(train.dataset.item_num, stock.text_dim))
        out[name] = {"recbole": stock, "plugin": install_fast_layers(copy.deepcopy(stock)), "batches": rows,
                     "device": torch.device(config["device"])}
    return out


def _train(model, optimizer, batches, min_s=0.0):
    """Samples/s of training steps over ``batches``, repeated until ``min_s`` seconds have passed
    (a fast model's few batches are over too soon to time on a shared machine)."""
    model.train()
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < min_s:
        for batch in batches:
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
            n += len(batch)
    return n / (time.perf_counter() - start)


@torch.inference_mode()
def _score(model, batches, min_s=0.0):
    model.eval()
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < min_s:
        for batch in batches:
            model.predict(batch)
            n += len(batch)
    return n / (time.perf_counter() - start)


def step_flops(model, batches):
    """(train, predict) matmul FLOPs per sample of one step, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = batches[0]
    model.train()
    with FlopCounterMode(display=False) as train:
        model.calculate_loss(batch).backward()
    model.zero_grad()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as score:
        model.predict(batch)
    return train.get_total_flops() / len(batch), score.get_total_flops() / len(batch)


def matmul_flops_per_s(shape, repeats=20):
    """FLOP/s of ``[m, k] @ [k, n]`` (forward and both backward products' size) at the current thread count."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start)


def measure(dataset, names, threads=(1,), rounds=3, batches=4, args=(), log=print, limit_shape=(40960, 128, 128),
            min_s=1.0, config_file_list=None):
    models = _models(dataset, names, list(args), batches, config_file_list)
    for entry in models.values():
        entry["batches"] = [b.to(entry["device"]) for b in entry["batches"]]
        for path in PATHS:
            entry[path].to(entry["device"])
        entry["optimizer"] = {p: torch.optim.Adam(entry[p].parameters(), lr=1e-4) for p in PATHS}
    flops = {name: step_flops(copy.deepcopy(e["plugin"]), e["batches"]) for name, e in models.items()}
    per_s = {str(t): {kind: {name: {p: [] for p in PATHS} for name in models} for kind in ("train", "score")}
             for t in threads}
    peak = {}
    for t in threads:  # untimed warm-up: allocations, CELA's projected table
        torch.set_num_threads(t)
        peak[str(t)] = matmul_flops_per_s(limit_shape)
        for entry in models.values():
            for p in PATHS:
                _train(entry[p], entry["optimizer"][p], entry["batches"][:1])
                _score(entry[p], entry["batches"][:1])
    cpu_before, own_before, started = cpu_snapshot()[0], own_cpu(), time.perf_counter()
    for r in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            peak[str(t)] = max(peak[str(t)], matmul_flops_per_s(limit_shape))
            for name, entry in models.items():
                for p in PATHS:
                    per_s[str(t)]["train"][name][p].append(
                        _train(entry[p], entry["optimizer"][p], entry["batches"], min_s))
                    per_s[str(t)]["score"][name][p].append(_score(entry[p], entry["batches"], min_s))
            log(f"round {r + 1}/{rounds}, {t} thread(s): " + ", ".join(
                f"{n} {per_s[str(t)]['train'][n]['plugin'][-1] / per_s[str(t)]['train'][n]['recbole'][-1]:.1f}x"
                for n in models))
    elapsed = time.perf_counter() - started
    other = ((cpu_snapshot()[0] - cpu_before) - (own_cpu() - own_before)) / elapsed
    median = {t: {kind: {n: {p: float(np.median(v)) for p, v in paths.items()} for n, paths in rows.items()}
                  for kind, rows in kinds.items()} for t, kinds in per_s.items()}
    first = next(iter(models.values()))
    return {"dataset": dataset, "models": list(models), "threads": [int(t) for t in threads], "rounds": rounds,
            "batches": batches, "min_s": min_s, "batch_size": {n: len(e["batches"][0]) for n, e in models.items()},
            "per_s": per_s, "median_per_s": median, "matmul_flops_per_sample": flops,
            "matmul_flop_per_s": peak, "limit_shape": list(limit_shape), "other_cpu_cores": max(0.0, other),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(first["device"])}


def table(result, threads):
    t = str(threads)
    m, peak = result["median_per_s"][t], result["matmul_flop_per_s"][t]
    rows = []
    for name in result["models"]:
        train_flops, score_flops = result["matmul_flops_per_sample"][name]
        cells = []
        for kind, flops in (("train", train_flops), ("score", score_flops)):
            stock, plugin = m[kind][name]["recbole"], m[kind][name]["plugin"]
            limit = peak / flops if flops else None
            cells += [f"{stock:,.0f}", f"{plugin:,.0f}", f"**{plugin / stock:.2f}×**",
                      f"{plugin / limit:.2f}" if limit else "n/a"]
        rows.append(f"| {name} | {result['batch_size'][name]:,} | " + " | ".join(cells) + " |")
    return "\n".join([
        "| model | batch | train: RecBole | plugin | speed-up | of limit | score: RecBole | plugin | speed-up | of limit |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows])


def write_report(result, out, command, date=None):
    base = os.path.join(out, f"{result['dataset']}-throughput")
    result = {**result, "command": command,
              "date": date or datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    sections = []
    for t in result["threads"]:
        gflops = result["matmul_flop_per_s"][str(t)] / 1e9
        sections.append(f"## {t} thread{'s' if t > 1 else ''} (matmul limit: {gflops:.0f} GFLOP/s)\n\n{table(result, t)}\n")
    text = f"""# Training and scoring throughput, RecBole's layers against the plugin's — {result['dataset']}

- command: `{command}`
- date: {result['date']}
- machine: {result['cpu_count']} CPU cores, torch {result['torch']}, device {result['device']}
- CPU used by other processes while it measured: {result['other_cpu_cores']:.2f} cores on average
- {result['rounds']} interleaved rounds after one warm-up step each; per round and model, training steps (loss,
  backward, Adam) over {result['batches']} batches, then `predict` on the same batches in inference mode, each
  repeated until {result.get('min_s', 0):g} s have passed; samples/s, medians over the rounds

"RecBole" is the model with RecBole's own layers (`--fast_layers=False`), "plugin" the same weights with
the plugin's (`recbole_cela/model/layers.py`, the default). "of limit": the time the step's matrix
products alone would take at the matmul FLOP/s this CPU reached at that thread count (a
{' × '.join(map(str, result['limit_shape'][:2]))} by {result['limit_shape'][1]} × {result['limit_shape'][2]} product),
over the time the plugin's step took; what is left is memory traffic, elementwise work and Python.

{chr(10).join(sections)}"""
    return write_md_json(base, text, result)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cost_tool_parser(__doc__, 3, "throughput")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts, e.g. 1,2")
    parser.add_argument("--batches", type=int, default=4)
    args, rest = parser.parse_known_args(argv)
    if rewrite_report(args, "throughput", write_report):
        return
    threads = sorted({int(t) for t in args.threads.split(",")})
    result = measure(args.dataset, args.models.split(","), threads, args.rounds, args.batches, rest)
    path = write_report(result, args.out, "python -m benchmarks.throughput " + shlex.join(argv))
    print(f"report: {path}")


if __name__ == "__main__":
    main()

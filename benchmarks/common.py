"""Small pieces the benchmark modules share: statistics, nested lookups, argument lists, CPU load."""

import math

import numpy as np

FIRST_SEED = 2020
QUICK_ARGS = ["--epochs=1", "--dap_epochs=1", "--align_epochs=1"]
SPLITS = ["train", "valid", "test"]
STAGES = ["dap", "backbone", "align", "table", "fusion"]  # CELA's, in order
FLIP_STAGES = ["pretrain", "id_warmup", "finetune"]
TEXT_STAGES = ["dap", "align", "table"]


def mean_std(values):
    """(mean, sample std); std is None for one value; (None, None) for none."""
    values = [float(v) for v in values if v is not None and not _isnan(v)]
    if not values:
        return None, None
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, std


def _isnan(value):
    try:
        return math.isnan(value)
    except TypeError:
        return False


def mean(values):
    return mean_std(values)[0]


def get(d, *keys):
    """``d[k1][k2]...``, None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def ratio(a, b):
    return a / b if a is not None and b else None


def merge_args(*groups):
    """``--key=value`` lists merged left to right (a later key wins: RecBole rejects a key
    given twice with different values)."""
    merged = {}
    for group in groups:
        for arg in group:
            key = arg.split("=", 1)[0]
            merged.pop(key, None)
            merged[key] = arg
    return list(merged.values())


def config_overrides(items):
    """``--key=value`` arguments -> ``{key: value text}`` for a ``config_dict``: RecBole's ``Config``
    converts each text as it converts its own command line (numbers, lists, dicts, True/False/None),
    so a tool's overrides mean what they mean to the runner."""
    out = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"error: expected --key=value, got '{item}'")
        key, text = item[2:].split("=", 1)
        out[key] = text
    return out


def cpu_snapshot():
    """(CPU-seconds busy on the whole machine, CPU-seconds of this process's finished children)."""
    import resource

    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0) + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime


def own_cpu():
    """CPU-seconds this process has used."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def other_cores(before, after, elapsed):
    """Mean cores used by *other* processes between two ``cpu_snapshot`` (machine busy time minus
    the finished children's)."""
    if not elapsed or elapsed <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / elapsed)


def cost_tool_parser(doc, rounds, kind):
    """The arguments every interleaved cost tool takes (``python -m benchmarks.<tool>``):
    --dataset, --rounds, --out and --report_only (write ``<out>/<name>-<kind>.md`` again from its JSON)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--report_only", action="store_true",
                        help=f"measure nothing: write the markdown again from <out>/<name>-{kind}.json")
    return parser


def rewrite_report(args, kind, write_report):
    """``--report_only``: ``<out>/<dataset>-<kind>.md`` written again from its JSON by
    ``write_report(result, out, command, date)``; returns whether it was asked for."""
    if not args.report_only:
        return False
    import os

    from recbole_cela.fileio import read_json

    result = read_json(os.path.join(args.out, f"{args.dataset}-{kind}.json"))
    print(f"report: {write_report(result, args.out, result['command'], result['date'])}")
    return True


def write_md_json(base, text, result):
    """``base``.md and ``base``.json, each written atomically; returns the markdown's path."""
    from recbole_cela.fileio import atomic_write, atomic_write_json

    atomic_write(base + ".md", text)
    atomic_write_json(base + ".json", result)
    return base + ".md"

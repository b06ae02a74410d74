r"""Benchmark: every variant x seed through the runner, one report per dataset.

    python -m recbole_cela.benchmark [--dataset=ml-100k] [--models=Pop,DIN,CELA] [--seeds=3]
        [--quick] [--out=docs/benchmarks] [--extra="--key=value ..."] [--resume]

Each (variant, seed) runs ``run_recbole_cela.py`` in its own process (``sys.executable``, cwd =
the repository root) with ``--seed=S --results_dir=<out>/runs/<dataset>/<variant>-s<S>
--show_progress=False``; its output goes to ``run.log`` in that folder. A failed run is recorded
(with the end of its log) in the report; the benchmark goes on. ``Pop`` is not learned: it is
scored here from the benchmark files. ``--resume`` reuses the result of every (variant, seed)
that already finished with the same arguments and under the same ``props/<MODEL>.yaml``
defaults (``stale_defaults``), so an interrupted benchmark can be continued.

Outputs: ``<out>/<dataset>.json`` (raw results and aggregates), ``<out>/<dataset>.md`` and the
PNGs ``<out>/<dataset>-{auc,buckets,cost,stages}.png`` it embeds. Variants are defined in
``VARIANTS`` below: a name, the model and the ``--key=value`` overrides of the runner.
"""

import argparse
import contextlib
import datetime
import functools
import glob
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "run_recbole_cela.py"
FIRST_SEED = 2020
QUICK_ARGS = ["--epochs=1", "--dap_epochs=1", "--align_epochs=1"]
STAGES = ["dap", "backbone", "align", "table", "fusion"]
FLIP_STAGES = ["pretrain", "id_warmup", "finetune"]
TEXT_STAGES = ["dap", "align", "table"]
CELA_TIME_TARGET = 3.0  # CELA total training time <= 3x DIN's fit time
CELA_THROUGHPUT_TARGET = 0.9  # CELA eval throughput >= 0.9x DIN's
SPLITS = ["train", "valid", "test"]

# name -> model (None: scored by the benchmark itself), runner overrides, in the default list?
# ``text_tokens``: the dataset's item text fields are loaded as RecBole token_seq item features.
VARIANTS = {
    "Pop": {"model": None, "args": []},
    "LR": {"model": "LR", "args": []},
    "FM": {"model": "FM", "args": []},
    "DeepFM": {"model": "DeepFM", "args": []},
    "WideDeep": {"model": "WideDeep", "args": []},
    "DCNV2": {"model": "DCNV2", "args": []},
    "AutoInt": {"model": "AutoInt", "args": []},
    "xDeepFM": {"model": "xDeepFM", "args": []},
    "DIN": {"model": "DIN", "args": []},
    "DIN-textTokens": {"model": "DIN", "args": [], "text_tokens": True},
    "DeepFM-textTokens": {"model": "DeepFM", "args": [], "text_tokens": True},
    # DIN with the user fields in its MLP (model/din_user.py: RecBole's DIN embeds them but never
    # reads them), ID only and with the text as tokens; CELA over it below.
    "DINUser": {"model": "DINUser", "args": []},
    "DINUser-textTokens": {"model": "DINUser", "args": [], "text_tokens": True},
    # CELA's ablation rows. props/CELA.yaml's validated defaults (note at its end): stage 2 only
    # (dap False) and a 2-field text projection (text_proj_fields 2).
    "CELA": {"model": "CELA", "args": []},
    "CELA-frozenText": {"model": "CELA", "args": ["--dap=False", "--align=False"]},  # neither stage
    "CELA-noText": {"model": "CELA", "args": ["--use_text=False"]},
    # The stage ablation as first measured, with a 1-field projection (the default until
    # 2026-11-26): neither stage, stage 1 only, stage 2 only, both (the paper's pipeline).
    "CELA-frozenText-proj1": {"model": "CELA", "args": ["--dap=False", "--align=False", "--text_proj_fields=1"]},
    "CELA-dapOnly": {"model": "CELA", "args": ["--dap=True", "--align=False", "--text_proj_fields=1"]},
    "CELA-proj1": {"model": "CELA", "args": ["--text_proj_fields=1"]},
    "CELA-withDAP": {"model": "CELA", "args": ["--dap=True", "--text_proj_fields=1"]},
    # Levers of issue #7, tried on validation on top of CELA-proj1 (not in the default list;
    # props/CELA.yaml says what each did). Stage 2 aligned with the item and its clickers'
    # histories (model/alignment.py), on top of CELA-withDAP:
    "CELA-withDAP-alignClickers": {
        "model": "CELA", "args": ["--dap=True", "--align_target=item_clickers", "--text_proj_fields=1"], "default": False},
    "CELA-normText": {"model": "CELA", "args": ["--text_normalize=True", "--text_proj_fields=1"], "default": False},
    # InfoNCE temperature 6.4 on inner products of LayerNorm'd 128-d vectors (|v|^2 ~ 128) is a
    # cosine temperature of 0.05 (SimCSE's); the official 1.0 is a cosine temperature of ~0.008.
    "CELA-alignTemp6.4": {"model": "CELA", "args": ["--align_temperature=6.4", "--text_proj_fields=1"],
                          "default": False},
    # Stage 2 for twice the CPU default's epochs (official: 10), on top of the current defaults.
    "CELA-alignEpochs4": {"model": "CELA", "args": ["--align_epochs=4"], "default": False},
    # CELA over a context-aware backbone (the text enters as extra fields; model/fusion.py).
    # (Measured with a 1-field projection, as the stage ablation above.)
    "CELA-DeepFM": {"model": "CELA", "args": ["--backbone=DeepFM", "--text_proj_fields=1"], "default": False},
    "CELA-DeepFM-frozenText": {
        "model": "CELA", "args": ["--backbone=DeepFM", "--dap=False", "--align=False", "--text_proj_fields=1"],
        "default": False},
    # CELA over DINUser, at the validated defaults and with raw frozen vectors (neither stage).
    "CELA-DINUser": {"model": "CELA", "args": ["--backbone=DINUser"], "default": False},
    "CELA-DINUser-frozenText": {"model": "CELA", "args": ["--backbone=DINUser", "--dap=False", "--align=False"],
                                "default": False},
    # The encoder fine-tuned end to end over DINUser, against frozen vectors under the same
    # 1-epoch CPU budget: each training batch re-encodes its ~1,600 distinct items (ml-100k), about
    # a CPU-minute, so one epoch of 48 batches is ~50 CPU-minutes.
    "CELA-DINUser-e2e-1ep": {"model": "CELA", "default": False, "args": [
        "--backbone=DINUser", "--dap=False", "--align=False", "--finetune_encoder=True", "--epochs=1"]},
    "CELA-DINUser-frozenText-1ep": {"model": "CELA", "default": False, "args": [
        "--backbone=DINUser", "--dap=False", "--align=False", "--epochs=1"]},
    "CELA-e2e": {
        "model": "CELA",
        # The encoder (top text_trainable_layers blocks) trains in the CTR loss; every batch
        # re-encodes its distinct items. Capped at 5 epochs so that it fits a CPU (ml-100k's
        # frozen-vector fusion peaks at epoch 5-7); raise it with --extra on a GPU.
        "args": ["--dap=False", "--align=False", "--finetune_encoder=True", "--epochs=5"],
        "default": False,  # very slow: only when named in --models
    },
    # FLIP reads a prompt per interaction with the encoder: far slower than CELA on a CPU, so
    # only when named in --models (see docs/FLIP.md for what is subsampled).
    "FLIP": {"model": "FLIP", "args": [], "default": False},
    "FLIP-idOnly": {"model": "FLIP", "args": ["--flip_finetune=id"], "default": False},
    "FLIP-textOnly": {"model": "FLIP", "args": ["--flip_finetune=text"], "default": False},
}


def default_variants():
    return [name for name, spec in VARIANTS.items() if spec.get("default", True)]


def is_cela(name, variants=None):
    return (variants or VARIANTS)[name]["model"] == "CELA"


# ------------------------------------------------------------------------------------ helpers
def atomic_write_text(path, text):
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


@contextmanager
def _argv(args):
    """RecBole's ``Config`` reads ``sys.argv``: give it only the runner overrides we mean."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "benchmark", *args]
    try:
        yield
    finally:
        sys.argv = saved


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


def _mean(values):
    return mean_std(values)[0]


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# -------------------------------------------------------------------------------- dataset side
def _yaml_file(path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f) or {}


def dataset_yaml(dataset):
    """The dataset config (``dataset_configs/<dataset>.yaml``) as a dict ({} when none)."""
    from recbole_cela.utils import dataset_config_file

    path = dataset_config_file(dataset)
    return _yaml_file(path) if path else {}


def text_token_args(dataset, cfg=None):
    """``--load_col={...}`` loading the dataset's text fields as item features as well."""
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
    return [f"--load_col={load_col!r}"]


def resolve_data(dataset, extra_args, prepare=False):
    """(folder of the benchmark files, settings the benchmark needs) from the runner's config.

    With ``prepare`` the raw data is converted first when it has not been (what any run does).
    """
    from recbole_cela.quick_start import build_config

    with _argv(extra_args):
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
    import pandas as pd

    frame = pd.read_csv(
        split_path(data_dir, dataset, split), sep="\t", dtype=str, keep_default_na=False, quoting=3
    )
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame[item_field].to_numpy(), frame[label_field].astype(float).to_numpy()


def split_counts(data_dir, dataset, item_field="item_id", label_field="label"):
    """Samples and positive rate per split (None where the file does not exist yet)."""
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
        metrics = {
            "auc": float(roc_auc_score(labels, scores)),
            "logloss": logloss(labels, scale_scores(scores)),
        }
        elapsed = time.perf_counter() - start
        return scores, labels, metrics, elapsed

    _, _, valid, _ = score("valid")
    scores, labels, test, eval_time = score("test")
    # the score *is* the item's popularity: bucket the samples by their own score
    by_bucket = auc_by_popularity(
        scores, labels, np.arange(len(scores)), scores.astype(np.int64), list(buckets)
    )
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


# ----------------------------------------------------------------------------------- running
def run_args(name, dataset, seed, quick=False, extra_args=(), variants=None, dataset_cfg=None):
    """The runner's arguments for one (variant, seed), without ``--results_dir``."""
    spec = (variants or VARIANTS)[name]
    args = list(spec["args"])
    if spec.get("text_tokens"):
        args += text_token_args(dataset, dataset_cfg)
    args = merge_args(args, QUICK_ARGS if quick else [], list(extra_args))
    return [
        f"--model={spec['model']}",
        f"--dataset={dataset}",
        *merge_args(args, [f"--seed={seed}", "--show_progress=False"]),
    ]


def _comparable(argv):
    return sorted(a for a in argv if not a.startswith("--results_dir="))


def run_folder(runs_dir, name, seed):
    return os.path.join(runs_dir, f"{name}-s{seed}")


def stale_defaults(result, args):
    """Keys of ``props/<MODEL>.yaml`` whose default changed since ``result`` ran: the run recorded
    another value and ``args`` do not set the key, so the same command now runs something else.
    A key's default is the props value, or the dataset config's where it sets the key too. (A key
    the run did not record did not exist yet: it ran what is now that key's default.)"""
    from recbole_cela.utils import dataset_config_file, props_file

    path = props_file(result.get("model") or "")
    recorded = result.get("config") or {}
    if not path:
        return []
    data_path = dataset_config_file(result.get("dataset") or "")
    defaults = {**_props_yaml(path)}
    defaults.update({k: v for k, v in (_props_yaml(data_path) if data_path else {}).items() if k in defaults})
    given = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
    return sorted(k for k, v in defaults.items() if k in recorded and k not in given and recorded[k] != v)


@functools.lru_cache(maxsize=None)
def _props_yaml(path):
    return _yaml_file(path)


def finished_result(folder, args, log=None):
    """The newest result JSON in ``folder`` written by a run with exactly ``args`` under the
    current props defaults (else None; ``log`` is told which defaults changed)."""
    candidates = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict) or not _get(result, "test_result"):
            continue
        if _comparable(list(result.get("argv") or [])[1:]) != _comparable(args):
            continue
        stale = stale_defaults(result, args)
        if stale:
            if log:
                log(f"not reused: {path} ran other defaults of {', '.join(stale)} (props changed since)")
            continue
        candidates.append((os.path.getmtime(path), path, result))
    if not candidates:
        return None, None
    _, path, result = max(candidates, key=lambda c: c[0])
    return path, result


def plan(names, seeds):
    """(variant, seed) pairs in report order; Pop is seed-independent (one pair, seed None)."""
    pairs = []
    for name in names:
        if VARIANTS.get(name, {}).get("model", "") is None:
            pairs.append((name, None))
        else:
            pairs += [(name, seed) for seed in seeds]
    return pairs


def pending(pairs, runs_dir, dataset, resume, quick=False, extra_args=(), variants=None, dataset_cfg=None, log=None):
    """Split ``pairs`` into (to run, reused: {(name, seed): (path, result)})."""
    todo, reused = [], {}
    for name, seed in pairs:
        spec = (variants or VARIANTS)[name]
        if spec["model"] is None:
            todo.append((name, seed))
            continue
        if resume:
            args = run_args(name, dataset, seed, quick, extra_args, variants, dataset_cfg)
            path, result = finished_result(run_folder(runs_dir, name, seed), args, log)
            if result is not None:
                reused[(name, seed)] = (path, result)
                continue
        todo.append((name, seed))
    return todo, reused


def _cpu_snapshot():
    """(CPU-seconds busy on the whole machine, CPU-seconds of this process's finished children)."""
    import resource

    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0) + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime


def _other_cores(before, after, elapsed):
    """Mean cores used by *other* processes during a run (machine busy time minus the run's)."""
    if not elapsed or elapsed <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / elapsed)


def _tail(text, lines=40, chars=4000):
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


RUN_LOCK = "running.lock"  # in a run folder while a runner works there: holds the runner's pid


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(path):
    """Claim a run folder: None when taken, else the pid of the live process that holds it. A lock
    whose process is gone (a killed benchmark) is taken over."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return pid
            with contextlib.suppress(OSError):
                os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    return -1  # lost a race for the same folder twice: leave it to the other process


def run_one(name, seed, dataset, runs_dir, quick=False, extra_args=(), variants=None,
            dataset_cfg=None, timeout=None):
    """Run the runner for one (variant, seed) in a subprocess; a run record (never raises)."""
    folder = os.path.abspath(run_folder(runs_dir, name, seed))
    os.makedirs(folder, exist_ok=True)
    record = {"variant": name, "seed": seed, "folder": folder, "reused": False}
    cpu_before = _cpu_snapshot()
    start = time.time()
    try:
        args = run_args(name, dataset, seed, quick, extra_args, variants, dataset_cfg)
    except Exception as error:  # e.g. a dataset config without text fields
        record.update(status="failed", returncode=None, elapsed_s=0.0, error_tail=repr(error))
        return record
    command = [sys.executable, str(RUNNER), *args, f"--results_dir={folder}"]
    record["command"] = shlex.join(command)
    lock = os.path.join(folder, RUN_LOCK)
    owner = _take_lock(lock)
    if owner:  # another benchmark process is running this very (variant, seed): never run it twice
        record.update(status="not run", elapsed_s=0.0, error_tail=f"being run by process {owner} ({lock})")
        return record
    log_path = os.path.join(folder, "run.log")
    before = set(glob.glob(os.path.join(folder, "*.json")))
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            atomic_write_text(lock, str(proc.pid))  # the runner's pid: it may outlive this process
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                returncode = "timeout"
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
    record["elapsed_s"] = time.time() - start
    record["other_cpu_cores"] = _other_cores(cpu_before, _cpu_snapshot(), record["elapsed_s"])
    record["returncode"] = returncode
    record["log_file"] = log_path
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    new = sorted(set(glob.glob(os.path.join(folder, "*.json"))) - before, key=os.path.getmtime)
    if returncode == 0 and new:
        with open(new[-1]) as f:
            record.update(status="ok", result_file=new[-1], result=json.load(f))
    else:
        reason = f"timed out after {timeout}s" if returncode == "timeout" else f"exit code {returncode}"
        if returncode == 0:
            reason = "exit code 0 but no result JSON"
        record.update(status="failed", error_tail=f"[{reason}]\n{_tail(log_text)}")
    return record


def progress_line(index, total, record):
    seed = "-" if record["seed"] is None else record["seed"]
    head = f"[{index:>{len(str(total))}}/{total}] {record['variant']:<18} seed {seed!s:<5}"
    elapsed = f"{record.get('elapsed_s') or 0:7.1f}s"
    if record["status"] == "not run":
        return f"{head} not run ({record.get('error_tail') or 'no finished run; --report_only'})"
    if record["status"] == "ok":
        auc = _get(record, "result", "test_result", "auc")
        state = "reused" if record.get("reused") else "ok"
        auc = "n/a" if auc is None else f"{auc:.4f}"
        return f"{head} {state:<7} {elapsed}  test AUC {auc}"
    last = (record.get("error_tail") or "").strip().splitlines()[-1:] or [""]
    return f"{head} FAILED  {elapsed}  {last[0][:120]}"


# ------------------------------------------------------------------------------- aggregation
def stage_cost(stage):
    """What a stage cost to make: its time, or for a reused artifact the time recorded when it
    was made (``original_time_s``; None for artifacts made before that was recorded)."""
    return stage.get("original_time_s") if stage.get("cached") else stage.get("time_s")


def end_to_end_cost(stages):
    """CELA's cost with every stage included (reused artifacts at their original cost)."""
    costs = [stage_cost(s) for s in stages.values() if s]
    return None if not costs or None in costs else sum(costs)


# CELA settings that tell its benchmark variants apart (the ablation table lists them per variant).
ABLATION_KEYS = ["backbone", "dap", "align", "align_target", "align_temperature", "align_epochs", "text_proj_fields",
                 "text_normalize", "finetune_encoder", "epochs"]


def _settings(results):
    """The ABLATION_KEYS of a CELA variant's runs (from their recorded config), else None."""
    configs = [r.get("config") or {} for r in results if (r.get("config") or {}).get("model") == "CELA"]
    if not configs:
        return None
    # A run made before a key existed ran what is now that key's props default (e.g. align_target).
    defaults = _cela_defaults()
    return {k: configs[0].get(k, defaults.get(k)) for k in ABLATION_KEYS}


def _cela_defaults():
    """props/CELA.yaml, read once per process (callers only read it)."""
    from recbole_cela.utils import props_file

    return _props_yaml(props_file("CELA"))


def ablation_rows(agg, names):
    """One row per CELA variant: its stages and settings, valid/test AUC, and the test AUC gain
    over the frozen-vector row (no stage 1, no stage 2) with the closest fusion settings: same
    backbone, then same projection width, then same normalisation, then same epoch budget."""
    cela = [n for n in names if _get(agg, n, "settings") and agg[n]["test_auc_mean"] is not None]
    frozen = [n for n in cela if not any(agg[n]["settings"].get(k) for k in ("dap", "align", "finetune_encoder"))]

    def reference(st):
        same = [n for n in frozen if agg[n]["settings"].get("backbone") == st.get("backbone")]
        for key in ("text_proj_fields", "text_normalize", "epochs"):
            closer = [n for n in same if agg[n]["settings"].get(key) == st.get(key)]
            same = closer or same
        return same[0] if same else None

    base = {}
    if cela:  # every setting without a column of its own, as the reference row has it
        first = agg["CELA"]["settings"] if "CELA" in cela else agg[cela[0]]["settings"]
        base = {k: first.get(k) for k in ABLATION_KEYS if k not in ("backbone", "dap", "align")}
    rows = []
    for n in cela:
        a, st = agg[n], agg[n]["settings"]
        other = [f"{k}={st.get(k)}" for k in base if st.get(k) != base[k]]
        ref = None if n in frozen else reference(st)
        gain = None if ref is None else a["test_auc_mean"] - agg[ref]["test_auc_mean"]
        rows.append([n, st.get("backbone"), "yes" if st.get("dap") else "–", "yes" if st.get("align") else "–",
                     ", ".join(other) or "–", str(a["n_ok"]), _f(a["valid_auc_mean"]),
                     _pm(a["test_auc_mean"], a["test_auc_std"]),
                     "–" if gain is None else f"{gain:+.4f} ({ref})"])
    return rows


def aggregate(records, names):
    """Per variant: metric means/stds over its successful seeds, costs, stages and buckets."""
    out = {}
    for name in names:
        recs = [r for r in records if r["variant"] == name]
        results = [r["result"] for r in recs if r["status"] == "ok"]
        auc = mean_std([_get(r, "test_result", "auc") for r in results])
        loss = mean_std([_get(r, "test_result", "logloss") for r in results])
        deterministic = bool(results) and all(r.get("seed") is None for r in results)
        entry = {
            "n_ok": len(results),
            "n_failed": sum(r["status"] == "failed" for r in recs),
            "seeds": [r["seed"] for r in recs if r["status"] == "ok"],
            "deterministic": deterministic,
            "test_auc_mean": auc[0],
            "test_auc_std": 0.0 if deterministic else auc[1],
            "test_logloss_mean": loss[0],
            "test_logloss_std": 0.0 if deterministic else loss[1],
            "valid_auc_mean": _mean([_get(r, "best_valid_result", "auc") for r in results]),
            "fit_time_s_mean": _mean([r.get("fit_time_s") for r in results]),
            "eval_time_s_mean": _mean([r.get("eval_time_s") for r in results]),
            "eval_samples_per_s_mean": _mean([r.get("eval_samples_per_s") for r in results]),
            "peak_rss_mb_max": max([r["peak_rss_mb"] for r in results if r.get("peak_rss_mb")], default=None),
            "n_params": next((r.get("n_params") for r in results if r.get("n_params") is not None), None),
            "buckets": {},
            "stages": None,
            "settings": _settings(results),
        }
        bucket_names = []
        for r in results:
            for b in r.get("test_auc_by_popularity") or {}:
                if b not in bucket_names:
                    bucket_names.append(b)
        for b in bucket_names:
            values = [_get(r, "test_auc_by_popularity", b) for r in results]
            values = [v for v in values if v]
            mean, std = mean_std([v.get("auc") for v in values])
            entry["buckets"][b] = {
                "n": values[0].get("n") if values else None,
                "auc_mean": mean,
                "auc_std": 0.0 if deterministic and mean is not None else std,
            }
        stage_results = [r["stages"] for r in results if r.get("stages")]
        if stage_results:
            stages = {}
            names_seen = list(STAGES)  # CELA's order first, then any other model's (FLIP's) stages
            for result in stage_results:
                names_seen += [stage for stage in result if stage not in names_seen]
            for stage in names_seen:
                present = [s[stage] for s in stage_results if s.get(stage)]
                if not present:
                    continue
                costs = [stage_cost(p) for p in present]
                stages[stage] = {
                    "time_s_mean": _mean([p.get("time_s") for p in present]),
                    "cost_s_mean": None if None in costs else _mean(costs),
                    "items_per_s_mean": _mean([p.get("items_per_s") for p in present]),
                    "cached_any": any(p.get("cached") for p in present),
                    "n": len(present),
                }
                diagnostics = {}
                for when in ("diagnostics_before", "diagnostics_after"):
                    keys = sorted({k for p in present for k in (p.get(when) or {})})
                    diagnostics[when] = {k: _mean([_get(p, when, k) for p in present]) for k in keys}
                if any(diagnostics.values()):
                    stages[stage]["diagnostics"] = diagnostics
            entry["stages"] = stages
            totals = [end_to_end_cost(s) for s in stage_results]
            entry["end_to_end_s_mean"] = None if None in totals else _mean(totals)
        out[name] = entry
    return out


def compare(agg, ref, other):
    """Does ``ref`` beat ``other`` on test AUC by more than the seed-to-seed spread?

    spread = max of the two stds (a deterministic variant has std 0; one seed has none).
    verdict: 'beats' (diff > spread), 'loses' (diff < -spread), 'within', or 'unknown'.
    """
    a, b = agg.get(ref) or {}, agg.get(other) or {}
    if a.get("test_auc_mean") is None or b.get("test_auc_mean") is None:
        return {"diff": None, "spread": None, "verdict": "unknown", "reason": "no successful run"}
    diff = a["test_auc_mean"] - b["test_auc_mean"]
    stds = [a.get("test_auc_std"), b.get("test_auc_std")]
    if any(s is None for s in stds):
        return {"diff": diff, "spread": None, "verdict": "unknown",
                "reason": "one seed: the seed-to-seed spread is unknown"}
    spread = max(stds)
    verdict = "beats" if diff > spread else "loses" if diff < -spread else "within"
    return {"diff": diff, "spread": spread, "verdict": verdict}


def verdict_sentence(ref, other, c):
    if c["diff"] is None:
        return f"{ref} vs {other}: no comparison ({c.get('reason')})."
    d = f"{c['diff']:+.4f} AUC"
    if c["verdict"] == "unknown":
        return f"{ref} vs {other}: {d}; {c['reason']}, so no claim either way."
    s = f"{c['spread']:.4f}"
    if c["verdict"] == "beats":
        return f"{ref} beats {other} by {d}, more than the seed-to-seed spread ({s})."
    if c["verdict"] == "loses":
        return f"{ref} is WORSE than {other} ({d}), by more than the seed-to-seed spread ({s})."
    return f"{ref} vs {other}: {d}, within the seed-to-seed spread ({s}): not a clear difference."


def reference_cela(agg, names):
    """The CELA variant the comparisons are about: 'CELA' when it ran, else the first CELA-family
    variant with a result."""
    if _get(agg, "CELA", "test_auc_mean") is not None:
        return "CELA"
    for name in names:
        if VARIANTS.get(name, {}).get("model") == "CELA" and _get(agg, name, "test_auc_mean") is not None:
            return name
    return None


def gain_over(agg, ref, base):
    """Test AUC of ``ref`` minus ``base``'s, overall and per popularity bucket (None without base)."""
    b_agg = agg.get(base) or {}
    if b_agg.get("test_auc_mean") is None:
        return None
    gain = {"overall": agg[ref]["test_auc_mean"] - b_agg["test_auc_mean"], "buckets": {}}
    for b, v in agg[ref]["buckets"].items():
        d = b_agg["buckets"].get(b) or {}
        if v.get("auc_mean") is not None and d.get("auc_mean") is not None:
            gain["buckets"][b] = v["auc_mean"] - d["auc_mean"]
    return gain


def id_row(agg, ref):
    """The ID-only row of a CELA variant: the variant named like its backbone (DIN, DINUser, ...)."""
    backbone = (_get(agg, ref, "settings") or {}).get("backbone") or "DIN"
    return backbone if backbone in VARIANTS else "DIN"


def comparisons(agg, names, references=()):
    """CELA (or the first of ``references`` that has a result) against every other row and against
    DIN; each further reference (e.g. CELA over another backbone) against every row and against
    its own ID-only backbone row, under ``more``."""
    refs = [r for r in references if _get(agg, r, "test_auc_mean") is not None]
    ref = refs[0] if refs else reference_cela(agg, names)
    out = {"reference": ref, "vs": {}, "gain_over_din": None, "cost": {}, "more": {}}
    if ref is None:
        return out
    for name in names:
        if name != ref:
            out["vs"][name] = compare(agg, ref, name)
    din = agg.get("DIN")
    out["gain_over_din"] = gain_over(agg, ref, "DIN")
    for other in refs[1:]:
        base = id_row(agg, other)
        out["more"][other] = {"vs": {n: compare(agg, other, n) for n in names if n != other},
                              "id_row": base, "gain_over_id": gain_over(agg, other, base)}
    for name in names:
        if VARIANTS.get(name, {}).get("model") != "CELA" or not din:
            continue
        a = agg.get(name) or {}
        end_to_end = a.get("end_to_end_s_mean")
        t = _ratio(end_to_end if end_to_end is not None else a.get("fit_time_s_mean"), din.get("fit_time_s_mean"))
        e = _ratio(a.get("eval_samples_per_s_mean"), din.get("eval_samples_per_s_mean"))
        out["cost"][name] = {
            "time_ratio": t,
            "time_ok": None if t is None else t <= CELA_TIME_TARGET,
            "throughput_ratio": e,
            "throughput_ok": None if e is None else e >= CELA_THROUGHPUT_TARGET,
            "stages_cached": any(s.get("cached_any") for s in (a.get("stages") or {}).values()),
            "end_to_end": end_to_end is not None,
        }
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


# ------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)


def _color(name):
    if name == "Pop":
        return "#999999"
    if VARIANTS.get(name, {}).get("model") == "CELA":
        return "#d62728"
    if name.startswith("DIN"):
        return "#1f77b4"
    return "#2ca02c"


def plot_auc(agg, names, path, title):
    plt = _plt()
    shown = [n for n in names if _get(agg, n, "test_auc_mean") is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(shown) + 2), 4))
    means = [agg[n]["test_auc_mean"] for n in shown]
    errs = [agg[n]["test_auc_std"] or 0 for n in shown]
    ax.bar(range(len(shown)), means, yerr=errs, capsize=3, color=[_color(n) for n in shown])
    for x, (m, e) in enumerate(zip(means, errs)):
        ax.text(x, m + e, f"{m:.4f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right")
    if means:
        low = min(m - e for m, e in zip(means, errs))
        high = max(m + e for m, e in zip(means, errs))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.03))
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_buckets(agg, names, path, title):
    plt = _plt()
    shown = [n for n in names if agg.get(n, {}).get("buckets")]
    buckets = []
    for n in shown:
        buckets += [b for b in agg[n]["buckets"] if b not in buckets]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(buckets) * max(1, len(shown)) * 0.35 + 3), 4))
    width = 0.8 / max(1, len(shown))
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    learned = [n for n in shown if n != "Pop"]
    for i, n in enumerate(shown):
        values = [_get(agg, n, "buckets", b, "auc_mean") for b in buckets]
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(buckets))]
        color = _color("Pop") if n == "Pop" else cmap(learned.index(n) % cmap.N)
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=n, color=color)
    ns = {b: next((agg[n]["buckets"][b].get("n") for n in shown if b in agg[n]["buckets"]), None) for b in buckets}
    ax.set_xticks(range(len(buckets)), [f"{b}\n(n={ns[b]})" for b in buckets])
    ax.set_xlabel("positive training samples of the test item")
    ax.set_ylabel("test AUC (mean over seeds)")
    values = [_get(agg, n, "buckets", b, "auc_mean") for n in shown for b in buckets]
    values = [v for v in values if v is not None]
    if values:
        ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_cost(agg, names, path, title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        a = agg.get(n) or {}
        if a.get("test_auc_mean") is None:
            continue
        if a.get("fit_time_s_mean") is None:  # not trained (Pop): a horizontal reference line
            ax.axhline(a["test_auc_mean"], color=_color(n), linestyle="--", linewidth=1)
            ax.annotate(f"{n} (no training)", (0.01, a["test_auc_mean"]), xycoords=("axes fraction", "data"),
                        fontsize=7, va="bottom", color="#555555")
            continue
        cost = a.get("end_to_end_s_mean") or a["fit_time_s_mean"]  # CELA: every stage at its cost
        ax.errorbar(cost, a["test_auc_mean"], yerr=a["test_auc_std"] or 0,
                    fmt="o", color=_color(n), capsize=2)
        ax.annotate(n, (cost, a["test_auc_mean"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training wall time, s (log scale; CELA: all stages end to end)")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_stages(agg, names, path, title):
    plt = _plt()
    cela = [n for n in names if VARIANTS.get(n, {}).get("model") == "CELA" and agg.get(n, {}).get("stages")]
    bars = (["DIN"] if _get(agg, "DIN", "fit_time_s_mean") is not None else []) + cela
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(bars) + 3), 4))
    colors = dict(zip(STAGES, ["#9467bd", "#1f77b4", "#ff7f0e", "#8c564b", "#d62728"]))
    for x, n in enumerate(bars):
        if n == "DIN":
            ax.bar(x, agg[n]["fit_time_s_mean"], color="#7f7f7f",
                   label="DIN fit" if x == 0 else None)
            continue
        bottom = 0.0
        for stage in STAGES:
            cached = _get(agg, n, "stages", stage, "cached_any")
            t = _get(agg, n, "stages", stage, "cost_s_mean" if cached else "time_s_mean")
            if not t:
                continue
            ax.bar(x, t, bottom=bottom, color=colors[stage], label=stage,
                   hatch="//" if cached else None)
            bottom += t
    if bars and bars[0] == "DIN":
        ax.axhline(CELA_TIME_TARGET * agg["DIN"]["fit_time_s_mean"], color="#555555", linestyle="--",
                   linewidth=1, label=f"{CELA_TIME_TARGET:g}× DIN fit (target)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xticks(range(len(bars)), bars, rotation=30, ha="right")
    ax.set_ylabel("wall time, s (hatched: reused, at its original cost)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


# ------------------------------------------------------------------------------------- report
def _f(value, digits=4):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(mean, std, digits=4):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {'–' if std is None else f'{std:.{digits}f}'}"


def _num(value):
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(records):
    import psutil
    import torch

    devices = sorted({_get(r, "result", "device") for r in records if r["status"] == "ok"} - {None})
    return {
        "cpu_count": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": devices or ["cuda" if torch.cuda.is_available() else "cpu"],
    }


def _gain_line(ref, base, gain):
    """'AUC gain of REF over BASE: overall +x, <bucket> +y, ...' (a ``gain_over`` result)."""
    parts = [f"overall {gain['overall']:+.4f}"] + [f"{b} {g:+.4f}" for b, g in gain["buckets"].items()]
    return f"AUC gain of {ref} over {base}: " + ", ".join(parts) + "."


def render_markdown(report, names, figures):
    agg, comp = report["aggregates"], report["comparisons"]
    dataset, settings = report["dataset"], report["settings"]
    lines = [f"# {report['title']}", ""]
    if settings["quick"]:
        lines += ["> **Smoke check, not a benchmark**: `--quick` runs one seed with one epoch per "
                  "stage (`" + " ".join(QUICK_ARGS) + "`). The numbers below only show that every "
                  "variant runs end to end; do not compare them.", ""]
    m = report["machine"]
    lines += [
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['cpu_count']} CPU cores (`os.cpu_count()`), {m['ram_gb']} GiB RAM, "
        f"torch {m['torch']}, device {', '.join(m['devices'])}, Python {m['python']}",
        f"- seeds: {', '.join(map(str, settings['seeds']))}; extra runner arguments: "
        f"`{' '.join(settings['extra_args']) or '(none)'}`",
    ]
    others = [r["other_cpu_cores"] for r in report["runs"] if r.get("other_cpu_cores") is not None]
    if others:
        line = (f"- CPU used by other processes during the runs: {np.mean(others):.2f} cores on "
                f"average (max {max(others):.2f} in one run)")
        if max(others) > 0.25:
            line += (" — **other processes competed for the CPU: wall times and throughputs, and "
                     "ratios between variants run at different moments, are distorted**")
        lines.append(line)
    counts = report["split_counts"]
    parts = []
    for split in SPLITS:
        c = counts.get(split)
        parts.append(f"{split} {c['samples']:,} ({c['positives'] / max(c['samples'], 1):.1%} positive)"
                     if c else f"{split} –")
    lines += [f"- dataset `{dataset}`: " + ", ".join(parts), ""]

    # main table
    lines += ["## Test results", ""]
    rows = []
    for n in names:
        a = agg[n]
        status = f"{a['n_ok']}" + (f" (+{a['n_failed']} failed)" if a["n_failed"] else "")
        rows.append([
            f"**{n}**" if n == comp.get("reference") else n, status,
            _pm(a["test_auc_mean"], a["test_auc_std"]), _pm(a["test_logloss_mean"], a["test_logloss_std"]),
            _f(a["valid_auc_mean"]), _num(a["fit_time_s_mean"]), _num(a["eval_samples_per_s_mean"]),
            _num(a["peak_rss_mb_max"]), "–" if a["n_params"] is None else f"{a['n_params']:,}",
        ])
    lines += [_table(["variant", "runs", "test AUC", "test LogLoss", "best valid AUC",
                      "fit time (s)", "eval (samples/s)", "peak RSS (MB)", "#params"], rows), ""]
    notes = ["Mean ± sample std over seeds (– for one seed). Peak RSS: the largest over seeds "
             "(the runner's whole process, data included). CELA's fit time covers all its stages."]
    if "Pop" in names:
        notes.append("Pop is not learned: score = positive train samples of the test item, "
                     "computed by the benchmark from the files; it is deterministic (std 0). Its "
                     "LogLoss is on the scores min-max scaled into [0.01, 0.99], so it is only "
                     "indicative.")
    lines += [" ".join(notes), "", f"![test AUC]({figures['auc']})", ""]

    rows = ablation_rows(agg, names)
    if rows:
        lines += ["## CELA ablation: what each stage buys", "",
                  "Stage 1 = domain-adaptive pretraining (MLM + SimCSE), stage 2 = alignment with the "
                  "frozen ID backbone; \"other settings\" differ from the `CELA` row's. Valid AUC: mean "
                  "over seeds (the selection criterion); Δ: test AUC minus that of the frozen-vector row "
                  "(neither stage) with the same backbone and the closest fusion settings, named.", "",
                  _table(["variant", "backbone", "stage 1", "stage 2", "other settings", "runs",
                          "valid AUC", "test AUC", "Δ vs frozen vectors"], rows), ""]
    missing = [r for r in report["runs"] if r["status"] == "not run"]
    if missing:
        lines += ["Not run (no finished run when this report was written): " +
                  ", ".join(f"{r['variant']} seed {r['seed']}" for r in missing) + ".", ""]
    failed = [r for r in report["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            code = r.get("returncode")
            code = "" if code is None else f" (exit code {code})"
            lines += [f"**{r['variant']}**, seed {r['seed']}{code}:", "",
                      "```", r.get("error_tail") or "(no output)", "```", ""]

    # CELA stages and cost targets
    cela = [n for n in names if VARIANTS.get(n, {}).get("model") == "CELA"]
    if cela:
        lines += ["## CELA stages", ""]
        rows = []
        for n in cela:
            stages = agg[n].get("stages") or {}
            row = [n]
            for stage in STAGES:
                s = stages.get(stage)
                if not s:
                    row.append("–")
                elif s["cached_any"]:
                    cost = s.get("cost_s_mean")
                    row.append("reused" + ("" if cost is None else f", made in {_num(cost)}"))
                else:
                    row.append(_num(s["time_s_mean"]))
            for stage in TEXT_STAGES:
                row.append(_num(_get(stages, stage, "items_per_s_mean")))
            row.append(_num(agg[n]["fit_time_s_mean"]))
            row.append(_num(agg[n].get("end_to_end_s_mean")))
            rows.append(row)
        lines += [_table(["variant"] + [f"{s} (s)" for s in STAGES] +
                         [f"{s} items/s" for s in TEXT_STAGES] + ["this run's fit (s)", "end to end (s)"], rows), ""]
        lines += ["Mean wall time per stage over seeds. \"reused, made in X\": for at least one "
                  "seed the stage's artifact came from `saved/cela/<dataset>/` (made by an earlier "
                  "run with the same data and settings, which took X s, as recorded in its "
                  "`stage.json`; its items/s is that run's). \"End to end\" adds every stage at "
                  "what it cost to make, so it is what CELA costs from scratch; the ratio below "
                  "uses it.", ""]
        cost = comp.get("cost") or {}
        if cost:
            rows = []
            for n, c in cost.items():
                rows.append([
                    n, "–" if c["time_ratio"] is None else f"{c['time_ratio']:.2f}×",
                    {True: "meets", False: "MISSES", None: "–"}[c["time_ok"]],
                    "–" if c["throughput_ratio"] is None else f"{c['throughput_ratio']:.2f}×",
                    {True: "meets", False: "MISSES", None: "–"}[c["throughput_ok"]],
                    "all stages" if c.get("end_to_end") else
                    ("this run's fit only (reused stages without a recorded cost: understated)"
                     if c["stages_cached"] else "all stages"),
                ])
            lines += [_table(["variant", "total time / DIN fit", f"≤ {CELA_TIME_TARGET:g}×",
                              "eval throughput / DIN", f"≥ {CELA_THROUGHPUT_TARGET:g}×",
                              "time counted"], rows), ""]
        else:
            lines += ["No cost ratios: DIN is not part of this run.", ""]
        lines += [f"![CELA stages]({figures['stages']})", ""]

        # diagnostics
        rows = []
        for n in cela:
            stages = agg[n].get("stages") or {}
            dap = _get(stages, "dap", "diagnostics") or {}
            for key in ("mlm_loss", "alignment", "uniformity"):
                before, after = _get(dap, "diagnostics_before", key), _get(dap, "diagnostics_after", key)
                if before is not None or after is not None:
                    rows.append([n, f"DAP {key} (lower is better)", _f(before), _f(after), "–"])
            align = _get(stages, "align", "diagnostics") or {}
            n_items = _get(align, "diagnostics_after", "n_items") or _get(align, "diagnostics_before", "n_items")
            n_items = int(round(n_items)) if n_items else None
            chance = {
                "recall@1": 1 / n_items if n_items else None,
                "recall@10": min(1.0, 10 / n_items) if n_items else None,
                "mean_rank": (n_items + 1) / 2 if n_items else None,
            }
            for key in ("recall@1", "recall@10", "mean_rank"):
                before, after = _get(align, "diagnostics_before", key), _get(align, "diagnostics_after", key)
                if before is not None or after is not None:
                    rows.append([n, f"alignment {key} (held-out items, n={n_items})", _f(before),
                                 _f(after), _f(chance[key])])
        lines += ["## CELA diagnostics", ""]
        if rows:
            lines += [_table(["variant", "metric", "before", "after", "chance"], rows), "",
                      "DAP: held-out items' MLM loss and SimCSE alignment / uniformity before and "
                      "after stage 1. Alignment: text→ID retrieval among the held-out items before "
                      "and after stage 2. Means over seeds.", ""]
        else:
            lines += ["No text stage ran in these variants (no diagnostics).", ""]

    # FLIP stages (any variant of the plugin's FLIP model)
    flip = [n for n in names if VARIANTS.get(n, {}).get("model") == "FLIP"]
    if flip:
        rows = []
        for n in flip:
            stages = agg[n].get("stages") or {}
            row = [n]
            for stage in FLIP_STAGES:
                s = stages.get(stage)
                row.append("–" if not s else _num(s["time_s_mean"]) + (" (cached)" if s["cached_any"] else ""))
            row.append(_num(agg[n]["fit_time_s_mean"]))
            row.append(_num(agg[n]["eval_samples_per_s_mean"]))
            rows.append(row)
        lines += ["## FLIP stages", "",
                  _table(["variant"] + [f"{s} (s)" for s in FLIP_STAGES] + ["total fit (s)", "eval samples/s"], rows), "",
                  "Mean wall time per stage over seeds (\"(cached)\": reused from `saved/flip/<dataset>/` "
                  "for at least one seed). Pretraining and the text fine-tuning read subsamples on a CPU "
                  "(flip_pretrain_samples, flip_finetune_samples; docs/FLIP.md).", ""]
        diag = []
        for n in flip:
            pre = _get(agg, n, "stages", "pretrain", "diagnostics") or {}
            for key in ("mlm_accuracy", "mlm_majority", "mtm_accuracy", "mtm_majority", "icl_recall@1", "icl_chance"):
                before, after = _get(pre, "diagnostics_before", key), _get(pre, "diagnostics_after", key)
                if before is not None or after is not None:
                    diag.append([n, key, _f(before), _f(after)])
        if diag:
            lines += ["Pretraining diagnostics on held-out sampled interactions (accuracy of masked "
                      "tokens / fields vs always answering the most frequent one; contrast recall@1 "
                      "within a batch vs chance):", "",
                      _table(["variant", "metric", "before", "after"], diag), ""]

    # buckets
    bucket_names = []
    for n in names:
        bucket_names += [b for b in agg[n]["buckets"] if b not in bucket_names]
    if bucket_names:
        ns = {b: next((agg[n]["buckets"][b]["n"] for n in names if b in agg[n]["buckets"]), None)
              for b in bucket_names}
        rows = [[n] + [_f(_get(agg, n, "buckets", b, "auc_mean")) for b in bucket_names] for n in names]
        lines += ["## Test AUC by item popularity", "",
                  "Buckets: positive training samples of the test item; mean over seeds.", "",
                  _table(["variant"] + [f"{b} (n={ns[b]})" for b in bucket_names], rows), "",
                  f"![AUC by popularity]({figures['buckets']})", ""]

    # gains and verdicts
    lines += ["## Is CELA better?", ""]
    ref = comp.get("reference")
    if ref is None:
        lines += ["No CELA variant finished in this run: no comparison.", ""]
    else:
        if ref != "CELA":
            lines += [f"`CELA` itself is not in this run: the comparisons below use **{ref}**.", ""]
        gain = comp.get("gain_over_din")
        if gain:
            lines += [_gain_line(ref, "DIN", gain), ""]
        else:
            lines += ["DIN is not in this run (or failed): no gain over DIN.", ""]
        for n, c in comp["vs"].items():
            lines.append(f"- {verdict_sentence(ref, n, c)}")
        for other, block in (comp.get("more") or {}).items():
            lines += ["", f"### {other}", ""]
            gain = block.get("gain_over_id")
            if gain:
                lines += [_gain_line(other, f"{block['id_row']} (its backbone, ID only)", gain), ""]
            for n, c in block["vs"].items():
                lines.append(f"- {verdict_sentence(other, n, c)}")
        lines += ["", "\"Spread\" = the larger of the two variants' seed-to-seed standard deviations "
                  "of test AUC; a difference inside it is not claimed as a win.", ""]
    lines += [f"![cost vs AUC]({figures['cost']})", ""]
    lines += ["Raw results (every run's JSON, with its config) are in "
              f"`{dataset}.json` and `runs/{dataset}/`.", ""]
    return "\n".join(lines)


def write_report(out, dataset, names, records, settings, command, split_counts_=None, references=()):
    """Aggregate ``records`` and write ``<out>/<dataset>.{json,md}`` and the PNGs."""
    os.makedirs(out, exist_ok=True)
    agg = aggregate(records, names)
    comp = comparisons(agg, names, references)
    quick = settings.get("quick")
    title = (f"Smoke check (--quick) — {dataset}" if quick else f"Benchmark — {dataset}")
    report = {
        "title": title,
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(records),
        "dataset": dataset,
        "split_counts": split_counts_ or {},
        "settings": settings,
        "variants": {n: VARIANTS[n] for n in names},
        "aggregates": agg,
        "comparisons": comp,
        "runs": records,
    }
    figures = {kind: f"{dataset}-{kind}.png" for kind in ("auc", "buckets", "cost", "stages")}
    suffix = " (smoke check)" if quick else ""
    plot_auc(agg, names, os.path.join(out, figures["auc"]), f"{dataset}: test AUC{suffix}")
    plot_buckets(agg, names, os.path.join(out, figures["buckets"]), f"{dataset}: AUC by item popularity{suffix}")
    plot_cost(agg, names, os.path.join(out, figures["cost"]), f"{dataset}: training cost vs AUC{suffix}")
    plot_stages(agg, names, os.path.join(out, figures["stages"]), f"{dataset}: CELA stage times vs DIN{suffix}")
    atomic_write_json(os.path.join(out, f"{dataset}.json"), report)
    atomic_write_text(os.path.join(out, f"{dataset}.md"), render_markdown(report, names, figures))
    return report


# --------------------------------------------------------------------------------------- main
def run_benchmark(dataset, names, seeds, out, quick=False, extra_args=(), resume=False,
                  command="", data_dir=None, data_settings=None, timeout=None, log=print, report_only=False,
                  references=()):
    """Run (or reuse) every (variant, seed) and write the report; returns the report dict.

    ``report_only``: run nothing; the report is made of the finished runs (as with ``resume``)
    and lists the (variant, seed) pairs that have none as not run.
    """
    resume = resume or report_only
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    extra_args = list(extra_args)
    runs_dir = os.path.join(out, "runs", dataset)
    dataset_cfg = dataset_yaml(dataset)
    if data_dir is None:
        need_files = any(VARIANTS[n]["model"] is None for n in names)
        data_dir, data_settings = resolve_data(dataset, extra_args, prepare=need_files)
    data_settings = data_settings or {"item_field": "item_id", "label_field": "label", "buckets": [5, 20]}
    pairs = plan(names, seeds)
    todo, reused = pending(pairs, runs_dir, dataset, resume, quick, extra_args, None, dataset_cfg, log)
    log(f"benchmark {dataset}: {len(pairs)} runs ({len(reused)} reused), output {out}")
    records = []
    for index, (name, seed) in enumerate(pairs, 1):
        if (name, seed) in reused:
            path, result = reused[(name, seed)]
            record = {"variant": name, "seed": seed, "status": "ok", "reused": True,
                      "result_file": path, "elapsed_s": result.get("fit_time_s"), "result": result}
        elif VARIANTS[name]["model"] is None:
            start = time.time()
            try:
                result = pop_result(data_dir, dataset, **data_settings)
                record = {"variant": name, "seed": None, "status": "ok", "reused": False, "result": result}
            except Exception as error:
                record = {"variant": name, "seed": None, "status": "failed", "error_tail": repr(error)}
            record["elapsed_s"] = time.time() - start
        else:
            # Checked again just before running: another benchmark process may have finished it.
            path, result = (finished_result(run_folder(runs_dir, name, seed),
                                            run_args(name, dataset, seed, quick, extra_args, None, dataset_cfg))
                            if resume else (None, None))
            if result is not None:
                record = {"variant": name, "seed": seed, "status": "ok", "reused": True,
                          "result_file": path, "elapsed_s": result.get("fit_time_s"), "result": result}
            elif report_only:
                record = {"variant": name, "seed": seed, "status": "not run", "reused": False}
            else:
                record = run_one(name, seed, dataset, runs_dir, quick, extra_args, None, dataset_cfg, timeout)
        records.append(record)
        log(progress_line(index, len(pairs), record))
    settings = {"models": list(names), "seeds": list(seeds), "quick": quick,
                "extra_args": extra_args, "resume": resume, "report_only": report_only}
    counts = split_counts(data_dir, dataset, data_settings["item_field"], data_settings["label_field"])
    report = write_report(out, dataset, names, records, settings, command, counts, references)
    log(f"report: {os.path.join(out, dataset + '.md')}")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default=",".join(default_variants()),
                        help=f"comma list of variants (known: {', '.join(VARIANTS)})")
    parser.add_argument("--seeds", type=int, default=3, help=f"number of seeds ({FIRST_SEED}, ...)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 1 seed, " + " ".join(QUICK_ARGS))
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--extra", default="", help='extra runner args, e.g. "--gpu_id=0 --epochs=20"')
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs in <out>/runs/<dataset>/ with the same arguments")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write the report from the finished runs (as --resume) and list the missing ones")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default none)")
    parser.add_argument("--references", default="",
                        help="comma list of CELA variants the report compares with every row (default: CELA); "
                             "the first also with DIN, each further one with its own backbone's ID-only row")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    refs = [r.strip() for r in args.references.split(",") if r.strip()]
    if [r for r in refs if r not in names]:
        sys.exit(f"error: --references must be among --models, not {[r for r in refs if r not in names]}")
    seeds = [FIRST_SEED + i for i in range(1 if args.quick else args.seeds)]
    extra = shlex.split(args.extra)
    bad = [a for a in extra if not a.startswith("--") or "=" not in a]
    if bad:
        sys.exit(f"error: --extra takes --key=value arguments only, not {bad}")
    if "Pop" in names:  # the reference baseline comes first in every table
        names = ["Pop"] + [n for n in names if n != "Pop"]
    command = "python -m recbole_cela.benchmark " + shlex.join(argv)
    from recbole_cela.utils import PluginConfigError

    try:
        run_benchmark(args.dataset, names, seeds, args.out, args.quick, extra, args.resume,
                      command=command, timeout=args.timeout, log=lambda line: print(line, flush=True),
                      report_only=args.report_only, references=refs)
    except PluginConfigError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

"""The run queue: each (variant, seed) in its own runner process, in its own run folder.

A run folder is ``<runs_dir>/<variant>-s<seed>``: the runner's result JSON, its ``run.log``, and
``benchmark-run.json`` (this module's record of the run: its command, the CPU load other
processes put on the machine while it ran, and for a variant with ``backbone_from`` the run of
that row it took its backbone from). While a runner works there the folder holds ``running.lock``
(the runner's pid), so that two benchmark processes never run the same pair.

``--resume`` reuses the newest result in the folder whose recorded command is the one this
variant runs today (``comparable``; for ``backbone_from`` the checkpoint path may differ when the
run came from the same row, seed and run of it) and whose recorded defaults of
``props/<MODEL>.yaml`` are still today's (``stale_defaults``).
"""

import contextlib
import functools
import glob
import json
import os
import shlex
import subprocess
import sys
import time

from benchmarks import registry
from benchmarks.common import QUICK_ARGS, cpu_snapshot, get, merge_args, other_cores
from benchmarks.data import dataset_yaml, text_token_args

RUN_LOCK = "running.lock"  # in a run folder while a runner works there: holds the runner's pid
RUN_RECORD = "benchmark-run.json"  # the benchmark's record of the run (not a result)
CHECKPOINT_KEY = "--backbone_checkpoint"
FROM_ROW = "<from its backbone_from row>"  # stands for the checkpoint path when comparing commands


# ------------------------------------------------------------------------------ commands
def threads_per_job(jobs):
    """Torch threads for each of ``jobs`` runs at once, so that jobs x threads never exceeds the
    cores (more threads than cores make every run wait for the others)."""
    from recbole_cela.utils import usable_cores

    cores = usable_cores()
    if jobs < 1 or jobs > cores:
        raise ValueError(f"--jobs={jobs}: between 1 and the {cores} cores this process may use")
    return cores // jobs


def runner_command():
    """The runner as a module of the installed (or checked-out) library."""
    return [sys.executable, "-m", "recbole_cela"]


def run_args(name, dataset, seed, quick=False, extra_args=(), table=None, dataset_cfg=None, checkpoint=None):
    """The runner's arguments for one (variant, seed) of the benchmark of ``dataset``, without
    ``--results_dir``. A variant with ``backbone_from`` gets ``--backbone_checkpoint=<checkpoint>``
    (``FROM_ROW`` when unknown); one with ``dataset_suffix`` runs on ``<dataset><suffix>``."""
    spec = registry.spec(name, table)
    args = list(spec["args"])
    run_dataset = registry.dataset_of(name, dataset, table)
    if run_dataset != dataset:  # another dataset config: its own text fields
        dataset_cfg = dataset_yaml(run_dataset)
    if spec.get("text_tokens"):
        args += text_token_args(run_dataset, dataset_cfg)
    args = merge_args(args, QUICK_ARGS if quick else [], list(extra_args))
    if spec.get("backbone_from"):
        args = merge_args(args, [f"{CHECKPOINT_KEY}={checkpoint or FROM_ROW}"])
    return [
        f"--model={spec['model']}",
        f"--dataset={run_dataset}",
        *merge_args(args, [f"--seed={seed}", "--show_progress=False"]),
    ]


def comparable(argv, from_row=False):
    """A command's arguments as --resume compares them: unordered, without ``--results_dir``,
    and with ``from_row`` the backbone checkpoint's path replaced by ``FROM_ROW``."""
    out = []
    for a in argv:
        if a.startswith(("--results_dir=", "--threads=")):  # where and how fast, not what it computes
            continue
        if from_row and a.startswith(CHECKPOINT_KEY + "="):
            a = f"{CHECKPOINT_KEY}={FROM_ROW}"
        out.append(a)
    return sorted(out)


def run_folder(runs_dir, name, seed):
    return os.path.join(runs_dir, f"{name}-s{seed}")


def read_run_record(folder):
    """The benchmark's record of the run in ``folder`` ({} when none)."""
    try:
        with open(os.path.join(folder, RUN_RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------------- resume
def stale_defaults(result, args, accept=()):
    """Keys of ``props/<MODEL>.yaml`` whose default changed since ``result`` ran: the run recorded
    another value and ``args`` do not set the key, so the same command now runs something else;
    for a run over a backbone (CELA), also the backbone's own settings that resolve otherwise today.
    Today's values are what the same command resolves (``recbole_cela.config.run_settings``: the
    props, the dataset config and the command's ``--config_files``, then a ~ or auto default
    decided, e.g. text_pooling by the encoder's architecture). A key the run did not record did not
    exist yet: it ran what is now that key's default. Keys in ``accept`` are not checked (the report
    says which runs were reused that way). A command that no longer resolves today (a setting now
    refused) is compared with nothing: running it again would fail."""
    from recbole_cela.utils import props_keys

    own = props_keys(result.get("model") or "")
    recorded = result.get("config") or {}
    if not own:
        return []
    # The dataset as the command names it today (a run may have recorded a dataset's former name).
    dataset = next((a.split("=", 1)[1] for a in args if a.startswith("--dataset=")), result.get("dataset") or "")
    now = _resolved_settings(result.get("model"), dataset, tuple(args))
    if now is None:
        return []
    skip = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")} | set(accept)
    stale = [k for k in own if k in recorded and k not in skip and recorded[k] != now.get(k)]
    if recorded.get("backbone"):  # the backbone's own settings (RecBole's and props/<BACKBONE>.yaml) moved too
        stale += [k for k in now if k not in own and k in recorded and k not in skip and k not in _NOT_RESOLVING
                  and recorded[k] != now[k]]
    return sorted(stale)


# Runner flags that are not settings, settings that decide nothing another setting defaults to
# (paths among them: a backbone_checkpoint from another machine), and what RecBole computes from
# the model type (``repeatable``), not a setting.
_NOT_RESOLVING = {"model", "dataset", "config_files", "nproc", "ip", "port", "world_size", "group_offset",
                  "seed", "results_dir", "show_progress", "backbone_checkpoint", "repeatable"}


def _resolved_settings(model, dataset, args):
    """The settings the runner resolves today for ``args`` (no data is read), or None when they
    cannot be resolved any more."""
    items = tuple(sorted(a for a in args if a.startswith("--") and "=" in a
                         and a[2:].split("=", 1)[0] not in _NOT_RESOLVING))
    files = tuple(f for a in args if a.startswith("--config_files=") for f in a.split("=", 1)[1].split())
    return _run_settings(model, dataset, files, items)


@functools.lru_cache(maxsize=None)
def _run_settings(model, dataset, files, items):
    from recbole_cela.config import run_settings
    from recbole_cela.utils import PluginError

    try:
        return run_settings(model, dataset, list(files) or None, items)
    except PluginError:
        return None


def _same_source(folder, source):
    """Whether the run in ``folder`` took its backbone from ``source`` = (variant, seed, result file
    name of that run); None: no requirement."""
    if source is None:
        return True
    came = read_run_record(folder).get("backbone_from") or {}
    return (came.get("variant"), came.get("seed"), came.get("result_file")) == tuple(source)


def finished_result(folder, args, log=None, source=None, accept=()):
    """The newest result JSON in ``folder`` written by a run with exactly ``args`` under the
    current props defaults (else (None, None); ``log`` is told why a candidate is not reused).
    ``source``: for a ``backbone_from`` variant, (row, seed, result file name) of the run its
    backbone must come from; the checkpoint path itself is not compared."""
    from_row = source is not None
    candidates = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        if os.path.basename(path) == RUN_RECORD:
            continue
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict) or not get(result, "test_result"):
            continue
        if comparable(list(result.get("argv") or [])[1:], from_row) != comparable(args, from_row):
            continue
        stale = stale_defaults(result, args, accept)
        if stale:
            if log:
                log(f"not reused: {path} ran other defaults of {', '.join(stale)} (props changed since)")
            continue
        if not _same_source(folder, source):
            if log:
                log(f"not reused: {path} took its backbone from another run than {source[0]} seed {source[1]}'s "
                    f"{source[2]}")
            continue
        candidates.append((os.path.getmtime(path), path, result))
    if not candidates:
        return None, None
    _, path, result = max(candidates, key=lambda c: c[0])
    return path, result


def plan(names, seeds, table=None):
    """(variant, seed) pairs in report order; Pop is seed-independent (one pair, seed None)."""
    pairs = []
    for name in names:
        if registry.model_of(name, table) is None:
            pairs.append((name, None))
        else:
            pairs += [(name, seed) for seed in seeds]
    return pairs


def execution_order(pairs, table=None):
    """``pairs`` with each (backbone_from row, seed) moved before the pairs that need it."""
    order, placed = [], set()

    def place(pair, chain=()):
        if pair in placed or pair not in pairs:
            return
        source = registry.backbone_source(pair[0], table)
        if source and pair not in chain:
            place((source, pair[1]), (*chain, pair))
        placed.add(pair)
        order.append(pair)

    for pair in pairs:
        place(pair)
    return order


def missing_sources(names, table=None):
    """Variants among ``names`` whose backbone_from row is not among them: {variant: row}."""
    out = {}
    for name in names:
        source = registry.backbone_source(name, table)
        if source and source not in names:
            out[name] = source
    return out


def source_of(name, seed, records, table=None):
    """(row, seed, result file name) of the finished run ``name`` takes its backbone from, else
    None; ``records``: {(variant, seed): record} of the pairs handled so far."""
    source = registry.backbone_source(name, table)
    record = records.get((source, seed)) or {}
    if record.get("status") != "ok" or not record.get("result_file"):
        return None
    return source, seed, os.path.basename(record["result_file"])


# ---------------------------------------------------------------------------------- locks
def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lock(path):
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


# ---------------------------------------------------------------------------------- running
def _tail(text, lines=40, chars=4000):
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def _start(command, folder, log_path, lock, timeout):
    """Run ``command`` (cwd: this process's working directory) with its output in ``log_path``;
    the lock file holds the runner's pid, which may outlive this process. Returns the exit code
    or "timeout"."""
    from recbole_cela.fileio import atomic_write

    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=os.getcwd(), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atomic_write(lock, str(proc.pid))
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "timeout"


def run_one(name, seed, dataset, runs_dir, quick=False, extra_args=(), table=None, dataset_cfg=None,
            timeout=None, source=None, checkpoint=None, threads=None, jobs=1):
    """Run the runner for one (variant, seed) in a subprocess; a run record (never raises).
    ``source``/``checkpoint``: for a ``backbone_from`` variant, the run it takes its backbone
    from ((row, seed, result file name)) and that run's checkpoint. ``threads``: the runner's torch
    threads (its ``--threads``), ``jobs``: how many runs the benchmark runs at once (recorded)."""
    from recbole_cela.fileio import atomic_write_json
    from recbole_cela.utils import usable_cores

    folder = os.path.abspath(run_folder(runs_dir, name, seed))
    os.makedirs(folder, exist_ok=True)
    record = {"variant": name, "seed": seed, "folder": folder, "reused": False}
    try:
        args = run_args(name, dataset, seed, quick, extra_args, table, dataset_cfg, checkpoint)
    except Exception as error:  # e.g. a dataset config without text fields
        record.update(status="failed", returncode=None, elapsed_s=0.0, error_tail=repr(error))
        return record
    command = [*runner_command(), *args, f"--results_dir={folder}"] + ([f"--threads={threads}"] if threads else [])
    record["command"] = shlex.join(command)
    lock = os.path.join(folder, RUN_LOCK)
    owner = take_lock(lock)
    if owner:  # another benchmark process is running this very (variant, seed): never run it twice
        record.update(status="not run", elapsed_s=0.0, error_tail=f"being run by process {owner} ({lock})")
        return record
    log_path = os.path.join(folder, "run.log")
    before = set(glob.glob(os.path.join(folder, "*.json")))
    cpu_before, start = cpu_snapshot(), time.time()
    try:
        returncode = _start(command, folder, log_path, lock, timeout)
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
    record["elapsed_s"] = time.time() - start
    record["other_cpu_cores"] = other_cores(cpu_before, cpu_snapshot(), record["elapsed_s"])
    record["returncode"] = returncode
    record["log_file"] = log_path
    with open(log_path, errors="replace") as f:
        log_text = f.read()
    new = sorted(set(glob.glob(os.path.join(folder, "*.json"))) - before - {os.path.join(folder, RUN_RECORD)},
                 key=os.path.getmtime)
    if returncode == 0 and new:
        with open(new[-1]) as f:
            record.update(status="ok", result_file=new[-1], result=json.load(f))
    else:
        reason = f"timed out after {timeout}s" if returncode == "timeout" else f"exit code {returncode}"
        if returncode == 0:
            reason = "exit code 0 but no result JSON"
        record.update(status="failed", error_tail=f"[{reason}]\n{_tail(log_text)}")
    came = None if source is None else dict(zip(("variant", "seed", "result_file"), source), checkpoint=checkpoint)
    atomic_write_json(os.path.join(folder, RUN_RECORD), {
        "variant": name, "seed": seed, "command": record["command"], "status": record["status"],
        "result_file": os.path.basename(record.get("result_file") or "") or None,
        "elapsed_s": record["elapsed_s"], "other_cpu_cores": record["other_cpu_cores"], "backbone_from": came,
        "jobs": jobs, "threads": threads, "cores": usable_cores()})
    return record


def reused_record(name, seed, path, result):
    """The record of a finished run taken over by --resume (with its recorded load, if any)."""
    meta = read_run_record(os.path.dirname(path))
    record = {"variant": name, "seed": seed, "status": "ok", "reused": True,
              "result_file": path, "elapsed_s": result.get("fit_time_s"), "result": result}
    if meta.get("other_cpu_cores") is not None and meta.get("result_file") == os.path.basename(path):
        record["other_cpu_cores"] = meta["other_cpu_cores"]
    if meta.get("backbone_from") and meta.get("result_file") == os.path.basename(path):
        record["backbone_from"] = meta["backbone_from"]
    return record


def progress_line(index, total, record):
    seed = "-" if record["seed"] is None else record["seed"]
    head = f"[{index:>{len(str(total))}}/{total}] {record['variant']:<18} seed {seed!s:<5}"
    elapsed = f"{record.get('elapsed_s') or 0:7.1f}s"
    if record["status"] == "not run":
        return f"{head} not run ({record.get('error_tail') or 'no finished run; --report_only'})"
    if record["status"] == "ok":
        auc = get(record, "result", "test_result", "auc")
        state = "reused" if record.get("reused") else "ok"
        auc = "n/a" if auc is None else f"{auc:.4f}"
        return f"{head} {state:<7} {elapsed}  test AUC {auc}"
    last = (record.get("error_tail") or "").strip().splitlines()[-1:] or [""]
    return f"{head} FAILED  {elapsed}  {last[0][:120]}"

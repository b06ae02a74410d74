r"""Benchmark: every variant x seed through the runner, one report per dataset.

    python -m benchmarks [--dataset=ml-100k] [--models=Pop,DIN,CELA] [--seeds=3] [--quick]
        [--out=docs/benchmarks] [--runs_dir=<out>/runs] [--extra="--key=value ..."] [--resume]
        [--report_only] [--references=CELA,...] [--accept_stale=KEY,...] [--timeout=S] [--jobs=1]

Run it from the directory whose relative paths the dataset configs mean (the repository root for
the bundled ones): each (variant, seed) runs ``python -m recbole_cela`` there, in its own process,
with ``--seed=S --results_dir=<runs_dir>/<dataset>/<variant>-s<S> --show_progress=False``
(``benchmarks/runs.py``). A failed run is recorded (with the end of its log) in the report; the
benchmark goes on. ``Pop`` is not learned: it is scored here from the benchmark files.
``--resume`` reuses every finished run of the same command under today's props defaults;
``--report_only`` runs nothing and writes the report from the finished runs. ``--jobs=J`` runs J
at a time, each runner with ``--threads`` = cores // J, so the runs never ask for more threads
than there are cores (``benchmark-run.json`` records both). The rows are the
variants of ``benchmarks/variants.yaml``.

Outputs: ``<out>/<dataset>.json`` (raw results and aggregates), ``<out>/<dataset>.md`` and the
PNGs ``<out>/<dataset>-{auc,buckets,cost,stages}.png`` it embeds.
"""

import argparse
import itertools
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks import registry, runs
from benchmarks.common import FIRST_SEED, QUICK_ARGS
from benchmarks.data import dataset_yaml, pop_result, resolve_data, split_counts
from benchmarks.report import write_report

DEFAULT_DATA_SETTINGS = {"item_field": "item_id", "label_field": "label", "buckets": [5, 20]}


class Queue:
    """One benchmark's (variant, seed) pairs, handled in execution order (a ``backbone_from`` row
    before the rows that take their backbone from it); ``records`` keeps each pair's record."""

    def __init__(self, dataset, runs_dir, quick, extra_args, resume, report_only, timeout, accept, log, jobs=1):
        self.dataset, self.runs_dir, self.quick, self.extra_args = dataset, runs_dir, quick, list(extra_args)
        self.jobs, self.threads = jobs, runs.threads_per_job(jobs)
        self.resume, self.report_only, self.timeout, self.accept, self.log = \
            resume or report_only, report_only, timeout, tuple(accept), log
        self.dataset_cfg = dataset_yaml(dataset)
        self.records = {}

    def args(self, name, seed, checkpoint=None):
        return runs.run_args(name, self.dataset, seed, self.quick, self.extra_args, None, self.dataset_cfg, checkpoint)

    def finished(self, name, seed, source=None, log=None):
        """(path, result) of a reusable finished run of the pair, else (None, None)."""
        if not self.resume:
            return None, None
        return runs.finished_result(runs.run_folder(self.runs_dir, name, seed), self.args(name, seed),
                                    log, source, self.accept)

    def reused(self, name, seed, path, result):
        record = runs.reused_record(name, seed, path, result)
        if self.accept:
            record["accepted_defaults"] = runs.stale_defaults(result, self.args(name, seed))
        return record

    def pop(self, data_dir, data_settings):
        start = time.time()
        try:
            record = {"variant": "Pop", "seed": None, "status": "ok", "reused": False,
                      "result": pop_result(data_dir, self.dataset, **data_settings)}
        except Exception as error:
            record = {"variant": "Pop", "seed": None, "status": "failed", "error_tail": repr(error)}
        record["elapsed_s"] = time.time() - start
        return record

    def learned(self, name, seed):
        """The record of a learned pair: reused, not run (--report_only), or run now."""
        source = None
        if registry.backbone_source(name):
            source = runs.source_of(name, seed, self.records)
            if source is None:
                row = registry.backbone_source(name)
                status = "not run" if self.report_only else "failed"
                return {"variant": name, "seed": seed, "status": status, "reused": False, "elapsed_s": 0.0,
                        "error_tail": f"{row} seed {seed} has no finished run to take the backbone from"}
        # Checked just before running: another benchmark process may have finished it.
        path, result = self.finished(name, seed, source)
        if result is not None:
            return self.reused(name, seed, path, result)
        if self.report_only:
            return {"variant": name, "seed": seed, "status": "not run", "reused": False}
        checkpoint = None
        if source is not None:
            checkpoint = self.records[(source[0], seed)]["result"].get("checkpoint")
            if not checkpoint or not os.path.isfile(checkpoint):
                return {"variant": name, "seed": seed, "status": "failed", "reused": False, "elapsed_s": 0.0,
                        "error_tail": f"the checkpoint of {source[0]} seed {seed} ({checkpoint}) does not exist "
                                      f"(saved/ of another machine or cleaned): run {source[0]} seed {seed} again "
                                      f"(move its result JSON out of its run folder)"}
        return runs.run_one(name, seed, self.dataset, self.runs_dir, self.quick, self.extra_args, None,
                            self.dataset_cfg, self.timeout, source, checkpoint, self.threads, self.jobs)

    def count_reusable(self, pairs):
        """How many pairs --resume will reuse, for the first log line (decided again per pair: a
        ``backbone_from`` row is counted by the run of its source row it recorded)."""
        done = 0
        for name, seed in pairs:
            if registry.model_of(name) is None:
                continue
            source = None
            if registry.backbone_source(name):
                came = runs.read_run_record(runs.run_folder(self.runs_dir, name, seed)).get("backbone_from") or {}
                source = (came.get("variant"), came.get("seed"), came.get("result_file"))
            done += self.finished(name, seed, source, self.log)[1] is not None
        return done


def run_benchmark(dataset, names, seeds, out, quick=False, extra_args=(), resume=False, command="", data_dir=None,
                  data_settings=None, timeout=None, log=print, report_only=False, references=(), accept=(),
                  runs_dir=None, jobs=1):
    """Run (or reuse) every (variant, seed) and write the report; returns the report dict.

    ``report_only``: run nothing; the report is made of the finished runs (as with ``resume``)
    and lists the (variant, seed) pairs that have none as not run. ``runs_dir``: the folder of
    the datasets' run folders (default ``<out>/runs``). ``accept``: props keys whose changed
    default does not make a finished run stale (the report lists the runs reused that way).
    ``jobs``: runs at once, each with its share of the cores as torch threads; a row that takes
    its backbone from another waits for that run.
    """
    unknown = [n for n in names if n not in registry.variants()]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown}; known: {', '.join(registry.variants())}")
    missing = runs.missing_sources(names)
    if missing:
        raise ValueError("; ".join(f"{n} takes its backbone from {s}: add {s} to the models" for n, s in missing.items()))
    runs_dir = os.path.join(runs_dir or os.path.join(out, "runs"), dataset)
    queue = Queue(dataset, runs_dir, quick, extra_args, resume, report_only, timeout, accept, log, jobs)
    if data_dir is None:
        need_files = any(registry.model_of(n) is None for n in names)
        data_dir, data_settings = resolve_data(dataset, queue.extra_args, prepare=need_files)
    data_settings = data_settings or DEFAULT_DATA_SETTINGS
    pairs = runs.plan(names, seeds)
    order = runs.execution_order(pairs)
    log(f"benchmark {dataset}: {len(pairs)} runs ({queue.count_reusable(pairs) if queue.resume else 0} reused), "
        f"{jobs} at a time with {queue.threads} thread(s) each, output {out}")
    done = itertools.count(1)

    def one(name, seed, waits_for=None):
        if waits_for is not None:
            waits_for.result()  # the run this row takes its backbone from
        if registry.model_of(name) is None:
            record = queue.pop(data_dir, data_settings)
        else:
            record = queue.learned(name, seed)
        queue.records[(name, seed)] = record
        log(runs.progress_line(next(done), len(order), record))

    # Sources come before the rows that read them in ``order``, so a waiting row's source has
    # already started: the pool never waits on work it has not begun.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for name, seed in order:
            source = registry.backbone_source(name)
            futures[(name, seed)] = pool.submit(one, name, seed, futures.get((source, seed)))
        for future in futures.values():
            future.result()
    records = [queue.records[pair] for pair in pairs]
    settings = {"models": list(names), "seeds": list(seeds), "quick": quick,
                "extra_args": queue.extra_args, "resume": queue.resume, "report_only": report_only}
    counts = split_counts(data_dir, dataset, data_settings["item_field"], data_settings["label_field"])
    report = write_report(out, dataset, names, records, settings, command, counts, references)
    log(f"report: {os.path.join(out, dataset + '.md')}")
    return report


def parse_args(argv=None):
    known = ", ".join(registry.variants())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default=",".join(registry.default_variants()),
                        help=f"comma list of variants (known: {known})")
    parser.add_argument("--seeds", type=int, default=3, help=f"number of seeds ({FIRST_SEED}, ...)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 seed, " + " ".join(QUICK_ARGS))
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--runs_dir", default=None, help="folder of the run folders (default <out>/runs)")
    parser.add_argument("--extra", default="", help='extra runner args, e.g. "--gpu_id=0 --epochs=20"')
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs in <runs_dir>/<dataset>/ with the same arguments")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write the report from the finished runs (as --resume) and list the missing ones")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once; each gets cores // jobs torch threads (recorded in benchmark-run.json)")
    parser.add_argument("--references", default="",
                        help="comma list of CELA variants the report compares with every row (default: CELA); "
                             "the first also with DIN, each further one with its own backbone's ID-only row")
    parser.add_argument("--accept_stale", default="",
                        help="comma list of props keys whose changed default does not make a finished run "
                             "stale (the report lists the runs reused that way)")
    return parser.parse_args(argv)


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    names, refs = _names(args.models), _names(args.references)
    unknown = [n for n in names if n not in registry.variants()]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(registry.variants())}")
    if [r for r in refs if r not in names]:
        sys.exit(f"error: --references must be among --models, not {[r for r in refs if r not in names]}")
    missing = runs.missing_sources(names)
    if missing:
        sys.exit("error: " + "; ".join(f"{n} takes its backbone from {s}: add {s} to --models"
                                       for n, s in missing.items()))
    try:
        runs.threads_per_job(args.jobs)
    except ValueError as error:
        sys.exit(f"error: {error}")
    from recbole_cela.utils import dataset_config_file

    other = {n: registry.dataset_of(n, args.dataset) for n in names if registry.dataset_of(n, args.dataset) != args.dataset}
    absent = sorted({d for d in other.values() if dataset_config_file(d) is None})
    if absent:
        sys.exit(f"error: {', '.join(n for n, d in other.items() if d in absent)} run on "
                 f"{', '.join(absent)}: no dataset_configs/{absent[0]}.yaml (leave those rows out for this dataset)")
    seeds = [FIRST_SEED + i for i in range(1 if args.quick else args.seeds)]
    extra = shlex.split(args.extra)
    bad = [a for a in extra if not a.startswith("--") or "=" not in a]
    if bad:
        sys.exit(f"error: --extra takes --key=value arguments only, not {bad}")
    if "Pop" in names:  # the reference baseline comes first in every table
        names = ["Pop"] + [n for n in names if n != "Pop"]
    from recbole_cela.utils import PluginConfigError

    try:
        run_benchmark(args.dataset, names, seeds, args.out, args.quick, extra, args.resume,
                      command="python -m benchmarks " + shlex.join(argv), timeout=args.timeout,
                      log=lambda line: print(line, flush=True), report_only=args.report_only, references=refs,
                      accept=_names(args.accept_stale), runs_dir=args.runs_dir, jobs=args.jobs)
    except PluginConfigError as error:
        sys.exit(f"error: {error}")

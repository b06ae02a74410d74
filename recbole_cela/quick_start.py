"""The plugin's runner: RecBole's ``run_recbole`` flow, for RecBole's and the plugin's models.

``recbole.quick_start`` cannot be imported on numpy 2 (it imports an old ``ray``), so this module
rebuilds its flow from RecBole's own parts: ``Config`` -> ``create_dataset`` ->
``data_preparation`` -> model -> trainer ``fit`` / ``evaluate``. On top of RecBole it

* loads ``props/<MODEL>.yaml`` and ``dataset_configs/<DATASET>.yaml`` when present (before the
  user's ``--config_files`` and ``--key=value`` overrides, which RecBole reads from ``sys.argv``);
* converts the raw data into RecBole benchmark files once (``recbole_cela.data``);
* writes a JSON result (metrics, wall times, throughput, peak memory, AUC per item-popularity
  bucket, resolved config, the checkpoint it belongs to) to ``results_dir``;
* names each run's checkpoint and result file uniquely (:func:`run_id`);
* checks every setting (:mod:`recbole_cela.settings`) and every place it writes
  (:func:`check_output_folders`) before any work, and reports a known error
  (:class:`~recbole_cela.utils.PluginError`) as one ``error:`` block without a traceback.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from logging import getLogger

import psutil
import torch
import torch.distributed as dist
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_environment, get_local_time, init_logger, set_color

import recbole_cela  # noqa: F401  (applies the compatibility fixes)
from recbole_cela.checkpoints import run_record
from recbole_cela.compat import plain
from recbole_cela.config import build_config, unknown_keys_message
from recbole_cela.data import prepare_from_config
from recbole_cela.distributed import all_gather_object, barrier, broadcast_object
from recbole_cela.evaluation import RecordedPredictions, auc_by_popularity, item_popularity, overall_auc
from recbole_cela.fileio import atomic_write_json, unwritable
from recbole_cela.model import build_model, get_model
from recbole_cela.model.layers import uses_fast_layers
from recbole_cela.model.protocol import plugin_protocol
from recbole_cela.trainer import get_trainer
from recbole_cela.utils import (
    PluginConfigError,
    PluginError,
    init_seed,
    interrupted_in,
    interrupted_message,
    set_threads,
)

__all__ = ["build_config", "main", "run", "run_recbole_cela"]

EXIT_INTERRUPTED = 130  # a shell's status for a command stopped by Ctrl-C (128 + SIGINT)
INTERRUPT_GRACE_S = 5  # --nproc: how long the parent waits for Ctrl-C to end its processes before passing it on
INTERRUPT_WAIT_S = 30  # then how long it waits for each before terminating it


def _peak_rss_mb():
    # ru_maxrss is the peak resident set of this process, in KiB on Linux.
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_id():
    """``<local time>-<8 hex digits>``: the second RecBole names a checkpoint by, plus a random
    part, so that runs started in the same second, in one or several processes or on machines
    sharing ``checkpoint_dir``, never share a checkpoint (``<MODEL>-<run id>.pth``) or a result
    file (``<MODEL>-<DATASET>-<run id>.json``)."""
    return f"{get_local_time()}-{uuid.uuid4().hex[:8]}"


class ResultWriteError(PluginError):
    """The result could not be written to ``results_dir`` at the end of a run; the message says
    where it was written instead (``path``)."""


def output_folders(config):
    """{what: folder} of every place a run writes: results, checkpoints, the stage cache of a
    staged model, the converted data (unless already converted), RecBole's logs."""
    folders = {"results_dir": config["results_dir"] or "results", "checkpoint_dir": config["checkpoint_dir"]}
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if hasattr(trainer_class, "cache_root"):
        folders[trainer_class.artifact_dir_key] = trainer_class.cache_root(config)
    stamp = os.path.join(config["data_path"], f"{config['dataset']}.prep.json")
    if config["source_format"] and not os.path.isfile(stamp):
        folders["data_path"] = config["data_path"]
    # RecBole's init_logger and its trainer's TensorBoard writer use fixed folders of the working directory.
    folders["RecBole's log folder"] = os.path.join("log", config["model"])
    folders["RecBole's TensorBoard folder"] = "log_tensorboard"
    return folders


def check_output_folders(config):
    """Raise :class:`PluginConfigError` naming every place of :func:`output_folders` that cannot be
    written (each is tried: created if missing, a file written and removed), before any work."""
    refused = [f"{what} '{folder}': {why}" for what, folder in output_folders(config).items()
               if (why := unwritable(folder))]
    if refused:
        raise PluginConfigError(
            "this run cannot write where it would write its output:\n  " + "\n  ".join(refused)
            + "\nSet each to a folder this user can write (RecBole's log folders: run from such a folder). "
            "Nothing was read or trained."
        )


def write_result(result, config, run):
    """Write the result JSON to ``results_dir``; if that fails (disk full, a folder that changed
    since the run started), beside the checkpoint or in the temporary folder, then raise
    :class:`ResultWriteError` saying where it is (the last resort: the JSON in the message)."""
    name = f"{config['model']}-{config['dataset']}-{run}.json"
    path = os.path.join(config["results_dir"] or "results", name)
    try:
        return atomic_write_json(path, result)
    except OSError as error:
        failure = f"cannot write the result to '{path}' ({error.strerror or error})"
    for folder in (config["checkpoint_dir"], tempfile.gettempdir()):
        try:
            fallback = atomic_write_json(os.path.join(folder, name), result)
        except OSError:
            continue
        error = ResultWriteError(f"{failure}: it is saved at '{fallback}' instead. Check results_dir.")
        error.path = fallback
        raise error
    raise ResultWriteError(f"{failure}, nor beside the checkpoint or in the temporary folder; the result:\n"
                           + json.dumps(result, indent=2, default=str))


def _test(trainer, config, train_data, test_data, saved):
    """RecBole's test evaluation, timed, and from the same scoring pass the test AUC per item
    popularity bucket and over all samples: (test_result, seconds, buckets, overall AUC)."""
    start = time.time()
    with RecordedPredictions(trainer.model, config) as record:  # one scoring pass serves both
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_time = time.time() - start
    popularity = item_popularity(train_data.dataset, config["ITEM_ID_FIELD"], config["LABEL_FIELD"])
    scores, labels, items = record.arrays()
    if not config["single_spec"]:
        # Under DDP each process scores its shard of the test set (RecBole's test_result is the
        # mean of the shards' metrics); gather every prediction once, by sample index.
        index = list(test_data.sampler)
        shards = all_gather_object((index, scores, labels, items))
        scores, labels, items = gather_by_index(shards, len(test_data.dataset))
    buckets = auc_by_popularity(scores, labels, items, popularity, config["popularity_buckets"])
    return test_result, eval_time, buckets, overall_auc(scores, labels)


def run_recbole_cela(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
):
    """Train and test one model on one dataset; return (and write) the result dict."""
    model_class, config = build_config(model, dataset, config_file_list, config_dict)
    check_output_folders(config)
    threads = set_threads(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    if config.unknown_keys:
        logger.warning(unknown_keys_message(config.unknown_keys) + "; passed on as given (unknown_keys: error "
                       "refuses it)")

    # Raw data -> RecBole benchmark files, once (rank 0 writes, the others wait for it).
    with interrupted_in("the data conversion"):
        if config["local_rank"] == 0 or config["single_spec"]:
            prepare_from_config(config, logger)
        if not config["single_spec"]:
            dist.barrier()

    with interrupted_in("loading the data"):
        dataset = create_dataset(config)
        logger.info(dataset)
        train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = build_model(model_class, config, train_data._dataset).to(config["device"])
    logger.info(model)
    # RecBole's Trainer creates checkpoint_dir unless it exists: every rank at once races there.
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.checkpoint_record = {**getattr(trainer, "checkpoint_record", {}), **run_record(config, train_data.dataset)}
    # RecBole names the checkpoint by the second a run starts in, so two runs started together
    # would share one file; every rank loads rank 0's checkpoint, so rank 0 draws the name.
    run = broadcast_object(run_id())
    trainer.saved_model_file = os.path.join(config["checkpoint_dir"], f"{config['model']}-{run}.pth")

    start = time.time()
    # A staged model's stages name themselves; its finished stages are kept for a rerun.
    cache = getattr(trainer, "cache", None)
    with interrupted_in("the final training" if cache else "training", cache.root if cache else None):
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
        barrier()  # rank 0 has written the best checkpoint before any rank loads it
    fit_time = time.time() - start

    with interrupted_in("testing", cache.root if cache else None):
        test_result, eval_time, buckets, test_auc_all = _test(trainer, config, train_data, test_data, saved)
    n_test = len(test_data.dataset)

    logger.info(
        "The running environment of this training is as follows:\n"
        + get_environment(config).draw()
    )
    best_valid_result, test_result = plain(dict(best_valid_result or {})), plain(dict(test_result or {}))
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")  # plain numbers, not np.float64(...)
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    logger.info(set_color("test AUC by item popularity", "yellow") + f": {buckets}")

    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "test_auc_by_popularity": buckets,
        "test_auc_all_samples": test_auc_all,
        "world_size": 1 if config["single_spec"] else config["world_size"],
        "fit_time_s": fit_time,
        "eval_time_s": eval_time,
        "eval_samples_per_s": n_test / eval_time if eval_time > 0 else None,
        "peak_rss_mb": _peak_rss_mb(),
        "n_params": sum(p.numel() for p in trainer.model.parameters()),
        "checkpoint": os.path.abspath(trainer.saved_model_file) if saved else None,
        "stages": getattr(trainer, "stage_report", None),
        "device": str(config["device"]),
        "torch": torch.__version__,
        "cpu_count": psutil.cpu_count(),
        "threads": threads,
        "fast_layers": uses_fast_layers(trainer.model),
        "argv": sys.argv,
        "config": plain(config.final_config_dict),
    }
    failure = None
    if config["local_rank"] == 0:
        try:
            path = write_result(result, config, run)
            logger.info(set_color("result written to", "blue") + f": {path}")
        except ResultWriteError as error:  # raised once every process has finished
            failure = error
    if not config["single_spec"]:
        dist.destroy_process_group()
    if failure is not None:
        raise failure
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def gather_by_index(shards, n):
    """(scores, labels, items) of all ``n`` samples from per-rank ``(index, scores, labels,
    items)``; DistributedSampler pads the shards with repeated samples, which are dropped."""
    import numpy as np

    out = [np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)]
    seen = np.zeros(n, dtype=bool)
    for index, *values in shards:
        index = np.asarray(index, dtype=np.int64)
        for target, value in zip(out, values):
            target[index] = value
        seen[index] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} test samples were scored by no process")
    return tuple(out)


def _run_rank(rank, model, dataset, config_file_list, kwargs):
    kwargs["config_dict"]["local_rank"] = rank
    try:
        run_recbole_cela(model, dataset, config_file_list, **kwargs)
    except PluginError as error:
        # A known error ends this process without a traceback; run() raises it in the parent.
        kwargs["queue"].put(error)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:  # Ctrl-C reaches every process: the parent says where
        kwargs["queue"].put(("interrupted", getattr(interrupt, "stage", "setup"), getattr(interrupt, "kept", None)))
        sys.exit(EXIT_INTERRUPTED)


def _drain(queue):
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Single process, or ``nproc`` processes per machine exactly as RecBole's ``run`` spawns."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_cela(model, dataset, config_file_list, config_dict, saved)
    not_distributed = plugin_protocol(get_model(model)).not_distributed
    if not_distributed:  # refused before any process starts or any data is read
        raise PluginConfigError(not_distributed)
    # every setting and output folder, before any process starts
    check_output_folders(build_config(model, dataset, config_file_list, dict(config_dict or {}))[1])
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {
            "world_size": nproc if world_size == -1 else world_size,
            "ip": ip,
            "port": port,
            "nproc": nproc,
            "offset": group_offset,
        }
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    context = mp.start_processes(_run_rank, args=(model, dataset, config_file_list, kwargs), nprocs=nproc,
                                 join=False, start_method="spawn")
    try:
        while not context.join():
            pass
    except (KeyboardInterrupt, mp.ProcessExitedException) as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        if interrupted:
            # Ctrl-C in a terminal interrupts every process; a SIGINT sent to this one alone is passed
            # on. Each says where it stopped, then ends.
            deadline = time.time() + INTERRUPT_GRACE_S
            for process in context.processes:
                process.join(max(0.0, deadline - time.time()))
                if process.is_alive():
                    os.kill(process.pid, signal.SIGINT)
            for process in context.processes:
                process.join(INTERRUPT_WAIT_S)
                if process.is_alive():
                    process.terminate()
        items = _drain(queue)
        known = [item for item in items if isinstance(item, PluginError)]
        if known and not interrupted:  # the first known error of any process, as a single process reports it
            raise known[0] from None
        stops = [item for item in items if isinstance(item, tuple) and item[0] == "interrupted"]
        if stops or interrupted:
            interrupt = error if interrupted else KeyboardInterrupt()
            if not hasattr(interrupt, "stage"):
                interrupt.stage, interrupt.kept = stops[0][1:] if stops else ("the worker processes", None)
            raise interrupt from None
        raise
    results = [item for item in _drain(queue) if isinstance(item, dict)]
    return results[0] if results else None


def parse_args(argv=None):
    """RecBole's ``run_recbole.py`` flags; any other ``--key=value`` is read by ``Config``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default="CELA", help="name of models")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of datasets")
    parser.add_argument("--config_files", type=str, default=None, help="config files")
    parser.add_argument("--nproc", type=int, default=1, help="the number of process in this group")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run(
            args.model,
            args.dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except PluginError as error:  # known and fixable: its message alone; anything else keeps its traceback
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as interrupt:  # Ctrl-C: where it stopped and what a rerun reuses, no traceback
        sys.stderr.write(interrupted_message(interrupt) + "\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()

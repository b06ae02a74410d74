"""Small pieces every layer of the plugin uses: its error types, where Ctrl-C stopped a run,
config-file lookup, seeding. Nothing here imports the plugin's models or trainers."""

import contextlib
import functools
import importlib
import os


class PluginError(ValueError):
    """A known problem the user can fix (a setting, an input file, an encoder folder), whose message
    says what was wrong and what to do: the plugin's commands print it as one ``error:`` block and
    exit with status 1, without a traceback. Every other exception keeps its traceback."""


class PluginConfigError(PluginError):
    """A model, dataset or config key the plugin cannot use, with what to do instead."""


@contextlib.contextmanager
def interrupted_in(stage, kept=None):
    """A Ctrl-C inside the block records on its ``KeyboardInterrupt`` which ``stage`` was running
    and ``kept``, the folder of finished stages a rerun reuses (None: nothing to resume), unless a
    block inside recorded its own: the runner's message names them (:func:`interrupted_message`)."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        if not hasattr(interrupt, "stage"):
            interrupt.stage, interrupt.kept = stage, kept
        raise


def interrupted_message(interrupt):
    """The one line a command prints when Ctrl-C stops it (see :func:`interrupted_in`)."""
    stage, kept = getattr(interrupt, "stage", "setup"), getattr(interrupt, "kept", None)
    if kept:
        return f"interrupted in {stage}; finished stages are kept in {kept}; run the same command to resume."
    return f"interrupted in {stage}; run the same command to start it again."


def _config_folder(package):
    """Folder ``props`` or ``dataset_configs``: the top-level one of the source checkout this
    package lives in (an editable install too), else the data package a plain ``pip install .``
    installs as ``recbole_cela.<package>``."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package)
    if os.path.isdir(checkout):
        return checkout
    # A folder without __init__.py installs as a namespace package: its __path__ lists the folder.
    module = importlib.import_module(f"recbole_cela.{package}")
    return next(path for path in module.__path__ if os.path.isdir(path))


def usable_cores():
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_threads(config):
    """Set torch's intra-op threads to ``threads``, by default the cores this process may use
    divided among the run's ``nproc`` processes (more threads than cores slow every one of them);
    returns the number set."""
    import torch

    threads = config["threads"]
    if threads is None:
        threads = max(1, usable_cores() // max(1, config["nproc"] or 1))
    torch.set_num_threads(threads)
    return threads


def props_file(model_name):
    """``props/<MODEL>.yaml`` (or ``props/overall.yaml`` for ``"overall"``), None when absent."""
    path = os.path.join(_config_folder("props"), f"{model_name}.yaml")
    return path if os.path.isfile(path) else None


def dataset_config_file(dataset):
    path = os.path.join(_config_folder("dataset_configs"), f"{dataset}.yaml")
    return path if os.path.isfile(path) else None


def known_datasets():
    folder = _config_folder("dataset_configs")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


@functools.lru_cache(maxsize=None)
def read_yaml(path):
    """A YAML config file as a dict ({} when empty), read once per process; callers only read it."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def props_keys(model_name):
    """The keys ``props/<MODEL>.yaml`` defines: the settings that belong to that model."""
    path = props_file(model_name)
    return frozenset(read_yaml(path)) if path else frozenset()


def init_seed(seed, reproducibility):
    """RecBole's ``init_seed``, plus deterministic CPU/GPU kernels when ``reproducibility``.

    RecBole only pins cuDNN; on a multi-threaded CPU the gradient scatter of embedding lookups
    still sums in a varying order, so runs with one seed drift apart by ~1e-3. Asking torch for
    deterministic algorithms makes a seed give the same predictions (warn-only where a kernel
    has no deterministic version).
    """
    import torch
    from recbole.utils import init_seed as recbole_init_seed

    recbole_init_seed(seed, reproducibility)
    torch.use_deterministic_algorithms(bool(reproducibility), warn_only=True)


"""The plugin's RecBole ``Config``: which files a run reads, in which order, and whose defaults.

A run of model ``M`` on dataset ``D`` reads, a later source winning:

1. RecBole's internal defaults (``recbole/properties``: overall, ``model/<M>.yaml``, the quick-start
   file of M's model type);
2. ``props/overall.yaml``, then ``props/<M>.yaml``;
3. ``dataset_configs/<D>.yaml``;
4. the user's ``--config_files``, ``config_dict`` and ``--key=value`` command line.

A plugin model (:class:`recbole_cela.model.protocol.PluginModel`) may then resolve settings whose
default depends on more than the config (``resolve_config``: CELA's text pooling follows its
encoder's architecture) or refuse settings it cannot use, before any data is read or converted.

A plugin model built on an ID backbone (``backbone_key``: CELA's ``backbone``, FLIP's
``flip_backbone``) reads the *backbone's* RecBole defaults in step 1 and ``props/<BACKBONE>.yaml``
before ``props/<M>.yaml`` in step 2, so every key it does not own itself (the keys of
``props/<M>.yaml``) resolves exactly as in a run of the backbone alone.

Every setting is checked while the config is built, before any data is read or any process group
starts: the backbone against the ID models the plugin model builds on, every other key against the
declaration in its props comment (:mod:`recbole_cela.settings`).
"""

import contextlib
import difflib
import functools
import os
import sys

from recbole_cela.compat import plain
from recbole_cela.distributed import Config as DistributedConfig
from recbole_cela.model.protocol import plugin_protocol
from recbole_cela.settings import check_choice, check_settings
from recbole_cela.utils import PluginConfigError, dataset_config_file, known_datasets, props_file, read_yaml


# Resolved settings that change where things are read or written, what is logged, or which
# device computes, but not what a run computes (run_settings, and the stage keys of
# recbole_cela.trainer.stage). The data enters the stage keys by its content, not its path.
NON_SEMANTIC_KEYS = frozenset({
    # paths
    "data_path", "source_path", "item_text_file", "checkpoint_dir", "results_dir", "cela_dir", "flip_dir", "backbone_checkpoint",
    "dataset_save_path", "dataloaders_save_path", "save_dataset", "save_dataloaders",
    # logging and progress bars
    "state", "show_progress", "verbose", "log_wandb", "wandb_project", "unknown_keys",
    # devices and processes (a distributed stage computes the single-process steps: docs/distributed.md)
    "gpu_id", "use_gpu", "device", "single_spec", "local_rank", "world_size", "nproc", "ip", "port", "offset",
    # speed: the same mathematics in fewer operations or on more threads (recbole_cela/model/layers.py)
    "fast_layers", "threads",
})


class Config(DistributedConfig):
    """RecBole's ``Config`` (with the plugin's device choice); a plugin model over a backbone
    takes RecBole's internal defaults of that backbone, model type included. Settings are checked
    as soon as RecBole's defaults are known, before ``Config`` starts a process group."""

    def _load_internal_config_dict(self, model, model_class, dataset):
        plugin = plugin_protocol(model_class)
        key = plugin.backbone_key
        backbone = None
        if key:
            backbone = self.external_config_dict.get(key)
            if not backbone:
                raise PluginConfigError(f"{model_class.__name__} needs '{key}': the ID model it builds on.")
            check_choice(key, backbone, plugin.backbone_choices(),
                         f"one of the ID models {model_class.__name__} builds on")
            model, model_class = backbone, plugin.backbone_class(backbone)
        super()._load_internal_config_dict(model, model_class, dataset)
        check_settings(self.external_config_dict, config_files(self.model, dataset, backbone=backbone),
                       self.internal_config_dict)
        self.unknown_keys = unknown_keys(self.external_config_dict, set(self.internal_config_dict).union(
            *self.parameters.values()))
        if self.unknown_keys and self.external_config_dict.get("unknown_keys") == "error":
            raise PluginConfigError(f"{unknown_keys_message(self.unknown_keys)} (unknown_keys: error)")

    def _load_cmd_line(self):
        """RecBole's command line; a key given twice with different values is refused by name
        (RecBole raises a SyntaxError with a traceback)."""
        given = {}
        if "ipykernel_launcher" not in sys.argv[0]:
            for arg in sys.argv[1:]:
                if arg.startswith("--") and arg.count("=") == 1:
                    key, value = arg[2:].split("=")
                    if given.setdefault(key, value) != value:
                        raise PluginConfigError(f"--{key} is given twice on the command line ('{given[key]}', then "
                                                f"'{value}'): give each key once.")
        return super()._load_cmd_line()


# Keys RecBole's runner (run_recbole.py flags) and the plugin's runner set, declared by no file.
RUNNER_KEYS = frozenset({"model", "dataset", "config_files", "nproc", "world_size", "ip", "port", "group_offset",
                         "offset", "local_rank"})


@functools.lru_cache(maxsize=None)
def plugin_keys():
    """Every key of every file in ``props/`` and ``dataset_configs/``."""
    props = os.path.dirname(props_file("overall"))
    files = [os.path.join(props, f) for f in os.listdir(props) if f.endswith(".yaml")]
    files += [dataset_config_file(dataset) for dataset in known_datasets()]
    return frozenset().union(*(read_yaml(f) for f in files))


def unknown_keys(values, recbole_keys):
    """{key: closest known key or None} of the keys of ``values`` (a run's settings as given) that no
    props file, dataset config, RecBole default of this model (``recbole_keys``) or runner declares:
    usually a typo, which RecBole would ignore without a word."""
    known = plugin_keys() | set(recbole_keys) | RUNNER_KEYS
    return {key: next(iter(difflib.get_close_matches(key, sorted(known), n=1)), None)
            for key in values if key not in known}


def unknown_keys_message(unknown):
    names = ", ".join(f"'{key}'" + (f" (did you mean '{close}'?)" if close else "") for key, close in unknown.items())
    return (f"unknown setting{'s' if len(unknown) > 1 else ''} {names}: no props file, dataset config or RecBole "
            "default of this model declares {}".format("them" if len(unknown) > 1 else "it"))


def config_files(model_name, dataset, config_file_list=None, backbone=None):
    """props/overall.yaml, [props/<BACKBONE>.yaml], props/<MODEL>.yaml, dataset_configs/<DATASET>.yaml,
    then the user's files (a later file wins)."""
    files = [props_file("overall")] + ([props_file(backbone)] if backbone else [])
    files += [props_file(model_name), dataset_config_file(dataset)]
    files = [f for f in dict.fromkeys(files) if f] + list(config_file_list or [])
    for f in files:
        if not os.path.isfile(f):
            raise PluginConfigError(f"Config file '{f}' does not exist.")
    return files


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """(model class, RecBole ``Config``) of a plugin or RecBole model, with the plugin's files."""
    from recbole_cela.model import get_model

    model_class = get_model(model)

    def make(backbone=None):
        files = config_files(model, dataset, config_file_list, backbone)
        return Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)

    config = make()
    plugin = plugin_protocol(model_class)
    if plugin.backbone_key:  # the backbone's own props come before the model's
        config = make(config[plugin.backbone_key])
    plugin.resolve_config(config)  # e.g. what follows from the text encoder's kind, before any data is read
    if config["source_format"]:
        # RecBole hard-wires ml-100k's data_path to its bundled raw copy; converted datasets
        # always live in <data_path>/<dataset> (default dataset/<dataset>).
        base = config.external_config_dict.get("data_path") or config.internal_config_dict["data_path"]
        config["data_path"] = os.path.join(base, dataset)
    if config["benchmark_filename"] is None and dataset_config_file(dataset) is None:
        folder = config["data_path"]
        if not os.path.isfile(os.path.join(folder, f"{dataset}.inter")):
            raise PluginConfigError(
                f"Unknown dataset '{dataset}': no dataset_configs/{dataset}.yaml and no atomic "
                f"files in '{folder}'. Known datasets: {', '.join(known_datasets())}; or add a "
                f"config for yours (copy dataset_configs/amazon-sports.yaml)."
            )
    return model_class, config


@contextlib.contextmanager
def command_line(args):
    """RecBole's ``Config`` reads ``--key=value`` settings from ``sys.argv``: while a config is
    built here, ``args`` stand there instead of the calling process's own arguments."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_cela", *args]
    try:
        yield
    finally:
        sys.argv = saved


def run_settings(model, dataset, config_file_list=None, args=()):
    """The settings a run of ``model`` on ``dataset`` computes with, as its result file records them
    (plain values), resolved exactly as the runner resolves them and without reading any data:
    the config files in the runner's order (:func:`config_files`), then ``config_file_list``, then
    ``args`` (``--key=value``, read by RecBole as the runner's command line is), then what the model
    resolves itself (``resolve_config``, e.g. ``text_pooling: auto``). Left out: the settings that
    only say where files are, what is logged or which device computes (:data:`NON_SEMANTIC_KEYS`)."""
    with command_line(args):
        _, config = build_config(model, dataset, config_file_list)
    return {k: plain(v) for k, v in config.final_config_dict.items() if k not in NON_SEMANTIC_KEYS}

"""Lookup of models, trainers and config files for the plugin (shared by the runner and tests)."""

import importlib
import os
import pkgutil
from importlib import resources

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

# RecBole models that read pointwise CTR samples (labelled (user, item, history) rows).
_RECBOLE_CTR_SEQUENTIAL = ["DIN", "DIEN"]


class PluginConfigError(ValueError):
    """A model, dataset or config key the plugin cannot use, with what to do instead."""


def plugin_models():
    """Models this plugin adds, by name."""
    module = importlib.import_module("recbole_cela.model")
    return {name: getattr(module, name) for name in getattr(module, "__all__", [])}


def recbole_ctr_models():
    """Names of RecBole's context-aware models plus its CTR sequential models (DIN, DIEN)."""
    package = importlib.import_module("recbole.model.context_aware_recommender")
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        names += [
            name
            for name, obj in vars(module).items()
            if isinstance(obj, type)
            and obj.__module__ == module.__name__
            and name.lower() == info.name
        ]
    return sorted(names) + _RECBOLE_CTR_SEQUENTIAL


def get_model(name):
    """The model class for ``name``: a plugin model first, then any RecBole model."""
    models = plugin_models()
    if name in models:
        return models[name]
    try:
        return recbole_get_model(name)
    except (ValueError, AttributeError, ImportError):
        raise PluginConfigError(
            f"Unknown model '{name}'. Available CTR models: "
            + ", ".join(sorted(models) + recbole_ctr_models())
        ) from None


def get_trainer(model_type, model_name):
    """The trainer class: ``recbole_cela.trainer.<Model>Trainer`` if defined, else RecBole's."""
    module = importlib.import_module("recbole_cela.trainer")
    trainer = getattr(module, f"{model_name}Trainer", None)
    return trainer or recbole_get_trainer(model_type, model_name)


def _config_folder(package):
    """Folder ``props`` or ``dataset_configs``: the top-level one of a source checkout (also what
    an editable install uses), else the copy a plain ``pip install .`` puts in the package."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package)
    if os.path.isdir(checkout):
        return checkout
    return str(resources.files(f"recbole_cela.{package}"))


def props_file(model_name):
    path = os.path.join(_config_folder("props"), f"{model_name}.yaml")
    return path if os.path.isfile(path) else None


def recbole_props_file(model_name):
    """RecBole's own defaults for one of its models (properties/model/<MODEL>.yaml)."""
    import recbole

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{model_name}.yaml")
    return path if os.path.isfile(path) else None


def dataset_config_file(dataset):
    path = os.path.join(_config_folder("dataset_configs"), f"{dataset}.yaml")
    return path if os.path.isfile(path) else None


def known_datasets():
    folder = _config_folder("dataset_configs")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def is_sequential(model_class):
    return getattr(model_class, "type", None) == ModelType.SEQUENTIAL


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


def parse_overrides(items):
    """``--key=value`` arguments -> a config dict (JSON numbers / lists / dicts, True/False/None
    in any case, else text), for commands that pass settings to RecBole through ``config_dict``."""
    import json

    words = {"true": True, "false": False, "none": None, "null": None}
    overrides = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise SystemExit(f"error: expected --key=value, got '{item}'")
        key, text = item[2:].split("=", 1)
        if text.lower() in words:
            value = words[text.lower()]
        else:
            try:
                value = json.loads(text) if text[:1] in "[{0123456789-." else text
            except json.JSONDecodeError:
                value = text
        overrides[key] = value
    return overrides

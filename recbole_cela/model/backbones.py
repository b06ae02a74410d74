"""ID models a plugin model can build on: the plugin's own (DINUser) first, then RecBole's."""

import importlib
import pkgutil

from recbole.utils import get_model as recbole_get_model

from recbole_cela.model.din_user import DINUser
from recbole_cela.utils import PluginConfigError

PLUGIN_BACKBONES = {"DINUser": DINUser}
# RecBole models that read pointwise CTR samples (labelled (user, item, history) rows).
RECBOLE_CTR_SEQUENTIAL = ["DIN", "DIEN"]


def recbole_ctr_models():
    """Names of RecBole's context-aware models plus its CTR sequential models (DIN, DIEN)."""
    package = importlib.import_module("recbole.model.context_aware_recommender")
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        names += [name for name, obj in vars(module).items()
                  if isinstance(obj, type) and obj.__module__ == module.__name__ and name.lower() == info.name]
    return sorted(names) + RECBOLE_CTR_SEQUENTIAL


def backbone_names():
    """Names of every ID model a plugin model may build on: the plugin's, then RecBole's CTR models."""
    return sorted(PLUGIN_BACKBONES) + recbole_ctr_models()


def get_backbone(name, known=()):
    """The class of ID model ``name``; ``known``: further names listed in the error message."""
    if name in PLUGIN_BACKBONES:
        return PLUGIN_BACKBONES[name]
    try:
        return recbole_get_model(name)
    except (ValueError, AttributeError, ImportError, TypeError):
        available = sorted(set(known) | set(PLUGIN_BACKBONES)) + recbole_ctr_models()
        raise PluginConfigError(f"Unknown model '{name}'. Available CTR models: {', '.join(available)}") from None

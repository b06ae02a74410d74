"""ID models a plugin model can build on: the plugin's own (DINUser) first, then RecBole's."""

import importlib
import importlib.util
import os
import pkgutil

import torch
import torch.nn as nn

from recbole_cela.model.din_user import DINUser
from recbole_cela.utils import PluginConfigError

PLUGIN_BACKBONES = {"DINUser": DINUser}
# RecBole models that read pointwise CTR samples (labelled (user, item, history) rows).
RECBOLE_CTR_SEQUENTIAL = ["DIN", "DIEN"]
# The packages of recbole.model that recbole.utils.get_model searches, in its order.
RECBOLE_MODEL_PACKAGES = ["general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender"]


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


def recbole_model(name):
    """RecBole's model class ``name``, or None when RecBole has no model of that name.

    The name is looked up among RecBole's model files before anything is imported:
    ``recbole.utils.get_model`` reports an unknown name as whatever import failed last (an
    optional library of its ``exlib_recommender`` package). Importing a model file that exists
    can still fail, and that error is raised as itself."""
    if not isinstance(name, str):
        return None
    root = importlib.util.find_spec("recbole.model").submodule_search_locations[0]
    for package in RECBOLE_MODEL_PACKAGES:
        if os.path.isfile(os.path.join(root, package, f"{name.lower()}.py")):
            module = importlib.import_module(f"recbole.model.{package}.{name.lower()}")
            return getattr(module, name, None)
    return None


def get_backbone(name, known=()):
    """The class of ID model ``name``; ``known``: further names listed in the error message."""
    if name in PLUGIN_BACKBONES:
        return PLUGIN_BACKBONES[name]
    model_class = recbole_model(name)
    if model_class is None:
        available = sorted(set(known) | set(PLUGIN_BACKBONES)) + recbole_ctr_models()
        raise PluginConfigError(f"Unknown model '{name}'. Available CTR models: {', '.join(available)}")
    return model_class


def backbone_logits(backbone, interaction):
    """The logit of each interaction under a RecBole CTR model: DIN's ``forward`` takes the user,
    history and target tensors (read by DIN's own field names), a context-aware model's the
    interaction; a model trained with ``BCELoss`` (DCNV2) returns probabilities, turned into logits."""
    if hasattr(backbone, "ITEM_SEQ"):
        b = backbone
        out = b.forward(interaction[b.USER_ID], interaction[b.ITEM_SEQ], interaction[b.ITEM_SEQ_LEN],
                        interaction[b.POS_ITEM_ID])
    else:
        out = backbone.forward(interaction)
    if isinstance(backbone.loss, nn.BCELoss):
        out = torch.logit(out.clamp(1e-7, 1 - 1e-7))
    return out

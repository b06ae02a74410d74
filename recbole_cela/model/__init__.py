"""Models added by the plugin, and the lookup of any model by name (the plugin's before RecBole's)."""

from recbole_cela.model.backbones import PLUGIN_BACKBONES, get_backbone
from recbole_cela.model.cela import CELA
from recbole_cela.model.din_user import DINUser
from recbole_cela.model.flip import FLIP
from recbole_cela.model.layers import install_fast_layers
from recbole_cela.model.protocol import PluginModel

PLUGIN_MODELS = {"CELA": CELA, "FLIP": FLIP, **PLUGIN_BACKBONES}


def get_model(name):
    """The model class for ``name``: a plugin model, else any RecBole model (clear error otherwise)."""
    return PLUGIN_MODELS.get(name) or get_backbone(name, known=PLUGIN_MODELS)


def build_model(model_class, config, dataset):
    """``model_class(config, dataset)`` with the plugin's faster layers where it has RecBole's
    (``fast_layers``, :mod:`recbole_cela.model.layers`): how every model the plugin trains is built."""
    return install_fast_layers(model_class(config, dataset), config)


__all__ = ["CELA", "DINUser", "FLIP", "PLUGIN_MODELS", "PluginModel", "build_model", "get_model", "install_fast_layers"]

"""What a plugin model offers the runner besides RecBole's model interface.

RecBole builds, trains and evaluates a plugin model as any of its own (``calculate_loss``,
``predict``); the runner (:mod:`recbole_cela.config`, :mod:`recbole_cela.quick_start`) also asks
the model class, before any data is read, which ID model it builds on, which it accepts, whether
it runs distributed and which settings it resolves itself. :class:`PluginModel` declares those
hooks with the defaults of a model that uses none of them, which is what a RecBole model gets
(:func:`plugin_protocol`).
"""

from recbole.model.abstract_recommender import AbstractRecommender


class PluginModel(AbstractRecommender):
    """Base of the plugin's models that build on an ID backbone (CELA, FLIP)."""

    # The config key naming the ID model this model builds on (CELA: ``backbone``); the config
    # then reads that model's RecBole defaults and props file first. None: no backbone.
    backbone_key = None
    # Why the model refuses ``--nproc`` / ``--world_size`` (the runner's message); None: it runs distributed.
    not_distributed = None

    @staticmethod
    def backbone_choices():
        """The names ``backbone_key`` accepts, checked before any work."""
        return []

    @staticmethod
    def backbone_class(name):
        """The class of ID model ``name`` (whose RecBole defaults the config reads)."""
        raise NotImplementedError

    @staticmethod
    def resolve_config(config):
        """Resolve, in the built config, settings whose default depends on more than the config
        files (e.g. on the text encoder's architecture), or refuse settings the model cannot use;
        runs before any data is read."""


def plugin_protocol(model_class):
    """``model_class`` when it is a :class:`PluginModel`, else :class:`PluginModel` itself: a
    RecBole model offers none of the hooks, so it gets their defaults."""
    if isinstance(model_class, type) and issubclass(model_class, PluginModel):
        return model_class
    return PluginModel

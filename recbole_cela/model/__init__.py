"""Models added by the plugin (looked up by name before RecBole's)."""

from recbole_cela.model.cela import CELA

__all__ = ["CELA"]

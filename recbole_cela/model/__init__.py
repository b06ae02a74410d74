"""Models added by the plugin (looked up by name before RecBole's)."""

from recbole_cela.model.cela import CELA
from recbole_cela.model.din_user import DINUser
from recbole_cela.model.flip import FLIP

__all__ = ["CELA", "DINUser", "FLIP"]

"""recbole-cela: language-model alignment (CELA, FLIP) for CTR prediction, as a RecBole plugin."""

from recbole_cela import compat

compat.apply()

__version__ = "0.1.0"

"""recbole-cela: language-model alignment (CELA, FLIP) for CTR prediction, as a RecBole plugin."""

from recbole_cela import compat

compat.apply()

__version__ = "0.1.0"

from recbole_cela.loading import load_data_and_model  # noqa: E402  (RecBole's entry point, after the fixes)

__all__ = ["load_data_and_model"]

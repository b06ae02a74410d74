"""Make RecBole 1.2.1 work on today's numpy, pandas and torch, without forking it.

The patches below (and the pins of ``pyproject.toml``) make recbole 1.2.1 run on numpy 2 and
torch >= 2.6; they are the plugin's only changes to process state:

1. ``Config.compatibility_settings`` assigns ``np.float_`` and friends, which numpy 2 removed:
   every ``Config(...)`` crashes. We replace that one method with an equivalent that only
   aliases names that exist.
2. ``recbole.quick_start`` imports ``ray.tune``; recbole pins ``ray<=2.6.3``, which does not
   import on numpy 2 / Python 3.11 without ``pkg_resources``. The plugin never imports
   ``recbole.quick_start``: :mod:`recbole_cela.quick_start` is its own runner built from
   RecBole's parts (``Config``, ``create_dataset``, ``data_preparation``, trainers).
3. ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` call ``torch.load``,
   which defaults to ``weights_only=True`` since torch 2.6, and RecBole's checkpoint pickles the
   whole ``Config`` object (enums, ``torch.device``...), so loading fails. We do not switch safe
   loading off: instead the trainer *writes* checkpoints that safe loading accepts (the config
   as a plain dict of strings/numbers, scores as floats), atomically, with the trainer's
   ``checkpoint_record`` (data fingerprint, field vocabularies: :mod:`recbole_cela.checkpoints`).
   Files the user did not produce by this trainer are loaded exactly as strictly as torch loads
   anything else.
4. pandas 3 (copy-on-write by default) breaks RecBole's id remapping; pandas is pinned < 3 in
   ``pyproject.toml``.
5. RecBole's distributed trainer passes ``device_ids=[local_rank]`` to ``DistributedDataParallel``
   and converts BatchNorm to ``SyncBatchNorm``, both CUDA-only: ``AbstractTrainer.__init__`` is
   replaced by :func:`recbole_cela.distributed.ddp_trainer_init`, identical on a GPU and in a
   single process, which on a CPU (gloo) wraps the model without them.
6. ``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
   at import time, and every RecBole run imports it (``get_model`` imports the whole
   ``sequential_recommender`` package). Anomaly mode is a debugging aid that checks every backward
   op's output for NaN and keeps forward stack traces, at a large cost per training step and with
   the same results (docs/implementation-notes.md). We import that module once and switch the mode
   back off; ``RECBOLE_CELA_DETECT_ANOMALY=1`` keeps it on for debugging.
7. RecBole's calls of APIs that torch and pandas have deprecated (``torch.cuda.amp.GradScaler``,
   chained ``fillna(inplace=True)``, ``Series.agg(len)``) raise a FutureWarning at every run that
   a user cannot act on: :func:`filter_recbole_warnings` hides those messages from RecBole's
   modules only.

:func:`apply` is idempotent and is called when :mod:`recbole_cela` is imported.
"""

import enum
import os
import warnings

import numpy as np
import torch

_APPLIED = False

# (message, module) of the FutureWarnings RecBole 1.2.1's code raises on today's torch and pandas.
_RECBOLE_WARNINGS = [
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"recbole\.trainer"),
    (r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment", r"recbole\.data"),
    (r"using <built-in function len> in Series\.agg cannot aggregate", r"recbole\.data"),
]

# numpy 1.x names RecBole (and code written for it) still uses -> their numpy 2 equivalents.
_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
}


def _numpy_compatibility_settings(self):
    """Drop-in for ``Config.compatibility_settings`` that works on numpy 1 and 2."""
    present = vars(np)  # not getattr: numpy 2 warns or raises on the expired names
    for name, value in _NUMPY_ALIASES.items():
        if name not in present:
            setattr(np, name, value)


def plain(value):
    """Convert a config value to something ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    return str(value)


def _tensor_entries(other):
    """``other_parameter()`` without module objects (DIN lists its embedding layer there, which
    ``state_dict`` already holds); safe loading accepts tensors and plain values only."""
    if not other:
        return other
    return {k: v for k, v in other.items() if not isinstance(v, torch.nn.Module)}


def _safe_save_checkpoint(self, epoch, verbose=True, **kwargs):
    """RecBole's ``Trainer._save_checkpoint`` writing a weights-only-loadable, atomic file.

    Not a wrapper around RecBole's: it pickles the ``Config`` object into the file in place
    (``torch.save``), and both the state it builds and the write are what must change; the keys
    and the rank-0 rule are RecBole's, plus the plugin's ``checkpoint_record``."""
    from recbole.utils import set_color

    from recbole_cela.fileio import atomic_torch_save

    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    state = {
        "config": plain(self.config.final_config_dict),
        "epoch": int(epoch),
        "cur_step": int(self.cur_step),
        "best_valid_score": float(self.best_valid_score),
        "state_dict": self.model.state_dict(),
        "other_parameter": _tensor_entries(self.model.other_parameter()),
        "optimizer": self.optimizer.state_dict(),
        "plugin": plain({"name": "recbole_cela", "version": _plugin_version(), **getattr(self, "checkpoint_record", {})}),
    }
    atomic_torch_save(state, saved_model_file)
    if verbose:
        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def _plugin_version():
    from recbole_cela import __version__

    return __version__


def filter_recbole_warnings():
    """Hide the FutureWarnings of :data:`_RECBOLE_WARNINGS`: RecBole's own calls of APIs that torch
    and pandas deprecated warn at every run, and a user cannot change them. Only these messages,
    only where RecBole's modules raise them; every other warning shows as before."""
    for message, module in _RECBOLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


def apply():
    """Install the fixes above (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from recbole.config import Config
    from recbole.trainer import Trainer
    from recbole.trainer.trainer import AbstractTrainer

    from recbole_cela.distributed import ddp_trainer_init

    import recbole.model.sequential_recommender.sine  # noqa: F401  (its import switches anomaly mode on)

    torch.autograd.set_detect_anomaly(os.environ.get("RECBOLE_CELA_DETECT_ANOMALY", "") == "1")
    filter_recbole_warnings()
    Config.compatibility_settings = _numpy_compatibility_settings
    Trainer._save_checkpoint = _safe_save_checkpoint
    AbstractTrainer.__init__ = ddp_trainer_init
    _APPLIED = True

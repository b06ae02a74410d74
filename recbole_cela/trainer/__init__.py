"""Trainers of the plugin's models and stages, and the lookup of a model's trainer."""

from recbole.utils import get_trainer as recbole_get_trainer

from recbole_cela.trainer.alignment_trainer import AlignmentTrainer
from recbole_cela.trainer.cela_trainer import CELATrainer
from recbole_cela.trainer.dap_trainer import DAPTrainer
from recbole_cela.trainer.flip_trainer import FLIPPretrainTrainer, FLIPTrainer
from recbole_cela.trainer.stage import StagedTrainer

TRAINERS = {"CELA": CELATrainer, "FLIP": FLIPTrainer}


def get_trainer(model_type, model_name):
    """The plugin's trainer of ``model_name`` (CELA, FLIP), else RecBole's for it."""
    return TRAINERS.get(model_name) or recbole_get_trainer(model_type, model_name)


__all__ = ["AlignmentTrainer", "CELATrainer", "DAPTrainer", "FLIPPretrainTrainer", "FLIPTrainer", "StagedTrainer",
           "get_trainer"]

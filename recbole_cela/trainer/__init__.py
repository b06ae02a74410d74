"""Trainers of the plugin's models and stages (a model ``X`` is trained by ``XTrainer``)."""

from recbole_cela.trainer.alignment_trainer import AlignmentTrainer
from recbole_cela.trainer.cela_trainer import CELATrainer
from recbole_cela.trainer.dap_trainer import DAPTrainer
from recbole_cela.trainer.flip_trainer import FLIPPretrainTrainer, FLIPTrainer

__all__ = ["AlignmentTrainer", "CELATrainer", "DAPTrainer", "FLIPPretrainTrainer", "FLIPTrainer"]

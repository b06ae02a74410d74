"""Base of the text stages' trainers: RecBole's ``Trainer`` over batches of item texts (or prompts).

RecBole's ``Trainer`` does the epoch loop, progress bars, loss logging, early stopping and
checkpointing; a text stage changes what "validation" means (the stage's loss on held-out items,
lower is better) and trains with its own settings. Each subclass declares the config keys it
reads (``reads``: its setting's name -> the config key) and what it derives from the config
(``derived``); :meth:`TextStageTrainer.settings` makes the one dict the stage trains with and its
cache key hashes.

Distributed (``--nproc`` > 1): RecBole's ``Trainer`` wraps the stage model in
``DistributedDataParallel`` and synchronises the gradients of each step; the item loaders give
each process its part of every batch (:class:`recbole_cela.data.loaders.ItemTextLoader`), and the
validation loss is summed over all processes, so every process takes the same early-stopping
decision. With ``precision`` "bf16" (``text_amp``) the stage trains under bf16 autocast.
"""

import copy

import torch
from recbole.trainer import Trainer

from recbole_cela.distributed import all_reduce_sum
from recbole_cela.text.encoder import autocast, encoder_training, padding_settings, text_precision


def device_precision(config):
    """``text_amp`` resolved for the run's device: "bf16" or "fp32"."""
    return text_precision(config["text_amp"], torch.device(config["device"]).type)


def encoder_stage_settings(config):
    """What CELA's encoder stages (1 and 2b) derive from the config: the pooling, the padding
    token, which part of the encoder trains, the precision and the run's seed."""
    return {"pooling": config["text_pooling"], **padding_settings(config), "training": encoder_training(config),
            "precision": device_precision(config), "seed": config["seed"]}


class TextStageTrainer(Trainer):
    stage = None  # the stage's name: its logs read "<MODEL>-<stage>"
    valid_in_train_mode = False  # True where the loss itself needs dropout (SimCSE)
    reads = {}  # the stage's settings read from the config as they are: setting name -> config key

    @staticmethod
    def derived(config):
        """The stage's settings that are computed from the config (precision, seed, ...)."""
        return {}

    @classmethod
    def settings(cls, config):
        """Every setting the stage reads (its cache key hashes this dict)."""
        return {**{name: config[key] for name, key in cls.reads.items()}, **cls.derived(config)}

    def __init__(self, config, model, settings, checkpoint_file):
        stage = copy.copy(config)
        stage.final_config_dict = dict(config.final_config_dict)
        # bf16 needs no loss scaling, so RecBole's GradScaler stays off and gradient clipping
        # sees true gradients; the rest is fixed for every text stage (AdamW, clip at 1.0).
        stage.final_config_dict.update({
            "model": f"{config['model']}-{self.stage}", "epochs": settings["epochs"],
            "learning_rate": settings["learning_rate"], "stopping_step": settings["stopping_step"],
            "eval_step": 1, "weight_decay": 0.0, "clip_grad_norm": {"max_norm": 1.0}, "learner": "adamw",
            "enable_amp": settings["precision"] == "bf16", "enable_scaler": False,
        })
        self.settings = settings
        super().__init__(stage, model)
        self.saved_model_file = checkpoint_file

    def autocast(self):
        return autocast(self.device, self.settings["precision"])

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # RecBole's autocast takes the device's default dtype (fp16 on CUDA): make it bf16.
        if not self.enable_amp:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        previous = torch.get_autocast_dtype(self.device.type)
        torch.set_autocast_dtype(self.device.type, torch.bfloat16)
        try:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        finally:
            torch.set_autocast_dtype(self.device.type, previous)

    @torch.no_grad()
    def valid_loss(self, valid_data):
        """Mean loss over held-out items (the model stays in train mode where the loss needs
        dropout, e.g. SimCSE; no gradient is kept); summed over the processes' shards."""
        self.model.train(self.valid_in_train_mode)
        total, n = 0.0, 0
        for batch in valid_data:
            with self.autocast():
                losses = self.model.calculate_loss(batch.to(self.device))
            loss = sum(losses) if isinstance(losses, tuple) else losses
            total += float(loss) * len(batch)
            n += len(batch)
        total, n = all_reduce_sum([total, n])
        return total / max(n, 1)

    def _valid_epoch(self, valid_data, show_progress=False):
        loss = self.valid_loss(valid_data)
        return -loss, {"valid_loss": round(loss, 4)}

    def load_best(self):
        """Load the best epoch's weights back (a checkpoint this trainer wrote)."""
        checkpoint = torch.load(self.saved_model_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])

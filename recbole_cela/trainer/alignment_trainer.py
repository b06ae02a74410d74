"""Trainer of CELA's stage 2, item-level alignment (model: ``model/alignment.py``)."""

import torch

from recbole_cela.distributed import all_gather_object, world_size
from recbole_cela.trainer.stage import param_groups
from recbole_cela.trainer.text_stage import TextStageTrainer, encoder_stage_settings


class AlignmentTrainer(TextStageTrainer):
    stage = "align"

    reads = {"epochs": "align_epochs", "learning_rate": "align_learning_rate",
             "head_learning_rate": "align_head_learning_rate", "stopping_step": "align_stopping_step",
             "batch_size": "align_batch_size", "valid_ratio": "align_valid_ratio", "temperature": "align_temperature",
             "proj_size": "align_proj_size", "target": "align_target"}
    derived = staticmethod(encoder_stage_settings)

    def _build_optimizer(self, **kwargs):
        """Two parameter groups: the pretrained encoder at ``align_learning_rate`` (official
        5e-5) and the freshly initialised projection heads at ``align_head_learning_rate``: at
        the encoder's rate the random heads barely move in the few epochs a CPU affords, and the
        alignment loss stays near ln(batch size) (docs/tuning.md)."""
        if "params" not in kwargs:
            kwargs["params"] = param_groups(self.model, other_lr=self.settings["head_learning_rate"])
        return super()._build_optimizer(**kwargs)

    def diagnostics(self, valid_data):
        """Text->ID retrieval among the held-out items (recall@1/@10, mean rank, chance).

        In a distributed run each process encodes its shard of the held-out items and the
        vectors are gathered, so the retrieval is over all of them, as in a single process."""
        self.model.eval()
        with self.autocast():
            text, items = self.model.text_vectors_of(valid_data)
        if world_size() > 1:
            shards = all_gather_object((text.float().cpu(), items.cpu()))
            device = self.model.id_table.device
            text = torch.cat([t for t, _ in shards]).to(device)
            items = torch.cat([i for _, i in shards]).to(device)
        return self.model.retrieval(None, vectors=(text.float(), items))

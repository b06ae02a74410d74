"""Trainer of CELA's stage 2, item-level alignment (model: ``model/alignment.py``)."""

import torch

from recbole_cela.distributed import all_gather_object, world_size
from recbole_cela.trainer.text_stage import TextStageTrainer


class AlignmentTrainer(TextStageTrainer):
    def __init__(self, config, model, checkpoint_file):
        super().__init__(config, model, "align", checkpoint_file)

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

"""Trainer of CELA's stage 2, item-level alignment (model: ``model/alignment.py``)."""

import torch

from recbole_cela.distributed import all_gather_object, world_size
from recbole_cela.trainer.text_stage import TextStageTrainer


class AlignmentTrainer(TextStageTrainer):
    def __init__(self, config, model, checkpoint_file):
        self.head_learning_rate = config["align_head_learning_rate"]
        super().__init__(config, model, "align", checkpoint_file)

    def _build_optimizer(self, **kwargs):
        """Two parameter groups: the pretrained encoder at ``align_learning_rate`` (official
        5e-5) and the freshly initialised projection heads at ``align_head_learning_rate``.

        At the encoder's rate the randomly initialised heads barely move in the few epochs a
        CPU affords (measured on amazon-sports: held-out recall@10 0.0033 -> 0.0057, chance
        0.0027), so the alignment loss stays near ln(batch size)."""
        if "params" not in kwargs and self.head_learning_rate:
            encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
            heads = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
            kwargs["params"] = [{"params": encoder}, {"params": heads, "lr": self.head_learning_rate}]
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

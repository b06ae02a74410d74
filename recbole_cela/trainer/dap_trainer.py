"""Trainer of CELA's stage 1, domain-adaptive pretraining (model: ``model/dap.py``)."""

import torch

from recbole_cela.distributed import all_reduce_sum
from recbole_cela.trainer.text_stage import TextStageTrainer


class DAPTrainer(TextStageTrainer):
    valid_in_train_mode = True

    def __init__(self, config, model, checkpoint_file):
        super().__init__(config, model, "dap", checkpoint_file)

    def diagnostics(self, valid_data):
        """Held-out MLM loss and SimCSE alignment / uniformity (lower is better for all); in a
        distributed run each process measures its shard and the sums are added up."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # same masks before and after training
        self.model.eval()
        mlm, align, uniform, n = 0.0, 0.0, 0.0, 0
        with torch.no_grad(), self.autocast():
            for batch in valid_data:
                batch = batch.to(self.device)
                mlm += float(self.model.mlm_loss(batch["input_ids"], batch["attention_mask"])) * len(batch)
                a, u = self.model.alignment_uniformity(batch)
                align, uniform, n = align + a * len(batch), uniform + u * len(batch), n + len(batch)
        torch.random.set_rng_state(generator_state)
        mlm, align, uniform, n = all_reduce_sum([mlm, align, uniform, n])
        return {"mlm_loss": mlm / n, "alignment": align / n, "uniformity": uniform / n}

"""Trainer of CELA's stage 1, domain-adaptive pretraining (model: ``model/dap.py``)."""

import torch

from recbole_cela.distributed import all_reduce_sum
from recbole_cela.trainer.text_stage import TextStageTrainer, encoder_stage_settings


class DAPTrainer(TextStageTrainer):
    stage = "dap"
    valid_in_train_mode = True

    reads = {"epochs": "dap_epochs", "learning_rate": "dap_learning_rate", "stopping_step": "dap_stopping_step",
             "batch_size": "dap_batch_size", "valid_ratio": "dap_valid_ratio", "mlm_probability": "mlm_probability",
             "simcse_temperature": "simcse_temperature", "mlm_weight": "mlm_weight"}
    derived = staticmethod(encoder_stage_settings)

    def diagnostics(self, valid_data):
        """Held-out language-model loss (``mlm_loss`` for an encoder, ``clm_loss`` for a decoder)
        and SimCSE alignment / uniformity (lower is better for all); in a distributed run each
        process measures its shard and the sums are added up."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # same masks before and after training
        self.model.eval()
        lm, align, uniform, n = 0.0, 0.0, 0.0, 0
        with torch.no_grad(), self.autocast():
            for batch in valid_data:
                batch = batch.to(self.device)
                lm += float(self.model.lm_loss(batch["input_ids"], batch["attention_mask"])) * len(batch)
                a, u = self.model.alignment_uniformity(batch)
                align, uniform, n = align + a * len(batch), uniform + u * len(batch), n + len(batch)
        torch.random.set_rng_state(generator_state)
        lm, align, uniform, n = all_reduce_sum([lm, align, uniform, n])
        return {self.model.lm_name: lm / n, "alignment": align / n, "uniformity": uniform / n}

r"""Stage 1 of CELA: domain-adaptive pretraining (DAP) of the text encoder on item texts.

Loss = SimCSE + ``mlm_weight`` x MLM (official default 0.1):

* MLM: ``mlm_probability`` (15%) of the non-special tokens are masked (BERT's 80/10/10 rule,
  transformers' ``DataCollatorForLanguageModeling``) and predicted. The vocabulary head runs only
  at the masked positions.
* SimCSE: the same texts encoded twice with dropout on are positives, the other texts of the
  batch negatives; cosine similarity / ``simcse_temperature`` (0.05), cross-entropy.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling

from recbole_cela.text.encoder import base_model, masked_lm_logits, pool


class DomainAdaptivePretraining(nn.Module):
    def __init__(self, encoder, tokenizer, pooling, simcse_temperature, mlm_weight, mlm_probability):
        super().__init__()
        self.encoder = encoder  # an AutoModelForMaskedLM
        self.pooling = pooling
        self.temperature = simcse_temperature
        self.mlm_weight = mlm_weight
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
        self.register_buffer("special_ids", torch.tensor(sorted(set(tokenizer.all_special_ids))), persistent=False)

    def other_parameter(self):  # RecBole's trainer asks every model for these
        return None

    def _hidden(self, input_ids, attention_mask):
        return base_model(self.encoder)(input_ids=input_ids, attention_mask=attention_mask)[0]

    def simcse_loss(self, input_ids, attention_mask):
        z1 = pool(self._hidden(input_ids, attention_mask), attention_mask, self.pooling)
        z2 = pool(self._hidden(input_ids, attention_mask), attention_mask, self.pooling)
        sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / self.temperature
        return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))

    def mlm_loss(self, input_ids, attention_mask):
        special = torch.isin(input_ids, self.special_ids)
        masked, labels = self.collator.torch_mask_tokens(input_ids.clone().cpu(), special.cpu())
        masked, labels = masked.to(input_ids.device), labels.to(input_ids.device)
        positions = labels != -100
        if not positions.any():
            return input_ids.new_zeros((), dtype=torch.float)
        hidden = self._hidden(masked, attention_mask)
        logits = masked_lm_logits(self.encoder, hidden, positions)
        return F.cross_entropy(logits.float(), labels[positions])

    def calculate_loss(self, batch):
        """(SimCSE, weighted MLM): RecBole's trainer sums a tuple and logs each part."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return self.simcse_loss(ids, mask), self.mlm_weight * self.mlm_loss(ids, mask)

    @torch.no_grad()
    def alignment_uniformity(self, batch):
        """SimCSE's diagnostics on one batch in eval mode: alignment of two dropout-free views is
        trivially 0, so alignment is measured between the text and its masked version."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        special = torch.isin(ids, self.special_ids)
        masked, _ = self.collator.torch_mask_tokens(ids.clone().cpu(), special.cpu())
        z = F.normalize(pool(self._hidden(ids, mask), mask, self.pooling), dim=-1)
        zm = F.normalize(pool(self._hidden(masked.to(ids.device), mask), mask, self.pooling), dim=-1)
        align = (z - zm).norm(dim=1).pow(2).mean()
        uniform = torch.pdist(z).pow(2).mul(-2).exp().mean().log()
        return float(align), float(uniform)

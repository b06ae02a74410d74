r"""Stage 1 of CELA: domain-adaptive pretraining (DAP) of the text encoder on item texts.

Loss = SimCSE + ``mlm_weight`` x language modelling (official default 0.1), the language-model
loss following the kind of model (``recbole_cela.text.encoder``):

* encoders, MLM: ``mlm_probability`` (15%) of the non-special tokens are masked (BERT's 80/10/10
  rule, transformers' ``DataCollatorForLanguageModeling``) and predicted. The vocabulary head runs
  only at the masked positions.
* decoders, causal LM: every real token that follows a real token is predicted from the states
  before it (the objective the decoder was pretrained with; it has no mask token and no MLM
  head). It reads the same forward pass as SimCSE's first view, so stage 1 costs a decoder two
  passes per batch where an encoder needs three.
* SimCSE: the same texts encoded twice with dropout on are positives, the other texts of the
  batch negatives; cosine similarity / ``simcse_temperature`` (0.05), cross-entropy. The text
  vectors are the stage's pooling (``text_pooling``: a decoder's last real token by default).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_cela.text.encoder import base_model, causal_lm_logits, is_causal_lm, masked_lm_logits, pool


class DomainAdaptivePretraining(nn.Module):
    def __init__(self, encoder, tokenizer, pooling, simcse_temperature, mlm_weight, mlm_probability):
        super().__init__()
        self.encoder = encoder  # load_language_model: an AutoModelForMaskedLM or AutoModelForCausalLM
        self.causal = is_causal_lm(encoder)
        self.pooling = pooling
        self.temperature = simcse_temperature
        self.mlm_weight = mlm_weight
        self.mlm_probability = mlm_probability
        self.collator = None
        if not self.causal:
            from transformers import DataCollatorForLanguageModeling

            self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
        self.register_buffer("special_ids", torch.tensor(sorted(set(tokenizer.all_special_ids))), persistent=False)

    @property
    def lm_name(self):
        """The language-model loss's name in the stage's diagnostics."""
        return "clm_loss" if self.causal else "mlm_loss"

    def other_parameter(self):  # RecBole's trainer asks every model for these
        return None

    def _hidden(self, input_ids, attention_mask):
        return base_model(self.encoder)(input_ids=input_ids, attention_mask=attention_mask)[0]

    def _simcse(self, z1, z2):
        # fp32 similarities: at temperature 0.05 bf16's rounding of a cosine (~0.004) is ~0.08 in
        # the logits (bf16 vectors come out of a model ending in a linear layer, e.g. OPT's).
        z1, z2 = z1.float(), z2.float()
        sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / self.temperature
        return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))

    def simcse_loss(self, input_ids, attention_mask):
        z1 = pool(self._hidden(input_ids, attention_mask), attention_mask, self.pooling)
        z2 = pool(self._hidden(input_ids, attention_mask), attention_mask, self.pooling)
        return self._simcse(z1, z2)

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

    def clm_loss(self, input_ids, attention_mask, hidden=None):
        """Mean next-token cross-entropy over the real tokens that follow a real token (padding
        on either side is neither read as a target nor predicted from)."""
        if hidden is None:
            hidden = self._hidden(input_ids, attention_mask)
        real = attention_mask.bool()
        positions = real[:, :-1] & real[:, 1:]
        if not positions.any():
            return hidden.new_zeros((), dtype=torch.float)
        logits = causal_lm_logits(self.encoder, hidden[:, :-1], positions)
        return F.cross_entropy(logits.float(), input_ids[:, 1:][positions])

    def lm_loss(self, input_ids, attention_mask):
        """The stage's language-model loss, unweighted: MLM (encoders) or causal LM (decoders)."""
        if self.causal:
            return self.clm_loss(input_ids, attention_mask)
        return self.mlm_loss(input_ids, attention_mask)

    def calculate_loss(self, batch):
        """(SimCSE, weighted LM loss): RecBole's trainer sums a tuple and logs each part."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not self.causal:
            return self.simcse_loss(ids, mask), self.mlm_weight * self.mlm_loss(ids, mask)
        first = self._hidden(ids, mask)  # SimCSE's first view and the causal-LM loss's states
        second = self._hidden(ids, mask)
        simcse = self._simcse(pool(first, mask, self.pooling), pool(second, mask, self.pooling))
        return simcse, self.mlm_weight * self.clm_loss(ids, mask, hidden=first)

    def corrupt(self, input_ids, attention_mask):
        """The texts with ``mlm_probability`` of their real, non-special tokens changed: masked as
        in MLM (encoders), or replaced by random tokens (decoders have no mask token)."""
        special = torch.isin(input_ids, self.special_ids)
        if not self.causal:
            masked, _ = self.collator.torch_mask_tokens(input_ids.clone().cpu(), special.cpu())
            return masked.to(input_ids.device)
        chosen = (torch.rand(input_ids.shape) < self.mlm_probability).to(input_ids.device)
        chosen &= attention_mask.bool() & ~special
        vocab = self.encoder.get_output_embeddings().weight.shape[0]
        random = torch.randint(vocab, input_ids.shape).to(input_ids.device)
        return torch.where(chosen, random, input_ids)

    @torch.no_grad()
    def alignment_uniformity(self, batch):
        """SimCSE's diagnostics on one batch in eval mode: alignment of two dropout-free views is
        trivially 0, so alignment is measured between the text and its corrupted version."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        corrupted = self.corrupt(ids, mask)
        # In fp32: under bf16 autocast a model whose last op is a linear layer (OPT's output
        # projection) returns bf16 states, and pdist has no bf16 kernel.
        z = F.normalize(pool(self._hidden(ids, mask), mask, self.pooling).float(), dim=-1)
        zm = F.normalize(pool(self._hidden(corrupted, mask), mask, self.pooling).float(), dim=-1)
        align = (z - zm).norm(dim=1).pow(2).mean()
        uniform = torch.pdist(z).pow(2).mul(-2).exp().mean().log()
        return float(align), float(uniform)

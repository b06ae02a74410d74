r"""FLIP's pretraining: joint reconstruction across the tabular and the textual view of a sample.

Per batch of interactions (ID fields + prompt token ids), each objective switchable:

* **MLM with tabular help** (``flip_mlm``): ``flip_mlm_probability`` (15%) of the prompt's
  tokens are masked (BERT's 80/10/10 rule); a masked token is predicted by the encoder's MLM head
  from [its hidden state || the backbone's representation of the *intact* sample], through a
  linear fusion initialised to pass the hidden state through unchanged.
* **MTM with text help** (``flip_mtm``): ``flip_mtm_probability`` (15%, at least one) of the
  sample's single-valued ID fields are replaced by the padding id; a masked field is predicted
  from a query [field embedding + the backbone's representation of the *masked* sample] that
  attends over the token states of the *intact* prompt; the score of a value is the inner
  product with its output embedding, trained with a sampled softmax over the true value and
  ``flip_mtm_noise`` (25) uniform noise values (the full vocabulary when it is that small).
* **Instance-level contrast** (``flip_icl``): pooled text vector and backbone representation of
  the intact sample, each projected (MLP + LayerNorm) to ``flip_proj_size`` (128) and
  L2-normalised; symmetric InfoNCE over the batch, temperature ``flip_icl_temperature`` (0.7).

The loss is the sum; RecBole's trainer logs each part. The intact text is encoded only if MTM
or contrast is on, the masked text only if MLM is on.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from transformers import DataCollatorForLanguageModeling

from recbole_cela.model.alignment import projection_head
from recbole_cela.text.encoder import base_model, mlm_head, pool
from recbole_cela.utils import PluginConfigError


class FLIPPretraining(nn.Module):
    def __init__(self, settings, tabular, encoder, tokenizer, dataset):
        """``settings``: :meth:`recbole_cela.trainer.FLIPPretrainTrainer.settings`."""
        super().__init__()
        self.tabular = tabular  # TabularView over a fresh RecBole backbone
        self.encoder = encoder  # an AutoModelForMaskedLM
        self.use_mlm, self.use_mtm, self.use_icl = settings["flip_mlm"], settings["flip_mtm"], settings["flip_icl"]
        if not (self.use_mlm or self.use_mtm or self.use_icl):
            raise PluginConfigError("FLIP pretraining needs at least one of flip_mlm, flip_mtm, flip_icl (or set flip_pretrain: False).")
        self.pooling = settings["text_pooling"]
        hidden, tab = encoder.config.hidden_size, tabular.dim
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=settings["flip_mlm_probability"])
        self.register_buffer("special_ids", torch.tensor(sorted(set(tokenizer.all_special_ids))), persistent=False)

        # MLM: [hidden || tabular] -> hidden, initialised as the identity on the hidden part.
        self.mlm_fuse = nn.Linear(hidden + tab, hidden)
        with torch.no_grad():
            self.mlm_fuse.weight.zero_()
            self.mlm_fuse.weight[:, :hidden].copy_(torch.eye(hidden))
            self.mlm_fuse.bias.zero_()

        # MTM over the backbone's single-valued token fields.
        backbone = tabular.backbone
        self.fields = tabular.token_fields()
        self.vocab = [dataset.num(f) for f in self.fields]
        self.mtm_probability = settings["flip_mtm_probability"]
        self.noise = settings["flip_mtm_noise"]
        size = backbone.embedding_size
        self.field_query = nn.Embedding(len(self.fields), hidden)
        self.tab_query = nn.Linear(tab, hidden)
        heads = encoder.config.num_attention_heads
        self.cross_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mtm_out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, size))
        self.value_embedding = nn.ModuleList(nn.Embedding(v, size) for v in self.vocab)

        # Contrast.
        self.temperature = settings["flip_icl_temperature"]
        self.text_proj = projection_head(hidden, settings["flip_proj_size"])
        self.tab_proj = projection_head(tab, settings["flip_proj_size"])

    def other_parameter(self):  # RecBole's trainer asks every model for these
        return None

    # ------------------------------------------------------------------------------ views
    def _hidden(self, input_ids, attention_mask):
        return base_model(self.encoder)(input_ids=input_ids, attention_mask=attention_mask)[0]

    def mask_tokens(self, input_ids):
        special = torch.isin(input_ids, self.special_ids)
        masked, labels = self.collator.torch_mask_tokens(input_ids.clone().cpu(), special.cpu())
        return masked.to(input_ids.device), labels.to(input_ids.device)

    def mask_fields(self, interaction):
        """(masked copy of the interaction, [B, n_fields] bool mask); masked ids become 0."""
        n = len(interaction)
        device = interaction[self.fields[0]].device
        mask = torch.rand(n, len(self.fields), device=device) < self.mtm_probability
        none = ~mask.any(1)
        forced = torch.randint(len(self.fields), (n,), device=device)
        mask[none, forced[none]] = True
        data = dict(interaction.interaction)
        for k, f in enumerate(self.fields):
            data[f] = torch.where(mask[:, k], torch.zeros_like(data[f]), data[f])
        return Interaction(data), mask

    # ------------------------------------------------------------------------------ losses
    def mlm_outputs(self, batch, tab_clean):
        """(vocabulary logits, labels) at the masked token positions."""
        masked, labels = self.mask_tokens(batch["input_ids"])
        positions = labels != -100
        hidden = self._hidden(masked, batch["attention_mask"])
        rows = positions.nonzero()[:, 0]
        fused = self.mlm_fuse(torch.cat([hidden[positions], tab_clean[rows]], dim=-1))
        return mlm_head(self.encoder, fused), labels[positions]

    def mtm_scores(self, batch, text_hidden, field_mask):
        """Per field k: (query vectors [n_k, size], true values [n_k]) of the rows where k is masked."""
        masked_inter, mask = field_mask
        _, tab_masked = self.tabular(masked_inter)
        n, k = mask.shape
        query = self.field_query.weight.unsqueeze(0) + self.tab_query(tab_masked).unsqueeze(1)  # [B, k, H]
        pad = batch["attention_mask"] == 0
        attended, _ = self.cross_attention(query, text_hidden, text_hidden, key_padding_mask=pad)
        out = self.mtm_out(torch.cat([query, attended], dim=-1))  # [B, k, size]
        return [(out[mask[:, j], j], batch[f][mask[:, j]]) for j, f in enumerate(self.fields)]

    def mtm_loss_of(self, per_field):
        losses, count = [], 0
        for j, (vectors, truth) in enumerate(per_field):
            if len(truth) == 0:
                continue
            table = self.value_embedding[j].weight
            vocab = len(table)
            if vocab - 1 <= self.noise + 1:  # small vocabulary: full softmax over the real values
                logits = vectors @ table.T
                logits[:, 0] = float("-inf")
                loss = F.cross_entropy(logits, truth, reduction="sum")
            else:  # sampled softmax: the true value against `noise` uniform values
                noise = torch.randint(1, vocab, (self.noise,), device=truth.device)
                true_score = (vectors * table[truth]).sum(-1, keepdim=True)
                noise_scores = vectors @ table[noise].T
                noise_scores = noise_scores.masked_fill(noise.unsqueeze(0) == truth.unsqueeze(1), float("-inf"))
                logits = torch.cat([true_score, noise_scores], dim=1)
                loss = F.cross_entropy(logits, torch.zeros_like(truth), reduction="sum")
            losses.append(loss)
            count += len(truth)
        return sum(losses) / max(count, 1)

    def icl_loss_of(self, text_hidden, attention_mask, tab_clean):
        z_text = F.normalize(self.text_proj(pool(text_hidden, attention_mask, self.pooling)), dim=-1)
        z_tab = F.normalize(self.tab_proj(tab_clean), dim=-1)
        logits = z_text @ z_tab.T / self.temperature
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def calculate_loss(self, batch):
        """Tuple of the enabled losses, in the order (MLM, MTM, contrast)."""
        need_clean_text = self.use_mtm or self.use_icl
        tab_clean = self.tabular(batch)[1] if (self.use_mlm or self.use_icl) else None
        text_hidden = self._hidden(batch["input_ids"], batch["attention_mask"]) if need_clean_text else None
        losses = []
        if self.use_mlm:
            logits, labels = self.mlm_outputs(batch, tab_clean)
            losses.append(F.cross_entropy(logits.float(), labels) if len(labels) else logits.sum() * 0)
        if self.use_mtm:
            losses.append(self.mtm_loss_of(self.mtm_scores(batch, text_hidden, self.mask_fields(batch))))
        if self.use_icl:
            losses.append(self.icl_loss_of(text_hidden, batch["attention_mask"], tab_clean))
        return tuple(losses)

    # ------------------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def diagnostics(self, loader, device):
        """Held-out reconstruction accuracy against a majority baseline, and contrast recall@1.

        * mlm_accuracy: argmax of the full vocabulary at masked tokens; mlm_majority: accuracy of
          always answering the most frequent masked token of this held-out set;
        * mtm_accuracy: argmax over each masked field's full vocabulary; mtm_majority: always the
          most frequent value of that field among its masked rows here;
        * icl_recall@1: share of prompts whose own sample scores highest within its batch
          (chance = 1 / batch size, reported as icl_chance).
        """
        self.eval()
        mlm_pred, mlm_true, mtm_hit, mtm_true, icl_hit, icl_chance, n = [], [], [], [], 0.0, 0.0, 0
        for batch in loader:
            batch = batch.to(device)
            tab_clean = self.tabular(batch)[1]
            text_hidden = self._hidden(batch["input_ids"], batch["attention_mask"])
            if self.use_mlm:
                logits, labels = self.mlm_outputs(batch, tab_clean)
                mlm_pred.append(logits.argmax(-1).cpu())
                mlm_true.append(labels.cpu())
            if self.use_mtm:
                for j, (vectors, truth) in enumerate(self.mtm_scores(batch, text_hidden, self.mask_fields(batch))):
                    logits = vectors @ self.value_embedding[j].weight.T
                    logits[:, 0] = float("-inf")
                    mtm_hit.append((j, (logits.argmax(-1) == truth).cpu()))
                    mtm_true.append((j, truth.cpu()))
            if self.use_icl:
                z_text = F.normalize(self.text_proj(pool(text_hidden, batch["attention_mask"], self.pooling)), dim=-1)
                z_tab = F.normalize(self.tab_proj(tab_clean), dim=-1)
                scores = z_text @ z_tab.T
                icl_hit += float((scores.argmax(1) == torch.arange(len(scores), device=scores.device)).sum())
                icl_chance += 1.0
                n += len(scores)
        out = {}
        if mlm_true:
            pred, true = torch.cat(mlm_pred), torch.cat(mlm_true)
            out["mlm_accuracy"] = float((pred == true).float().mean())
            out["mlm_majority"] = float((true == torch.mode(true).values).float().mean())
        if mtm_true:
            hits = torch.cat([h for _, h in mtm_hit])
            majority = []
            for j in range(len(self.fields)):
                truth = torch.cat([t for k, t in mtm_true if k == j])
                if len(truth):
                    majority.append(truth == torch.mode(truth).values)
            out["mtm_accuracy"] = float(hits.float().mean())
            out["mtm_majority"] = float(torch.cat(majority).float().mean())
            for j, f in enumerate(self.fields):
                h = [x for k, x in mtm_hit if k == j]
                if h and len(torch.cat(h)):
                    out[f"mtm_accuracy_{f}"] = float(torch.cat(h).float().mean())
        if n:
            out["icl_recall@1"] = icl_hit / n
            out["icl_chance"] = icl_chance / n
        return out

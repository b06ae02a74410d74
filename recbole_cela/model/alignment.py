r"""Stage 2 of CELA: recommendation-oriented modal alignment (ROMA) of the text encoder.

Each item's text vector (pooled encoder output) and its representation in the *frozen* ID
backbone (the concatenation of its item field embeddings) go through their own projection
(MLP to ``align_proj_size`` = 128, then LayerNorm); an InfoNCE loss with in-batch negatives
(score = inner product / ``align_temperature``, official 1.0) pulls each item's text towards its
own ID vector. Only the encoder and the two heads train.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_cela.text.encoder import encode


def projection_head(in_dim, out_dim):
    """MLP to ``out_dim`` then LayerNorm (the projection used on both sides)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim), nn.LayerNorm(out_dim))


class ItemAlignment(nn.Module):
    def __init__(self, config, encoder, id_table):
        super().__init__()
        self.encoder = encoder  # an AutoModel
        self.pooling = config["text_pooling"]
        self.temperature = config["align_temperature"]
        size = config["align_proj_size"]
        self.register_buffer("id_table", id_table.detach().clone())  # frozen backbone vectors
        self.text_head = projection_head(encoder.config.hidden_size, size)
        self.id_head = projection_head(id_table.shape[1], size)

    def other_parameter(self):
        return None

    def text_vectors(self, batch):
        return self.text_head(encode(self.encoder, batch["input_ids"], batch["attention_mask"], self.pooling))

    def id_vectors(self, items):
        return self.id_head(self.id_table[items])

    def calculate_loss(self, batch):
        text = self.text_vectors(batch)
        ids = self.id_vectors(batch["item_id"])
        logits = text @ ids.T / self.temperature
        return F.cross_entropy(logits.float(), torch.arange(len(text), device=text.device))

    @torch.no_grad()
    def text_vectors_of(self, loader):
        """(projected text vectors, item ids) of every item of ``loader``."""
        texts, items = [], []
        for batch in loader:
            texts.append(self.text_vectors(batch.to(self.id_table.device)))
            items.append(batch["item_id"].to(self.id_table.device))
        return torch.cat(texts), torch.cat(items)

    @torch.no_grad()
    def retrieval(self, loader, vectors=None):
        """Text->ID retrieval over all items of ``loader`` (or of precomputed ``vectors``, a
        (text vectors, item ids) pair): recall@1, recall@10, mean rank."""
        text, items = vectors if vectors is not None else self.text_vectors_of(loader)
        scores = text @ self.id_vectors(items).T
        rank = (scores > scores.diagonal().unsqueeze(1)).sum(1) + 1  # rank of the own ID vector
        return {
            "recall@1": float((rank <= 1).float().mean()),
            "recall@10": float((rank <= 10).float().mean()),
            "mean_rank": float(rank.float().mean()),
            "n_items": len(items),
            "chance_recall@10": min(1.0, 10 / len(items)),
        }

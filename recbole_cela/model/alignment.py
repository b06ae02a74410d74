r"""Stage 2 of CELA: recommendation-oriented modal alignment (ROMA) of the text encoder.

Each item's text vector (pooled encoder output) and its representation in the *frozen* ID
backbone (the concatenation of its item field embeddings) go through their own projection
(MLP to ``align_proj_size`` = 128, then LayerNorm); an InfoNCE loss with in-batch negatives
(score = inner product / ``align_temperature``, official 1.0) pulls each item's text towards its
own ID vector. Only the encoder and the two heads train.

Which ID representation is aligned (``align_target``):

* ``item`` (official): the item's own field embeddings in the backbone;
* ``item_clickers``: those, concatenated with the mean representation of the histories of the
  training samples that clicked the item ("who clicks it", in the same embedding space). An item
  seen a handful of times has an item embedding close to its random initialisation, but its
  clickers' histories are made of items the backbone has learned, so this half carries a
  collaborative signal even for cold items. Each half is scaled to unit standard deviation.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_cela.text.encoder import encode, text_width
from recbole_cela.utils import PluginConfigError


def projection_head(in_dim, out_dim):
    """MLP to ``out_dim`` then LayerNorm (the projection used on both sides)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim), nn.LayerNorm(out_dim))


@torch.no_grad()
def clicker_vectors(item_table, dataset, chunk=65536):
    """[item_num, d]: per item, the mean over its positive training samples of the mean of
    ``item_table`` over the sample's history (zeros for items without such a sample)."""
    history_field = dataset.iid_field + dataset.config["LIST_SUFFIX"]
    if history_field not in dataset.inter_feat:
        raise PluginConfigError(
            f"align_target 'item_clickers' needs the history field '{history_field}' in the "
            "interactions (load it in load_col['inter']); use align_target: item otherwise."
        )
    inter = dataset.inter_feat
    items, history = inter[dataset.iid_field], inter[history_field]
    positive = inter[dataset.label_field] > 0 if dataset.label_field in inter else torch.ones_like(items, dtype=torch.bool)
    table = item_table.float().cpu()
    sums = torch.zeros_like(table)
    counts = torch.zeros(len(table))
    for start in range(0, len(items), chunk):
        rows = slice(start, start + chunk)
        keep = positive[rows] & (history[rows] != 0).any(1)
        seq = history[rows][keep]
        mask = (seq != 0).unsqueeze(-1).float()
        mean = (table[seq] * mask).sum(1) / mask.sum(1)
        sums.index_add_(0, items[rows][keep], mean)
        counts.index_add_(0, items[rows][keep], torch.ones(len(seq)))
    return sums / counts.clamp(min=1).unsqueeze(1)


def alignment_target(kind, item_table, dataset):
    """The ID-side vectors stage 2 aligns the text with (see ``align_target`` above)."""
    if kind == "item":
        return item_table
    if kind == "item_clickers":
        parts = [item_table.float().cpu(), clicker_vectors(item_table, dataset)]
        return torch.cat([p / p[1:].std().clamp(min=1e-8) for p in parts], dim=1)  # row 0: padding
    raise PluginConfigError(f"align_target must be 'item' or 'item_clickers', not {kind!r}")


class ItemAlignment(nn.Module):
    def __init__(self, encoder, id_table, pooling, temperature, proj_size):
        super().__init__()
        self.encoder = encoder  # an AutoModel (an encoder or a decoder)
        self.pooling = pooling
        self.temperature = temperature
        self.register_buffer("id_table", id_table.detach().clone())  # frozen backbone vectors
        self.text_head = projection_head(text_width(encoder.config), proj_size)
        self.id_head = projection_head(id_table.shape[1], proj_size)

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

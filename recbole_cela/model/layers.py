r"""Faster forms of RecBole's item-feature and attention layers, with the same mathematics.

RecBole's DIN embeds every history slot's item features, ``token_seq`` fields padded to the
longest item's, once per slot; its attention MLP runs on every slot, padding included, and then
zeroes the padded slots' weights. A batch repeats the same items across its histories, and most
histories are shorter than ``MAX_ITEM_LIST_LENGTH``. The layers here compute:

* :class:`PerItemSeqEmbLayer`: the item side of ``ContextSeqEmbLayer`` once per *distinct item* of
  the batch (RecBole's own code, on a [distinct items, 1] batch), then gathered per slot;
* :class:`ValidSlotAttLayer`: ``SequenceAttLayer``'s MLP on the valid history slots only; padded
  slots get weight 0, as RecBole's mask gives them, and no gradient, as there. Its first linear
  layer, over [query, key, query - key, query * key], is split by linearity so that the query's
  part is computed once per row;
* :func:`embed_token_seq_fields_bag` and :func:`first_order_token_seq_bag`: a context-aware
  model's ``token_seq`` pooling (mean or sum) and its first-order term's, in training batches
  whose fields are mostly padding, with ``embedding_bag``, which skips padding instead of
  multiplying it by a zero mask.

Each computes the same outputs and gradients as RecBole's layer up to float summation order
(``tests/test_layers.py`` compares both on real batches). :func:`install_fast_layers` puts them
into a built model; ``fast_layers: False`` keeps RecBole's layers (the stock path, for comparison).
The classes only override methods, so a model's parameters, ``state_dict`` and checkpoints are
the same on either path.
"""

import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import ContextRecommender
from recbole.model.layers import ContextSeqEmbLayer, FMFirstOrderLinear, SequenceAttLayer


class PerItemSeqEmbLayer(ContextSeqEmbLayer):
    """``ContextSeqEmbLayer`` whose item side is computed once per distinct item of the batch."""

    def embed_input_fields(self, user_idx, item_idx):
        if self.float_field_names["item"] or self.float_seq_field_names["item"]:
            return super().embed_input_fields(user_idx, item_idx)  # RecBole shapes float fields by history length
        unique, inverse = torch.unique(item_idx, return_inverse=True)
        # RecBole's own embedding of each distinct item, as a history of length 1.
        sparse, dense = super().embed_input_fields(user_idx, unique.unsqueeze(1))
        for table in (sparse, dense):
            if table.get("item") is not None:
                table["item"] = table["item"].squeeze(1)[inverse]
        return sparse, dense


class ValidSlotAttLayer(SequenceAttLayer):
    """``SequenceAttLayer`` (DIN's: no softmax, weighted sum of the keys) whose MLP reads only the
    history slots before ``keys_length``; the others keep weight 0, as RecBole's mask sets them."""

    def forward(self, queries, keys, keys_length):
        if self.softmax_stag or self.return_seq_weight:
            return super().forward(queries, keys, keys_length)
        batch, hist_len, width = keys.shape
        valid = torch.arange(hist_len, device=keys.device).unsqueeze(0) < keys_length.unsqueeze(1)
        rows, slots = valid.nonzero(as_tuple=True)
        key = keys[rows, slots]
        layers = self.att_mlp_layers.mlp_layers
        if isinstance(layers[0], nn.Dropout) and layers[0].p == 0 and isinstance(layers[1], nn.Linear):
            # The first Linear over [q, k, q - k, q * k] is W_q q + W_k k + W_d (q - k) + W_p (q * k):
            # its query part is computed once per row instead of once per history slot.
            w_q, w_k, w_d, w_p = layers[1].weight.split(width, dim=1)
            per_row = F.linear(queries, w_q + w_d, layers[1].bias)
            hidden = per_row[rows] + F.linear(torch.cat([key, queries[rows] * key], dim=-1), torch.cat([w_k - w_d, w_p], dim=1))
            score = self.dense(layers[2:](hidden))
        else:
            query = queries[rows]
            score = self.dense(self.att_mlp_layers(torch.cat([query, key, query - key, query * key], dim=-1)))
        weights = keys.new_zeros(batch, hist_len).index_put((rows, slots), score.squeeze(-1))
        return torch.matmul((weights / width**0.5).unsqueeze(1), keys)


def mostly_padding(token_seq_fields):
    """Whether every field of a training batch is mostly padding: there ``embedding_bag``, whose
    backward skips the padding, beats RecBole's masked sum; on full sequences (ml-100k's
    histories) and at scoring it does not (docs/speed.md)."""
    return torch.is_grad_enabled() and all((field != 0).float().mean() < 0.5 for field in token_seq_fields)


def embed_token_seq_fields_bag(self, token_seq_fields, mode="mean"):
    """``ContextRecommender.embed_token_seq_fields`` for ``mean`` and ``sum`` pooling through
    ``embedding_bag`` (padding id 0 left out of the bag, an empty bag pooling to 0, as RecBole's
    mask does) when the fields are mostly padding; otherwise RecBole's own code."""
    if mode not in ("mean", "sum") or not token_seq_fields or not mostly_padding(token_seq_fields):
        return ContextRecommender.embed_token_seq_fields(self, token_seq_fields, mode)
    pooled = [
        F.embedding_bag(field, table.weight, mode=mode, padding_idx=0).unsqueeze(1)
        for field, table in zip(token_seq_fields, self.token_seq_embedding_table)
    ]
    return torch.cat(pooled, dim=1)


def first_order_token_seq_bag(self, token_seq_fields):
    """``FMFirstOrderLinear.embed_token_seq_fields`` (the sum over each field's tokens, then over
    the fields) through ``embedding_bag`` when the fields are mostly padding, as above."""
    if not token_seq_fields or not mostly_padding(token_seq_fields):
        return FMFirstOrderLinear.embed_token_seq_fields(self, token_seq_fields)
    pooled = [F.embedding_bag(field, table.weight, mode="sum", padding_idx=0).unsqueeze(1)
              for field, table in zip(token_seq_fields, self.token_seq_embedding_table)]
    return torch.sum(torch.cat(pooled, dim=1), dim=1, keepdim=True)


def install_fast_layers(model, config=None):
    """Put the layers above into every matching part of ``model`` (DIN, DINUser, CELA's fused
    backbones, context-aware models, FLIP's ID model); returns ``model``. ``config["fast_layers"]``
    False leaves RecBole's layers in place. Only exact RecBole layer classes are replaced, so a
    layer someone subclassed keeps its own code."""
    if config is not None and not config["fast_layers"]:
        return model
    for module in model.modules():
        if type(module) is ContextSeqEmbLayer:
            module.__class__ = PerItemSeqEmbLayer
        elif type(module) is SequenceAttLayer:
            module.__class__ = ValidSlotAttLayer
        elif isinstance(module, ContextRecommender) and "embed_token_seq_fields" not in vars(module):
            module.embed_token_seq_fields = types.MethodType(embed_token_seq_fields_bag, module)
        elif type(module) is FMFirstOrderLinear and "embed_token_seq_fields" not in vars(module):
            module.embed_token_seq_fields = types.MethodType(first_order_token_seq_bag, module)
    return model


def uses_fast_layers(model):
    """Whether any part of ``model`` runs the layers above (recorded with a run's result)."""
    return any(isinstance(m, (PerItemSeqEmbLayer, ValidSlotAttLayer)) or "embed_token_seq_fields" in vars(m)
               for m in model.modules())

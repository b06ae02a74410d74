r"""Stage 3 of CELA: multi-modal feature fusion (MF2) on top of RecBole's own backbones.

An item's representation becomes [ID field embeddings || projection of its frozen text vector],
for the target item and for every item of the behaviour sequence. The text vectors sit in a
fixed table (one row per item, computed once by the aligned encoder); only the projection
(MLP + LayerNorm, ``text_proj_fields`` x ``embedding_size`` wide, i.e. that many extra
"fields") trains, so training and inference cost about what the ID backbone costs.

RecBole's backbones are reused, not copied:

* context-aware models (DeepFM, DCNV2, AutoInt, WideDeep, xDeepFM, FM, ...) read every field
  through ``concat_embed_input_fields``: the text of the target item and the mean text of the
  history items are appended there as extra fields, and ``num_feature_field`` grows before the
  backbone sizes its layers (the mixin sits between the backbone and ``ContextRecommender``);
* DIN reads item fields through its ``ContextSeqEmbLayer``: the text fields are appended to the
  item embeddings it returns, and DIN's attention and MLP are sized for the wider items.

The fused class of backbone ``X`` is named ``TextX`` (what ``logger.info(model)`` prints and what
``isinstance`` tests see): :class:`TextDIN` and :class:`TextDINUser` are defined below; the class
of a context-aware backbone (TextDeepFM, TextDCNV2, TextAutoInt, TextWideDeep, TextxDeepFM,
TextFM, ...) is made once per backbone by :func:`fused_backbone`, as ``_AddedItemView`` +
the backbone + :class:`ContextTextFusion`, and kept in :data:`FUSED_BACKBONES`.

Items added after training (:mod:`recbole_cela.new_items`) get ids from ``item_num`` on: their
text rows are appended to the table, and their ID feature rows (the padding item id 0, and the item
features they come with, such as brand or genre; padding where unknown) to the item table DIN
looks items up in (:func:`add_item_rows`); a context-aware backbone reads them from the
interaction, with the padding item id. Without added items nothing of this runs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import ContextRecommender
from recbole.model.layers import MLPLayers, SequenceAttLayer
from recbole.model.sequential_recommender.din import DIN
from recbole.utils import FeatureSource

from recbole_cela.model.alignment import projection_head
from recbole_cela.model.din_user import DINUser
from recbole_cela.text.encoder import encoder_width
from recbole_cela.utils import PluginConfigError


UNIQUE_BUCKET = 1024  # training: distinct items of a batch are projected in blocks of this many rows


class ItemTextProjection(nn.Module):
    """Frozen item-text table plus the trainable projection into ``fields`` embedding fields."""

    def __init__(self, n_items, text_dim, embedding_size, fields, normalize):
        super().__init__()
        self.fields, self.embedding_size, self.normalize = fields, embedding_size, normalize
        self.register_buffer("text_table", torch.zeros(n_items, text_dim))
        self.n_id_items = n_items  # items the ID embeddings know; rows beyond are added items
        self.proj = projection_head(text_dim, fields * embedding_size)
        self.encoder_fn = None  # end-to-end variant: computes rows of the table on the fly
        self._projected = None

    def set_table(self, table):
        if table.shape != self.text_table.shape:
            raise ValueError(f"text table of shape {tuple(table.shape)}, expected {tuple(self.text_table.shape)}")
        self.text_table.copy_(table)
        self._projected = None

    def add_rows(self, vectors):
        """Append the text vectors of new items; returns their ids (``item_num`` onwards)."""
        start = len(self.text_table)
        vectors = vectors.to(self.text_table.device, self.text_table.dtype)
        self.text_table = torch.cat([self.text_table, vectors])  # still the registered buffer
        self._projected = None
        return torch.arange(start, start + len(vectors))

    @property
    def has_added_items(self):
        return len(self.text_table) > self.n_id_items

    def id_items(self, items):
        """Item ids as the ID part of the backbone sees them: an added item is item 0."""
        if not self.has_added_items:
            return items
        return items.masked_fill(items >= self.n_id_items, 0)

    def train(self, mode=True):
        self._projected = None  # the eval-time cache is stale as soon as training resumes
        return super().train(mode)

    def _project(self, vectors):
        if self.normalize:
            vectors = F.normalize(vectors, dim=-1)
        return self.proj(vectors)

    def forward(self, items):
        """[...] item ids -> [..., fields, embedding_size].

        Training projects each distinct item of the batch once (a batch repeats items across
        its histories); evaluation projects the whole table once and then only gathers rows,
        so scoring costs the backbone's lookups plus one gather.
        """
        if self.training:
            unique, inverse = torch.unique(items, return_inverse=True)
            if self.encoder_fn is not None:
                vectors = self.encoder_fn(unique)
            else:
                # Padded (with the padding item) to a multiple of UNIQUE_BUCKET rows, so the
                # projection's tensors take a few sizes rather than a new one every batch, which
                # glibc's allocator keeps as fragments (resident memory grows every epoch:
                # docs/implementation-notes.md). Rows are independent: the outputs are the same.
                pad = (-len(unique)) % UNIQUE_BUCKET
                vectors = self.text_table[torch.cat([unique, unique.new_zeros(pad)])]
            out = self._project(vectors)[inverse]
        else:
            if self._projected is None:
                if self.encoder_fn is not None:  # end to end: re-encode with the trained encoder
                    all_items = torch.arange(len(self.text_table), device=self.text_table.device)
                    self.text_table.copy_(torch.cat([self.encoder_fn(c) for c in all_items.split(256)]))
                self._projected = self._project(self.text_table)
            out = self._projected[items]
        return out.view(*items.shape, self.fields, self.embedding_size)


def _text_projection(config, dataset):
    return ItemTextProjection(
        dataset.item_num,
        encoder_width(config["text_encoder"]),
        config["embedding_size"],
        config["text_proj_fields"],
        config["text_normalize"],
    )


class ContextTextFusion(ContextRecommender):
    """Mixin placed between a context-aware backbone and ``ContextRecommender``."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_field = config["ITEM_ID_FIELD"]
        history = self.item_field + config["LIST_SUFFIX"]
        self.history_field = history if history in dataset.field2type else None
        self.item_text = _text_projection(config, dataset)
        self.num_feature_field += self.item_text.fields * (2 if self.history_field else 1)
        self._text_source = None

    def concat_embed_input_fields(self, interaction):
        fields = [super().concat_embed_input_fields(interaction)]
        text_source = self._text_source if self._text_source is not None else interaction
        fields.append(self.item_text(text_source[self.item_field]))
        if self.history_field:
            seq = text_source[self.history_field]
            mask = (seq != 0).float().unsqueeze(-1).unsqueeze(-1)
            text = (self.item_text(seq) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            fields.append(text)
        return torch.cat(fields, dim=1)


class _AddedItemView:
    """First base of a fused context-aware backbone: with added items present, the backbone
    reads an interaction whose added items are item 0, and the text part reads the real ids."""

    def forward(self, interaction):
        if not self.item_text.has_added_items:
            return super().forward(interaction)
        from recbole.data.interaction import Interaction

        view = Interaction(dict(interaction.interaction))
        for field in (self.item_field, self.history_field):
            if field:
                view.interaction[field] = self.item_text.id_items(interaction[field])
        self._text_source = interaction
        try:
            return super().forward(view)
        finally:
            self._text_source = None


class _TextSeqEmbedding(nn.Module):
    """DIN's ``ContextSeqEmbLayer`` with the item text fields appended to the item embeddings."""

    def __init__(self, layer, item_text):
        super().__init__()
        self.layer, self.item_text = layer, item_text

    def forward(self, user_idx, item_idx):
        # Added items have rows of their own in the layer's item table (add_item_rows).
        sparse, dense = self.layer(user_idx, item_idx)
        text = self.item_text(item_idx)
        sparse["item"] = text if sparse["item"] is None else torch.cat([sparse["item"], text], dim=-2)
        return sparse, dense


class TextDIN(DIN):
    """RecBole's DIN with the item text fields; also the base of a fused DIN subclass."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_text = _text_projection(config, dataset)
        self.embedding_layer = _TextSeqEmbedding(self.embedding_layer, self.item_text)
        # DIN sizes its attention and MLP by the number of item fields: k more of them now.
        n_fields = self.dnn_list[0] // (3 * self.embedding_size) + self.item_text.fields
        self.dnn_list = [3 * n_fields * self.embedding_size] + self.mlp_hidden_size
        self.att_list = [4 * n_fields * self.embedding_size] + self.mlp_hidden_size
        self.attention = SequenceAttLayer(
            self.attention.mask_mat, self.att_list, activation="Sigmoid", softmax_stag=False, return_seq_weight=False
        )
        self.dnn_mlp_layers = MLPLayers(self.dnn_list, activation="Dice", dropout=self.dropout_prob, bn=True)
        self.apply(self._init_weights)


class TextDINUser(DINUser, TextDIN):
    """The plugin's DINUser with the item text fields: DINUser widens the MLP TextDIN has sized."""


# Fused class of each backbone name: the two defined above, and each context-aware one made so far.
FUSED_BACKBONES = {"DIN": TextDIN, "DINUser": TextDINUser}


def fusable(backbone_class):
    """Whether CELA can fuse text into ``backbone_class``: DIN (and its subclasses) and RecBole's
    context-aware models."""
    return issubclass(backbone_class, (DIN, ContextRecommender))


def fused_backbone(backbone_class):
    """The text-fused class ``Text<BACKBONE>`` of a backbone class (see the module's docstring)."""
    fused = FUSED_BACKBONES.get(backbone_class.__name__)
    if fused is not None and backbone_class in fused.__mro__:
        return fused
    name, attrs = f"Text{backbone_class.__name__}", {"__module__": __name__}
    if issubclass(backbone_class, DIN):  # another DIN subclass: TextDIN's fields under its own forward
        fused = type(name, (backbone_class, TextDIN), attrs)
    elif issubclass(backbone_class, ContextRecommender):
        fused = type(name, (_AddedItemView, backbone_class, ContextTextFusion), attrs)
    else:
        raise PluginConfigError(
            f"backbone '{backbone_class.__name__}' is not supported by CELA: use DIN, DINUser or a RecBole "
            "context-aware model (DeepFM, DCNV2, AutoInt, WideDeep, xDeepFM, FM, ...)."
        )
    FUSED_BACKBONES[backbone_class.__name__] = fused
    return fused


def cat_item_rows(table, rows):
    """The item table ``table`` (a RecBole ``Interaction``, one row per item) with ``rows`` (the
    same fields) appended; a sequence field is padded with 0 to the wider of the two."""
    from recbole.data.interaction import Interaction

    out = {}
    for field, old in table.interaction.items():
        new = rows[field].to(old.device, old.dtype)
        if old.dim() == 2 and old.shape[1] != new.shape[1]:
            width = max(old.shape[1], new.shape[1])
            old, new = (F.pad(x, (0, width - x.shape[1])) for x in (old, new))
        out[field] = torch.cat([old, new])
    return Interaction(out)


def item_table_layer(model):
    """The embedding layer holding the item table a DIN-family model looks its items up in
    (``item_feat``: one row per item id), or None for a model that reads item features from the
    interaction (context-aware)."""
    if not isinstance(model, DIN):
        return None
    layer = model.embedding_layer
    return layer.layer if isinstance(layer, _TextSeqEmbedding) else layer


def add_item_rows(model, rows):
    """Append the ID feature rows of new items (item id 0, their own item features) to the item
    table of a DIN-family model, so that ids from its ``item_num`` on look them up; a context-aware
    model reads them from the interaction instead (nothing to do)."""
    layer = item_table_layer(model)
    if layer is not None:
        layer.item_feat = cat_item_rows(layer.item_feat, rows)


@torch.no_grad()
def item_id_vectors(model, dataset):
    """Every item's representation in an ID backbone: its item field embeddings, concatenated.

    Returns [item_num, n_item_fields * embedding_size]; row 0 is the padding item.
    """
    model.eval()
    device = next(model.parameters()).device
    items = torch.arange(dataset.item_num, device=device)
    if isinstance(model, DIN):
        user = torch.zeros_like(items)
        layer = model.embedding_layer
        layer = layer.layer if isinstance(layer, _TextSeqEmbedding) else layer
        sparse, dense = layer(user, items.unsqueeze(1))
        parts = [x for x in (sparse["item"], dense["item"]) if x is not None]
        return torch.cat(parts, dim=-2).flatten(1)
    # Context-aware: embed one real row repeated per item, with the item's own features,
    # then keep the item-source fields (in RecBole's field order of concat_embed_input_fields).
    row = dataset.join(dataset.inter_feat[:1])
    rows = row.repeat(dataset.item_num)
    rows.update(dataset.get_item_feature())
    rows = rows.to(device)
    embedded = ContextRecommender.concat_embed_input_fields(model, rows)
    order = model.token_seq_field_names + model.token_field_names + model.float_seq_field_names + model.float_field_names
    item_fields = set(dataset.fields(source=[FeatureSource.ITEM, FeatureSource.ITEM_ID]))
    index = [i for i, f in enumerate(order) if f in item_fields]
    return embedded[:, index].flatten(1)

r"""CELA: Cost-Efficient Language model Alignment for CTR prediction (arXiv 2405.10596).

The model RecBole trains and evaluates is the *fused backbone* of stage 3: a RecBole backbone
(``backbone``: DIN by default, or a context-aware model) whose item representation, for the
target item and every behaviour-sequence item, is [ID field embeddings || projection of the
item's frozen, aligned text vector]. Stages 1-2 and the text table are produced by
:class:`recbole_cela.trainer.CELATrainer` before this model trains; at inference the text
encoder never runs (the table is a buffer of this model, saved in its checkpoint).

``use_text: False`` makes CELA the plain backbone (the "text off" ablation).
"""

import torch
from recbole.utils import InputType, ModelType

from recbole_cela.model.backbones import backbone_logits, backbone_names, get_backbone
from recbole_cela.model.fusion import add_item_rows, fusable, fused_backbone, item_table_layer
from recbole_cela.model.protocol import PluginModel
from recbole_cela.text.encoder import encoder_width, resolve_text_settings


class CELA(PluginModel):
    # RecBole reads these before the config exists; the config, the dataset class and MODEL_TYPE
    # follow the backbone (recbole_cela/config.py loads the backbone's RecBole defaults).
    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    backbone_key = "backbone"
    backbone_class = staticmethod(get_backbone)

    @staticmethod
    def backbone_choices():
        """The ID models CELA fuses text into (``backbone``), checked before any work."""
        return sorted((name for name in backbone_names() if fusable(get_backbone(name))), key=str.lower)

    @staticmethod
    def resolve_config(config):
        """``text_pooling: auto`` and the other text settings whose default follows the encoder's
        architecture, resolved in the config (``recbole_cela.config.build_config``), so the stages,
        their cache keys, the checkpoint and new-item scoring all read the value used."""
        if config["use_text"]:
            resolve_text_settings(config)

    def __init__(self, config, dataset):
        super().__init__()
        backbone_class = get_backbone(config["backbone"])
        self.use_text = config["use_text"]
        self.text_pooling = config["text_pooling"]
        self.text_dim = None
        if self.use_text:
            self.text_dim = encoder_width(config["text_encoder"])
            backbone_class = fused_backbone(backbone_class)
        self.backbone = backbone_class(config, dataset)

    def set_text_table(self, table):
        self.backbone.item_text.set_table(table.to(self.backbone.item_text.text_table.device))

    def add_text_items(self, vectors, item_rows=None):
        """New items (see ``recbole_cela.new_items``): appends their text vectors and their ID
        feature rows ``item_rows`` (the padding item id and the features they come with; default:
        the padding item's row, no features) and returns their internal ids."""
        layer = item_table_layer(self.backbone)
        if layer is not None:
            if item_rows is None:
                item_rows = layer.item_feat[torch.zeros(len(vectors), dtype=torch.long)]
            add_item_rows(self.backbone, item_rows)
        return self.backbone.item_text.add_rows(vectors)

    def attach_encoder(self, encoder, tokenized):
        """End-to-end variant: the encoder trains inside the CTR loss (slow; for comparison)."""
        from recbole_cela.text.encoder import encode

        self.encoder = encoder  # registered: its parameters join the optimizer

        def encoder_fn(items):
            batch = tokenized.batch(items.cpu()).to(items.device)
            return encode(self.encoder, batch["input_ids"], batch["attention_mask"], self.text_pooling)

        self.backbone.item_text.encoder_fn = encoder_fn

    def forward(self, interaction):
        """The logit of each interaction, as RecBole's CTR models return it."""
        return backbone_logits(self.backbone, interaction)

    def calculate_loss(self, interaction):
        return self.backbone.calculate_loss(interaction)  # the backbone's own loss and regulariser

    def predict(self, interaction):
        return torch.sigmoid(self.forward(interaction))

r"""FLIP (earlier ALT): fine-grained alignment of an ID-based CTR model and a PLM (arXiv 2310.19453).

Each interaction is seen twice: as ID fields by an ID backbone (``flip_backbone``: DCNV2, the
official default, DeepFM, AutoInt, RecBole's DIN or the plugin's DINUser) and as a hard-prompt sentence
(:mod:`recbole_cela.text.prompts`) by a text encoder. Pretraining aligns the two views
(:mod:`recbole_cela.model.flip_pretrain`, run by :class:`recbole_cela.trainer.FLIPTrainer`); this
class is the *fine-tuned* model that RecBole trains and evaluates, with ``flip_finetune``:

* ``id``: the backbone alone (its logit);
* ``text``: the encoder alone, pooled sentence vector -> linear head;
* ``joint`` (FLIP proper): both (with ``flip_freeze_backbone`` the warmed-up backbone is frozen,
  batch-norm statistics included, and only the text tower and the weights train), final logit =
  w_id * ID logit + w_text * text logit with the two weights learnable. They start at 1 and the
  text head's last layer at zero, so fine-tuning starts exactly from the (pretrained, warmed-up)
  ID model and learns the text's correction; a convex mix starting at 0.5 would halve the
  warmed-up ID logit at the first step (docs/FLIP.md).

The text strategies build each batch's prompts on the fly from RecBole's interaction (user id,
item id, history), so ``predict`` works on RecBole's own evaluation batches. The encoder reads
them in chunks of prompts of similar length (a batch sorted by prompt length, so a chunk pads to
its own longest prompt), under bf16 autocast where ``text_amp`` resolves to bf16, and in inference
mode when the model is not training.
"""

import torch
import torch.nn as nn
from recbole.utils import InputType, ModelType

from recbole_cela.model.backbones import backbone_logits, get_backbone
from recbole_cela.model.protocol import PluginModel
from recbole_cela.text.encoder import (autocast, encode, encoder_config, freeze_below, is_decoder, load_encoder,
                                       resolve_encoder_path, text_precision)
from recbole_cela.utils import PluginConfigError

# Backbone -> its final linear layer(s): their input is the backbone's sample representation.
BACKBONE_HEADS = {
    "DCNV2": ("predict_layer",), "DeepFM": ("deep_predict_layer",), "AutoInt": ("attn_fc", "deep_predict_layer"),
    "DIN": ("dnn_predict_layers",), "DINUser": ("dnn_predict_layers",),
}
STRATEGIES = ("joint", "id", "text")


def check_backbone(name):
    if name not in BACKBONE_HEADS:
        raise PluginConfigError(f"flip_backbone '{name}' is not supported by FLIP: use one of {', '.join(BACKBONE_HEADS)}.")
    return get_backbone(name)


class TabularView(nn.Module):
    """A RecBole backbone run unchanged, returning its logit and its sample representation.

    The representation is the input of the backbone's final linear layer(s) (DCNV2: the stacked
    cross/deep output; DeepFM: the deep part; AutoInt: attention and deep parts; DIN / DINUser: the
    output of the MLP over [(profile,) interest, target, interest * target]), captured with
    forward hooks, so RecBole's forward is reused as is (:func:`backbone_logits`).
    """

    def __init__(self, backbone, name):
        super().__init__()
        self.backbone = backbone
        self.head_names = BACKBONE_HEADS[name]
        self.dim = sum(getattr(backbone, n).in_features for n in self.head_names)
        self.sequential = hasattr(backbone, "ITEM_SEQ")  # DIN's forward(user, item_seq, item_seq_len, next_items)

    def token_fields(self):
        """The single-valued ID fields of the interaction the backbone reads (what MTM masks): a
        context model's token fields; DIN's user id and target item (masking one masks every
        feature the backbone looks up by it)."""
        if self.sequential:
            return [self.backbone.USER_ID, self.backbone.POS_ITEM_ID]
        return list(self.backbone.token_field_names)

    def forward(self, interaction):
        captured = []
        hooks = [getattr(self.backbone, n).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
                 for n in self.head_names]
        try:
            out = backbone_logits(self.backbone, interaction)
        finally:
            for h in hooks:
                h.remove()
        return out, torch.cat(captured, dim=-1)


class FLIP(PluginModel):
    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    backbone_key = "flip_backbone"
    backbone_class = staticmethod(check_backbone)
    backbone_choices = staticmethod(lambda: list(BACKBONE_HEADS))  # flip_backbone, checked before any work
    # The runner refuses --nproc / --world_size with this message, before any work.
    not_distributed = (
        "FLIP runs in one process: its pretraining and text fine-tuning read sampled interactions "
        "through single-process loaders (docs/FLIP.md). Run it without --nproc / --world_size."
    )

    @staticmethod
    def resolve_config(config):
        """Refuse a decoder-only text encoder before any work, wherever FLIP would read text: its
        pretraining recovers masked prompt tokens with a masked-LM head, and its prompts are framed
        by the encoder's [CLS] and [SEP] tokens; a causal model has neither."""
        if not (config["flip_pretrain"] or config["flip_finetune"] != "id"):
            return  # the ID model alone: no text is read
        path = resolve_encoder_path(config["text_encoder"])
        model_config = encoder_config(path)
        if is_decoder(model_config):
            raise PluginConfigError(
                f"FLIP needs a masked language model, and text_encoder '{path}' is a decoder "
                f"({model_config.model_type}): FLIP's pretraining recovers masked prompt tokens with a masked-LM "
                "head and its prompts are framed by [CLS]/[SEP]. Use an encoder folder (BERT, RoBERTa, "
                "DistilBERT, MiniLM), or run the decoder with --model=CELA."
            )

    def __init__(self, config, dataset):
        super().__init__()
        name = config["flip_backbone"]
        self.strategy = config["flip_finetune"]
        if self.strategy not in STRATEGIES:
            raise PluginConfigError(f"flip_finetune must be one of {STRATEGIES}, not '{self.strategy}'.")
        self.LABEL = config["LABEL_FIELD"]
        self.tabular = TabularView(check_backbone(name)(config, dataset), name)
        self.text_batch_size = config["flip_text_batch_size"]
        self.pooling = config["text_pooling"]
        self.precision = text_precision(config["text_amp"], torch.device(config["device"]).type)
        self.prompts = None  # InteractionPrompts, set by the trainer (set_prompts)
        self.encoder = None
        if self.strategy != "id":
            encoder = load_encoder(resolve_encoder_path(config["text_encoder"]))
            self.encoder = freeze_below(encoder, config["flip_finetune_trainable_layers"])
            self.text_head = nn.Sequential(nn.Dropout(0.1), nn.Linear(encoder.config.hidden_size, 1))
            nn.init.zeros_(self.text_head[-1].weight)  # the text logit starts at 0
            nn.init.zeros_(self.text_head[-1].bias)
        if self.strategy == "joint":
            self.mix = nn.Parameter(torch.ones(2))  # (w_id, w_text)
        self.freeze_backbone = self.strategy == "joint" and config["flip_freeze_backbone"]
        if self.freeze_backbone:
            for p in self.tabular.backbone.parameters():
                p.requires_grad_(False)
        self.loss = nn.BCEWithLogitsLoss()

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_backbone:  # batch-norm statistics stay those of the warmed-up backbone
            self.tabular.backbone.eval()
        return self

    def set_prompts(self, prompts):
        self.prompts = prompts

    def load_pretrained(self, backbone_state, encoder=None):
        """Start from pretrained weights: the backbone's state dict and (text strategies) an encoder."""
        self.tabular.backbone.load_state_dict(backbone_state)
        if self.encoder is not None and encoder is not None:
            self.encoder.load_state_dict(encoder.state_dict())

    def text_logit(self, interaction):
        if self.prompts is None:
            raise RuntimeError("FLIP's text strategies need prompts: FLIPTrainer sets them (model.set_prompts).")
        device = next(self.encoder.parameters()).device
        rows = self.prompts.token_rows(interaction)
        order = sorted(range(len(rows)), key=lambda n: len(rows[n]))  # chunks of similar length
        logits = []
        with torch.inference_mode(not self.training), autocast(device, self.precision):
            for start in range(0, len(order), self.text_batch_size):
                chunk = [rows[n] for n in order[start : start + self.text_batch_size]]
                input_ids, attention_mask = (t.to(device) for t in self.prompts.padded(chunk))
                vectors = encode(self.encoder, input_ids, attention_mask, self.pooling)
                logits.append(self.text_head(vectors).squeeze(-1).float())
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(logits)[inverse.to(device)]

    def forward(self, interaction):
        """The logit of each interaction under the fine-tuning strategy."""
        if self.strategy == "text":
            return self.text_logit(interaction)
        id_logit, _ = self.tabular(interaction)
        if self.strategy == "id":
            return id_logit
        return self.mix[0] * id_logit + self.mix[1] * self.text_logit(interaction)

    def calculate_loss(self, interaction):
        if self.strategy == "id":  # exactly RecBole's loss of the backbone (its regulariser included)
            return self.tabular.backbone.calculate_loss(interaction)
        return self.loss(self.forward(interaction), interaction[self.LABEL])

    def predict(self, interaction):
        return torch.sigmoid(self.forward(interaction))

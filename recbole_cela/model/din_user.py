r"""DINUser: RecBole's DIN with the user profile in its final MLP, as in the DIN paper.

RecBole's ``DIN`` embeds every user field (``ContextSeqEmbLayer``) but its ``forward`` leaves
them out: the MLP reads [interest, target item, interest * target item] only. The DIN paper
(Zhou et al., KDD 2018, Fig. 2) concatenates the *user profile features* there too. Where the
label depends on who the user is (ml-100k under this plugin's protocol: "rating >= 4" is largely
a user's rating habit, and LR beats DIN there: docs/benchmarks/ml-100k.md), RecBole's DIN cannot
use that.

This model adds the user's field embeddings (every field of the user feature table: the user id
and, e.g., age, gender, occupation) to the MLP input:
[user profile, interest, target item, interest * target item]. Everything else is RecBole's
DIN (attention, Dice MLP, loss, config keys). As a CELA backbone (``--backbone=DINUser``) the
text fields join the item side as they do for DIN (``recbole_cela/model/fusion.py``).
"""

import torch
from recbole.model.layers import MLPLayers
from recbole.model.sequential_recommender.din import DIN
from recbole.utils import FeatureType


class DINUser(DIN):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # User fields as DIN counts item fields: float fields only when declared numerical.
        self.num_user_feature = sum(
            1
            for field in self.user_feat.interaction.keys()
            if dataset.field2type[field] not in (FeatureType.FLOAT_SEQ, FeatureType.FLOAT)
            or field in config["numerical_features"]
        )
        # dnn_list[0] is whatever the item side needs (DIN, or DIN with text fields).
        self.dnn_list = [self.dnn_list[0] + self.num_user_feature * self.embedding_size] + self.mlp_hidden_size
        self.dnn_mlp_layers = MLPLayers(self.dnn_list, activation="Dice", dropout=self.dropout_prob, bn=True)
        self.apply(self._init_weights)

    @staticmethod
    def _flatten(sparse, dense):
        """[..., fields, emb] parts of one side (sparse and/or dense) -> [..., fields * emb]."""
        table = torch.cat([x for x in (sparse, dense) if x is not None], dim=-2)
        return table.flatten(-2)

    def forward(self, user, item_seq, item_seq_len, next_items):
        sparse, dense = self.embedding_layer(user, torch.cat([item_seq, next_items.unsqueeze(1)], dim=1))
        items = self._flatten(sparse["item"], dense["item"])  # [B, L + 1, item width]
        history, target = items[:, :-1], items[:, -1]
        interest = self.attention(target, history, item_seq_len).squeeze(1)
        profile = self._flatten(sparse["user"], dense["user"])  # [B, user width]
        mlp_in = torch.cat([profile, interest, target, interest * target], dim=-1)
        return self.dnn_predict_layers(self.dnn_mlp_layers(mlp_in)).squeeze(1)

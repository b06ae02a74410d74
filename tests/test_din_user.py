"""DINUser: RecBole's DIN plus the user fields in its MLP, alone and as CELA's backbone."""

import json
import os

import torch
from recbole.data.interaction import Interaction

from recbole_cela.model import DINUser
from recbole_cela.model.fusion import TextDIN
from recbole_cela.trainer import CELATrainer
from recbole_cela.model import get_model
from helpers import build_run

FAST = {"align_epochs": 1, "epochs": 1, "align_batch_size": 32, "text_trainable_layers": -1, "max_text_length": 32}


def _other_users(batch):
    """The batch with every row's user replaced by another user of the batch (same history and item)."""
    user = batch["user_id"]
    swapped = Interaction({**batch.interaction, "user_id": user.roll(1)})
    assert (swapped["user_id"] != user).any()
    return swapped


def test_din_user_reads_the_user_fields_din_does_not(run_config, tiny_encoder):
    config, din_user, train, _, test = build_run("DINUser", run_config, tiny_encoder, FAST)
    din = get_model("DIN")(config, train.dataset)
    batch = next(iter(test))[0]
    swapped = _other_users(batch)
    din.eval(), din_user.eval()
    with torch.no_grad():
        # RecBole's DIN embeds the user fields but its forward never reads them (why DINUser exists).
        assert torch.equal(din.predict(batch), din.predict(swapped))
        assert not torch.allclose(din_user.predict(batch), din_user.predict(swapped))
    # MLP input: DIN's three item-wide parts plus the four user fields (id, age, gender, occupation).
    e = config["embedding_size"]
    assert din_user.num_user_feature == 4
    assert din_user.dnn_list[0] == din.dnn_list[0] + 4 * e


def test_cela_over_din_user(run_config, tiny_encoder):
    config, model, train, valid, test = build_run("CELA", run_config, tiny_encoder, FAST, backbone="DINUser")
    backbone = model.backbone
    assert isinstance(backbone, DINUser) and isinstance(backbone, TextDIN)
    e, k = config["embedding_size"], config["text_proj_fields"]
    # item fields (item_id, release_year, class) + k text fields, three times; then the user fields.
    assert backbone.dnn_list[0] == 3 * (3 + k) * e + 4 * e
    assert backbone.att_list[0] == 4 * (3 + k) * e
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)  # stage 2 trains DINUser as its frozen ID backbone
    with open(os.path.join(trainer.stage_report["backbone"]["artifact"], "stage.json")) as f:
        assert json.load(f)["settings"]["model"] == "DINUser"
    batch = next(iter(test))[0]
    model.eval()
    with torch.no_grad():
        before = model.predict(batch)
        assert not torch.allclose(before, model.predict(_other_users(batch)))  # the user fields count
        model.set_text_table(torch.randn_like(backbone.item_text.text_table))
        assert not torch.allclose(before, model.predict(batch))  # and so does the text


def test_ml_100k_gives_cela_the_din_user_backbone():
    """ml-100k's dataset config chooses DINUser for CELA (its users' features; docs/tuning.md), the
    props default stays DIN, and the command line still wins."""
    from recbole_cela.config import build_config

    assert build_config("CELA", "ml-100k")[1]["backbone"] == "DINUser"
    assert build_config("CELA", "amazon-sports")[1]["backbone"] == "DIN"
    assert build_config("CELA", "ml-100k", config_dict={"backbone": "DIN"})[1]["backbone"] == "DIN"

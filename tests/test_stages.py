"""The staged-trainer base: which setting changes re-run the ID backbone stage, the backbone's
settings inside CELA, a given backbone checkpoint, FLIP under several processes."""

import os

import pytest
import torch

from recbole_cela.config import build_config
from recbole_cela.quick_start import run, run_recbole_cela
from recbole_cela.trainer import CELATrainer
from recbole_cela.trainer.stage import NON_SEMANTIC_KEYS
from recbole_cela.utils import PluginConfigError, props_keys
from helpers import build_run

FAST = {"dap": False, "align_epochs": 1, "epochs": 1, "align_batch_size": 32, "text_trainable_layers": -1,
        "max_text_length": 32}


def backbone_reused(run_config, tiny_encoder, cela_dir, **overrides):
    """Run CELA's stage 2a once; whether it came from the cache in ``cela_dir``."""
    config, model, train, valid, _ = build_run("CELA", run_config, tiny_encoder, FAST, cela_dir=cela_dir, **overrides)
    trainer = CELATrainer(config, model)
    trainer.stage_backbone(train, valid)
    return trainer.stage_report["backbone"]["cached"]


@pytest.mark.parametrize("change, reruns", [
    ({"learner": "sgd"}, True),
    ({"eval_step": 2}, True),
    ({"clip_grad_norm": {"max_norm": 5.0}}, True),
    ({"valid_metric": "LogLoss", "valid_metric_bigger": False}, True),
    ({"show_progress": True}, False),
    ({"checkpoint_dir": "OTHER"}, False),
    ({"align_temperature": 0.5, "text_proj_fields": 1}, False),  # CELA's own keys: not the backbone's
])
def test_which_changes_rerun_the_backbone(run_config, tiny_encoder, tmp_path, change, reruns):
    cela_dir = str(tmp_path / "cela")
    assert not backbone_reused(run_config, tiny_encoder, cela_dir)
    change = {k: str(tmp_path / "other") if v == "OTHER" else v for k, v in change.items()}
    assert backbone_reused(run_config, tiny_encoder, cela_dir, **change) is not reruns
    assert backbone_reused(run_config, tiny_encoder, cela_dir)  # the first artifact is still there


def test_a_backbone_only_key_reruns_that_backbone(run_config, tiny_encoder, tmp_path):
    cela_dir = str(tmp_path / "cela")
    assert not backbone_reused(run_config, tiny_encoder, cela_dir, backbone="DCNV2")
    assert not backbone_reused(run_config, tiny_encoder, cela_dir, backbone="DCNV2", cross_layer_num=2)
    assert backbone_reused(run_config, tiny_encoder, cela_dir, backbone="DCNV2")


@pytest.mark.parametrize("backbone", ["DeepFM", "DIN", "DCNV2"])
def test_backbone_settings_are_the_backbone_rows(run_config, backbone):
    """CELA's backbone resolves every setting it does not own exactly as --model=<BACKBONE> does."""
    files, overrides = run_config()
    _, alone = build_config(backbone, "ml-tiny", files, overrides)
    _, cela = build_config("CELA", "ml-tiny", files, {**overrides, "backbone": backbone})
    own = props_keys("CELA") | {"model"}
    mine = {k: v for k, v in cela.final_config_dict.items() if k not in own}
    theirs = {k: v for k, v in alone.final_config_dict.items() if k not in own}
    assert mine == theirs
    assert cela["MODEL_TYPE"] == alone["MODEL_TYPE"]
    # What the plugin's props say for that backbone reached it (DIN: the paper's sizes).
    assert cela["embedding_size"] == alone["embedding_size"] == (16 if backbone in ("DIN", "DCNV2") else 10)


def test_non_semantic_keys_are_resolved_keys(run_config):
    """The deny-list names keys RecBole or the plugin really resolves (no stale names)."""
    files, overrides = run_config()
    _, config = build_config("CELA", "ml-tiny", files, overrides)
    known = set(config.final_config_dict) | props_keys("CELA") | props_keys("FLIP")
    optional = {"source_path", "item_text_file", "world_size", "nproc", "ip", "port", "offset", "local_rank",
                "verbose"}  # some runs only
    assert NON_SEMANTIC_KEYS - known <= optional


def _tree(folder):
    return {os.path.join(d, f): os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs}


def test_backbone_checkpoint_is_the_given_run(run_config, tiny_encoder, tmp_path):
    files, overrides = run_config(text_encoder=tiny_encoder, **FAST)
    din = run_recbole_cela("DIN", "ml-tiny", files, overrides)
    cela_dir = str(tmp_path / "cela")
    config, model, train, valid, _ = build_run("CELA", run_config, tiny_encoder, FAST, cela_dir=cela_dir,
                                               backbone_checkpoint=din["checkpoint"])
    trainer = CELATrainer(config, model)
    backbone, run_id = trainer.stage_backbone(train, valid)
    entry = trainer.stage_report["backbone"]
    assert entry["given"] and entry["cached"] and entry["artifact"] == din["checkpoint"]
    assert entry["settings_differ"] == []  # the DIN row's own settings are the backbone's
    saved = torch.load(din["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v.cpu()) for k, v in backbone.state_dict().items())
    assert run_id.startswith("checkpoint-") and not os.path.exists(cela_dir)  # nothing trained, nothing written


def test_backbone_checkpoint_of_another_model_or_data_is_refused(run_config, tiny_encoder, tmp_path):
    files, overrides = run_config(text_encoder=tiny_encoder, **FAST)
    deepfm = run_recbole_cela("DeepFM", "ml-tiny", files, overrides)
    fewer_fields = {**overrides, "results_dir": str(tmp_path / "r2"), "load_col": {
        "inter": ["user_id", "item_id", "label", "item_id_list"], "item": ["item_id", "class"],
        "user": ["user_id", "age", "gender", "occupation"]}}
    din_other = run_recbole_cela("DIN", "ml-tiny", files, fewer_fields)
    cela_dir = tmp_path / "cela"
    before = _tree(tmp_path / "saved")
    for checkpoint, message in ((deepfm["checkpoint"], "it is a DeepFM run, the backbone is DIN"),
                                (din_other["checkpoint"], "field 'release_year' is loaded here but was not"),
                                (str(tmp_path / "none.pth"), "No checkpoint")):
        config, model, train, valid, _ = build_run("CELA", run_config, tiny_encoder, FAST, cela_dir=str(cela_dir),
                                                   backbone_checkpoint=checkpoint)
        with pytest.raises(PluginConfigError, match=message):
            CELATrainer(config, model).stage_backbone(train, valid)
    assert not cela_dir.exists() and _tree(tmp_path / "saved") == before


def test_flip_refuses_several_processes_before_any_work(run_config, tmp_path):
    files, overrides = run_config()
    with pytest.raises(PluginConfigError, match="FLIP runs in one process"):
        run("FLIP", "ml-tiny", files, overrides, nproc=2)
    assert not os.path.exists(overrides["data_path"]) and not os.path.exists(overrides["results_dir"])

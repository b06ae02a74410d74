"""The ID models plugin models build on: looking them up, CELA's logits, the fused classes' names."""

import importlib.util

import pytest
import torch

from recbole_cela.model.backbones import get_backbone
from recbole_cela.model.fusion import FUSED_BACKBONES, TextDIN, TextDINUser
from recbole_cela.utils import PluginConfigError
from helpers import build_run


@pytest.mark.parametrize("name", ["NoSuchModel", "din", None])
def test_only_an_unknown_name_reads_unknown_model(name):
    with pytest.raises(PluginConfigError, match=f"Unknown model '{name}'"):
        get_backbone(name)


@pytest.mark.skipif(importlib.util.find_spec("lightgbm") is not None, reason="needs lightgbm absent")
def test_a_model_that_fails_to_import_raises_its_own_error():
    """RecBole's LightGBM model exists; its library is not installed: that is no typo."""
    with pytest.raises(ImportError, match="lightgbm"):
        get_backbone("LightGBM")


@pytest.mark.parametrize("backbone", ["DIN", "DCNV2"])
def test_cela_forward_is_the_logit_and_predict_its_sigmoid(run_config, tiny_encoder, backbone):
    """As in RecBole's CTR models: ``forward`` returns logits, ``predict`` the probabilities; the
    plain backbone's predictions (use_text off) are CELA's (DCNV2 itself returns probabilities)."""
    _, model, _, _, test = build_run("CELA", run_config, tiny_encoder, {}, backbone=backbone, use_text=False)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        logits, probabilities = model(batch), model.predict(batch)
        assert torch.equal(probabilities, torch.sigmoid(logits))
        assert torch.allclose(probabilities, model.backbone.predict(batch), atol=1e-6)
        assert (logits < 0).any() or (logits > 1).any()  # logits, not probabilities


@pytest.mark.parametrize("backbone, name", [("DIN", "TextDIN"), ("DINUser", "TextDINUser"), ("DeepFM", "TextDeepFM")])
def test_fused_backbones_are_named_after_their_backbone(run_config, tiny_encoder, backbone, name):
    _, model, *_ = build_run("CELA", run_config, tiny_encoder, {}, backbone=backbone)
    fused = type(model.backbone)
    assert fused.__name__ == name and fused.__module__ == "recbole_cela.model.fusion"
    assert FUSED_BACKBONES[backbone] is fused
    assert issubclass(fused, get_backbone(backbone))
    assert FUSED_BACKBONES["DIN"] is TextDIN and FUSED_BACKBONES["DINUser"] is TextDINUser

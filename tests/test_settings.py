"""Settings checked before any work, against the declaration that opens each key's props comment."""

import glob
import re

import pytest
import yaml

from recbole_cela.config import build_config
from recbole_cela.settings import declarations, parse_declaration
from recbole_cela.utils import PluginConfigError

from conftest import REPO

SHIPPED = sorted(glob.glob(str(REPO / "props" / "*.yaml")) + glob.glob(str(REPO / "dataset_configs" / "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: "/".join(p.split("/")[-2:]))
def test_every_shipped_key_declares_what_it_accepts(path):
    """Each top-level key of the plugin's config files has a declaration, and its default passes it."""
    with open(path, encoding="utf-8") as f:
        keys = [m[1] for m in (re.match(r"([A-Za-z_]\w*)\s*:", line) for line in f) if m]
    declared = declarations(path)
    assert keys and sorted(declared) == sorted(keys)
    defaults = yaml.safe_load(open(path, encoding="utf-8"))
    assert [k for k in keys if not declared[k].accepts(defaults[k])] == []


@pytest.mark.parametrize("text, accepted, refused", [
    ("int", [0, -3], [1.5, True, "1", None]),
    ("float", [0.5, 2], [True, "0.5", None]),
    ("bool", [True, False], [1, "True", None]),
    ("int >= 1", [1, 50], [0, -1, 1.0]),
    ("float in [0, 1)", [0, 0.0, 0.99], [1, 1.0, -0.1]),
    ("float in (0, 1]", [1, 0.5], [0, 0.0, 1.01]),
    ("str: mean | cls", ["mean", "cls"], ["max", "Mean", None, 1]),
    ("str: auto or bool", ["auto", True, False], ["on", None, 1]),
    ("float > 0 or None", [1e-3, None], [0, -1.0, "x"]),
    ("int: -1 or int >= 2", [-1, 2, 300], [0, 1, -2]),
    ("list of str or None", [[], ["title"], None], ["title", [1], ["a", None]]),
    ("list or str", [["AUC"], "AUC"], [None, 3]),
    ("float: 0.5 | 1", [0.5, 1, 1.0], [True, 0.7, "1"]),
])
def test_declarations(text, accepted, refused):
    declaration = parse_declaration(text)
    assert [v for v in accepted if not declaration.accepts(v)] == []
    assert [v for v in refused if declaration.accepts(v)] == []


@pytest.mark.parametrize("text", ["string", "int >> 1", "str in [0, 1]", "list of things", "bool: yes | no"])
def test_free_text_is_no_declaration(text):
    """A comment that merely opens with a parenthesis declares nothing (and is not checked)."""
    assert parse_declaration(text) is None


def test_bad_settings_are_named_with_what_is_allowed(run_config):
    files, overrides = run_config(epochs="abc", text_pooling="max", align_valid_ratio=1.5, learning_rate="fast",
                                  reproducibility="yes")
    with pytest.raises(PluginConfigError) as error:
        build_config("CELA", "ml-tiny", files, overrides)
    assert str(error.value).splitlines()[1:] == [
        "  epochs = 'abc': expected (int >= 1), as props/overall.yaml declares",
        "  text_pooling = 'max': expected (str: auto | mean | cls | last), as props/CELA.yaml declares",
        "  align_valid_ratio = 1.5: expected (float in (0, 1)), as props/CELA.yaml declares",
        # RecBole's keys that no plugin file declares: checked against RecBole's default's type
        "  learning_rate = 'fast': expected a number (RecBole's default is 0.001)",
        "  reproducibility = 'yes': expected True or False (RecBole's default is a bool)",
    ]


def test_valid_values_other_than_the_defaults_pass(run_config):
    files, overrides = run_config(text_amp=True, align_head_learning_rate=None, learning_rate=1, text_pooling="cls",
                                  align_target="item_clickers", text_fields=["movie_title"])
    _, config = build_config("CELA", "ml-tiny", files, overrides)
    assert config["text_pooling"] == "cls" and config["learning_rate"] == 1


def test_a_key_is_checked_only_where_a_read_file_declares_it(run_config):
    """CELA's keys mean nothing to a DIN run: they are not declared there, so not checked."""
    files, overrides = run_config(text_pooling="max")
    _, config = build_config("DIN", "ml-tiny", files, overrides)
    assert config["text_pooling"] == "max"


@pytest.mark.parametrize("model, key, allowed, not_allowed", [
    ("CELA", "backbone", ["DIN", "DINUser", "DeepFM", "DCNV2", "xDeepFM"], ["CELA", "FLIP", "DIEN"]),
    ("FLIP", "flip_backbone", ["DCNV2", "DeepFM", "AutoInt", "DIN", "DINUser"], ["DIEN", "CELA"]),
])
def test_an_unknown_backbone_names_its_key_and_the_backbones(run_config, model, key, allowed, not_allowed):
    files, overrides = run_config(**{key: "NoSuchModel"})
    with pytest.raises(PluginConfigError, match=f"^invalid setting {key} = 'NoSuchModel': expected one of") as error:
        build_config(model, "ml-tiny", files, overrides)
    listed = str(error.value).split(": ")[-1].rstrip(".").split(", ")
    assert set(allowed) <= set(listed) and not set(not_allowed) & set(listed)

"""Shared fixtures: a small real slice of ml-100k and a tiny randomly initialised BERT."""

import os
from pathlib import Path

import pandas as pd
import pytest
import recbole

import recbole_cela  # noqa: F401  (compatibility fixes)
from recbole_cela.text.encoder import default_encoder_path

REPO = Path(__file__).parents[1]
ML_100K = Path(os.path.dirname(recbole.__file__)) / "dataset_example" / "ml-100k"
N_USERS = 40


def pytest_configure(config):
    """The warning filters ``import recbole_cela`` sets, as pytest filters: pytest puts back the
    filters of before the import after collecting, and around each test."""
    from recbole_cela.compat import _RECBOLE_WARNINGS

    for message, module in _RECBOLE_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:FutureWarning:{module}")


@pytest.fixture(scope="session")
def ml_slice(tmp_path_factory):
    """The first N_USERS users of the real ml-100k, as a raw RecBole dataset 'ml-tiny'."""
    folder = tmp_path_factory.mktemp("raw") / "ml-tiny"
    folder.mkdir()
    inter = pd.read_csv(ML_100K / "ml-100k.inter", sep="\t", dtype=str)
    users = inter.iloc[:, 0].drop_duplicates().iloc[:N_USERS]
    inter[inter.iloc[:, 0].isin(users)].to_csv(folder / "ml-tiny.inter", sep="\t", index=False)
    for suffix in ("item", "user"):
        (folder / f"ml-tiny.{suffix}").write_bytes((ML_100K / f"ml-100k.{suffix}").read_bytes())
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights plus the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def run_config(ml_slice, tmp_path):
    """Config files and overrides that run any model on the slice inside tmp_path."""

    def make(**overrides):
        config = {
            "source_path": str(ml_slice),
            "data_path": str(tmp_path / "dataset"),
            "checkpoint_dir": str(tmp_path / "saved"),
            "results_dir": str(tmp_path / "results"),
            "show_progress": False,
            "epochs": 2,
            "train_batch_size": 256,
            "state": "WARNING",
            # The slice reads ml-100k's dataset config, which gives CELA the DINUser backbone; the
            # tests exercise the props default, DIN (DINUser inside CELA: tests/test_din_user.py).
            "backbone": "DIN",
        }
        config.update(overrides)
        return [str(REPO / "dataset_configs" / "ml-100k.yaml")], config

    return make

"""The command line: every RecBole CTR model and the plugin's, one result file per run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_cela.quick_start import build_config, run_recbole_cela
from recbole_cela.utils import PluginConfigError

from conftest import REPO
from helpers import loader_auc


def _result(folder):
    (name,) = os.listdir(folder)
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def test_cli_deepfm(run_config, tmp_path):
    files, overrides = run_config()
    args = [f"--{k}={v}" for k, v in overrides.items()]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_cela.py"), "--model=DeepFM", "--dataset=ml-tiny",
         f"--config_files={files[0]}", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(overrides["results_dir"])
    assert result["model"] == "DeepFM" and result["dataset"] == "ml-tiny"
    assert 0.5 < result["test_result"]["auc"] <= 1.0  # real signal even on a slice
    assert result["test_result"]["logloss"] > 0
    assert result["fit_time_s"] > 0 and result["eval_samples_per_s"] > 0
    assert set(result["test_auc_by_popularity"]) == {"0-5", "6-20", ">20"}
    assert result["config"]["epochs"] == 2  # the command-line override reached RecBole


@pytest.mark.parametrize("model", ["DIN", "DINUser", "DCNV2", "AutoInt"])
def test_models_in_process(run_config, model):
    files, overrides = run_config(epochs=1)
    result = run_recbole_cela(model, "ml-tiny", files, overrides)
    # The checkpoint the result names holds the tested model: reloaded, it gives the reported test
    # AUC (recomputed apart from RecBole's evaluator), and it learned: better than chance on the
    # training data.
    model_class, config = build_config(model, "ml-tiny", files, overrides)
    train, _, test = data_preparation(config, create_dataset(config))
    net = model_class(config, train.dataset)
    net.load_state_dict(torch.load(result["checkpoint"], weights_only=True)["state_dict"])
    assert result["test_result"]["auc"] == pytest.approx(loader_auc(net, test), abs=6e-5)
    assert loader_auc(net, train) > 0.6
    n = sum(b["n"] for b in result["test_auc_by_popularity"].values())
    assert n == 40  # one test sample per user of the slice (explicit data: no negatives)
    # the buckets come from RecBole's own scoring pass (recorded), so its AUC and theirs agree
    assert result["test_auc_all_samples"] == pytest.approx(result["test_result"]["auc"], abs=5e-5)


def test_unknown_model_lists_available(run_config):
    files, overrides = run_config()
    with pytest.raises(PluginConfigError, match="Available CTR models: .*CELA.*DeepFM.*DIN"):
        run_recbole_cela("NoSuchModel", "ml-tiny", files, overrides)


def test_unknown_dataset_lists_known(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_cela.py"), "--model=DeepFM", "--dataset=nope",
         f"--data_path={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0
    assert "Unknown dataset 'nope'" in proc.stderr and "amazon-sports" in proc.stderr

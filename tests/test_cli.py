"""The command line: every RecBole CTR model and the plugin's, one result file per run; a known error
as one error block, any other with its traceback."""

import json
import os
import re
import socket
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


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def command(name):
    """The console command ``name`` installed beside this interpreter, as a user runs it."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.isfile(path), f"{name} is not installed in this environment (pip install -e .)"
    return [path]


RUNNER = [sys.executable, str(REPO / "run_recbole_cela.py")]


@pytest.mark.parametrize("how, args, expected", [
    pytest.param("runner", ["--model=DeepFM", "--source_path=MISSING"],
                 r"source_path '.*missing' does not exist: source_format 'recbole' reads 'ml-tiny.inter'", id="missing-source"),
    pytest.param("runner", ["--model=DeepFM", "--source_path=MISSING", "--nproc=2", "--port=PORT"],
                 r"source_path '.*missing' does not exist: source_format 'recbole' reads 'ml-tiny.inter'", id="missing-source-two-processes"),
    pytest.param("runner", ["--model=CELA", "--text_encoder=MISSING"],  # once the data is read
                 "text_encoder '.*missing' is not a local Hugging Face model", id="wrong-encoder-folder"),
    pytest.param("recbole-cela", ["--model=CELA", "--epochs=abc", "--text_pooling=max"],  # all named, in one block
                 r"invalid settings:\n  epochs = 'abc': expected \(int >= 1\).*\n"
                 r"  text_pooling = 'max': expected \(str: auto \| mean \| cls \| last\)", id="bad-settings"),
    pytest.param("recbole-cela", ["--model=CELA", "--backbone=NoSuchModel"],
                 "invalid setting backbone = 'NoSuchModel': expected one of the ID models CELA builds on: .*DIN, DINUser",
                 id="unknown-backbone"),
    pytest.param("recbole-cela-new-items", ["--checkpoint=MISSING", "--items=ITEMS", "--history=1"],
                 "No checkpoint '.*missing'", id="new-items-missing-checkpoint"),
])
def test_known_errors_print_one_error_block(run_config, tmp_path, how, args, expected):
    """A known, user-fixable error ends the command with status 1 and one 'error:' block (its
    message), no traceback: from run_recbole_cela.py (one process or two) and both console commands."""
    files, overrides = run_config()
    items = tmp_path / "items.tsv"  # a readable items file: the command reads its inputs before the run
    items.write_text("new1\tA new item's title\n", encoding="utf-8")
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("PORT", free_port()).replace("ITEMS", str(items))
            for a in args]
    if how == "recbole-cela-new-items":
        cmd = command(how) + args
    else:
        cmd = (RUNNER if how == "runner" else command(how)) + ["--dataset=ml-tiny", f"--config_files={files[0]}"]
        cmd += [f"--{k}={v}" for k, v in overrides.items() if f"--{k}=" not in " ".join(args)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output and proc.stderr.count("error: ") == 1, output[-3000:]
    assert re.search(expected, proc.stderr[proc.stderr.index("error: "):]), output[-3000:]
    if how == "recbole-cela":  # refused before any data was read or converted
        assert not os.path.exists(overrides["data_path"])


def test_unexpected_errors_keep_their_traceback(tmp_path):
    """An error the plugin does not know (here RecBole reading a config file that is a YAML list)
    keeps Python's traceback."""
    config = tmp_path / "list.yaml"
    config.write_text("- epochs\n- 3\n")
    proc = subprocess.run(RUNNER + ["--model=DeepFM", "--dataset=ml-100k", f"--config_files={config}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "error: " not in proc.stderr

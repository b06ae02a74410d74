"""A trained run loaded back (``recbole_cela.load_data_and_model``) and a file scored with it
(``python -m recbole_cela.predict``): runs of a context-aware model, DIN, DINUser and CELA (tiny
random BERT) trained through the command line on the ml-100k slice, and FLIP in process."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recbole_cela import load_data_and_model
from recbole_cela.predict import predict_file
from recbole_cela.quick_start import run_recbole_cela
from recbole_cela.utils import PluginConfigError, PluginError

from conftest import REPO

CONFIG = str(REPO / "dataset_configs" / "ml-100k.yaml")
MODELS = {"DeepFM": {}, "DIN": {}, "DINUser": {},
          "CELA": {"dap": False, "align": False, "max_text_length": 32, "eval_text_batch_size": 64}}


@pytest.fixture(scope="module")
def runs(ml_slice, tiny_encoder, tmp_path_factory):
    """{model: (result, the runner's output)} of one-epoch runs through ``python -m recbole_cela``."""
    import json

    root = tmp_path_factory.mktemp("predict")
    base = {"source_path": ml_slice, "data_path": root / "dataset", "checkpoint_dir": root / "saved",
            "results_dir": root / "results", "show_progress": False, "epochs": 1, "train_batch_size": 256,
            "state": "INFO", "text_encoder": tiny_encoder, "backbone": "DIN"}
    out = {}
    for model, extra in MODELS.items():
        args = [f"--{k}={v}" for k, v in {**base, **extra}.items()]
        proc = subprocess.run([sys.executable, "-m", "recbole_cela", f"--model={model}", "--dataset=ml-tiny",
                               f"--config_files={CONFIG}", *args], capture_output=True, text=True, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (name,) = [f for f in os.listdir(root / "results") if f.startswith(f"{model}-ml-tiny-")]
        with open(root / "results" / name) as f:
            out[model] = (json.load(f), proc.stdout + proc.stderr)
    return root, out


def test_the_log_shows_plain_numbers_and_no_warnings_of_recbole(runs):
    for model, (result, log) in runs[1].items():
        assert "test result" in log and "np.float64" not in log, (model, log[-2000:])
        # RecBole's own deprecated calls (torch's GradScaler, pandas' chained assignment) stay quiet.
        assert "FutureWarning" not in log and "GradScaler" not in log, (model, log[-2000:])


def test_recbole_warnings_are_filtered_the_users_are_not():
    import warnings

    from recbole_cela.compat import filter_recbole_warnings

    with warnings.catch_warnings(record=True) as caught:
        filter_recbole_warnings()  # as on import (pytest resets the filters an import sets while collecting)
        warnings.warn_explicit("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use ...", FutureWarning,
                               "trainer.py", 1, module="recbole.trainer.trainer", registry={})
        warnings.warn_explicit("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use ...", FutureWarning,
                               "mine.py", 1, module="my_training_script", registry={})
        warnings.warn_explicit("my own warning", FutureWarning, "trainer.py", 2, module="recbole.trainer.trainer",
                               registry={})
    assert [str(w.message)[:14] for w in caught] == ["`torch.cuda.am", "my own warning"]


def _scores(path):
    return pd.read_csv(path, sep="\t", dtype={"score:float": float}, keep_default_na=False)


@pytest.mark.parametrize("model", list(MODELS))
def test_test_split_scored_from_a_file_equals_evaluation(runs, model, tmp_path):
    root, out = runs
    result = out[model][0]
    rows = root / "dataset" / "ml-tiny" / "ml-tiny.test.inter"
    scores = tmp_path / "scores.tsv"
    proc = subprocess.run([sys.executable, "-m", "recbole_cela.predict", f"--checkpoint={result['checkpoint']}",
                           f"--input={rows}", f"--output={scores}", "--batch_size=16"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 40 rows" in proc.stdout and "unknown tokens (scored as RecBole's padding id 0): none" in proc.stdout
    written = _scores(scores)
    given = pd.read_csv(rows, sep="\t", dtype=str, keep_default_na=False)
    assert list(written.columns) == list(given.columns) + ["score:float"]
    assert written.drop(columns="score:float").astype(str).equals(given)  # every row, as given, in order

    # What the evaluation computed: the loaded model over RecBole's test loader, and the run's test AUC.
    config, loaded, _, _, _, test = load_data_and_model(result["checkpoint"], {"state": "WARNING"})
    assert config["model"] == model and type(loaded).__name__ == model
    loaded.eval()
    with torch.no_grad():
        expected = torch.cat([loaded.predict(batch[0]) for batch in test]).float().numpy()
    np.testing.assert_allclose(written["score:float"].to_numpy(), expected, rtol=0, atol=1e-6)
    labels = given["label:float"].astype(float).to_numpy()
    assert abs(roc_auc_score(labels, written["score:float"]) - result["test_result"]["auc"]) < 1e-4


def test_unknown_tokens_take_the_padding_id_and_are_counted(runs, tmp_path):
    root, out = runs
    checkpoint = out["DeepFM"][0]["checkpoint"]  # reads the user id (RecBole's DIN does not)
    rows = tmp_path / "rows.tsv"
    rows.write_text("user_id\titem_id\titem_id_list\n"
                    "1\t50\t181 172\n"
                    "new-user\t50\t181 172\n"
                    "[PAD]\t50\t181 172\n"          # the padding id itself: how an unknown user is scored
                    "1\tnew-item\tnew-item 181 172\n"
                    "1\t50\t" + " ".join(["181"] * 25) + "\n")
    summary = predict_file(checkpoint, str(rows), str(tmp_path / "out.tsv"), show_progress=False)
    assert summary["rows"] == 5 and summary["histories_cut"] == 1
    assert summary["unknown"] == {"user_id": 2, "item_id": 1, "item_id_list": 1}
    score = _scores(tmp_path / "out.tsv")["score:float"].to_numpy()
    assert score[1] == score[2] and score[0] != score[1]
    assert ((score > 0) & (score < 1)).all()


def _snapshot(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(base, name), "rb") as f:
                out[os.path.join(base, name)] = hashlib.sha1(f.read()).hexdigest()
    return out


def test_an_unusable_checkpoint_is_one_error_and_nothing_is_written(runs, tmp_path):
    root, out = runs
    checkpoint = out["DeepFM"][0]["checkpoint"]
    rows = root / "dataset" / "ml-tiny" / "ml-tiny.test.inter"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.pth"
    data = open(checkpoint, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    moved = tmp_path / "moved"  # the dataset's files, one item's feature changed since training
    shutil.copytree(root / "dataset" / "ml-tiny", moved / "ml-tiny")
    item = moved / "ml-tiny" / "ml-tiny.item"
    lines = item.read_text().splitlines(keepends=True)
    item.write_text("".join(lines[:2] + [lines[2].replace("\t19", "\t20", 1)] + lines[3:]))
    before = _snapshot(root / "saved")
    cases = [([f"--checkpoint={junk}"], "is not a checkpoint written by recbole_cela"),
             ([f"--checkpoint={truncated}"], "is not a checkpoint written by recbole_cela"),
             ([f"--checkpoint={checkpoint}", f"--data_path={moved}"], "are not the ones .* was trained on"),
             ([f"--checkpoint={checkpoint}", f"--data_path={tmp_path / 'nowhere'}"], r"\(missing\)")]
    for args, message in cases:
        output = tmp_path / "scores.tsv"
        proc = subprocess.run([sys.executable, "-m", "recbole_cela.predict", *args, f"--input={rows}",
                               f"--output={output}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert re.search(message, proc.stderr), proc.stderr
        assert not output.exists() and not (tmp_path / "log").exists()
    with pytest.raises(PluginConfigError, match="not a checkpoint"):
        load_data_and_model(str(truncated))
    assert _snapshot(root / "saved") == before


def test_a_bad_input_file_writes_nothing(runs, tmp_path):
    checkpoint = runs[1]["DIN"][0]["checkpoint"]
    output = tmp_path / "scores.tsv"
    missing = tmp_path / "rows.tsv"
    missing.write_text("user_id:token\titem_id:token\n1\t50\n")
    with pytest.raises(PluginError, match="lacks the column.*item_id_list"):
        predict_file(checkpoint, str(missing), str(output), show_progress=False)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("user_id\titem_id\titem_id_list\n" + "1\t50\t181\n" * 3 + "1\t50\t181\textra\n")
    with pytest.raises(PluginError, match="not a tab-separated file"):
        predict_file(checkpoint, str(ragged), str(output), batch_size=2, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ragged.tsv", "rows.tsv"]  # no output, no temporary file


FLIP_FAST = {"flip_pretrain": False, "flip_finetune_samples": 128, "flip_finetune_batch_size": 32,
             "flip_text_epochs": 1, "flip_finetune_trainable_layers": -1, "flip_max_prompt_length": 64,
             "mlp_hidden_size": [32, 32]}
CELA_END_TO_END = {"dap": False, "align": False, "finetune_encoder": True, "max_text_length": 32,
                   "eval_text_batch_size": 64}


@pytest.mark.parametrize("model, settings", [("FLIP", FLIP_FAST), ("CELA", CELA_END_TO_END)], ids=["FLIP", "CELA-e2e"])
def test_text_reading_runs_load_and_score_as_evaluated(run_config, tiny_encoder, tmp_path, model, settings):
    """FLIP reads prompts built from the dataset; CELA with finetune_encoder saves its encoder
    beside the table that encoder computed: both score after loading as they were evaluated."""
    files, config = run_config(text_encoder=tiny_encoder, epochs=1, **settings)
    result = run_recbole_cela(model, "ml-tiny", files, config)
    rows = os.path.join(config["data_path"], "ml-tiny", "ml-tiny.test.inter")
    predict_file(result["checkpoint"], rows, str(tmp_path / "scores.tsv"), show_progress=False)
    written = _scores(tmp_path / "scores.tsv")
    _, loaded, _, _, _, test = load_data_and_model(result["checkpoint"], {"state": "WARNING"})
    loaded.eval()
    with torch.no_grad():
        expected = torch.cat([loaded.predict(batch[0]) for batch in test]).float().numpy()
    np.testing.assert_allclose(written["score:float"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert abs(roc_auc_score(written["label:float"], written["score:float"]) - result["test_result"]["auc"]) < 1e-4

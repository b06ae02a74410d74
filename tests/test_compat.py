"""RecBole 1.2.1 on numpy 2 / torch >= 2.6 through the plugin's compatibility layer."""

import os
import pickle

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model

from recbole_cela.utils import init_seed

from recbole_cela.fileio import atomic_torch_save
from recbole_cela.data import prepare_from_config
from recbole_cela.quick_start import build_config
from helpers import loader_auc


def test_config_builds_on_numpy_2():
    config = Config(model="DeepFM", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["model"] == "DeepFM"
    assert np.float_ is np.float64  # the alias RecBole's Config sets, numpy-2 style


def test_recbole_quick_start_is_not_needed():
    import sys

    import recbole_cela.quick_start  # noqa: F401

    assert "recbole.quick_start" not in sys.modules  # it imports ray, broken on numpy 2


def test_anomaly_mode_stays_off_after_recbole_imports_its_models():
    import subprocess
    import sys

    code = ("import recbole_cela, torch; from recbole.utils import get_model; "
            "get_model('DIN'); get_model('SINE'); print(torch.is_anomaly_enabled())")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"  # RecBole's sine.py switches it on at import
    env = {**os.environ, "RECBOLE_CELA_DETECT_ANOMALY": "1"}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert on.stdout.strip() == "True"


@pytest.mark.parametrize("model", ["DeepFM", "DIN"])
def test_fit_and_evaluate_with_best_model_reload(run_config, model):
    files, overrides = run_config()
    _, config = build_config(model, "ml-tiny", files, overrides)
    init_seed(config["seed"], config["reproducibility"])
    prepare_from_config(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    net = get_model(model)(config, train.dataset)
    trainer = Trainer(config, net)
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)  # failed on torch >= 2.6 before
    # The reported AUC is the reloaded best model's (recomputed apart from RecBole's evaluator), and
    # that model learned: better than chance on its own training data.
    assert result["auc"] == pytest.approx(loader_auc(net, test), abs=6e-5)
    assert loader_auc(net, train) > 0.6
    # The checkpoint is what safe loading accepts, and holds the best weights.
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["config"]["model"] == model
    for key, value in net.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value)
    assert not [f for f in os.listdir(config["checkpoint_dir"]) if ".tmp-" in f]
    # RecBole's resume path reads it back too.
    other = Trainer(config, get_model(model)(config, train.dataset))
    other.resume_checkpoint(trainer.saved_model_file)
    assert other.start_epoch == checkpoint["epoch"] + 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_loading_is_not_weakened(tmp_path):
    path = tmp_path / "foreign.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        torch.load(path)  # the default, safe loading still refuses foreign code


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.pth"
    atomic_torch_save({"x": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["a.pth"]

"""recbole_cela.config.run_settings: a run's settings as the runner resolves them, no data read."""

import sys

from recbole_cela.config import NON_SEMANTIC_KEYS, run_settings


def test_run_settings_resolve_as_the_runner_does(run_config, monkeypatch):
    files, _ = run_config()
    # The calling process's own command line is not read: only the arguments given.
    monkeypatch.setattr(sys, "argv", ["benchmark", "--embedding_size=99", "--models=x"])
    settings = run_settings("CELA", "ml-tiny", files, ["--backbone=DeepFM", "--text_proj_fields=1"])
    assert settings["model"] == "CELA" and settings["backbone"] == "DeepFM"
    assert settings["text_proj_fields"] == 1  # command-line text converted by RecBole
    assert settings["embedding_size"] == 10  # DeepFM's own RecBole default, not DIN's props
    assert settings["text_pooling"] == "mean"  # auto, decided by the encoder's architecture
    assert settings["rating_threshold"] == 4.0  # the dataset config
    assert "models" not in settings and not NON_SEMANTIC_KEYS & set(settings)
    assert run_settings("DIN", "ml-tiny", files)["embedding_size"] == 16  # props/DIN.yaml

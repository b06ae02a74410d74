"""The benchmark tools' --key=value overrides mean to RecBole what they mean on the runner's command line."""

import pytest

from benchmarks.common import config_overrides
from recbole_cela.config import build_config, run_settings


def test_overrides_are_converted_by_recbole_as_the_runner_command_line(run_config):
    files, base = run_config()
    args = ["--embedding_size=12", "--mlp_hidden_size=[8,8]", "--dropout_prob=0.5", "--pooling_mode=sum"]
    overrides = config_overrides(args)
    assert overrides["embedding_size"] == "12"  # text: RecBole's Config converts it
    _, config = build_config("DIN", "ml-tiny", files, {**base, **overrides})
    runner = run_settings("DIN", "ml-tiny", files, args)  # read as the runner's command line
    for key in overrides:
        assert config[key] == runner[key]
    assert (config["embedding_size"], config["mlp_hidden_size"], config["dropout_prob"]) == (12, [8, 8], 0.5)
    with pytest.raises(SystemExit, match="expected --key=value"):
        config_overrides(["--epochs"])

"""The library suite's fixtures (tests/conftest.py): the ml-100k slice, a tiny BERT, run configs."""

from tests.conftest import ml_slice, run_config, tiny_encoder  # noqa: F401

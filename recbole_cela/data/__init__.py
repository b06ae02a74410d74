"""Data preparation: raw data -> RecBole benchmark atomic files under one CTR protocol
(:mod:`recbole_cela.data.convert` documents it), and the plugin's own data loaders
(:mod:`recbole_cela.data.loaders`)."""

import os

from recbole_cela.data import convert
from recbole_cela.data.convert import (
    AMAZON_2014_URL,
    AMAZON_2018_URL,
    FORMAT_VERSION,
    ITEM_FEATURE_TYPES,
    SOURCE_FORMATS,
    DataPreparationError,
    prepare_dataset,
)

__all__ = [*convert.__all__, "prepare_from_config"]


def prepare_from_config(config, logger=None):
    """Run :func:`prepare_dataset` with the keys of a RecBole config.

    A dataset config without ``source_format`` means the atomic files are the user's own, already
    in ``data_path``: nothing is converted. RecBole's ``Config`` has already joined the dataset
    name onto ``data_path``, so the converter gets its parent folder.
    """
    if not config["source_format"]:
        return None
    return prepare_dataset(
        dataset=config["dataset"],
        source_format=config["source_format"],
        source_path=config["source_path"],
        data_path=os.path.dirname(os.path.normpath(config["data_path"])),
        max_history=config["max_history"],
        rating_threshold=config["rating_threshold"],
        seed=config["neg_seed"],
        max_bad_ratio=config["max_bad_ratio"],
        item_feature_files=config["item_feature_files"],
        logger=logger,
        # Only the sequence form's dataset configs declare it; the others keep the default.
        **({"item_text_file": config["item_text_file"]} if config["item_text_file"] else {}),
    )

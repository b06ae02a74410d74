"""Data preparation: raw data -> RecBole benchmark atomic files under one CTR protocol."""

import os


def prepare_from_config(config, logger=None):
    """Run :func:`recbole_cela.data.convert.prepare_dataset` with the keys of a RecBole config.

    A dataset config without ``source_format`` means the atomic files are the user's own, already
    in ``data_path``: nothing is converted. RecBole's ``Config`` has already joined the dataset
    name onto ``data_path``, so the converter gets its parent folder.
    """
    from recbole_cela.data.convert import prepare_dataset

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
    )

"""Raw data -> RecBole benchmark atomic files, under one CTR protocol for every model.

:func:`prepare_dataset` converts a dataset once into ``<data_path>/<dataset>/`` as RecBole
*benchmark files* (``benchmark_filename: [train, valid, test]``), so context-aware models
(DeepFM, ...) and sequential CTR models (DIN, a RecBole ``SequentialRecommender``) read the
identical samples and the identical split.

Source formats
--------------
* ``recbole``: RecBole atomic files with explicit feedback, ``<dataset>.inter`` with the fields
  ``user_id``, ``item_id``, ``rating``, ``timestamp``, plus optional ``<dataset>.item`` and
  ``<dataset>.user`` (ml-100k; its copy in the installed recbole package is the default source).
* ``sequence``: ``user_sequence.txt`` (``USER ITEM ITEM ...``, oldest first) and
  ``item_text.tsv`` (``ITEM<TAB>TEXT``, no header), or the text file ``item_text_file`` names
  (e.g. amazon-beauty's ``item_keywords.tsv``: the same items described otherwise).
* ``amazon2014``: ``reviews_<Category>_5.json.gz`` (JSON lines) and ``meta_<Category>.json.gz``
  (Python-literal lines) of Julian McAuley's 2014 Amazon product data.
* ``amazon2018``: ``<Category>_5.json.gz`` and ``meta_<Category>.json.gz`` (both JSON lines) of
  the 2018 release.

The CTR protocol
----------------
Each user's interactions are ordered chronologically (by timestamp, ties keep file order; the
sequence form is already ordered). Every interaction after the user's first is a sample whose
history is the user's previous items: the last ``max_history`` of them, oldest first, so a
history is never empty.

* Implicit data (``sequence``, ``amazon2014``, ``amazon2018``): every interaction is a positive
  (label 1). Each positive gets one negative (label 0) with the same user and history: an item
  drawn uniformly from all items of the interactions that the user never interacted with (in
  any split), with ``numpy.random.default_rng(seed)``.
* Explicit data (``recbole``): no sampling; label = 1 if rating >= ``rating_threshold`` else 0,
  and the history holds the previous items whatever their rating.

Split: a user's last sample (with its negative) is test, the one before is valid, the others
are train. A user with 2 interactions gives a test sample only, one with 1 interaction nothing.

Output files (tab separated, RecBole ``name:type`` header)
---------------------------------------------------------
* ``<dataset>.{train,valid,test}.inter``:
  ``user_id:token  item_id:token  label:float  item_id_list:token_seq`` (history items space
  separated, oldest first), rows per user in chronological order, each negative right after its
  positive; users in order of first appearance in the source.
* ``<dataset>.item``: ``item_id:token`` and the item fields, for the items of the interactions.
  Sequence form: ``title:token_seq``. Amazon: ``title:token_seq``, ``description:token_seq``,
  ``brand:token``, ``categories:token_seq`` (one token per category, spaces -> ``_``, ``&``
  and commas dropped), ``price:float`` (min-max scaled to [0, 1], empty when unknown).
  ``recbole`` form: the source's item fields as they are. Then one column per entry of
  ``item_feature_files`` (``{field: {file, type}}``, any format): ``field:type`` read from
  ``ITEM<TAB>VALUE`` lines of that file in ``source_path`` (e.g. the brand and category tokens of
  amazon-sports' ``item_attributes.tsv``).
* ``<dataset>.user``: ``recbole`` form only, a copy of the source's ``.user`` file.
* ``<dataset>.prep.json``: the settings, inputs, their SHA-1 digests and the counts of the
  conversion, written last. A later call skips the conversion while settings and input
  contents are the same (a re-copied or touched input with the same bytes converts nothing).

Text values are HTML-unescaped, their whitespace is collapsed to single spaces and double quotes
become two single quotes (RecBole's CSV reader would take a leading ``"`` for a quoted field).

Bad input
---------
Malformed entries are skipped and counted by kind: unparsable lines, lines that are not UTF-8
text (not decoded with replacement characters, which could merge ids; see
:func:`recbole_cela.data.source.read_lines`), lines with missing or invalid fields (ids must be
non-empty and free of whitespace; a ``token`` feature one token, a ``float`` one a number),
duplicate item or user lines, a user line without items, a review of an item without meta.
Lines that cannot be skipped stop the conversion with their ``file:line`` when they are not
UTF-8: the header of a RecBole atomic file, any line of a ``.user`` file (copied as it is). A warning reports each kind with its first offending ``file:line``; when
they exceed ``max_bad_ratio`` of the entries read, :class:`DataPreparationError` carries that
report instead and nothing is written. Entries that are kept with a default value are counted
and reported too (``repaired_input_entries`` in the stamp), but are not errors: an item of a
sequence whose text is empty or missing keeps its interactions with an empty title (the text
encoders give it ``text_fallback``), an item missing from a feature file gets an empty value.

Every file is written to a temporary file in the same folder and renamed over its target, after
all the data has been read, checked and built in memory: a failed or interrupted run damages
nothing a later run would trust. A conversion runs under a lock beside the output folder
(``<data_path>/.<dataset>.convert.lock``, :func:`recbole_cela.fileio.try_lock`): of runs that meet
a new dataset at once, one converts it and the others wait and reuse its files.

Modules
-------
This module is the entry point (:func:`prepare_dataset`); the work is done by
:mod:`~recbole_cela.data.recbole_source`, :mod:`~recbole_cela.data.sequence_source` and
:mod:`~recbole_cela.data.amazon_source` (one reader per source form, each returning a
:class:`~recbole_cela.data.source.Source`), :mod:`~recbole_cela.data.feature_files` (item feature
files), :mod:`~recbole_cela.data.problems` (counting what is skipped or repaired),
:mod:`~recbole_cela.data.protocol` (the samples and the split) and :mod:`~recbole_cela.data.output`
(the files and the stamp).
"""

import logging
import os
import time
from typing import Optional

from recbole_cela.data.amazon_source import (
    AMAZON_2014_URL,
    AMAZON_2018_URL,
    amazon_inputs,
    read_amazon,
)
from recbole_cela.data.feature_files import ITEM_FEATURE_TYPES, feature_specs, join_item_features
from recbole_cela.data.output import (
    FORMAT_VERSION,
    input_digests,
    render_files,
    up_to_date,
    write_folder,
)
from recbole_cela.data.problems import DataPreparationError, Problems
from recbole_cela.data.protocol import SPLITS, build_samples
from recbole_cela.data.recbole_source import read_recbole, recbole_inputs
from recbole_cela.data.sequence_source import DEFAULT_TEXT_FILE, read_sequence, sequence_inputs
from recbole_cela.fileio import try_lock, unlock

__all__ = [
    "AMAZON_2014_URL",
    "AMAZON_2018_URL",
    "FORMAT_VERSION",
    "ITEM_FEATURE_TYPES",
    "SOURCE_FORMATS",
    "DataPreparationError",
    "prepare_dataset",
]

SOURCE_FORMATS = ("recbole", "sequence", "amazon2014", "amazon2018")
# Beside the output folder (.<dataset>.convert.lock), so a failed conversion leaves no folder.
LOCK_SUFFIX = ".convert.lock"
WAIT_POLL_S = 1.0  # how often a run waiting for another process's conversion looks again


def _resolve_source_path(dataset, source_path):
    if source_path:
        return os.path.abspath(os.path.expanduser(str(source_path)))
    if dataset == "ml-100k":
        import recbole

        return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
    raise DataPreparationError(
        f"No source_path for dataset '{dataset}': set source_path in its dataset config to the "
        f"folder of the raw files (only ml-100k defaults to the copy inside recbole)."
    )


def _inputs(dataset, source_format, folder, text_file):
    if source_format == "recbole":
        return recbole_inputs(dataset, folder)
    if source_format == "sequence":
        return sequence_inputs(folder, text_file)
    return amazon_inputs(source_format, folder)


def _required_inputs(dataset, source_format, folder, item_feature_files, text_file):
    """The source form's input files; when missing, the message names the optional feature files
    (``item_feature_files``) after the required ones."""
    try:
        return _inputs(dataset, source_format, folder, text_file)
    except DataPreparationError as error:
        files = [spec.get("file") for spec in (item_feature_files or {}).values() if isinstance(spec, dict)]
        if not files:
            raise
        raise DataPreparationError(f"{error}\nItem feature files, also read from it: {', '.join(map(repr, files))} "
                                   "(item_feature_files: remove an entry to do without it).") from None


def _read(dataset, source_format, folder, problems, text_file):
    if source_format == "recbole":
        return read_recbole(dataset, folder, problems)
    if source_format == "sequence":
        return read_sequence(folder, problems, text_file)
    return read_amazon(source_format, folder, problems)


def _folders(dataset, source_format, source_path, data_path, max_history):
    """(source folder, output folder), once the format and the folders are checked."""
    if source_format not in SOURCE_FORMATS:
        raise DataPreparationError(
            f"Unknown source_format '{source_format}' for dataset '{dataset}': use one of "
            f"{', '.join(SOURCE_FORMATS)}."
        )
    if int(max_history) < 1:
        raise DataPreparationError(f"max_history must be at least 1, not {max_history}.")
    source_folder = _resolve_source_path(dataset, source_path)
    folder = os.path.abspath(os.path.join(data_path, dataset))
    if os.path.realpath(folder) == os.path.realpath(source_folder):
        raise DataPreparationError(
            f"The output folder '{folder}' is the source folder: the converted files would "
            f"overwrite the raw ones. Set data_path to another folder."
        )
    return source_folder, folder


def _counts(source, tables, n_users, item_names, problems):
    """The stamp's ``counts``: what was converted, and what was skipped or repaired."""
    return {
        "users": n_users,
        "items": len(item_names),
        "interactions": len(source.inter),
        "samples": {name: len(table) for name, table in tables.items()},
        "positive_rate": {name: float(table["label"].mean()) for name, table in tables.items() if len(table)},
        "skipped_input_entries": dict(problems.counts),
        "repaired_input_entries": {kind: e["count"] for kind, e in problems.repaired.items()},
    }


def _summary(dataset, seconds, counts, folder):
    samples, positive = counts["samples"], counts["positive_rate"]
    return (
        f"Converted '{dataset}' in {seconds:.1f}s: {counts['users']} users with samples, "
        f"{counts['items']} items, {counts['interactions']} interactions; samples "
        + ", ".join(
            f"{name} {samples[name]} (positive rate {positive.get(name, 0.0):.3f})"
            for name in SPLITS
        )
        + f"; written to '{folder}'."
    )


def _settings(dataset, source_format, source_folder, data_path, max_history, rating_threshold, seed,
              max_bad_ratio, features):
    """The settings a conversion is stamped with: a change re-converts."""
    return {
        "dataset": dataset,
        "source_format": source_format,
        "source_path": source_folder,
        "data_path": os.path.abspath(data_path),
        "max_history": int(max_history),
        "rating_threshold": float(rating_threshold),
        "seed": int(seed),
        "max_bad_ratio": float(max_bad_ratio),
        "item_feature_files": {name: {"file": os.path.relpath(path, source_folder), "type": kind}
                               for name, kind, path in features},
    }


def _outputs(dataset, source_folder, source, samples, problems, settings, inputs):
    """({file name: contents}, stamp) of a conversion; refuses one without a sample."""
    tables, n_users, item_names = samples
    if n_users == 0:
        raise DataPreparationError(
            f"No user in '{source_folder}' has 2 or more usable interactions: there is no sample "
            f"to write. Nothing was written."
        )
    files = render_files(dataset, source, tables, item_names)
    stamp = {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "inputs": inputs,
        "input_digests": input_digests(inputs),
        "outputs": sorted(files),
        "counts": _counts(source, tables, n_users, item_names, problems),
    }
    return files, stamp


def prepare_dataset(
    dataset: str,
    source_format: str,
    source_path: str,
    data_path: str,
    max_history: int = 20,
    rating_threshold: float = 4.0,
    seed: int = 2020,
    max_bad_ratio: float = 0.01,
    item_feature_files: Optional[dict] = None,
    item_text_file: str = DEFAULT_TEXT_FILE,
    force: bool = False,
    logger=None,
) -> str:
    """Convert raw data into ``<data_path>/<dataset>/`` and return that folder.

    Skipped when the outputs exist, the settings (all arguments except ``force`` and
    ``logger``) are unchanged and every input file has the same contents (SHA-1) as when the
    outputs were written: settings, inputs and digests are stored, with a format version, in
    ``<data_path>/<dataset>/<dataset>.prep.json``, which is written last.

    Args:
        dataset (str): Dataset name: the output folder and file names.
        source_format (str): One of ``recbole``, ``sequence``, ``amazon2014``, ``amazon2018``.
        source_path (str): Folder of the raw files; relative to the working directory. ``None``
            or empty for ml-100k means the copy inside the installed recbole package.
        data_path (str): Parent folder of the output folder.
        max_history (int): Most history items per sample.
        rating_threshold (float): Explicit data: label 1 when rating >= this.
        seed (int): Seed of the negative sampling (implicit data).
        max_bad_ratio (float): Largest tolerated share of malformed input entries.
        item_feature_files (dict): Optional item features read from files in ``source_path``,
            ``{field: {"file": name, "type": RecBole type}}`` (``token``, ``token_seq``,
            ``float``, ``float_seq``); each file has ``ITEM<TAB>VALUE`` lines, no header.
        item_text_file (str): ``sequence`` form: the ``ITEM<TAB>TEXT`` file in ``source_path``
            whose texts are the items' ``title`` (other forms ignore it). The chosen file is one
            of the stamp's inputs, so choosing another one converts again.
        force (bool): Convert even when the outputs are up to date.
        logger (logging.Logger): Where to log; ``logging.getLogger(__name__)`` by default.

    Returns:
        str: The output folder ``<data_path>/<dataset>``.

    Raises:
        DataPreparationError: Unknown format, missing input files, or too much malformed input.
            Nothing is written then.
    """
    logger = logger or logging.getLogger(__name__)
    source_folder, folder = _folders(dataset, source_format, source_path, data_path, max_history)
    inputs = _required_inputs(dataset, source_format, source_folder, item_feature_files, item_text_file)
    features = feature_specs(item_feature_files, source_folder)
    settings = _settings(dataset, source_format, source_folder, data_path, max_history, rating_threshold,
                         seed, max_bad_ratio, features)
    inputs += [path for _, _, path in features]
    stamp_path = os.path.join(folder, f"{dataset}.prep.json")
    if not force and up_to_date(stamp_path, folder, settings, inputs):
        logger.info(f"Dataset '{dataset}' is up to date in '{folder}': not converted again.")
        return folder
    fd, lock = _lock(os.path.dirname(folder), dataset, logger)
    try:
        # Converted meanwhile by the process this one waited for: its files are reused.
        if not force and up_to_date(stamp_path, folder, settings, inputs):
            logger.info(f"Dataset '{dataset}' was converted by another process into '{folder}': reused.")
            return folder
        _convert(dataset, source_format, source_folder, folder, features, settings, inputs, max_history,
                 rating_threshold, seed, max_bad_ratio, item_text_file, logger)
    finally:
        unlock(lock, fd)
    return folder


def _lock(data_path, dataset, logger):
    """(descriptor, path) of the lock of the conversion of ``dataset`` into ``data_path``, taken
    once any other process converting it has finished."""
    try:
        os.makedirs(data_path, exist_ok=True)
    except OSError as error:
        raise DataPreparationError(f"Cannot create the data folder '{data_path}' ({error.strerror}): "
                                   "set data_path to a folder this user can write.") from None
    path = os.path.join(data_path, f".{dataset}{LOCK_SUFFIX}")
    folder = os.path.join(data_path, dataset)
    waiting = False
    while True:
        try:
            fd = try_lock(path)
        except OSError as error:
            raise DataPreparationError(f"Cannot write into the data folder '{data_path}' ({error.strerror}): "
                                       "set data_path to a folder this user can write.") from None
        if fd is not None:
            return fd, path
        if not waiting:
            logger.warning(f"Dataset '{dataset}' is being converted into '{folder}' by another process: "
                           "waiting for it, to reuse its files.")
            waiting = True
        time.sleep(WAIT_POLL_S)


def _convert(dataset, source_format, source_folder, folder, features, settings, inputs, max_history,
             rating_threshold, seed, max_bad_ratio, item_text_file, logger):
    start = time.time()
    logger.info(f"Converting '{dataset}' ({source_format}) from '{source_folder}' to '{folder}'.")
    problems = Problems()
    source = _read(dataset, source_format, source_folder, problems, item_text_file)
    source = join_item_features(source, features, problems)
    problems.check(max_bad_ratio, logger)
    samples = build_samples(source, max_history, rating_threshold, seed)
    files, stamp = _outputs(dataset, source_folder, source, samples, problems, settings, inputs)
    write_folder(folder, dataset, files, stamp)
    logger.info(_summary(dataset, time.time() - start, stamp["counts"], folder))

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
  ``item_text.tsv`` (``ITEM<TAB>TEXT``, no header).
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
Malformed entries are skipped and counted by kind: unparsable lines, lines with missing or
invalid fields (ids must be non-empty and free of whitespace; a ``token`` feature one token, a
``float`` one a number), duplicate item or user lines, a user line without items, a review of
an item without meta. A warning reports each kind with its first offending ``file:line``; when
they exceed ``max_bad_ratio`` of the entries read, :class:`DataPreparationError` carries that
report instead and nothing is written. Entries that are kept with a default value are counted
and reported too (``repaired_input_entries`` in the stamp), but are not errors: an item of a
sequence whose text is empty or missing keeps its interactions with an empty title (the text
encoders give it ``text_fallback``), an item missing from a feature file gets an empty value.

Every file is written to a temporary file in the same folder and renamed over its target, after
all the data has been read, checked and built in memory: a failed or interrupted run damages
nothing a later run would trust.
"""

import ast
import gzip
import html
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from glob import glob
from typing import Optional

import numpy as np
import pandas as pd
from numpy.dtypes import StringDType
from tqdm import tqdm

from recbole_cela.fileio import atomic_write, file_digest
from recbole_cela.utils import PluginError

#: Version of the output layout and protocol; a change re-converts every dataset.
FORMAT_VERSION = 1

SOURCE_FORMATS = ("recbole", "sequence", "amazon2014", "amazon2018")

AMAZON_2014_URL = "https://jmcauley.ucsd.edu/data/amazon/"
AMAZON_2018_URL = "https://nijianmo.github.io/amazon/"

_INTER_HEADER = ["user_id:token", "item_id:token", "label:float", "item_id_list:token_seq"]
_SPLITS = ("train", "valid", "test")
_N_EXAMPLES = 5  # offending line numbers reported per kind of problem
_ASIN_PATTERN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]*)['"]""")
_PRICE_PATTERN = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")


class DataPreparationError(PluginError):
    """The raw data cannot be converted: says what was wrong and what to do about it."""


# --------------------------------------------------------------------------------------------
# Problems in the input
# --------------------------------------------------------------------------------------------


@dataclass
class _Problems:
    """Skipped input entries, by kind, with the first offending ``file:line`` locations.

    ``total`` counts the entries read: lines of the input files, except in user_sequence.txt,
    where each item of a user's line is one entry (an unknown item drops one interaction) and
    a skipped line (no items, or a user seen before) one entry.
    """

    total: int = 0
    counts: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)  # kind -> {file name: first line numbers}
    repaired: dict = field(default_factory=dict)  # kind -> {"count": n, "first": [item ids]}

    def add(self, kind, filename, line_numbers):
        line_numbers = np.asarray(line_numbers, dtype=np.int64)
        if line_numbers.size == 0:
            return
        self.counts[kind] = self.counts.get(kind, 0) + int(line_numbers.size)
        files = self.lines.setdefault(kind, {})
        earlier = np.asarray(files.get(filename, []), dtype=np.int64)
        first = np.union1d(earlier, line_numbers)[:_N_EXAMPLES]
        files[filename] = first.tolist()

    def repair(self, kind, items):
        """Items kept with a default value (not skipped: they do not count against
        ``max_bad_ratio``), by kind, with the first few item ids."""
        items = list(items)
        if items:
            entry = self.repaired.setdefault(kind, {"count": 0, "first": []})
            entry["count"] += len(items)
            entry["first"] = (entry["first"] + [str(i) for i in items])[:_N_EXAMPLES]

    def examples(self, kind):
        found = [f"{name}:{n}" for name, numbers in self.lines[kind].items() for n in numbers]
        return found[:_N_EXAMPLES]

    @property
    def skipped(self):
        return sum(self.counts.values())

    def report(self):
        lines = [
            f"  {kind}: {count} (first at {', '.join(self.examples(kind))})"
            for kind, count in self.counts.items()
        ]
        return (
            f"skipped {self.skipped} of {self.total} input entries "
            f"({self.skipped / max(self.total, 1):.4%}):\n" + "\n".join(lines)
        )

    def check(self, max_bad_ratio, logger):
        """Warn about skipped and repaired entries; raise when the skipped ones exceed
        ``max_bad_ratio`` of the input."""
        for kind, entry in self.repaired.items():
            logger.warning(f"Kept with a default value: {kind}: {entry['count']} "
                           f"(first: {', '.join(entry['first'])})")
        if not self.counts:
            return
        if self.skipped > max_bad_ratio * self.total:
            raise DataPreparationError(
                f"Too much malformed input: {self.report()}\nThis is more than "
                f"max_bad_ratio={max_bad_ratio}. Fix or re-download the input files, or raise "
                f"max_bad_ratio in the dataset config if losing these entries is acceptable. "
                f"Nothing was written."
            )
        logger.warning(f"Malformed input {self.report()}")


# --------------------------------------------------------------------------------------------
# Raw data, as read from any source format
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Interactions and item features read from a source, before the CTR protocol.

    ``inter`` has the string columns ``user`` and ``item``, a float ``time`` and, for explicit
    data, a float ``rating``, in file order. ``items`` holds the item fields to write, indexed
    by item id, one column per RecBole ``name:type`` header in ``item_header``. ``user_file`` is
    a ``.user`` file to copy, if any.
    """

    inter: pd.DataFrame
    items: pd.DataFrame
    item_header: list
    explicit: bool
    user_file: Optional[str] = None


def _is_id(value):
    """A user or item id: a non-empty string without whitespace (ids are tokens of a
    space-separated history and fields of a tab-separated line)."""
    return isinstance(value, str) and value != "" and value.split() == [value]


def _clean_text(values):
    """HTML-unescape, collapse whitespace to single spaces, strip; ``"`` becomes ``''``."""
    values = pd.Series(values, dtype=object).fillna("").astype(str).map(html.unescape)
    values = values.str.replace(r"\s+", " ", regex=True).str.strip()
    return values.str.replace('"', "''", regex=False)


def _clean_category(name):
    """One category as one token: ``&`` and commas dropped, spaces -> ``_``."""
    name = html.unescape(str(name)).replace("&", "").replace(",", "")
    return "_".join(name.split()).replace('"', "''")


def _unreadable_error(path, error):
    return DataPreparationError(
        f"Cannot read '{path}': {error}. Expected UTF-8 text (gzip-compressed for .gz files); "
        f"re-download or regenerate the file."
    )


def _read_lines(path):
    """The lines of a text file, without line ends (a final empty line is dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as error:
        raise _unreadable_error(path, error) from None


def _missing_files_error(source_format, folder, expected, how):
    exists = "" if os.path.isdir(folder) else " (the folder does not exist)"
    return DataPreparationError(
        f"Input files for source_format '{source_format}' not found: expected "
        f"{', '.join(repr(e) for e in expected)} in '{folder}'{exists}. {how}"
    )


# --- recbole ---------------------------------------------------------------------------------


def _recbole_inputs(dataset, folder):
    inter = os.path.join(folder, f"{dataset}.inter")
    if not os.path.isfile(inter):
        raise _missing_files_error(
            "recbole",
            folder,
            [f"{dataset}.inter"],
            f"Put RecBole atomic files there ('{dataset}.inter' with the fields user_id, "
            f"item_id, rating, timestamp; optional '{dataset}.item' and '{dataset}.user'), or "
            f"set source_path to the folder that holds them.",
        )
    optional = [os.path.join(folder, f"{dataset}.{suffix}") for suffix in ("item", "user")]
    return [inter] + [path for path in optional if os.path.isfile(path)]


def _read_atomic_table(path, problems):
    """A RecBole atomic file as (header fields, DataFrame of strings keyed by field name).

    Lines whose number of tab-separated values differs from the header's are skipped.
    """
    lines = _read_lines(path)
    if not lines:
        raise DataPreparationError(f"'{path}' is empty: expected a RecBole 'name:type' header.")
    header = lines[0].split("\t")
    names = [h.split(":")[0] for h in header]
    body = pd.Series(lines[1:], dtype=object)
    body = body[body.str.strip() != ""]
    problems.total += len(body)
    well_formed = body.str.count("\t") == len(header) - 1
    problems.add("malformed line", os.path.basename(path), body.index[~well_formed] + 2)
    body = body[well_formed]
    table = body.str.split("\t", expand=True) if len(body) else pd.DataFrame(columns=names)
    table.columns = names
    table.index = body.index + 2  # line numbers
    return header, table


def _read_recbole(dataset, folder, problems):
    inputs = _recbole_inputs(dataset, folder)
    inter_path = inputs[0]
    _, table = _read_atomic_table(inter_path, problems)
    required = ["user_id", "item_id", "rating", "timestamp"]
    absent = [name for name in required if name not in table.columns]
    if absent:
        raise DataPreparationError(
            f"'{inter_path}' lacks the field(s) {absent}: the recbole source format needs "
            f"explicit ratings and timestamps ({', '.join(required)})."
        )
    inter = pd.DataFrame(
        {
            "user": table["user_id"],
            "item": table["item_id"],
            "rating": pd.to_numeric(table["rating"], errors="coerce"),
            "time": pd.to_numeric(table["timestamp"], errors="coerce"),
        }
    )
    ids = inter["user"].map(_is_id) & inter["item"].map(_is_id)
    bad = ~ids | inter[["rating", "time"]].isna().any(axis=1)
    problems.add("malformed line", os.path.basename(inter_path), inter.index[bad])
    inter = inter[~bad].reset_index(drop=True)

    item_path = os.path.join(folder, f"{dataset}.item")
    if item_path in inputs:
        item_header, items = _read_atomic_table(item_path, problems)
        if items.columns[0] != "item_id":
            raise DataPreparationError(f"'{item_path}' must start with the field item_id:token.")
        duplicated = items["item_id"].duplicated()
        problems.add("duplicate item line", os.path.basename(item_path), items.index[duplicated])
        items = items[~duplicated].set_index("item_id")
        item_header = item_header[1:]
    else:
        item_header, items = [], pd.DataFrame(index=pd.Index([], name="item_id"))
    user_path = os.path.join(folder, f"{dataset}.user")
    user_file = user_path if user_path in inputs else None
    return _Source(inter, items, item_header, explicit=True, user_file=user_file)


# --- sequence --------------------------------------------------------------------------------


def _sequence_inputs(folder):
    expected = ["user_sequence.txt", "item_text.tsv"]
    paths = [os.path.join(folder, name) for name in expected]
    if not all(os.path.isfile(path) for path in paths):
        raise _missing_files_error(
            "sequence",
            folder,
            expected,
            "The sequence form needs 'user_sequence.txt' (one line per user: 'USER ITEM ITEM "
            "...', space separated, oldest first) and 'item_text.tsv' ('ITEM<TAB>TEXT', no "
            "header). Set source_path to the folder holding both, or convert the raw Amazon "
            "files instead (source_format amazon2014 or amazon2018).",
        )
    return paths


def _read_sequence(folder, problems):
    sequence_path, text_path = _sequence_inputs(folder)
    sequence_name, text_name = os.path.basename(sequence_path), os.path.basename(text_path)

    # item_text.tsv: ITEM<TAB>TEXT
    lines = pd.Series(_read_lines(text_path), dtype=object)
    lines.index = lines.index + 1
    lines = lines[lines.str.strip() != ""]
    problems.total += len(lines)
    parts = lines.str.partition("\t")
    item_ids, texts = parts[0].str.strip(), _clean_text(parts[2].values)
    texts.index = parts.index
    malformed = (parts[1] == "") | (item_ids == "")
    problems.add("malformed line", text_name, lines.index[malformed])
    duplicated = ~malformed & item_ids.duplicated()
    problems.add("duplicate item line", text_name, lines.index[duplicated])
    keep = ~(malformed | duplicated)
    titles = pd.Series(texts[keep].values, index=item_ids[keep].values)

    # user_sequence.txt: USER ITEM ITEM ...
    lines = pd.Series(_read_lines(sequence_path), dtype=object)
    lines.index = lines.index + 1
    tokens = lines.str.split()
    tokens = tokens[tokens.str.len() > 0]
    users = tokens.str[0]
    sequences = tokens.str[1:]
    no_items = sequences.str.len() == 0
    problems.add("user without items", sequence_name, tokens.index[no_items])
    duplicated = ~no_items & users.duplicated()
    problems.add("duplicate user line", sequence_name, tokens.index[duplicated])
    keep = ~(no_items | duplicated)
    problems.total += int((~keep).sum()) + int(sequences[keep].str.len().sum())
    inter = sequences[keep].explode().rename("item").to_frame()
    inter["user"] = users[keep].reindex(inter.index)
    inter = inter.reset_index(drop=True)
    inter["time"] = np.arange(len(inter), dtype=np.float64)  # the order within each line

    # An item without text keeps its interactions: its title is empty, so the text encoders give
    # it text_fallback (recbole_cela/text/items.py); counted, never dropped.
    used = pd.Index(inter["item"].unique())
    # Rows in item_text.tsv's order (then items without a line), as RecBole remaps ids in file order.
    title = titles.reindex(titles.index[titles.index.isin(used)].append(used[~used.isin(titles.index)]))
    problems.repair("item without a line in " + text_name, title.index[title.isna()])
    problems.repair("item with an empty text", title.index[title == ""])
    items = pd.DataFrame({"title": title.fillna("").values}, index=title.index.rename("item_id"))
    return _Source(inter[["user", "item", "time"]], items, ["title:token_seq"], explicit=False)


# --- optional item feature files (any format) -------------------------------------------------

ITEM_FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")


def _feature_specs(item_feature_files, folder):
    """[(field, RecBole type, path)] of the ``item_feature_files`` setting, checked."""
    specs = []
    for name, spec in (item_feature_files or {}).items():
        how = (f"Expected item_feature_files: {{{name}: {{file: FILE, type: TYPE}}}} with FILE beside the "
               f"source files and TYPE one of {', '.join(ITEM_FEATURE_TYPES)}.")
        if not _is_id(str(name)) or ":" in str(name) or not isinstance(spec, dict):
            raise DataPreparationError(f"Item feature '{name}' is not usable. {how}")
        kind, file = spec.get("type"), spec.get("file")
        if kind not in ITEM_FEATURE_TYPES or not file:
            raise DataPreparationError(f"Item feature '{name}' has file={file!r}, type={kind!r}. {how}")
        path = os.path.join(folder, str(file))
        if not os.path.isfile(path):
            raise _missing_files_error("item feature", folder, [str(file)],
                                       f"Item feature '{name}' reads it ('ITEM<TAB>VALUE' lines, no header). {how}")
        specs.append((str(name), kind, path))
    return specs


def _feature_values(values, kind):
    """(cleaned values, invalid mask) of one feature file's value column."""
    tokens = values.str.split()
    if kind == "token":
        return tokens.str[0].fillna(""), tokens.str.len() > 1
    if kind == "token_seq":
        return tokens.str.join(" "), pd.Series(False, index=values.index)
    numbers = pd.to_numeric(tokens.explode(), errors="coerce")
    invalid = numbers.isna() & tokens.explode().notna()
    invalid = invalid.groupby(level=0).any().reindex(values.index, fill_value=False)
    if kind == "float":
        return tokens.str[0].fillna(""), invalid | (tokens.str.len() > 1)
    return tokens.str.join(" "), invalid  # float_seq


def _join_item_features(source, specs, problems):
    """Add each feature file's column to ``source.items`` (and its header); an item of the
    interactions missing from a file gets an empty value, counted."""
    for name, kind, path in specs:
        if name in source.items.columns:
            raise DataPreparationError(f"Item feature '{name}' is already a field of the source's items.")
        filename = os.path.basename(path)
        lines = pd.Series(_read_lines(path), dtype=object)
        lines.index = lines.index + 1
        lines = lines[lines.str.strip() != ""]
        problems.total += len(lines)
        parts = lines.str.partition("\t")
        item_ids = parts[0].str.strip()
        values, invalid = _feature_values(parts[2], kind)
        malformed = (parts[1] == "") | (item_ids == "") | invalid
        problems.add("malformed line", filename, lines.index[malformed])
        duplicated = ~malformed & item_ids.duplicated()
        problems.add("duplicate item line", filename, lines.index[duplicated])
        keep = ~(malformed | duplicated)
        column = pd.Series(values[keep].values, index=item_ids[keep].values).reindex(source.items.index)
        used = column.index.isin(source.inter["item"].unique())
        problems.repair(f"item without a line in {filename} (empty {name})", column.index[column.isna() & used])
        source.items[name] = column.fillna("").values
        source.item_header.append(f"{name}:{kind}")
    return source


# --- amazon 2014 / 2018 ----------------------------------------------------------------------


def _amazon_inputs(source_format, folder):
    release = "2014" if source_format == "amazon2014" else "2018"
    if release == "2014":
        reviews = sorted(glob(os.path.join(folder, "reviews_*_5.json.gz")))
        category = re.compile(r"^reviews_(.+)_5\.json\.gz$")
        pattern = "reviews_<Category>_5.json.gz"
    else:
        reviews = [
            path
            for path in sorted(glob(os.path.join(folder, "*_5.json.gz")))
            if not os.path.basename(path).startswith(("reviews_", "meta_"))
        ]
        category = re.compile(r"^(.+)_5\.json\.gz$")
        pattern = "<Category>_5.json.gz"
    how = (
        f"Download the 2014 release from Julian McAuley's Amazon product data page "
        f"({AMAZON_2014_URL}), e.g. 'reviews_Sports_and_Outdoors_5.json.gz' (5-core reviews) and "
        f"'meta_Sports_and_Outdoors.json.gz' (metadata), into that folder and use source_format "
        f"amazon2014; or the 2018 release ({AMAZON_2018_URL}), e.g. "
        f"'Sports_and_Outdoors_5.json.gz' and 'meta_Sports_and_Outdoors.json.gz', with "
        f"source_format amazon2018."
    )
    if len(reviews) > 1:
        raise DataPreparationError(
            f"Several review files match '{pattern}' in '{folder}': "
            f"{[os.path.basename(p) for p in reviews]}. Keep one category per folder."
        )
    if not reviews:
        raise _missing_files_error(
            source_format, folder, [pattern, "meta_<Category>.json.gz"], how
        )
    name = category.match(os.path.basename(reviews[0])).group(1)
    meta = os.path.join(folder, f"meta_{name}.json.gz")
    if not os.path.isfile(meta):
        raise _missing_files_error(source_format, folder, [f"meta_{name}.json.gz"], how)
    return [reviews[0], meta]


def _gzip_lines(path):
    """(line number, line) of a json.gz file, with a progress bar."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = tqdm(f, desc=f"reading {os.path.basename(path)}", unit=" lines", mininterval=1)
            yield from enumerate(lines, start=1)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise _unreadable_error(path, error) from None


def _read_reviews(path, problems):
    users, items, times, numbers, bad = [], [], [], [], []
    for number, line in _gzip_lines(path):
        if not line.strip():
            continue
        problems.total += 1
        try:
            review = json.loads(line)
            user, item = review["reviewerID"], review["asin"]
            when = float(review["unixReviewTime"])
            if not (_is_id(user) and _is_id(item)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            bad.append(number)
            continue
        users.append(user)
        items.append(item)
        times.append(when)
        numbers.append(number)
    problems.add("malformed line", os.path.basename(path), bad)
    inter = pd.DataFrame({"user": users, "item": items, "time": times}, index=numbers)
    return inter


def _read_meta(path, needed, release, problems):
    """Meta records of the ``needed`` items; lines of other items are not parsed."""
    parse = ast.literal_eval if release == "2014" else json.loads
    records, bad = [], []
    for number, line in _gzip_lines(path):
        if not line.strip():
            continue
        asins = _ASIN_PATTERN.findall(line)
        if asins and not needed.intersection(asins):
            continue
        problems.total += 1
        try:
            record = parse(line)
            if not isinstance(record, dict) or not _is_id(record.get("asin")):
                raise ValueError
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            bad.append(number)
            continue
        if record["asin"] in needed:
            records.append(record)
    problems.add("malformed line", os.path.basename(path), bad)
    return records


def _amazon_price(value, release):
    if release == "2014":
        return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else np.nan
    match = _PRICE_PATTERN.match(str(value or "").strip())
    return float(match.group(1).replace(",", "")) if match else np.nan


def _amazon_items(records, release):
    """The item table of the Amazon meta records (first record per item wins)."""
    fields = ["asin", "title", "description", "brand", "categories", "category", "price"]
    meta = pd.DataFrame.from_records(records, columns=fields).drop_duplicates("asin")
    meta = meta.set_index("asin").rename_axis("item_id")
    description = meta["description"]
    if release == "2018":  # a list of paragraphs
        description = description.map(lambda v: " ".join(map(str, v)) if isinstance(v, list) else v)
        categories = meta["category"].map(lambda v: v if isinstance(v, list) else [])
    else:  # a list of category paths
        categories = meta["categories"].map(
            lambda v: [c for path in v if isinstance(path, list) for c in path]
            if isinstance(v, list)
            else []
        )
    categories = categories.map(
        lambda names: " ".join(dict.fromkeys(filter(None, map(_clean_category, names))))
    )
    price = meta["price"].map(lambda v: _amazon_price(v, release)).astype(np.float64)
    low, high = price.min(), price.max()
    price = (price - low) / (high - low) if high > low else price * 0.0
    items = pd.DataFrame(
        {
            "title": _clean_text(meta["title"].values).values,
            "description": _clean_text(description.values).values,
            "brand": _clean_text(meta["brand"].values).values,
            "categories": categories.values,
            "price": price.values,
        },
        index=meta.index,
    )
    header = [
        "title:token_seq",
        "description:token_seq",
        "brand:token",
        "categories:token_seq",
        "price:float",
    ]
    return items, header


def _read_amazon(source_format, folder, problems):
    release = source_format[-4:]
    reviews_path, meta_path = _amazon_inputs(source_format, folder)
    inter = _read_reviews(reviews_path, problems)
    records = _read_meta(meta_path, set(inter["item"].unique()), release, problems)
    items, header = _amazon_items(records, release)
    without_meta = ~inter["item"].isin(items.index)
    problems.add(
        "item in reviews with no meta", os.path.basename(reviews_path), inter.index[without_meta]
    )
    inter = inter[~without_meta].reset_index(drop=True)
    return _Source(inter, items, header, explicit=False)


# --------------------------------------------------------------------------------------------
# The CTR protocol, vectorised
# --------------------------------------------------------------------------------------------


def _isin_sorted(values, sorted_keys):
    """``np.isin(values, sorted_keys)`` for sorted, non-empty ``sorted_keys``."""
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


def _sample_negatives(sample_users, inter_users, inter_items, n_items, user_names, rng):
    """One item per sample, uniform over the items its user never interacted with.

    Draws for all samples at once, then redraws only the collisions with the user's items
    (found among sorted ``user * n_items + item`` keys) until there are none.
    """
    keys = np.unique(inter_users.astype(np.int64) * n_items + inter_items)
    n_seen = np.bincount(keys // n_items, minlength=len(user_names))
    sampled = np.unique(sample_users)
    full = sampled[n_seen[sampled] >= n_items]
    if full.size:
        raise DataPreparationError(
            f"User '{user_names[full[0]]}' ({full.size} user(s) in all) interacted with all "
            f"{n_items} items: no negative item can be sampled. Use a dataset with more items."
        )
    base = sample_users.astype(np.int64) * n_items
    negatives = rng.integers(n_items, size=len(sample_users))
    todo = np.arange(len(sample_users))
    while todo.size:
        todo = todo[_isin_sorted(base[todo] + negatives[todo], keys)]
        negatives[todo] = rng.integers(n_items, size=todo.size)
    return negatives


def _histories(item_names, items, rows, positions, max_history):
    """Space-separated history strings (the previous ``max_history`` items, oldest first).

    ``items`` are the item codes of the chronologically sorted interactions; the history of the
    interaction at ``rows[k]`` (position ``positions[k]`` >= 1 within its user) is the slice
    ``items[rows[k] - min(positions[k], max_history) : rows[k]]``. It is built from a padded
    (samples, max_history) matrix of item ids, concatenated column by column.
    """
    width = int(min(max_history, positions.max(initial=1)))
    offsets = np.arange(-width, 0)
    present = offsets[None, :] >= -positions[:, None]
    index = np.where(present, rows[:, None] + offsets[None, :], 0)
    names = np.strings.add(np.asarray(item_names, dtype=StringDType()), " ")
    cells = np.where(present, names[items[index]], "")
    history = cells[:, 0]
    for column in range(1, width):
        history = np.strings.add(history, cells[:, column])
    return np.strings.strip(history)


def _build_samples(source, max_history, rating_threshold, seed):
    """The train / valid / test sample tables of the CTR protocol (see the module docstring)."""
    inter = source.inter
    user_codes, user_names = pd.factorize(inter["user"])  # order of first appearance
    item_codes, item_names = pd.factorize(inter["item"], sort=True)
    user_names = np.asarray(user_names, dtype=object)
    item_names = np.asarray(item_names, dtype=object)
    order = np.lexsort((np.arange(len(inter)), inter["time"].to_numpy(), user_codes))
    users, items = user_codes[order], item_codes[order]

    starts = np.flatnonzero(np.diff(users, prepend=-1))  # first row of each user
    sizes = np.diff(np.r_[starts, len(users)])
    positions = np.arange(len(users)) - np.repeat(starts, sizes)
    rows = np.flatnonzero(positions >= 1)
    n_samples_of_user = np.repeat(sizes - 1, sizes)[rows]
    from_end = n_samples_of_user - positions[rows]  # 0: last sample of the user
    split = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0))
    history = _histories(item_names, items, rows, positions[rows], max_history)

    sample_users, sample_items = users[rows], items[rows]
    if source.explicit:
        ratings = inter["rating"].to_numpy()[order][rows]
        labels = (ratings >= rating_threshold).astype(np.int8)
    else:
        negatives = _sample_negatives(
            sample_users, users, items, len(item_names), user_names, np.random.default_rng(seed)
        )
        sample_users, split, history = (np.repeat(a, 2) for a in (sample_users, split, history))
        sample_items = np.column_stack([sample_items, negatives]).ravel()
        labels = np.tile(np.array([1, 0], dtype=np.int8), len(rows))
    samples = pd.DataFrame(
        {
            "user_id": user_names[sample_users],
            "item_id": item_names[sample_items],
            "label": labels,
            "item_id_list": history.astype(object),
        }
    )
    tables = {
        name: samples[split == code].reset_index(drop=True) for code, name in enumerate(_SPLITS)
    }
    n_users = int((sizes >= 2).sum())
    return tables, n_users, item_names


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _table_text(header, columns):
    """Tab-separated text of a header and equally long columns (NaN -> empty)."""
    cells = [pd.Series(np.asarray(c, dtype=object)) for c in columns]
    cells = [c.where(c.notna(), "").astype(str) for c in cells]
    lines = cells[0].str.cat(cells[1:], sep="\t") if len(cells) > 1 else cells[0]
    return "\t".join(header) + "\n" + "".join((lines + "\n").tolist())


def _render_files(dataset, source, tables, item_names):
    """{file name: contents} of every output file but the stamp."""
    files = {
        f"{dataset}.{name}.inter": _table_text(
            _INTER_HEADER, [table[column] for column in table.columns]
        )
        for name, table in tables.items()
    }
    items = source.items[source.items.index.isin(item_names)]  # in source order
    files[f"{dataset}.item"] = _table_text(
        ["item_id:token"] + source.item_header,
        [items.index.to_series()] + [items[column] for column in items.columns],
    )
    if source.user_file:
        with open(source.user_file, "rb") as f:
            files[f"{dataset}.user"] = f.read()
    return files


def _write_folder(folder, dataset, files, stamp):
    """Write the files atomically, one by one, and the stamp last.

    The old stamp goes first, so that an interrupted run leaves no stamp vouching for a mix of
    old and new files. A ``.user`` file of an earlier run whose source is gone is removed, as
    RecBole would load it.
    """
    os.makedirs(folder, exist_ok=True)
    stamp_path = os.path.join(folder, f"{dataset}.prep.json")
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    user_path = os.path.join(folder, f"{dataset}.user")
    if f"{dataset}.user" not in files and os.path.exists(user_path):
        os.remove(user_path)
    for name, data in files.items():
        atomic_write(os.path.join(folder, name), data)
    atomic_write(stamp_path, json.dumps(stamp, indent=2) + "\n")


def _input_digests(inputs):
    return {path: file_digest(path) for path in inputs}


def _up_to_date(stamp_path, folder, settings, inputs):
    """Whether the stamp matches these settings and the inputs' contents, and every output exists.

    Contents, not modification times: a re-copied or touched raw folder (same bytes) must not
    re-convert, because the converted files' contents key every downstream cache (CELA's stages).
    """
    try:
        with open(stamp_path, encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or (
        stamp.get("format_version"),
        stamp.get("settings"),
        stamp.get("inputs"),
    ) != (FORMAT_VERSION, settings, inputs):
        return False
    outputs = [os.path.join(folder, name) for name in stamp.get("outputs") or []]
    if not outputs or not all(os.path.isfile(path) for path in outputs):
        return False
    return stamp.get("input_digests") == _input_digests(inputs)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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


def _inputs(dataset, source_format, folder):
    if source_format == "recbole":
        return _recbole_inputs(dataset, folder)
    if source_format == "sequence":
        return _sequence_inputs(folder)
    return _amazon_inputs(source_format, folder)


def _read(dataset, source_format, folder, problems):
    if source_format == "recbole":
        return _read_recbole(dataset, folder, problems)
    if source_format == "sequence":
        return _read_sequence(folder, problems)
    return _read_amazon(source_format, folder, problems)


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
        force (bool): Convert even when the outputs are up to date.
        logger (logging.Logger): Where to log; ``logging.getLogger(__name__)`` by default.

    Returns:
        str: The output folder ``<data_path>/<dataset>``.

    Raises:
        DataPreparationError: Unknown format, missing input files, or too much malformed input.
            Nothing is written then.
    """
    logger = logger or logging.getLogger(__name__)
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
    features = _feature_specs(item_feature_files, source_folder)
    settings = {
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
    inputs = _inputs(dataset, source_format, source_folder) + [path for _, _, path in features]
    stamp_path = os.path.join(folder, f"{dataset}.prep.json")
    if not force and _up_to_date(stamp_path, folder, settings, inputs):
        logger.info(f"Dataset '{dataset}' is up to date in '{folder}': not converted again.")
        return folder

    start = time.time()
    logger.info(f"Converting '{dataset}' ({source_format}) from '{source_folder}' to '{folder}'.")
    problems = _Problems()
    source = _join_item_features(_read(dataset, source_format, source_folder, problems), features, problems)
    problems.check(max_bad_ratio, logger)
    tables, n_users, item_names = _build_samples(source, max_history, rating_threshold, seed)
    if n_users == 0:
        raise DataPreparationError(
            f"No user in '{source_folder}' has 2 or more usable interactions: there is no sample "
            f"to write. Nothing was written."
        )
    files = _render_files(dataset, source, tables, item_names)

    counts = {name: len(table) for name, table in tables.items()}
    positive = {name: float(table["label"].mean()) for name, table in tables.items() if len(table)}
    stamp = {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "inputs": inputs,
        "input_digests": _input_digests(inputs),
        "outputs": sorted(files),
        "counts": {
            "users": n_users,
            "items": len(item_names),
            "interactions": len(source.inter),
            "samples": counts,
            "positive_rate": positive,
            "skipped_input_entries": dict(problems.counts),
            "repaired_input_entries": {kind: e["count"] for kind, e in problems.repaired.items()},
        },
    }
    _write_folder(folder, dataset, files, stamp)
    logger.info(
        f"Converted '{dataset}' in {time.time() - start:.1f}s: {n_users} users with samples, "
        f"{len(item_names)} items, {len(source.inter)} interactions; samples "
        + ", ".join(
            f"{name} {counts[name]} (positive rate {positive.get(name, 0.0):.3f})"
            for name in _SPLITS
        )
        + f"; written to '{folder}'."
    )
    return folder

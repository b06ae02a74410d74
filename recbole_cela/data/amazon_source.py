"""The ``amazon2014`` and ``amazon2018`` source forms: the raw files of the two Amazon releases.

* 2014 (Julian McAuley's Amazon product data): ``reviews_<Category>_5.json.gz`` (JSON lines)
  and ``meta_<Category>.json.gz`` (Python-literal lines).
* 2018: ``<Category>_5.json.gz`` and ``meta_<Category>.json.gz`` (both JSON lines).

Items keep ``title``, ``description``, ``brand``, ``categories`` (one token per category) and
``price`` (min-max scaled to [0, 1], empty when unknown).
"""

import ast
import gzip
import json
import os
import re
from glob import glob

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_cela.data.problems import NOT_UTF8, DataPreparationError
from recbole_cela.data.source import (
    Source,
    clean_category,
    clean_text,
    is_id,
    missing_files_error,
    unreadable_error,
)
from recbole_cela.fileio import undecodable

AMAZON_2014_URL = "https://jmcauley.ucsd.edu/data/amazon/"
AMAZON_2018_URL = "https://nijianmo.github.io/amazon/"

_ASIN_PATTERN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]*)['"]""")
_PRICE_PATTERN = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")


def amazon_inputs(source_format, folder):
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
        raise missing_files_error(
            source_format, folder, [pattern, "meta_<Category>.json.gz"], how
        )
    name = category.match(os.path.basename(reviews[0])).group(1)
    meta = os.path.join(folder, f"meta_{name}.json.gz")
    if not os.path.isfile(meta):
        raise missing_files_error(source_format, folder, [f"meta_{name}.json.gz"], how)
    return [reviews[0], meta]


def _gzip_lines(path):
    """(line number, line) of a json.gz file, with a progress bar.

    Bytes that are not UTF-8 are decoded as lone surrogates (``surrogateescape``), so that the
    readers skip and count such a line with its number, as ``read_lines`` does for plain files.
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
            lines = tqdm(f, desc=f"reading {os.path.basename(path)}", unit=" lines", mininterval=1)
            yield from enumerate(lines, start=1)
    except (OSError, EOFError) as error:
        raise unreadable_error(path, error) from None


def _parsed_lines(path, problems, parse, errors, wanted=None):
    """(line number, ``parse(line)``) of the non-empty lines of a json.gz file, each counted as
    read; a line that is not UTF-8 or that ``parse`` rejects with one of ``errors`` is skipped and
    counted (once the file is read). ``wanted``: lines it refuses are neither parsed nor counted."""
    bad, not_utf8 = [], []
    for number, line in _gzip_lines(path):
        if not line.strip() or (wanted is not None and not wanted(line)):
            continue
        problems.total += 1
        if undecodable(line):
            not_utf8.append(number)
            continue
        try:
            parsed = parse(line)
        except errors:
            bad.append(number)
            continue
        yield number, parsed
    problems.add("malformed line", os.path.basename(path), bad)
    problems.add(NOT_UTF8, os.path.basename(path), not_utf8)


def _review(line):
    """(user, item, time) of a review line; ValueError / KeyError / TypeError when malformed."""
    review = json.loads(line)
    user, item = review["reviewerID"], review["asin"]
    when = float(review["unixReviewTime"])
    if not (is_id(user) and is_id(item)):
        raise ValueError
    return user, item, when


def _read_reviews(path, problems):
    numbers, rows = [], []
    for number, row in _parsed_lines(path, problems, _review, (ValueError, KeyError, TypeError)):
        numbers.append(number)
        rows.append(row)
    return pd.DataFrame(rows, columns=["user", "item", "time"], index=numbers)


def _read_meta(path, needed, release, problems):
    """Meta records of the ``needed`` items; lines of other items are not parsed (nor counted,
    even when they are not UTF-8)."""
    parse = ast.literal_eval if release == "2014" else json.loads

    def record(line):
        parsed = parse(line)
        if not isinstance(parsed, dict) or not is_id(parsed.get("asin")):
            raise ValueError
        return parsed

    def wanted(line):
        asins = _ASIN_PATTERN.findall(line)
        return not asins or bool(needed.intersection(asins))

    errors = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)
    return [r for _, r in _parsed_lines(path, problems, record, errors, wanted) if r["asin"] in needed]


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
        lambda names: " ".join(dict.fromkeys(filter(None, map(clean_category, names))))
    )
    price = meta["price"].map(lambda v: _amazon_price(v, release)).astype(np.float64)
    low, high = price.min(), price.max()
    price = (price - low) / (high - low) if high > low else price * 0.0
    items = pd.DataFrame(
        {
            "title": clean_text(meta["title"].values).values,
            "description": clean_text(description.values).values,
            "brand": clean_text(meta["brand"].values).values,
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


def read_amazon(source_format, folder, problems):
    release = source_format[-4:]
    reviews_path, meta_path = amazon_inputs(source_format, folder)
    inter = _read_reviews(reviews_path, problems)
    records = _read_meta(meta_path, set(inter["item"].unique()), release, problems)
    items, header = _amazon_items(records, release)
    without_meta = ~inter["item"].isin(items.index)
    problems.add(
        "item in reviews with no meta", os.path.basename(reviews_path), inter.index[without_meta]
    )
    inter = inter[~without_meta].reset_index(drop=True)
    return Source(inter, items, header, explicit=False)

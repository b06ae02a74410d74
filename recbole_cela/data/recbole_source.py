"""The ``recbole`` source form: RecBole atomic files with explicit feedback.

``<dataset>.inter`` with the fields ``user_id``, ``item_id``, ``rating``, ``timestamp``, plus
optional ``<dataset>.item`` (its fields are written as they are) and ``<dataset>.user`` (copied
as it is, so it must be UTF-8 text throughout).
"""

import os

import pandas as pd

from recbole_cela.data.problems import DataPreparationError
from recbole_cela.data.source import Source, check_utf8, is_id, missing_files_error, read_lines


def recbole_inputs(dataset, folder):
    inter = os.path.join(folder, f"{dataset}.inter")
    if not os.path.isfile(inter):
        raise missing_files_error(
            "recbole",
            folder,
            [f"{dataset}.inter"],
            f"Put RecBole atomic files there ('{dataset}.inter' with the fields user_id, "
            f"item_id, rating, timestamp; optional '{dataset}.item' and '{dataset}.user'), or "
            f"set source_path to the folder that holds them.",
        )
    optional = [os.path.join(folder, f"{dataset}.{suffix}") for suffix in ("item", "user")]
    return [inter] + [path for path in optional if os.path.isfile(path)]


def read_atomic_table(path, problems):
    """A RecBole atomic file as (header fields, DataFrame of strings keyed by field name).

    Lines whose number of tab-separated values differs from the header's are skipped.
    """
    lines = read_lines(path, problems, header=True)
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


def read_recbole(dataset, folder, problems):
    inputs = recbole_inputs(dataset, folder)
    inter_path = inputs[0]
    _, table = read_atomic_table(inter_path, problems)
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
    ids = inter["user"].map(is_id) & inter["item"].map(is_id)
    bad = ~ids | inter[["rating", "time"]].isna().any(axis=1)
    problems.add("malformed line", os.path.basename(inter_path), inter.index[bad])
    inter = inter[~bad].reset_index(drop=True)

    item_path = os.path.join(folder, f"{dataset}.item")
    if item_path in inputs:
        item_header, items = read_atomic_table(item_path, problems)
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
    if user_file:
        check_utf8(user_file, "the .user file is copied as it is, so no line of it can be skipped")
    return Source(inter, items, item_header, explicit=True, user_file=user_file)

"""Writing the converted files, and the content stamp that lets a later call skip the conversion.

``<dataset>.prep.json`` records the settings, the input files and their SHA-1 digests, the
outputs and the counts of a conversion; it is written last, after every other file. A later
call converts nothing while the settings and the inputs' *contents* are the same and every output
exists (a re-copied or touched input with the same bytes converts nothing).
"""

import json
import os

import numpy as np
import pandas as pd

from recbole_cela.fileio import atomic_write, file_digest

#: Version of the output layout and protocol; a change re-converts every dataset.
FORMAT_VERSION = 1

INTER_HEADER = ["user_id:token", "item_id:token", "label:float", "item_id_list:token_seq"]


def _table_text(header, columns):
    """Tab-separated text of a header and equally long columns (NaN -> empty)."""
    cells = [pd.Series(np.asarray(c, dtype=object)) for c in columns]
    cells = [c.where(c.notna(), "").astype(str) for c in cells]
    lines = cells[0].str.cat(cells[1:], sep="\t") if len(cells) > 1 else cells[0]
    return "\t".join(header) + "\n" + "".join((lines + "\n").tolist())


def render_files(dataset, source, tables, item_names):
    """{file name: contents} of every output file but the stamp."""
    files = {
        f"{dataset}.{name}.inter": _table_text(
            INTER_HEADER, [table[column] for column in table.columns]
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


def write_folder(folder, dataset, files, stamp):
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


def input_digests(inputs):
    return {path: file_digest(path) for path in inputs}


def up_to_date(stamp_path, folder, settings, inputs):
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
    return stamp.get("input_digests") == input_digests(inputs)

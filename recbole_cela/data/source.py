"""What every source reader shares: the :class:`Source` it returns, id and text cleaning, line
reading, and the messages for missing or unreadable files."""

import html
import os
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from recbole_cela.data.problems import DataPreparationError


@dataclass
class Source:
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


def is_id(value):
    """A user or item id: a non-empty string without whitespace (ids are tokens of a
    space-separated history and fields of a tab-separated line)."""
    return isinstance(value, str) and value != "" and value.split() == [value]


def clean_text(values):
    """HTML-unescape, collapse whitespace to single spaces, strip; ``"`` becomes ``''``."""
    values = pd.Series(values, dtype=object).fillna("").astype(str).map(html.unescape)
    values = values.str.replace(r"\s+", " ", regex=True).str.strip()
    return values.str.replace('"', "''", regex=False)


def clean_category(name):
    """One category as one token: ``&`` and commas dropped, spaces -> ``_``."""
    name = html.unescape(str(name)).replace("&", "").replace(",", "")
    return "_".join(name.split()).replace('"', "''")


def unreadable_error(path, error):
    return DataPreparationError(
        f"Cannot read '{path}': {error}. Expected UTF-8 text (gzip-compressed for .gz files); "
        f"re-download or regenerate the file."
    )


def read_lines(path):
    """The lines of a text file, without line ends (a final empty line is dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as error:
        raise unreadable_error(path, error) from None


def missing_files_error(source_format, folder, expected, how):
    exists = "" if os.path.isdir(folder) else " (the folder does not exist)"
    return DataPreparationError(
        f"Input files for source_format '{source_format}' not found: expected "
        f"{', '.join(repr(e) for e in expected)} in '{folder}'{exists}. {how}"
    )

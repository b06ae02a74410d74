"""What every source reader shares: the :class:`Source` it returns, id and text cleaning, line
reading, and the messages for missing or unreadable files."""

import html
import os
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from recbole_cela.data.problems import NOT_UTF8, DataPreparationError
from recbole_cela.fileio import read_text_lines, undecodable


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


def read_lines(path, problems, header=False):
    """The lines of a UTF-8 text file, without line ends (a final empty line is dropped).

    A line that is not UTF-8 text is a malformed entry like any other: it is counted as read and
    as skipped (kind ``NOT_UTF8``, with its ``file:line``), so ``max_bad_ratio`` decides between
    a warning and stopping, and it is returned as an empty line, which every reader passes over.
    It is skipped rather than decoded with replacement characters because a replaced byte in an
    id would make up an id (two ids that differ only there would become one item or user), and
    in a text would feed the text encoders characters the file does not hold; a few stray bytes
    in a large file cost a few counted lines, a file in another encoding exceeds
    ``max_bad_ratio`` and stops with the first offending lines. With ``header``, the first line
    names the file's fields and cannot be skipped: one that is not UTF-8 stops the conversion.
    """
    lines, bad = read_text_lines(path)
    if header and bad and bad[0] == 1:
        raise not_utf8_error(path, 1, lines[0], "the header names the file's fields")
    problems.total += len(bad)
    problems.add(NOT_UTF8, os.path.basename(path), bad)
    for number in bad:
        lines[number - 1] = ""
    return lines


def read_tab_lines(path, problems):
    """The non-empty lines of an ``ITEM<TAB>VALUE`` file (each counted as read), split at the
    first tab: a frame of (id, tab, value) indexed by line number (from 1)."""
    lines = pd.Series(read_lines(path, problems), dtype=object)
    lines.index = lines.index + 1
    lines = lines[lines.str.strip() != ""]
    problems.total += len(lines)
    return lines.str.partition("\t")


def check_utf8(path, why):
    """Stop at the first line of a file that is not UTF-8 text (for a file copied as it is,
    whose lines cannot be skipped; ``why`` says so)."""
    lines, bad = read_text_lines(path)
    if bad:
        raise not_utf8_error(path, bad[0], lines[bad[0] - 1], why)


def not_utf8_error(path, number, line, why):
    return DataPreparationError(
        f"{path}:{number}: not UTF-8 text ({undecodable(line)}); {why}. Re-encode the file as "
        f"UTF-8 (e.g. with 'iconv -f latin1 -t utf-8'). Nothing was written."
    )


def missing_files_error(source_format, folder, expected, how):
    """The error for input files missing from ``folder``: its first line names ``source_path``, the
    folder and the files the source form needs there; ``how`` follows."""
    files = ", ".join(repr(e) for e in expected)
    if os.path.isdir(folder):
        first = f"source_path '{folder}' lacks {files}: the input files of source_format '{source_format}'."
    else:
        first = f"source_path '{folder}' does not exist: source_format '{source_format}' reads {files} from it."
    return DataPreparationError(f"{first}\n{how}")

"""The ``sequence`` source form: ``user_sequence.txt`` (``USER ITEM ITEM ...``, oldest first) and
an item text file (``ITEM<TAB>TEXT``, no header; ``item_text.tsv`` unless ``item_text_file`` names
another file of the same folder), whose texts become the items' ``title`` field."""

import os

import numpy as np
import pandas as pd

from recbole_cela.data.source import Source, clean_text, missing_files_error, read_lines, read_tab_lines


DEFAULT_TEXT_FILE = "item_text.tsv"


def sequence_inputs(folder, text_file=DEFAULT_TEXT_FILE):
    expected = ["user_sequence.txt", text_file]
    paths = [os.path.join(folder, name) for name in expected]
    if not all(os.path.isfile(path) for path in paths):
        raise missing_files_error(
            "sequence",
            folder,
            expected,
            "The sequence form needs 'user_sequence.txt' (one line per user: 'USER ITEM ITEM "
            f"...', space separated, oldest first) and '{text_file}' ('ITEM<TAB>TEXT', no "
            "header; item_text_file names it). Set source_path to the folder holding both, or "
            "convert the raw Amazon files instead (source_format amazon2014 or amazon2018).",
        )
    return paths


def _read_titles(text_path, problems):
    """The item text file (``ITEM<TAB>TEXT``) as a Series of cleaned texts indexed by item id, in
    file order; malformed and duplicate lines are skipped."""
    text_name = os.path.basename(text_path)
    parts = read_tab_lines(text_path, problems)
    item_ids, texts = parts[0].str.strip(), clean_text(parts[2].values)
    texts.index = parts.index
    malformed = (parts[1] == "") | (item_ids == "")
    problems.add("malformed line", text_name, parts.index[malformed])
    duplicated = ~malformed & item_ids.duplicated()
    problems.add("duplicate item line", text_name, parts.index[duplicated])
    keep = ~(malformed | duplicated)
    return pd.Series(texts[keep].values, index=item_ids[keep].values)


def _read_sequences(sequence_path, problems):
    """user_sequence.txt (``USER ITEM ITEM ...``) as interactions (user, item, time = the order
    within the file); lines without items and repeated users are skipped."""
    sequence_name = os.path.basename(sequence_path)
    lines = pd.Series(read_lines(sequence_path, problems), dtype=object)
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
    return inter


def read_sequence(folder, problems, text_file=DEFAULT_TEXT_FILE):
    sequence_path, text_path = sequence_inputs(folder, text_file)
    text_name = os.path.basename(text_path)
    titles = _read_titles(text_path, problems)
    inter = _read_sequences(sequence_path, problems)

    # An item without text keeps its interactions: its title is empty, so the text encoders give
    # it text_fallback (recbole_cela/text/items.py); counted, never dropped.
    used = pd.Index(inter["item"].unique())
    # Rows in the text file's order (then items without a line), as RecBole remaps ids in file order.
    title = titles.reindex(titles.index[titles.index.isin(used)].append(used[~used.isin(titles.index)]))
    problems.repair("item without a line in " + text_name, title.index[title.isna()])
    problems.repair("item with an empty text", title.index[title == ""])
    items = pd.DataFrame({"title": title.fillna("").values}, index=title.index.rename("item_id"))
    return Source(inter[["user", "item", "time"]], items, ["title:token_seq"], explicit=False)

"""Optional item feature files (any source form): ``item_feature_files: {field: {file, type}}``.

Each file holds ``ITEM<TAB>VALUE`` lines (no header) beside the source files; its values become the
item column ``field:type`` of the written ``.item`` file (e.g. the brand and category tokens of
amazon-sports' ``item_attributes.tsv``).
"""

import os

import pandas as pd

from recbole_cela.data.problems import DataPreparationError
from recbole_cela.data.source import is_id, read_tab_lines

ITEM_FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")


def feature_specs(item_feature_files, folder):
    """[(field, RecBole type, path)] of the ``item_feature_files`` setting, checked."""
    specs = []
    for name, spec in (item_feature_files or {}).items():
        how = (f"Expected item_feature_files: {{{name}: {{file: FILE, type: TYPE}}}} with FILE beside the "
               f"source files and TYPE one of {', '.join(ITEM_FEATURE_TYPES)}.")
        if not is_id(str(name)) or ":" in str(name) or not isinstance(spec, dict):
            raise DataPreparationError(f"Item feature '{name}' is not usable. {how}")
        kind, file = spec.get("type"), spec.get("file")
        if kind not in ITEM_FEATURE_TYPES or not file:
            raise DataPreparationError(f"Item feature '{name}' has file={file!r}, type={kind!r}. {how}")
        path = os.path.join(folder, str(file))
        if not os.path.isfile(path):
            raise DataPreparationError(f"source_path '{folder}' lacks '{file}', the file of item feature '{name}' "
                                       f"('ITEM<TAB>VALUE' lines, no header).\n{how}")
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


def join_item_features(source, specs, problems):
    """Add each feature file's column to ``source.items`` (and its header); an item of the
    interactions missing from a file gets an empty value, counted."""
    for name, kind, path in specs:
        if name in source.items.columns:
            raise DataPreparationError(f"Item feature '{name}' is already a field of the source's items.")
        filename = os.path.basename(path)
        parts = read_tab_lines(path, problems)
        item_ids = parts[0].str.strip()
        values, invalid = _feature_values(parts[2], kind)
        malformed = (parts[1] == "") | (item_ids == "") | invalid
        problems.add("malformed line", filename, parts.index[malformed])
        duplicated = ~malformed & item_ids.duplicated()
        problems.add("duplicate item line", filename, parts.index[duplicated])
        keep = ~(malformed | duplicated)
        column = pd.Series(values[keep].values, index=item_ids[keep].values).reindex(source.items.index)
        used = column.index.isin(source.inter["item"].unique())
        problems.repair(f"item without a line in {filename} (empty {name})", column.index[column.isna() & used])
        source.items[name] = column.fillna("").values
        source.item_header.append(f"{name}:{kind}")
    return source

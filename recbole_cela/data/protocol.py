"""The CTR protocol, vectorised: chronological samples with their histories, sampled negatives,
and the per-user train / valid / test split (documented in full in
:mod:`recbole_cela.data.convert`)."""

import numpy as np
import pandas as pd
from numpy.dtypes import StringDType

from recbole_cela.data.problems import DataPreparationError

SPLITS = ("train", "valid", "test")


def _isin_sorted(values, sorted_keys):
    """``np.isin(values, sorted_keys)`` for sorted, non-empty ``sorted_keys``."""
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


def sample_negatives(sample_users, inter_users, inter_items, n_items, user_names, rng):
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


def histories(item_names, items, rows, positions, max_history):
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


def build_samples(source, max_history, rating_threshold, seed):
    """The train / valid / test sample tables of the CTR protocol, the number of users with
    samples, and the item names (sorted; the items of the interactions)."""
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
    history = histories(item_names, items, rows, positions[rows], max_history)

    sample_users, sample_items = users[rows], items[rows]
    if source.explicit:
        ratings = inter["rating"].to_numpy()[order][rows]
        labels = (ratings >= rating_threshold).astype(np.int8)
    else:
        negatives = sample_negatives(
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
        name: samples[split == code].reset_index(drop=True) for code, name in enumerate(SPLITS)
    }
    n_users = int((sizes >= 2).sum())
    return tables, n_users, item_names

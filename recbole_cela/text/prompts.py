"""FLIP's hard prompts: one sentence per interaction, assembled from per-user and per-item tokens.

A prompt reads, for user ``u``, target item ``i`` and history ``h`` (most recent item first)::

    user age: 24; gender: M; occupation: technician. target movie title: Toy Story; class:
    Animation Children's Comedy; release year: 1995. history: Heat; Casino.

Every piece is tokenised once (one user text per user, one item text and one title per item);
a batch's token ids are then concatenated per interaction, never re-tokenised. The pieces are
tokenised with a leading space (" target ...", " Heat") so that the concatenation is exactly
what tokenising the whole sentence gives: for WordPiece (BERT, MiniLM; checked by the tests)
the sentence itself, for byte-level BPE (RoBERTa) the sentence with a leading space.

Truncation to ``max_length`` tokens ([CLS] and [SEP] included) keeps the user and target parts
(cut at the end only if they alone are too long) and then adds history titles, most recent
first, as long as whole titles fit.
"""

import pandas as pd
import torch
from recbole.utils import FeatureType

from recbole_cela.text.items import assemble, item_texts, text_source_settings
from recbole_cela.utils import PluginError


class PromptError(PluginError):
    """Prompt settings that do not match the dataset, with what to do instead."""


def user_texts(dataset, fields, fallback="unknown user"):
    """"age: 24; gender: M; ..." per internal user id (row 0 is padding), from loaded user features.

    ``fields``: user feature fields to write (``None``: every loaded one except the user id).
    Returns ``None`` when the dataset has no user features (the prompt then has no user part).
    """
    feat = dataset.user_feat
    uid = dataset.uid_field
    available = [f for f in (feat.columns if feat is not None else []) if f != uid]
    fields = available if fields is None else list(fields)
    missing = [f for f in fields if f not in available]
    if missing:
        raise PromptError(
            f"flip_user_fields {missing} are not loaded user features (loaded: {available}); "
            "add them to load_col['user'] or drop them from flip_user_fields."
        )
    if not fields:
        return None
    columns = {}
    for f in fields:
        values = feat[f]
        kind = dataset.field2type[f]
        if kind == FeatureType.TOKEN:
            columns[f] = [dataset.field2id_token[f][v] for v in values.tolist()]
        elif kind == FeatureType.TOKEN_SEQ:
            tokens = dataset.field2id_token[f]
            columns[f] = [" ".join(tokens[v] for v in row if v != 0) for row in values.tolist()]
        else:
            columns[f] = [f"{v:g}" if isinstance(v, float) else str(v) for v in values.tolist()]
    frame = pd.DataFrame(columns).astype(str)
    frame = frame.apply(lambda col: col.where(col != "[PAD]", ""))
    return assemble(frame, fields, None, fallback).tolist()


def title_texts(config, dataset, field):
    """The value of item field ``field`` (e.g. movie_title) per internal item id."""
    view = {
        "text_fields": [field], "text_template": "{" + field + "}", "text_fallback": config["text_fallback"],
        "data_path": config["data_path"], "dataset": config["dataset"], "ITEM_ID_FIELD": config["ITEM_ID_FIELD"],
    }
    return item_texts(view, dataset)


class PromptBuilder:
    """Token ids of interaction prompts from pre-tokenised users, items and titles."""

    def __init__(self, tokenizer, item_texts, titles=None, users=None, max_length=100):
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise PromptError(f"The tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] tokens; use a BERT- or RoBERTa-like encoder.")
        if max_length < 8:
            raise PromptError(f"flip_max_prompt_length must be at least 8 tokens, not {max_length}.")

        def tok(texts):
            return tokenizer(list(texts), add_special_tokens=False)["input_ids"]

        self.user_text = list(users) if users is not None else None
        self.item_text = list(item_texts)
        self.title_text = list(titles) if titles is not None else None
        self.user = tok(f" user {t}." for t in users) if users is not None else None
        self.item = tok(f" target {t}." for t in item_texts)
        self.title = tok(f" {t}" for t in titles) if titles is not None else None
        self.history_head, self.sep, self.end = tok([" history:", ";", "."])
        self.cls, self.eos, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.max_length = max_length

    def _parts(self, user, item, history):
        """(head ids, [title indices kept]) after truncation."""
        budget = self.max_length - 2
        head = (self.user[user] if self.user is not None else []) + self.item[item]
        if len(head) >= budget:
            return head[:budget], []
        kept, used = [], len(head) + len(self.history_head) + len(self.end)
        if self.title is not None:
            for h in history:
                cost = len(self.title[h]) + (len(self.sep) if kept else 0)
                if used + cost > budget:
                    break
                kept.append(h)
                used += cost
        return head, kept

    def ids(self, user, item, history):
        """Token ids of one prompt; ``history``: item ids, most recent first (no padding)."""
        head, kept = self._parts(user, item, history)
        ids = [self.cls] + head
        if kept:
            ids += self.history_head
            for n, h in enumerate(kept):
                ids += (self.sep if n else []) + self.title[h]
            ids += self.end
        return ids + [self.eos]

    def sentence(self, user, item, history):
        """The prompt as text (what ``ids`` encodes when no cut falls inside the head)."""
        _, kept = self._parts(user, item, history)
        text = (f"user {self.user_text[user]}. " if self.user is not None else "") + f"target {self.item_text[item]}."
        if kept:
            text += " history: " + "; ".join(self.title_text[h] for h in kept) + "."
        return text

    def padded(self, rows):
        """Token id lists -> padded ``input_ids`` and ``attention_mask`` [B, longest of them]."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, r in enumerate(rows):
            input_ids[n, : len(r)] = torch.tensor(r)
            attention_mask[n, : len(r)] = 1
        return input_ids, attention_mask


class InteractionPrompts:
    """Prompts of RecBole interaction batches (user id, item id, history field)."""

    def __init__(self, builder, user_field, item_field, history_field=None):
        self.builder = builder
        self.user_field, self.item_field, self.history_field = user_field, item_field, history_field

    @staticmethod
    def histories(seq):
        """RecBole's left-aligned, zero-padded, oldest-first histories -> most recent first."""
        return [[v for v in reversed(row) if v != 0] for row in seq.tolist()]

    def _parts(self, interaction):
        users = interaction[self.user_field].tolist()
        items = interaction[self.item_field].tolist()
        if self.history_field and self.history_field in interaction:
            histories = self.histories(interaction[self.history_field])
        else:
            histories = [[] for _ in items]
        return zip(users, items, histories)

    def __call__(self, interaction):
        """Padded ``input_ids`` and ``attention_mask`` of the interaction's prompts, in its order."""
        return self.padded(self.token_rows(interaction))

    def token_rows(self, interaction):
        """The token ids of each interaction's prompt (lists, not padded)."""
        return [self.builder.ids(u, i, h) for u, i, h in self._parts(interaction)]

    def lengths(self, interaction):
        """Each prompt's length in tokens (what bucketing sorts by)."""
        return torch.tensor([len(row) for row in self.token_rows(interaction)])

    def padded(self, rows):
        return self.builder.padded(rows)

    def sentences(self, interaction):
        return [self.builder.sentence(u, i, h) for u, i, h in self._parts(interaction)]


def prompt_settings(config):
    """Every setting that shapes FLIP's prompts (besides the dataset's fields and files)."""
    return {
        **text_source_settings(config),
        "flip_user_fields": config["flip_user_fields"],
        "flip_history_field": config["flip_history_field"],
        "flip_max_prompt_length": config["flip_max_prompt_length"],
    }


def build_prompts(config, dataset, tokenizer):
    """The ``InteractionPrompts`` of a dataset: ``prompt_settings`` over its item file."""
    settings = prompt_settings(config)
    users = user_texts(dataset, settings["flip_user_fields"])
    view = {**settings, "data_path": config["data_path"], "dataset": config["dataset"],
            "ITEM_ID_FIELD": config["ITEM_ID_FIELD"]}
    items = item_texts(view, dataset)
    history_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    history_field = history_field if history_field in dataset.field2type else None
    title_field = settings["flip_history_field"]
    if title_field is None:
        title_field = (settings["text_fields"] or [None])[0]
    titles = None
    if history_field and title_field:
        titles = title_texts(view, dataset, title_field)
    builder = PromptBuilder(tokenizer, items, titles, users, settings["flip_max_prompt_length"])
    return InteractionPrompts(builder, dataset.uid_field, dataset.iid_field, history_field if titles else None)

"""Item texts: assembled from the dataset's item file, tokenised once, encoded in batches.

Everything here is per item (never per interaction): the cost of the text stages grows with the
number of items only.
"""

import os

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction

from recbole_cela.fileio import read_atomic_file
from recbole_cela.text.encoder import resolve_encoder_path
from recbole_cela.utils import PluginError


class ItemTextError(PluginError):
    """Item text settings that do not match the dataset, with what to do instead."""


def _read_item_file(config):
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        raise ItemTextError(
            f"No item file '{path}': CELA reads item texts from the dataset's .item atomic file."
        )
    return read_atomic_file(path), path


def assemble(frame, fields, template, fallback):
    """One text per row: ``template.format(**fields)``, or "name: value; ..." when no template.

    Empty fields are left out of the default form; a row with no text at all gets ``fallback``.
    """
    values = frame[fields].apply(lambda col: col.str.strip())
    if template:
        texts = pd.Series(
            [template.format(**row) for row in values.to_dict("records")], index=frame.index
        )
    else:
        parts = [
            np.where(values[f] != "", f.replace("_", " ") + ": " + values[f], "") for f in fields
        ]
        texts = pd.Series(["; ".join(p for p in row if p) for row in zip(*parts)], index=frame.index)
    texts = texts.str.strip()
    return texts.where(texts != "", fallback)


def text_source_settings(config):
    """The settings that make the items' texts and tokens: the encoder (its tokenizer), the text
    fields, template and fallback. CELA's item texts and FLIP's prompts build on these."""
    return {
        "encoder": resolve_encoder_path(config["text_encoder"]),
        "text_fields": list(config["text_fields"] or []),
        "text_template": config["text_template"],
        "text_fallback": config["text_fallback"] or "unknown item",
    }


def item_text_settings(config):
    """The settings that make the items' token ids: the text's, and the length cap. Every CELA
    text stage builds on these."""
    return {**text_source_settings(config), "max_text_length": config["max_text_length"]}


def item_texts(config, dataset):
    """The text of every item, indexed by RecBole's internal item id (0 is padding)."""
    fields = list(config["text_fields"] or [])
    frame, path = _read_item_file(config)
    missing = [f for f in fields if f not in frame.columns]
    if not fields or missing:
        raise ItemTextError(
            f"text_fields {fields} not usable: {missing or 'none given'} not in '{path}', whose "
            f"columns are {list(frame.columns)}. Set text_fields in the dataset config."
        )
    item_field = config["ITEM_ID_FIELD"]
    fallback = config["text_fallback"] or "unknown item"
    texts = assemble(frame, fields, config["text_template"], fallback)
    token2id = dataset.field2token_id[item_field]
    internal = frame[item_field].map(token2id)
    known = internal.notna().to_numpy()
    result = np.full(dataset.item_num, fallback, dtype=object)
    result[internal[known].astype(int).to_numpy()] = texts[known].to_numpy()
    return result.tolist()


class TokenizedItems:
    """Every item's text tokenised once, kept as a padded id matrix plus lengths; ``n_cut``
    counts the texts longer than ``max_length`` tokens, which keep their first ``max_length``.

    Texts are padded on the right whatever the tokenizer's ``padding_side``: every model then
    numbers a text's positions from 0 (GPT-2 numbers positions by column, so left padding would
    shift them), and pooling finds the last real token from the attention mask.
    """

    def __init__(self, tokenizer, texts, max_length):
        texts = list(texts)
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        # Texts cut at max_length lose their end: counted, so a run reports how many (a text at
        # exactly max_length tokens is whole).
        cut = [i for i, n in enumerate(lengths) if n == max_length]
        if cut:
            whole = tokenizer([texts[i] for i in cut], truncation=False)["input_ids"]
            cut = [i for i, ids in zip(cut, whole) if len(ids) > max_length]
        self.max_length, self.n_cut = max_length, len(cut)
        self.lengths = torch.tensor(lengths)
        self.input_ids = torch.full((len(texts), max(lengths)), tokenizer.pad_token_id)
        for row, ids in enumerate(encoded["input_ids"]):
            self.input_ids[row, : len(ids)] = torch.tensor(ids)

    def __len__(self):
        return len(self.lengths)

    def batch(self, items):
        """Padded to the longest text of the batch, not to max_length."""
        items = torch.as_tensor(items)
        width = int(self.lengths[items].max())
        input_ids = self.input_ids[items, :width]
        attention_mask = (torch.arange(width) < self.lengths[items].unsqueeze(1)).long()
        return Interaction({"item_id": items, "input_ids": input_ids, "attention_mask": attention_mask})


@torch.inference_mode()
def encode_items(encoder, tokenized, pooling, batch_size, device, items=None, rank=0, world_size=1,
                 precision="fp32"):
    """Pooled vectors of ``items`` (default: all), [len(items), hidden], in item order, computed
    under ``precision`` (``"bf16"``: bf16 autocast) and returned in fp32.

    No autograd, no dropout, batches sorted by length (little padding). With ``world_size > 1``
    (called by every process of a distributed run) each process encodes its shard of the batches
    and the shards are gathered: every process returns the whole table, identical to the one a
    single process computes (same batches, so the same padding and the same arithmetic).
    """
    from recbole_cela.data.loaders import ItemTextLoader
    from recbole_cela.distributed import all_gather_object
    from recbole_cela.text.encoder import autocast, encode, text_width

    encoder.eval()
    items = torch.arange(len(tokenized)) if items is None else torch.as_tensor(items)
    loader = ItemTextLoader(tokenized, items, batch_size, shuffle=False, rank=rank, world_size=world_size)
    out = torch.zeros(len(items), text_width(encoder.config))
    position = torch.empty(int(items.max()) + 1, dtype=torch.long)
    position[items] = torch.arange(len(items))
    done, vectors_done = [], []
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, precision):
            vectors = encode(encoder, batch["input_ids"], batch["attention_mask"], pooling)
        done.append(batch["item_id"].cpu())
        vectors_done.append(vectors.float().cpu())
    shards = [(torch.cat(done), torch.cat(vectors_done))] if done else []
    if world_size > 1:
        shards = [s for part in all_gather_object(shards) for s in part]
    for ids, vectors in shards:
        out[position[ids]] = vectors
    return out

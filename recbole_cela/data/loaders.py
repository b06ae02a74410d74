"""Loaders of the plugin's stages, in the shape RecBole's ``Trainer`` iterates (``len``, iteration,
``sampler.set_epoch`` under DDP).

* :class:`ItemTextLoader` - batches of items (their token ids) for CELA's text stages;
* :class:`SampledLoader` - batches of a sample of a RecBole loader's rows, optionally with
  FLIP's prompts (single process: FLIP refuses ``--nproc``, see ``recbole_cela/model/flip.py``).
"""

import torch
from recbole.data.interaction import Interaction


class ItemTextLoader:
    """Batches of items for the text stages, with length bucketing.

    Training order: shuffled (seeded per epoch), then sorted by length inside windows of
    ``bucket`` batches, so batches hold texts of similar length (little padding) while the
    order still changes every epoch. ``shuffle=False`` sorts all items by length (encoding).

    With ``world_size > 1`` (DistributedDataParallel) the batches are those of one process:
    training (``shuffle=True``) splits each batch into ``world_size`` parts and process ``rank``
    takes its part, so one synchronised step covers exactly the items of the single-process step
    and every process has the same number of steps (a part left empty by a tiny last batch
    repeats that batch's first item); evaluation (``shuffle=False``) gives each process every
    ``world_size``-th whole batch, so every item is encoded in exactly the batch (same padding)
    it has in a single process.
    """

    def __init__(self, tokenized, items, batch_size, shuffle, seed=0, bucket=50, rank=0, world_size=1):
        self.tokenized = tokenized
        self.items = torch.as_tensor(items)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    @property
    def sampler(self):
        """RecBole's distributed trainer calls ``train_data.sampler.set_epoch(epoch)``."""
        return self

    @property
    def n_samples(self):
        return len(self.items)

    def _batches(self):
        items, lengths = self.items, self.tokenized.lengths[self.items]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(len(items), generator=generator)
            items, lengths = items[perm], lengths[perm]
            window = self.batch_size * self.bucket
            chunks = []
            for start in range(0, len(items), window):
                order = torch.argsort(lengths[start : start + window], stable=True)
                chunks.append(items[start : start + window][order])
            items = torch.cat(chunks) if chunks else items
            batches = list(torch.split(items, self.batch_size))
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
            if self.world_size > 1:
                parts = [torch.tensor_split(b, self.world_size)[self.rank] for b in batches]
                batches = [p if len(p) else b[:1] for p, b in zip(parts, batches)]
            return batches
        items = items[torch.argsort(lengths, stable=True)]
        batches = list(torch.split(items, self.batch_size))
        return batches[self.rank :: self.world_size]

    def __len__(self):
        n = -(-len(self.items) // self.batch_size)
        return n if self.shuffle else len(range(self.rank, n, self.world_size))

    def __iter__(self):
        for items in self._batches():
            yield self.tokenized.batch(items)
        self.epoch += 1


class SampledLoader:
    """Batches of a RecBole train loader's rows: a fixed pool, optionally resampled per epoch.

    ``pool``: row indices of ``data.dataset``; ``per_epoch``: rows drawn (without replacement,
    seeded by ``seed`` + epoch) from the pool each epoch, ``None`` for the whole pool shuffled.
    With ``prompts`` each batch also carries ``input_ids`` / ``attention_mask``.

    ``lengths`` (a function of a collated batch: each row's prompt length) buckets batches as
    :class:`ItemTextLoader` does: the epoch's rows, in their shuffled order, are sorted by length
    inside windows of ``bucket`` batches, and the batches are then shuffled, so each batch pads
    to little more than its own rows' length while batch order and content still change per epoch.
    """

    def __init__(self, data, pool, batch_size, shuffle=True, seed=0, per_epoch=None, prompts=None,
                 lengths=None, bucket=50):
        self.data, self.pool = data, torch.as_tensor(pool)
        self.dataset = data.dataset
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.per_epoch = None if per_epoch is None or per_epoch >= len(self.pool) else per_epoch
        self.prompts = prompts
        self.lengths, self.bucket = lengths, bucket
        self.epoch = 0

    def __len__(self):
        n = self.per_epoch or len(self.pool)
        return -(-n // self.batch_size)

    @property
    def n_samples(self):
        return len(self.pool)

    def rows(self):
        rows = self.pool
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            rows = rows[torch.randperm(len(rows), generator=generator)]
        return rows[: self.per_epoch] if self.per_epoch else rows

    def _batches(self):
        """Collated batches of this epoch, bucketed by prompt length when ``lengths`` is set."""
        rows = self.rows()
        if self.lengths is None:
            for index in torch.split(rows, self.batch_size):
                yield self.data.collate_fn(index.numpy())
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 7919)
        windows = torch.split(rows, self.batch_size * self.bucket)
        for window in windows:
            collated = self.data.collate_fn(window.numpy())
            order = torch.argsort(self.lengths(collated), stable=True)
            batches = list(torch.split(order, self.batch_size))
            if self.shuffle:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            for index in batches:
                yield collated[index]

    def __iter__(self):
        for batch in self._batches():
            if self.prompts is not None:
                input_ids, attention_mask = self.prompts(batch)
                batch.update(Interaction({"input_ids": input_ids, "attention_mask": attention_mask}))
            yield batch
        self.epoch += 1

"""Evaluation helpers beyond RecBole's evaluator: AUC per item-popularity bucket.

RecBole's evaluator gives the overall AUC / LogLoss. CTR users also want to know *where* a model
gains: on cold items (few training interactions) or hot ones. The popularity of an item is its
number of positive samples in the training split; buckets are set by ``popularity_buckets``
(upper bounds, default ``[5, 20]`` -> cold <= 5, warm 6-20, hot > 20).
"""

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def item_popularity(train_dataset, item_field, label_field):
    """Positive training samples per internal item id (array of length ``item_num``)."""
    inter = train_dataset.inter_feat
    items = inter[item_field].numpy()
    positive = inter[label_field].numpy() > 0
    return np.bincount(items[positive], minlength=train_dataset.item_num)


def bucket_names(bounds):
    names, low = [], 0
    for high in bounds:
        names.append(f"{low}-{high}")
        low = high + 1
    names.append(f">{bounds[-1]}")
    return names


class RecordedPredictions:
    """Records what ``model.predict`` returns while RecBole's ``Trainer.evaluate`` scores a
    labelled loader, so the per-bucket AUCs reuse RecBole's own pass instead of scoring the test
    set a second time (for FLIP, whose encoder reads every test row, that second pass doubled
    the evaluation time)::

        with RecordedPredictions(trainer.model, config) as record:
            test_result = trainer.evaluate(test_data, ...)
        scores, labels, items = record.arrays()
    """

    def __init__(self, model, config):
        self.model, self.config = model, config
        self.scores, self.labels, self.items = [], [], []

    def __enter__(self):
        predict = self.model.predict  # the bound method of the class
        item_field, label_field = self.config["ITEM_ID_FIELD"], self.config["LABEL_FIELD"]

        def recording_predict(interaction):
            scores = predict(interaction)
            self.scores.append(scores.detach().float().cpu())
            self.labels.append(interaction[label_field].float().cpu())
            self.items.append(interaction[item_field].cpu())
            return scores

        self.model.predict = recording_predict  # instance attribute: shadows the method
        return self

    def __exit__(self, *exc):
        del self.model.predict

    def arrays(self):
        if not self.scores:
            raise RuntimeError("no predictions were recorded: was the loader empty?")
        return (torch.cat(self.scores).numpy(), torch.cat(self.labels).numpy(),
                torch.cat(self.items).numpy())


def auc_by_popularity(scores, labels, items, popularity, bounds):
    """AUC and sample count per popularity bucket of the samples' items."""
    pop = popularity[items]
    edges = np.asarray(bounds)
    bucket = np.searchsorted(edges, pop, side="left")  # pop <= bounds[0] -> 0, ...
    result = {}
    for index, name in enumerate(bucket_names(bounds)):
        mask = bucket == index
        n = int(mask.sum())
        both_classes = n > 0 and 0 < labels[mask].sum() < n
        result[name] = {
            "n": n,
            "auc": float(roc_auc_score(labels[mask], scores[mask])) if both_classes else None,
        }
    return result


def overall_auc(scores, labels):
    """AUC over all samples (None when only one class is present)."""
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None

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


@torch.no_grad()
def predict_labeled(model, eval_data, config):
    """Scores, labels and item ids of every sample of a labelled (CTR) eval loader."""
    model.eval()
    item_field, label_field, device = config["ITEM_ID_FIELD"], config["LABEL_FIELD"], config["device"]
    scores, labels, items = [], [], []
    for batch in eval_data:
        interaction = batch[0] if isinstance(batch, tuple) else batch
        interaction = interaction.to(device)
        scores.append(model.predict(interaction).float().cpu())
        labels.append(interaction[label_field].float().cpu())
        items.append(interaction[item_field].cpu())
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), torch.cat(items).numpy()


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

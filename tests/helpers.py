"""Helpers shared by the plugin-model tests (tests/ is on sys.path under pytest's default import mode)."""

from recbole.data import create_dataset, data_preparation

from recbole_cela.data import prepare_from_config
from recbole_cela.quick_start import build_config
from recbole_cela.utils import init_seed


def build_run(model_name, run_config, tiny_encoder, fast, **overrides):
    """(config, model, train, valid, test) of ``model_name`` on the ml-100k slice with the tiny BERT."""
    files, config_dict = run_config(**{"text_encoder": tiny_encoder, **fast, **overrides})
    model_class, config = build_config(model_name, "ml-tiny", files, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    prepare_from_config(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train.dataset)
    return config, model, train, valid, test


def stages_run(trainer):
    """The stages a staged trainer ran (not reused from its cache)."""
    return {stage for stage, info in trainer.stage_report.items() if not info.get("cached")}


def loader_auc(model, loader, label_field="label", max_samples=None):
    """scikit-learn's ROC AUC of ``model.predict`` over every sample of a RecBole loader (or its
    first batches, up to ``max_samples``): an AUC computed apart from RecBole's evaluator and the
    plugin's trainers, to check theirs against."""
    import torch
    from sklearn.metrics import roc_auc_score

    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader:
            interaction = batch[0] if isinstance(batch, tuple) else batch  # eval loaders give tuples
            scores.append(model.predict(interaction).float().cpu())
            labels.append(interaction[label_field].float().cpu())
            if max_samples is not None and sum(map(len, labels)) >= max_samples:
                break
    return float(roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy()))

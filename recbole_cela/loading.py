"""A trained run back in memory: RecBole's ``load_data_and_model`` for every model the runner trains.

``recbole.quick_start.load_data_and_model`` cannot be imported on today's stack (it imports
``ray``) and cannot read the plugin's checkpoints (their config is saved as plain values, see
:mod:`recbole_cela.compat`), so this is its counterpart with the same signature and return
value. The checkpoint's config is rebuilt through the plugin's own :func:`build_config`, its
data fingerprint and field vocabularies are checked against the dataset on disk, and what a
plugin model keeps outside its state dict is rebuilt by the code its trainer uses (FLIP's
prompts). New-item scoring (:mod:`recbole_cela.new_items`) and file scoring
(:mod:`recbole_cela.predict`) load runs through here.
"""

import os
from logging import getLogger

import recbole_cela
from recbole_cela.checkpoints import load_checkpoint, vocabulary_differences
from recbole_cela.fileio import data_fingerprint
from recbole_cela.utils import PluginConfigError, init_seed

# Keys of a saved config that RecBole or the runner computes; everything else is passed back.
COMPUTED_KEYS = frozenset({
    "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec", "local_rank", "device", "world_size",
    "nproc", "ip", "port", "offset", "train_neg_sample_args", "valid_neg_sample_args",
    "test_neg_sample_args", "dataset", "model", "data_path", "config_files",
})


def read_run(model_file):
    """The checkpoint of a run of this plugin's runner (checked: readable, written by this
    version), else :class:`PluginConfigError` saying what to do."""
    checkpoint = load_checkpoint(model_file, "the saved/<MODEL>-<run id>.pth file of a trained run")
    plugin = checkpoint.get("plugin") or {}
    if plugin.get("name") != "recbole_cela" or "data" not in plugin:
        raise PluginConfigError(f"'{model_file}' was not written by recbole_cela's runner (it records no data "
                                "fingerprint): load it with the code that trained it.")
    version = plugin.get("version")
    if version != recbole_cela.__version__:
        raise PluginConfigError(
            f"'{model_file}' was written by recbole_cela {version or 'before 0.1.0 checkpoints were versioned'}, "
            f"this is {recbole_cela.__version__}: retrain the run with this version."
        )
    return checkpoint


def run_config(model_file, checkpoint, config_dict=None):
    """(model class, RecBole ``Config``) of a checkpoint: its saved settings, then ``config_dict``;
    the dataset's files must be those the run was trained on (checked by content)."""
    from recbole_cela.config import build_config

    saved = checkpoint["config"]
    overrides = {k: v for k, v in saved.items() if k not in COMPUTED_KEYS and v is not None}
    # RecBole appends the dataset's name to data_path: the saved value already has it.
    overrides["data_path"] = os.path.dirname(os.path.normpath(saved["data_path"]))
    overrides.update(config_dict or {})
    model_class, config = build_config(saved["model"], saved["dataset"], None, overrides)
    try:
        found = data_fingerprint(config["data_path"], config["dataset"])
    except FileNotFoundError:
        found = None
    if found != checkpoint["plugin"]["data"]:
        state = "missing" if found is None else "changed or rebuilt since"
        raise PluginConfigError(
            f"The files of dataset '{config['dataset']}' in '{config['data_path']}' are not the ones "
            f"'{model_file}' was trained on ({state}): point data_path at the original files "
            "(config_dict={'data_path': ...} or --data_path), or retrain on these."
        )
    return model_class, config


def _load_weights(model, checkpoint, model_file):
    state = dict(checkpoint["state_dict"])
    if getattr(model, "use_text", False) and any(k.startswith("encoder.") for k in state):
        # CELA with finetune_encoder: the saved text table is what the fine-tuned encoder computed
        # for the saved epoch (validation re-encodes it before the checkpoint is written), so the
        # loaded model scores with that table and without the encoder.
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise PluginConfigError(f"'{model_file}' does not fit the model its config builds: {error}") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))


def restore_text(model, config, dataset):
    """What a plugin model reads besides its weights: FLIP's text strategies build each batch's
    prompts from the dataset (as :class:`~recbole_cela.trainer.FLIPTrainer` does); CELA's item
    text table is in its state dict."""
    from recbole_cela.model.flip import FLIP

    if isinstance(model, FLIP) and model.strategy != "id":
        from recbole_cela.text.encoder import load_tokenizer
        from recbole_cela.text.prompts import build_prompts, prompt_settings

        model.set_prompts(build_prompts(config, dataset, load_tokenizer(prompt_settings(config)["encoder"])))


def load_data_and_model(model_file, config_dict=None):
    r"""Load the dataset, its split dataloaders and the trained model of a run, as RecBole's
    ``recbole.quick_start.load_data_and_model`` does, for every model the plugin's runner trains
    (RecBole's context-aware models, DIN, DINUser, CELA, FLIP).

    Args:
        model_file (str): the run's checkpoint, ``saved/<MODEL>-<run id>.pth``.
        config_dict (dict): settings over the saved ones, e.g. ``{"data_path": ...}`` when the
            datasets' folder moved, ``{"gpu_id": ...}`` or ``{"state": "WARNING"}``.

    Returns:
        tuple: (config, model, dataset, train_data, valid_data, test_data) as RecBole's.

    A checkpoint that cannot be used (not a checkpoint, truncated, of another plugin version, its
    dataset's files changed since) raises :class:`~recbole_cela.utils.PluginConfigError` before
    anything is written (RecBole's log file is opened only after the checks).
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger

    from recbole_cela.model import build_model

    checkpoint = read_run(model_file)
    model_class, config = run_config(model_file, checkpoint, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    differences = vocabulary_differences(checkpoint["plugin"].get("vocab") or {}, train_data.dataset)
    if differences:  # same files, other settings (e.g. load_col) given in config_dict
        raise PluginConfigError(f"'{model_file}' does not fit the dataset as loaded here: " + "; ".join(differences)
                                + ". Load it with its own settings.")

    init_seed(config["seed"], config["reproducibility"])
    model = build_model(model_class, config, train_data._dataset).to(config["device"])
    _load_weights(model, checkpoint, model_file)
    restore_text(model, config, train_data._dataset)
    return config, model, dataset, train_data, valid_data, test_data

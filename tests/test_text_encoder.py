"""The text encoder's precision (bf16 autocast where the CPU has it) and LoRA training (peft)."""

import pytest
import torch
from transformers import AutoModel

from recbole_cela.text.encoder import (
    TextEncoderError,
    _has_native_bf16,
    encode,
    load_encoder,
    load_tokenizer,
    make_trainable,
    text_precision,
)
from recbole_cela.text.items import TokenizedItems, encode_items

TEXTS = ["unknown item"] + [f"movie number {i}: a story about {'dogs' if i % 2 else 'space'} and more" for i in range(40)]
LORA = {"trainable_layers": 2, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["query", "value"]}


def test_precision_setting():
    assert text_precision(True, "cpu") == "bf16" and text_precision(False, "cpu") == "fp32"
    assert text_precision("auto", "cpu") == ("bf16" if _has_native_bf16("cpu") else "fp32")
    with pytest.raises(TextEncoderError, match="text_amp must be auto, True or False"):
        text_precision("half", "cpu")


def test_bf16_item_vectors_agree_with_fp32():
    """The real MiniLM (what the stages encode with by default): bf16 autocast and fp32 item
    vectors point the same way."""
    tokenizer = load_tokenizer(None)
    tokenized = TokenizedItems(tokenizer, TEXTS, 64)
    encoder = load_encoder(None)
    fp32 = encode_items(encoder, tokenized, "mean", 16, "cpu", precision="fp32")
    bf16 = encode_items(encoder, tokenized, "mean", 16, "cpu", precision="bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # bf16 really ran
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert cosine.min() > 0.999, cosine.min()


def test_lora_trains_adapters_only_and_saves_a_plain_model(tiny_encoder, tmp_path):
    encoder = load_encoder(tiny_encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    plain = make_trainable(encoder, LORA)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    tokenizer = load_tokenizer(tiny_encoder)
    batch = tokenizer(TEXTS[:8], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = encode(encoder, batch["input_ids"], batch["attention_mask"], "mean").pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        adapted = encode(encoder, batch["input_ids"], batch["attention_mask"], "mean")
    merged = plain()
    merged.save_pretrained(tmp_path / "enc")
    reloaded = AutoModel.from_pretrained(tmp_path / "enc", local_files_only=True).eval()
    assert not any("lora" in k for k in reloaded.state_dict())  # a plain Hugging Face model
    with torch.no_grad():
        again = encode(reloaded, batch["input_ids"], batch["attention_mask"], "mean")
    torch.testing.assert_close(again, adapted, rtol=1e-4, atol=1e-5)
    changed = [k for k, v in reloaded.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed and all("query" in k or "value" in k for k in changed)  # merged into those weights only


def test_lora_with_missing_target_modules_is_refused(tiny_encoder):
    with pytest.raises(TextEncoderError, match="text_lora_target_modules"):
        make_trainable(load_encoder(tiny_encoder), {**LORA, "lora_target_modules": ["no_such_layer"]})


def test_cela_stages_with_lora_save_plain_encoders(run_config, tiny_encoder):
    """Stages 1 and 2 with LoRA: each saved encoder folder is a plain Hugging Face model, and a
    changed LoRA rank re-runs both (it is part of their settings)."""
    from helpers import build_run, stages_run

    from recbole_cela.trainer import CELATrainer

    fast = {"dap": True, "dap_epochs": 1, "align_epochs": 1, "epochs": 1, "align_batch_size": 32,
            "max_text_length": 32, "text_lora_r": 4, "text_lora_alpha": 8}
    config, model, train, valid, _ = build_run("CELA", run_config, tiny_encoder, fast)
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"dap", "backbone", "align", "table", "fusion"}
    for stage in ("dap", "align"):
        folder = trainer.stage_report[stage]["artifact"]
        state = AutoModel.from_pretrained(folder, local_files_only=True).state_dict()
        assert state and not any("lora" in k for k in state)
    config, model, *_ = build_run("CELA", run_config, tiny_encoder, {**fast, "text_lora_r": 2})
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"dap", "align", "table", "fusion"}


def test_texts_cut_at_max_text_length_are_counted(tiny_encoder):
    """A text longer than max_text_length tokens keeps its first ones and is counted; one that
    fits exactly is not. Case and punctuation reach the tokenizer as written."""
    tokenizer = load_tokenizer(tiny_encoder)
    title = "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    n_tokens = len(tokenizer(title)["input_ids"])
    texts = [title, "red ball", title + " " + title]
    tokenized = TokenizedItems(tokenizer, texts, n_tokens)
    assert tokenized.n_cut == 1 and tokenized.max_length == n_tokens
    assert tokenized.lengths.tolist() == [n_tokens, 4, n_tokens]
    assert TokenizedItems(tokenizer, texts, 2 * n_tokens).n_cut == 0
    assert TokenizedItems(tokenizer, texts, 3).n_cut == 3

"""Decoder-only text encoders (OPT, GPT-2): last-token pooling, a padding token for a tokenizer
without one, stage 1 with a causal-LM loss, top blocks and LoRA, every CELA stage, caching and new
items; FLIP's refusal. Tiny random models built from a config, with a byte-level BPE tokenizer
trained here on ml-100k's titles (no pad token, "</s>" as bos and eos, as OPT's)."""

import json
import os

import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from recbole_cela.config import build_config
from recbole_cela.model.dap import DomainAdaptivePretraining
from recbole_cela.new_items import NewItemScorer
from recbole_cela.quick_start import run, run_recbole_cela
from recbole_cela.text.encoder import (
    TextEncoderError,
    encode,
    freeze_below,
    load_encoder,
    load_language_model,
    load_tokenizer,
    make_trainable,
    pool,
)
from recbole_cela.text.items import TokenizedItems, encode_items
from recbole_cela.trainer import CELATrainer
from recbole_cela.utils import PluginConfigError
from conftest import ML_100K
from helpers import build_run, stages_run

TEXTS = ["Toy Story (1995)", "GoldenEye", "movie title: Four Rooms; class: Thriller; release year: 1995",
         "Get Shorty", "Copycat (1995) Crime Drama Thriller"]
FAST = {"dap": True, "dap_epochs": 1, "align_epochs": 1, "epochs": 1, "dap_batch_size": 32, "align_batch_size": 64,
        "max_text_length": 32, "eval_text_batch_size": 128, "text_amp": False}  # fp32: vectors compared exactly


def _bpe_tokenizer():
    """A byte-level BPE tokenizer as OPT's: "</s>" starts every text and is its eos; no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    item = pd.read_csv(ML_100K / "ml-100k.item", sep="\t", dtype=str).fillna("")
    texts = [f"movie title: {t}; class: {c}; release year: {y}" for t, y, c in item.iloc[:400, 1:4].to_numpy()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["</s>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", bpe.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>")


def _save_decoder(folder, kind):
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    tokenizer = _bpe_tokenizer()
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    if kind == "opt":  # output projected to 24 wide, as OPT-350m projects 1024 to 512
        model = OPTForCausalLM(OPTConfig(vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=24, ffn_dim=64,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                                         bos_token_id=eos, eos_token_id=eos, pad_token_id=None))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                           bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A 2-layer OPT with random weights."""
    return _save_decoder(tmp_path_factory.mktemp("tiny-opt"), "opt")


@pytest.fixture(scope="module", params=["opt", "gpt2"])
def any_decoder(request, tmp_path_factory):
    return _save_decoder(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def _alone(model, tokenizer, texts, max_length=64):
    """Each text's last token state, the text run alone (no padding at all)."""
    with torch.no_grad():
        return torch.stack([model(**tokenizer([t], truncation=True, max_length=max_length, return_tensors="pt"))[0][0, -1]
                            for t in texts])


# ------------------------------------------------------------------------------ settings
def test_defaults_follow_the_architecture(run_config, tiny_decoder, tiny_encoder):
    files, overrides = run_config(text_encoder=tiny_decoder)
    _, config = build_config("CELA", "ml-tiny", files, overrides)
    assert config["text_pooling"] == "last" and config["text_lora_target_modules"] == ["q_proj", "v_proj"]
    assert config["text_pad_token"] == "</s>"  # the tokenizer has none: its eos
    files, overrides = run_config(text_encoder=tiny_encoder, text_pad_token="[SEP]")
    _, config = build_config("CELA", "ml-tiny", files, overrides)
    assert config["text_pooling"] == "mean" and config["text_lora_target_modules"] == ["query", "value"]
    assert config["text_pad_token"] is None  # the tokenizer has its own: unused, not recorded
    # Explicit settings win; those a decoder cannot use are refused with what to do.
    files, overrides = run_config(text_encoder=tiny_decoder, text_pooling="mean", text_lora_target_modules=["q_proj"])
    _, config = build_config("CELA", "ml-tiny", files, overrides)
    assert config["text_pooling"] == "mean" and config["text_lora_target_modules"] == ["q_proj"]
    for bad, message in (({"text_pooling": "cls"}, "first token's state has seen only itself.*Use 'last'"),
                         ({"text_pad_token": "<pad>"}, "not in the vocabulary.*eos token '</s>'")):
        files, overrides = run_config(text_encoder=tiny_decoder, **bad)
        with pytest.raises(TextEncoderError, match=message):
            build_config("CELA", "ml-tiny", files, overrides)
    # A pooling no model has is refused by the settings check, before the encoder is read.
    files, overrides = run_config(text_encoder=tiny_decoder, text_pooling="max")
    with pytest.raises(PluginConfigError, match="text_pooling = 'max': expected .*auto \\| mean \\| cls \\| last"):
        build_config("CELA", "ml-tiny", files, overrides)


def test_a_tokenizer_without_pad_token_pads_with_eos_and_saves_it(tiny_decoder, tmp_path):
    assert AutoTokenizer.from_pretrained(tiny_decoder).pad_token is None
    tokenizer = load_tokenizer(tiny_decoder)
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token == "</s>"  # the artifact's own tokenizer pads


# ------------------------------------------------------------------------------ pooling
def test_last_pooling_reads_the_last_real_token(any_decoder):
    """Whatever the padding (none, more of it, on the left), an item's vector is the state of its
    last real token; the pad token is also the bos token here, so padding is read from the mask."""
    tokenizer = load_tokenizer(any_decoder)
    model = load_encoder(any_decoder).eval()
    expected = _alone(model, tokenizer, TEXTS)
    tokenized = TokenizedItems(tokenizer, TEXTS, 64)
    with torch.no_grad():
        right = tokenized.batch(torch.arange(len(TEXTS)))
        got = encode(model, right["input_ids"], right["attention_mask"], "last")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        wider = {k: torch.nn.functional.pad(v, (0, 7), value=tokenizer.pad_token_id if k == "input_ids" else 0)
                 for k, v in (("input_ids", right["input_ids"]), ("attention_mask", right["attention_mask"]))}
        torch.testing.assert_close(encode(model, wider["input_ids"], wider["attention_mask"], "last"), expected,
                                   rtol=1e-5, atol=1e-5)
        mean = encode(model, right["input_ids"], right["attention_mask"], "mean")
        assert not torch.allclose(mean, expected, atol=1e-3)  # 'last' is not some other pooling
    # The item table (batches sorted by length, padded on the right) is made of the same vectors.
    torch.testing.assert_close(encode_items(model, tokenized, "last", 2, "cpu"), expected, rtol=1e-5, atol=1e-5)
    hidden = torch.arange(12.0).view(2, 3, 2)  # left padding: the last column is the last real token
    assert pool(hidden, torch.tensor([[0, 1, 1], [1, 1, 0]]), "last").tolist() == [[4.0, 5.0], [8.0, 9.0]]


def test_left_padding_changes_nothing_for_opt(tiny_decoder):
    """OPT numbers positions from the attention mask: a left-padded batch pools the same vectors."""
    tokenizer = load_tokenizer(tiny_decoder)
    tokenizer.padding_side = "left"
    model = load_encoder(tiny_decoder).eval()
    batch = tokenizer(TEXTS, padding="max_length", max_length=40, return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).all()  # really padded on the left
    with torch.no_grad():
        got = encode(model, batch["input_ids"], batch["attention_mask"], "last")
    torch.testing.assert_close(got, _alone(model, tokenizer, TEXTS), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ stage 1 and training
def test_stage_one_causal_lm_loss_is_the_models_own_and_decreases(any_decoder):
    tokenizer = load_tokenizer(any_decoder)
    encoder = load_language_model(any_decoder)
    with pytest.raises(TextEncoderError, match="is a decoder.*no masked-LM head"):
        load_encoder(any_decoder, masked_lm=True)
    model = DomainAdaptivePretraining(encoder, tokenizer, "last", 0.05, 1.0, 0.15)  # mlm_weight 1: the LM loss drives
    assert model.causal and model.lm_name == "clm_loss"
    batch = TokenizedItems(tokenizer, TEXTS * 4, 64).batch(torch.arange(20))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    model.eval()
    with torch.no_grad():
        labels = ids.masked_fill(mask == 0, -100)  # transformers' own loss, padding ignored
        torch.testing.assert_close(model.clm_loss(ids, mask), encoder(input_ids=ids, attention_mask=mask, labels=labels).loss)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        simcse, clm = model.calculate_loss(batch)
        optimizer.zero_grad()
        (simcse + clm).backward()
        optimizer.step()
        losses.append(float(clm.detach()))
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the stage's diagnostics under text_amp
        align, uniform = model.alignment_uniformity(batch)
    assert align > 0 and uniform < 0


def test_top_blocks_and_lora_train_on_a_decoder(any_decoder, tmp_path):
    kind = AutoModel.from_pretrained(any_decoder).config.model_type
    top = "layers.1." if kind == "opt" else "h.1."
    model = freeze_below(load_language_model(any_decoder), 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(top in n for n in trainable)  # the tied LM head (= embeddings) stays frozen
    files = {"opt": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}[kind]
    encoder = load_language_model(any_decoder)
    plain = make_trainable(encoder, {"trainable_layers": 2, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                     "lora_target_modules": files})
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and any(f in n for f in files) for n in trainable)
    tokenizer = load_tokenizer(any_decoder)
    batch = TokenizedItems(tokenizer, TEXTS, 64).batch(torch.arange(len(TEXTS)))
    dap = DomainAdaptivePretraining(encoder, tokenizer, "last", 0.05, 0.1, 0.15)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        sum(dap.calculate_loss(batch)).backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        adapted = encode(encoder, batch["input_ids"], batch["attention_mask"], "last")
    plain().save_pretrained(tmp_path)
    reloaded = load_encoder(str(tmp_path)).eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        again = encode(reloaded, batch["input_ids"], batch["attention_mask"], "last")
    torch.testing.assert_close(again, adapted, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ CELA end to end
def _stage_info(entry):
    with open(os.path.join(entry["artifact"], "stage.json")) as f:
        return json.load(f)


def test_every_cela_stage_runs_on_a_decoder_reloads_and_scores_new_items(run_config, tiny_decoder):
    files, overrides = run_config(text_encoder=tiny_decoder, **FAST)
    result = run_recbole_cela("CELA", "ml-tiny", files, overrides)
    stages = result["stages"]
    assert {s for s, e in stages.items() if not e["cached"]} == {"dap", "backbone", "align", "table", "fusion"}
    assert 0 <= result["test_result"]["auc"] <= 1
    assert result["config"]["text_pooling"] == "last" and result["config"]["text_pad_token"] == "</s>"
    assert set(stages["dap"]["diagnostics_after"]) == {"clm_loss", "alignment", "uniformity"}
    for name in ("dap", "align", "table"):  # the resolved pooling and the padding choice, with each artifact
        settings = _stage_info(stages[name])["settings"]
        assert settings["pooling"] == "last" and settings["pad_token"] == "</s>", name
    for name in ("dap", "align"):
        assert AutoTokenizer.from_pretrained(stages[name]["artifact"]).pad_token == "</s>"
    table = torch.load(os.path.join(stages["table"]["artifact"], "item_text.pt"))
    assert table.shape[1] == 24  # OPT's projected output width, not its hidden_size

    # A second run reuses every stage before fusion (and the encoder folder its checkpoint records).
    config, model, train, valid, _ = build_run("CELA", run_config, tiny_decoder, FAST)
    trainer = CELATrainer(config, model)
    _, encoder_path = trainer.prepare_text(train, valid)
    assert set(trainer.stage_report) == {"dap", "backbone", "align", "table"} and not stages_run(trainer)
    assert encoder_path == stages["align"]["artifact"]

    # New items are encoded by the aligned decoder with its last token.
    scorer = NewItemScorer.load(result["checkpoint"])
    new = {"n1": "movie title: A Brand New Comedy; class: Comedy; release year: 2001",
           "n2": "movie title: Dark Space Horror; class: Horror Sci-Fi; release year: 1999"}
    ids = scorer.add_items(new)
    scores = scorer.score(["50", "181"], ["n1", "n2"])
    assert ((scores > 0) & (scores < 1)).all() and scores[0] != scores[1]
    rows = scorer.model.backbone.item_text.text_table[ids]
    aligned = load_encoder(stages["align"]["artifact"]).eval()
    expected = _alone(aligned, load_tokenizer(stages["align"]["artifact"]), list(new.values()), FAST["max_text_length"])
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-5)


def test_end_to_end_variant_trains_the_decoders_top_block(run_config, tiny_decoder):
    config, model, train, valid, _ = build_run("CELA", run_config, tiny_decoder, FAST, dap=False, align=False,
                                               finetune_encoder=True, text_trainable_layers=1)
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"table", "fusion"}
    grads = {n: p.grad is not None for n, p in model.named_parameters() if n.startswith("encoder.")}
    assert any(g for n, g in grads.items() if ".layers.1." in n)
    assert not any(g for n, g in grads.items() if ".layers.0." in n or "embed" in n)


def test_flip_refuses_a_decoder_before_any_work(run_config, tiny_decoder):
    files, overrides = run_config(text_encoder=tiny_decoder)
    with pytest.raises(PluginConfigError, match="FLIP needs a masked language model.*decoder \\(opt\\)"):
        run("FLIP", "ml-tiny", files, overrides)
    assert not os.path.exists(overrides["data_path"]) and not os.path.exists(overrides["results_dir"])
    # The ID model alone reads no text: nothing to refuse.
    build_config("FLIP", "ml-tiny", files, {**overrides, "flip_finetune": "id", "flip_pretrain": False})

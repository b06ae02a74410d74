"""CELA's stages, caching, fusion and bad input, on the ml-100k slice with a tiny random BERT."""

import os

import pytest
import torch

from recbole_cela.model.alignment import ItemAlignment, alignment_target, clicker_vectors
from recbole_cela.model.dap import DomainAdaptivePretraining
from recbole_cela.model.fusion import item_id_vectors
from recbole_cela.quick_start import run_recbole_cela
from recbole_cela.text.encoder import TextEncoderError, load_encoder, load_tokenizer
from recbole_cela.data.loaders import ItemTextLoader
from recbole_cela.text.items import ItemTextError, TokenizedItems, encode_items, item_texts
from recbole_cela.trainer import CELATrainer
from helpers import build_run, loader_auc, stages_run

FAST = {"dap": True, "dap_epochs": 2, "align_epochs": 2, "epochs": 1, "dap_batch_size": 16, "align_batch_size": 32,
        "text_trainable_layers": -1, "max_text_length": 32}


def setup(run_config, tiny_encoder, **overrides):
    return build_run("CELA", run_config, tiny_encoder, FAST, **overrides)


def test_item_texts_follow_the_template(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    texts = item_texts(config, train.dataset)
    token = train.dataset.field2token_id["item_id"]["1"]
    assert texts[token] == "movie title: Toy Story; class: Animation Children's Comedy; release year: 1995"
    assert texts[0] == "unknown item"  # padding (and any item without text) gets the fallback
    config["text_template"] = "{movie_title} ({release_year})"
    assert item_texts(config, train.dataset)[token] == "Toy Story (1995)"


def test_dap_loss_decreases_and_saves_identically(run_config, tiny_encoder, tmp_path):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    tokenizer = load_tokenizer(tiny_encoder)
    tokenized = TokenizedItems(tokenizer, item_texts(config, train.dataset)[1:65], 32)
    torch.manual_seed(0)
    model = DomainAdaptivePretraining(load_encoder(tiny_encoder, masked_lm=True), tokenizer, config["text_pooling"],
                                      config["simcse_temperature"], config["mlm_weight"], config["mlm_probability"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tokenized.batch(torch.arange(64))
    losses = []
    for _ in range(15):
        loss = sum(model.calculate_loss(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    model.encoder.save_pretrained(tmp_path)
    again = load_encoder(str(tmp_path), masked_lm=True)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_alignment_retrieves_own_id_vector(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    tokenizer = load_tokenizer(tiny_encoder)
    tokenized = TokenizedItems(tokenizer, item_texts(config, train.dataset), 32)
    items = torch.arange(1, 65)
    torch.manual_seed(0)
    id_table = torch.randn(len(tokenized), 24)
    model = ItemAlignment(load_encoder(tiny_encoder), id_table, config["text_pooling"], config["align_temperature"],
                          config["align_proj_size"])
    loader = ItemTextLoader(tokenized, items, 64, shuffle=False)
    before = model.retrieval(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = tokenized.batch(items)
    for _ in range(60):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = model.retrieval(loader)
    assert after["recall@10"] > 3 * after["chance_recall@10"]
    assert after["mean_rank"] < before["mean_rank"]


def test_alignment_heads_get_their_own_learning_rate(run_config, tiny_encoder, tmp_path):
    from recbole_cela.trainer.alignment_trainer import AlignmentTrainer

    config, _, _, _, _ = setup(run_config, tiny_encoder, align_head_learning_rate=1e-3, text_trainable_layers=1)
    model = ItemAlignment(load_encoder(tiny_encoder), torch.randn(10, 8), "mean", 1.0, 16)
    model.encoder.embeddings.requires_grad_(False)
    trainer = AlignmentTrainer(config, model, AlignmentTrainer.settings(config), str(tmp_path / "align.pth"))
    encoder_group, head_group = trainer.optimizer.param_groups
    assert encoder_group["lr"] == config["align_learning_rate"] and head_group["lr"] == 1e-3
    heads = {id(p) for m in (model.text_head, model.id_head) for p in m.parameters()}
    assert {id(p) for p in head_group["params"]} == heads
    trainable = {id(p) for p in model.encoder.parameters() if p.requires_grad}
    assert {id(p) for p in encoder_group["params"]} == trainable and trainable


def test_item_id_vectors_are_the_backbone_item_fields(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder, backbone="DeepFM", use_text=False)
    from recbole.utils import get_model

    deepfm = get_model("DeepFM")(config, train.dataset)
    vectors = item_id_vectors(deepfm, train.dataset)
    # item fields: item_id, release_year (tokens) and class (token_seq), 16 wide each
    assert vectors.shape == (train.dataset.item_num, 3 * config["embedding_size"])
    din_config, _, din_train, _, _ = setup(run_config, tiny_encoder, use_text=False)  # DIN's own settings
    din = get_model("DIN")(din_config, din_train.dataset)
    assert item_id_vectors(din, din_train.dataset).shape == (din_train.dataset.item_num, 3 * din_config["embedding_size"])


def test_training_projection_is_row_exact_despite_padding():
    from recbole_cela.model.fusion import UNIQUE_BUCKET, ItemTextProjection

    torch.manual_seed(0)
    layer = ItemTextProjection(3000, 12, 4, 2, normalize=False)
    layer.set_table(torch.randn(3000, 12))
    items = torch.randint(0, 3000, (64, 21))  # ~1,100 distinct items: padded to 2 x UNIQUE_BUCKET
    assert UNIQUE_BUCKET < len(torch.unique(items)) < 2 * UNIQUE_BUCKET
    layer.train()
    got = layer(items)
    expected = layer.proj(layer.text_table[items]).view(64, 21, 2, 4)
    assert torch.allclose(got, expected, atol=1e-6)
    layer.eval()
    assert torch.allclose(layer(items), expected, atol=1e-6)


def test_clicker_vectors_average_the_histories_of_positive_samples(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    dataset = train.dataset
    torch.manual_seed(0)
    table = torch.randn(dataset.item_num, 5)
    got = clicker_vectors(table, dataset, chunk=97)  # several chunks, one partial
    inter = dataset.inter_feat
    sums, counts = {}, {}
    for item, label, seq in zip(inter["item_id"].tolist(), inter["label"].tolist(), inter["item_id_list"].tolist()):
        seq = [j for j in seq if j != 0]
        if label > 0 and seq:
            sums[item] = sums.get(item, 0) + table[seq].mean(0)
            counts[item] = counts.get(item, 0) + 1
    expected = torch.zeros_like(table)
    for item in sums:
        expected[item] = sums[item] / counts[item]
    assert counts and torch.allclose(got, expected, atol=1e-5)
    target = alignment_target("item_clickers", table, dataset)
    assert target.shape == (dataset.item_num, 10) and torch.equal(alignment_target("item", table, dataset), table)
    with pytest.raises(ValueError, match="align_target"):
        alignment_target("clickers", table, dataset)


def scores(model, test):
    model.eval()
    return model.predict(next(iter(test))[0]).detach()


def test_end_to_end_caching_and_invalidation(run_config, tiny_encoder, monkeypatch):
    """Every stage runs once; a re-run reuses them all and trains stage 3 exactly as the run that
    computed them (same losses, same predictions: each stage seeds itself); a changed key re-runs
    exactly the stages it affects; an artifact of a killed stage is never trusted."""
    config, model, train, valid, test = setup(run_config, tiny_encoder)
    calls = []
    original = encode_items

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(len(out))
        return out

    monkeypatch.setattr("recbole_cela.trainer.cela_trainer.encode_items", counting)
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=True)
    assert stages_run(trainer) == {"dap", "backbone", "align", "table", "fusion"}
    assert calls == [train.dataset.item_num]  # every item encoded exactly once
    report = trainer.stage_report
    assert report["align"]["diagnostics_after"]["mean_rank"] < report["align"]["diagnostics_before"]["mean_rank"]
    # No gradient reaches the encoder: fusion holds the table as a buffer, not parameters.
    names = [n for n, p in model.named_parameters()]
    assert not any("encoder" in n for n in names)
    assert not model.backbone.item_text.text_table.requires_grad
    result = trainer.evaluate(test, load_best_model=True)
    # The reported AUC is the reloaded best model's (recomputed apart from RecBole's evaluator), and
    # the fused model learned: better than chance on its own training data.
    assert result["auc"] == pytest.approx(loader_auc(trainer.model, test), abs=6e-5)
    # One epoch on the tiny set is a weak learner (0.59 at these seeds); chance stays near 0.5.
    assert loader_auc(trainer.model, train) > 0.55

    # Second run (a resumed one): every stage before fusion is reused, and fusion trains exactly
    # as in the run that computed them.
    config2, model2, *_ = setup(run_config, tiny_encoder)
    trainer2 = CELATrainer(config2, model2)
    trainer2.fit(train, valid, saved=False)
    assert stages_run(trainer2) == {"fusion"}
    assert len(calls) == 1
    assert trainer2.train_loss_dict == trainer.train_loss_dict and len(trainer.train_loss_dict) == config["epochs"]
    assert torch.equal(scores(model2, test), scores(model, test))

    # A changed alignment key re-runs exactly alignment and the table.
    config3, model3, *_ = setup(run_config, tiny_encoder, align_temperature=0.5)
    trainer3 = CELATrainer(config3, model3)
    trainer3.fit(train, valid, saved=False)
    assert stages_run(trainer3) == {"align", "table", "fusion"}

    # An artifact of a killed stage (no stage.json) is never trusted.
    align_dir = trainer3.stage_report["align"]["artifact"]
    os.remove(os.path.join(align_dir, "stage.json"))
    config4, model4, *_ = setup(run_config, tiny_encoder, align_temperature=0.5)
    trainer4 = CELATrainer(config4, model4)
    trainer4.fit(train, valid, saved=False)
    assert stages_run(trainer4) == {"align", "table", "fusion"}
    assert not [d for d in os.listdir(trainer.cache.root) if ".tmp-" in d]


def test_predictions_are_deterministic_under_a_seed(run_config, tiny_encoder):
    scores = []
    for _ in range(2):
        config, model, train, valid, test = setup(run_config, tiny_encoder, dap=False, align=False)
        trainer = CELATrainer(config, model)
        trainer.fit(train, valid, saved=False)
        batch = next(iter(test))[0]
        model.eval()
        scores.append(model.predict(batch.to(config["device"])).detach())
    assert torch.equal(scores[0], scores[1])


@pytest.mark.parametrize("backbone", ["DeepFM", "DCNV2", "AutoInt", "WideDeep", "xDeepFM"])
def test_context_backbones(run_config, tiny_encoder, backbone):
    config, model, train, valid, test = setup(run_config, tiny_encoder, backbone=backbone, dap=False, align=False)
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)
    table = model.backbone.item_text.text_table
    assert table.abs().sum() > 0  # the table is filled
    # The text really enters the prediction: changing it changes the scores.
    batch = next(iter(test))[0]
    model.eval()
    before = model.predict(batch)
    model.set_text_table(torch.randn_like(table))
    assert not torch.allclose(before, model.predict(batch))


def test_text_off_is_the_plain_backbone(run_config, tiny_encoder):
    files, overrides = run_config(text_encoder=tiny_encoder, use_text=False, epochs=1)
    result = run_recbole_cela("CELA", "ml-tiny", files, overrides)
    assert set(result["stages"]) == {"fusion"}
    assert "Text" not in result["config"]["backbone"]


def test_end_to_end_encoder_variant(run_config, tiny_encoder):
    config, model, train, valid, test = setup(run_config, tiny_encoder, dap=False, align=False, finetune_encoder=True,
                                              text_trainable_layers=1)
    trainer = CELATrainer(config, model)
    trainer.fit(train, valid, saved=False)
    grads = {n: p.grad is not None for n, p in model.named_parameters() if n.startswith("encoder.")}
    # The top block trains inside the CTR loss; embeddings and the lower block stay frozen.
    assert any(g for n, g in grads.items() if ".layer.1." in n)
    assert not any(g for n, g in grads.items() if ".layer.0." in n or ".embeddings." in n)
    # The encoder trains at finetune_learning_rate, everything else at RecBole's learning_rate.
    encoder = {id(p) for n, p in model.named_parameters() if n.startswith("encoder.")}
    lrs = {all(id(p) in encoder for p in g["params"]): g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {True: config["finetune_learning_rate"], False: config["learning_rate"]}


def test_bad_encoder_path(run_config, tiny_encoder, tmp_path):
    with pytest.raises(TextEncoderError, match="not a local Hugging Face model folder"):
        setup(run_config, tiny_encoder, text_encoder=str(tmp_path / "missing"))


def test_missing_text_field(run_config, tiny_encoder):
    config, model, train, valid, _ = setup(run_config, tiny_encoder, text_fields=["movie_title", "plot"])
    with pytest.raises(ItemTextError, match="plot.*columns are"):
        CELATrainer(config, model).fit(train, valid, saved=False)


@pytest.mark.slow
def test_real_minilm_on_a_few_dozen_items(run_config):
    config, _, train, _, _ = setup(run_config, None, text_encoder=None)
    tokenizer = load_tokenizer(None)
    texts = item_texts(config, train.dataset)[1:41]
    tokenized = TokenizedItems(tokenizer, texts, 64)
    encoder = load_encoder(None)
    table = encode_items(encoder, tokenized, "mean", 16, "cpu")
    assert table.shape == (40, 384)
    sims = torch.nn.functional.normalize(table, dim=1) @ torch.nn.functional.normalize(table, dim=1).T
    # A pretrained encoder: texts are distinct, and similar for items sharing genres.
    assert sims.diagonal().allclose(torch.ones(40), atol=1e-4) and (sims < 0.999).sum() > 40 * 39 - 5
    model = DomainAdaptivePretraining(load_encoder(None, masked_lm=True), tokenizer, config["text_pooling"],
                                      config["simcse_temperature"], config["mlm_weight"], config["mlm_probability"])
    batch = tokenized.batch(torch.arange(16))
    simcse, mlm = model.calculate_loss(batch)
    assert torch.isfinite(simcse) and torch.isfinite(mlm)

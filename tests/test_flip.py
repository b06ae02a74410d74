"""FLIP: prompts, pretraining objectives, fine-tuning strategies and stage caching, on the ml-100k
slice with a tiny random BERT (the real MiniLM tokenizer)."""

import os

import pytest
import torch

from recbole_cela.model.flip import TabularView, check_backbone
from recbole_cela.model.flip_pretrain import FLIPPretraining
from recbole_cela.quick_start import run_recbole_cela
from recbole_cela.text.encoder import load_encoder, load_tokenizer
from recbole_cela.data.loaders import SampledLoader
from recbole_cela.text.prompts import InteractionPrompts, PromptBuilder, PromptError, build_prompts
from recbole_cela.trainer import FLIPPretrainTrainer, FLIPTrainer
from recbole_cela.utils import PluginConfigError
from helpers import build_run, loader_auc, stages_run

FAST = {"flip_pretrain_samples": 300, "flip_pretrain_batch_size": 32, "flip_pretrain_epochs": 1,
        "flip_finetune_samples": 128, "flip_finetune_batch_size": 32, "flip_text_epochs": 1, "epochs": 1,
        "flip_trainable_layers": -1, "flip_finetune_trainable_layers": -1, "flip_max_prompt_length": 64,
        "mlp_hidden_size": [32, 32]}


def setup(run_config, tiny_encoder, **overrides):
    return build_run("FLIP", run_config, tiny_encoder, FAST, **overrides)


def pretraining(config, train, tiny_encoder, **switches):
    for key in ("flip_mlm", "flip_mtm", "flip_icl"):
        config[key] = switches.get(key, False)
    name = config["flip_backbone"]
    torch.manual_seed(0)
    tabular = TabularView(check_backbone(name)(config, train.dataset), name)
    tokenizer = load_tokenizer(tiny_encoder)
    model = FLIPPretraining(FLIPPretrainTrainer.settings(config), tabular, load_encoder(tiny_encoder, masked_lm=True), tokenizer, train.dataset)
    prompts = build_prompts(config, train.dataset, tokenizer)
    return model, prompts


# ----------------------------------------------------------------------------------- prompts
def test_prompt_is_exact(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder, flip_max_prompt_length=100)
    tokenizer = load_tokenizer(tiny_encoder)
    prompts = build_prompts(config, train.dataset, tokenizer)
    ds = train.dataset
    user = ds.field2token_id["user_id"]["1"]
    toy, heat, casino = (ds.field2token_id["item_id"][t] for t in ("1", "6", "16"))
    # RecBole's history: oldest first, zero padded -> the prompt lists the most recent first.
    history = InteractionPrompts.histories(torch.tensor([[heat, casino, 0, 0]]))[0]
    assert history == [casino, heat]
    sentence = prompts.builder.sentence(user, toy, history)
    titles = [prompts.builder.title_text[i] for i in history]
    assert sentence == (
        "user age: 24; gender: M; occupation: technician. target movie title: Toy Story; "
        "class: Animation Children's Comedy; release year: 1995. history: " + "; ".join(titles) + "."
    )
    ids = prompts.builder.ids(user, toy, history)
    assert ids == tokenizer(sentence)["input_ids"]
    # A real batch: every prompt equals the tokenised sentence (up to the length cap).
    batch = next(iter(SampledLoader(train, torch.arange(16), 16, shuffle=False, prompts=prompts)))
    for row, text in enumerate(prompts.sentences(batch)):
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == tokenizer(text)["input_ids"]
        assert n <= 100


def test_prompt_truncation_keeps_whole_recent_titles(run_config, tiny_encoder):
    tokenizer = load_tokenizer(tiny_encoder)
    items = ["pad", "first film", "second film", "third film"]
    titles = ["", "alpha", "beta gamma", "delta"]
    full = PromptBuilder(tokenizer, items, titles, ["", "age: 7"], max_length=100)
    assert full.sentence(1, 1, [3, 2]) == "user age: 7. target first film. history: delta; beta gamma."
    head = len(tokenizer("user age: 7. target first film.")["input_ids"])
    # Room for "history", ":", "delta" and "." (4 tokens) but not for "; beta gamma" (3 more):
    # only the most recent title, and never a part of one.
    assert len(full.ids(1, 1, [3, 2])) == head + 7
    short = PromptBuilder(tokenizer, items, titles, ["", "age: 7"], max_length=head + 6)
    assert short.sentence(1, 1, [3, 2]) == "user age: 7. target first film. history: delta."
    assert short.ids(1, 1, [3, 2]) == tokenizer("user age: 7. target first film. history: delta.")["input_ids"]
    tiny = PromptBuilder(tokenizer, items, titles, ["", "age: 7"], max_length=8)
    assert len(tiny.ids(1, 1, [3, 2])) == 8  # the head alone is cut to the cap, no history
    with pytest.raises(PromptError, match="at least 8"):
        PromptBuilder(tokenizer, items, titles, None, max_length=4)


def test_unknown_user_field(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder, flip_user_fields=["age", "zip_code"])
    with pytest.raises(PromptError, match="zip_code.*load_col"):
        build_prompts(config, train.dataset, load_tokenizer(tiny_encoder))


# ----------------------------------------------------------------------------------- pretraining
@pytest.mark.parametrize("objective", ["flip_mlm", "flip_mtm", "flip_icl"])
def test_each_objective_loss_decreases(run_config, tiny_encoder, objective):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    model, prompts = pretraining(config, train, tiny_encoder, **{objective: True})
    batch = next(iter(SampledLoader(train, torch.arange(64), 64, shuffle=False, prompts=prompts)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    losses = []
    # The contrast is bounded by its temperature (0.7 on cosines) and needs the most steps.
    for _ in range({"flip_mlm": 25, "flip_mtm": 25, "flip_icl": 40}[objective]):
        (loss,) = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def _fit(model, loader, epochs, lr=5e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(epochs):
        model.train()
        for batch in loader:
            loss = sum(model.calculate_loss(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


class OtherSamplesText:
    """The same batches with each row's prompt replaced by another row's (text view broken)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            for key in ("input_ids", "attention_mask"):
                batch.interaction[key] = torch.roll(batch[key], 1, dims=0)
            yield batch


# Diagnostics run on the training rows with fresh random masks (a short run on a tiny random
# BERT does not generalise to unseen rows yet); the baseline always answers the most frequent value.
def test_masked_tokens_recovered_better_than_majority(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    model, prompts = pretraining(config, train, tiny_encoder, flip_mlm=True)
    loader = SampledLoader(train, torch.arange(128), 64, shuffle=True, prompts=prompts)
    before = model.diagnostics(loader, "cpu")
    _fit(model, loader, 5)
    after = model.diagnostics(loader, "cpu")
    assert after["mlm_accuracy"] > max(before["mlm_accuracy"], after["mlm_majority"]) > 0, (before, after)


def test_masked_fields_recovered_from_the_text(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    model, prompts = pretraining(config, train, tiny_encoder, flip_mtm=True)
    loader = SampledLoader(train, torch.arange(128), 64, shuffle=True, prompts=prompts)
    before = model.diagnostics(loader, "cpu")
    _fit(model, loader, 20)
    torch.manual_seed(1)
    after = model.diagnostics(loader, "cpu")
    torch.manual_seed(1)  # the same field masks, other samples' text
    broken = model.diagnostics(OtherSamplesText(loader), "cpu")
    assert after["mtm_accuracy"] > max(before["mtm_accuracy"], after["mtm_majority"]) + 0.05, (before, after)
    # The text view carries what the masked fields were: without it accuracy falls.
    assert broken["mtm_accuracy"] < after["mtm_accuracy"] - 0.05, (after, broken)


@pytest.mark.parametrize("backbone", ["DCNV2", "DeepFM", "AutoInt", "DIN", "DINUser"])
def test_backbones_views_and_losses(run_config, tiny_encoder, backbone):
    config, model, train, _, test = setup(run_config, tiny_encoder, flip_backbone=backbone, flip_finetune="id")
    batch = next(iter(train))
    model.eval()
    logit, rep = model.tabular(batch)
    assert rep.shape == (len(batch), model.tabular.dim)
    # The hooked forward is RecBole's own: the same probabilities as the backbone's predict.
    assert torch.allclose(torch.sigmoid(logit), model.tabular.backbone.predict(batch), atol=1e-5)
    pre, prompts = pretraining(config, train, tiny_encoder, flip_mlm=True, flip_mtm=True, flip_icl=True)
    prompted = next(iter(SampledLoader(train, torch.arange(16), 16, shuffle=False, prompts=prompts)))
    losses = pre.calculate_loss(prompted)
    assert len(losses) == 3 and all(torch.isfinite(x) and x > 0 for x in losses)
    sum(losses).backward()
    assert any(p.grad is not None for p in pre.tabular.backbone.parameters())


def test_no_objective_is_an_error(run_config, tiny_encoder):
    config, _, train, _, _ = setup(run_config, tiny_encoder)
    with pytest.raises(ValueError, match="at least one of flip_mlm"):
        pretraining(config, train, tiny_encoder)


# ----------------------------------------------------------------------------------- fine-tuning
def test_strategies_run_and_differ(run_config, tiny_encoder):
    scores = {}
    for strategy in ("id", "text", "joint"):
        config, model, train, valid, test = setup(run_config, tiny_encoder, flip_finetune=strategy)
        trainer = FLIPTrainer(config, model)
        trainer.fit(train, valid, saved=False)
        result = trainer.evaluate(test, load_best_model=False)
        # The reported AUC is the model's (recomputed apart from RecBole's evaluator). With an ID
        # tower the model learned: better than chance on training data (1,024 samples: the text
        # tower reads a prompt per sample; text alone, one epoch of 128 samples through a random
        # tiny BERT, stays at chance).
        assert result["auc"] == pytest.approx(loader_auc(model, test), abs=6e-5)
        if strategy != "text":
            assert loader_auc(model, train, max_samples=1024) > 0.6
        batch = next(iter(test))[0]
        model.eval()
        scores[strategy] = model.predict(batch)
        assert torch.isfinite(scores[strategy]).all() and ((scores[strategy] > 0) & (scores[strategy] < 1)).all()
        has_encoder = any(n.startswith("encoder.") for n, _ in model.named_parameters())
        assert has_encoder == (strategy != "id")
        if strategy != "id":  # the encoder was trained by the CTR loss
            assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("encoder."))
        if strategy == "joint":
            assert model.mix.grad is not None
            assert set(trainer.stage_report) == {"pretrain", "id_warmup", "finetune"}
            # The frozen backbone is exactly the warmed-up one, batch-norm statistics included.
            warm = torch.load(trainer.stage_report["id_warmup"]["artifact"] + "/model.pth")["state_dict"]
            for key, value in model.tabular.backbone.state_dict().items():
                assert torch.equal(value.cpu(), warm[key]), key
    assert not torch.allclose(scores["id"], scores["text"])
    assert not torch.allclose(scores["id"], scores["joint"])
    assert not torch.allclose(scores["text"], scores["joint"])


def test_text_really_enters_the_joint_prediction(run_config, tiny_encoder):
    config, model, train, valid, test = setup(run_config, tiny_encoder, flip_finetune="joint", flip_pretrain=False,
                                              flip_id_warmup=False, flip_freeze_backbone=False)
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    batch = next(iter(test))[0]
    model.eval()
    before = model.predict(batch)
    other = dict(batch.interaction)
    other["item_id_list"] = torch.zeros_like(other["item_id_list"])  # no history: shorter prompts
    from recbole.data.interaction import Interaction

    # The ID backbone reads the history field too, so compare the text logits directly.
    assert not torch.allclose(model.text_logit(batch), model.text_logit(Interaction(other)))
    assert torch.allclose(before, model.predict(batch))


def test_text_strategies_can_skip_validation(run_config, tiny_encoder):
    results = {}
    for step in (1, 0):
        config, model, train, valid, _ = setup(run_config, tiny_encoder, flip_finetune="text", flip_pretrain=False,
                                               flip_text_epochs=2, flip_text_eval_step=step)
        trainer = FLIPTrainer(config, model)
        results[step] = trainer.fit(train, valid, saved=False)
        assert len(trainer.train_loss_dict) == 2
    assert set(results[1][1]) >= {"auc"}  # validated: a best valid result
    assert results[0][1] is None  # no validation pass: the last epoch is what gets tested


# ----------------------------------------------------------------------------------- caching
def test_stage_caching_and_invalidation(run_config, tiny_encoder):
    files, overrides = run_config(text_encoder=tiny_encoder, **FAST)
    result = run_recbole_cela("FLIP", "ml-tiny", files, overrides)
    stages = result["stages"]
    assert set(stages) == {"pretrain", "id_warmup", "finetune"}
    assert not any(s["cached"] for s in stages.values())
    assert stages["pretrain"]["time_s"] > 0 and "diagnostics_after" in stages["pretrain"]
    # The checkpoint the result names holds the tested model: reloaded, it gives the reported AUC.
    config, reloaded, train, _, test = setup(run_config, tiny_encoder)
    reloaded.load_state_dict(torch.load(result["checkpoint"], weights_only=True)["state_dict"])
    reloaded.set_prompts(build_prompts(config, train.dataset, load_tokenizer(tiny_encoder)))
    assert result["test_result"]["auc"] == pytest.approx(loader_auc(reloaded, test), abs=6e-5)

    # Second run (a resumed one): pretraining and the ID warm-up are reused, and fine-tuning
    # ends in exactly the weights of the run that computed them (its one epoch is its checkpoint).
    config, model, train, valid, _ = setup(run_config, tiny_encoder)
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"finetune"}
    assert trainer.stage_report["pretrain"]["artifact"] == stages["pretrain"]["artifact"]
    computed = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    assert computed.keys() == model.state_dict().keys()
    assert all(torch.equal(computed[k], v) for k, v in model.state_dict().items())

    # A changed pretraining key re-runs pretraining and everything built on it.
    config, model, train, valid, _ = setup(run_config, tiny_encoder, flip_icl_temperature=0.5)
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"pretrain", "id_warmup", "finetune"}

    # A fine-tuning-only key changes nothing upstream.
    config, model, train, valid, _ = setup(run_config, tiny_encoder, flip_finetune="text")
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"finetune"}


def test_id_strategy_is_the_joint_runs_id_model_and_seeds_share_the_pretraining(run_config, tiny_encoder):
    files, overrides = run_config(text_encoder=tiny_encoder, **FAST)
    idonly = run_recbole_cela("FLIP", "ml-tiny", files, {**overrides, "flip_finetune": "id"})
    # The id strategy is stage id_warmup: its checkpoint holds that stage's backbone and its valid
    # result is that stage's.
    warm_path = idonly["stages"]["id_warmup"]["artifact"]
    warm = torch.load(os.path.join(warm_path, "model.pth"), weights_only=True)
    tested = torch.load(idonly["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(tested[f"tabular.backbone.{k}"], v) for k, v in warm["state_dict"].items())
    assert idonly["best_valid_result"]["auc"] == pytest.approx(warm["valid"]["auc"])
    # The joint run of the same seed starts from exactly that model (reused, not trained again).
    config, model, train, valid, _ = setup(run_config, tiny_encoder)
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"finetune"} and trainer.stage_report["id_warmup"]["artifact"] == warm_path
    # Another seed: its own ID model, the same pretraining (flip_pretrain_seed); ~ ties it to the seed.
    config, model, train, valid, _ = setup(run_config, tiny_encoder, seed=7, flip_finetune="id")
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"id_warmup", "finetune"}  # finetune: loading that stage's model
    config, model, train, valid, _ = setup(run_config, tiny_encoder, seed=7, flip_finetune="id", flip_pretrain_seed=None)
    trainer = FLIPTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert stages_run(trainer) == {"pretrain", "id_warmup", "finetune"}


def test_scoring_buckets_prompts_by_length_and_keeps_the_order(run_config, tiny_encoder):
    config, model, train, _, test = setup(run_config, tiny_encoder, flip_finetune="text", flip_text_batch_size=4,
                                          text_amp=False)  # fp32: padding changes nothing but rounding
    prompts = build_prompts(config, train.dataset, load_tokenizer(tiny_encoder))
    model.set_prompts(prompts)
    torch.nn.init.normal_(model.text_head[-1].weight)  # the text logit starts at 0: give it a value
    model.eval()
    batch = next(iter(test))[0]
    lengths = prompts.lengths(batch)
    assert lengths.tolist() == [len(r) for r in prompts.token_rows(batch)] and len(set(lengths.tolist())) > 1
    bucketed = model.text_logit(batch)
    # Each prompt alone (no padding at all) gives its own logit, in the batch's order.
    alone = torch.cat([model.text_logit(batch[[n]]) for n in range(len(batch))])
    assert torch.allclose(bucketed, alone, atol=1e-4)
    # Training batches of similar length: less padding than the same rows in random batches.
    loader = SampledLoader(train, torch.arange(256), 16, shuffle=True, seed=1, prompts=prompts, lengths=prompts.lengths)
    plain = SampledLoader(train, torch.arange(256), 16, shuffle=True, seed=1, prompts=prompts)
    assert sum(len(b) for b in loader) == 256
    padding = [sum(int((b["attention_mask"] == 0).sum()) for b in x) for x in (loader, plain)]
    assert padding[0] < padding[1] / 2
    rows = sorted(int(r) for b in loader for r in b["input_ids"][:, 1])  # the same rows (their first tokens)
    assert rows == sorted(int(r) for b in plain for r in b["input_ids"][:, 1])


def test_bad_settings(run_config, tiny_encoder):
    # Refused while the config is built, naming the key, the value and the allowed values.
    with pytest.raises(PluginConfigError, match="flip_backbone = 'DIEN': expected one of .*: DCNV2, DeepFM, AutoInt, DIN, DINUser"):
        setup(run_config, tiny_encoder, flip_backbone="DIEN")
    with pytest.raises(PluginConfigError, match=r"flip_finetune = 'both': expected \(str: joint \| id \| text\)"):
        setup(run_config, tiny_encoder, flip_finetune="both")
    config, model, train, valid, _ = setup(run_config, tiny_encoder, flip_id_warmup=False)
    with pytest.raises(ValueError, match="enable flip_id_warmup"):
        FLIPTrainer(config, model).fit(train, valid, saved=False)

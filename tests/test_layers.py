"""The plugin's faster layers (recbole_cela/model/layers.py) compute what RecBole's compute: the
same scores and the same gradients, on real batches, for every kind of model they are put into."""

import copy
import shutil
from pathlib import Path

import pytest
import torch
from helpers import build_run

from recbole.model.abstract_recommender import ContextRecommender
from recbole.model.layers import FMFirstOrderLinear

from recbole_cela.model.layers import (
    PerItemSeqEmbLayer,
    ValidSlotAttLayer,
    embed_token_seq_fields_bag,
    first_order_token_seq_bag,
    install_fast_layers,
    mostly_padding,
    uses_fast_layers,
)

AMAZON_SPORTS = Path(__file__).parents[2] / "shared/data/amazon-sports"


def _first_batch(loader):
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, tuple) else batch


def assert_same_model(stock, batch):
    """A copy of ``stock`` with the fast layers gives ``stock``'s scores, loss and gradients."""
    fast = install_fast_layers(copy.deepcopy(stock))
    assert uses_fast_layers(fast) and not uses_fast_layers(stock)
    for model in (stock, fast):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast.predict(batch), stock.predict(batch), rtol=1e-5, atol=1e-6)
    losses = []
    for model in (stock, fast):
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks in both
        loss = model.calculate_loss(batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    grads = [p.grad for p in stock.parameters() if p.grad is not None]
    scale = max(g.abs().max().item() for g in grads)
    assert scale > 0
    for (name, a), b in zip(stock.named_parameters(), fast.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            # Relative to the largest gradient: a bias before BatchNorm has a gradient of ~0 in both,
            # whose float noise is no difference.
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    return fast


@pytest.mark.parametrize("model_name", ["DIN", "DINUser", "DeepFM", "FM", "DCNV2", "WideDeep"])
def test_fast_layers_match_recbole_on_ml_100k(model_name, run_config, tiny_encoder):
    """ml-100k's items have a genre list (token_seq of 1-6 genres) and a year; the histories have
    every length from 0 up."""
    config, stock, train, _, test = build_run(model_name, run_config, tiny_encoder, {}, fast_layers=False)
    batch = _first_batch(train)
    if "item_length" in batch.interaction:
        lengths = batch["item_length"]
        assert lengths.min() < lengths.max() < config["MAX_ITEM_LIST_LENGTH"] or lengths.max() > 0
    fast = assert_same_model(stock, batch)
    if model_name.startswith("DIN"):
        assert isinstance(fast.embedding_layer, PerItemSeqEmbLayer)
        assert isinstance(fast.attention, ValidSlotAttLayer)
    assert_same_model(stock, _first_batch(test))


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_embedding_bag_pooling_matches_recbole_on_a_padded_field(mode, run_config, tiny_encoder):
    """The embedding_bag pooling itself, on ml-100k's genre lists (mostly padding, some rows empty
    of the field's tokens after the slice): RecBole's pooled vectors and gradients."""
    _, model, train, _, _ = build_run("DeepFM", run_config, tiny_encoder, {}, fast_layers=False)
    batch = _first_batch(train)
    fields = [batch[name] for name in model.token_seq_field_names]
    genres = batch["class"]
    assert mostly_padding([genres]) and (genres != 0).any(dim=1).all()
    index = model.token_seq_field_names.index("class")
    for pool, recbole, owner, args in (
        (embed_token_seq_fields_bag, ContextRecommender.embed_token_seq_fields, model, (mode,)),
        (first_order_token_seq_bag, FMFirstOrderLinear.embed_token_seq_fields, model.first_order_linear, ()),
    ):
        if pool is first_order_token_seq_bag and mode == "mean":
            continue  # the first-order term always sums
        outs, grads = [], []
        for fn in (pool, recbole):
            owner.zero_grad()
            out = fn(owner, [f if i == index else torch.zeros_like(f) for i, f in enumerate(fields)], *args)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            outs.append(out.detach())
            grads.append(owner.token_seq_embedding_table[index].weight.grad.clone())
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_fast_layers_match_recbole_inside_cela(run_config, tiny_encoder):
    """CELA's fused DIN: the text fields are appended to the per-item embeddings."""
    _, stock, train, _, _ = build_run("CELA", run_config, tiny_encoder, {}, fast_layers=False)
    torch.manual_seed(1)
    stock.set_text_table(torch.randn(train.dataset.item_num, stock.text_dim))
    assert_same_model(stock, _first_batch(train))


def test_the_runner_builds_with_fast_layers_unless_told_not_to(run_config, tiny_encoder):
    from recbole_cela.quick_start import run_recbole_cela

    files, config_dict = run_config(epochs=1, threads=1)
    fast = run_recbole_cela("DIN", "ml-tiny", files, config_dict, saved=False)
    stock = run_recbole_cela("DIN", "ml-tiny", files, {**config_dict, "fast_layers": False}, saved=False)
    assert fast["fast_layers"] and not stock["fast_layers"]
    assert fast["threads"] == stock["threads"] == 1 == torch.get_num_threads()
    # One epoch from the same seed: the same model up to float summation order.
    assert fast["test_result"]["auc"] == pytest.approx(stock["test_result"]["auc"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not AMAZON_SPORTS.is_dir(), reason=f"real data not present: {AMAZON_SPORTS}")
def test_fast_layers_match_recbole_on_amazon_sports_attributes(tmp_path):
    """amazon-sports' items carry 1-37 brand/category tokens: RecBole pads every history slot's to 37."""
    from recbole.data import create_dataset, data_preparation

    from recbole_cela.config import build_config
    from recbole_cela.data import prepare_from_config
    from recbole_cela.utils import init_seed

    source = tmp_path / "source"
    source.mkdir()
    lines = (AMAZON_SPORTS / "user_sequence.txt").read_text().splitlines()[:1500]
    (source / "user_sequence.txt").write_text("\n".join(lines) + "\n")
    for name in ("item_text.tsv", "item_attributes.tsv"):
        shutil.copy(AMAZON_SPORTS / name, source / name)
    for model_name in ("DIN", "DINUser", "DCNV2"):
        _, config = build_config(model_name, "amazon-sports", None, {
            "source_path": str(source), "data_path": str(tmp_path / "dataset"), "state": "ERROR",
            "show_progress": False, "fast_layers": False, "train_batch_size": 512})
        init_seed(config["seed"], config["reproducibility"])
        prepare_from_config(config)
        train, _, _ = data_preparation(config, create_dataset(config))
        from recbole_cela.model import build_model, get_model

        stock = build_model(get_model(model_name), config, train.dataset)
        batch = _first_batch(train)
        assert batch["attributes"].shape[1] > 8  # padded to the longest item's token list
        assert_same_model(stock, batch)

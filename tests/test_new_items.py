"""New items from text alone on a trained CELA run (ml-100k slice, tiny random BERT)."""

import hashlib
import os
import re

import pytest
import torch

from recbole_cela.new_items import NewItemError, NewItemScorer, main, read_items_file
from recbole_cela.quick_start import run_recbole_cela

FAST = {"dap": False, "align": False, "epochs": 1, "max_text_length": 32, "eval_text_batch_size": 64}
NEW = {"n1": "movie title: A Brand New Comedy; class: Comedy; release year: 2001",
       "n2": "movie title: Dark Space Horror; class: Horror Sci-Fi; release year: 1999"}


@pytest.fixture(scope="module", params=["DIN", "DeepFM"])
def trained(request, ml_slice, tiny_encoder, tmp_path_factory):
    from pathlib import Path

    root = tmp_path_factory.mktemp(f"new-items-{request.param}")
    config = {"source_path": str(ml_slice), "data_path": str(root / "dataset"), "checkpoint_dir": str(root / "saved"),
              "results_dir": str(root / "results"), "show_progress": False, "train_batch_size": 256,
              "state": "WARNING", "text_encoder": tiny_encoder, "backbone": request.param, **FAST}
    files = [str(Path(__file__).parents[1] / "dataset_configs" / "ml-100k.yaml")]
    run_recbole_cela("CELA", "ml-tiny", files, config)
    saved = root / "saved"
    checkpoint = next(str(saved / f) for f in os.listdir(saved) if f.endswith(".pth"))
    return checkpoint, files, config


def snapshot(folder):
    """Every file under ``folder`` with its size, mtime and content hash."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[path] = (os.path.getsize(path), os.path.getmtime(path), hashlib.sha1(f.read()).hexdigest())
    return out


def test_known_pairs_score_as_in_the_test_loader(trained):
    """The scorer builds the same model input as RecBole's loader: same scores for test rows."""
    from recbole.data import create_dataset, data_preparation

    from recbole_cela.quick_start import build_config

    checkpoint, files, config = trained
    scorer = NewItemScorer.load(checkpoint)
    _, cfg = build_config("CELA", "ml-tiny", files, config)
    test = data_preparation(cfg, create_dataset(cfg))[2]
    batch = next(iter(test))[0][:20]
    expected = scorer.model.predict(batch)
    ids = {v: k for k, v in scorer.item_ids.items()}
    users = {v: k for k, v in scorer.user_ids.items()}
    pairs = []
    for row in range(len(batch)):
        history = [ids[int(i)] for i in batch["item_id_list"][row] if int(i) != 0]
        pairs.append((users[int(batch["user_id"][row])], history, ids[int(batch["item_id"][row])]))
    torch.testing.assert_close(torch.as_tensor(scorer.score_pairs(pairs)), expected, rtol=0, atol=1e-6)
    # Adding items leaves the scores of known items unchanged.
    scorer.add_items(NEW)
    torch.testing.assert_close(torch.as_tensor(scorer.score_pairs(pairs)), expected, rtol=0, atol=1e-6)


def test_new_items_are_scored_from_their_text(trained):
    checkpoint, _, _ = trained
    scorer = NewItemScorer.load(checkpoint, dataset="ml-tiny")
    ids = scorer.add_items(NEW)
    assert ids == [scorer.dataset.item_num, scorer.dataset.item_num + 1]
    history = ["50", "181", "172"]
    scores = scorer.score(history, ["n1", "n2", "50"])
    assert ((scores > 0) & (scores < 1)).all()
    assert scores[0] != scores[1]  # same default ID embedding: only the text differs
    ranked = scorer.rank(history, ["n1", "n2", "50"], k=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    # The text row of a new item is what the aligned encoder gives for its text.
    table = scorer.model.backbone.item_text.text_table
    assert table.shape[0] == scorer.dataset.item_num + 2
    # A new item may appear in a history too.
    assert scorer.score(["n1"], ["n2"]).shape == (1,)


def test_bad_input_is_refused_and_saved_is_untouched(trained, tmp_path):
    checkpoint, _, config = trained
    saved = config["checkpoint_dir"]
    before = snapshot(saved)
    scorer = NewItemScorer.load(checkpoint)
    with pytest.raises(NewItemError, match="empty text"):
        scorer.add_items({"n3": "   "})
    with pytest.raises(NewItemError, match="already exists.*dataset"):
        scorer.add_items({"50": "some text"})
    scorer.add_items({"n4": "a film"})
    with pytest.raises(NewItemError, match="already exists.*added earlier"):
        scorer.add_items({"n4": "again"})
    with pytest.raises(NewItemError, match="Unknown item"):
        scorer.score(["50"], ["nope"])
    with pytest.raises(NewItemError, match="run on dataset 'ml-tiny', not 'ml-100k'"):
        NewItemScorer.load(checkpoint, dataset="ml-100k")
    # A checkpoint of another version, or of another model: copies outside saved/.
    state = torch.load(checkpoint, weights_only=True)
    state["plugin"]["version"] = "0.0.1"
    torch.save(state, tmp_path / "old.pth")
    with pytest.raises(NewItemError, match="written by recbole_cela 0.0.1"):
        NewItemScorer.load(str(tmp_path / "old.pth"))
    state["plugin"]["version"], state["config"]["model"] = __import__("recbole_cela").__version__, "DIN"
    torch.save(state, tmp_path / "din.pth")
    with pytest.raises(NewItemError, match="is a DIN run"):
        NewItemScorer.load(str(tmp_path / "din.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(NewItemError, match="not a checkpoint"):
        NewItemScorer.load(str(tmp_path / "junk.pth"))
    # Data that is not what the run was trained on (another folder).
    with pytest.raises(NewItemError, match="not the ones"):
        NewItemScorer.load(checkpoint, config_dict={"data_path": str(tmp_path)})
    assert snapshot(saved) == before


def test_cli(trained, tmp_path, capsys):
    checkpoint, _, config = trained
    before = snapshot(config["checkpoint_dir"])
    items = tmp_path / "new.tsv"
    items.write_text("item_id\ttext\n" + "".join(f"{k}\t{v}\n" for k, v in NEW.items()))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("1\t50 181\tn1\n\t\tn2\n2\t172\t50\n")
    out = tmp_path / "scores.tsv"
    main([f"--checkpoint={checkpoint}", f"--items={items}", f"--pairs={pairs}", f"--output={out}"])
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [r[2] for r in rows] == ["n1", "n2", "50"] and all(0 < float(r[3]) < 1 for r in rows)
    main([f"--checkpoint={checkpoint}", f"--items={items}", "--history=50 181", "--k=1"])
    assert capsys.readouterr().out.split("\t")[0] in NEW
    # The dataset's own .item format works too.
    atomic = tmp_path / "new.item"
    atomic.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                      "n9\tAnother Film\t1998\tDrama\n")
    main([f"--checkpoint={checkpoint}", f"--items={atomic}", "--history=50", "--k=1"])
    assert capsys.readouterr().out.startswith("n9\t")
    bad = tmp_path / "bad.tsv"
    bad.write_text("n5\t\n")
    with pytest.raises(SystemExit, match="empty text"):
        main([f"--checkpoint={checkpoint}", f"--items={bad}", "--history=50"])
    latin1 = tmp_path / "latin1.tsv"  # saved by an editor in Latin-1
    latin1.write_bytes("n6\tCafé society\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin1\.tsv:1: not UTF-8 text \(byte 0xe9 at character 7\)"):
        main([f"--checkpoint={checkpoint}", f"--items={latin1}", "--history=50"])
    assert snapshot(config["checkpoint_dir"]) == before


def test_non_utf8_files_are_refused_with_file_and_line_before_loading(tmp_path):
    """Items and pairs files that are not UTF-8 stop the command with their file and line (not a
    byte offset), before the run is loaded: the checkpoint named here does not exist."""
    items = tmp_path / "new.tsv"
    items.write_bytes(b"item_id\ttext\nn1\tA film\nn2\tCaf\xe9 story\n")
    good_items = tmp_path / "good.tsv"
    good_items.write_text("n1\tA film\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes(b"1\t50\tn1\n2\t5\xe90\tn1\n")
    missing = str(tmp_path / "no-run.pth")
    with pytest.raises(SystemExit, match=r"new\.tsv:3: not UTF-8 text \(byte 0xe9 at character 7\)"):
        main([f"--checkpoint={missing}", f"--items={items}", "--history=50"])
    with pytest.raises(SystemExit, match=r"pairs\.tsv:2: not UTF-8 text \(byte 0xe9 at character 4\)"):
        main([f"--checkpoint={missing}", f"--items={good_items}", f"--pairs={pairs}"])
    with pytest.raises(SystemExit, match=r"No pairs file"):
        main([f"--checkpoint={missing}", f"--items={good_items}", f"--pairs={tmp_path / 'none.tsv'}"])
    # An output that cannot be written is refused before anything is read or scored.
    (tmp_path / "taken").write_text("a file\n")
    with pytest.raises(SystemExit, match=r"--output '.*taken/scores.tsv' cannot be written: its folder '.*taken': "
                                         r"it exists and is not a folder"):
        main([f"--checkpoint={missing}", f"--items={items}", "--history=50",
              f"--output={tmp_path / 'taken' / 'scores.tsv'}"])
    with pytest.raises(SystemExit, match=r"--output '.*' is a folder: name a file"):
        main([f"--checkpoint={missing}", f"--items={items}", "--history=50", f"--output={tmp_path}"])
    # Valid files get as far as the checkpoint.
    with pytest.raises(SystemExit, match="no-run.pth"):
        main([f"--checkpoint={missing}", f"--items={good_items}", "--history=50"])
    # The dataset's .item format too: its header is read as text first.
    atomic = tmp_path / "new.item"
    atomic.write_bytes(b"item_id:token\tmovie_title:token_seq\nn9\tAm\xe9lie\n")
    with pytest.raises(NewItemError, match=r"new\.item:2: not UTF-8 text"):
        read_items_file(str(atomic), {"ITEM_ID_FIELD": "item_id", "text_fields": ["movie_title"],
                                      "text_template": None})


def test_unknown_users_are_counted_and_warned_about_or_refused(trained, tmp_path, capsys):
    """Pairs naming users the dataset does not have are scored as an unknown user, counted and
    warned about; --unknown_users=error refuses them; an unknown item or an empty text stops the
    command naming its file and line."""
    checkpoint, _, _ = trained
    items = tmp_path / "new.tsv"
    items.write_text("".join(f"{k}\t{v}\n" for k, v in NEW.items()))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("1\t50 181\tn1\n99999\t50\tn2\nnobody\t\t50\n99999\t172\tn1\n")
    out = tmp_path / "scores.tsv"
    main([f"--checkpoint={checkpoint}", f"--items={items}", f"--pairs={pairs}", f"--output={out}"])
    assert len(out.read_text().splitlines()) == 4  # every pair scored
    warning = capsys.readouterr().err
    assert re.search(r"warning: 3 of 4 pairs name 2 users dataset 'ml-tiny' does not have \('99999', 'nobody'; "
                     r"first at .*pairs\.tsv:2\): scored as an unknown user", warning), warning
    scorer = NewItemScorer.load(checkpoint)
    assert scorer.unknown_users(["1", "99999", None, "nobody", "99999"]) == ["99999", "nobody"]
    with pytest.raises(SystemExit, match=r"pairs\.tsv:2: unknown user '99999' \(3 pairs name 2 users"):
        main([f"--checkpoint={checkpoint}", f"--items={items}", f"--pairs={pairs}", "--unknown_users=error"])
    with pytest.raises(SystemExit, match=r"--user 'nobody': dataset 'ml-tiny' does not have this user"):
        main([f"--checkpoint={checkpoint}", f"--items={items}", "--history=50", "--user=nobody",
              "--unknown_users=error"])
    pairs.write_text("1\t50\tn1\n2\t50 nope\tn2\n")
    with pytest.raises(SystemExit, match=r"pairs\.tsv:2: unknown item 'nope': neither in dataset 'ml-tiny' nor in "
                                         r"the new items"):
        main([f"--checkpoint={checkpoint}", f"--items={items}", f"--pairs={pairs}"])
    items.write_text("item_id\ttext\nn1\tA film\nn2\t  \n")
    with pytest.raises(SystemExit, match=r"new\.tsv:3: new item 'n2' has an empty text"):
        main([f"--checkpoint={checkpoint}", f"--items={items}", "--history=50"])


def _known_item(scorer):
    """A known item with features in every item field, its text as the run assembles it, and its features."""
    from recbole_cela.text.items import item_texts

    texts = item_texts(scorer.config, scorer.dataset)
    feat = scorer.dataset.item_feat
    for internal in range(1, scorer.dataset.item_num):
        values = {}
        for field in scorer.feature_fields:
            ids = feat[field][internal]
            ids = [int(i) for i in (ids if ids.dim() else ids.unsqueeze(0)) if int(i) != 0]
            values[field] = " ".join(scorer.dataset.field2id_token[field][i] for i in ids)
        if all(values.values()):
            return scorer.dataset.field2id_token[scorer.item_field][internal], texts[internal], values


def test_new_items_keep_their_item_features(trained):
    """A new item keeps the item features it comes with (only its item id is the padding id): a
    copy of a known item (same text, same features) has that item's feature rows, and its score
    is the known item's once the known item's id is the padding id too (DIN). Unknown tokens are
    padding, counted."""
    checkpoint, _, _ = trained
    scorer = NewItemScorer.load(checkpoint)
    token, text, features = _known_item(scorer)
    assert set(features) == {"release_year", "class"}
    ids = scorer.add_items({"copy": text, "bare": text, "odd": text},
                           {"copy": features, "odd": {"class": features["class"] + " NoSuchGenre", "release_year": "3000"}})
    assert scorer.unknown_tokens == {"class": 1, "release_year": 1}
    history = ["50", "181", "172"]
    inter = scorer.interaction([None] * 4, [history] * 4, [token, "copy", "bare", "odd"])
    for field in scorer.feature_fields:
        assert torch.equal(inter[field][1], inter[field][0]), field  # the copy: the known item's features
        assert not inter[field][2].any(), field  # no features given: padding
    assert torch.equal(inter["class"][3], inter["class"][0]) and int(inter["release_year"][3]) == 0
    assert int(scorer.dataset.item_feat[scorer.item_field][ids[0]]) == 0  # the item id is the padding id
    scores = scorer.score(history, [token, "copy", "bare"])
    assert scores[1] != scores[2]  # the features count
    layer = getattr(scorer.model.backbone, "embedding_layer", None)
    if layer is not None:  # DIN: the known item scored with the padding id gives the copy's score
        layer.layer.item_feat[scorer.item_field][scorer.item_ids[token]] = 0
        again = scorer.score(history, [token, "copy"])
        torch.testing.assert_close(torch.as_tensor(again[0]), torch.as_tensor(scores[1]), rtol=0, atol=1e-5)
        assert again[1] == scores[1]
    with pytest.raises(NewItemError, match=r"\['genre'\] are not item features of this run"):
        scorer.add_items({"n7": "x"}, {"n7": {"genre": "Drama"}})
    with pytest.raises(NewItemError, match="not among the new items"):
        scorer.add_items({"n8": "x"}, {"n9": {"class": "Drama"}})


def test_an_id_model_scores_new_items_from_their_features(trained):
    """Without an encoder the scorer serves an ID model (here the run's own backbone, as DIN or
    DeepFM would be loaded): new items are their features with the padding id."""
    checkpoint, _, _ = trained
    cela = NewItemScorer.load(checkpoint)
    backbone = cela.model.backbone
    token, text, features = _known_item(cela)
    # The fused backbone without its text table is not an ID model: build the plain one.
    from recbole_cela.model.backbones import get_backbone

    plain = get_backbone(cela.config["backbone"])(cela.config, cela.dataset)
    state = {k: v for k, v in backbone.state_dict().items() if k in plain.state_dict()
             and v.shape == plain.state_dict()[k].shape}
    plain.load_state_dict(state, strict=False)
    plain.eval()
    scorer = NewItemScorer(plain, cela.config, cela.dataset)
    ids = scorer.add_items({"copy": None, "bare": None}, {"copy": features})
    assert ids == [cela.dataset.item_num, cela.dataset.item_num + 1]
    scores = scorer.score(["50", "copy"], [token, "copy", "bare"])
    assert ((scores > 0) & (scores < 1)).all() and scores[1] != scores[2]


def test_cli_reads_item_features(trained, tmp_path, capsys):
    checkpoint, _, config = trained
    scorer = NewItemScorer.load(checkpoint)
    token, text, features = _known_item(scorer)
    items = tmp_path / "new.tsv"
    items.write_text(f"item_id\ttext\tclass\trelease_year\tnote\ncopy\t{text}\t{features['class']} Nope\t"
                     f"{features['release_year']}\tignored\nbare\t{text}\t\t\t\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"\t50 181\t{token}\n\t50 181\tcopy\n\t50 181\tbare\n")
    main([f"--checkpoint={checkpoint}", f"--items={items}", f"--pairs={pairs}"])
    out, err = capsys.readouterr()
    scores = [float(line.split("\t")[3]) for line in out.splitlines()]
    assert scores[1] != scores[2]
    assert "{'class': 1}" in err
    expected = NewItemScorer.load(checkpoint)
    expected.add_items({"copy": text, "bare": text}, {"copy": features})
    assert scores == [float(f"{p:.6f}") for p in expected.score(["50", "181"], [token, "copy", "bare"])]
    atomic = tmp_path / "new.item"
    atomic.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                      f"copy\tAnother Film\t{features['release_year']}\t{features['class']}\n")
    from recbole_cela.new_items import read_items

    texts, columns = read_items(str(atomic), scorer.config)
    assert columns["copy"]["class"] == features["class"] and "Another Film" in texts["copy"]

"""Tests of recbole_cela.data.convert: the CTR protocol, the file formats, skipping, bad input."""

import csv
import gzip
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_cela.data.convert import DataPreparationError, prepare_dataset

REPO = Path(__file__).parents[1]
AMAZON_SPORTS = REPO.parent / "shared/data/amazon-sports"  # real data, read in place
AMAZON_BEAUTY = REPO.parent / "shared/data/amazon-beauty"
INTER_HEADER = "user_id:token\titem_id:token\tlabel:float\titem_id_list:token_seq"
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


def read_split(folder, dataset, split):
    """A written .inter file as a DataFrame of strings (header checked)."""
    path = Path(folder) / f"{dataset}.{split}.inter"
    with open(path, encoding="utf-8") as f:
        assert f.readline().rstrip("\n") == INTER_HEADER
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    return table.set_axis(["user", "item", "label", "history"], axis=1)


def positives(table):
    """(user, item, history) of the positive rows, in file order."""
    rows = table[table["label"] == "1"]
    return list(zip(rows["user"], rows["item"], rows["history"]))


def snapshot(folder):
    """{file name: bytes} of a folder."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def write_sequence(folder, sequences, texts):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user_sequence.txt").write_text("".join(line + "\n" for line in sequences))
    (folder / "item_text.tsv").write_text("".join(line + "\n" for line in texts))
    return folder


SEQUENCES = ["u1 i1 i2 i3 i4", "u2 i2 i3", "u3 i5", "u4 i1 i3 i5"]
TEXTS = [
    "i1\tRed ball",
    "i2\tBlue &amp; green\tbat",  # HTML entity, inner tab
    "i3\t  Two-person   tent ",
    "i4\tRunning shoe",
    "i5\tGolf glove 12\" size",  # a double quote
    "i6\tUnused hat",  # in no sequence
]


@pytest.fixture
def sequence_source(tmp_path):
    return write_sequence(tmp_path / "raw", SEQUENCES, TEXTS)


def write_gz_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def review(user, item, when):
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": when, "overall": 5.0})


# Reviews out of chronological order, with a tie (A2: 'b' and 'c' both at 200, file order wins).
REVIEWS = [
    review("A1", "c", 300),
    review("A1", "a", 100),
    review("A2", "b", 200),
    review("A1", "b", 200),
    review("A2", "c", 200),
    review("A2", "a", 100),
    review("A3", "d", 50),
]


@pytest.fixture
def amazon2014_source(tmp_path):
    folder = tmp_path / "raw2014"
    folder.mkdir()
    write_gz_lines(folder / "reviews_Sports_and_Outdoors_5.json.gz", REVIEWS)
    meta = [
        {"asin": "a", "title": "Camp  Stove", "price": 10.0, "brand": "Coleman",
         "categories": [["Sports & Outdoors", "Outdoor Recreation"],
                        ["Sports & Outdoors", "Camping, Hiking"]],
         "description": "Burns &amp; boils\nfast"},
        {"asin": "b", "title": "Tent", "price": 30.0, "categories": [["Sports & Outdoors"]]},
        {"asin": "c", "title": "Lamp", "price": 20.0, "brand": "Black Diamond", "categories": []},
        {"asin": "d", "title": "Rope"},  # no price
        {"asin": "zz", "title": "Never reviewed", "price": 1000.0},
    ]
    write_gz_lines(folder / "meta_Sports_and_Outdoors.json.gz", [repr(m) for m in meta])
    return folder


@pytest.fixture
def amazon2018_source(tmp_path):
    folder = tmp_path / "raw2018"
    folder.mkdir()
    write_gz_lines(folder / "Sports_and_Outdoors_5.json.gz", REVIEWS)
    meta = [
        {"asin": "a", "title": "Camp Stove", "description": ["Burns", "fast &amp; clean"],
         "brand": "Coleman", "category": ["Sports &amp; Outdoors", "Camping"], "price": "$10.00"},
        {"asin": "b", "title": "Tent", "description": [], "category": [], "price": "$1,030.00"},
        {"asin": "c", "title": "Lamp", "price": "$20.00 - $40.00"},  # a range: missing
        {"asin": "d", "title": "Rope", "price": ""},
    ]
    write_gz_lines(folder / "meta_Sports_and_Outdoors.json.gz", [json.dumps(m) for m in meta])
    return folder


RECBOLE_INTER = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "7\t30\t5\t300",
    "7\t10\t2\t100",
    "7\t20\t4\t200",
    "7\t40\t3\t200",  # tie with item 20: file order
    "8\t10\t4\t10",
    "8\t30\t1\t20",
    "9\t20\t5\t1",
]
RECBOLE_ITEM = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "10\tToy Story\t1995\tAnimation Comedy",
    "20\tHeat\t1995\tAction",
    "30\tFargo\t1996\tCrime Drama",
    "40\tAlien\t1979\tHorror",
    "50\tNever rated\t2000\tDrama",
]
RECBOLE_USER = ["user_id:token\tage:token", "7\t24", "8\t53", "9\t30"]


@pytest.fixture
def recbole_source(tmp_path):
    folder = tmp_path / "rawrb"
    folder.mkdir()
    for suffix, lines in [("inter", RECBOLE_INTER), ("item", RECBOLE_ITEM), ("user", RECBOLE_USER)]:
        (folder / f"tiny.{suffix}").write_text("".join(line + "\n" for line in lines))
    return folder


def random_sequences(n_users, n_items, seed=0):
    """Sequences of 1..12 distinct items of ``n_items``, and their item texts."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(n_users):
        items = rng.choice(n_items, size=rng.integers(1, 13), replace=False)
        lines.append(f"u{user} " + " ".join(f"i{i}" for i in items))
    return lines, [f"i{i}\titem {i}" for i in range(n_items)]


# --------------------------------------------------------------------------------------------
# The CTR protocol
# --------------------------------------------------------------------------------------------


def test_sequence_samples_exact(sequence_source, tmp_path):
    folder = prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path / "out"))
    assert folder == str(tmp_path / "out" / "tiny")
    train, valid, test = (read_split(folder, "tiny", s) for s in SPLITS)
    # u1: 3 samples (train, valid, test); u2: 2 interactions -> test only; u3: nothing; u4: 2.
    assert positives(train) == [("u1", "i2", "i1")]
    assert positives(valid) == [("u1", "i3", "i1 i2"), ("u4", "i3", "i1")]
    assert positives(test) == [("u1", "i4", "i1 i2 i3"), ("u2", "i3", "i2"), ("u4", "i5", "i1 i3")]
    for table in (train, valid, test):
        # each negative follows its positive, with the same user and history
        assert list(table["label"]) == ["1", "0"] * (len(table) // 2)
        pos, neg = table.iloc[0::2].reset_index(drop=True), table.iloc[1::2].reset_index(drop=True)
        assert (pos[["user", "history"]] == neg[["user", "history"]]).all().all()
    # negatives come from the items of the interactions (i1..i5) the user never had
    user_items = {line.split()[0]: set(line.split()[1:]) for line in SEQUENCES}
    for table in (train, valid, test):
        for user, item in zip(table["user"][1::2], table["item"][1::2]):
            assert item in {"i1", "i2", "i3", "i4", "i5"} - user_items[user]
    assert set(train["item"][1::2]) | set(test[test["user"] == "u1"]["item"][1::2]) == {"i5"}

    item_lines = (Path(folder) / "tiny.item").read_text().splitlines()
    assert item_lines == [
        "item_id:token\ttitle:token_seq",
        "i1\tRed ball",
        "i2\tBlue & green bat",
        "i3\tTwo-person tent",
        "i4\tRunning shoe",
        "i5\tGolf glove 12'' size",
    ]
    assert not (Path(folder) / "tiny.user").exists()
    stamp = json.loads((Path(folder) / "tiny.prep.json").read_text())
    assert stamp["counts"]["samples"] == {"train": 2, "valid": 4, "test": 6}
    assert stamp["counts"]["users"] == 3 and stamp["counts"]["items"] == 5


def test_negatives_random_data_and_seed(tmp_path):
    sequences, texts = random_sequences(300, 40)
    source = write_sequence(tmp_path / "raw", sequences, texts)
    first = prepare_dataset("r", "sequence", str(source), str(tmp_path / "a"), seed=7)
    again = prepare_dataset("r", "sequence", str(source), str(tmp_path / "b"), seed=7)
    other = prepare_dataset("r", "sequence", str(source), str(tmp_path / "c"), seed=8)

    user_items = {line.split()[0]: set(line.split()[1:]) for line in sequences}
    n_positives = sum(len(items) - 1 for items in user_items.values())
    tables = [read_split(first, "r", s) for s in SPLITS]
    assert sum(len(t) for t in tables) == 2 * n_positives
    for table in tables:
        negatives = table[table["label"] == "0"]
        assert not any(i in user_items[u] for u, i in zip(negatives["user"], negatives["item"]))
    assert len(set(pd.concat(tables)["item"][1::2])) > 20  # spread over the items

    def inter_files(folder):
        return {k: v for k, v in snapshot(folder).items() if k.endswith(".inter")}

    assert inter_files(first) == inter_files(again)  # deterministic under the seed
    assert inter_files(first) != inter_files(other)


def test_history_is_capped(sequence_source, tmp_path):
    write_sequence(sequence_source, ["u1 i1 i2 i3 i4 i5", "u2 i2 i3", "u3 i6"], TEXTS)
    folder = prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), max_history=2)
    samples = [row for s in SPLITS for row in positives(read_split(folder, "tiny", s))]
    assert samples == [
        ("u1", "i2", "i1"),
        ("u1", "i3", "i1 i2"),
        ("u1", "i4", "i2 i3"),
        ("u1", "i5", "i3 i4"),
        ("u2", "i3", "i2"),
    ]
    assert [s[1] for s in positives(read_split(folder, "tiny", "test"))] == ["i5", "i3"]


def test_amazon2014(amazon2014_source, tmp_path):
    folder = prepare_dataset("az", "amazon2014", str(amazon2014_source), str(tmp_path))
    # by time, ties in file order: A1 a(100) b(200) c(300); A2 a(100) b(200) c(200); A3 alone
    assert positives(read_split(folder, "az", "train")) == []
    assert positives(read_split(folder, "az", "valid")) == [("A1", "b", "a"), ("A2", "b", "a")]
    assert positives(read_split(folder, "az", "test")) == [("A1", "c", "a b"), ("A2", "c", "a b")]
    for split in ("valid", "test"):  # A1 and A2 had a, b, c: the only negative is d
        assert list(read_split(folder, "az", split)["item"][1::2]) == ["d", "d"]

    item = pd.read_csv(Path(folder) / "az.item", sep="\t", dtype=str, keep_default_na=False)
    assert list(item.columns) == [
        "item_id:token", "title:token_seq", "description:token_seq", "brand:token",
        "categories:token_seq", "price:float",
    ]
    assert item.values.tolist() == [
        ["a", "Camp Stove", "Burns & boils fast", "Coleman",
         "Sports_Outdoors Outdoor_Recreation Camping_Hiking", "0.0"],
        ["b", "Tent", "", "", "Sports_Outdoors", "1.0"],
        ["c", "Lamp", "", "Black Diamond", "", "0.5"],
        ["d", "Rope", "", "", "", ""],
    ]


def test_amazon2018(amazon2018_source, tmp_path):
    folder = prepare_dataset("az", "amazon2018", str(amazon2018_source), str(tmp_path))
    assert positives(read_split(folder, "az", "test")) == [("A1", "c", "a b"), ("A2", "c", "a b")]
    item = pd.read_csv(Path(folder) / "az.item", sep="\t", dtype=str, keep_default_na=False)
    assert item.values.tolist() == [
        ["a", "Camp Stove", "Burns fast & clean", "Coleman", "Sports_Outdoors Camping", "0.0"],
        ["b", "Tent", "", "", "", "1.0"],
        ["c", "Lamp", "", "", "", ""],
        ["d", "Rope", "", "", "", ""],
    ]


def test_recbole_explicit(recbole_source, tmp_path):
    folder = prepare_dataset(
        "tiny", "recbole", str(recbole_source), str(tmp_path), rating_threshold=4
    )
    tables = {s: read_split(folder, "tiny", s) for s in SPLITS}
    rows = {s: list(zip(t["user"], t["item"], t["label"], t["history"])) for s, t in tables.items()}
    # user 7 by time: 10(2) 20(4) 40(3, tie with 20: file order) 30(5); no negatives
    assert rows["train"] == [("7", "20", "1", "10")]
    assert rows["valid"] == [("7", "40", "0", "10 20")]
    assert rows["test"] == [("7", "30", "1", "10 20 40"), ("8", "30", "0", "10")]
    assert (Path(folder) / "tiny.user").read_bytes() == (recbole_source / "tiny.user").read_bytes()
    assert (Path(folder) / "tiny.item").read_text().splitlines() == RECBOLE_ITEM[:5]


# --------------------------------------------------------------------------------------------
# Skipping and atomic writes
# --------------------------------------------------------------------------------------------


def test_skipped_when_unchanged(sequence_source, tmp_path):
    out = str(tmp_path / "out")
    folder = Path(prepare_dataset("tiny", "sequence", str(sequence_source), out))
    stamp = folder / "tiny.prep.json"

    def mtimes():
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    before = mtimes()
    time.sleep(0.01)
    prepare_dataset("tiny", "sequence", str(sequence_source), out)
    assert mtimes() == before  # nothing rewritten

    prepare_dataset("tiny", "sequence", str(sequence_source), out, max_history=1)
    changed = mtimes()
    assert all(changed[name] > before[name] for name in before)  # a changed setting rewrites

    prepare_dataset("tiny", "sequence", str(sequence_source), out, max_history=1, force=True)
    assert mtimes()["tiny.train.inter"] > changed["tiny.train.inter"]

    # a touched input file (same bytes, e.g. a re-copied raw folder) does not rewrite ...
    last = mtimes()
    future = time.time() + 100
    os.utime(sequence_source / "item_text.tsv", (future, future))
    prepare_dataset("tiny", "sequence", str(sequence_source), out, max_history=1)
    assert mtimes() == last
    # ... a changed input file, or a missing stamp, does
    original = (sequence_source / "item_text.tsv").read_bytes()
    (sequence_source / "item_text.tsv").write_bytes(original.replace(b"Red ball", b"Red balls"))
    prepare_dataset("tiny", "sequence", str(sequence_source), out, max_history=1)
    assert json.loads(stamp.read_text())["settings"]["max_history"] == 1
    assert (folder / "tiny.train.inter").stat().st_mtime_ns > last["tiny.train.inter"]
    (sequence_source / "item_text.tsv").write_bytes(original)
    stamp.unlink()
    last = mtimes()
    prepare_dataset("tiny", "sequence", str(sequence_source), out, max_history=1)
    assert stamp.exists() and mtimes()["tiny.test.inter"] > last["tiny.test.inter"]


def test_errors_leave_outputs_untouched(sequence_source, tmp_path):
    folder = prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path / "out"))
    before = snapshot(folder)
    assert not [name for name in before if name.startswith(".") or name.endswith(".tmp")]

    # now the input is bad: over max_bad_ratio the conversion fails and writes nothing
    write_sequence(sequence_source, SEQUENCES + ["u9"] * 3, TEXTS)
    with pytest.raises(DataPreparationError, match="user without items: 3"):
        prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path / "out"))
    assert snapshot(folder) == before  # byte-identical, no temporary files left


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset("s", "sequence", str(tmp_path / "nowhere"), str(tmp_path))
    message = str(error.value)
    assert "user_sequence.txt" in message and "item_text.tsv" in message
    assert str(tmp_path / "nowhere") in message and "does not exist" in message

    for source_format in ("amazon2014", "amazon2018"):
        with pytest.raises(DataPreparationError) as error:
            prepare_dataset("s", source_format, str(tmp_path), str(tmp_path / "out"))
        message = str(error.value)
        assert str(tmp_path) in message
        for name in ("reviews_Sports_and_Outdoors_5.json.gz", "meta_Sports_and_Outdoors.json.gz",
                     "'Sports_and_Outdoors_5.json.gz'", "McAuley"):
            assert name in message

    write_gz_lines(tmp_path / "reviews_Toys_5.json.gz", REVIEWS)
    with pytest.raises(DataPreparationError, match="meta_Toys.json.gz"):
        prepare_dataset("s", "amazon2014", str(tmp_path), str(tmp_path / "out"))

    with pytest.raises(DataPreparationError, match=r"'s\.inter'"):
        prepare_dataset("s", "recbole", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(DataPreparationError, match="recbole, sequence, amazon2014, amazon2018"):
        prepare_dataset("s", "csv", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(DataPreparationError, match="source_path"):
        prepare_dataset("s", "sequence", None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_malformed_sequence_lines(sequence_source, tmp_path, caplog):
    write_sequence(
        sequence_source,
        SEQUENCES + ["u9", "u1 i1 i2", "u5 i1 i7 i2 i8"],  # no items; duplicate user; i7 has no text line
        TEXTS + ["i8\t   ", "no tab here", "i1\tRed ball again"],  # empty text; malformed; duplicate
    )
    args = ("tiny", "sequence", str(sequence_source), str(tmp_path))
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset(*args)
    message = str(error.value)
    assert "max_bad_ratio=0.01" in message and "Nothing was written" in message
    assert not (tmp_path / "tiny").exists()
    for report in (
        "user without items: 1 (first at user_sequence.txt:5)",
        "duplicate user line: 1 (first at user_sequence.txt:6)",
        "malformed line: 1 (first at item_text.tsv:8)",
        "duplicate item line: 1 (first at item_text.tsv:9)",
    ):
        assert report in message
    assert "i7" not in message and "empty text" not in message  # kept, not skipped

    with caplog.at_level(logging.WARNING):
        folder = prepare_dataset(*args, max_bad_ratio=0.5)
    # Items without text keep every interaction (their title is empty: the encoders use text_fallback).
    assert "item without a line in item_text.tsv: 1 (first: i7)" in caplog.text
    assert "item with an empty text: 1 (first: i8)" in caplog.text
    test = read_split(folder, "tiny", "test")
    assert ("u5", "i8", "i1 i7 i2") in positives(test)
    items = pd.read_csv(Path(folder) / "tiny.item", sep="\t", dtype=str, keep_default_na=False)
    titles = dict(zip(items["item_id:token"], items["title:token_seq"]))
    assert titles["i7"] == "" and titles["i8"] == "" and titles["i1"] == "Red ball"  # first line wins
    stamp = json.loads((Path(folder) / "tiny.prep.json").read_text())
    assert stamp["counts"]["skipped_input_entries"]["user without items"] == 1
    assert stamp["counts"]["repaired_input_entries"] == {"item without a line in item_text.tsv": 1,
                                                         "item with an empty text": 1}


FEATURES = {"attributes": {"file": "attrs.tsv", "type": "token_seq"},
            "brand": {"file": "brand.tsv", "type": "token"},
            "price": {"file": "price.tsv", "type": "float"}}


def write_features(folder, attrs, brands, prices):
    for name, lines in (("attrs", attrs), ("brand", brands), ("price", prices)):
        (folder / f"{name}.tsv").write_text("".join(line + "\n" for line in lines))


def test_item_feature_files(sequence_source, tmp_path, caplog):
    write_features(
        sequence_source,
        ["i1\ta1  a2", "i2\ta2", "i3\t", "i5\ta3 a1", "i6\ta9"],  # i4 missing; i3 empty; i6 unused
        ["i1\tacme", "i2\tacme", "i3\tzeta", "i4\tzeta", "i5\tacme"],
        ["i1\t1.5", "i2\t2", "i3\t0.25", "i4\t3", "i5\t10"],
    )
    with caplog.at_level(logging.WARNING):
        folder = prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), item_feature_files=FEATURES)
    lines = (Path(folder) / "tiny.item").read_text().splitlines()
    assert lines[0] == "item_id:token\ttitle:token_seq\tattributes:token_seq\tbrand:token\tprice:float"
    rows = {line.split("\t")[0]: line.split("\t")[2:] for line in lines[1:]}
    assert rows == {"i1": ["a1 a2", "acme", "1.5"], "i2": ["a2", "acme", "2"], "i3": ["", "zeta", "0.25"],
                    "i4": ["", "zeta", "3"], "i5": ["a3 a1", "acme", "10"]}
    assert "item without a line in attrs.tsv (empty attributes): 1 (first: i4)" in caplog.text
    stamp = json.loads((Path(folder) / "tiny.prep.json").read_text())
    assert str(sequence_source / "attrs.tsv") in stamp["inputs"]
    assert stamp["settings"]["item_feature_files"] == FEATURES

    # RecBole reads the field as a token sequence of the items.
    from recbole.data import create_dataset

    from recbole_cela.quick_start import build_config

    _, config = build_config("DIN", "tiny", [str(REPO / "dataset_configs" / "amazon-sports.yaml")], {
        "data_path": str(tmp_path), "source_format": None, "state": "ERROR", "item_feature_files": FEATURES,
        "load_col": {"inter": ["user_id", "item_id", "label", "item_id_list"], "item": ["item_id", "attributes"]}})
    dataset = create_dataset(config)
    assert dataset.field2type["attributes"].value == "token_seq"
    assert set(dataset.field2id_token["attributes"]) == {"[PAD]", "a1", "a2", "a3"}

    # A changed feature file re-converts; the same bytes do not.
    before = snapshot(folder)
    write_features(sequence_source, ["i1\ta1 a2", "i2\ta2", "i3\t", "i5\ta3 a1", "i6\ta9"],
                   ["i1\tacme", "i2\tacme", "i3\tzeta", "i4\tzeta", "i5\tacme"],
                   ["i1\t1.5", "i2\t2", "i3\t0.25", "i4\t3", "i5\t10"])
    prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), item_feature_files=FEATURES)
    assert snapshot(folder) != before  # attrs.tsv changed (one space less): new digest, new stamp
    again = snapshot(folder)
    prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), item_feature_files=FEATURES)
    assert snapshot(folder) == again


def test_item_text_file_chooses_the_text(sequence_source, tmp_path, caplog):
    """item_text_file: another ITEM<TAB>TEXT file of the folder is the items' title; an item whose
    text is empty there keeps its interactions, counted; choosing another file converts again."""
    (sequence_source / "keywords.tsv").write_text("i1\tred ball\ni2\t\ni3\ttent\ni4\tshoe\ni5\tglove\n")
    out = str(tmp_path / "out")
    folder = Path(prepare_dataset("tiny", "sequence", str(sequence_source), out))
    titles = snapshot(folder)
    caplog.set_level(logging.WARNING)
    prepare_dataset("tiny", "sequence", str(sequence_source), out, item_text_file="keywords.tsv")
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in (folder / "tiny.item").read_text().splitlines()[1:]}
    assert rows == {"i1": "red ball", "i2": "", "i3": "tent", "i4": "shoe", "i5": "glove"}
    assert "item with an empty text: 1 (first: i2)" in caplog.text
    stamp = json.loads((folder / "tiny.prep.json").read_text())
    assert stamp["counts"]["repaired_input_entries"] == {"item with an empty text": 1}
    assert str(sequence_source / "keywords.tsv") in stamp["inputs"]
    assert str(sequence_source / "item_text.tsv") not in stamp["inputs"]
    keywords = snapshot(folder)
    for split in SPLITS:  # the same samples: only the text differs
        assert keywords[f"tiny.{split}.inter"] == titles[f"tiny.{split}.inter"]
    prepare_dataset("tiny", "sequence", str(sequence_source), out)  # back to item_text.tsv
    assert snapshot(folder)["tiny.item"] == titles["tiny.item"]
    with pytest.raises(DataPreparationError, match="'nope.tsv'.*item_text_file"):
        prepare_dataset("tiny", "sequence", str(sequence_source), out, item_text_file="nope.tsv")


def test_item_text_file_setting_and_folders(sequence_source, tmp_path):
    """amazon-beauty and amazon-beauty-keywords differ by item_text_file only and convert into
    their own folders; the setting is declared and checked like any other."""
    from recbole_cela.config import build_config
    from recbole_cela.data import prepare_from_config
    from recbole_cela.utils import PluginConfigError, read_yaml

    configs = {d: read_yaml(str(REPO / "dataset_configs" / f"{d}.yaml"))
               for d in ("amazon-sports", "amazon-beauty", "amazon-beauty-keywords")}
    differ = {k for k in configs["amazon-sports"] if configs["amazon-sports"][k] != configs["amazon-beauty"][k]}
    assert differ == {"source_path"} and set(configs["amazon-sports"]) == set(configs["amazon-beauty"])
    differ = {k for k in configs["amazon-beauty"] if configs["amazon-beauty"][k] != configs["amazon-beauty-keywords"][k]}
    assert differ == {"item_text_file"} and configs["amazon-beauty-keywords"]["item_text_file"] == "item_keywords.tsv"

    (sequence_source / "item_keywords.tsv").write_text("i1\tball\ni2\tbat\ni3\ttent\ni4\tshoe\ni5\t\n")
    (sequence_source / "item_attributes.tsv").write_text("".join(f"i{n}\ta{n}\n" for n in range(1, 6)))
    folders = {}
    for dataset in ("amazon-beauty", "amazon-beauty-keywords"):
        _, config = build_config("DIN", dataset, None, {"data_path": str(tmp_path), "source_path": str(sequence_source),
                                                        "state": "ERROR"})
        folders[dataset] = Path(prepare_from_config(config))
        assert folders[dataset] == tmp_path / dataset
    assert (folders["amazon-beauty"] / "amazon-beauty.item").read_text().splitlines()[1] == "i1\tRed ball\ta1"
    assert (folders["amazon-beauty-keywords"] / "amazon-beauty-keywords.item").read_text().splitlines()[1] == "i1\tball\ta1"
    with pytest.raises(PluginConfigError, match="item_text_file = 3"):
        build_config("DIN", "amazon-beauty", None, {"item_text_file": 3})


@pytest.mark.slow
@pytest.mark.skipif(not AMAZON_BEAUTY.is_dir(), reason=f"real data not found at {AMAZON_BEAUTY}")
def test_real_amazon_beauty_titles_and_keywords(tmp_path):
    """Real titles keep their case and punctuation; the keywords file's one empty text is kept, counted."""
    titles = Path(prepare_dataset("amazon-beauty", "sequence", str(AMAZON_BEAUTY), str(tmp_path)))
    keywords = Path(prepare_dataset("amazon-beauty-keywords", "sequence", str(AMAZON_BEAUTY), str(tmp_path),
                                    item_text_file="item_keywords.tsv"))
    counts = json.loads((titles / "amazon-beauty.prep.json").read_text())["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (22363, 12101, 198502)
    assert counts["repaired_input_entries"] == {}
    counts = json.loads((keywords / "amazon-beauty-keywords.prep.json").read_text())["counts"]
    assert (counts["items"], counts["interactions"]) == (12101, 198502)
    assert counts["repaired_input_entries"] == {"item with an empty text": 1}
    item = {line.split("\t")[0]: line.split("\t")[1] for line in (titles / "amazon-beauty.item").read_text().splitlines()[1:]}
    assert item["B004756YJA"] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    item = {line.split("\t")[0]: line.split("\t")[1]
            for line in (keywords / "amazon-beauty-keywords.item").read_text().splitlines()[1:]}
    assert item["B004756YJA"] == "nail lacquer simmer and shimmer" and item["B001LTVF7G"] == ""


def test_malformed_item_feature_files(sequence_source, tmp_path):
    write_features(
        sequence_source,
        ["i1\ta1", "i2 a2", "i1\ta3", "i3\ta1", "i4\ta1", "i5\ta1"],  # no tab; duplicate
        ["i1\tacme corp", "i2\tacme", "i3\tacme", "i4\tacme", "i5\tacme"],  # two tokens
        ["i1\t1.5", "i2\tcheap", "i3\t1", "i4\t1", "i5\t1"],  # not a number
    )
    args = ("tiny", "sequence", str(sequence_source), str(tmp_path))
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset(*args, item_feature_files=FEATURES)
    message = str(error.value)
    for report in ("malformed line: 3 (first at attrs.tsv:2, brand.tsv:1, price.tsv:2)",
                   "duplicate item line: 1 (first at attrs.tsv:3)"):
        assert report in message
    assert not (tmp_path / "tiny").exists()

    for bad, expected in (({"attributes": {"file": "missing.tsv", "type": "token_seq"}}, "'missing.tsv'"),
                          ({"attributes": {"file": "attrs.tsv", "type": "tokens"}}, "type='tokens'"),
                          ({"attributes": "attrs.tsv"}, "not usable")):
        with pytest.raises(DataPreparationError, match=expected):
            prepare_dataset(*args, item_feature_files=bad)
        assert not (tmp_path / "tiny").exists()


def test_malformed_amazon_lines(amazon2014_source, tmp_path, caplog):
    reviews = amazon2014_source / "reviews_Sports_and_Outdoors_5.json.gz"
    write_gz_lines(reviews, REVIEWS + ["{not json", review("A3", "x", 60), '{"asin": "a"}'])
    meta = amazon2014_source / "meta_Sports_and_Outdoors.json.gz"
    with gzip.open(meta, "rt") as f:
        lines = f.read().splitlines()
    write_gz_lines(meta, lines + ["{'asin': 'x', 'title': 'broken"])
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset("az", "amazon2014", str(amazon2014_source), str(tmp_path))
    message = str(error.value)
    reviews, meta = "reviews_Sports_and_Outdoors_5.json.gz", "meta_Sports_and_Outdoors.json.gz"
    assert f"malformed line: 3 (first at {reviews}:8, {reviews}:10, {meta}:6)" in message
    assert f"item in reviews with no meta: 1 (first at {reviews}:9)" in message

    with caplog.at_level(logging.WARNING):
        folder = prepare_dataset(
            "az", "amazon2014", str(amazon2014_source), str(tmp_path), max_bad_ratio=0.5
        )
    assert "item in reviews with no meta: 1" in caplog.text
    # A3 keeps only d: no samples; x is not an item
    assert "x" not in (Path(folder) / "az.item").read_text().split()


def test_malformed_recbole_lines(recbole_source, tmp_path):
    path = recbole_source / "tiny.inter"
    path.write_text(path.read_text() + "7\t50\tgood\t400\n8\t50\n")
    expected = r"malformed line: 2 \(first at tiny\.inter:9, tiny\.inter:10\)"
    with pytest.raises(DataPreparationError, match=expected):
        prepare_dataset("tiny", "recbole", str(recbole_source), str(tmp_path))


# Lines that are not UTF-8: the Latin-1 bytes of "é" where UTF-8 text is expected.
LATIN1 = "é".encode("latin-1")


def write_lines_bytes(path, lines):
    path.write_bytes(b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))


def test_read_text_lines_splits_as_before_and_numbers_bad_lines(tmp_path):
    """Valid files split exactly as the converter always split them (text mode + splitlines);
    a file with bad bytes keeps that numbering and names its bad lines."""
    from recbole_cela.fileio import read_text_lines, undecodable

    path = tmp_path / "f.txt"
    text = "a\r\nb\rc\x0cd\u2028e\n\nf"
    path.write_bytes(text.encode())
    with open(path, encoding="utf-8") as f:
        assert read_text_lines(path) == (f.read().splitlines(), [])
    path.write_bytes(text.encode().replace(b"d", b"d" + LATIN1) + b"\r\nok " + LATIN1 + b"\n")
    lines, bad = read_text_lines(path)
    assert len(lines) == 8 and bad == [4, 8]  # the \r, \x0c and \u2028 breaks still count
    assert undecodable(lines[3]) == "byte 0xe9 at character 2" and undecodable(lines[0]) is None


def test_non_utf8_sequence_lines(sequence_source, tmp_path, caplog):
    """A line that is not UTF-8 is a malformed line: counted with its file:line, skipped, and
    over max_bad_ratio the conversion stops and writes nothing."""
    sequences = [s.encode() for s in SEQUENCES]
    sequences[3] = b"u4 i1 i3 i5" + LATIN1  # u4's line
    texts = [t.encode() for t in TEXTS]
    texts[3] = b"i4\tRunning sho" + LATIN1
    write_lines_bytes(sequence_source / "user_sequence.txt", sequences)
    write_lines_bytes(sequence_source / "item_text.tsv", texts)
    args = ("tiny", "sequence", str(sequence_source), str(tmp_path))
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset(*args)
    message = str(error.value)
    assert "line not UTF-8 text: 2 (first at item_text.tsv:4, user_sequence.txt:4)" in message
    assert "re-encode it as UTF-8" in message and "Nothing was written" in message
    assert not (tmp_path / "tiny").exists()

    with caplog.at_level(logging.WARNING):
        folder = prepare_dataset(*args, max_bad_ratio=0.5)
    assert "line not UTF-8 text: 2 (first at item_text.tsv:4, user_sequence.txt:4)" in caplog.text
    users = {u for split in SPLITS for u, _, _ in positives(read_split(folder, "tiny", split))}
    assert users == {"u1", "u2"}  # u4's line is skipped (u3 has a single item)
    titles = dict(line.split("\t") for line in (Path(folder) / "tiny.item").read_text().splitlines()[1:])
    assert titles["i4"] == "" and titles["i1"] == "Red ball"  # i4's text line skipped: text_fallback
    stamp = json.loads((Path(folder) / "tiny.prep.json").read_text())
    assert stamp["counts"]["skipped_input_entries"] == {"line not UTF-8 text": 2}


def test_non_utf8_recbole_lines(recbole_source, tmp_path):
    inter = [line.encode() for line in RECBOLE_INTER]
    inter[2] = b"7\t10\t2\t100" + LATIN1  # a body line: skipped, counted
    write_lines_bytes(recbole_source / "tiny.inter", inter)
    with pytest.raises(DataPreparationError, match=r"line not UTF-8 text: 1 \(first at tiny\.inter:3\)"):
        prepare_dataset("tiny", "recbole", str(recbole_source), str(tmp_path))
    folder = prepare_dataset("tiny", "recbole", str(recbole_source), str(tmp_path), max_bad_ratio=0.5)
    train = read_split(folder, "tiny", "train")
    assert "10" not in set(train[train["user"] == "7"]["item"])  # user 7's rating of item 10 is gone

    # A header, or any line of the .user file (copied as it is), cannot be skipped: stop there.
    user = recbole_source / "tiny.user"
    write_lines_bytes(user, [RECBOLE_USER[0], RECBOLE_USER[1], b"8\t5" + LATIN1, RECBOLE_USER[3]])
    before = snapshot(folder)
    with pytest.raises(DataPreparationError, match=r"tiny\.user:3: not UTF-8 text \(byte 0xe9 at character 4\)"):
        prepare_dataset("tiny", "recbole", str(recbole_source), str(tmp_path), max_bad_ratio=0.5)
    user.write_text("".join(line + "\n" for line in RECBOLE_USER))
    write_lines_bytes(recbole_source / "tiny.item", [b"item_id:token\tmovie_title" + LATIN1 + b":token_seq"]
                      + [line.encode() for line in RECBOLE_ITEM[1:]])
    with pytest.raises(DataPreparationError, match=r"tiny\.item:1: not UTF-8 text .*header"):
        prepare_dataset("tiny", "recbole", str(recbole_source), str(tmp_path), max_bad_ratio=0.5)
    assert snapshot(folder) == before


@pytest.mark.parametrize("release", ["2014", "2018"])
def test_non_utf8_amazon_lines(release, amazon2014_source, amazon2018_source, tmp_path):
    source = amazon2014_source if release == "2014" else amazon2018_source
    reviews = next(source.glob("*_5.json.gz"))
    meta = source / "meta_Sports_and_Outdoors.json.gz"
    encode = repr if release == "2014" else json.dumps
    with gzip.open(meta, "rt") as f:
        meta_lines = [line.encode() for line in f.read().splitlines()]
    # Item e (reviewed) and item zz2 (never reviewed) have a Latin-1 byte in their meta line.
    for asin in ("e", "zz2"):
        meta_lines.append(encode({"asin": asin, "title": "Caf"}).encode().replace(b"Caf", b"Caf" + LATIN1))
    with gzip.open(meta, "wb") as f:
        f.write(b"".join(line + b"\n" for line in meta_lines))
    review_lines = [line.encode() for line in REVIEWS + [review("A3", "e", 60), review("A4", "c", 10)]]
    review_lines[8] = review_lines[8].replace(b'"A4"', b'"A4' + LATIN1 + b'"')
    with gzip.open(reviews, "wb") as f:
        f.write(b"".join(line + b"\n" for line in review_lines))
    with pytest.raises(DataPreparationError) as error:
        prepare_dataset("az", f"amazon{release}", str(source), str(tmp_path))
    # zz2's line is never parsed (nobody reviewed it), so it is not counted, as for valid lines.
    expected = f"line not UTF-8 text: 2 (first at {reviews.name}:9, {meta.name}:{len(meta_lines) - 1})"
    assert expected in str(error.value)
    folder = prepare_dataset("az", f"amazon{release}", str(source), str(tmp_path), max_bad_ratio=0.5)
    items = [line.split("\t")[0] for line in (Path(folder) / "az.item").read_text().splitlines()[1:]]
    assert items == ["a", "b", "c", "d"]  # e has no readable meta
    counts = json.loads((Path(folder) / "az.prep.json").read_text())["counts"]["skipped_input_entries"]
    assert counts == {"line not UTF-8 text": 2, "item in reviews with no meta": 1}


def test_non_utf8_item_feature_lines(sequence_source, tmp_path):
    write_features(sequence_source, ["i1\ta1", "i2\ta2", "i3\ta1", "i4\ta1", "i5\ta1"],
                   ["i1\tacme", "i2\tacme", "i3\tacme", "i4\tacme", "i5\tacme"],
                   ["i1\t1.5", "i2\t2", "i3\t1", "i4\t1", "i5\t1"])
    write_lines_bytes(sequence_source / "brand.tsv", [b"i1\tacme", b"i2\tacm" + LATIN1, b"i3\tacme",
                                                      b"i4\tacme", b"i5\tacme"])
    with pytest.raises(DataPreparationError, match=r"line not UTF-8 text: 1 \(first at brand\.tsv:2\)"):
        prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), item_feature_files=FEATURES)
    folder = prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path), item_feature_files=FEATURES,
                             max_bad_ratio=0.5)
    rows = {line.split("\t")[0]: line.split("\t") for line in (Path(folder) / "tiny.item").read_text().splitlines()}
    assert rows["i2"][3] == "" and rows["i1"][3] == "acme"  # i2's brand line skipped: an empty value


def test_output_folder_is_not_the_source(tmp_path):
    source = tmp_path / "tiny"  # <data_path>/<dataset> would be the source folder itself
    source.mkdir()
    (source / "tiny.inter").write_text("".join(line + "\n" for line in RECBOLE_INTER))
    before = snapshot(source)
    with pytest.raises(DataPreparationError, match="overwrite the raw ones"):
        prepare_dataset("tiny", "recbole", str(source), str(tmp_path))
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "tiny").symlink_to(source)
    with pytest.raises(DataPreparationError, match="overwrite the raw ones"):
        prepare_dataset("tiny", "recbole", str(source), str(tmp_path / "link"))
    assert snapshot(source) == before


def test_user_with_every_item(sequence_source, tmp_path):
    write_sequence(sequence_source, ["u1 i1 i2 i3", "u2 i1 i2"], TEXTS)
    with pytest.raises(DataPreparationError, match="User 'u1' .* interacted with all 3 items"):
        prepare_dataset("tiny", "sequence", str(sequence_source), str(tmp_path))


# --------------------------------------------------------------------------------------------
# RecBole reads the output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["DeepFM", "DIN"])
def test_recbole_reads_the_benchmark_files(tmp_path, model):
    import recbole_cela  # noqa: F401  (RecBole compatibility fixes)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    sequences, texts = random_sequences(60, 30)
    source = write_sequence(tmp_path / "raw", sequences, texts)
    prepare_dataset("tiny", "sequence", str(source), str(tmp_path / "data"))
    config = Config(
        model=model,
        dataset="tiny",
        config_file_list=[str(REPO / "dataset_configs" / "amazon-sports.yaml")],
        config_dict={"data_path": str(tmp_path / "data"), "use_gpu": False,
                     "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False},
    )
    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    for split, loader in zip(SPLITS, splits):
        assert len(loader.dataset) == len(read_split(tmp_path / "data" / "tiny", "tiny", split))
    fields = set(splits[2].dataset.inter_feat.interaction)
    assert {"user_id", "item_id", "label", "item_id_list"} <= fields
    assert ("item_length" in fields) == (model == "DIN")


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not AMAZON_SPORTS.is_dir(), reason=f"real data not found at {AMAZON_SPORTS}")
def test_real_amazon_sports(tmp_path):
    start = time.time()
    folder = prepare_dataset("amazon-sports", "sequence", str(AMAZON_SPORTS), str(tmp_path))
    print(f"amazon-sports converted in {time.time() - start:.1f}s")  # shown with -s / -rA
    counts = json.loads((Path(folder) / "amazon-sports.prep.json").read_text())["counts"]
    assert counts["users"] == 35598 and counts["items"] == 18357
    assert counts["interactions"] == 296337
    # every user has >= 5 interactions: one test and one valid positive each, the rest train
    n_train = 296337 - 3 * 35598  # interactions - (first, valid, test) of each user
    assert counts["samples"] == {"train": 2 * n_train, "valid": 2 * 35598, "test": 2 * 35598}
    assert counts["skipped_input_entries"] == {}

    test = read_split(folder, "amazon-sports", "test")
    assert (test["label"] == "1").sum() == 35598 and (test["label"] == "0").sum() == 35598
    parts = pd.Series((AMAZON_SPORTS / "user_sequence.txt").read_text().splitlines()).str.split()
    seen = set(zip(parts.str[0].repeat(parts.str.len() - 1), parts.str[1:].explode()))
    negatives = pd.concat(read_split(folder, "amazon-sports", s) for s in SPLITS)
    negatives = negatives[negatives["label"] == "0"]
    assert not seen.intersection(zip(negatives["user"], negatives["item"]))
    # the test positive is the user's last item; its history the 20 before it
    last = dict(zip(parts.str[0], parts.str[-1]))
    history = dict(zip(parts.str[0], parts.str[1:].str[-21:-1].str.join(" ")))
    test_pos = test[test["label"] == "1"]
    assert all(last[u] == i for u, i in zip(test_pos["user"], test_pos["item"]))
    assert all(history[u] == h for u, h in zip(test_pos["user"], test_pos["history"]))


@pytest.mark.slow
def test_real_ml_100k(tmp_path):
    folder = prepare_dataset("ml-100k", "recbole", None, str(tmp_path))
    counts = json.loads((Path(folder) / "ml-100k.prep.json").read_text())["counts"]
    assert counts["users"] == 943 and counts["items"] == 1682 and counts["interactions"] == 100000
    assert counts["samples"] == {"train": 97171, "valid": 943, "test": 943}
    test = read_split(folder, "ml-100k", "test")
    assert set(test["label"]) == {"0", "1"}
    # every user has >= 20 ratings: 19 or 20 items before the last one
    assert set(test["history"].str.split().str.len()) == {19, 20}
    assert {p.name for p in Path(folder).iterdir()} == {
        f"ml-100k.{s}" for s in ("train.inter", "valid.inter", "test.inter", "item", "user")
    } | {"ml-100k.prep.json"
    }

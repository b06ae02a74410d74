"""The data variants of the scaling and new-items benchmarks (pure table operations)."""

import pandas as pd

from benchmarks.new_items import choose_share, hold_out
from benchmarks.scaling import replicate

HEAD = ["user_id:token", "item_id:token", "label:float", "item_id_list:token_seq"]


def inter(rows):
    return pd.DataFrame(rows, columns=HEAD)


def test_replicate_items_and_users_or_users_only():
    tables = {"train": inter([["u1", "a", "1", ""], ["u1", "b", "0", "a"]]),
              "valid": inter([["u1", "c", "1", "a b"]]), "test": inter([["u2", "a", "0", ""]])}
    item = pd.DataFrame({"item_id:token": ["a", "b", "c"], "movie_title:token_seq": ["A", "B", "C"]})
    user = pd.DataFrame({"user_id:token": ["u1", "u2"]})
    t, i, u = replicate(tables, item, user, 3, items_too=True)
    assert len(i) == 9 and len(u) == 6 and len(t["train"]) == 6
    row = t["valid"].iloc[2]
    assert (row["user_id:token"], row["item_id:token"], row["item_id_list:token_seq"]) == ("u1~2", "c~2", "a~2 b~2")
    t, i, u = replicate(tables, item, user, 2, items_too=False)
    assert len(i) == 3 and len(u) == 4 and set(t["valid"]["item_id_list:token_seq"]) == {"a b"}


def test_hold_out_removes_every_trace(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = {"train": inter([["u1", "a", "1", ""], ["u1", "b", "0", "a"], ["u2", "c", "1", ""]]),
              "valid": inter([["u1", "c", "1", "a b"]]),
              "test": inter([["u1", "b", "1", "a b c"], ["u2", "a", "0", "c"]])}
    for split, frame in frames.items():
        frame.to_csv(src / f"d.{split}.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": ["a", "b", "c"]}).to_csv(src / "d.item", sep="\t", index=False)
    pd.DataFrame({"user_id:token": ["u1", "u2"]}).to_csv(src / "d.user", sep="\t", index=False)
    removed = hold_out(str(src), "d", str(tmp_path / "d-new"), "d-new", {"b"})
    assert removed["item_id:token"].tolist() == ["b"]  # its test sample, history kept as it was
    assert removed["item_id_list:token_seq"].tolist() == ["a b c"]
    for split in ("train", "valid", "test"):
        text = (tmp_path / "d-new" / f"d-new.{split}.inter").read_text()
        assert "b" not in {t for line in text.splitlines()[1:] for t in line.replace("\t", " ").split()}
    assert (tmp_path / "d-new" / "d-new.item").read_text().split() == ["item_id:token", "a", "c"]


def test_share_of_items_and_a_dataset_without_users(tmp_path):
    items = [f"i{n}" for n in range(200)]
    held = choose_share(items, 0.05, 2020)
    assert len(held) == 10 and held <= set(items)
    assert choose_share(items, 0.05, 2020) == held and choose_share(items, 0.05, 2021) != held
    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "valid", "test"):
        inter([["u1", "i1", "1", "i2"], ["u1", "i2", "0", "i1"]]).to_csv(src / f"d.{split}.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": ["i1", "i2"]}).to_csv(src / "d.item", sep="\t", index=False)
    removed = hold_out(str(src), "d", str(tmp_path / "d-new"), "d-new", {"i2"})  # amazon data: no .user file
    assert removed["item_id:token"].tolist() == ["i2"] and not (tmp_path / "d-new" / "d-new.user").exists()

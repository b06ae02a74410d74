"""The new-items benchmark end to end on the ml-100k slice: each seed's result is kept, and
``--resume`` reuses it only under the same settings."""

import json

from benchmarks import new_items


def test_a_finished_seed_is_reused_only_under_its_settings(run_config, tiny_encoder, tmp_path, capsys):
    files, config = run_config(text_encoder=tiny_encoder, epochs=1, align_epochs=1, threads=1)
    base_dir = config.pop("data_path")  # the benchmark's --base_dir: each hold-out is a dataset of its own there
    out = tmp_path / "report"

    def run(resume, **changed):
        return new_items.run_benchmark("ml-tiny", [2020], str(out), {**config, **changed}, base_dir,
                                       "test", n_items=3, config_files=files,
                                       saved_dir=str(tmp_path / "saved"), resume=resume)

    first = run(resume=False)
    seed_file = out / "runs" / "ml-tiny-new-items" / "seed-2020.json"
    kept = json.loads(seed_file.read_text())
    assert kept["result"]["auc"] == first["per_seed"][0]["auc"]
    assert kept["settings"]["held_out_items"] == first["per_seed"][0]["held_out_items"]
    assert "threads" not in kept["settings"]["overrides"]  # how fast, not what: no reason to rerun
    capsys.readouterr()

    again = run(resume=True, threads=2)
    assert "seed 2020: reusing" in capsys.readouterr().out
    assert again["rows"] == first["rows"]

    kept["settings"]["overrides"]["epochs"] = 2  # as if it had run under other settings
    seed_file.write_text(json.dumps(kept))
    rerun = run(resume=True)
    assert "reusing" not in capsys.readouterr().out
    assert json.loads(seed_file.read_text())["settings"]["overrides"]["epochs"] == 1
    assert rerun["per_seed"][0]["held_out_items"] == first["per_seed"][0]["held_out_items"]


def test_a_gain_is_claimed_only_beyond_the_larger_spread():
    names = new_items.row_names("DIN")

    def rows(cela, din):
        return {"cela": {"std": 0.002 if len(cela) > 1 else None, "by_seed": cela},
                "id_features": {"std": 0.004 if len(din) > 1 else None, "by_seed": din}}

    beyond = new_items.gain_line(rows([0.80, 0.81, 0.79], [0.79, 0.80, 0.78]), names, "cela", "id_features")
    assert "+0.0100 AUC" in beyond and "beyond the spread (0.0040)" in beyond
    within = new_items.gain_line(rows([0.80, 0.81], [0.797, 0.807]), names, "cela", "id_features")
    assert "within the spread (0.0040)" in within
    assert "no claim" in new_items.gain_line(rows([0.80], [0.70]), names, "cela", "id_features")

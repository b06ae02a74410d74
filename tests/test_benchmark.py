"""The benchmark's aggregation, verdicts, Pop scorer, report, resume; the text-cost core.

No training run: results are synthetic JSON files written into tmp_path (the subprocesses
started are the real runner failing fast on an unknown model and one that exits at once, whose
pid is then known to be gone).
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from recbole_cela import benchmark as bm

DATASET = "ml-100k"


def fake_result(model, seed, auc, logloss=0.5, fit=10.0, buckets=None, stages=None, argv=None):
    return {
        "model": model, "dataset": DATASET, "seed": seed,
        "best_valid_score": auc + 0.01,
        "best_valid_result": {"auc": auc + 0.01, "logloss": logloss},
        "test_result": {"auc": auc, "logloss": logloss},
        "test_auc_by_popularity": buckets or {"0-5": {"n": 10, "auc": auc - 0.1},
                                              "6-20": {"n": 20, "auc": auc},
                                              ">20": {"n": 70, "auc": auc + 0.05}},
        "fit_time_s": fit, "eval_time_s": 1.0, "eval_samples_per_s": 100.0 * fit,
        "peak_rss_mb": 500.0 + seed % 10, "n_params": 1234, "stages": stages, "device": "cpu",
        "torch": "x", "cpu_count": 2, "argv": argv or ["run_recbole_cela.py"], "config": {},
    }


def cela_stages(scale=1.0):
    diag = {"mlm_loss": 5.0, "alignment": 0.3, "uniformity": -2.0}
    return {
        "dap": {"time_s": 30.0 * scale, "cached": False, "items_per_s": 50.0,
                "diagnostics_before": diag, "diagnostics_after": {k: v - 1 for k, v in diag.items()}},
        "backbone": {"time_s": 10.0 * scale, "cached": False},
        "align": {"time_s": 20.0 * scale, "cached": False, "items_per_s": 80.0,
                  "diagnostics_before": {"recall@1": 0.01, "recall@10": 0.05, "mean_rank": 40.0, "n_items": 100},
                  "diagnostics_after": {"recall@1": 0.2, "recall@10": 0.5, "mean_rank": 10.0, "n_items": 100}},
        "table": {"time_s": 2.0 * scale, "cached": False, "items": 1000, "items_per_s": 500.0},
        "fusion": {"time_s": 15.0 * scale, "cached": False},
    }


def records():
    """DIN and CELA, two seeds each, plus one failed CELA run."""
    recs = [
        {"variant": "DIN", "seed": 2020, "status": "ok", "result": fake_result("DIN", 2020, 0.70)},
        {"variant": "DIN", "seed": 2021, "status": "ok", "result": fake_result("DIN", 2021, 0.72)},
        {"variant": "CELA", "seed": 2020, "status": "ok",
         "result": fake_result("CELA", 2020, 0.76, fit=77.0, stages=cela_stages())},
        {"variant": "CELA", "seed": 2021, "status": "ok",
         "result": fake_result("CELA", 2021, 0.78, fit=77.0, stages=cela_stages())},
        {"variant": "CELA", "seed": 2022, "status": "failed", "returncode": 1,
         "error_tail": "Traceback ...\nRuntimeError: out of memory"},
    ]
    return recs


def test_mean_std():
    assert bm.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std
    assert bm.mean_std([0.5, None]) == (0.5, None)  # one value: no spread
    assert bm.mean_std([]) == (None, None)


def test_aggregate_means_failures_stages():
    agg = bm.aggregate(records(), ["DIN", "CELA"])
    din, cela = agg["DIN"], agg["CELA"]
    assert din["n_ok"] == 2 and din["n_failed"] == 0
    assert cela["n_ok"] == 2 and cela["n_failed"] == 1
    assert din["test_auc_mean"] == pytest.approx(0.71)
    assert din["test_auc_std"] == pytest.approx(0.0141421, abs=1e-6)
    assert cela["test_auc_mean"] == pytest.approx(0.77)
    assert cela["buckets"]["0-5"] == {"n": 10, "auc_mean": pytest.approx(0.67), "auc_std": pytest.approx(0.0141421, abs=1e-6)}
    assert cela["stages"]["dap"]["time_s_mean"] == 30.0
    assert cela["stages"]["table"]["items_per_s_mean"] == 500.0
    assert cela["stages"]["align"]["diagnostics"]["diagnostics_after"]["recall@10"] == 0.5
    assert din["stages"] is None
    assert cela["peak_rss_mb_max"] == 501.0


def test_a_further_reference_is_compared_with_its_own_backbone(tmp_path):
    """--references=CELA,CELA-DINUser: CELA-DINUser is compared with every row and with DINUser."""
    def run(variant, seed, auc, backbone=None):
        model = bm.VARIANTS[variant]["model"]
        result = fake_result(model, seed, auc)
        if backbone:
            result["config"] = {"model": "CELA", "backbone": backbone}
        return {"variant": variant, "seed": seed, "status": "ok", "result": result}

    names = ["DIN", "DINUser", "CELA", "CELA-DINUser"]
    recs = [run("DIN", s, 0.70 + d) for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("DINUser", s, 0.78 + d) for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("CELA", s, 0.74 + d, "DIN") for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("CELA-DINUser", s, 0.80 + d, "DINUser") for s, d in ((2020, 0), (2021, 0.002))]
    agg = bm.aggregate(recs, names)
    comp = bm.comparisons(agg, names, ["CELA", "CELA-DINUser"])
    assert comp["reference"] == "CELA"
    assert comp["gain_over_din"]["overall"] == pytest.approx(0.04)
    more = comp["more"]["CELA-DINUser"]
    assert more["id_row"] == "DINUser" and more["gain_over_id"]["overall"] == pytest.approx(0.02)
    assert more["vs"]["CELA"]["verdict"] == "beats" and "CELA-DINUser" not in more["vs"]
    settings = {"models": names, "seeds": [2020, 2021], "quick": False, "extra_args": [], "resume": False}
    bm.write_report(str(tmp_path), DATASET, names, recs, settings, "cmd", references=["CELA", "CELA-DINUser"])
    md = (tmp_path / f"{DATASET}.md").read_text()
    assert "AUC gain of CELA-DINUser over DINUser (its backbone, ID only): overall +0.0200" in md


def test_end_to_end_cost_counts_reused_stages_at_their_original_cost():
    stages = cela_stages()
    assert bm.end_to_end_cost(stages) == pytest.approx(77.0)
    stages["dap"] = {"time_s": 0.01, "cached": True, "original_time_s": 300.0}
    assert bm.end_to_end_cost(stages) == pytest.approx(77.0 - 30.0 + 300.0)
    recs = [{"variant": "DIN", "seed": 2020, "status": "ok", "result": fake_result("DIN", 2020, 0.70, fit=50.0)},
            {"variant": "CELA", "seed": 2020, "status": "ok",
             "result": fake_result("CELA", 2020, 0.76, fit=47.01, stages=stages)}]
    agg = bm.aggregate(recs, ["DIN", "CELA"])
    assert agg["CELA"]["stages"]["dap"]["cost_s_mean"] == 300.0
    cost = bm.comparisons(agg, ["DIN", "CELA"])["cost"]["CELA"]
    assert cost["time_ratio"] == pytest.approx(347.0 / 50.0) and cost["time_ok"] is False
    stages["dap"].pop("original_time_s")  # an artifact made before costs were recorded
    assert bm.end_to_end_cost(stages) is None
    agg = bm.aggregate(recs, ["DIN", "CELA"])
    assert bm.comparisons(agg, ["DIN", "CELA"])["cost"]["CELA"]["time_ratio"] == pytest.approx(47.01 / 50.0)


def test_compare_spread_logic():
    agg = {
        "A": {"test_auc_mean": 0.80, "test_auc_std": 0.01},
        "B": {"test_auc_mean": 0.78, "test_auc_std": 0.005},  # diff 0.02 > spread 0.01
        "C": {"test_auc_mean": 0.795, "test_auc_std": 0.008},  # diff 0.005 < spread 0.01
        "D": {"test_auc_mean": 0.85, "test_auc_std": 0.02},  # diff -0.05 < -0.02
        "Pop": {"test_auc_mean": 0.70, "test_auc_std": 0.0},  # deterministic
        "One": {"test_auc_mean": 0.5, "test_auc_std": None},  # one seed
        "Failed": {"test_auc_mean": None, "test_auc_std": None},
    }
    assert bm.compare(agg, "A", "B")["verdict"] == "beats"
    assert bm.compare(agg, "A", "C")["verdict"] == "within"
    assert bm.compare(agg, "A", "D")["verdict"] == "loses"
    pop = bm.compare(agg, "A", "Pop")
    assert pop["verdict"] == "beats" and pop["spread"] == 0.01
    assert bm.compare(agg, "A", "One")["verdict"] == "unknown"
    assert bm.compare(agg, "A", "Failed")["verdict"] == "unknown"
    assert "WORSE" in bm.verdict_sentence("A", "D", bm.compare(agg, "A", "D"))
    assert "within" in bm.verdict_sentence("A", "C", bm.compare(agg, "A", "C"))


def write_split(folder, split, rows):
    lines = ["user_id:token\titem_id:token\tlabel:float\titem_id_list:token_seq"]
    lines += [f"u{i}\t{item}\t{label}\th1 h2" for i, (item, label) in enumerate(rows)]
    (folder / f"{DATASET}.{split}.inter").write_text("\n".join(lines) + "\n")


@pytest.fixture
def tiny_data(tmp_path):
    """train: A has 3 positives, B 1 (and 1 negative), C none; D is not in train."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_split(folder, "train", [("A", 1), ("A", 1), ("A", 1), ("B", 1), ("B", 0), ("C", 0), ("C", 0)])
    write_split(folder, "valid", [("A", 1), ("C", 0)])
    write_split(folder, "test", [("A", 1), ("B", 0), ("C", 0), ("D", 1)])
    return folder


def test_pop_scorer_exact(tiny_data):
    result = bm.pop_result(str(tiny_data), DATASET, buckets=[0, 2])
    # test scores: A=3 (+), B=1 (-), C=0 (-), D=0 (+): pairs (3>1) (3>0) (0<1) (0=0) -> 2.5/4
    assert result["test_result"]["auc"] == pytest.approx(0.625)
    assert result["best_valid_result"]["auc"] == pytest.approx(1.0)
    # LogLoss on scores min-max scaled into [0.01, 0.99]: A->0.99, B->0.01+0.98/3, C,D->0.01
    import math

    pb = 0.01 + 0.98 / 3
    expected = -(math.log(0.99) + math.log(1 - pb) + math.log(0.99) + math.log(0.01)) / 4
    assert result["test_result"]["logloss"] == pytest.approx(expected)
    buckets = result["test_auc_by_popularity"]
    assert {b: v["n"] for b, v in buckets.items()} == {"0-0": 2, "1-2": 1, ">2": 1}
    assert buckets["0-0"]["auc"] == 0.5 and buckets["1-2"]["auc"] is None
    assert result["seed"] is None and result["n_params"] == 0
    counts = bm.split_counts(str(tiny_data), DATASET)
    assert counts["train"] == {"samples": 7, "positives": 4}


def test_text_token_args_parse():
    (arg,) = bm.text_token_args(DATASET)
    key, value = arg[2:].split("=")  # RecBole needs exactly one '=' per argument
    assert key == "load_col"
    load_col = ast.literal_eval(value)
    assert "movie_title" in load_col["item"] and "class" in load_col["item"]
    assert load_col["inter"] == ["user_id", "item_id", "label", "item_id_list"]
    (arg,) = bm.text_token_args("amazon-sports")
    assert ast.literal_eval(arg.split("=", 1)[1])["item"] == ["item_id", "attributes", "title"]
    args = bm.run_args("DIN-textTokens", DATASET, 2021, quick=True, extra_args=["--epochs=3"])
    assert "--epochs=3" in args and "--epochs=1" not in args  # --extra wins over --quick
    assert "--seed=2021" in args and "--model=DIN" in args


def test_report_files(tmp_path):
    out = tmp_path / "out"
    pop = {**fake_result("Pop", 0, 0.65), "seed": None, "n_params": 0, "fit_time_s": None, "peak_rss_mb": None}
    recs = records() + [{"variant": "Pop", "seed": None, "status": "ok", "result": pop}]
    names = ["Pop", "DIN", "CELA"]
    settings = {"models": names, "seeds": [2020, 2021], "quick": False, "extra_args": [], "resume": False}
    report = bm.write_report(str(out), DATASET, names, recs, settings, "python -m recbole_cela.benchmark",
                             {"train": {"samples": 10, "positives": 5}, "valid": None, "test": None})
    md = (out / f"{DATASET}.md").read_text()
    for name in names:
        assert name in md
    assert "out of memory" in md  # the failed run's error tail is shown
    assert "CELA beats DIN by +0.0600 AUC" in md
    assert "min-max scaled" in md
    assert "2 (+1 failed)" in md
    for kind in ("auc", "buckets", "cost", "stages"):
        png = out / f"{DATASET}-{kind}.png"
        assert png.is_file() and png.stat().st_size > 1000
        assert f"]({DATASET}-{kind}.png)" in md
    data = json.loads((out / f"{DATASET}.json").read_text())
    assert data["aggregates"]["CELA"]["n_failed"] == 1
    assert data["comparisons"]["gain_over_din"]["overall"] == pytest.approx(0.06)
    assert report["comparisons"]["cost"]["CELA"]["time_ratio"] == pytest.approx(7.7)
    assert report["comparisons"]["cost"]["CELA"]["time_ok"] is False
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # atomic writes leave no temp file


def write_finished(runs_dir, name, seed, quick=False, auc=0.7):
    args = bm.run_args(name, DATASET, seed, quick=quick)
    folder = bm.run_folder(runs_dir, name, seed)
    os.makedirs(folder, exist_ok=True)
    argv = ["run_recbole_cela.py", *args, f"--results_dir={folder}"]
    path = os.path.join(folder, f"{bm.VARIANTS[name]['model']}-{DATASET}-20260101-000000.json")
    with open(path, "w") as f:
        json.dump(fake_result(bm.VARIANTS[name]["model"], seed, auc, argv=argv), f)
    return path


def test_resume_reruns_a_run_made_under_other_props_defaults(tmp_path):
    """Same command, but a default in props/CELA.yaml changed since: the old result is not reused."""
    from recbole_cela.utils import props_file

    runs_dir = str(tmp_path / "runs")
    defaults = bm._yaml_file(props_file("CELA"))
    path = write_finished(runs_dir, "CELA-frozenText", 2020)
    args = bm.run_args("CELA-frozenText", DATASET, 2020)
    folder = bm.run_folder(runs_dir, "CELA-frozenText", 2020)

    def record(**config):
        with open(path) as f:
            result = json.load(f)
        result["config"] = {"model": "CELA", **config}
        with open(path, "w") as f:
            json.dump(result, f)

    record(text_proj_fields=defaults["text_proj_fields"], align=False)  # current defaults (align: argv)
    assert bm.finished_result(folder, args)[0] == path
    record(text_proj_fields=defaults["text_proj_fields"] + 1, align=False)  # the default moved since
    lines = []
    assert bm.finished_result(folder, args, lines.append) == (None, None)
    assert "text_proj_fields" in lines[0]
    record(align=False)  # a key the run did not record did not exist yet: it ran today's default
    assert bm.finished_result(folder, args)[0] == path
    assert bm.stale_defaults({"model": "CELA", "config": {"dap": not defaults["dap"]}},
                             ["--dap=" + str(not defaults["dap"])]) == []  # set on the command line


def test_resume_skips_finished_pairs(tmp_path, tiny_data):
    out = tmp_path / "bench"
    runs_dir = str(out / "runs" / DATASET)
    pairs = bm.plan(["Pop", "LR", "DIN"], [2020, 2021])
    assert pairs[0] == ("Pop", None) and len(pairs) == 5
    write_finished(runs_dir, "LR", 2020)
    write_finished(runs_dir, "LR", 2021, quick=True)  # other arguments: not reusable
    os.makedirs(bm.run_folder(runs_dir, "DIN", 2020))  # started, never finished
    todo, reused = bm.pending(pairs, runs_dir, DATASET, resume=True)
    assert set(reused) == {("LR", 2020)}
    assert todo == [("Pop", None), ("LR", 2021), ("DIN", 2020), ("DIN", 2021)]
    todo, reused = bm.pending(pairs, runs_dir, DATASET, resume=False)
    assert not reused and len(todo) == 5

    # a whole benchmark whose learned runs all finished: nothing is started
    write_finished(runs_dir, "LR", 2021, auc=0.72)
    lines = []
    report = bm.run_benchmark(
        DATASET, ["Pop", "LR"], [2020, 2021], str(out), resume=True, data_dir=str(tiny_data),
        data_settings={"item_field": "item_id", "label_field": "label", "buckets": [0, 2]},
        log=lines.append,
    )
    assert all(r["status"] == "ok" for r in report["runs"])
    assert [r.get("reused") for r in report["runs"]] == [False, True, True]
    assert report["aggregates"]["LR"]["test_auc_mean"] == pytest.approx(0.71)
    assert report["aggregates"]["Pop"]["test_auc_mean"] == pytest.approx(0.625)
    assert any("reused" in line and "LR" in line for line in lines)
    assert (out / f"{DATASET}.md").is_file()

    # --report_only: DIN has no finished run; it is listed as not run, and nothing is started
    lines = []
    report = bm.run_benchmark(
        DATASET, ["Pop", "LR", "DIN"], [2020, 2021], str(out), data_dir=str(tiny_data),
        data_settings={"item_field": "item_id", "label_field": "label", "buckets": [0, 2]},
        log=lines.append, report_only=True,
    )
    assert [r["status"] for r in report["runs"]] == ["ok", "ok", "ok", "not run", "not run"]
    assert report["aggregates"]["LR"]["test_auc_mean"] == pytest.approx(0.71)
    assert report["aggregates"]["DIN"]["n_ok"] == 0 and report["aggregates"]["DIN"]["n_failed"] == 0
    assert not os.listdir(bm.run_folder(runs_dir, "DIN", 2020))  # started nothing there
    assert "Not run (no finished run" in (out / f"{DATASET}.md").read_text()
    assert sum("not run" in line for line in lines) == 2


def test_failed_run_is_recorded(tmp_path):
    """The real runner, failing fast (unknown model): a record with the error, no exception."""
    variants = {"Broken": {"model": "NoSuchModel", "args": []}}
    record = bm.run_one("Broken", 2020, DATASET, str(tmp_path / "runs"), variants=variants, timeout=300)
    assert record["status"] == "failed" and record["returncode"] != 0
    assert "Unknown model 'NoSuchModel'" in record["error_tail"]
    assert os.path.isfile(record["log_file"])
    assert "FAILED" in bm.progress_line(1, 1, record)


def test_eval_cost_interleaved(run_config, tiny_encoder, tmp_path):
    """CELA and its backbone scored alternately on the same test loader; the report."""
    from recbole_cela import eval_cost

    files, overrides = run_config(text_encoder=tiny_encoder)
    result = eval_cost.measure("ml-tiny", rounds=2, overrides=overrides, config_file_list=files, log=lambda *_: None)
    assert set(result["samples_per_s"]) == {"DIN", "CELA"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["samples_per_s"].values())
    assert result["ratio"] == pytest.approx(result["median_samples_per_s"]["CELA"] / result["median_samples_per_s"]["DIN"])
    assert result["n_params"]["CELA"] > result["n_params"]["DIN"]  # the text projection
    path = eval_cost.write_report(result, str(tmp_path), "python -m recbole_cela.eval_cost --dataset=ml-tiny")
    assert "CELA / DIN" in open(path).read() and os.path.isfile(path[:-3] + ".json")


def test_text_cost_core(tiny_encoder, tmp_path):
    """The three measurements on a tiny random BERT and a few texts; the report section."""
    from recbole_cela import text_cost

    settings = {"text_pooling": "mean", "simcse_temperature": 0.05, "mlm_weight": 0.1,
                "mlm_probability": 0.15, "text_trainable_layers": 1, "max_text_length": 32,
                "dap_learning_rate": 5e-5}
    texts = ["movie title: toy story; class: animation", "a jump rope", "bicycle fender rear",
             "movie title: heat", "olympic style jump rope for training"] * 2
    result = text_cost.measure(texts, tiny_encoder, settings, batch_size=4, seq_len=48, log=lambda *_: None)
    assert result["dap_straightforward"]["items_per_s"] > 0 and result["dap_plugin"]["items_per_s"] > 0
    assert result["dap_plugin"]["trainable_params"] < result["dap_straightforward"]["trainable_params"]
    assert result["encode_max_abs_diff"] < 1e-4  # padding does not change the pooled vectors
    result.update(encoder=tiny_encoder, date="today", dataset="x")
    md, _ = text_cost.write_outputs(str(tmp_path), "x", result, "cmd")
    text_cost.write_outputs(str(tmp_path), "x", result, "cmd")  # same key: replaced, not appended
    content = open(md).read()
    assert content.count("<!-- text-cost:") == 1 and "DAP training pass" in content


def test_ablation_rows_read_each_variants_recorded_settings():
    def run(variant, auc, **config):
        result = fake_result("CELA", 2020, auc)
        result["config"] = {"model": "CELA", "backbone": "DIN", "dap": False, "align": True, "text_proj_fields": 1,
                            **config}
        return {"variant": variant, "seed": 2020, "status": "ok", "result": result}

    recs = [run("CELA-frozenText", 0.70, align=False), run("CELA", 0.74), run("CELA-withDAP", 0.72, dap=True),
            run("CELA-proj2", 0.75, text_proj_fields=2),
            {"variant": "DIN", "seed": 2020, "status": "ok", "result": fake_result("DIN", 2020, 0.6)}]
    names = ["DIN", "CELA-frozenText", "CELA", "CELA-withDAP", "CELA-proj2"]
    rows = {r[0]: r for r in bm.ablation_rows(bm.aggregate(recs, names), names)}
    assert set(rows) == set(names) - {"DIN"}  # only CELA variants
    assert rows["CELA-frozenText"][2:5] == ["–", "–", "–"] and rows["CELA-frozenText"][-1] == "–"
    assert rows["CELA"][2:5] == ["–", "yes", "–"] and rows["CELA"][-1] == "+0.0400 (CELA-frozenText)"
    assert rows["CELA-withDAP"][2:4] == ["yes", "yes"] and rows["CELA-withDAP"][-1] == "+0.0200 (CELA-frozenText)"
    assert rows["CELA-proj2"][4] == "text_proj_fields=2"
    # With a frozen row of the same projection width, that one is the reference.
    recs.append(run("CELA-frozenText-proj2", 0.73, align=False, text_proj_fields=2))
    names.append("CELA-frozenText-proj2")
    rows = {r[0]: r for r in bm.ablation_rows(bm.aggregate(recs, names), names)}
    assert rows["CELA-proj2"][-1] == "+0.0200 (CELA-frozenText-proj2)"
    assert rows["CELA"][-1] == "+0.0400 (CELA-frozenText)"
    # ... and of the same epoch budget (an end-to-end run capped at 2 epochs vs frozen at 2 epochs).
    recs += [run("CELA-e2e-2ep", 0.69, align=False, finetune_encoder=True, epochs=2),
             run("CELA-frozenText-2ep", 0.68, align=False, epochs=2)]
    names += ["CELA-e2e-2ep", "CELA-frozenText-2ep"]
    rows = {r[0]: r for r in bm.ablation_rows(bm.aggregate(recs, names), names)}
    assert rows["CELA-e2e-2ep"][-1] == "+0.0100 (CELA-frozenText-2ep)"
    assert "epochs=2" in rows["CELA-e2e-2ep"][4] and "finetune_encoder=True" in rows["CELA-e2e-2ep"][4]
    # A run recorded before a key existed is read with that key's props default.
    assert bm._settings([{"config": {"model": "CELA", "dap": True}}])["align_target"] == "item"


def test_references_must_be_benchmarked_variants():
    with pytest.raises(SystemExit, match="--references must be among --models"):
        bm.main(["--dataset=ml-100k", "--models=DIN", "--references=CELA", "--report_only"])


def test_a_run_folder_is_never_run_by_two_processes(tmp_path):
    runs_dir = str(tmp_path / "runs")
    folder = bm.run_folder(runs_dir, "LR", 2020)
    os.makedirs(folder)
    lock = os.path.join(folder, bm.RUN_LOCK)
    with open(lock, "w") as f:
        f.write(str(os.getpid()))  # a live process holds it
    record = bm.run_one("LR", 2020, DATASET, runs_dir)
    assert record["status"] == "not run" and str(os.getpid()) in record["error_tail"]
    assert "being run by process" in bm.progress_line(1, 1, record)
    assert not os.path.exists(os.path.join(folder, "run.log"))  # nothing started, nothing overwritten
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with open(lock, "w") as f:
        f.write(str(gone.pid))  # left by a killed benchmark: taken over
    assert bm._take_lock(lock) is None
    with open(lock) as f:
        assert f.read() == str(os.getpid())

"""Aggregation, verdicts, cost ratios, the markdown report and its figures, on synthetic results."""

import json
import os

import pytest

from benchmarks import plots, registry
from benchmarks.aggregate import aggregate, compare, comparisons, end_to_end_cost, settings_of
from benchmarks.common import mean_std
from benchmarks.report import ablation_rows, verdict_sentence, write_report

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
    return [
        {"variant": "DIN", "seed": 2020, "status": "ok", "result": fake_result("DIN", 2020, 0.70)},
        {"variant": "DIN", "seed": 2021, "status": "ok", "result": fake_result("DIN", 2021, 0.72)},
        {"variant": "CELA", "seed": 2020, "status": "ok",
         "result": fake_result("CELA", 2020, 0.76, fit=77.0, stages=cela_stages())},
        {"variant": "CELA", "seed": 2021, "status": "ok",
         "result": fake_result("CELA", 2021, 0.78, fit=77.0, stages=cela_stages())},
        {"variant": "CELA", "seed": 2022, "status": "failed", "returncode": 1,
         "error_tail": "Traceback ...\nRuntimeError: out of memory"},
    ]


def settings(names, seeds=(2020, 2021)):
    return {"models": list(names), "seeds": list(seeds), "quick": False, "extra_args": [], "resume": False}


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std
    assert mean_std([0.5, None]) == (0.5, None)  # one value: no spread
    assert mean_std([]) == (None, None)


def test_aggregate_means_failures_stages():
    agg = aggregate(records(), ["DIN", "CELA"])
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
        result = fake_result(registry.model_of(variant), seed, auc)
        if backbone:
            result["config"] = {"model": "CELA", "backbone": backbone}
        return {"variant": variant, "seed": seed, "status": "ok", "result": result}

    names = ["DIN", "DINUser", "CELA", "CELA-DINUser"]
    recs = [run("DIN", s, 0.70 + d) for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("DINUser", s, 0.78 + d) for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("CELA", s, 0.74 + d, "DIN") for s, d in ((2020, 0), (2021, 0.002))]
    recs += [run("CELA-DINUser", s, 0.80 + d, "DINUser") for s, d in ((2020, 0), (2021, 0.002))]
    agg = aggregate(recs, names)
    comp = comparisons(agg, names, ["CELA", "CELA-DINUser"])
    assert comp["reference"] == "CELA"
    assert comp["gain_over_din"]["overall"] == pytest.approx(0.04)
    more = comp["more"]["CELA-DINUser"]
    assert more["id_row"] == "DINUser" and more["gain_over_id"]["overall"] == pytest.approx(0.02)
    assert more["vs"]["CELA"]["verdict"] == "beats" and "CELA-DINUser" not in more["vs"]
    write_report(str(tmp_path), DATASET, names, recs, settings(names), "cmd", references=["CELA", "CELA-DINUser"])
    md = (tmp_path / f"{DATASET}.md").read_text()
    assert "AUC gain of CELA-DINUser over DINUser (its backbone, ID only): overall +0.0200" in md


def test_end_to_end_cost_counts_reused_stages_at_their_original_cost():
    stages = cela_stages()
    assert end_to_end_cost(stages) == pytest.approx(77.0)
    stages["dap"] = {"time_s": 0.01, "cached": True, "original_time_s": 300.0}
    assert end_to_end_cost(stages) == pytest.approx(77.0 - 30.0 + 300.0)
    recs = [{"variant": "DIN", "seed": 2020, "status": "ok", "result": fake_result("DIN", 2020, 0.70, fit=50.0)},
            {"variant": "CELA", "seed": 2020, "status": "ok",
             "result": fake_result("CELA", 2020, 0.76, fit=47.01, stages=stages)}]
    agg = aggregate(recs, ["DIN", "CELA"])
    assert agg["CELA"]["stages"]["dap"]["cost_s_mean"] == 300.0
    cost = comparisons(agg, ["DIN", "CELA"])["cost"]["CELA"]
    assert cost["time_ratio"] == pytest.approx(347.0 / 50.0) and cost["time_ok"] is False
    stages["dap"].pop("original_time_s")  # an artifact made before costs were recorded
    assert end_to_end_cost(stages) is None
    agg = aggregate(recs, ["DIN", "CELA"])
    assert comparisons(agg, ["DIN", "CELA"])["cost"]["CELA"]["time_ratio"] == pytest.approx(47.01 / 50.0)


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
    assert compare(agg, "A", "B")["verdict"] == "beats"
    assert compare(agg, "A", "C")["verdict"] == "within"
    assert compare(agg, "A", "D")["verdict"] == "loses"
    pop = compare(agg, "A", "Pop")
    assert pop["verdict"] == "beats" and pop["spread"] == 0.01
    assert compare(agg, "A", "One")["verdict"] == "unknown"
    assert compare(agg, "A", "Failed")["verdict"] == "unknown"
    assert "WORSE" in verdict_sentence("A", "D", compare(agg, "A", "D"))
    assert "within" in verdict_sentence("A", "C", compare(agg, "A", "C"))


def test_report_files(tmp_path):
    out = tmp_path / "out"
    pop = {**fake_result("Pop", 0, 0.65), "seed": None, "n_params": 0, "fit_time_s": None, "peak_rss_mb": None}
    recs = records() + [{"variant": "Pop", "seed": None, "status": "ok", "result": pop}]
    names = ["Pop", "DIN", "CELA"]
    report = write_report(str(out), DATASET, names, recs, settings(names), "python -m benchmarks",
                          {"train": {"samples": 10, "positives": 5}, "valid": None, "test": None})
    md = (out / f"{DATASET}.md").read_text()
    for name in names:
        assert f"| {name} |" in md or f"| **{name}** |" in md
    assert "out of memory" in md  # the failed run's error tail is shown
    assert "CELA beats DIN by +0.0600 AUC" in md
    assert "min-max scaled" in md
    assert "2 (+1 failed)" in md
    assert "| CELA | 7.70× | MISSES |" in md  # 77 s end to end / DIN's 10 s, target <= 3x
    for kind in ("auc", "buckets", "cost", "stages"):
        png = out / f"{DATASET}-{kind}.png"
        assert png.is_file() and png.stat().st_size > 1000
        assert f"]({DATASET}-{kind}.png)" in md
    data = json.loads((out / f"{DATASET}.json").read_text())
    assert data["aggregates"]["CELA"]["n_failed"] == 1
    assert data["comparisons"]["gain_over_din"]["overall"] == pytest.approx(0.06)
    assert data["variants"]["Pop"] == {"model": None, "args": []}
    assert report["comparisons"]["cost"]["CELA"]["time_ratio"] == pytest.approx(7.7)
    assert report["comparisons"]["cost"]["CELA"]["time_ok"] is False
    assert "on_top" not in report["comparisons"]  # no backbone_from row
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # atomic writes leave no temp file


def test_cost_on_top_of_a_trained_din(tmp_path):
    """CELA-onDIN: on top = its stages after the backbone / DIN's fit; from scratch adds the fit."""
    stages = cela_stages()
    stages.pop("dap")
    stages["backbone"] = {"time_s": 0.5, "cached": True, "given": True, "original_time_s": None}
    recs = [{"variant": "DIN", "seed": 2020, "status": "ok", "other_cpu_cores": 0.1,
             "result": fake_result("DIN", 2020, 0.70, fit=40.0)},
            {"variant": "CELA-onDIN", "seed": 2020, "status": "ok", "other_cpu_cores": 0.9,
             "result": fake_result("CELA", 2020, 0.75, fit=37.5, stages=stages)}]
    names = ["DIN", "CELA-onDIN"]
    report = write_report(str(tmp_path), DATASET, names, recs, settings(names, [2020]), "cmd")
    block = report["comparisons"]["on_top"]["CELA-onDIN"]
    (seed,) = block["seeds"]
    assert seed["on_top_s"] == pytest.approx(20.0 + 2.0 + 15.0) and seed["stages"] == ["align", "table", "fusion"]
    assert seed["on_top_ratio"] == pytest.approx(37.0 / 40.0) and seed["scratch_ratio"] == pytest.approx(77.0 / 40.0)
    assert block["on_top_ok"] is True and block["scratch_ok"] is True  # 0.93x <= 1.5x, 1.93x <= 2.5x
    md = (tmp_path / f"{DATASET}.md").read_text()
    assert "CELA-onDIN: CELA on top of the DIN row's trained run" in md
    assert "| 2020 | 40.00 | align + table + fusion | 37.00 | 0.93× | 1.93× | 0.10 | 0.90 |" in md
    assert "0.93× (meets ≤ 1.5×)" in md and "1.93× (meets ≤ 2.5×)" in md


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
    rows = {r[0]: r for r in ablation_rows(aggregate(recs, names), names)}
    assert set(rows) == set(names) - {"DIN"}  # only CELA variants
    assert rows["CELA-frozenText"][2:5] == ["–", "–", "–"] and rows["CELA-frozenText"][-1] == "–"
    assert rows["CELA"][2:5] == ["–", "yes", "–"] and rows["CELA"][-1] == "+0.0400 (CELA-frozenText)"
    assert rows["CELA-withDAP"][2:4] == ["yes", "yes"] and rows["CELA-withDAP"][-1] == "+0.0200 (CELA-frozenText)"
    assert rows["CELA-proj2"][4] == "text_proj_fields=2"
    # With a frozen row of the same projection width, that one is the reference.
    recs.append(run("CELA-frozenText-proj2", 0.73, align=False, text_proj_fields=2))
    names.append("CELA-frozenText-proj2")
    rows = {r[0]: r for r in ablation_rows(aggregate(recs, names), names)}
    assert rows["CELA-proj2"][-1] == "+0.0200 (CELA-frozenText-proj2)"
    assert rows["CELA"][-1] == "+0.0400 (CELA-frozenText)"
    # ... and of the same epoch budget (an end-to-end run capped at 2 epochs vs frozen at 2 epochs).
    recs += [run("CELA-e2e-2ep", 0.69, align=False, finetune_encoder=True, epochs=2),
             run("CELA-frozenText-2ep", 0.68, align=False, epochs=2)]
    names += ["CELA-e2e-2ep", "CELA-frozenText-2ep"]
    rows = {r[0]: r for r in ablation_rows(aggregate(recs, names), names)}
    assert rows["CELA-e2e-2ep"][-1] == "+0.0100 (CELA-frozenText-2ep)"
    assert "epochs=2" in rows["CELA-e2e-2ep"][4] and "finetune_encoder=True" in rows["CELA-e2e-2ep"][4]
    # A setting only a registry row sets (max_text_length: CELA-onDIN-len128) is listed too.
    recs.append(run("CELA-len128", 0.75, max_text_length=128))
    names.append("CELA-len128")
    rows = {r[0]: r for r in ablation_rows(aggregate(recs, names), names)}
    assert rows["CELA-len128"][4] == "max_text_length=128"
    # A FLIP row has recorded settings of its own, and no CELA stages: not a row of the ablation.
    flip = {"variant": "FLIP", "seed": 2020, "status": "ok", "result": fake_result("FLIP", 2020, 0.7)}
    flip["result"]["config"] = {"model": "FLIP", "flip_finetune": "joint"}
    rows = {r[0]: r for r in ablation_rows(aggregate(recs + [flip], names + ["FLIP"]), names + ["FLIP"])}
    assert "FLIP" not in rows and "CELA-len128" in rows
    # A run recorded before a key existed is read with that key's props default.
    assert settings_of([{"config": {"model": "CELA", "dap": True}}])["align_target"] == "item"


def test_report_of_flip_stages_targets_diagnostics_and_throughput(tmp_path):
    variants = registry.variants()
    assert {"FLIP", "FLIP-idOnly", "FLIP-textOnly", "FLIP-DIN", "FLIP-DIN-idOnly"} <= set(variants)
    assert not {"FLIP", "FLIP-idOnly", "FLIP-textOnly"} & set(registry.default_variants())  # default runs unchanged
    assert variants["FLIP-textOnly"]["args"] == ["--flip_finetune=text"]
    pretrain = {"time_s": 40.0, "cached": False, "items_per_s": 12.0,
                "diagnostics_before": {"mtm_accuracy": 0.1, "mtm_majority": 0.3, "icl_recall@1": 0.03, "icl_chance": 0.03},
                "diagnostics_after": {"mtm_accuracy": 0.5, "mtm_majority": 0.3, "icl_recall@1": 0.3, "icl_chance": 0.03}}

    def run(variant, seed, auc, reused):
        stages = {"pretrain": {**pretrain, "cached": reused, "time_s": 0.0 if reused else 40.0, "original_time_s": 40.0},
                  "id_warmup": {"time_s": 20.0, "cached": False},
                  "finetune": {"time_s": 60.0, "cached": False, "items_per_s": 50.0}}
        result = {"model": "FLIP", "dataset": "ml-100k", "seed": seed, "best_valid_score": 0.7,
                  "best_valid_result": {"auc": 0.7}, "test_result": {"auc": auc, "logloss": 0.6},
                  "test_auc_by_popularity": {}, "fit_time_s": 120.0, "eval_time_s": 3.0, "eval_samples_per_s": 300.0,
                  "peak_rss_mb": 900.0, "n_params": 10, "stages": stages, "argv": [],
                  "config": {"model": "FLIP", "flip_backbone": "DCNV2",
                             "flip_finetune": {"FLIP-idOnly": "id", "FLIP-textOnly": "text"}.get(variant, "joint")}}
        return {"variant": variant, "seed": seed, "status": "ok", "result": result}

    # joint above idOnly in every seed by 0.004, while the seeds spread by ~0.01
    recs = [run("FLIP-idOnly", 2020, 0.70, False), run("FLIP-idOnly", 2021, 0.72, True),
            run("FLIP", 2020, 0.704, True), run("FLIP", 2021, 0.724, True), run("FLIP-textOnly", 2020, 0.66, True)]
    recs.append({"variant": "Pop", "seed": None, "status": "ok", "result": {**recs[0]["result"], "seed": None,
                 "test_result": {"auc": 0.62, "logloss": 1.0}, "stages": None, "config": {}}})
    names = ["Pop", "FLIP-idOnly", "FLIP", "FLIP-textOnly"]
    agg = aggregate(recs, names)
    assert agg["FLIP"]["stages"]["pretrain"]["cost_s_mean"] == 40.0 and agg["FLIP"]["stages"]["pretrain"]["cached_any"]
    assert agg["FLIP"]["test_auc_by_seed"] == {"2020": 0.704, "2021": 0.724}
    cost = {"dataset": "ml-100k", "command": "python -m benchmarks.flip_cost", "date": "today", "other_cpu_cores": 0.5,
            "median_per_s": {"train": {"DIN": 1000.0, "FLIP": 50.0}, "score": {"DIN": 20000.0, "FLIP": 200.0}},
            "batch_size": {"DIN": 2048, "FLIP": 32}, "precision": {"DIN": "fp32", "FLIP": "bf16"}}
    (tmp_path / "ml-100k-flip-cost.json").write_text(json.dumps(cost))
    write_report(str(tmp_path), "ml-100k", names, recs, settings(names, [2020, 2021]), "python -m benchmarks",
                 {"train": {"samples": 10, "positives": 5}, "valid": None, "test": None})
    md = (tmp_path / "ml-100k.md").read_text()
    assert "| FLIP | 40.00 (shared) | 20.00 | 60.00 | 50.00 |" in md  # a reused stage at what it cost
    # The paired difference is what decides: +0.004 in each seed, though inside the spread.
    assert "- FLIP vs FLIP-idOnly: +0.0040 test AUC (spread 0.0141): within the spread; per seed +0.0040 on average, " \
           "from +0.0040 to +0.0040 (2 seeds)." in md
    assert "- FLIP-textOnly vs Pop: +0.0400 test AUC (one seed: no spread)" in md
    # One diagnostics block for the three variants that share the pretraining.
    assert "| FLIP-idOnly, FLIP, FLIP-textOnly | contrast recall@1 | 0.0300 | 0.3000 | 0.0300 (chance, 1 / batch) |" in md
    assert "| FLIP | 32 | bf16 | 50 | 0.0500× | 200 | 0.0100× |" in md  # the throughput table


def test_bucket_figure_draws_the_deciding_rows_as_gains_over_din():
    def row(variant, auc, seed=2020):
        return {"variant": variant, "seed": seed, "status": "ok", "result": fake_result("X", seed, auc)}

    ids = ["LR", "FM", "DeepFM", "WideDeep", "DCNV2", "AutoInt"]
    names = ["Pop", "DIN"] + ids + ["DIN-textTokens", "CELA-frozenText", "CELA", "CELA-proj1", "CELA-normText", "FLIP"]
    recs = [row(n, 0.60 + 0.01 * i) for i, n in enumerate(names)]
    agg = aggregate(recs, names)
    panels = dict(plots.bucket_panels(agg, names))
    assert panels["ID models"] == ["DeepFM", "WideDeep", "DCNV2", "AutoInt"]  # the best 4 besides DIN, in order
    assert panels["text baselines"] == ["DIN-textTokens", "CELA-frozenText"]
    assert panels["CELA and its stage ablation"] == ["CELA", "CELA-proj1"]  # levers and FLIP: the table only
    din, cela = agg["DIN"]["buckets"], agg["CELA"]["buckets"]
    assert plots._bucket_gains(agg, "CELA", list(din)) == [pytest.approx(cela[b]["auc_mean"] - din[b]["auc_mean"])
                                                          for b in din]

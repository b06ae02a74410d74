"""The variant registry, the run queue (commands, --resume, locks, backbone_from), the Pop scorer.

Most results are synthetic JSON files in tmp_path; the subprocesses started are the real runner
(``python -m recbole_cela``): failing fast on an unknown model, and DIN then CELA on top of it
on the tiny ml-100k slice (``test_backbone_from_hand_off``).
"""

import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cli, registry, runs
from benchmarks.data import pop_result, split_counts, text_token_args

DATASET = "ml-100k"
REPO = Path(__file__).resolve().parents[2]
COMMITTED_RUNS = REPO / "docs" / "benchmarks" / "runs"


def fake_result(model, seed, auc, argv, config=None):
    return {"model": model, "dataset": DATASET, "seed": seed, "best_valid_result": {"auc": auc},
            "test_result": {"auc": auc, "logloss": 0.5}, "test_auc_by_popularity": {}, "fit_time_s": 10.0,
            "eval_samples_per_s": 100.0, "stages": None, "argv": argv, "config": config or {}}


def write_finished(runs_dir, name, seed, quick=False, auc=0.7, checkpoint=None):
    args = runs.run_args(name, DATASET, seed, quick=quick, checkpoint=checkpoint)
    folder = runs.run_folder(runs_dir, name, seed)
    os.makedirs(folder, exist_ok=True)
    model = registry.model_of(name)
    path = os.path.join(folder, f"{model}-{DATASET}-20260101-000000.json")
    with open(path, "w") as f:
        json.dump(fake_result(model, seed, auc, ["x/recbole_cela/__main__.py", *args, f"--results_dir={folder}"]), f)
    return path


# ----------------------------------------------------------------------------- registry
def test_registry_rows_and_their_checks(tmp_path):
    variants = registry.variants()
    assert variants["Pop"]["model"] is None and variants["DIN-textTokens"]["text_tokens"] is True
    assert variants["CELA-onDIN"] == {"model": "CELA", "args": [], "backbone_from": "DIN", "default": False,
                                      "group": "cela", "description": variants["CELA-onDIN"]["description"]}
    assert "CELA-onDIN" not in registry.default_variants() and "CELA-withDAP" in registry.default_variants()
    assert all(v["description"] for v in variants.values())
    assert set(registry.targets()) == {"time_ratio", "throughput_ratio", "on_top_ratio", "scratch_ratio"}
    bad = {"variants": {"A": {"model": "CELA", "backbone_from": "B"}}}
    path = tmp_path / "v.yaml"
    for data, message in [(bad, "backbone_from 'B' is not another variant"),
                          ({"variants": {"A": {"model": "LR", "colour": "red"}}}, "unknown field"),
                          ({"variants": {"A": {"model": "LR", "args": ["--epochs", "3"]}}}, "--key=value"),
                          ({"variants": {"A": {"model": "LR"}, "B": {"model": "LR", "backbone_from": "A"}}},
                           "needs model CELA"),
                          ({"variants": {"A": {"model": "LR", "dataset_suffix": "keywords"}}}, "like '-keywords'"),
                          ({"variants": {"A": {"model": "DIN"},
                                         "B": {"model": "CELA", "backbone_from": "A", "dataset_suffix": "-k"}}},
                           "must run on the same dataset")]:
        path.write_text(json.dumps(data))  # JSON is YAML
        with pytest.raises(registry.RegistryError, match=message):
            registry.load(str(path))


def committed_run_folders():
    """(dataset, variant, seed, folder) of every committed run folder (those git tracks: a run
    in progress in a working copy is not one)."""
    out = []
    tracked = subprocess.run(["git", "ls-files", "-z", str(COMMITTED_RUNS)], cwd=REPO, capture_output=True)
    folders = {os.path.join(str(COMMITTED_RUNS), *os.path.relpath(os.path.join(REPO, f), COMMITTED_RUNS).split(os.sep)[:2])
               for f in tracked.stdout.decode().split("\0") if f} if tracked.returncode == 0 else \
        glob.glob(str(COMMITTED_RUNS / "*" / "*-s*"))
    for folder in sorted(folders):
        match = re.fullmatch(r"(.+)-s(\d{4})", os.path.basename(folder))
        if match and os.path.isdir(folder):
            out.append((os.path.basename(os.path.dirname(folder)), match.group(1), int(match.group(2)), folder))
    return out


def test_every_committed_run_is_recognised_by_resume():
    """Each committed run folder holds a result whose recorded command is the one its variant runs
    today, and --resume reuses it (props keys whose default moved since: text_amp only)."""
    folders = committed_run_folders()
    assert len(folders) > 90 and {"ml-100k", "amazon-sports-ids"} <= {f[0] for f in folders}
    for dataset, name, seed, folder in folders:
        args = runs.run_args(name, dataset, seed)
        # A backbone_from row's command names its source run's checkpoint, compared as the row.
        from_row = bool(registry.variants()[name].get("backbone_from"))
        came = runs.read_run_record(folder).get("backbone_from") or {}
        source = (came["variant"], came["seed"], came["result_file"]) if from_row else None
        recorded = []
        for path in glob.glob(os.path.join(folder, "*.json")):
            with open(path) as f:
                recorded.append(json.load(f).get("argv", [])[1:])
        assert runs.comparable(args, from_row) in [runs.comparable(a, from_row) for a in recorded], folder
        path, _ = runs.finished_result(folder, args, accept=("text_amp",), source=source)
        assert path is not None, folder


# --------------------------------------------------------------------------------- resume
def test_resume_reruns_a_backbone_run_under_other_settings(tmp_path):
    """A CELA run records the settings its backbone ran with; when the same command resolves
    them otherwise today (DeepFM's own embedding_size instead of one CELA imposed; a ~ or auto
    default decided otherwise), the run is not reused, and the keys are named."""
    from recbole_cela.config import build_config

    path = write_finished(str(tmp_path / "runs"), "CELA-DeepFM", 2020)
    args = runs.run_args("CELA-DeepFM", DATASET, 2020)
    with open(path) as f:
        result = json.load(f)
    _, config = build_config("CELA", DATASET, config_dict={"backbone": "DeepFM", "text_proj_fields": 1})
    recorded = {k: v for k, v in config.final_config_dict.items() if isinstance(v, (int, float, str, list, type(None)))}
    result["config"] = recorded
    assert runs.stale_defaults(result, args) == []  # as it resolves today: auto recorded resolved
    assert recorded["text_pooling"] == "mean" and recorded["embedding_size"] == 10
    result["config"] = {**recorded, "embedding_size": 16, "mlp_hidden_size": [128, 64, 64]}
    assert runs.stale_defaults(result, args) == ["embedding_size", "mlp_hidden_size"]
    result["config"] = {**recorded, "text_pooling": "cls"}
    assert runs.stale_defaults(result, args) == ["text_pooling"]


def test_resume_reruns_a_run_made_under_other_props_defaults(tmp_path):
    """Same command, but a default in props/CELA.yaml changed since: the old result is not reused."""
    from recbole_cela.utils import props_file, read_yaml

    runs_dir = str(tmp_path / "runs")
    defaults = read_yaml(props_file("CELA"))
    path = write_finished(runs_dir, "CELA-frozenText", 2020)
    args = runs.run_args("CELA-frozenText", DATASET, 2020)
    folder = runs.run_folder(runs_dir, "CELA-frozenText", 2020)

    def record(**config):
        with open(path) as f:
            result = json.load(f)
        result["config"] = {"model": "CELA", **config}
        with open(path, "w") as f:
            json.dump(result, f)

    record(text_proj_fields=defaults["text_proj_fields"], align=False)  # current defaults (align: argv)
    assert runs.finished_result(folder, args)[0] == path
    record(text_proj_fields=defaults["text_proj_fields"] + 1, align=False)  # the default moved since
    lines = []
    assert runs.finished_result(folder, args, lines.append) == (None, None)
    assert "text_proj_fields" in lines[0]
    assert runs.finished_result(folder, args, accept=("text_proj_fields",))[0] == path  # accepted: reused
    assert runs.stale_defaults(json.load(open(path)), args) == ["text_proj_fields"]
    record(align=False)  # a key the run did not record did not exist yet: it ran today's default
    assert runs.finished_result(folder, args)[0] == path
    assert runs.stale_defaults({"model": "CELA", "config": {"dap": not defaults["dap"]}},
                               ["--dap=" + str(not defaults["dap"])]) == []  # set on the command line


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
    import math

    result = pop_result(str(tiny_data), DATASET, buckets=[0, 2])
    # test scores: A=3 (+), B=1 (-), C=0 (-), D=0 (+): pairs (3>1) (3>0) (0<1) (0=0) -> 2.5/4
    assert result["test_result"]["auc"] == pytest.approx(0.625)
    assert result["best_valid_result"]["auc"] == pytest.approx(1.0)
    # LogLoss on scores min-max scaled into [0.01, 0.99]: A->0.99, B->0.01+0.98/3, C,D->0.01
    pb = 0.01 + 0.98 / 3
    expected = -(math.log(0.99) + math.log(1 - pb) + math.log(0.99) + math.log(0.01)) / 4
    assert result["test_result"]["logloss"] == pytest.approx(expected)
    buckets = result["test_auc_by_popularity"]
    assert {b: v["n"] for b, v in buckets.items()} == {"0-0": 2, "1-2": 1, ">2": 1}
    assert buckets["0-0"]["auc"] == 0.5 and buckets["1-2"]["auc"] is None
    assert result["seed"] is None and result["n_params"] == 0
    assert split_counts(str(tiny_data), DATASET)["train"] == {"samples": 7, "positives": 4}


def test_text_token_args_parse():
    (arg,) = text_token_args(DATASET)
    key, value = arg[2:].split("=")  # RecBole needs exactly one '=' per argument
    assert key == "load_col"
    load_col = ast.literal_eval(value)
    assert "movie_title" in load_col["item"] and "class" in load_col["item"]
    assert load_col["inter"] == ["user_id", "item_id", "label", "item_id_list"]
    (arg,) = text_token_args("amazon-sports")
    assert ast.literal_eval(arg.split("=", 1)[1])["item"] == ["item_id", "attributes", "title"]
    args = runs.run_args("DIN-textTokens", DATASET, 2021, quick=True, extra_args=["--epochs=3"])
    assert "--epochs=3" in args and "--epochs=1" not in args  # --extra wins over --quick
    assert "--seed=2021" in args and "--model=DIN" in args


def test_resume_skips_finished_pairs(tmp_path, tiny_data):
    out = tmp_path / "bench"
    runs_dir = str(out / "runs" / DATASET)
    pairs = runs.plan(["Pop", "LR", "DIN"], [2020, 2021])
    assert pairs[0] == ("Pop", None) and len(pairs) == 5
    write_finished(runs_dir, "LR", 2020)
    write_finished(runs_dir, "LR", 2021, quick=True)  # other arguments: not reusable
    assert runs.finished_result(runs.run_folder(runs_dir, "LR", 2021), runs.run_args("LR", DATASET, 2021))[1] is None
    data = {"data_dir": str(tiny_data), "data_settings": {"item_field": "item_id", "label_field": "label",
                                                          "buckets": [0, 2]}}
    write_finished(runs_dir, "LR", 2021, auc=0.72)  # now a finished run of today's command
    lines = []
    report = cli.run_benchmark(DATASET, ["Pop", "LR"], [2020, 2021], str(out), resume=True, log=lines.append, **data)
    assert all(r["status"] == "ok" for r in report["runs"])
    assert [r.get("reused") for r in report["runs"]] == [False, True, True]
    assert report["aggregates"]["LR"]["test_auc_mean"] == pytest.approx(0.71)
    assert report["aggregates"]["Pop"]["test_auc_mean"] == pytest.approx(0.625)
    assert lines[0].startswith("benchmark ml-100k: 3 runs (2 reused)")
    assert any("reused" in line and "LR" in line for line in lines)

    # --report_only: DIN has no finished run; it is listed as not run, and nothing is started
    os.makedirs(runs.run_folder(runs_dir, "DIN", 2020))  # started, never finished
    lines = []
    report = cli.run_benchmark(DATASET, ["Pop", "LR", "DIN"], [2020, 2021], str(out), log=lines.append,
                               report_only=True, **data)
    assert [r["status"] for r in report["runs"]] == ["ok", "ok", "ok", "not run", "not run"]
    assert report["aggregates"]["DIN"]["n_ok"] == 0 and report["aggregates"]["DIN"]["n_failed"] == 0
    assert not os.listdir(runs.run_folder(runs_dir, "DIN", 2020))  # started nothing there
    assert "Not run (no finished run" in (out / f"{DATASET}.md").read_text()
    assert sum("not run" in line for line in lines) == 2


def test_failed_run_is_recorded(tmp_path):
    """The real runner, failing fast (unknown model): a record with the error, no exception."""
    variants = {"Broken": {"model": "NoSuchModel", "args": []}}
    record = runs.run_one("Broken", 2020, DATASET, str(tmp_path / "runs"), table=variants, timeout=300)
    assert record["status"] == "failed" and record["returncode"] != 0
    assert "Unknown model 'NoSuchModel'" in record["error_tail"]
    assert shlex.split(record["command"])[1:3] == ["-m", "recbole_cela"]
    assert os.path.isfile(record["log_file"])
    assert "FAILED" in runs.progress_line(1, 1, record)
    meta = runs.read_run_record(record["folder"])
    assert meta["status"] == "failed" and meta["backbone_from"] is None


def test_keyword_rows_run_on_the_keywords_dataset():
    """A dataset_suffix row runs on <dataset><suffix>, with that dataset config's text fields."""
    args = runs.run_args("DIN-textTokens-keywords", "amazon-beauty", 2020)
    assert "--dataset=amazon-beauty-keywords" in args and "--model=DIN" in args
    assert ast.literal_eval(next(a for a in args if a.startswith("--load_col=")).split("=", 1)[1])["item"] == \
        ["item_id", "attributes", "title"]
    args = runs.run_args("CELA-onDIN-keywords", "amazon-beauty", 2020, checkpoint="din.pth")
    assert "--dataset=amazon-beauty-keywords" in args and "--backbone_checkpoint=din.pth" in args
    assert registry.backbone_source("CELA-onDIN-keywords") == "DIN-keywords"
    assert "--dataset=amazon-beauty" in runs.run_args("CELA-frozenText", "amazon-beauty", 2020)
    assert registry.as_recorded("CELA-frozenText-keywords")["dataset_suffix"] == "-keywords"
    with pytest.raises(SystemExit, match="DIN-keywords run on ml-100k-keywords: no dataset_configs/ml-100k-keywords.yaml"):
        cli.main(["--dataset=ml-100k", "--models=DIN,DIN-keywords", "--report_only"])


def test_command_line_checks():
    with pytest.raises(SystemExit, match="--references must be among --models"):
        cli.main(["--dataset=ml-100k", "--models=DIN", "--references=CELA", "--report_only"])
    with pytest.raises(SystemExit, match="CELA-onDIN takes its backbone from DIN: add DIN to --models"):
        cli.main(["--dataset=ml-100k", "--models=CELA-onDIN", "--report_only"])


def test_a_run_folder_is_never_run_by_two_processes(tmp_path):
    runs_dir = str(tmp_path / "runs")
    folder = runs.run_folder(runs_dir, "LR", 2020)
    os.makedirs(folder)
    lock = os.path.join(folder, runs.RUN_LOCK)
    with open(lock, "w") as f:
        f.write(str(os.getpid()))  # a live process holds it
    record = runs.run_one("LR", 2020, DATASET, runs_dir)
    assert record["status"] == "not run" and str(os.getpid()) in record["error_tail"]
    assert "being run by process" in runs.progress_line(1, 1, record)
    assert not os.path.exists(os.path.join(folder, "run.log"))  # nothing started, nothing overwritten
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with open(lock, "w") as f:
        f.write(str(gone.pid))  # left by a killed benchmark: taken over
    assert runs.take_lock(lock) is None
    with open(lock) as f:
        assert f.read() == str(os.getpid())


# ------------------------------------------------------------------------- backbone_from
def test_backbone_from_order_and_matching(tmp_path):
    pairs = runs.plan(["CELA-onDIN", "LR", "DIN"], [2020, 2021])
    order = runs.execution_order(pairs)
    assert order.index(("DIN", 2020)) < order.index(("CELA-onDIN", 2020))
    assert order.index(("DIN", 2021)) < order.index(("CELA-onDIN", 2021)) and sorted(order) == sorted(pairs)
    assert runs.missing_sources(["CELA-onDIN", "LR"]) == {"CELA-onDIN": "DIN"}

    runs_dir = str(tmp_path / "runs")
    path = write_finished(runs_dir, "CELA-onDIN", 2020, checkpoint="/elsewhere/saved/DIN-1.pth")
    folder = os.path.dirname(path)
    with open(os.path.join(folder, runs.RUN_RECORD), "w") as f:
        json.dump({"result_file": os.path.basename(path),
                   "backbone_from": {"variant": "DIN", "seed": 2020, "result_file": "DIN-a.json"}}, f)
    args = runs.run_args("CELA-onDIN", DATASET, 2020)  # the checkpoint path unknown: FROM_ROW
    assert runs.finished_result(folder, args, source=("DIN", 2020, "DIN-a.json"))[0] == path
    lines = []
    assert runs.finished_result(folder, args, lines.append, source=("DIN", 2020, "DIN-b.json"))[0] is None
    assert "another run than DIN seed 2020" in lines[0]  # built on another DIN run: not reused
    assert runs.finished_result(folder, args, source=("DIN", 2021, "DIN-a.json"))[0] is None
    own = runs.run_args("CELA", DATASET, 2020)  # same arguments without any checkpoint: not the same run
    assert runs.comparable(own, True) != runs.comparable(args, True)


def test_backbone_from_hand_off(run_config, tiny_encoder, tmp_path):
    """DIN runs first; CELA-onDIN gets its checkpoint as the backbone (stage 2a not trained) and a
    second --resume reuses both, also after the checkpoint's path changed."""
    files, config = run_config(text_encoder=tiny_encoder, epochs=1, align_epochs=1, text_trainable_layers=1)
    extra = [f"--config_files={files[0]}"] + [f"--{k}={v}" for k, v in config.items() if k != "results_dir"]
    out, names, data = tmp_path / "bench", ["CELA-onDIN", "DIN"], str(tmp_path / "dataset" / "ml-tiny")

    def bench(**kwargs):
        return cli.run_benchmark("ml-tiny", names, [2020], str(out), extra_args=extra, data_dir=data,
                                 timeout=600, log=lambda _: None, **kwargs)

    report = bench()
    din, cela = report["runs"][1], report["runs"][0]  # report order: as named
    assert din["status"] == "ok" and cela["status"] == "ok", cela.get("error_tail")
    checkpoint = din["result"]["checkpoint"]
    assert os.path.isfile(checkpoint) and cela["result"]["config"]["backbone_checkpoint"] == checkpoint
    backbone = cela["result"]["stages"]["backbone"]
    assert backbone["given"] is True and backbone["artifact"] == checkpoint
    came = runs.read_run_record(os.path.dirname(cela["result_file"]))["backbone_from"]
    assert came == {"variant": "DIN", "seed": 2020, "result_file": os.path.basename(din["result_file"]),
                    "checkpoint": checkpoint}
    assert report["comparisons"]["on_top"]["CELA-onDIN"]["seeds"][0]["on_top_ratio"] > 0

    with open(cela["result_file"]) as f:  # as if the runs were copied from another machine
        result = json.load(f)
    result["argv"] = [a.replace(checkpoint, "/another/machine/DIN.pth") for a in result["argv"]]
    with open(cela["result_file"], "w") as f:
        json.dump(result, f)
    again = bench(resume=True)
    assert [r["reused"] for r in again["runs"]] == [True, True]
    assert again["runs"][0]["backbone_from"]["variant"] == "DIN"
    assert "CELA on top of the DIN row's trained run" in (out / "ml-tiny.md").read_text()

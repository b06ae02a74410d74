"""Runs at once, in real processes: every run keeps its own checkpoint and result, and identical
CELA runs share the stage cache without racing on it (an artifact is built by one process, waited
for and reused by the other, never rebuilt over it); what killed or failed runs leave is removed,
never what a live process is writing. Every wait is bounded."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from recbole_cela.quick_start import run_id
from recbole_cela.trainer.stage import StageCache

from conftest import REPO

TIMEOUT_S = 900  # per process: generous for two CELA runs sharing two loaded cores


def launch(args, cwd, log):
    """The runner in a new process, its output (RecBole's log included) in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / "run_recbole_cela.py"), *args], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)


def finish(proc, log):
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def wait_for(condition, what, procs, timeout=TIMEOUT_S):
    """Poll ``condition`` until it holds; fail if ``timeout`` passes or a process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc, log in procs:
            assert proc.poll() is None, f"ended before {what}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def arguments(files, overrides, **more):
    return [f"--config_files={files[0]}"] + [f"--{k}={v}" for k, v in {**overrides, **more}.items()]


def results(folder, named=False):
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            out.append((name, json.load(f)) if named else json.load(f))
    return out


def test_run_ids_differ_within_one_second():
    ids = [run_id(), run_id()]
    while ids[0].rsplit("-", 1)[0] != ids[1].rsplit("-", 1)[0]:  # drawn across a second boundary
        ids = [run_id(), run_id()]
    assert ids[0] != ids[1]


def test_runs_started_together_keep_their_own_checkpoints(run_config, tmp_path):
    """Two runs with different settings started at once, sharing checkpoint_dir and results_dir:
    two checkpoints, two results, each result naming the checkpoint of its own settings, both
    files named by the run's id (time and a random part: RecBole's time alone is shared by runs
    started in the same second)."""
    files, overrides = run_config(epochs=1)
    args = ["--model=LR", "--dataset=ml-tiny"]
    procs = [(launch(args + arguments(files, overrides, learning_rate=lr), tmp_path, tmp_path / f"lr{lr}.log"),
              tmp_path / f"lr{lr}.log") for lr in (0.01, 0.5)]
    for proc, log in procs:
        finish(proc, log)
    named = results(overrides["results_dir"], named=True)
    assert len(named) == 2
    for name, run in named:
        assert os.path.basename(run["checkpoint"]) == "LR-" + name[len("LR-ml-tiny-"):-len(".json")] + ".pth"
    runs = [run for _, run in named]
    checkpoints = {run["checkpoint"] for run in runs}
    assert len(checkpoints) == 2 and set(os.listdir(overrides["checkpoint_dir"])) == {os.path.basename(c) for c in checkpoints}
    assert {run["config"]["learning_rate"] for run in runs} == {0.01, 0.5}
    for run in runs:
        saved = torch.load(run["checkpoint"], weights_only=True)
        assert saved["config"]["learning_rate"] == run["config"]["learning_rate"]


def test_identical_cela_runs_at_once_build_each_stage_once(run_config, tiny_encoder, tmp_path):
    """Run A is paused (SIGSTOP) while it builds the backbone stage; run B, identical, starts then
    and must wait for it rather than build it too; A resumes. Each stage is built by one of the two
    (which one builds the stages after the backbone is a race either may win) and used by both;
    both give the same predictions."""
    files, overrides = run_config(text_encoder=tiny_encoder, dap=False, epochs=1, align_epochs=1, align_batch_size=32,
                                  text_trainable_layers=-1, max_text_length=32)
    cela_dir = tmp_path / "saved" / "cela" / "ml-tiny"
    logs = {name: tmp_path / f"{name}.log" for name in "AB"}
    args = {name: ["--model=CELA", "--dataset=ml-tiny"]
            + arguments(files, overrides, results_dir=str(tmp_path / f"results-{name}")) for name in "AB"}
    a = launch(args["A"], tmp_path, logs["A"])
    b = None
    try:
        wait_for(lambda: cela_dir.is_dir() and any(p.name.startswith("backbone-") and p.suffix == ".lock"
                                                   for p in cela_dir.iterdir()),
                 "run A building the backbone", [(a, logs["A"])])
        os.kill(a.pid, signal.SIGSTOP)
        b = launch(args["B"], tmp_path, logs["B"])
        wait_for(lambda: "is being built by pid" in logs["B"].read_text(), "run B waiting for run A",
                 [(b, logs["B"])])
    finally:
        os.kill(a.pid, signal.SIGCONT)
        if b is None or b.poll() is not None:
            a.kill()
    finish(a, logs["A"])
    finish(b, logs["B"])
    (first,), (second,) = results(tmp_path / "results-A"), results(tmp_path / "results-B")
    stages = ("backbone", "align", "table")
    assert [first["stages"][s]["cached"] + second["stages"][s]["cached"] for s in stages] == [1, 1, 1]
    assert not first["stages"]["backbone"]["cached"] and any(e.get("waited_s", 0) > 0 for e in second["stages"].values())
    assert all(first["stages"][s]["artifact"] == second["stages"][s]["artifact"] for s in stages)
    # One complete folder per stage, no temporary entry or lock left.
    assert sorted(p.name.split("-")[0] for p in cela_dir.iterdir()) == sorted(stages)
    assert all(StageCache.is_complete(str(p)) for p in cela_dir.iterdir())
    # The same run, computed once and reused once: the same predictions.
    assert first["test_auc_all_samples"] == second["test_auc_all_samples"]
    assert first["test_result"] == second["test_result"]


def test_leftovers_are_removed_unless_a_live_process_holds_their_key(tmp_path):
    """What killed or failed runs left (temporary entries, lock files) is removed; the temporary
    entry of a key whose lock a live process holds is kept until that process is gone."""
    root = tmp_path / "cela"
    (root / "align-aaaa.tmp-train-1234").mkdir(parents=True)  # a failed run's empty scratch folder
    (root / "table-bbbb.tmp-999").mkdir()  # a killed run's half-written artifact
    (root / "table-bbbb.tmp-999" / "item_text.pt").write_bytes(b"half")
    (root / "dap-cccc.lock").write_text("pid 1 on gone")  # its holder is dead: nothing holds it
    (root / "backbone-dddd.tmp-77").mkdir()  # a live process is building this one
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom recbole_cela.trainer.stage import try_lock\n"
         "assert try_lock(sys.argv[1]) is not None\nprint('locked', flush=True)\ntime.sleep(600)\n",
         str(root / "backbone-dddd.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        StageCache(str(root)).sweep()
        assert sorted(p.name for p in root.iterdir()) == ["backbone-dddd.lock", "backbone-dddd.tmp-77"]
    finally:
        holder.kill()
        holder.wait(timeout=60)
    StageCache(str(root)).sweep()
    assert list(root.iterdir()) == []


def test_a_failed_stage_leaves_nothing_behind(run_config, tiny_encoder, tmp_path):
    """A stage whose build fails leaves neither its scratch folder nor its lock: the next run
    builds it at once (a lock left behind would make it wait forever)."""
    from helpers import build_run
    from recbole_cela.trainer import CELATrainer

    config, model, *_ = build_run("CELA", run_config, tiny_encoder, {}, use_text=False, cela_dir=str(tmp_path / "cela"))
    trainer = CELATrainer(config, model)
    fails = True

    def build(path):
        checkpoint = trainer.scratch_file(path)
        torch.save({}, checkpoint)
        if fails:
            raise RuntimeError("the stage failed")
        trainer.drop_scratch(checkpoint)
        return {"ok": True}, lambda folder: torch.save({}, os.path.join(folder, "x.pt"))

    with pytest.raises(RuntimeError, match="the stage failed"):
        trainer.stage("probe", {"n": 1}, build)
    assert list((tmp_path / "cela").iterdir()) == []
    fails = False
    path, _ = trainer.stage("probe", {"n": 1}, build)
    assert not trainer.stage_report["probe"]["cached"]
    assert [p.name for p in (tmp_path / "cela").iterdir()] == [os.path.basename(path)]

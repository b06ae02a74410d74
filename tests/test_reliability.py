"""Nothing a run produces is lost to a bad output path, a typo or Ctrl-C: every place a run writes
is tried before any work, a result that cannot be written at the end is saved elsewhere and said,
unknown and repeated keys are named, Ctrl-C says where it stopped and what a rerun reuses, and a
dataset is converted by one of the runs that meet it at once. Real processes where it takes them;
every wait is bounded."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from recbole_cela.config import build_config
from recbole_cela.quick_start import ResultWriteError, write_result

from conftest import REPO

RUNNER = [sys.executable, str(REPO / "run_recbole_cela.py")]
TIMEOUT_S = 900  # per process: generous on two loaded cores


def arguments(files, overrides, **more):
    return [f"--config_files={files[0]}"] + [f"--{k}={v}" for k, v in {**overrides, **more}.items()]


def run(args, cwd, timeout=TIMEOUT_S):
    return subprocess.run(RUNNER + args, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def launch(args, cwd, log, **popen):
    with open(log, "w") as out:
        return subprocess.Popen(RUNNER + args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, **popen)


def wait_for(condition, what, proc, log, timeout=TIMEOUT_S):
    """Poll ``condition`` until it holds; fail if ``timeout`` passes or the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before {what}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ended(proc, timeout=TIMEOUT_S):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def one_error_block(proc):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output and proc.stderr.count("error: ") == 1, output[-3000:]
    return proc.stderr[proc.stderr.index("error: "):]


# ----------------------------------------------------------------------------- output folders
def test_unwritable_output_folders_are_named_before_any_work(run_config, tmp_path):
    """A results_dir that is a file and a checkpoint_dir that cannot be created (under /proc) are
    named in one error block, with the stage cache below it, before the data is read or converted."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    files, overrides = run_config()
    (tmp_path / "taken").write_text("a file where a folder is expected\n")
    proc = run(["--model=CELA", "--dataset=ml-tiny"]
               + arguments(files, overrides, results_dir=str(tmp_path / "taken"), checkpoint_dir="/proc/no/saved"),
               tmp_path)
    message = one_error_block(proc)
    assert re.search(r"results_dir '.*taken': it exists and is not a folder", message), message
    assert "checkpoint_dir '/proc/no/saved': cannot create it in '/proc'" in message
    assert "cela_dir '/proc/no/saved/cela/ml-tiny'" in message
    assert not os.path.exists(overrides["data_path"])  # nothing was read or converted


def test_an_immutable_checkpoint_folder_is_refused_to_root_too(run_config, tmp_path):
    """Permission bits do not stop root: the check writes a file. An immutable folder (chattr +i)
    refuses every user, root included."""
    folder = tmp_path / "frozen"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
    try:
        files, overrides = run_config()
        proc = run(["--model=DIN", "--dataset=ml-tiny"] + arguments(files, overrides, checkpoint_dir=str(folder)),
                   tmp_path)
        message = one_error_block(proc)
        assert re.search(r"checkpoint_dir '.*frozen': Operation not permitted", message), message
        assert not os.path.exists(overrides["data_path"])
    finally:
        subprocess.run(["chattr", "-i", str(folder)])


def test_a_result_that_cannot_be_written_at_the_end_is_saved_beside_the_checkpoint(run_config, tmp_path):
    """results_dir checked at the start and taken by a file before the end (a folder that changed
    during the run): the result goes beside the checkpoint, and the error says where."""
    files, overrides = run_config()
    _, config = build_config("DIN", "ml-tiny", files, overrides)
    os.makedirs(config["checkpoint_dir"])
    (tmp_path / "results").write_text("taken\n")
    result = {"model": "DIN", "test_result": {"auc": 0.75}}
    with pytest.raises(ResultWriteError, match=r"cannot write the result to '.*results/DIN-ml-tiny-r1\.json'.*"
                                               r"saved at '.*saved/DIN-ml-tiny-r1\.json' instead") as error:
        write_result(result, config, "r1")
    with open(error.value.path) as f:
        assert json.load(f) == result
    assert os.path.dirname(error.value.path) == os.path.abspath(config["checkpoint_dir"])


def test_a_run_whose_results_dir_is_taken_meanwhile_keeps_its_result(run_config, tmp_path):
    """A real run: once it trains (its checkpoint exists) it is paused, a file is put where its
    results_dir would be created, and it goes on. It ends with status 1 and one error block naming the result's new
    place, beside the checkpoint, which holds the result of that checkpoint."""
    files, overrides = run_config(epochs=3)
    log = tmp_path / "run.log"
    proc = launch(["--model=DeepFM", "--dataset=ml-tiny"] + arguments(files, overrides), tmp_path, log)
    saved, results = tmp_path / "saved", tmp_path / "results"
    try:
        wait_for(lambda: saved.is_dir() and any(p.suffix == ".pth" for p in saved.iterdir()), "a checkpoint", proc, log)
        os.kill(proc.pid, signal.SIGSTOP)
        assert not results.exists()  # checked writable, created when the result is written
        results.write_text("taken\n")
        os.kill(proc.pid, signal.SIGCONT)
        ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 1 and "Traceback" not in output and output.count("error: ") == 1, output[-3000:]
    match = re.search(r"error: cannot write the result to '.*results/DeepFM-ml-tiny-.*\.json' \(.*\): "
                      r"it is saved at '(.*)' instead", output)
    assert match, output[-3000:]
    with open(match.group(1)) as f:
        result = json.load(f)
    assert os.path.dirname(match.group(1)) == str(saved) and os.path.isfile(result["checkpoint"])
    assert result["test_result"]["auc"] > 0


# ----------------------------------------------------------------------------- keys
def test_unknown_keys_are_warned_about_with_the_closest_known_key(run_config, tmp_path):
    """A typo is named with the key it is closest to; the runner's own flags are not warned about;
    the run goes on (the warning is a warning)."""
    files, overrides = run_config(epochs=1)
    proc = run(["--model=DeepFM", "--dataset=ml-tiny", "--align_epoch=4", "--foo=bar", "--nproc=1",
                "--group_offset=0", "--world_size=-1", "--ip=localhost", "--port=5678"]
               + arguments(files, overrides), tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    (line,) = [line for line in output.splitlines() if "unknown setting" in line]
    assert "'align_epoch' (did you mean 'align_epochs'?), 'foo'" in line
    for flag in ("nproc", "group_offset", "world_size", "ip", "port", "config_files", "model", "dataset"):
        assert f"'{flag}'" not in line


def test_unknown_keys_error_refuses_them_before_any_work(run_config, tmp_path):
    files, overrides = run_config()
    proc = run(["--model=CELA", "--dataset=ml-tiny", "--align_epoch=4", "--unknown_keys=error"]
               + arguments(files, overrides), tmp_path)
    message = one_error_block(proc)
    assert "unknown setting 'align_epoch' (did you mean 'align_epochs'?)" in message
    assert not os.path.exists(overrides["data_path"])


def test_every_declared_key_is_known(run_config, monkeypatch):
    """The plugin's props and dataset configs, RecBole's defaults of the model and the values a
    saved run's config passes back (loading a run) are no unknown keys."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_cela.py"])  # RecBole's Config reads the command line
    files, overrides = run_config()
    for model in ("CELA", "FLIP", "DIN", "DeepFM"):
        _, config = build_config(model, "ml-tiny", files, overrides)
        assert config.unknown_keys == {}
        given = {k: v for k, v in config.final_config_dict.items() if v is not None}
        from recbole_cela.loading import COMPUTED_KEYS

        _, again = build_config(model, "ml-tiny", files, {k: v for k, v in given.items() if k not in COMPUTED_KEYS})
        assert again.unknown_keys == {}


def test_a_key_given_twice_is_one_error(run_config, tmp_path, monkeypatch):
    """--epochs=abc ... --epochs=1: refused by name (neither value is guessed), no traceback."""
    files, overrides = run_config()
    proc = run(["--model=DIN", "--dataset=ml-tiny", "--epochs=abc"] + arguments(files, overrides), tmp_path)
    message = one_error_block(proc)
    assert "--epochs is given twice on the command line ('abc', then '2'): give each key once." in message
    # The same value twice is one value.
    monkeypatch.setattr(sys, "argv", ["run_recbole_cela.py", "--epochs=3", "--epochs=3"])
    _, config = build_config("DIN", "ml-tiny", files, overrides)
    assert config["epochs"] == 3


# ----------------------------------------------------------------------------- data
def test_missing_source_folder_names_source_path_first(tmp_path):
    """amazon-sports' config with a source folder that does not exist: the first line names
    source_path, the folder and the form's files; the optional feature file comes after."""
    proc = run(["--model=DIN", "--dataset=amazon-sports", f"--source_path={tmp_path / 'nowhere'}",
                f"--data_path={tmp_path / 'dataset'}", f"--checkpoint_dir={tmp_path / 'saved'}"], tmp_path)
    message = one_error_block(proc)
    first, *rest = message.splitlines()
    assert re.fullmatch(r"error: source_path '.*nowhere' does not exist: source_format 'sequence' reads "
                        r"'user_sequence.txt', 'item_text.tsv' from it\.", first), message
    assert "item_attributes.tsv" not in first and "'item_attributes.tsv'" in rest[-1]
    assert "item feature" not in message


CONVERT = """
import logging, sys, os, time
from recbole_cela.data import prepare_dataset
logging.basicConfig(level=logging.INFO, format="%(message)s")
while not os.path.exists(sys.argv[2]):  # both processes start converting together
    time.sleep(0.01)
prepare_dataset("ml-100k", "recbole", None, sys.argv[1])
"""


def test_runs_that_meet_a_new_dataset_at_once_convert_it_once(tmp_path):
    """Two processes convert ml-100k into one folder at the same moment: one converts, the other
    waits for it and reuses its files."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(tmp_path / "dataset"), str(go)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    go.write_text("")
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        outputs.append(out)
    assert sum("Converting 'ml-100k'" in out for out in outputs) == 1, outputs
    assert sum("was converted by another process" in out or "up to date" in out for out in outputs) == 1, outputs
    assert os.listdir(tmp_path / "dataset") == ["ml-100k"]  # no lock left


# ----------------------------------------------------------------------------- Ctrl-C
def interrupt_in_align(args, tmp_path, log, how):
    """Start the runner and, while it builds the alignment stage, send Ctrl-C's SIGINT: to its
    process group as a terminal does (``"terminal"``, the processes stopped meanwhile so that the
    stage is still running when it arrives) or to the runner's process alone (``"parent"``, for
    --nproc: the runner passes it on). Returns the exit status."""
    proc = launch(args, tmp_path, log, start_new_session=True)
    cela_dir = tmp_path / "saved" / "cela" / "ml-tiny"
    try:
        wait_for(lambda: cela_dir.is_dir() and any(p.name.startswith("align-") and p.suffix == ".lock"
                                                   for p in cela_dir.iterdir()), "the alignment stage", proc, log)
        if how == "terminal":
            os.killpg(proc.pid, signal.SIGSTOP)
            os.killpg(proc.pid, signal.SIGINT)
            os.killpg(proc.pid, signal.SIGCONT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        return ended(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("nproc, how", [(1, "terminal"), (2, "terminal"), (2, "parent")])
def test_ctrl_c_names_the_stage_keeps_finished_ones_and_exits_130(run_config, tiny_encoder, tmp_path, nproc, how):
    """Ctrl-C in the alignment stage: one line naming it and the folder of the finished stages, exit
    status 130, no traceback; the same command then reuses the backbone and finishes."""
    # "parent": the stage must outlast the runner's grace period before it passes SIGINT on.
    epochs = {"align_epochs": 50, "align_stopping_step": 50} if how == "parent" else {"align_epochs": 1}
    files, overrides = run_config(text_encoder=tiny_encoder, dap=False, epochs=1, max_text_length=32, **epochs)
    args = ["--model=CELA", "--dataset=ml-tiny"] + arguments(files, overrides)
    if nproc > 1:
        args += [f"--nproc={nproc}", f"--port={free_port()}"]
    log = tmp_path / "interrupted.log"
    status = interrupt_in_align(args, tmp_path, log, how)
    output = log.read_text()
    assert status == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    cela_dir = os.path.join(overrides["checkpoint_dir"], "cela", "ml-tiny")
    (line,) = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert line == (f"interrupted in stage [align]; finished stages are kept in {cela_dir}; "
                    "run the same command to resume.")
    assert not os.path.exists(overrides["results_dir"])
    if how == "parent":
        return
    proc = run(args, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (name,) = os.listdir(overrides["results_dir"])
    with open(os.path.join(overrides["results_dir"], name)) as f:
        stages = json.load(f)["stages"]
    assert stages["backbone"]["cached"] and not stages["align"]["cached"]

"""What CELA's and FLIP's trainers share: stage artifacts that are looked up or built, reported,
written by rank 0 only and read by every process.

A stage's artifact lives in ``<root>/<stage>-<key>``. Its key hashes the stage's *settings* and
its *upstream*: the data's content and the run id of every artifact it builds on. A stage's
settings are what the stage reads, gathered in one place (a trainer's ``settings(config)``, or
:func:`backbone_settings`), so the key follows from the settings by construction: a changed
setting gives a new key for its stage, and a re-made artifact a new run id, hence new keys, for
every stage after it. A stage writes into a temporary sibling folder, puts ``stage.json`` in it
last and renames it into place: a killed stage leaves only a ``.tmp-*`` entry, which is never
trusted.

Runs at once (several processes, machines sharing the folder): an artifact is built under its
key's lock (``<stage>-<key>.lock``, an ``flock`` the kernel releases when its holder exits or
dies), so an artifact is built by one live process at a time and never replaced: a run that needs
an artifact another process is building waits for it and reuses it. Only the holder of a key's
lock writes that key's ``.tmp-*`` entries, so a run removes the entries of any key whose lock is
free (left by a killed or failed run), never those a live process is writing.

Randomness: a stage that builds seeds itself first (:meth:`StagedTrainer.seed_stage`), as does the
final training, so what each one draws depends on the seed, not on which stages ran before it in
this process: a run that reuses cached stages trains exactly as the run that computed them.

Distributed runs: every process takes part in building a stage (training runs under DDP); whether
an artifact exists is rank 0's answer, broadcast; rank 0 alone locks and writes; the others wait
on a barrier and read what it wrote.
"""

import contextlib
import copy
import os
import shutil
import time
import uuid

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_cela.compat import plain
from recbole_cela.config import NON_SEMANTIC_KEYS
from recbole_cela.distributed import barrier, broadcast_object, is_main, world_size
from recbole_cela.fileio import (
    atomic_torch_save,
    atomic_write_json,
    data_fingerprint,
    fingerprint,
    read_json,
    try_lock,
    unlock,
)
from recbole_cela.utils import init_seed, interrupted_in, props_keys

MARKER = "stage.json"
TEMPORARY = ".tmp-"
WAIT_POLL_S = 1.0  # how often a run waiting for another process's artifact looks again

def backbone_settings(values, backbone):
    """Every resolved setting an ID-backbone stage depends on, from a run's resolved config
    ``values`` (``config.final_config_dict``, or a checkpoint's saved config): all of it minus the
    keys of the plugin model that builds on the backbone (those of ``props/<MODEL>.yaml``) and
    :data:`NON_SEMANTIC_KEYS`, with the backbone's name as ``model``. A new RecBole or backbone
    key is included without anyone listing it (``learner``, ``eval_step``, ``clip_grad_norm``,
    DCNV2's ``cross_layer_num``, ...)."""
    model = values.get("model")
    own = props_keys(model) if model != backbone else frozenset()
    settings = {k: plain(v) for k, v in values.items() if k not in own and k not in NON_SEMANTIC_KEYS}
    settings["model"] = backbone
    return settings


def backbone_config(config, backbone):
    """A copy of ``config`` naming ``backbone`` as its model: RecBole's Trainer logs and names
    checkpoints by it, and a checkpoint it writes is one of that model (``backbone_checkpoint``)."""
    out = copy.copy(config)
    out.final_config_dict = {**config.final_config_dict, "model": backbone}
    return out


def holdout_split(n, valid_ratio, seed, take=None, first=0):
    """Ids ``first`` .. ``first + n - 1`` shuffled with ``seed`` (only the first ``take`` of them
    when given) as (train, valid): ``valid_ratio`` of them, at least one, held out for early
    stopping. CELA's text stages split the items (the padding item 0 left out: ``first=1``),
    FLIP's pretraining a sample of the training rows."""
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take] + first
    n_valid = max(1, int(round(valid_ratio * len(ids))))
    return ids[n_valid:], ids[:n_valid]


def param_groups(model, encoder_lr=None, other_lr=None):
    """Optimizer groups of ``model``'s trainable weights: those of ``model.encoder`` (a pretrained
    text encoder) at ``encoder_lr``, every other one at ``other_lr``; None keeps the optimizer's
    learning rate, an empty group is left out. A pretrained encoder and freshly initialised layers
    beside it need rates orders of magnitude apart."""
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    parts = [([p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids], encoder_lr),
             ([p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids], other_lr)]
    return [{"params": params, **({"lr": lr} if lr else {})} for params, lr in parts if params]


class StageCache:
    def __init__(self, root):
        self.root = root
        self.locks = {}  # artifact path -> descriptor of its key's lock, while this process builds it

    def path(self, stage, key):
        return os.path.join(self.root, f"{stage}-{key}")

    @staticmethod
    def lock_file(path):
        return f"{path}.lock"

    def claim(self, path):
        """``"cached"`` when the artifact at ``path`` is complete; ``"build"`` when this process now
        holds its key's lock (leftover temporary entries of that key removed: they belong to no
        live process); else who holds the lock (building it now)."""
        if self.is_complete(path):
            return "cached"
        os.makedirs(self.root, exist_ok=True)
        fd = try_lock(self.lock_file(path))
        if fd is None:
            with contextlib.suppress(OSError):
                with open(self.lock_file(path), encoding="utf-8") as f:
                    return f.read() or "another process"
            return "another process"
        if self.is_complete(path):  # finished by the holder we have just followed
            unlock(self.lock_file(path), fd)
            return "cached"
        self.locks[path] = fd
        self.clear_temporary(path)
        return "build"

    def release(self, path):
        """Remove what building ``path`` left behind (everything, after a failure) and unlock it."""
        self.clear_temporary(path)
        unlock(self.lock_file(path), self.locks.pop(path))

    def clear_temporary(self, path):
        """Remove the ``.tmp-*`` entries of ``path``'s key: call it holding that key's lock."""
        prefix = os.path.basename(path) + TEMPORARY
        for name in os.listdir(self.root):
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def sweep(self):
        """Remove the temporary entries (and lock files) of every key no live process holds: what
        killed or failed runs left, under any key. A key another process holds is left alone."""
        if not os.path.isdir(self.root):
            return
        keys = {name.split(TEMPORARY)[0] for name in os.listdir(self.root) if TEMPORARY in name}
        keys |= {name[: -len(".lock")] for name in os.listdir(self.root) if name.endswith(".lock")}
        for key in sorted(keys):
            path = os.path.join(self.root, key)
            fd = try_lock(self.lock_file(path))
            if fd is not None:
                self.clear_temporary(path)
                unlock(self.lock_file(path), fd)

    @staticmethod
    def is_complete(path):
        return os.path.isfile(os.path.join(path, MARKER))

    @staticmethod
    def info(path):
        return read_json(os.path.join(path, MARKER))

    @contextlib.contextmanager
    def writing(self, path, info, start):
        """Yield a temporary folder; on success it becomes ``path`` with ``info`` in stage.json,
        plus ``time_s`` (what making the artifact cost since ``start``, so a run that reuses it
        still reports its cost end to end) and a fresh ``run_id`` (what downstream keys hash)."""
        tmp = f"{path}{TEMPORARY}{os.getpid()}"
        os.makedirs(tmp)
        try:
            yield tmp
            info = {**info, "time_s": round(time.time() - start, 2), "run_id": uuid.uuid4().hex}
            atomic_write_json(os.path.join(tmp, MARKER), info)
            if os.path.isdir(path):  # an incomplete folder (no marker): a killed older version's
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class StagedTrainer(Trainer):
    """RecBole's ``Trainer`` for a model that builds on stage artifacts (CELA's, FLIP's): the
    subclass's ``fit`` calls :meth:`stage` for each, then trains the model as RecBole does."""

    artifact_dir_key = None  # config key of the artifact root, e.g. "cela_dir"
    artifact_folder = None  # its default: <checkpoint_dir>/<artifact_folder>/<dataset>

    @classmethod
    def cache_root(cls, config):
        """The folder of this trainer's stage artifacts under ``config``."""
        default = os.path.join(config["checkpoint_dir"], cls.artifact_folder, config["dataset"])
        return config[cls.artifact_dir_key] or default

    def __init__(self, config, model):
        super().__init__(config, model)
        self.cache = StageCache(self.cache_root(config))
        self.stage_report = {}
        self.checkpoint_record = {}
        self.stage_loaders = ()  # the RecBole loaders a stage may draw from: set by ``fit``
        self.data_id = data_fingerprint(config["data_path"], config["dataset"])
        if is_main():
            self.cache.sweep()

    def seed_stage(self, seed=None):
        """Seed everything a stage draws from as a fresh run seeds it: the global generators with
        ``seed`` (default: the run's) + rank (as the runner does before it builds a model) and the
        shuffling generator of RecBole's loaders with ``seed`` (as ``data_preparation`` does). A
        stage's shuffling, dropout and initialisation then depend on the seed alone, not on how much
        randomness the stages before it drew in this process (none when they came from the cache)."""
        seed = self.config["seed"] if seed is None else seed
        init_seed(seed + self.config["local_rank"], self.config["reproducibility"])
        for loader in self.stage_loaders:
            generator = getattr(loader, "generator", None)
            if isinstance(generator, torch.Generator):
                generator.manual_seed(seed)

    def stage(self, name, settings, build, upstream=None, seed=None):
        """The artifact of stage ``name`` made from ``settings`` on top of ``upstream`` (the run
        ids it builds on; the data's fingerprint is always part of it); built when missing, under
        its key's lock, or waited for while another live process builds it.

        ``build()`` runs in every process, seeded (:meth:`seed_stage` with ``seed``, default the
        run's: a stage shared by runs of several seeds passes its own, which ``settings`` must
        hold), and returns ``(report,
        save)``: rank 0 calls ``save(folder)`` inside the cache's temporary folder. Returns
        ``(path, run_id)``."""
        with interrupted_in(f"stage [{name}]", self.cache.root):  # Ctrl-C: the runner names the stage
            return self._stage(name, settings, build, upstream, seed)

    def _stage(self, name, settings, build, upstream, seed):
        upstream = {"data": self.data_id, **(upstream or {})}
        key = fingerprint({"settings": settings, "upstream": upstream})
        path = self.cache.path(name, key)
        start = time.time()
        cached, waited = self._claim(name, path)
        if not cached:
            try:
                self.seed_stage(seed)
                report, save = build(path)
                if is_main():
                    info = {"stage": name, "key": key, "world_size": world_size(), "settings": plain(settings),
                            "upstream": upstream, "report": plain(report or {})}
                    with self.cache.writing(path, info, start) as tmp:
                        save(tmp)
                barrier()  # rank 0 has written the artifact
            finally:
                if is_main():
                    self.cache.release(path)
        info = self.cache.info(path)
        entry = {"time_s": round(time.time() - start, 2), "cached": cached, "artifact": path, **info.get("report", {})}
        if cached:  # what making the artifact cost
            entry["original_time_s"] = info.get("time_s")
        if waited is not None:  # built meanwhile by another process
            entry["waited_s"] = round(waited, 2)
        self.report(name, entry)
        return path, info["run_id"]

    def _claim(self, name, path):
        """(whether the artifact exists, seconds waited for another process to build it or None),
        agreed on by every process; when it does not exist, rank 0 now holds its key's lock."""
        start, waiting = time.time(), False
        while True:
            state = broadcast_object(self.cache.claim(path) if is_main() else None)
            if state in ("cached", "build"):
                return state == "cached", (time.time() - start if waiting else None)
            if not waiting:
                self.logger.warning(f"{self.config['model']} stage [{name}] is being built by {state}: "
                                    "waiting for it, to reuse it")
                waiting = True
            time.sleep(WAIT_POLL_S)

    def report(self, name, entry):
        self.stage_report[name] = entry
        state = "reused" if entry.get("cached") else "done"
        self.logger.info(set_color(f"{self.config['model']} stage [{name}] {state}", "green") + f": {plain(entry)}")

    def scratch_file(self, path):
        """A checkpoint file beside ``path`` that every process agrees on (rank 0 names it). Its
        folder starts with ``<stage>-<key>.tmp-``, so a killed run's one is cleared next time."""
        folder = broadcast_object(f"{path}.tmp-train-{uuid.uuid4().hex[:8]}")
        if is_main():
            os.makedirs(folder, exist_ok=True)
        barrier()
        return os.path.join(folder, "checkpoint.pth")

    def drop_scratch(self, checkpoint):
        barrier()  # every process has read it
        if is_main():
            shutil.rmtree(os.path.dirname(checkpoint), ignore_errors=True)

    def fit_id_model(self, model, config, train_data, valid_data, path):
        """Train ``model`` with RecBole's (distributed) ``Trainer`` under ``config``, keep its best
        epoch; returns ``(report, save)`` for :meth:`stage`: ``model.pth`` holds the state dict and
        the best valid result."""
        trainer = Trainer(config, model)
        trainer.saved_model_file = self.scratch_file(path)
        _, result = trainer.fit(train_data, valid_data, saved=True, show_progress=self.config["show_progress"])
        barrier()  # rank 0 has written the best epoch
        state = torch.load(trainer.saved_model_file, map_location="cpu")["state_dict"]
        self.drop_scratch(trainer.saved_model_file)
        model.load_state_dict(state)
        report = {"valid": plain(dict(result or {})), "epochs": len(trainer.train_loss_dict)}
        return report, lambda folder: atomic_torch_save({"state_dict": state, "valid": report["valid"]},
                                                        os.path.join(folder, "model.pth"))

    def fit_text_stage(self, trainer, train_loader, valid_loader):
        """Fit a text stage's ``trainer`` (every process) and load its best epoch back; the
        stage's report: diagnostics before and after, epochs, training throughput."""
        before = trainer.diagnostics(valid_loader)
        start = time.time()
        trainer.fit(train_loader, valid_loader, saved=True, show_progress=self.config["show_progress"])
        fit_time = time.time() - start
        barrier()  # rank 0 has written the best epoch
        trainer.load_best()
        after = trainer.diagnostics(valid_loader)
        self.drop_scratch(trainer.saved_model_file)
        epochs = len(trainer.train_loss_dict)
        return {"diagnostics_before": before, "diagnostics_after": after, "epochs": epochs,
                "items_per_s": train_loader.n_samples * epochs / max(fit_time, 1e-9)}

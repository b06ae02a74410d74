"""Cache of CELA's stage artifacts under ``saved/``, keyed by what produced them.

A stage's folder is ``<root>/<stage>-<key>``, where the key hashes the data fingerprint, the
settings the stage reads and the *run id* of the artifacts it builds on: a changed setting gives
a new key for that stage and so for every stage after it, and a re-made upstream artifact
invalidates everything built on the old one, so exactly the affected stages re-run. A stage
writes into a temporary sibling folder, puts ``stage.json`` in it last and renames it into place:
a killed stage leaves only a ``.tmp-*`` folder, which is never trusted (and is cleared by the
next run of that stage).
"""

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid

MARKER = "stage.json"


def fingerprint(obj):
    """Short stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def data_fingerprint(data_path, dataset):
    """Hash of the names and contents of the dataset's atomic files (not of their modification
    times: a re-converted or copied dataset with the same bytes keeps its cached stages).
    The converter's own stamp (``.prep.json``, which records input paths) is left out."""
    from recbole_cela.data.convert import file_digest

    files = sorted(f for f in os.listdir(data_path) if f.startswith(dataset + ".") and not f.endswith(".prep.json"))
    return fingerprint([(f, file_digest(os.path.join(data_path, f))) for f in files])


class StageCache:
    def __init__(self, root):
        self.root = root

    def path(self, stage, key):
        return os.path.join(self.root, f"{stage}-{key}")

    @staticmethod
    def is_complete(path):
        return os.path.isfile(os.path.join(path, MARKER))

    @staticmethod
    def run_id(path):
        return StageCache.info(path)["run_id"]

    @staticmethod
    def info(path):
        with open(os.path.join(path, MARKER)) as f:
            return json.load(f)

    @contextlib.contextmanager
    def writing(self, path, info, start=None):
        """Yield a temporary folder; on success it becomes ``path`` with ``info`` in stage.json.

        ``stage.json`` also records ``time_s``, the wall time it took to make the artifact (from
        ``start``, default: entering this block), so a run that reuses it can still report what
        the stage cost end to end."""
        start = time.time() if start is None else start
        os.makedirs(self.root, exist_ok=True)
        for name in os.listdir(self.root):  # leftovers of killed runs of this stage
            if name.startswith(os.path.basename(path) + ".tmp-"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(tmp)
        try:
            yield tmp
            info["time_s"] = round(time.time() - start, 2)
            info["run_id"] = uuid.uuid4().hex  # downstream stages key on this run, not on settings only
            with open(os.path.join(tmp, MARKER), "w") as f:
                json.dump(info, f, indent=2, default=str)
            if os.path.isdir(path):  # an incomplete folder (no marker) from an older version
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

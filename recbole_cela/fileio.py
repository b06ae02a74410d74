"""Atomic writes, file locks, output-folder checks and RecBole atomic-file reading, used by every
part of the plugin.

A write goes to a temporary file beside its target and is renamed over it only when complete, so
a process killed mid-write leaves the previous file (or nothing), never a truncated one. The
temporary file is created with mode 0666, so the process umask applies as for any new file (no
umask is read or changed here).

A lock (:func:`try_lock`) is an ``flock`` on a file the kernel releases when its holder exits or
dies: what one process builds for many (a stage artifact, a converted dataset) is built once, by a
live process, while the others wait for it.
"""

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import uuid

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so runs at once are not kept apart
    fcntl = None


def _temporary(path):
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """A file object (``"wb"`` or ``"w"``) whose contents replace ``path`` when the block ends
    without an error; on an error the temporary file is removed and ``path`` is untouched."""
    tmp = _temporary(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path, data):
    """Write ``data`` (str or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def atomic_write_json(path, obj):
    """``obj`` as indented JSON (numpy scalars and arrays as numbers and lists), atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj, path):
    """``torch.save`` atomically (default protocol: the one ``weights_only`` loading reads)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return path


def file_digest(path):
    """SHA-1 of a file's bytes (freshness by content: copying or touching a file changes nothing)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(obj):
    """Short stable hash of a JSON-able object (numpy values as numbers, anything else as text)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def data_fingerprint(data_path, dataset):
    """Hash of the names and contents of a dataset's atomic files (not of their modification
    times: a re-converted or copied dataset with the same bytes keeps what was built on it).
    The converter's own stamp (``.prep.json``, which records input paths) is left out."""
    files = sorted(f for f in os.listdir(data_path) if f.startswith(dataset + ".") and not f.endswith(".prep.json"))
    return fingerprint([(f, file_digest(os.path.join(data_path, f))) for f in files])


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def undecodable(line):
    """Where a line read with ``errors="surrogateescape"`` is not UTF-8: ``None`` when it is valid,
    else its first undecodable byte and where it is, e.g. ``"byte 0xe9 at character 12"``.

    ``surrogateescape`` turns each byte that is not part of valid UTF-8 into a lone surrogate
    (U+DC80..U+DCFF), which valid UTF-8 can never decode to, so finding one finds the byte.
    """
    found = _ESCAPED_BYTE.search(line)
    if found is None:
        return None
    return f"byte 0x{ord(found.group()) - 0xDC00:02x} at character {found.start() + 1}"


def read_text_lines(path):
    """(lines, numbers of the lines that are not UTF-8) of a text file, split as
    ``str.splitlines`` splits them (line ends removed, a final empty line dropped).

    Lines are numbered from 1. A line that is not valid UTF-8 is returned with its undecodable
    bytes as lone surrogates (see :func:`undecodable`): the caller decides to skip it or to stop,
    and can say where it is.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8").splitlines(), []
    except UnicodeDecodeError:
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        return lines, [number for number, line in enumerate(lines, 1) if undecodable(line)]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_atomic_file(path, keep_types=False):
    """A RecBole atomic file (tab separated, ``name:type`` header) as a DataFrame of strings.

    Columns are named without their type unless ``keep_types``; nothing is parsed, quoted or
    turned into NaN (an empty cell stays ``""``), so writing the frame back gives the same text.
    """
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    if not keep_types:
        frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def try_lock(path):
    """An exclusive lock on ``path`` (a file created for it) as an open descriptor, or None while
    another live process holds it. The holder removes the file when it lets go (:func:`unlock`);
    a process that locked a file just removed by its former holder sees so and tries again."""
    if fcntl is None:  # pragma: no cover
        return -1
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
            return fd
        os.close(fd)


def unlock(path, fd):
    """Let go of :func:`try_lock`'s lock: the file first, so nobody locks a file about to vanish."""
    if fd == -1:  # pragma: no cover
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    os.close(fd)


def unwritable(folder):
    """Why a run could not write files into ``folder``, or None when it can. Nothing is created:
    the check writes and removes a file in ``folder``, or in its nearest existing parent when it
    does not exist yet. Permission bits alone do not tell (root ignores them; an immutable folder
    or a read-only mount refuses root too)."""
    target = path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return "it exists and is not a folder" if path == target else f"'{path}' is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        return reason if path == target else f"cannot create it in '{path}' ({reason})"
    return None

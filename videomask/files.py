"""Files every stage writes the same way: atomic replacement, checksums, shard manifests."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import VideomaskError


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, text: str):
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def split_tallies(shards: list[dict]) -> dict:
    """``{split: {"samples": n, "shards": n}}`` of a manifest's shard list."""
    splits = {}
    for s in shards:
        d = splits.setdefault(s["split"], {"samples": 0, "shards": 0})
        d["samples"] += s["samples"]
        d["shards"] += 1
    return splits


def write_manifest(out: Path, manifest: dict, errors: list[dict] | None = None) -> dict:
    """``out/manifest.json`` (its ``splits`` tallied from its ``shards``) and, when given, ``out/errors.jsonl``,
    both atomically: a reader never sees half of either. Returns the manifest."""
    out = Path(out)
    manifest = {**manifest, "splits": split_tallies(manifest["shards"])}
    if errors is not None:
        atomic_write(out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors))
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


class LockedError(VideomaskError):
    """An output folder that another job holds (``FolderLock``)."""


class FolderLock:
    """An exclusive lock on an output folder (``FOLDER/.videomask.lock``, ``fcntl.flock``): a second build,
    scoring or training on the same folder is refused, naming the holder, instead of both writing into it.
    The kernel drops the lock when its process ends, however it ends (``kill -9`` too): a lock file left
    behind by a dead job is stale and taken over. POSIX systems only (where ``fcntl`` exists)."""

    NAME = ".videomask.lock"

    def __init__(self, folder: Path, what: str):
        self.folder, self.what, self.fd = Path(folder), what, None

    def acquire(self) -> "FolderLock":
        import fcntl
        import socket
        import time

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.folder} is in use: {holder}. Wait for that job to end (or stop it), or "
                              f"choose another output folder; nothing was changed") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.what} by pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()



def die_with_parent():
    """In a worker process: be killed when the parent dies, ``kill -9`` included (Linux ``PR_SET_PDEATHSIG``), so
    that no worker outlives the job it works for; elsewhere nothing (the pool's own shutdown still applies)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import multiprocessing
    import os

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():  # the parent died before the call above
        os._exit(1)


def loads_json(text):
    """``json.loads`` for untrusted text: a document nested too deep for Python's recursion limit is a
    ``json.JSONDecodeError`` (a ValueError, as for any malformed JSON), not a RecursionError."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deep", text if isinstance(text, str) else "", 0) from None

"""Durable files: temporary files on the storage volume, fsync, atomic rename, quarantine.

Nothing is answered success before its bytes are flushed to disk and renamed into place; the
directory entry is fsynced too, so a power cut or SIGKILL after the answer loses nothing.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar, Self

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


def safe_name(text: str, limit: int = 64) -> str:
    """A file-system-safe rendering of a UID (UIDs are already safe; anything else is masked)."""
    return _SAFE.sub("_", text)[:limit] or "_"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FileStore:
    """The storage folder: ``storage/<study>/<series>/<sop>.<sha16>.dcm`` plus ``.tmp/``."""

    def __init__(self, storage_dir: Path, quarantine_dir: Path) -> None:
        self.root = storage_dir
        self.quarantine_root = quarantine_dir
        self.tmp = storage_dir / ".tmp"
        for folder in (self.root, self.tmp, self.quarantine_root):
            folder.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study: str, series: str, sop: str, sha256: str) -> str:
        return f"{safe_name(study)}/{safe_name(series)}/{safe_name(sop)}.{sha256[:16]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def commit(self, temp: Path, relative: str) -> Path:
        """Flush ``temp`` and rename it to ``relative`` (same file system: atomic)."""
        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_file(temp)
        os.replace(temp, final)
        fsync_dir(final.parent)
        return final

    def new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def sweep_tmp(self, older_than: float) -> int:
        """Remove files in ``.tmp`` untouched for ``older_than`` seconds; returns how many.

        Nothing in ``.tmp`` is ever referenced by the index (a file is renamed out of it before it
        is indexed), so what stays there is what a killed process or an aborted transfer left. The
        age limit keeps the files of another receiver sharing this storage volume that are still
        being received (each received fragment touches the file).
        """
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # removed meanwhile (committed, or swept by another receiver)
                continue
        return removed

    def quarantine(self, temp: Path | None, data: bytes | None, reason: str, details: dict) -> Path:
        """Keep the input with its reason beside it: ``quarantine/<date>/<id>.dcm`` + ``.json``."""
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        folder = self.quarantine_root / day
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{dt.datetime.now(dt.UTC).strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}.dcm"
        if temp is not None and temp.exists():
            fsync_file(temp)
            os.replace(temp, target)
        else:
            with target.open("wb") as fh:
                fh.write(data or b"")
                fh.flush()
                os.fsync(fh.fileno())
        sidecar = target.with_suffix(".json")
        with sidecar.open("w", encoding="utf-8") as fh:
            json.dump({"reason": reason, **details}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(folder)
        return target


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class SpoolFile:
    """The file a data set is received into from the network; a full disk does not break it.

    A drop-in for the ``tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=...)`` that
    pynetdicom opens (in ``tempfile.tempdir``, the storage volume's ``.tmp``) to receive a C-STORE
    data set in chunks. With the plain temporary file, a write on a full volume raises inside
    pynetdicom's network thread: the association dies and the sender sees an abort, not a status.
    Here the failure is remembered, the bytes written so far are given back to the volume, later
    fragments are discarded and the transfer completes; the store then answers 0xA700
    (:meth:`failure`), and the sender may retry later.
    """

    _failures: ClassVar[dict[str, int]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, mode: str = "w+b", *, suffix: str | None = None, prefix: str | None = None,
                 dir: str | None = None, **_ignored) -> None:  # NamedTemporaryFile's keywords
        if "b" not in mode:
            raise ValueError("SpoolFile receives bytes")
        fd, self.name = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=dir)
        self._fh = os.fdopen(fd, "wb", buffering=0)  # unbuffered: a failure is seen by the write that failed
        self.failed: int | None = None

    @property
    def file(self) -> SpoolFile:  # pynetdicom calls ``.file.flush()``
        return self

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view and self.failed is None:
            try:
                view = view[self._fh.write(view):]  # a short write on a nearly full volume: write the rest
            except OSError as exc:
                self._fail(exc)
        return size

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                self._fail(exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in DISK_FULL:
            raise exc
        self.failed = exc.errno
        with self._lock:
            self._failures[os.path.abspath(self.name)] = exc.errno
        try:  # give the space back at once; the bytes are useless now
            os.truncate(self.name, 0)
        except OSError:
            pass

    @classmethod
    def failure(cls, path: Path | str) -> int | None:
        """The errno that stopped receiving ``path`` (forgotten once asked), or None."""
        with cls._lock:
            return cls._failures.pop(os.path.abspath(path), None)

    @classmethod
    def discard(cls, spool: object | None) -> None:
        """Close and remove a receive file nobody will store (cut short, or not a storage request),
        forgetting any failure it recorded. Already moved into storage or removed: nothing to do."""
        if spool is None:
            return
        try:
            spool.close()  # type: ignore[attr-defined]
        except OSError:
            pass
        name = getattr(spool, "name", None)
        if name is None:
            return
        cls.failure(name)
        try:
            os.unlink(name)
        except OSError:
            pass

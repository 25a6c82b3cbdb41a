"""Durable files: temporary files on the storage volume, fsync, atomic rename, quarantine.

Nothing is answered success before its bytes are flushed to disk and renamed into place; the
directory entry is fsynced too, so a power cut or SIGKILL after the answer loses nothing.

No received value ever names a file or folder. A stored instance lives at
``storage/<h(study)>/<h(series)>/<h(sop)>.<sha256>.dcm``, where ``h`` is the first 32 hex digits of
the SHA-256 of the UID (:func:`derived_name`) and ``sha256`` is the content's full digest: every
name is lower-case hex, so no UID - ``..``, ``.tmp``, ``/etc``, a NUL, 200 characters - can reach
the data folder's parent, add a top-level entry, or land in ``storage/.tmp`` (the only non-hex
name in ``storage/``); the received UIDs are kept in the index. The full content digest in the
name means that two files with one name have the same bytes, so a rename over an existing file
never replaces one content by another. Quarantined inputs are named by the product
(``quarantine/<date>/<time>-<random>.dcm``).

Between the rename into storage and the index row, a *commit record* in ``storage/.tmp``
(``<random>.commit``: the relative path, content digest, receipt and the owning process) says
what is being stored; it is removed once the instance is indexed. A receiver killed in between
leaves it behind, and the next start indexes the file (:func:`process_alive` decides whose
records may be taken over: only a provably dead process's).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

COMMIT_SUFFIX = ".commit"
"""Commit records in ``storage/.tmp``; the temporary-file sweep never removes them."""


def derived_name(value: str) -> str:
    """The name a received UID's folder or file gets: 32 hex digits of its SHA-256 (128 bits).

    Derived, never the received text, so no value can name a path; the same UID always maps to the
    same name, so a study's instances share one folder."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def printable(value: object, limit: int = 96) -> str:
    """A received value safe for a log line, an index column or an error comment: control and
    non-ASCII characters escaped (``\\x00``), cut to ``limit`` characters. For UIDs and AE titles
    only, never for patient data."""
    text = value if isinstance(value, str) else repr(value)
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


# ---------------------------------------------------------------- process identity
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def process_identity() -> str:
    """This process, provably: ``host/boot id/pid/start time``. A pid alone may be reused."""
    pid = os.getpid()
    return f"{os.uname().nodename}/{_boot_id() or '-'}/{pid}/{_start_time(pid) or '-'}"


def process_alive(identity: str | None) -> bool | None:
    """Whether the process ``identity`` (:func:`process_identity`) still runs: ``False`` only
    when provably gone (same host, and another boot, or no such pid, or a pid started later),
    ``None`` when it cannot be told (another host sharing the index or the volume)."""
    if not identity:
        return None
    try:
        host, boot, pid_text, started = identity.rsplit("/", 3)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != os.uname().nodename:
        return None
    if boot != "-" and _boot_id() not in (None, boot):
        return False
    if pid == os.getpid():
        return started == (_start_time(pid) or "-")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now_started = _start_time(pid)
    reused = started != "-" and now_started is not None and now_started != started  # by a later process
    return not reused


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
    """The storage folder: ``storage/<h(study)>/<h(series)>/<h(sop)>.<sha256>.dcm`` plus ``.tmp/``."""

    def __init__(self, storage_dir: Path, quarantine_dir: Path) -> None:
        self.root = storage_dir
        self.quarantine_root = quarantine_dir
        self.tmp = storage_dir / ".tmp"
        for folder in (self.root, self.tmp, self.quarantine_root):
            folder.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study: str, series: str, sop: str, sha256: str) -> str:
        """Where an instance is stored, relative to ``storage/``: derived names only (module doc)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("not a SHA-256 hex digest")
        return f"{derived_name(study)}/{derived_name(series)}/{derived_name(sop)}.{sha256}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def commit(self, temp: Path, relative: str) -> Path:
        """Flush ``temp`` and rename it to ``relative`` (same file system: atomic)."""
        final = self.root / relative
        if final.parent.parent.parent != self.root:
            raise ValueError("a stored instance is two folders below storage/")
        created = [folder for folder in (final.parent.parent, final.parent) if not folder.is_dir()]
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_file(temp)
        os.replace(temp, final)
        fsync_dir(final.parent)
        for folder in reversed(created):  # a new study / series folder's own entry is durable too
            fsync_dir(folder.parent)
        return final

    # ---------------------------------------------------------------- commit records
    def begin_commit(self, relative: str, record: dict[str, Any]) -> Path:
        """Write the commit record of ``relative`` (module doc) before it is renamed into place."""
        name = uuid.uuid4().hex
        marker, writing = self.tmp / f"{name}{COMMIT_SUFFIX}", self.tmp / f"{name}.part"
        try:
            with writing.open("x", encoding="utf-8") as fh:
                json.dump({"path": relative, **record}, fh)
            # renamed complete: a kill while writing leaves a ``.part`` (swept like any partial
            # transfer), never a cut-short record that recovery would have to wait out
            os.replace(writing, marker)
        except BaseException:  # e.g. a full volume: no record is left behind
            writing.unlink(missing_ok=True)
            raise
        return marker

    @staticmethod
    def end_commit(marker: Path) -> None:
        marker.unlink(missing_ok=True)

    def commit_records(self) -> list[Path]:
        try:
            return sorted(p for p in self.tmp.iterdir() if p.name.endswith(COMMIT_SUFFIX))
        except FileNotFoundError:
            return []

    @staticmethod
    def read_commit(marker: Path, owner_dead: Callable[[str | None], bool]) -> dict[str, Any] | None:
        """The record of ``marker`` when ``owner_dead(record["owner"])`` and no other process is
        taking it over right now (an exclusive ``flock`` held until the caller closes the returned
        dict's ``_fd``), else None. An unreadable record (being written, or cut short by a power
        cut) asks ``owner_dead(None)`` and gives ``{"_fd": ...}``."""
        try:
            fd = os.open(marker, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # taken over and removed meanwhile
                raise BlockingIOError
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as fh:
                try:
                    record = json.load(fh)
                except ValueError:
                    record = {}
            if not isinstance(record, dict):
                record = {}
            if not owner_dead(record.get("owner")):
                raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        record["_fd"] = fd
        return record

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
            if entry.name.endswith(COMMIT_SUFFIX):  # a stored instance's record: its owner or the next start clears it
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # removed meanwhile (committed, or swept by another receiver)
                continue
        return removed

    def quarantine(self, temp: Path | None, data: bytes | None, reason: str, details: dict[str, Any]) -> Path:
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


class _Closable(Protocol):
    def close(self) -> None: ...


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

    def __init__(
        self,
        mode: str = "w+b",
        *,
        suffix: str | None = None,
        prefix: str | None = None,
        dir: str | None = None,
        **_ignored: object,
    ) -> None:  # NamedTemporaryFile's keywords
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
                view = view[self._fh.write(view) :]  # a short write on a nearly full volume: write the rest
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

    def __exit__(self, *exc_info: object) -> None:
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
    def discard(cls, spool: _Closable | None) -> None:
        """Close and remove a receive file nobody will store (cut short, or not a storage request),
        forgetting any failure it recorded. Already moved into storage or removed: nothing to do."""
        if spool is None:
            return
        try:
            spool.close()
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

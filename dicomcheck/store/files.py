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

Between the rename into storage and the index row, a *journal entry* says what is being stored
(:class:`Journal`): an empty file beside the stored one whose name holds the content digest, the
association, the time of receipt and the receiver. It is created before the rename, and the one
fsync of the series folder that makes the rename durable makes it durable too; then the instance
is answered, and its index rows are written behind the answer, in batches; the entry is removed
once they are committed. A receiver killed (or a machine cut off) in between leaves it behind,
and the next start indexes the file (:func:`process_alive` decides whose journals may be taken
over: only a provably dead process's). Entries also hold back the decision of their study
(``Receiver.settle_once``). *Commit records* (``storage/.tmp/<random>.commit``, JSON) are what
receivers before the journal left; they are still recovered.
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
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

COMMIT_SUFFIX = ".commit"
"""Commit records in ``storage/.tmp`` (before the journal); the temporary-file sweep never removes them."""
JOURNAL_DIR = ".journal"
"""``storage/.journal/<receiver>/``: the journals of the receivers (:class:`Journal`)."""
PENDING_SUFFIX = ".pending"
"""Journal entries beside the stored files (:class:`JournalEntry`)."""
_ENTRY = re.compile(r"([0-9a-f]{32})\.([0-9a-f]{64})\.(-|[0-9]{1,19})\.([0-9]{1,19})\.([0-9a-f]{32})\.pending")
_MARKER = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{32}")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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


_FLUSHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dicomcheck-fsync")


def flush_soon(path: Path) -> Future[None]:
    """Start the fsync of ``path`` on another thread (it waits on the disk, not on the interpreter),
    so that the header is parsed and checked meanwhile; :meth:`FileStore.commit` waits for it."""
    return _FLUSHER.submit(fsync_file, path)


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
        self._durable: set[str] = set()  # series folders whose entries this process made durable (cut at 4096)
        for folder in (self.root, self.tmp, self.quarantine_root):
            folder.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study: str, series: str, sop: str, sha256: str) -> str:
        """Where an instance is stored, relative to ``storage/``: derived names only (module doc)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("not a SHA-256 hex digest")
        return f"{derived_name(study)}/{derived_name(series)}/{derived_name(sop)}.{sha256}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def commit(
        self, temp: Path, relative: str, flushed: Future[None] | None = None, created: list[Path] | None = None
    ) -> Path:
        """Flush ``temp`` (or wait for ``flushed``, its fsync already under way: :func:`flush_soon`)
        and rename it to ``relative`` (same file system: atomic); the series folder is fsynced
        (with the journal entry made in it before), and the folders :meth:`prepare` ``created``
        are made durable in their parents."""
        final = self.root / relative
        if created is None:
            created = self.prepare(relative)
        if flushed is None:
            fsync_file(temp)
        else:
            flushed.result()
        os.replace(temp, final)
        fsync_dir(final.parent)
        for folder in reversed(created):  # a new study / series folder's own entry is durable too
            fsync_dir(folder.parent)
        if created:
            if len(self._durable) >= 4096:
                self._durable.clear()
            self._durable.add(relative.rsplit("/", 1)[0])
        return final

    # ---------------------------------------------------------------- commit records (before the journal)
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

    def journal(self, owner: str) -> Journal:
        """A new journal of this receiver (``owner``: :func:`process_identity`), its folder durable."""
        return Journal.create(self.root, owner)

    def journals(self) -> list[Journal]:
        """Every receiver's journal on this storage volume (live and dead owners)."""
        return Journal.all(self.root)

    def prepare(self, relative: str) -> list[Path]:
        """Create the study and series folders of ``relative`` (its journal entry goes there before
        the file); returns the folders whose own entries :meth:`commit` must make durable: both,
        unless a store of this process did already (whoever created them, another thread or
        process may not have fsynced their parents yet)."""
        final = self.root / relative
        if final.parent.parent.parent != self.root:
            raise ValueError("a stored instance is two folders below storage/")
        if relative.rsplit("/", 1)[0] in self._durable:
            return []
        final.parent.mkdir(parents=True, exist_ok=True)
        return [final.parent.parent, final.parent]

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


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One stored (or re-received) instance answered but not yet indexed: an empty file beside the
    stored one, ``<h(sop)>.<sha256>.<association or ->.<microseconds>.<receiver>.pending``."""

    folder: str
    """The series folder, relative to ``storage/`` (``<h(study)>/<h(series)>``)."""
    name: str
    relative: str
    """The stored file, relative to ``storage/`` (derived names only)."""
    association_id: int | None
    received_at: dt.datetime
    """Time of receipt (microseconds): with the association, what makes a replayed receipt idempotent."""
    receiver: str
    """The journal (:class:`Journal`) of the receiver that wrote it."""

    @property
    def study_key(self) -> str:
        """:func:`derived_name` of the study's UID."""
        return self.folder[:32]

    @classmethod
    def parse(cls, folder: str, name: str) -> JournalEntry | None:
        match = _ENTRY.fullmatch(name)
        if match is None:
            return None
        sop, sha256, association, micros, receiver = match.groups()
        return cls(
            folder,
            name,
            f"{folder}/{sop}.{sha256}.dcm",
            None if association == "-" else int(association),
            _EPOCH + dt.timedelta(microseconds=int(micros)),
            receiver,
        )


class Journal:
    """One receiver's journal of the instances it answered and has not indexed yet.

    The entries are empty files in the stored files' own series folders (:class:`JournalEntry`),
    created before the rename into storage: the one fsync of that folder that makes the rename
    durable makes the entry durable too, so an entry costs no flush of its own. The journal's folder
    ``storage/.journal/<receiver>/`` holds the ``owner`` (the process, :func:`process_identity`)
    and one empty *folder marker* ``<h(study)>.<h(series)>`` per series folder that may hold its
    entries (made durable once per series, when the receiver first stores into it): the list a
    recovery walks. An entry whose stored file is absent was never answered, and is dropped.
    """

    OWNER = "owner"

    def __init__(self, root: Path, folder: Path, owner: str | None) -> None:
        self.root = root  # storage/
        self.folder = folder
        self.owner = owner
        self.receiver = folder.name
        self._markers: dict[str, int] = {}  # folder marker -> entries of ours there not yet removed
        self._idle_since: dict[str, float] = {}  # folder markers with no entry of ours, since when
        self._lock = threading.Lock()

    @classmethod
    def create(cls, root: Path, owner: str) -> Journal:
        journals = root / JOURNAL_DIR
        journals.mkdir(parents=True, exist_ok=True)
        folder = journals / uuid.uuid4().hex
        writing = journals / f"{folder.name}.part"
        writing.mkdir()
        with (writing / cls.OWNER).open("x", encoding="utf-8") as fh:
            fh.write(owner)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(writing)
        os.replace(writing, folder)  # complete with its owner, or not there at all
        fsync_dir(journals)
        fsync_dir(root)
        return cls(root, folder, owner)

    @classmethod
    def all(cls, root: Path) -> list[Journal]:
        """Every receiver's journal on the storage folder ``root`` (live and dead owners)."""
        try:
            folders = sorted(p for p in (root / JOURNAL_DIR).iterdir() if len(p.name) == 32 and p.is_dir())
        except FileNotFoundError:
            return []
        found = []
        for folder in folders:
            try:
                owner: str | None = (folder / cls.OWNER).read_text(encoding="utf-8")
            except FileNotFoundError:
                continue  # removed meanwhile (its owner ended)
            except (OSError, UnicodeDecodeError):
                owner = None
            found.append(cls(root, folder, owner))
        return found

    def add(self, relative: str, association_id: int | None, received_at: dt.datetime) -> JournalEntry:
        """Create the entry of ``relative`` (its series folder must exist); durable only once that
        folder is fsynced (:meth:`FileStore.commit` does). The folder marker is durable on return."""
        series, stored = relative.rsplit("/", 1)
        marker = series.replace("/", ".")
        with self._lock:
            if marker not in self._markers:
                os.close(os.open(self.folder / marker, os.O_WRONLY | os.O_CREAT, 0o600))
                fsync_dir(self.folder)
                self._markers[marker] = 0
            self._markers[marker] += 1
            self._idle_since.pop(marker, None)
        micros = (received_at - _EPOCH) // dt.timedelta(microseconds=1)
        association = "-" if association_id is None else str(association_id)
        name = f"{stored.removesuffix('.dcm')}.{association}.{micros}.{self.receiver}{PENDING_SUFFIX}"
        os.close(os.open(self.root / series / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        entry = JournalEntry.parse(series, name)
        assert entry is not None  # made to match
        return entry

    def remove(self, entry: JournalEntry) -> None:
        """The entry's rows are committed: forget it (no fsync: an entry that comes back after a
        power cut is replayed idempotently)."""
        try:
            os.unlink(self.root / entry.folder / entry.name)
        except FileNotFoundError:
            pass
        marker = entry.folder.replace("/", ".")
        with self._lock:
            if self._markers.get(marker):
                self._markers[marker] -= 1
                if not self._markers[marker]:
                    self._idle_since[marker] = time.monotonic()

    def prune(self, idle: float) -> None:
        """Remove the folder markers of series folders with no entry of ours for ``idle`` seconds
        (the list a recovery walks stays short; a marker that comes back after a power cut only
        costs that recovery a look at one folder)."""
        cutoff = time.monotonic() - idle
        with self._lock:
            for marker, since in list(self._idle_since.items()):
                if since <= cutoff:
                    del self._idle_since[marker], self._markers[marker]
                    try:
                        os.unlink(self.folder / marker)
                    except FileNotFoundError:
                        pass

    def series_folders(self) -> list[str]:
        """The series folders (``<h(study)>/<h(series)>``) this journal's entries may be in."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [name.replace(".", "/") for name in names if _MARKER.fullmatch(name)]

    def entries(self, *, anyone: bool = False) -> list[JournalEntry]:
        """This journal's entries (``anyone``: every receiver's entries in its series folders)."""
        found = []
        for series in self.series_folders():
            try:
                names = os.listdir(self.root / series)
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(PENDING_SUFFIX) and (anyone or name.endswith(f".{self.receiver}{PENDING_SUFFIX}")):
                    entry = JournalEntry.parse(series, name)
                    if entry is not None:
                        found.append(entry)
        return found

    def age(self, entry: JournalEntry) -> float:
        """Seconds since the entry was created (0 when it is gone)."""
        try:
            return time.time() - (self.root / entry.folder / entry.name).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def lock(self) -> int | None:
        """An exclusive ``flock`` on the folder (one process takes a dead receiver's journal over at
        a time): its descriptor, to be closed by the caller, or None when another holds it."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def discard(self) -> bool:
        """Remove the journal if it has no entry (its owner ended, or it was replayed); True if removed."""
        if self.entries():
            return False
        try:
            for name in os.listdir(self.folder):
                os.unlink(self.folder / name)
            self.folder.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


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
    _receiving: ClassVar[weakref.WeakValueDictionary[str, SpoolFile]] = weakref.WeakValueDictionary()
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
        # the SHA-256 of the bytes as they stream in (hashlib releases the GIL on large buffers), so
        # the store does not read the file again to name it by its content
        self._sha256 = hashlib.sha256()
        self._size = 0
        self.taken = False  # handed to a store (:meth:`digest`), which moves or removes the file
        with self._lock:
            self._receiving[os.path.abspath(self.name)] = self

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
                written = self._fh.write(view)  # a short write on a nearly full volume: write the rest
            except OSError as exc:
                self._fail(exc)
            else:
                self._sha256.update(view[:written])
                self._size += written
                view = view[written:]
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
    def digest(cls, path: Path | str) -> tuple[str, int] | None:
        """The SHA-256 and size of the bytes written so far to the receive file ``path`` (a complete
        message: nothing more is written; only this object writes it), or None: not received
        through a :class:`SpoolFile`, or cut short by a full volume (then the caller hashes the
        file). The file is the caller's from then on (stored, quarantined or removed by it)."""
        key = os.path.abspath(path)
        with cls._lock:
            spool = cls._receiving.pop(key, None)
        if spool is None or spool.failed is not None:
            return None
        spool.taken = True
        return spool._sha256.hexdigest(), spool._size

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
        if getattr(spool, "taken", False):  # stored, quarantined or removed by the store already
            return
        cls.digest(name)
        try:
            os.unlink(name)
        except OSError:
            pass

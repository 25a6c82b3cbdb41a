"""Received file -> facts -> durable storage -> index; and stable study -> decision.

Shared by the DICOM receiver (``scp``) and anything else that ingests files. The C-STORE handler
only maps a :class:`StoreResult` to a DIMSE status.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

from sqlalchemy.exc import DBAPIError, DisconnectionError

from . import __version__, metrics
from .analysis import decide_study, group_by_study
from .config import Settings
from .decision_record import StudyDecisionUnderPolicy
from .enums import Role
from .evidence.retention import retention_tick
from .extract import extract_facts
from .knowledge import builtin_knowledge
from .registry import Device as RegistryDevice
from .registry import Registry, RegistryFile
from .reports_in.sr import import_sr_reports
from .rules import RULES_VERSION
from .sources import ResourceLimitExceeded, read_file_header
from .store.access import Access
from .store.engine import make_engine, upgrade
from .store.files import (
    DISK_FULL,
    FileStore,
    Journal,
    JournalEntry,
    SpoolFile,
    derived_name,
    flush_soon,
    fsync_dir,
    printable,
    process_alive,
    process_identity,
    sha256_file,
)
from .store.index import Index, NewInstance, ReceiptInfo
from .store.retention import storage_refusal
from .store.returns import EvidenceReturnRecord, EvidenceReturns
from .store.sessions import Sessions

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """DIMSE statuses the receiver answers (PS3.4 Annex B, Storage Service Class)."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    """Refused: out of resources (disk full, index unavailable): the sender may retry."""
    CANNOT_UNDERSTAND = 0xC000
    """Error: the dataset cannot be parsed. Quarantined."""
    MISSING_UIDS = 0xC001
    """Error: Study / Series / SOP Instance UID missing. Quarantined."""
    UID_MISMATCH = 0xC002
    """Error: the dataset's SOP Instance / Class UID differs from the C-STORE request. Quarantined."""
    INVALID_UID = 0xC003
    """Error: the Study, Series or SOP Instance UID breaks PS3.5 9.1 (over 64 characters, a character
    other than digits and '.', an empty component). Quarantined with the reason (:func:`uid_problem`)."""


UID_ATTRIBUTES = (("StudyInstanceUID", 0x0020000D), ("SeriesInstanceUID", 0x0020000E), ("SOPInstanceUID", 0x00080018))
_DIGITS_AND_DOTS = frozenset("0123456789.")


def uid_problem(value: str) -> str | None:
    """What makes ``value`` (trailing NUL / space padding already removed) no UID, or None.

    PS3.5 9.1 hard rules only: at most 64 characters, digits and '.' only, no empty component
    (so no leading, trailing or doubled '.'). A component with a leading zero breaks 9.1 too, but
    real vendors emit it and it harms nothing here (paths are derived, never the UID): accepted.
    """
    if not value:
        return "empty"
    if len(value) > 64:
        return f"{len(value)} characters, more than 64"
    if not _DIGITS_AND_DOTS.issuperset(value):
        return "characters other than digits and '.'"
    if "" in value.split("."):
        return "an empty component"
    return None


def received_uid(ds, tag: int) -> str | None:
    """The value of a UID element as it arrived, minus the trailing NUL / space padding; None when
    absent. Read from the raw bytes when pydicom has not converted it yet (its conversion and the
    analyzer's text reader drop NULs inside the value and strip spaces, which must not make a
    broken UID look valid)."""
    try:
        element = ds.get_item(tag)
    except (KeyError, AttributeError):
        return None
    if element is None:
        return None
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")  # one character per byte: every byte is judged
    elif isinstance(value, str):
        text = value
    else:  # several values (backslash-separated): no valid UID
        text = "\\".join(str(v) for v in value)
    return text.rstrip("\0 ")


def uid_refusal(ds) -> str | None:
    """The reason to refuse a data set whose Study / Series / SOP Instance UID is no UID, or None."""
    for keyword, tag in UID_ATTRIBUTES:
        value = received_uid(ds, tag)
        if not value and keyword == "SOPInstanceUID":  # the analyzer falls back on the file meta's
            value = received_uid(getattr(ds, "file_meta", None) or {}, 0x00020003)
        if value is None or value == "":
            continue  # missing: answered 0xC001 by the caller
        problem = uid_problem(value)
        if problem is not None:
            return f"invalid {keyword}: {problem}: {printable(value, 80)}"
    return None


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: StoreStatus
    comment: str | None = None
    duplicate: bool = False


COMMIT_STALE_AFTER = 600.0
"""Seconds after which a journal entry of this very process that its index writer no longer holds
(the rows could not be written) is replayed by the periodic sweep."""
UNREADABLE_COMMIT_AFTER = 60.0
"""Seconds after which a commit record without a readable owner (a power cut while it was written)
is removed: its file, if stored at all, was never acknowledged."""
_STORED = re.compile(r"[0-9a-f]{32}/[0-9a-f]{32}/[0-9a-f]{32}\.[0-9a-f]{64}\.dcm")


def temp_grace(settings: Settings) -> float:
    """How long a file in ``storage/.tmp`` may sit untouched and still be a live transfer.

    A receiving file is touched by every fragment (gaps end with the network timeout) and renamed
    out right after it is parsed and hashed; an hour, or twice the longest timeout, is far beyond.
    """
    return max(3600.0, 2 * max(settings.acse_timeout, settings.dimse_timeout, settings.network_timeout))


@dataclass(frozen=True, slots=True)
class _Queued:
    row: NewInstance
    entry: JournalEntry
    number: int


class IndexWriter:
    """The one thread of a receiver that writes index rows, behind the answers, in batches.

    ``Receiver.store_file`` makes the file and its journal entry durable, answers, and queues the
    row here; the thread takes everything queued (up to :data:`BATCH`) into one transaction
    (``Index.add_instances``) and then removes the batch's journal entries. An index that cannot
    be reached (a connection or lock error) is retried every few seconds with the rows kept, and
    :attr:`failing` makes new instances refused (0xA700) meanwhile; a row the index refuses (any
    other error) is logged and left to its journal entry (replayed by the sweep, and holding its
    study's decision back). At most :data:`BACKLOG` rows wait: a store beyond waits for room.
    """

    BATCH = 500
    BACKLOG = 5000
    RETRY_MAX = 5.0
    MARKER_IDLE = 60.0
    """Seconds a series folder is kept in the journal's list after its last entry went (``Journal.prune``)."""
    LINGER = 0.1
    """Seconds the writer waits after a first row for more to join its batch (one transaction for all):
    rows are written behind the answers, so the wait costs no sender anything; a flush cuts it short."""

    def __init__(self, index: Index, journal: Journal) -> None:
        self.index = index
        self.journal = journal
        self.failing = False
        self._queue: deque[_Queued] = deque()
        self._names: set[str] = set()
        self._queued = 0  # numbers handed out
        self._finished = 0  # every row numbered up to this one is written (or left to its journal entry)
        self._condition = threading.Condition()
        self._running = threading.Event()  # cleared while held (tests): the rows stay queued
        self._hurry = 0  # flushes waiting: no lingering for more rows
        self._running.set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomcheck-index-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers
    def put(self, row: NewInstance, entry: JournalEntry) -> int:
        """Queue a row whose journal entry is durable; returns its number (for :meth:`flush`)."""
        with self._condition:
            while len(self._queue) >= self.BACKLOG and not self._stopping.is_set():
                self._condition.wait(1.0)
            self._queued += 1
            self._queue.append(_Queued(row, entry, self._queued))
            self._names.add(entry.name)
            self._condition.notify_all()
            return self._queued

    def flush(self, number: int | None = None, timeout: float | None = 60.0) -> bool:
        """Wait until row ``number`` (default: every row queued so far) is written; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            target = self._queued if number is None else number
            self._hurry += 1
            self._condition.notify_all()
            try:
                while self._finished < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._condition.wait(remaining)
                return True
            finally:
                self._hurry -= 1

    def holds(self, name: str) -> bool:
        """Whether the journal entry ``name`` is queued or being written by this writer."""
        with self._condition:
            return name in self._names

    @contextmanager
    def held(self) -> Iterator[None]:
        """Rows queued meanwhile stay queued (and their entries in the journal) until the block ends."""
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Write what is queued (unless the index is unreachable: the journal keeps it), then end."""
        self._stopping.set()
        self._running.set()
        with self._condition:
            self._condition.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping.is_set():
                    self._condition.wait()
                if not self._queue:
                    return
                linger = time.monotonic() + self.LINGER
                while len(self._queue) < self.BATCH and not (self._hurry or self._stopping.is_set()):
                    remaining = linger - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
            self._running.wait()
            with self._condition:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.BATCH))]
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - the thread must not die; the journal keeps the rows
                log.exception("index writer: %d row(s) left to the journal", len(batch))
            with self._condition:
                for queued in batch:
                    self._names.discard(queued.entry.name)
                self._finished = batch[-1].number
                self._condition.notify_all()

    def _write(self, batch: list[_Queued]) -> None:
        delay = 0.5
        while True:
            try:
                self.index.add_instances([queued.row for queued in batch])
            except (DBAPIError, DisconnectionError) as exc:
                if isinstance(exc, DBAPIError) and not _unavailable(exc):
                    self._refused(batch, exc)
                    return
                if not self.failing:
                    log.error(
                        "index unavailable (%s): %d instance(s) kept in the journal, new ones refused (0xA700)",
                        type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__,
                        len(batch),
                    )
                self.failing = True
                if self._stopping.wait(delay):  # stopping: the journal keeps them for the next start
                    return
                delay = min(2 * delay, self.RETRY_MAX)
                continue
            except Exception as exc:  # noqa: BLE001 - a row the index refuses
                self._refused(batch, exc)
                return
            if self.failing:
                log.warning("index available again")
            self.failing = False
            for queued in batch:
                self.journal.remove(queued.entry)
            self.journal.prune(self.MARKER_IDLE)
            return

    def _refused(self, batch: list[_Queued], exc: Exception) -> None:
        """One row (or more) the index refuses: write the others one by one; log the refused ones."""
        if len(batch) > 1:
            for queued in batch:
                self._write([queued])
            return
        row = batch[0].row
        log.error(
            "index refused instance %s (%s): left to the journal; its study is not decided until it is indexed",
            printable(row.facts.sop_instance_uid),
            type(exc).__name__,
        )


def _unavailable(exc: DBAPIError) -> bool:
    """A connection or lock problem (retry later), not a row the database refuses."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, InterfaceError) or exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


class Receiver:
    """The ingest service of one process: file store + index (+ the settle loop)."""

    def __init__(
        self, settings: Settings, *, node: str | None = None, read_only: bool = False, quiet_registry: bool = False
    ) -> None:
        """``read_only`` for commands that only read an existing index (``dicomcheck evidence`` from the
        index): no migration, no recovery and no ``.tmp`` sweep, which belong to a receiver that serves
        (and would otherwise run behind the back of the receivers sharing that index and volume).
        ``quiet_registry`` for the HTTP worker processes: the ``--devices`` file's changes of state are logged
        by the receiver that decides with it, once, not again by every worker."""
        self.settings = settings
        self.quiet_registry = quiet_registry
        self.node = node or settings.node_name or f"{os.uname().nodename}:{os.getpid()}"
        self.owner = process_identity()
        self.files = FileStore(settings.storage_dir, settings.quarantine_dir)
        self.engine = make_engine(settings.url)
        if not read_only:
            upgrade(self.engine)
        self.index = Index(self.engine, self.node, self.owner)
        self.returns = EvidenceReturns(self.engine, self.node)
        """The evidence returns to the PACS (``evidence_destination``): queued by :meth:`decide`, sent by
        :meth:`send_due_returns` (the :class:`ReturnSender` thread of the settler)."""
        self.returns_queued = threading.Event()
        """Set when a return is queued: the sender attempts it at once instead of at its next pass."""
        self._storing: set[str] = set()  # stored paths between their duplicate check and their rename
        self._storing_lock = threading.Lock()
        self.writer: IndexWriter | None = None
        if not read_only:
            self.recover()
            self.sweep_temp()
            self.writer = IndexWriter(self.index, self.files.journal(self.owner))
        self.knowledge = builtin_knowledge()
        self._registry: Registry = Registry()
        self._registry_file: RegistryFile | None = None  # the watched --devices file, set by reload_registry
        self.reload_registry()

    def sweep_temp(self) -> int:
        """Remove what killed processes and aborted transfers left in ``storage/.tmp``.

        Only files older than :func:`temp_grace`: receivers sharing this storage volume may be
        receiving into ``.tmp`` right now. Called at start and from the settle loop.
        """
        try:
            removed = self.files.sweep_tmp(temp_grace(self.settings))
        except OSError as exc:
            log.warning("could not sweep %s: %s", self.files.tmp, exc.strerror)
            return 0
        if removed:
            log.info("removed %d abandoned temporary file(s) from %s", removed, self.files.tmp)
        try:  # an instance of ours stored but not indexed (the index failed): index it now
            self.recover_commits(own_older_than=COMMIT_STALE_AFTER)
        except Exception:  # noqa: BLE001 - e.g. the index is still unavailable; next sweep
            log.exception("commit records not recovered")
        return removed

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every instance answered so far is indexed; False on timeout."""
        return self.writer is None or self.writer.flush(timeout=timeout)

    def close(self) -> None:
        """Index what is queued and stop the writer; its journal goes once empty (else the next
        start replays it)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
            writer.journal.discard()

    # ---------------------------------------------------------------- recovery at start
    def recover(self) -> None:
        """Repair what stopped receivers left, at start (before any association is served).

        1. Instances answered but not indexed (or renamed into storage and not answered: killed in
           between) are indexed from the journals (and commit records) of dead processes
           (``store.files``), with their association's provenance.
        2. Associations a provably dead process left open (``accepted``, no end) are closed as
           ``aborted``, with the instances the index now holds for them. Receivers sharing a
           PostgreSQL index keep theirs: only rows whose owner is on this host and no longer runs
           (``store.files.process_alive``) are closed.
        Each step is best effort: a failure is logged and the start goes on.
        """
        try:
            self.recover_commits()
        except Exception:  # noqa: BLE001
            log.exception("journals not recovered")
        try:
            closed = self.index.close_abandoned_associations(lambda owner: process_alive(owner) is False)
        except Exception:  # noqa: BLE001
            log.exception("associations left open by a stopped process not closed")
        else:
            for association_id, received in closed:
                log.warning(
                    "association %s was left open by a stopped receiver: closed as aborted (%d instance(s) received)",
                    association_id,
                    received,
                )

    def recover_commits(self, *, own_older_than: float | None = None) -> int:
        """Index the files of the journals (and older commit records) whose process is gone (or,
        with ``own_older_than``, this process's entries older than that many seconds that its
        writer no longer holds: their index write failed); returns how many instances were
        indexed. The entries are removed, and the dead processes' empty journals."""
        recovered = 0
        for journal in self.files.journals():
            own = journal.owner == self.owner
            if own and own_older_than is None:
                continue
            if not own and (journal.owner is not None and process_alive(journal.owner) is not False):
                continue  # a live receiver's (or one on another host): it indexes its own
            fd = journal.lock()
            if fd is None:  # another receiver is taking it over right now
                continue
            try:
                for entry in journal.entries():
                    if own and (
                        journal.age(entry) <= (own_older_than or 0.0)
                        or (self.writer is not None and self.writer.holds(entry.name))
                    ):
                        continue
                    try:
                        recovered += self._replay(journal, entry)
                    except Exception:  # noqa: BLE001 - the entry stays for the next sweep or start
                        log.exception("journal entry of %s not recovered", entry.relative)
                if not own:
                    journal.discard()
            finally:
                os.close(fd)
        recovered += self._recover_commit_records(own_older_than)
        if recovered:
            log.warning("indexed %d instance(s) a stopped receiver had stored but not indexed", recovered)
        return recovered

    def _replay(self, journal: Journal, entry: JournalEntry) -> int:
        final = self.files.absolute(entry.relative)
        if not final.is_file():  # stopped before the rename: never answered, nothing stored
            journal.remove(entry)
            return 0
        expected = entry.relative.rsplit(".", 2)[1]
        indexed = self._index_stored(final, entry.relative, expected, entry.association_id, None, entry.received_at)
        journal.remove(entry)
        return indexed

    def _index_stored(
        self,
        final: Path,
        relative: str,
        sha256: str,
        association_id: int | None,
        transfer_syntax_uid: str | None,
        received_at: dt.datetime,
    ) -> int:
        """Index a stored file left unindexed by a stopped receiver (idempotent)."""
        actual, size = sha256_file(final)
        ds = read_file_header(str(final), max_inflated_size=self.settings.max_inflated_size)
        if transfer_syntax_uid is None:
            meta = getattr(ds, "file_meta", None)
            transfer_syntax_uid = str(meta.get("TransferSyntaxUID", "") or "") or None if meta is not None else None
        receipt = self.index.association_receipt(association_id, transfer_syntax_uid)
        facts = extract_facts(ds, str(final), ae_title=receipt.calling_ae)
        if actual != sha256:  # not the bytes that were received: never indexed as such
            self._quarantine(
                final,
                StoreStatus.CANNOT_UNDERSTAND,
                "stored file differs from its journal entry",
                receipt,
                None,
                facts.sop_instance_uid,
            )
            return 0
        if not (facts.study_instance_uid and facts.series_instance_uid and facts.sop_instance_uid):
            return 0  # cannot be: it was checked before it was stored
        self.index.add_instances(
            [NewInstance(replace(facts, source=relative), sha256, size, relative, receipt, received_at)], replay=True
        )
        log.info(
            "indexed %s (association %s), stored before a receiver stopped",
            printable(facts.sop_instance_uid),
            receipt.association_id,
        )
        return 1

    def _recover_commit_records(self, own_older_than: float | None) -> int:
        """The commit records (``storage/.tmp/*.commit``) that receivers before the journal left."""
        recovered = 0
        for marker in self.files.commit_records():
            try:
                age = time.time() - marker.stat().st_mtime
            except FileNotFoundError:
                continue

            def owner_gone(owner, age=age) -> bool:
                if owner is None:  # unreadable: being written right now, or cut short long ago
                    return age > UNREADABLE_COMMIT_AFTER
                if own_older_than is not None and owner == self.owner:
                    return age > own_older_than
                return process_alive(owner) is False

            record = self.files.read_commit(marker, owner_gone)
            if record is None:
                continue
            try:
                relative, sha256 = record.get("path"), record.get("sha256")
                if isinstance(relative, str) and _STORED.fullmatch(relative) and isinstance(sha256, str):
                    final = self.files.absolute(relative)
                    sop = record.get("sop_instance_uid")
                    indexed = isinstance(sop, str) and self.index.find_content(sop, sha256) is not None
                    if final.is_file() and not indexed:
                        association = record.get("association_id")
                        syntax = record.get("transfer_syntax_uid")
                        recovered += self._index_stored(
                            final,
                            relative,
                            sha256,
                            association if isinstance(association, int) else None,
                            syntax if isinstance(syntax, str) else None,
                            dt.datetime.fromtimestamp(marker.stat().st_mtime, dt.UTC),
                        )
                self.files.end_commit(marker)
            except Exception:  # noqa: BLE001 - the record stays for the next start
                log.exception("commit record %s not recovered", marker.name)
            finally:
                os.close(record["_fd"])
        return recovered

    # ---------------------------------------------------------------- storing
    def store_file(
        self,
        temp: Path,
        receipt: ReceiptInfo,
        *,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        wait: bool = True,
    ) -> StoreResult:
        """Store a received file (``temp`` lives on the storage volume); never loses it.

        Success means the file and its journal entry are on stable storage; the index row follows
        (:class:`IndexWriter`): at once with ``wait`` (the default: the row is committed before
        this returns), behind the answer without it (the DICOM receiver)."""
        if (refusal := storage_refusal(self.settings)) is not None:  # below min_free_space: before the disk fills
            temp.unlink(missing_ok=True)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, refusal)
        writer = self.writer
        if writer is None:
            raise RuntimeError("a read-only receiver stores nothing")
        if SpoolFile.failure(temp) is not None:  # the volume filled up while the data set arrived
            temp.unlink(missing_ok=True)
            log.error("storage full while receiving: refusing (0xA700)")
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "storage full")
        if writer.failing:  # the rows could not be written: refused until the index is back
            temp.unlink(missing_ok=True)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
        flushed = flush_soon(temp)  # the disk works while the header is read and checked
        try:
            try:
                ds = read_file_header(str(temp), max_inflated_size=self.settings.max_inflated_size)
                facts = extract_facts(ds, str(temp), ae_title=receipt.calling_ae)
                # pydicom converts an element when it is first read: a corrupt one raises here, not later
                dataset_has_class = bool(ds.get("SOPClassUID"))
            except ResourceLimitExceeded as exc:  # a limit of ours, not bad data: the sender may retry
                temp.unlink(missing_ok=True)
                log.warning("refusing a data set (0xA700): %s", exc)
                return StoreResult(StoreStatus.OUT_OF_RESOURCES, str(exc)[:64])
            except Exception as exc:  # noqa: BLE001 - every unparseable input is quarantined
                return self._quarantine(
                    temp,
                    StoreStatus.CANNOT_UNDERSTAND,
                    f"cannot parse the dataset: {type(exc).__name__}: {exc}",
                    receipt,
                    None,
                    expected_sop_instance_uid,
                )
            study_uid, series_uid, sop_uid = facts.study_instance_uid, facts.series_instance_uid, facts.sop_instance_uid
            if not (study_uid and series_uid and sop_uid):
                missing = [
                    n
                    for n, v in (
                        ("StudyInstanceUID", study_uid),
                        ("SeriesInstanceUID", series_uid),
                        ("SOPInstanceUID", sop_uid),
                    )
                    if not v
                ]
                return self._quarantine(
                    temp,
                    StoreStatus.MISSING_UIDS,
                    f"missing {', '.join(missing)}",
                    receipt,
                    facts.sop_class_uid,
                    facts.sop_instance_uid,
                )
            if (refusal := uid_refusal(ds)) is not None:  # before anything compares or stores the UIDs
                return self._quarantine(
                    temp, StoreStatus.INVALID_UID, refusal, receipt, facts.sop_class_uid, facts.sop_instance_uid
                )
            if expected_sop_instance_uid and facts.sop_instance_uid != expected_sop_instance_uid:
                return self._quarantine(
                    temp,
                    StoreStatus.UID_MISMATCH,
                    f"dataset SOP Instance UID {facts.sop_instance_uid} "
                    f"differs from the request's {expected_sop_instance_uid}",
                    receipt,
                    facts.sop_class_uid,
                    facts.sop_instance_uid,
                )
            if expected_sop_class_uid and dataset_has_class and facts.sop_class_uid != expected_sop_class_uid:
                return self._quarantine(
                    temp,
                    StoreStatus.UID_MISMATCH,
                    f"dataset SOP Class UID {facts.sop_class_uid} differs from the request's {expected_sop_class_uid}",
                    receipt,
                    facts.sop_class_uid,
                    facts.sop_instance_uid,
                )
            sha256, size = SpoolFile.digest(temp) or sha256_file(temp)  # hashed as it arrived, if it came so
            relative = self.files.relative_path(study_uid, series_uid, sop_uid, sha256)
            entry, duplicate = self._store_durably(temp, relative, receipt, flushed)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in DISK_FULL:
                log.error("storage full: refusing (0xA700)")
                return StoreResult(StoreStatus.OUT_OF_RESOURCES, "storage full")
            log.error("storage error %s: refusing (0xA700)", exc.errno)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, f"storage error: {exc.strerror}")
        number = writer.put(
            NewInstance(replace(facts, source=relative), sha256, size, relative, receipt, entry.received_at), entry
        )
        if wait and not writer.flush(number):
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
        if duplicate:
            return StoreResult(StoreStatus.SUCCESS, "identical instance already stored", duplicate=True)
        return StoreResult(StoreStatus.SUCCESS)

    def _store_durably(
        self, temp: Path, relative: str, receipt: ReceiptInfo, flushed: Future[None]
    ) -> tuple[JournalEntry, bool]:
        """Put the received file at ``relative`` (content-addressed: a file already there is the
        same content, a duplicate) and its journal entry in place, both on stable storage: the
        instance may be answered then, and indexed later. Returns the entry and whether it was a
        duplicate."""
        assert self.writer is not None
        journal = self.writer.journal
        with self._storing_lock:
            duplicate = relative in self._storing or self.files.absolute(relative).is_file()
            if not duplicate:
                self._storing.add(relative)
        try:
            created = self.files.prepare(relative)
            entry = journal.add(relative, receipt.association_id, dt.datetime.now(dt.UTC))
            try:
                if duplicate:
                    temp.unlink(missing_ok=True)
                    # the entry durable; and the stored copy's name (and folders), which may be
                    # between another store's rename and its folder's fsync
                    fsync_dir(self.files.absolute(relative).parent)
                    for folder in reversed(created):
                        fsync_dir(folder.parent)
                else:  # the file flushed, renamed, and its folder (with the entry) fsynced
                    self.files.commit(temp, relative, flushed, created)
            except BaseException:
                if duplicate or temp.exists():  # nothing renamed: nothing to index (renamed: the entry stays)
                    journal.remove(entry)
                raise
        finally:
            if not duplicate:
                with self._storing_lock:
                    self._storing.discard(relative)
        return entry, duplicate

    def _quarantine(
        self,
        temp: Path,
        status: StoreStatus,
        reason: str,
        receipt: ReceiptInfo,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
    ) -> StoreResult:
        sha256 = sha256_file(temp)[0] if temp.exists() else None
        reason = printable(reason, 4096)  # the same words in the index, beside the file and in the answer
        details = {
            "status": f"0x{status:04X}",
            "calling_ae": receipt.calling_ae,
            "peer_address": receipt.peer_address,
            "association_id": receipt.association_id,
            "sop_class_uid": sop_class_uid,
            "sop_instance_uid": sop_instance_uid,
            "transfer_syntax_uid": receipt.transfer_syntax_uid,
        }
        target = self.files.quarantine(temp, None, reason, details)
        try:
            self.index.add_quarantined(
                path=str(target.relative_to(self.files.quarantine_root)),
                reason=reason,
                status=int(status),
                association_id=receipt.association_id,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                sha256=sha256,
            )
        except Exception:  # noqa: BLE001 - the sidecar JSON beside the file keeps the reason
            log.exception("quarantine not indexed; reason kept beside %s", target.name)
        # the reason only when it holds nothing but UIDs: a parser's message may quote any header value
        log.warning(
            "quarantined %s: status 0x%04X (%s)%s",
            target.name,
            status,
            printable(sop_instance_uid) if sop_instance_uid else "no SOP UID",
            f": {reason}" if status == StoreStatus.INVALID_UID else "",
        )
        return StoreResult(status, reason[:64])

    # ---------------------------------------------------------------- deciding
    def reload_registry(self) -> Registry:
        """The ``--devices`` registry, re-read when the file changes; never raises.

        A file that becomes unusable keeps the last good registry, with ``error`` set to the file's
        line and reason (logged once per change of the file, in ``/healthz`` and the
        ``dicomcheck_registry_file_error`` gauge) until the file is fixed.
        """
        path = self.settings.devices
        if path is None:
            return self._registry
        watched = self._registry_file
        if watched is None or watched.path != Path(path):  # first called from __init__, before any thread
            watched = self._registry_file = RegistryFile(path, reports=not self.quiet_registry)
        self._registry = watched.current()
        metrics.REGISTRY_FILE_ERROR.set(1 if self._registry.error else 0)
        return self._registry

    def effective_registry(self) -> Registry:
        """The registry file's entries, then those kept in the index (API ``/devices``)."""
        base = self.reload_registry()
        rows = Access(self.engine).devices()
        if not rows:
            return base
        extra = tuple(
            RegistryDevice(
                role=Role(r.role),
                line=0,
                station_name=r.station_name,
                ae_title=r.ae_title,
                device_serial_number=r.device_serial_number,
                manufacturer=r.manufacturer,
                model=r.model,
                note=r.note,
                valid_from=r.valid_from,
                valid_to=r.valid_to,
                id=f"device #{r.id}",
                source=f"index device #{r.id}",
            )
            for r in rows
        )
        return Registry(base.devices + extra, base.policy, base.path, base.error)

    def evaluate(self, study_uid: str) -> tuple[StudyDecisionUnderPolicy, Registry] | None:
        """The study decided now from the indexed facts (nothing saved)."""
        facts = self.index.study_facts(study_uid)
        if not facts:
            return None
        registry = self.effective_registry()
        ((uid, series),) = group_by_study(facts).items()
        decision = decide_study(
            uid, series, registry=registry, knowledge=self.knowledge, made_later_days=self.settings.made_later_days
        )
        return StudyDecisionUnderPolicy.from_decision_and_policy(decision, registry.policy), registry

    def held_studies(self) -> set[str]:
        """The studies (:func:`~dicomcheck.store.files.derived_name` of their UIDs) with an instance
        answered but not yet indexed: an entry of any receiver's journal on this storage."""
        return {entry.study_key for journal in self.files.journals() for entry in journal.entries(anyone=True)}

    def decide(self, study_uid: str, *, last_arrival_seen) -> StudyDecisionUnderPolicy | None:
        """Decide the study from its indexed instances and keep the decision; None when there is
        nothing to decide, or when an instance of it was answered and is not yet indexed (or was
        indexed since ``last_arrival_seen``): then it is decided later, with that instance."""
        key = derived_name(study_uid)
        if self.writer is not None and any(entry.study_key == key for entry in self.writer.journal.entries()):
            self.writer.flush()  # our own rows of it: written first
        evaluated = self.evaluate(study_uid)
        if evaluated is None:
            return None
        # after the facts were read: an entry in a journal now was answered and not indexed before
        # the read (an entry removed meanwhile was indexed, which moved the last arrival)
        if key in self.held_studies() or self.index.last_arrival(study_uid) != last_arrival_seen:
            self.index.release(study_uid)
            return None
        record, registry = evaluated
        decision_id = self.index.save_decision(
            study_uid,
            record,
            last_arrival_seen=last_arrival_seen,
            rules_version=RULES_VERSION,
            dicomcheck_version=__version__,
            registry_path=registry.path,
        )
        Sessions(self.index.engine).after_decision(record, self.settings)  # sessions (issue 13)
        try:  # the text SRs among its instances, read once as radiology reports (issue 12)
            import_sr_reports(self.engine, self.settings.storage_dir, study_uid)
        except Exception:  # noqa: BLE001 - a report that cannot be read must not undo the decision
            log.exception("text SR reports of study %s not read", study_uid)
        metrics.DECISIONS.labels(record.outcome.value).inc()
        log.info("decided study %s: %s (%d instances)", study_uid, record.outcome.value, record.instances)
        if self.settings.evidence_destination:  # sent by the return sender (``send_due_returns``), retried
            self.returns.enqueue(study_uid, decision_id, self.settings.evidence_destination)
            self.returns_queued.set()
        return record

    RETURN_LEASE = 600.0
    """Seconds a receiver holds an evidence return it is sending (a few network timeouts); a receiver that dies
    meanwhile leaves it to the others after this."""

    def send_due_returns(self) -> int:
        """Attempt every evidence return that is due and that no other receiver holds; how many were attempted."""
        attempted = 0
        for due in self.returns.due():
            claimed = self.returns.claim(due.id, lease=self.RETURN_LEASE)
            if claimed is None:
                continue  # another receiver took it
            attempted += 1
            try:
                self._attempt_return(claimed)
            except Exception:  # noqa: BLE001 - e.g. the index went away mid-way: the lease frees the return
                log.exception("evidence return of study %s not recorded", claimed.study_instance_uid)
        return attempted

    def _attempt_return(self, due: EvidenceReturnRecord) -> None:
        """Send one return's KOS and SR to its PACS, beside the study (never the PHI-minimal variant), and
        record the outcome: sent; retried later (unreachable, rejected, a failure status, a pack not written
        yet); failed at once when the objects can never be sent, or when the attempts or the age run out."""
        from .evidence.send import NotSendable, PacsDestination, SendError, StoreRefused, stored
        from .evidence.service import ensure_pack

        study = self.index.get_study(due.study_instance_uid)
        if study is None or study.current_decision_id != due.decision_id:
            self.returns.set_aside(due.id)  # a newer decision's return carries the newest pack
            return
        try:
            destination = PacsDestination.parse(due.destination, calling_ae=self.settings.ae_title)
            folder = ensure_pack(self, due.study_instance_uid, minimal=False)
            statuses = destination.send([folder / "kos.dcm", folder / "sr.dcm"])
            refused = [status for status in statuses if not stored(status)]
            if refused:
                raise StoreRefused("C-STORE status " + ", ".join(f"0x{status:04X}" for status in refused))
        except NotSendable as exc:
            log.error("evidence for study %s never sendable to %s: %s", due.study_instance_uid, due.destination, exc)
            self.returns.give_up(due.id, error=f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the PACS may be down; the pack stays for the next attempt
            # our own send errors name AE titles, addresses and statuses only; any other error is named by its
            # class alone (its message might quote a header value)
            named = isinstance(exc, SendError | ValueError)
            self._retry_or_give_up(due, f"{type(exc).__name__}: {exc}"[:300] if named else type(exc).__name__)
            return
        self.returns.sent(due.id)
        log.info(
            "evidence for study %s sent to %s (attempt %d): statuses %s",
            due.study_instance_uid,
            due.destination,
            due.attempts + 1,
            ", ".join(f"0x{status:04X}" for status in statuses),
        )

    def _retry_or_give_up(self, due: EvidenceReturnRecord, error: str) -> None:
        """A failed attempt: the next one after the backoff, or ``failed`` once the attempts or the age run out."""
        attempts = due.attempts + 1
        wait = retry_delay(attempts, base=self.settings.evidence_retry_base, cap=self.settings.evidence_retry_max_delay)
        next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
        max_age = self.settings.evidence_retry_max_age_seconds
        too_old = max_age is not None and (next_at - due.attempts_since).total_seconds() > max_age
        if attempts >= self.settings.evidence_retry_max_attempts or too_old:
            log.error(
                "evidence for study %s not sent to %s, given up after %d attempt(s): %s",
                due.study_instance_uid,
                due.destination,
                attempts,
                error,
            )
            self.returns.give_up(due.id, error=error)
            return
        log.warning(
            "evidence for study %s not sent to %s (attempt %d, next in %.0f s): %s",
            due.study_instance_uid,
            due.destination,
            attempts,
            wait,
            error,
        )
        self.returns.retry_later(due.id, error=error, at=next_at)

    def settle_once(self) -> int:
        """Decide every study that has been stable for ``stable_after`` seconds and has no instance
        answered but not yet indexed (by any receiver on this storage: :meth:`held_studies`; the
        journals of stopped receivers are indexed first); returns how many."""
        lease = max(60.0, self.settings.stable_after)
        decided = 0
        if self.writer is not None:
            self.recover_commits()  # journals of receiver processes that stopped (nothing when none)
        held = self.held_studies()
        for study_uid in self.index.due_studies(stable_after=self.settings.stable_after, lease=lease):
            if derived_name(study_uid) in held:
                continue
            last = self.index.claim(study_uid, lease=lease)
            if last is None:
                continue
            try:
                if self.decide(study_uid, last_arrival_seen=last) is not None:
                    decided += 1
            except Exception:  # noqa: BLE001 - one bad study must not stop the others
                log.exception("decision failed for study %s", study_uid)
                self.index.release(study_uid)
        return decided


def retry_delay(attempts: int, *, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``base`` doubled after each one, at most ``cap``,
    less up to 20 % at random, so the returns of one PACS outage do not all come back at the same moment."""
    return min(cap, base * 2.0 ** min(attempts - 1, 60)) * random.uniform(0.8, 1.0)


class ReturnSender(threading.Thread):
    """Background loop sending the evidence returns that are due, apart from the settler: a PACS that does not
    answer (network timeouts) holds up the returns, never the decisions."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(name="dicomcheck-evidence-returns", daemon=True)
        self.receiver = receiver
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = self.receiver.settings.settle_every
        while not self._stop_event.is_set():
            self.receiver.returns_queued.clear()
            try:
                self.receiver.send_due_returns()
            except Exception:  # noqa: BLE001 - e.g. the index briefly unreachable; the next pass tries again
                log.exception("evidence return pass failed")
            self.receiver.returns_queued.wait(interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.receiver.returns_queued.set()


class Settler(threading.Thread):
    """Background loop deciding stable studies until stopped."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(name="dicomcheck-settler", daemon=True)
        self.receiver = receiver
        self._stop_event = threading.Event()
        self.returns = ReturnSender(receiver)
        """Sends the evidence returns the decisions queue (started and stopped with the settler)."""

    def start(self) -> None:
        super().start()
        self.returns.start()

    SWEEP_EVERY = 600.0
    """Seconds between sweeps of abandoned temporary files."""

    def run(self) -> None:
        interval = self.receiver.settings.settle_every
        next_sweep = time.monotonic() + self.SWEEP_EVERY
        failing: str | None = None  # the last pass's failure: a lasting fault is logged once, not every pass
        while not self._stop_event.is_set():
            try:
                # a changed --devices file is noticed (and reported) even when nothing is due
                self.receiver.reload_registry()
                self.receiver.settle_once()
            except Exception as exc:  # noqa: BLE001 - e.g. database briefly unreachable; try again
                reason = f"{type(exc).__name__}: {exc}"
                if reason != failing:
                    log.exception(
                        "settle pass failed (retried every %.1f s; logged again only if the error changes)", interval
                    )
                failing = reason
            else:
                if failing is not None:
                    log.warning("settle pass works again")
                failing = None
            retention_tick(self.receiver)  # retention and quarantine expiry: hourly, or at once below min_free_space
            if time.monotonic() >= next_sweep:
                self.receiver.sweep_temp()
                next_sweep = time.monotonic() + self.SWEEP_EVERY
            self._stop_event.wait(interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.returns.stop()

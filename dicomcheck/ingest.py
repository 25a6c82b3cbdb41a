"""Received file -> facts -> durable storage -> index; and stable study -> decision.

Shared by the DICOM receiver (``scp``) and anything else that ingests files. The C-STORE handler
only maps a :class:`StoreResult` to a DIMSE status.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

from . import __version__, metrics
from .analysis import decide_study, group_by_study
from .config import Settings
from .decision_record import StudyDecisionUnderPolicy
from .enums import Role
from .extract import extract_facts
from .knowledge import builtin_knowledge
from .registry import Device as RegistryDevice
from .registry import Registry, RegistryFile
from .rules import RULES_VERSION
from .sources import ResourceLimitExceeded, read_file_header
from .store.access import Access
from .store.engine import make_engine, upgrade
from .store.files import DISK_FULL, FileStore, SpoolFile, printable, process_alive, process_identity, sha256_file
from .store.index import Index, ReceiptInfo

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
    version: int | None = None


COMMIT_STALE_AFTER = 600.0
"""Seconds after which a commit record of this very process means its index write failed (a
commit takes milliseconds): the periodic sweep indexes the file then."""
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


class Receiver:
    """The ingest service of one process: file store + index (+ the settle loop)."""

    def __init__(self, settings: Settings, *, node: str | None = None, read_only: bool = False) -> None:
        """``read_only`` for commands that only read an existing index (``dicomcheck evidence`` from the
        index): no migration, no recovery and no ``.tmp`` sweep, which belong to a receiver that serves
        (and would otherwise run behind the back of the receivers sharing that index and volume)."""
        self.settings = settings
        self.node = node or settings.node_name or f"{os.uname().nodename}:{os.getpid()}"
        self.owner = process_identity()
        self.files = FileStore(settings.storage_dir, settings.quarantine_dir)
        self.engine = make_engine(settings.url)
        if not read_only:
            upgrade(self.engine)
        self.index = Index(self.engine, self.node, self.owner)
        if not read_only:
            self.recover()
            self.sweep_temp()
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

    # ---------------------------------------------------------------- recovery at start
    def recover(self) -> None:
        """Repair what killed receivers left, at start (before any association is served).

        1. Associations a provably dead process left open (``accepted``, no end) are closed as
           ``aborted``, with the instances the index holds for them: each was indexed before its
           success was answered. Receivers sharing a PostgreSQL index keep theirs: only rows whose
           owner is on this host and no longer runs (``store.files.process_alive``) are closed.
        2. Instances renamed into storage but not indexed (killed in between) are indexed from the
           commit records of dead processes (``store.files``), with their association's provenance.
        Each step is best effort: a failure is logged and the start goes on.
        """
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
        try:
            self.recover_commits()
        except Exception:  # noqa: BLE001
            log.exception("commit records not recovered")

    def recover_commits(self, *, own_older_than: float | None = None) -> int:
        """Index the files of commit records whose process is gone (or, with ``own_older_than``,
        this process's records older than that many seconds: their index write failed); returns
        how many instances were indexed. The records are removed."""
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
                recovered += self._recover_commit(marker, record)
            except Exception:  # noqa: BLE001 - the record stays for the next start
                log.exception("commit record %s not recovered", marker.name)
            finally:
                os.close(record["_fd"])
        if recovered:
            log.warning("indexed %d instance(s) a stopped receiver had stored but not indexed", recovered)
        return recovered

    def _recover_commit(self, marker: Path, record: dict) -> int:
        relative = record.get("path")
        sop, sha256 = record.get("sop_instance_uid"), record.get("sha256")
        final = self.files.absolute(relative) if isinstance(relative, str) and _STORED.fullmatch(relative) else None
        if (
            final is None
            or not isinstance(relative, str)  # implied by final (spelt out for the type checker)
            or not final.is_file()
            or not isinstance(sop, str)
            or not isinstance(sha256, str)
        ):
            self.files.end_commit(marker)  # killed before the rename (or a record cut short): nothing was stored
            return 0
        if self.index.find_content(sop, sha256) is not None:
            self.files.end_commit(marker)  # indexed after all (killed before the record was removed)
            return 0
        actual, size = sha256_file(final)
        receipt = self.index.association_receipt(record.get("association_id"), record.get("transfer_syntax_uid"))
        if actual != sha256:  # not the bytes that were received: never indexed as such
            self._quarantine(
                final, StoreStatus.CANNOT_UNDERSTAND, "stored file differs from its commit record", receipt, None, sop
            )
            self.files.end_commit(marker)
            return 0
        ds = read_file_header(str(final), max_inflated_size=self.settings.max_inflated_size)
        facts = extract_facts(ds, str(final), ae_title=receipt.calling_ae)
        self.index.add_instance(
            replace(facts, source=relative), sha256=sha256, size=size, path=relative, receipt=receipt
        )
        self.files.end_commit(marker)
        log.info(
            "indexed %s (association %s), stored before a receiver stopped", printable(sop), receipt.association_id
        )
        return 1

    # ---------------------------------------------------------------- storing
    def store_file(
        self,
        temp: Path,
        receipt: ReceiptInfo,
        *,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoreResult:
        """Store a received file (``temp`` lives on the storage volume); never loses it."""
        if SpoolFile.failure(temp) is not None:  # the volume filled up while the data set arrived
            temp.unlink(missing_ok=True)
            log.error("storage full while receiving: refusing (0xA700)")
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "storage full")
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
            sha256, size = sha256_file(temp)
            existing = self.index.find_content(sop_uid, sha256)
            if existing is not None:
                self.index.add_duplicate_receipt(existing, receipt)
                temp.unlink(missing_ok=True)
                return StoreResult(StoreStatus.SUCCESS, "identical instance already stored", duplicate=True)
            relative = self.files.relative_path(study_uid, series_uid, sop_uid, sha256)
            marker = self.files.begin_commit(
                relative,
                {
                    "owner": self.owner,
                    "sop_instance_uid": facts.sop_instance_uid,
                    "sha256": sha256,
                    "size": size,
                    "association_id": receipt.association_id,
                    "transfer_syntax_uid": receipt.transfer_syntax_uid,
                },
            )
            try:
                self.files.commit(temp, relative)
            except BaseException:
                if temp.exists():  # not renamed: nothing to recover (renamed, the record stays for recovery)
                    self.files.end_commit(marker)
                raise
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in DISK_FULL:
                log.error("storage full: refusing (0xA700)")
                return StoreResult(StoreStatus.OUT_OF_RESOURCES, "storage full")
            log.error("storage error %s: refusing (0xA700)", exc.errno)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, f"storage error: {exc.strerror}")
        stored = replace(facts, source=relative)
        try:
            added = self.index.add_instance(stored, sha256=sha256, size=size, path=relative, receipt=receipt)
        except Exception as exc:  # noqa: BLE001 - the file is safe on disk; a retry, or its commit record, re-indexes it
            log.error("index unavailable (%s): refusing (0xA700)", type(exc).__name__)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
        self.files.end_commit(marker)
        return StoreResult(StoreStatus.SUCCESS, duplicate=added.duplicate, version=added.version)

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
            watched = self._registry_file = RegistryFile(path)
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
        decision = decide_study(uid, series, registry=registry, knowledge=self.knowledge)
        return StudyDecisionUnderPolicy.from_decision_and_policy(decision, registry.policy), registry

    def decide(self, study_uid: str, *, last_arrival_seen) -> StudyDecisionUnderPolicy | None:
        evaluated = self.evaluate(study_uid)
        if evaluated is None:
            return None
        record, registry = evaluated
        self.index.save_decision(
            study_uid,
            record,
            last_arrival_seen=last_arrival_seen,
            rules_version=RULES_VERSION,
            dicomcheck_version=__version__,
            registry_path=registry.path,
        )
        metrics.DECISIONS.labels(record.outcome.value).inc()
        log.info("decided study %s: %s (%d instances)", study_uid, record.outcome.value, record.instances)
        if self.settings.evidence_destination:
            self.return_evidence(study_uid)
        return record

    def return_evidence(self, study_uid: str) -> list[int] | None:
        """Send the decision's KOS and SR to the configured PACS, beside the study (never the
        PHI-minimal variant). A failure is logged; the decision stands and the pack is kept."""
        from .evidence.send import PacsDestination
        from .evidence.service import ensure_pack

        destination = PacsDestination.parse(self.settings.evidence_destination or "", calling_ae=self.settings.ae_title)
        try:
            folder = ensure_pack(self, study_uid, minimal=False)
            statuses = destination.send([folder / "kos.dcm", folder / "sr.dcm"])
        except Exception as exc:  # noqa: BLE001 - the PACS may be down; the pack stays for a later send
            log.error("evidence for study %s not sent to %s: %s", study_uid, destination, type(exc).__name__)
            return None
        log.info(
            "evidence for study %s sent to %s: statuses %s",
            study_uid,
            destination,
            ", ".join(f"0x{s:04X}" for s in statuses),
        )
        return statuses

    def settle_once(self) -> int:
        """Decide every study that has been stable for ``stable_after`` seconds; returns how many."""
        lease = max(60.0, self.settings.stable_after)
        decided = 0
        for study_uid in self.index.due_studies(stable_after=self.settings.stable_after, lease=lease):
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


class Settler(threading.Thread):
    """Background loop deciding stable studies until stopped."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(name="dicomcheck-settler", daemon=True)
        self.receiver = receiver
        self._stop_event = threading.Event()

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
            if time.monotonic() >= next_sweep:
                self.receiver.sweep_temp()
                next_sweep = time.monotonic() + self.SWEEP_EVERY
            self._stop_event.wait(interval)

    def stop(self) -> None:
        self._stop_event.set()

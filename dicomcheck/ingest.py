"""Received file -> facts -> durable storage -> index; and stable study -> decision.

Shared by the DICOM receiver (``scp``) and anything else that ingests files. The C-STORE handler
only maps a :class:`StoreResult` to a DIMSE status.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

from . import __version__, metrics
from .analysis import decide_study, group_by_study
from .config import Settings
from .extract import extract_facts
from .knowledge import builtin_knowledge
from .enums import Role
from .registry import Device as RegistryDevice
from .registry import Registry, load_registry
from .report import study_dict
from .rules import RULES_VERSION
from .sources import ResourceLimitExceeded, read_file_header
from .store.engine import make_engine, upgrade
from .store.files import DISK_FULL, FileStore, SpoolFile, sha256_file
from .store.access import Access
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


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: StoreStatus
    comment: str | None = None
    duplicate: bool = False
    version: int | None = None


def temp_grace(settings: Settings) -> float:
    """How long a file in ``storage/.tmp`` may sit untouched and still be a live transfer.

    A receiving file is touched by every fragment (gaps end with the network timeout) and renamed
    out right after it is parsed and hashed; an hour, or twice the longest timeout, is far beyond.
    """
    return max(3600.0, 2 * max(settings.acse_timeout, settings.dimse_timeout, settings.network_timeout))


class Receiver:
    """The ingest service of one process: file store + index (+ the settle loop)."""

    def __init__(self, settings: Settings, *, node: str | None = None) -> None:
        self.settings = settings
        self.node = node or settings.node_name or f"{os.uname().nodename}:{os.getpid()}"
        self.files = FileStore(settings.storage_dir, settings.quarantine_dir)
        self.sweep_temp()
        self.engine = make_engine(settings.url)
        upgrade(self.engine)
        self.index = Index(self.engine, self.node)
        self.knowledge = builtin_knowledge()
        self._registry: Registry = Registry()
        self._registry_mtime: float | None = None
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
        return removed

    # ---------------------------------------------------------------- storing
    def store_file(self, temp: Path, receipt: ReceiptInfo, *, expected_sop_instance_uid: str | None = None,
                   expected_sop_class_uid: str | None = None) -> StoreResult:
        """Store a received file (``temp`` lives on the storage volume); never loses it."""
        if SpoolFile.failure(temp) is not None:  # the volume filled up while the data set arrived
            temp.unlink(missing_ok=True)
            log.error("storage full while receiving: refusing (0xA700)")
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "storage full")
        try:
            try:
                ds = read_file_header(str(temp))
                facts = extract_facts(ds, str(temp), ae_title=receipt.calling_ae)
                # pydicom converts an element when it is first read: a corrupt one raises here, not later
                dataset_has_class = bool(ds.get("SOPClassUID"))
            except ResourceLimitExceeded as exc:  # a limit of ours, not bad data: the sender may retry
                temp.unlink(missing_ok=True)
                log.warning("refusing a data set (0xA700): %s", exc)
                return StoreResult(StoreStatus.OUT_OF_RESOURCES, str(exc)[:64])
            except Exception as exc:  # noqa: BLE001 - every unparseable input is quarantined
                return self._quarantine(temp, StoreStatus.CANNOT_UNDERSTAND, f"cannot parse the dataset: {type(exc).__name__}: {exc}", receipt, None, expected_sop_instance_uid)
            missing = [n for n, v in (("StudyInstanceUID", facts.study_instance_uid), ("SeriesInstanceUID", facts.series_instance_uid), ("SOPInstanceUID", facts.sop_instance_uid)) if not v]
            if missing:
                return self._quarantine(temp, StoreStatus.MISSING_UIDS, f"missing {', '.join(missing)}", receipt, facts.sop_class_uid, facts.sop_instance_uid)
            if expected_sop_instance_uid and facts.sop_instance_uid != expected_sop_instance_uid:
                return self._quarantine(temp, StoreStatus.UID_MISMATCH, f"dataset SOP Instance UID {facts.sop_instance_uid} differs from the request's {expected_sop_instance_uid}", receipt, facts.sop_class_uid, facts.sop_instance_uid)
            if expected_sop_class_uid and dataset_has_class and facts.sop_class_uid != expected_sop_class_uid:
                return self._quarantine(temp, StoreStatus.UID_MISMATCH, f"dataset SOP Class UID {facts.sop_class_uid} differs from the request's {expected_sop_class_uid}", receipt, facts.sop_class_uid, facts.sop_instance_uid)
            sha256, size = sha256_file(temp)
            existing = self.index.find_content(facts.sop_instance_uid, sha256)  # type: ignore[arg-type]
            if existing is not None:
                self.index.add_duplicate_receipt(existing, receipt)
                temp.unlink(missing_ok=True)
                return StoreResult(StoreStatus.SUCCESS, "identical instance already stored", duplicate=True)
            relative = self.files.relative_path(facts.study_instance_uid, facts.series_instance_uid, facts.sop_instance_uid, sha256)  # type: ignore[arg-type]
            self.files.commit(temp, relative)
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
        except Exception as exc:  # noqa: BLE001 - the file is safe on disk; a retry re-indexes it
            log.error("index unavailable (%s): refusing (0xA700)", type(exc).__name__)
            return StoreResult(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
        return StoreResult(StoreStatus.SUCCESS, duplicate=added.duplicate, version=added.version)

    def _quarantine(self, temp: Path, status: StoreStatus, reason: str, receipt: ReceiptInfo,
                    sop_class_uid: str | None, sop_instance_uid: str | None) -> StoreResult:
        sha256 = sha256_file(temp)[0] if temp.exists() else None
        details = {"status": f"0x{status:04X}", "calling_ae": receipt.calling_ae, "peer_address": receipt.peer_address,
                   "association_id": receipt.association_id, "sop_class_uid": sop_class_uid,
                   "sop_instance_uid": sop_instance_uid, "transfer_syntax_uid": receipt.transfer_syntax_uid}
        target = self.files.quarantine(temp, None, reason, details)
        try:
            self.index.add_quarantined(path=str(target.relative_to(self.files.quarantine_root)), reason=reason,
                                       status=int(status), association_id=receipt.association_id,
                                       sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, sha256=sha256)
        except Exception:  # noqa: BLE001 - the sidecar JSON beside the file keeps the reason
            log.exception("quarantine not indexed; reason kept beside %s", target.name)
        log.warning("quarantined %s: status 0x%04X (%s)", target.name, status, sop_instance_uid or "no SOP UID")
        return StoreResult(status, reason[:64])

    # ---------------------------------------------------------------- deciding
    def reload_registry(self) -> Registry:
        path = self.settings.devices
        if path is None:
            return self._registry
        mtime = path.stat().st_mtime
        if mtime != self._registry_mtime:
            self._registry = load_registry(path)
            self._registry_mtime = mtime
        return self._registry

    def effective_registry(self) -> Registry:
        """The registry file's entries, then those kept in the index (API ``/devices``)."""
        base = self.reload_registry()
        rows = Access(self.engine).devices()
        if not rows:
            return base
        extra = tuple(
            RegistryDevice(role=Role(r.role), line=0, station_name=r.station_name, ae_title=r.ae_title,
                           device_serial_number=r.device_serial_number, manufacturer=r.manufacturer, model=r.model,
                           note=r.note, valid_from=r.valid_from, valid_to=r.valid_to, id=f"device #{r.id}",
                           source=f"index device #{r.id}")
            for r in rows
        )
        return Registry(base.devices + extra, base.policy, base.path)

    def evaluate(self, study_uid: str) -> tuple[dict, Registry] | None:
        """The study decided now from the indexed facts (nothing saved)."""
        facts = self.index.study_facts(study_uid)
        if not facts:
            return None
        registry = self.effective_registry()
        (uid, series), = group_by_study(facts).items()
        document = study_dict(decide_study(uid, series, registry=registry, knowledge=self.knowledge))
        document["policy"] = registry.policy.as_dict()
        return document, registry

    def decide(self, study_uid: str, *, last_arrival_seen) -> dict | None:
        evaluated = self.evaluate(study_uid)
        if evaluated is None:
            return None
        document, registry = evaluated
        self.index.save_decision(study_uid, document, last_arrival_seen=last_arrival_seen, rules_version=RULES_VERSION,
                                 dicomcheck_version=__version__, registry_path=registry.path)
        metrics.DECISIONS.labels(document["outcome"]).inc()
        log.info("decided study %s: %s (%d instances)", study_uid, document["outcome"], document["instances"])
        if self.settings.evidence_destination:
            self.return_evidence(study_uid)
        return document

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
        log.info("evidence for study %s sent to %s: statuses %s", study_uid, destination, ", ".join(f"0x{s:04X}" for s in statuses))
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
        while not self._stop_event.is_set():
            try:
                self.receiver.settle_once()
            except Exception:  # noqa: BLE001 - e.g. database briefly unreachable; try again
                log.exception("settle pass failed")
            if time.monotonic() >= next_sweep:
                self.receiver.sweep_temp()
                next_sweep = time.monotonic() + self.SWEEP_EVERY
            self._stop_event.wait(interval)

    def stop(self) -> None:
        self._stop_event.set()


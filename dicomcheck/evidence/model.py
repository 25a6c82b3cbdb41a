"""What an evidence pack is built from: the decided study and the instances it cites.

Every producer of pack content (DICOM KOS / SR, thumbnails, the PDF report, the manifest) takes an
:class:`EvidenceSource`; :mod:`dicomcheck.evidence.collect` builds one from the index or from a
folder of files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ..enums import CitedRole
from ..own_objects import OWN_MANUFACTURER, OWN_SOP_CLASSES, is_own_object  # re-exported: the core recognises them

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "OWN_MANUFACTURER",
    "OWN_SOP_CLASSES",
    "UID_ROOT",
    "CitedInstance",
    "EvidenceSource",
    "Receipt",
    "is_own_object",
]

IMPLEMENTATION_CLASS_UID = "2.25.89263563406052245008553803464866822284"
"""dicomcheck's Implementation Class UID (a UUID-derived OID, PS3.5 B.2): objects we write carry it,
and the receiver recognises our own KOS / SR when a PACS routes them back."""
IMPLEMENTATION_VERSION_NAME = "DICOMCHECK"
UID_ROOT = "2.25."
"""Our UIDs are UUID-derived (``2.25.<uuid as integer>``): unique without a registered root."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """How one copy of an instance reached dicomcheck (empty for files analysed offline)."""

    received_at: dt.datetime | None
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    transfer_syntax_uid: str | None
    implementation_class_uid: str | None
    implementation_version_name: str | None
    duplicate: bool = False

    def as_dict(self) -> dict:
        return {
            "received_at": self.received_at.isoformat() if self.received_at else None,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer_address": self.peer_address,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "implementation_class_uid": self.implementation_class_uid,
            "implementation_version_name": self.implementation_version_name,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class CitedInstance:
    """An instance whose header values the decision cites, or that the report shows."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: Path
    """The stored file (absolute)."""
    sha256: str
    role: CitedRole
    receipts: tuple[Receipt, ...] = ()


@dataclass(frozen=True, slots=True)
class EvidenceSource:
    study_instance_uid: str
    document: dict
    """The JSON dump of the study's ``StudyDecisionUnderPolicy`` record (outcome, code, reasons, series,
    policy): the bytes a pack carries, and what the KOS, SR and PDF producers walk."""
    instances: tuple[CitedInstance, ...]
    rules_version: str
    dicomcheck_version: str
    decision_id: int | None = None
    decided_at: dt.datetime | None = None
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    facts: tuple = ()
    """The header facts of every instance the decision was made from (InstanceFacts)."""
    registry: dict | None = None
    """The effective site registry and policy at generation time (devices + policy), for re-derivation."""
    storage_paths: dict = field(default_factory=dict)
    """SOP Instance UID -> path relative to the storage folder, for stored (not offline) instances."""

    def by_role(self, role: str) -> list[CitedInstance]:
        return [i for i in self.instances if i.role == role]

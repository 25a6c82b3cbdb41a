"""What an evidence pack is built from: the decided study and the instances it cites.

Every producer of pack content (DICOM KOS / SR, thumbnails, the PDF report, the manifest) takes an
:class:`EvidenceSource`; :mod:`dicomcheck.evidence.collect` builds one from the index or from a
folder of files. The decision travels as the typed record
(:class:`~dicomcheck.decision_record.StudyDecisionUnderPolicy`, enums and all): the producers read
its attributes, and only the pack writer turns it into JSON (``model_dump(mode="json")``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ..decision_record import StudyDecisionUnderPolicy
from ..enums import CitedRole
from ..model import InstanceFacts
from ..own_objects import OWN_MANUFACTURER, OWN_SOP_CLASSES, is_own_object  # re-exported: the core recognises them
from ..registry import Registry
from ..store.records import ReceiptRecord as Receipt

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
    """How each stored copy reached dicomcheck (the index's receipts); empty for files analysed offline."""


@dataclass(frozen=True, slots=True)
class EvidenceSource:
    study_instance_uid: str
    decision: StudyDecisionUnderPolicy
    """The study's typed decision record (outcome, code, reasons, series, policy): what the KOS, SR
    and PDF producers read, and what a pack's ``evidence.json`` carries as its JSON dump."""
    instances: tuple[CitedInstance, ...]
    rules_version: str
    dicomcheck_version: str
    decision_id: int | None = None
    """The stored decision's id; None for a study analysed offline from files."""
    decided_at: dt.datetime | None = None
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    facts: tuple[InstanceFacts, ...] = ()
    """The header facts of every instance the decision was made from."""
    registry: Registry = field(default_factory=Registry)
    """The effective site registry and policy at generation time (devices + policy), for re-derivation."""
    storage_paths: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> path relative to the storage folder, for stored (not offline) instances."""

    def __post_init__(self) -> None:
        # the producers read attributes of the typed record: a JSON dump (a dict) is refused here,
        # not deep inside a producer
        if not isinstance(self.decision, StudyDecisionUnderPolicy):
            raise TypeError(
                f"EvidenceSource.decision must be a StudyDecisionUnderPolicy, not {type(self.decision).__name__}"
            )
        if not isinstance(self.registry, Registry):
            raise TypeError(f"EvidenceSource.registry must be a Registry, not {type(self.registry).__name__}")
        if self.decision.study_instance_uid != self.study_instance_uid:
            raise ValueError(
                f"the decision is of study {self.decision.study_instance_uid}, not of {self.study_instance_uid}"
            )

    def by_role(self, role: CitedRole) -> list[CitedInstance]:
        return [i for i in self.instances if i.role == role]

"""Our own evidence KOS / SR when a PACS routes it back: recognised in the core, because the index
must store such an object without letting it trigger, count toward or feed a decision."""

from __future__ import annotations

OWN_MANUFACTURER = "dicomcheck"
"""Manufacturer (0008,0070) of every object dicomcheck writes (dicomcheck.evidence.dicom)."""
OWN_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    }
)


def is_own_object(facts) -> bool:
    """An evidence KOS / SR that dicomcheck wrote (a PACS may route it back to the receiver): it is
    stored and indexed, but never triggers, counts toward or feeds a decision. Recognised by SOP
    class and Manufacturer, which survive any routing (the file meta does not)."""
    equipment = getattr(facts, "equipment", None)
    return (
        getattr(facts, "sop_class_uid", None) in OWN_SOP_CLASSES
        and getattr(equipment, "manufacturer", None) == OWN_MANUFACTURER
    )

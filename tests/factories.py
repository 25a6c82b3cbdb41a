"""Small builders of InstanceFacts for rule unit tests (no files involved)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from dicomcheck.model import Code, Equipment, InstanceFacts, PrivateCreator, ProcedureCode

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
_counter = itertools.count(1)

SIEMENS_CT = Equipment("SIEMENS", "SOMATOM Definition AS+", "CT54023", "54023", "syngo CT VA48A")


def facts(series: str = "1.2.3.1", study: str = "1.2.3", **changes) -> InstanceFacts:
    n = next(_counter)
    base = InstanceFacts(
        source=f"mem:{n}",
        sop_class_uid=CT,
        sop_instance_uid=f"1.2.3.9.{n}",
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        equipment=SIEMENS_CT,
        has_pixel_attributes=True,
        study_date="20260105",
    )
    return replace(base, **changes)


def code(value: str, scheme: str = "DCM", meaning: str = "") -> Code:
    return Code(value, scheme, meaning)


def proc(value: str, scheme: str = "C4", keyword: str = "ProcedureCodeSequence") -> ProcedureCode:
    return ProcedureCode(Code(value, scheme, ""), keyword)


def creator(name: str, group: int = 0x0047) -> PrivateCreator:
    return PrivateCreator(group, 0x10, name)

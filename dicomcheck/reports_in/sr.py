"""DICOM SR reports (Basic / Enhanced / Comprehensive Text SR) received by the SCP, read as reports (issue 12 §1).

The receiver stores an SR like any instance; this reads the study's SR instances into the report table
when the study's report is looked at (its view, a list filter, an export, a pack), once per instance (its
SOP Instance UID is the report's control ID, source ``sr``), so the receive path is unchanged. Our own
evidence SR (``own_objects``) is recognised and ignored. The text is every TEXT content item, under the
concept names of the containers above it; the status is F for a COMPLETE and VERIFIED document, C when it
names a predecessor document as well, else P.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from ..model import facts_from_dict
from ..own_objects import is_own_object
from ..store.reads import IndexReader
from ..store.reports import NewReport, Reports

log = logging.getLogger("dicomcheck.reports")
TEXT_SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    }
)
MAX_TEXT = 2 << 20
"""Characters of report text read from one SR at most (the rest is cut)."""
MAX_ITEMS = 10_000
"""Content items walked in one SR at most."""


def import_sr_reports(bind: Engine | Connection, storage_root: Path, study_uid: str) -> int:
    """Read the study's text SR instances not read yet into the report table; returns how many were added."""
    reader = IndexReader(bind)
    candidates = [
        r
        for r in reader.instances_of_study(study_uid)
        if r.sop_class_uid in TEXT_SR_CLASSES and not is_own_object(facts_from_dict(r.facts))
    ]
    if not candidates:
        return 0
    reports = Reports(bind)
    done = reports.control_ids("sr", study_uid)
    added = 0
    for row in candidates:
        key = f"{row.sop_instance_uid}#{row.version}"
        if key in done:
            continue
        read = read_sr(storage_root / row.path)
        if read is None:
            continue
        text, status, radiologist, when = read
        audit = {
            "event": "Procedure Record",
            "action": "C",
            "outcome": 0,
            "token_name": None,
            "role": None,
            "method": "C-STORE",
            "endpoint": "sr",
            "study_instance_uid": study_uid,
            "client_address": None,
            "detail": {"sop_instance_uid": row.sop_instance_uid, "status": status, "source": "sr"},
        }
        new = NewReport(study_uid, None, None, status, text, radiologist, when, "sr", None, key)
        reports.add(new, audit=audit)
        added += 1
    return added


def read_sr(path: Path) -> tuple[str, str, str | None, dt.datetime | None] | None:
    """Text, status, verifying observer and content time of a text SR file; None when it holds no text or
    cannot be read (logged by type, never by content)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        lines: list[str] = []
        _walk(dataset.get("ContentSequence") or [], lines, [0])
    except Exception as exc:  # noqa: BLE001 - a stored SR that cannot be read is not a report, never a failure
        log.warning("SR %s not read as a report: %s", path.name, type(exc).__name__)
        return None
    text = "\n".join(line for line in lines if line.strip()).strip()[:MAX_TEXT]
    if not text:
        return None
    complete = str(dataset.get("CompletionFlag", "")).upper() == "COMPLETE"
    verified = str(dataset.get("VerificationFlag", "")).upper() == "VERIFIED"
    status = "P"
    if complete and verified:
        status = "C" if dataset.get("PredecessorDocumentsSequence") else "F"
    observers = dataset.get("VerifyingObserverSequence") or []
    radiologist = str(observers[0].get("VerifyingObserverName", "")).replace("^", " ").strip() if observers else ""
    radiologist = radiologist[:128]
    return text, status, radiologist or None, _content_time(dataset)


def _walk(items: Any, lines: list[str], count: list[int]) -> None:
    for item in items:
        count[0] += 1
        if count[0] > MAX_ITEMS:
            return
        value_type = str(item.get("ValueType", ""))
        names = item.get("ConceptNameCodeSequence") or []
        name = str(names[0].get("CodeMeaning", "")).strip() if names else ""
        if value_type == "TEXT":
            value = str(item.get("TextValue", "")).strip()
            lines.append(value)
        elif value_type == "CONTAINER" and name:
            lines.append("")
            lines.append(f"{name.upper()}:")
        children = item.get("ContentSequence")
        if children:
            _walk(children, lines, count)


def _content_time(dataset: Any) -> dt.datetime | None:
    date, time = str(dataset.get("ContentDate", "")), str(dataset.get("ContentTime", ""))
    try:
        moment = dt.datetime.strptime(date + (time.split(".")[0] + "000000")[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC)

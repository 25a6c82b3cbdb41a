"""The DICOM objects of an evidence pack: a Key Object Selection Document and a Comprehensive SR.

Both are placed in the decided study (same Study Instance UID, patient and study attributes copied
from a cited instance's header), each in a series of its own, so a PACS files them beside the
images they cite:

* :func:`build_kos` flags every cited instance (all roles) under the document title
  (113020, DCM, "For Report Attachment") with a Key Object Description of the outcome;
* :func:`build_sr` records the outcome, the CPT code it supports, every reason (rule id + text +
  the header values behind it, each INFERRED FROM the instance it was read from), every series
  (kind, technique, origin, product, equipment) and the provenance (dicomcheck version, rules
  version, generation time, policy).

``minimal=True`` gives the PHI-minimal variant for packs that leave the organisation (see
:func:`patient_and_study`); such objects carry Patient Identity Removed ``YES`` and are never sent
to a PACS (:func:`dicomcheck.evidence.send.send_objects` refuses them).

The objects are ours: Manufacturer ``dicomcheck``, UIDs under ``2.25.``, our Implementation Class
UID in the file meta. The receiver recognises them when a PACS routes them back and never decides
from them (:func:`dicomcheck.evidence.model.is_own_object`). The same source gives the same
content every time (all times are the source's ``generated_at``); only the new Series and SOP
Instance UIDs differ between builds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..decision_record import EvidenceRecord, PolicyRecord, ReasonRecord, SeriesRecord
from ..enums import CitedRole, CptCode, Outcome
from .model import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    OWN_MANUFACTURER,
    UID_ROOT,
    CitedInstance,
    EvidenceSource,
)

MANUFACTURER = OWN_MANUFACTURER
MODEL_NAME = "dicomcheck evidence"
KOS_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
"""Series numbers of our objects: above the vendors' usual ranges (acquisitions, 100+ console, 5000+
workstation output) so the evidence sorts last in a PACS series list."""

KOS_TITLE = hd.sr.CodedConcept("113020", "DCM", "For Report Attachment")
"""CID 7010. The selection exists to accompany a report (the dicomcheck evidence SR and the audit
pack), not as clinical key images: "Of Interest" is what PACS show as the radiologist's own key
images, and the IOCM titles (113001 / 113037 / 113038 / 113039) make a PACS hide or delete the
flagged images, so they are never used."""

MINIMAL_PATIENT_NAME = "PHI-MINIMAL^DICOMCHECK"
MINIMAL_ID_HEX_DIGITS = 16
"""PHI-minimal Patient ID: the first 16 hex digits (64 bits) of SHA-256 over the original Patient ID
(UTF-8), unsalted, so packs of one patient still match each other. Unsalted means an auditor who
knows the original ID can confirm it; it is pseudonymisation for linkage, not anonymisation."""
DEIDENTIFICATION_METHOD = (
    "dicomcheck PHI-minimal evidence",
    "PatientName replaced by a fixed token",
    f"PatientID = first {MINIMAL_ID_HEX_DIGITS} hex of unsalted SHA-256",
    "birth date, sex, accession, referrer, study ID emptied",
    "UIDs, dates, equipment and descriptions retained",
)

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
_EMPTIED_WHEN_MINIMAL = ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID")

SCHEME = "99DCMCHK"
"""Private coding scheme (PS3.3 8.2: designators starting ``99`` are local) for the concepts
DICOM has no code for; declared in the Coding Scheme Identification Sequence."""


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning)


class C:
    """Concept names of the SR content tree (standard codes where one means exactly this)."""

    TITLE = _private("EVIDENCE", "3D post-processing evidence")
    OUTCOME = _private("OUTCOME", "Outcome")
    BILLING_CODE = hd.sr.CodedConcept("121147", "DCM", "Billing Code")
    SUMMARY = _private("SUMMARY", "Outcome statement")
    REASON = _private("REASON", "Reason")
    RULE = _private("RULE", "Rule")
    STATEMENT = _private("STATEMENT", "Statement")
    SERIES_UID = hd.sr.CodedConcept("112002", "DCM", "Series Instance UID")
    CITED_VALUE = _private("CITEDVALUE", "Cited header value")
    SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
    """The instance a cited value was read from (as highdicom names KOS references)."""
    SERIES = _private("SERIES", "Series")
    SERIES_DESCRIPTION = _private("SERIESDESC", "Series Description")
    MODALITY = hd.sr.CodedConcept("121139", "DCM", "Modality")
    KIND = _private("KIND", "Series kind")
    TECHNIQUE = _private("TECHNIQUE", "Technique")
    IS_3D = _private("IS3D", "3D post-processing")
    ORIGIN = _private("ORIGIN", "Origin")
    PRODUCT = _private("PRODUCT", "Product")
    KIND_RULE = _private("KINDRULE", "Kind rule")
    ORIGIN_RULE = _private("ORIGINRULE", "Origin rule")
    MANUFACTURER = hd.sr.CodedConcept("113878", "DCM", "Device Manufacturer")
    MODEL = hd.sr.CodedConcept("113879", "DCM", "Device Model Name")
    STATION = hd.sr.CodedConcept("113877", "DCM", "Device Name")
    """TID 1021 Device Participant: the device's name, i.e. its Station Name (0008,1010)."""
    SERIAL = hd.sr.CodedConcept("113880", "DCM", "Device Serial Number")
    SOFTWARE = _private("SOFTWARE", "Software Versions")
    CITED_INSTANCES = _private("CITED", "Cited instances")
    PROVENANCE = _private("PROVENANCE", "Provenance")
    ALGORITHM_NAME = hd.sr.CodedConcept("111001", "DCM", "Algorithm Name")
    ALGORITHM_VERSION = hd.sr.CodedConcept("111003", "DCM", "Algorithm Version")
    RULES_VERSION = _private("RULESVERSION", "Rules version")
    PROCESSED_AT = hd.sr.CodedConcept("111702", "DCM", "DateTime of processing")
    DECISION_ID = _private("DECISIONID", "Decision")
    DECIDED_AT = _private("DECIDEDAT", "Decided at")
    POLICY = _private("POLICY", "Site policy")


ROLE_CONCEPTS: dict[CitedRole, hd.sr.CodedConcept] = {
    CitedRole.THREE_D: _private("ROLE3D", "Representative 3D image"),
    CitedRole.ACQUISITION: _private("ROLEACQ", "Representative acquisition image"),
    CitedRole.CITED: _private("ROLECITED", "Cited instance"),
}

OUTCOME_MEANINGS: dict[Outcome, str] = {
    Outcome.SUPPORTS_76377: "3D post-processing on an independent workstation",
    Outcome.SUPPORTS_76376: "3D post-processing on the scanner console or PACS viewer",
    Outcome.NO_3D: "No 3D post-processing shown",
    Outcome.BUNDLED: "3D included in the base study (bundled)",
    Outcome.NEEDS_REVIEW: "3D present, where it was made needs review",
}
CPT_MEANINGS: dict[CptCode, str] = {
    "76377": "3D rendering on an independent workstation",
    "76376": "3D rendering not on an independent workstation",
}


# ---------------------------------------------------------------------------- shared pieces
@dataclass(frozen=True, slots=True)
class _Cited:
    instance: CitedInstance
    header: Dataset

    @property
    def is_image(self) -> bool:
        return "Rows" in self.header and "Columns" in self.header


def new_uid() -> str:
    """A UUID-derived UID (``2.25.<uuid>``): ours, unique without a registered root."""
    uid = generate_uid(prefix=None)
    assert uid.startswith(UID_ROOT)
    return uid


def _read_cited(source: EvidenceSource) -> list[_Cited]:
    if not source.instances:
        raise ValueError(f"study {source.study_instance_uid}: no cited instance to reference")
    cited = []
    for instance in source.instances:
        if not instance.path.is_file():
            raise FileNotFoundError(f"cited instance {instance.sop_instance_uid}: {instance.path} is missing")
        header = pydicom.dcmread(instance.path, stop_before_pixels=True)
        if header.get("SOPInstanceUID") != instance.sop_instance_uid:
            raise ValueError(
                f"{instance.path} holds {header.get('SOPInstanceUID')}, not the cited {instance.sop_instance_uid}"
            )
        if header.get("StudyInstanceUID") != source.study_instance_uid:
            raise ValueError(
                f"{instance.path} belongs to study {header.get('StudyInstanceUID')}, not {source.study_instance_uid}"
            )
        cited.append(_Cited(instance, header))
    return cited


def _header_for_patient(cited: Sequence[_Cited]) -> Dataset:
    """The header the patient and study attributes come from: a base image, else a 3D one, else any."""
    for role in (CitedRole.ACQUISITION, CitedRole.THREE_D, CitedRole.CITED):
        for c in cited:
            if c.instance.role == role:
                return c.header
    return cited[0].header


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def pseudonymous_id(patient_id: str) -> str:
    """The PHI-minimal Patient ID (see :data:`MINIMAL_ID_HEX_DIGITS`); empty stays empty."""
    if not patient_id:
        return ""
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:MINIMAL_ID_HEX_DIGITS]


def keyed_pseudonym(source: EvidenceSource) -> str | None:
    """The keyed pseudonym a PHI-minimal pack already put in the decision record, if any."""
    value = source.decision.patient_id or ""
    return value if value.startswith("hmac-sha256:") else None


def patient_and_study(header: Dataset, *, minimal: bool, pseudonym: str | None = None) -> dict[str, str]:
    """The patient and study attributes our objects carry, from a stored instance's header.

    PHI-minimal: Patient Name becomes :data:`MINIMAL_PATIENT_NAME`, Patient ID its SHA-256 prefix
    (:func:`pseudonymous_id`), birth date / sex / accession number / referring physician / study ID
    are emptied (all Type 2, so present and empty); Study Date / Time stay (as do all UIDs and the
    equipment), since an audit needs to place the study in time."""
    values = {kw: _text(header, kw) for kw in PATIENT_STUDY_KEYWORDS}
    if values["PatientSex"] not in ("M", "F", "O"):
        values["PatientSex"] = ""
    if minimal:
        values["PatientName"] = MINIMAL_PATIENT_NAME
        # packs pass the site's keyed pseudonym (dicomcheck.evidence.pack.pseudonym): not reversible
        # by hashing candidate IDs; the unkeyed SHA-256 prefix is only the stand-alone fallback
        values["PatientID"] = pseudonym or pseudonymous_id(values["PatientID"])
        for kw in _EMPTIED_WHEN_MINIMAL:
            values[kw] = ""
    return values


def _evidence_stub(c: _Cited, patient_study: dict[str, str] | None = None) -> Dataset:
    """What highdicom reads from an evidence dataset: the UIDs (and image-ness), and for the first one
    the patient and study attributes. Nothing else of the source header reaches our objects."""
    ds = Dataset()
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(ds, kw, c.header[kw].value)
    for kw, value in (patient_study or {}).items():
        setattr(ds, kw, value or None)
    return ds


def _local(moment: dt.datetime) -> dt.datetime:
    """A DA / TM value is local time (no Timezone Offset From UTC is set): the generation time in
    this machine's zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone()


def _dt_value(moment: dt.datetime) -> str:
    """A DT in the same local time as the DA / TM values, without an offset: DCMTK 3.6.7 (and so
    Orthanc and many PACS) rejects some offsets such as ``+0000`` in SR DATETIME items."""
    return _local(moment).strftime("%Y%m%d%H%M%S")


def _finish(
    ds: Dataset, source: EvidenceSource, patient_study: dict[str, str], *, minimal: bool, series_description: str
) -> Dataset:
    """Our equipment (the dicomcheck writing the object; the SR's provenance names the one that
    decided), times, character set, file meta and (PHI-minimal) de-identification marks."""
    if "ContributingEquipmentSequence" in ds:  # highdicom names itself with the current time: ours is the equipment
        del ds.ContributingEquipmentSequence
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = __version__
    ds.SeriesDescription = series_description
    for kw, value in patient_study.items():
        setattr(ds, kw, value or None)
    local = _local(source.generated_at)
    date, time = local.strftime("%Y%m%d"), local.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    if minimal:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = list(DEIDENTIFICATION_METHOD)
    meta = ds.file_meta
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)  # what pydicom would convert the str to
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # recomputed when written
    return ds


def _scrub(ds: Dataset, secrets: Iterable[str], token: str) -> None:
    """Replace any remaining occurrence of the original identifiers in text values (PHI-minimal)."""
    secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
    if not secrets:
        return

    def walk(d: Dataset) -> None:
        for element in d:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.VR in ("UT", "ST", "LT", "LO", "SH", "PN") and element.keyword not in (
                "PatientName",
                "PatientID",
            ):
                values = element.value if element.VM > 1 else [element.value]
                changed = False
                out = []
                for v in values:
                    text = "" if v is None else str(v)
                    for secret in secrets:
                        if secret in text:
                            text, changed = text.replace(secret, token), True
                    out.append(text)
                if changed:
                    element.value = out if element.VM > 1 else out[0]

    walk(ds)


def _secrets(header: Dataset) -> list[str]:
    name = _text(header, "PatientName")
    parts = [p for p in name.replace("=", "^").split("^") if len(p) >= 3]
    return [
        name,
        *parts,
        _text(header, "PatientID"),
        _text(header, "AccessionNumber"),
        _text(header, "OtherPatientIDs"),
    ]


def _observer() -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=IMPLEMENTATION_CLASS_UID,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )


def outcome_statement(source: EvidenceSource) -> str:
    outcome, code = source.decision.outcome, source.decision.code
    head = f"{outcome.value}: {OUTCOME_MEANINGS[outcome]}"
    head += f"; supports CPT {code}." if code else "; no 3D code."
    return head


@dataclass(frozen=True, slots=True)
class _Subject:
    """The cited instances read back, and the patient and study attributes our objects take from them."""

    cited: list[_Cited]
    header: Dataset
    """The header the patient and study attributes come from (:func:`_header_for_patient`)."""
    patient_study: dict[str, str]

    @classmethod
    def of(cls, source: EvidenceSource, *, minimal: bool) -> _Subject:
        cited = _read_cited(source)
        header = _header_for_patient(cited)
        return cls(cited, header, patient_and_study(header, minimal=minimal, pseudonym=keyed_pseudonym(source)))


def _our_object(
    make: Callable[..., Dataset],
    subject: _Subject,
    source: EvidenceSource,
    *,
    minimal: bool,
    series_number: int,
    series_description: str,
    **specific: Any,
) -> Dataset:
    """One of our documents (KOS or SR) in a series of its own, with its evidence, PHI-minimal
    scrubbing and our equipment: ``make`` is the highdicom class, ``specific`` its own arguments."""
    ds = make(
        evidence=[_evidence_stub(c, subject.patient_study if i == 0 else None) for i, c in enumerate(subject.cited)],
        series_instance_uid=new_uid(),
        series_number=series_number,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **specific,
    )
    if minimal:
        _scrub(ds, _secrets(subject.header), "[removed]")
    return _finish(
        ds,
        source,
        subject.patient_study,
        minimal=minimal,
        series_description=series_description + (" (PHI-minimal)" if minimal else ""),
    )


# ---------------------------------------------------------------------------- KOS
def build_kos(source: EvidenceSource, *, minimal: bool = False) -> Dataset:
    """A Key Object Selection Document flagging every cited instance of the source (TID 2010)."""
    subject = _Subject.of(source, minimal=minimal)
    cited = subject.cited
    rules = ", ".join(dict.fromkeys(r.rule.value for r in source.decision.reasons)) or "none"
    roles = {role: sum(1 for c in cited if c.instance.role == role) for role in CitedRole}
    description = (
        f"dicomcheck {source.dicomcheck_version} (rules {source.rules_version}) evidence for study "
        f"{source.study_instance_uid}. {outcome_statement(source)} Rules: {rules}. "
        f"Flagged: the {len(cited)} instance(s) whose header values the decision cites "
        f"({roles[CitedRole.THREE_D]} representative 3D, {roles[CitedRole.ACQUISITION]} representative acquisition, "
        f"{roles[CitedRole.CITED]} cited); "
        "the dicomcheck evidence report (Comprehensive SR) of this study gives the values."
    )
    content = hd.ko.KeyObjectSelection(
        document_title=KOS_TITLE,
        referenced_objects=[_reference_stub(c) for c in cited],
        observer_device_context=_observer(),
        description=description,
    )
    return _our_object(
        hd.ko.KeyObjectSelectionDocument,
        subject,
        source,
        minimal=minimal,
        series_number=KOS_SERIES_NUMBER,
        series_description="dicomcheck evidence: cited images",
        content=content,
    )


def _reference_stub(c: _Cited) -> Dataset:
    """highdicom makes an IMAGE item of a reference with Rows / Columns, else a COMPOSITE one."""
    ds = _evidence_stub(c)
    if c.is_image:
        ds.Rows, ds.Columns = c.header.Rows, c.header.Columns
    return ds


# ---------------------------------------------------------------------------- SR
def _container(name: hd.sr.CodedConcept, items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS, is_content_continuous=False
    )
    container.ContentSequence = hd.sr.ContentSequence(list(items))
    return container


def _text_item(
    name: hd.sr.CodedConcept,
    value: str,
    relationship: hd.sr.RelationshipTypeValues = hd.sr.RelationshipTypeValues.CONTAINS,
) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=relationship)


def _reference(c: _Cited, name: hd.sr.CodedConcept, relationship: hd.sr.RelationshipTypeValues) -> hd.sr.ContentItem:
    cls = hd.sr.ImageContentItem if c.is_image else hd.sr.CompositeContentItem
    return cls(
        name=name,
        referenced_sop_class_uid=c.header.SOPClassUID,
        referenced_sop_instance_uid=c.header.SOPInstanceUID,
        relationship_type=relationship,
    )


def _cited_value(item: EvidenceRecord, by_uid: dict[str, _Cited]) -> hd.sr.TextContentItem:
    """One header value behind a statement, INFERRED FROM the instance it was read from."""
    tag = f" {item.tag}" if item.tag else ""
    node = _text_item(C.CITED_VALUE, f'{item.keyword}{tag} = "{item.value}" [{item.signal}]')
    cited = by_uid.get(item.sop_instance_uid or "")
    if cited is not None:
        node.ContentSequence = hd.sr.ContentSequence(
            [_reference(cited, C.SOURCE, hd.sr.RelationshipTypeValues.INFERRED_FROM)]
        )
    return node


def _words(value: object) -> str:
    """A value as the SR writes it: an enum member by its value."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def _series_item(series: SeriesRecord, by_uid: dict[str, _Cited]) -> hd.sr.ContainerContentItem:
    items: list[hd.sr.ContentItem] = [
        hd.sr.UIDRefContentItem(
            name=C.SERIES_UID,
            value=series.series_instance_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    equipment = series.equipment
    for concept, value in (
        (C.SERIES_DESCRIPTION, series.series_description),
        (C.MODALITY, series.modality),
        (C.KIND, series.kind),
        (C.TECHNIQUE, series.technique),
        (C.IS_3D, "yes" if series.is_3d else "no"),
        (C.ORIGIN, series.origin),
        (C.PRODUCT, series.product),
        (C.KIND_RULE, series.kind_rule),
        (C.ORIGIN_RULE, series.origin_rule),
        (C.MANUFACTURER, equipment.manufacturer),
        (C.MODEL, equipment.model),
        (C.STATION, equipment.station_name),
        (C.SERIAL, equipment.device_serial_number),
        (C.SOFTWARE, equipment.software_versions),
    ):
        if value not in (None, ""):
            items.append(_text_item(concept, _words(value)))
    items.extend(_cited_value(e, by_uid) for e in series.evidence)
    return _container(C.SERIES, items)


def _reason_item(reason: ReasonRecord, by_uid: dict[str, _Cited]) -> hd.sr.ContainerContentItem:
    items: list[hd.sr.ContentItem] = [_text_item(C.RULE, reason.rule.value), _text_item(C.STATEMENT, reason.text)]
    items.extend(
        hd.sr.UIDRefContentItem(name=C.SERIES_UID, value=uid, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for uid in reason.series
    )
    items.extend(_cited_value(e, by_uid) for e in reason.evidence)
    return _container(C.REASON, items)


def _policy_text(policy: PolicyRecord) -> str:
    """Every site policy setting, ``name = value`` (a flag as Python writes it: True / False)."""
    return "; ".join(f"{name} = {_words(value)}" for name, value in policy)


def build_sr(source: EvidenceSource, *, minimal: bool = False) -> Dataset:
    """A Comprehensive SR of the decision: outcome and code, reasons, series and equipment, the
    cited instances (IMAGE / COMPOSITE items, also in the Current Requested Procedure Evidence
    Sequence) and the provenance.

    Content tree (concept names in :class:`C`; 99DCMCHK is our private scheme)::

        CONTAINER 3D post-processing evidence
          HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name / Manufacturer / Model
          CONTAINS CODE    Outcome = (supports_76377, 99DCMCHK, ...)
          CONTAINS CODE    Billing Code = (76377, C4, ...)              when the outcome supports one
          CONTAINS TEXT    Outcome statement
          CONTAINS CONTAINER Reason (one per reason)
                   TEXT Rule, TEXT Statement, UIDREF Series Instance UID..., TEXT Cited header value...
                        (each cited value INFERRED FROM the IMAGE / COMPOSITE it was read from)
          CONTAINS CONTAINER Series (one per series)
                   UIDREF Series Instance UID, TEXT description / modality / kind / technique / 3D /
                   origin / product / rules, Device Manufacturer / Model Name / Serial Number,
                   Station Name, Software Versions, TEXT Cited header value...
          CONTAINS CONTAINER Cited instances: IMAGE / COMPOSITE per cited instance, named by role
          CONTAINS CONTAINER Provenance: Algorithm Name / Version, Rules version,
                   DateTime of processing, Decision, Decided at, Site policy
    """
    subject = _Subject.of(source, minimal=minimal)
    cited = subject.cited
    by_uid = {c.instance.sop_instance_uid: c for c in cited}
    decision = source.decision
    outcome = decision.outcome

    root = hd.sr.ContainerContentItem(name=C.TITLE, is_content_continuous=False)  # SEPARATE: discrete statements
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(_observer())
    root.ContentSequence.append(
        hd.sr.CodeContentItem(
            name=C.OUTCOME,
            value=_private(outcome.value, OUTCOME_MEANINGS[outcome]),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    if code := decision.code:
        root.ContentSequence.append(
            hd.sr.CodeContentItem(
                name=C.BILLING_CODE,
                value=hd.sr.CodedConcept(code, "C4", CPT_MEANINGS[code]),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    root.ContentSequence.append(_text_item(C.SUMMARY, outcome_statement(source)))
    for reason in decision.reasons:
        root.ContentSequence.append(_reason_item(reason, by_uid))
    for series in decision.series:
        root.ContentSequence.append(_series_item(series, by_uid))
    root.ContentSequence.append(
        _container(
            C.CITED_INSTANCES,
            [_reference(c, ROLE_CONCEPTS[c.instance.role], hd.sr.RelationshipTypeValues.CONTAINS) for c in cited],
        )
    )
    provenance: list[hd.sr.ContentItem] = [
        _text_item(C.ALGORITHM_NAME, MANUFACTURER),
        _text_item(C.ALGORITHM_VERSION, source.dicomcheck_version),
        _text_item(C.RULES_VERSION, source.rules_version),
        hd.sr.DateTimeContentItem(
            name=C.PROCESSED_AT,
            value=_dt_value(source.generated_at),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
    ]
    if source.decision_id is not None:
        provenance.append(_text_item(C.DECISION_ID, f"dicomcheck decision #{source.decision_id}"))
    if source.decided_at is not None:
        provenance.append(
            hd.sr.DateTimeContentItem(
                name=C.DECIDED_AT,
                value=_dt_value(source.decided_at),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    provenance.append(_text_item(C.POLICY, _policy_text(decision.policy)))
    root.ContentSequence.append(_container(C.PROVENANCE, provenance))

    return _our_object(
        hd.sr.ComprehensiveSR,
        subject,
        source,
        minimal=minimal,
        series_number=SR_SERIES_NUMBER,
        series_description="dicomcheck evidence report",
        content=root,
        is_complete=True,
        is_final=True,
        is_verified=False,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=SCHEME, name="dicomcheck evidence concepts", responsible_organization="dicomcheck"
            )
        ],
    )


def write(ds: Dataset, path: Path) -> Path:
    """Write one of our objects as a Part-10 file (explicit VR little endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

"""Dataset -> :class:`InstanceFacts`. Pure: no file access, never raises on odd headers.

Tolerant reading (highdicom's principle): an attribute that is absent, empty or cannot be decoded
(bad VR, odd character set, broken item) is recorded as ``None`` / empty rather than failing the
instance. Pixel data is never touched.

The facts are read through one of two readers that give the same values:
:class:`~dicomcheck.pydicom_reader.PydicomReader` (every value through pydicom, the reference) and
:class:`~dicomcheck.raw_elements.RawReader` (the default: values decoded straight from pydicom's raw
elements, about twice as fast, used only where it is exact; see :mod:`dicomcheck.raw_elements`).
``extract_facts(..., fast=False)`` takes the reference path directly; ``tests/test_extract_speed.py``
checks that both give identical facts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataset import Dataset

from .model import Code, Equipment, InstanceFacts, ProcedureCode
from .pydicom_reader import PydicomReader, get_value
from .raw_elements import RawReader, RawReadingFallback, raw_reading_is_exact

log = logging.getLogger(__name__)

MAX_FRAME_ITEMS = 256
"""Per-frame functional group items examined per instance (bounds time on huge multi-frames)."""
MAX_REFERENCES = 64
"""Referenced SOP Instance UIDs kept per instance (only their presence and overlap matter)."""

_FRAME_TYPE_SEQUENCES = (
    "CTImageFrameTypeSequence",
    "MRImageFrameTypeSequence",
    "MRSpectroscopyFrameTypeSequence",
    "XRay3DFrameTypeSequence",
    "PETFrameTypeSequence",
    "ParametricMapFrameTypeSequence",
)
_PROCEDURE_CODE_SEQUENCES = (
    "ProcedureCodeSequence",
    "RequestedProcedureCodeSequence",
    "ScheduledProtocolCodeSequence",
    "PerformedProtocolCodeSequence",
)

_THROUGH_PYDICOM = PydicomReader()


# ---------------------------------------------------------------------------------------------
# The facts, read through either reader
# ---------------------------------------------------------------------------------------------


def _codes(read: PydicomReader, ds: Any, keyword: str) -> Iterator[Code]:
    for item in read.items(ds, keyword):
        value = read.text(item, "CodeValue") or read.text(item, "LongCodeValue")
        if value:
            yield Code(value, read.text(item, "CodingSchemeDesignator") or "", read.text(item, "CodeMeaning") or "")


def _functional_group_items(read: PydicomReader, ds: Dataset) -> Iterator[Any]:
    yield from read.items(ds, "SharedFunctionalGroupsSequence", 1)
    yield from read.items(ds, "PerFrameFunctionalGroupsSequence", MAX_FRAME_ITEMS)


def _references(read: PydicomReader, ds: Dataset) -> tuple[str, ...]:
    uids: dict[str, None] = {}

    def add_from(items: Iterable[Any]) -> None:
        for item in items:
            uid = read.text(item, "ReferencedSOPInstanceUID")
            if uid and len(uids) < MAX_REFERENCES:
                uids[uid] = None

    add_from(read.items(ds, "SourceImageSequence"))
    add_from(read.items(ds, "ReferencedImageSequence"))
    for series in read.items(ds, "ReferencedSeriesSequence"):
        add_from(read.items(series, "ReferencedInstanceSequence"))
    for study in read.items(ds, "CurrentRequestedProcedureEvidenceSequence"):
        for series in read.items(study, "ReferencedSeriesSequence"):
            add_from(read.items(series, "ReferencedSOPSequence"))
    for group in _functional_group_items(read, ds):
        for derivation in read.items(group, "DerivationImageSequence"):
            add_from(read.items(derivation, "SourceImageSequence"))
    return tuple(uids)


def _enhanced(
    read: PydicomReader, ds: Dataset
) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...], tuple[Code, ...], str | None]:
    """Frame types, volume techniques, derivation codes and description from functional groups."""
    frame_types: dict[tuple[str, ...], None] = {}
    techniques: dict[str, None] = {}
    codes: dict[Code, None] = {}
    description: str | None = None
    top = read.text(ds, "VolumeBasedCalculationTechnique")
    if top:
        techniques[top.upper()] = None
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return (), tuple(techniques), (), None
    for group in _functional_group_items(read, ds):
        for keyword in _FRAME_TYPE_SEQUENCES:
            for item in read.items(group, keyword):
                frame_type = read.values(item, "FrameType")
                if frame_type:
                    frame_types[frame_type] = None
                technique = read.text(item, "VolumeBasedCalculationTechnique")
                if technique:
                    techniques[technique.upper()] = None
        for derivation in read.items(group, "DerivationImageSequence"):
            for code in _codes(read, derivation, "DerivationCodeSequence"):
                codes[code] = None
            description = description or read.text(derivation, "DerivationDescription")
    return tuple(frame_types), tuple(techniques), tuple(codes), description


def _procedure(read: PydicomReader, ds: Dataset) -> tuple[tuple[ProcedureCode, ...], tuple[str, ...]]:
    codes: dict[ProcedureCode, None] = {}
    descriptions: dict[str, None] = {}

    def collect(item: Any) -> None:
        for keyword in _PROCEDURE_CODE_SEQUENCES:
            for code in _codes(read, item, keyword):
                codes[ProcedureCode(code, keyword)] = None
        text = read.text(item, "RequestedProcedureDescription")
        if text:
            descriptions[text] = None

    collect(ds)
    for request in read.items(ds, "RequestAttributesSequence"):
        collect(request)
    return tuple(codes), tuple(descriptions)


def _number_of_frames(read: PydicomReader, ds: Dataset) -> int:
    try:
        return max(1, int(read.value(ds, "NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def header_value(ds: Dataset, keyword: str) -> Any:
    """What ``ds.get(keyword)`` gives, read from the raw element where that is exact (so the
    element stays unconverted); ``None`` when absent or undecodable, like the facts."""
    if isinstance(ds, Dataset) and raw_reading_is_exact():
        try:
            return RawReader().value(ds, keyword)
        except Exception:
            log.debug("raw reading of %s failed, reading it through pydicom", keyword, exc_info=True)
    return get_value(ds, keyword)


def extract_facts(ds: Dataset, source: str, *, ae_title: str | None = None, fast: bool = True) -> InstanceFacts:
    """Build the :class:`InstanceFacts` of one header.

    Parameters
    ----------
    ds:
        The dataset, read without pixel data. ``ds.file_meta`` is used when present.
    source:
        Where the instance came from, for error messages and evidence.
    ae_title:
        The sender's AE title when known (calling AE of an association); defaults to the file
        meta Source Application Entity Title.
    fast:
        Read values from pydicom's raw elements where that is exact (the default; see the
        module docstring). ``False`` reads every value through pydicom: the reference the raw
        path is tested against. Both give the same facts.
    """
    if fast and isinstance(ds, Dataset) and raw_reading_is_exact():
        try:
            return _facts(RawReader(), ds, source, ae_title)
        except RawReadingFallback as exc:
            log.debug("%s: %s needs pydicom, reading the header through it", source, exc)
        except Exception:  # the reference path decides what an odd header gives
            log.debug("%s: raw reading failed, reading the header through pydicom", source, exc_info=True)
    return _facts(_THROUGH_PYDICOM, ds, source, ae_title)


def _facts(read: PydicomReader, ds: Dataset, source: str, ae_title: str | None) -> InstanceFacts:
    meta = getattr(ds, "file_meta", None) or Dataset()
    text = read.text
    frame_types, techniques, fg_codes, fg_description = _enhanced(read, ds)
    derivation_codes = tuple(dict.fromkeys((*_codes(read, ds, "DerivationCodeSequence"), *fg_codes)))
    procedure_codes, requested = _procedure(read, ds)
    equipment = Equipment(
        manufacturer=text(ds, "Manufacturer"),
        model=text(ds, "ManufacturerModelName"),
        station_name=text(ds, "StationName"),
        device_serial_number=text(ds, "DeviceSerialNumber"),
        software_versions=text(ds, "SoftwareVersions"),
    )
    return InstanceFacts(
        source=source,
        sop_class_uid=text(ds, "SOPClassUID") or text(meta, "MediaStorageSOPClassUID"),
        sop_instance_uid=text(ds, "SOPInstanceUID") or text(meta, "MediaStorageSOPInstanceUID"),
        study_instance_uid=text(ds, "StudyInstanceUID"),
        series_instance_uid=text(ds, "SeriesInstanceUID"),
        modality=(text(ds, "Modality") or "").upper() or None,
        accession_number=text(ds, "AccessionNumber"),
        patient_id=text(ds, "PatientID"),
        issuer_of_patient_id=text(ds, "IssuerOfPatientID"),
        study_date=text(ds, "StudyDate"),
        study_description=text(ds, "StudyDescription"),
        series_description=text(ds, "SeriesDescription"),
        series_date=text(ds, "SeriesDate"),
        content_date=text(ds, "ContentDate"),
        body_part_examined=text(ds, "BodyPartExamined"),
        series_number=text(ds, "SeriesNumber"),
        protocol_name=text(ds, "ProtocolName"),
        requested_procedure_descriptions=requested,
        performed_procedure_step_description=text(ds, "PerformedProcedureStepDescription"),
        image_type=read.values(ds, "ImageType"),
        frame_types=frame_types,
        volume_techniques=techniques,
        derivation_codes=derivation_codes,
        derivation_description=text(ds, "DerivationDescription") or fg_description,
        procedure_codes=procedure_codes,
        equipment=equipment,
        sc_manufacturer=text(ds, "SecondaryCaptureDeviceManufacturer"),
        sc_model=text(ds, "SecondaryCaptureDeviceManufacturerModelName"),
        sc_software_versions=text(ds, "SecondaryCaptureDeviceSoftwareVersions"),
        conversion_type=text(ds, "ConversionType"),
        private_creators=read.private_creators(ds),
        implementation_class_uid=text(meta, "ImplementationClassUID"),
        implementation_version_name=text(meta, "ImplementationVersionName"),
        source_ae_title=ae_title or text(meta, "SourceApplicationEntityTitle"),
        referenced_sop_instance_uids=_references(read, ds),
        number_of_frames=_number_of_frames(read, ds),
        has_pixel_attributes="Rows" in ds or "PixelData" in ds,
        burned_in_annotation=text(ds, "BurnedInAnnotation"),
        patient_identity_removed=text(ds, "PatientIdentityRemoved"),
    )

"""Dataset -> :class:`InstanceFacts`. Pure: no file access, never raises on odd headers.

Tolerant reading (highdicom's principle): an attribute that is absent, empty or cannot be decoded
(bad VR, odd character set, broken item) is recorded as ``None`` / empty rather than failing the
instance. Pixel data is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from .model import Code, Equipment, InstanceFacts, PrivateCreator, ProcedureCode

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


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value that cannot be decoded is treated as absent
        log.debug("undecodable %s", keyword)
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v).strip() for v in value)
        else:
            text = str(value).strip()
    except Exception:  # noqa: BLE001
        return None
    text = text.replace("\x00", "").strip()
    return text or None


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = _get(ds, keyword)
    if value is None:
        return ()
    try:
        if isinstance(value, str):
            items: Iterable[Any] = value.split("\\")
        elif isinstance(value, (bytes, bytearray)):
            items = value.decode("ascii", "replace").split("\\")
        else:
            items = list(value)
        return tuple(str(v).strip().upper() for v in items)
    except Exception:  # noqa: BLE001
        return ()


def _items(ds: Dataset | None, keyword: str, limit: int | None = None) -> Iterator[Dataset]:
    if ds is None:
        return
    seq = _get(ds, keyword)
    if not seq:
        return
    try:
        for index, item in enumerate(seq):
            if limit is not None and index >= limit:
                return
            if isinstance(item, Dataset):
                yield item
    except Exception:  # noqa: BLE001
        return


def _codes(ds: Dataset, keyword: str) -> Iterator[Code]:
    for item in _items(ds, keyword):
        value = _text(item, "CodeValue") or _text(item, "LongCodeValue")
        if value:
            yield Code(value, _text(item, "CodingSchemeDesignator") or "", _text(item, "CodeMeaning") or "")


def _functional_group_items(ds: Dataset) -> Iterator[Dataset]:
    yield from _items(ds, "SharedFunctionalGroupsSequence", 1)
    yield from _items(ds, "PerFrameFunctionalGroupsSequence", MAX_FRAME_ITEMS)


def _private_creators(ds: Dataset) -> tuple[PrivateCreator, ...]:
    creators: list[PrivateCreator] = []
    try:
        tags = [BaseTag(t) for t in ds.keys()]
    except Exception:  # noqa: BLE001
        return ()
    for tag in tags:
        if tag.group % 2 == 1 and 0x10 <= tag.element <= 0xFF and tag.group > 0x0008:
            try:
                value = ds[tag].value
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                name = str(value).replace("\x00", "").strip()
            except Exception:  # noqa: BLE001
                continue
            if name:
                creators.append(PrivateCreator(tag.group, tag.element, name))
    return tuple(creators)


def _references(ds: Dataset) -> tuple[str, ...]:
    uids: dict[str, None] = {}

    def add_from(items: Iterable[Dataset]) -> None:
        for item in items:
            uid = _text(item, "ReferencedSOPInstanceUID")
            if uid and len(uids) < MAX_REFERENCES:
                uids[uid] = None

    add_from(_items(ds, "SourceImageSequence"))
    add_from(_items(ds, "ReferencedImageSequence"))
    for series in _items(ds, "ReferencedSeriesSequence"):
        add_from(_items(series, "ReferencedInstanceSequence"))
    for study in _items(ds, "CurrentRequestedProcedureEvidenceSequence"):
        for series in _items(study, "ReferencedSeriesSequence"):
            add_from(_items(series, "ReferencedSOPSequence"))
    for group in _functional_group_items(ds):
        for derivation in _items(group, "DerivationImageSequence"):
            add_from(_items(derivation, "SourceImageSequence"))
    return tuple(uids)


def _enhanced(ds: Dataset) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...], tuple[Code, ...], str | None]:
    """Frame types, volume techniques, derivation codes and description from functional groups."""
    frame_types: dict[tuple[str, ...], None] = {}
    techniques: dict[str, None] = {}
    codes: dict[Code, None] = {}
    description: str | None = None
    top = _text(ds, "VolumeBasedCalculationTechnique")
    if top:
        techniques[top.upper()] = None
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return (), tuple(techniques), (), None
    for group in _functional_group_items(ds):
        for keyword in _FRAME_TYPE_SEQUENCES:
            for item in _items(group, keyword):
                frame_type = _values(item, "FrameType")
                if frame_type:
                    frame_types[frame_type] = None
                technique = _text(item, "VolumeBasedCalculationTechnique")
                if technique:
                    techniques[technique.upper()] = None
        for derivation in _items(group, "DerivationImageSequence"):
            for code in _codes(derivation, "DerivationCodeSequence"):
                codes[code] = None
            description = description or _text(derivation, "DerivationDescription")
    return tuple(frame_types), tuple(techniques), tuple(codes), description


def _procedure(ds: Dataset) -> tuple[tuple[ProcedureCode, ...], tuple[str, ...]]:
    codes: dict[ProcedureCode, None] = {}
    descriptions: dict[str, None] = {}

    def collect(item: Dataset) -> None:
        for keyword in _PROCEDURE_CODE_SEQUENCES:
            for code in _codes(item, keyword):
                codes[ProcedureCode(code, keyword)] = None
        text = _text(item, "RequestedProcedureDescription")
        if text:
            descriptions[text] = None

    collect(ds)
    for request in _items(ds, "RequestAttributesSequence"):
        collect(request)
    return tuple(codes), tuple(descriptions)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(_get(ds, "NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def extract_facts(ds: Dataset, source: str, *, ae_title: str | None = None) -> InstanceFacts:
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
    """
    meta = getattr(ds, "file_meta", None) or Dataset()
    frame_types, techniques, fg_codes, fg_description = _enhanced(ds)
    derivation_codes = tuple(dict.fromkeys((*_codes(ds, "DerivationCodeSequence"), *fg_codes)))
    procedure_codes, requested = _procedure(ds)
    equipment = Equipment(
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        station_name=_text(ds, "StationName"),
        device_serial_number=_text(ds, "DeviceSerialNumber"),
        software_versions=_text(ds, "SoftwareVersions"),
    )
    return InstanceFacts(
        source=source,
        sop_class_uid=_text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=(_text(ds, "Modality") or "").upper() or None,
        accession_number=_text(ds, "AccessionNumber"),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_text(ds, "SeriesNumber"),
        protocol_name=_text(ds, "ProtocolName"),
        requested_procedure_descriptions=requested,
        performed_procedure_step_description=_text(ds, "PerformedProcedureStepDescription"),
        image_type=_values(ds, "ImageType"),
        frame_types=frame_types,
        volume_techniques=techniques,
        derivation_codes=derivation_codes,
        derivation_description=_text(ds, "DerivationDescription") or fg_description,
        procedure_codes=procedure_codes,
        equipment=equipment,
        sc_manufacturer=_text(ds, "SecondaryCaptureDeviceManufacturer"),
        sc_model=_text(ds, "SecondaryCaptureDeviceManufacturerModelName"),
        sc_software_versions=_text(ds, "SecondaryCaptureDeviceSoftwareVersions"),
        conversion_type=_text(ds, "ConversionType"),
        private_creators=_private_creators(ds),
        implementation_class_uid=_text(meta, "ImplementationClassUID"),
        implementation_version_name=_text(meta, "ImplementationVersionName"),
        source_ae_title=ae_title or _text(meta, "SourceApplicationEntityTitle"),
        referenced_sop_instance_uids=_references(ds),
        number_of_frames=_number_of_frames(ds),
        has_pixel_attributes="Rows" in ds or "PixelData" in ds,
        burned_in_annotation=_text(ds, "BurnedInAnnotation"),
        patient_identity_removed=_text(ds, "PatientIdentityRemoved"),
    )

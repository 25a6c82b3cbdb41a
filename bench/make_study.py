"""Write a deterministic synthetic CT study of N files for the ``analyze`` benchmark.

One study, four kinds of series, shaped like a Siemens SOMATOM export:

* ``ORIGINAL\\PRIMARY\\AXIAL`` acquisition (about 60 % of the files),
* a console MPR series (``DERIVED\\SECONDARY\\MPR\\CT_SOM5 MPR``, derivation code 113072),
* a console MIP series (``DERIVED\\PRIMARY\\AXIAL\\CT_SOM5 MIP``),
* a few Secondary Capture images (the dose "Patient Protocol" page).

Every file carries the full SOP Common, Patient, General Study, General Series, Frame of
Reference, General Equipment, General Image, Image Plane, Image Pixel and CT Image modules, the
private groups a Siemens CT writes (``SIEMENS CT VA0  COAD``, ``SIEMENS MED``, ``SIEMENS CSA
HEADER`` with a few KB of OB data, ``SIEMENS MEDCOM HEADER2``), a Referenced Image Sequence on
acquisitions, a Source Image Sequence on derived images and 128 x 128 16-bit pixel data, so a
file is about 50 KB of which about 17 KB is header.

Deterministic: the same N gives byte-identical files (fixed UIDs from
``pydicom.uid.generate_uid(entropy_srcs=...)``, fixed dates, seeded pixel data).

Usage::

    python bench/make_study.py 5000 bench/out/study-5000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GENERATOR_VERSION = 1
"""Bump when the files change, so cached studies are rebuilt."""

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SIEMENS_IMPLEMENTATION = "1.3.12.2.1107.5.1.4"
ROWS = COLUMNS = 128
CSA_IMAGE_BYTES = 5 * 1024
CSA_SERIES_BYTES = 8 * 1024
MPR_CODE = ("113072", "Multiplanar reformatting")


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["dicomcheck-bench", *map(str, parts)])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _csa_blob(size: int, seed: int) -> bytes:
    """A CSA-like blob: the "SV10" signature, then named entries, padded to ``size`` bytes."""
    rng = np.random.default_rng(seed)
    out = bytearray(b"SV10\x04\x03\x02\x01")
    names = [
        b"EchoLinePosition",
        b"SliceMeasurementDuration",
        b"GantryTilt",
        b"TablePosition",
        b"ImaCoilString",
        b"SequenceMask",
        b"DetectorTemperature",
        b"SliceResolution",
    ]
    i = 0
    while len(out) < size:
        name = names[i % len(names)] + b"%d" % i
        out += name.ljust(64, b"\x00") + b"\x01\x00\x00\x00" + b"DS\x00\x00" + rng.bytes(48)
        i += 1
    return bytes(out[:size])


SERIES_FIELDS = ("key", "number", "sop_class", "image_type", "description", "kernel", "derivation")
SERIES = (
    ("acq", 2, CT_IMAGE, ["ORIGINAL", "PRIMARY", "AXIAL"], "Abdomen  1.0  Br40  3", "Br40d", None),
    ("mpr", 3, CT_IMAGE, ["DERIVED", "SECONDARY", "MPR", "CT_SOM5 MPR"], "Cor  3.0  Br40", "Br40d", MPR_CODE),
    ("mip", 4, CT_IMAGE, ["DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 MIP"], "MIP ax 10.0", "Br40d", None),
    ("sc", 501, SECONDARY_CAPTURE, ["DERIVED", "SECONDARY", "OTHER", "CT_SOM5 PROT"], "Patient Protocol", None, None),
)
"""The study's series, one row each (``SERIES_FIELDS``); ``plan`` adds how many files each gets."""


def plan(n: int) -> list[dict]:
    """The series of an ``n``-file study: counts and the attributes that differ per series."""
    sc = 3 if n >= 20 else 0
    mip = n * 15 // 100
    mpr = n * 25 // 100
    counts = {"acq": n - sc - mip - mpr, "mpr": mpr, "mip": mip, "sc": sc}
    return [dict(zip(SERIES_FIELDS, row, strict=True), count=counts[row[0]]) for row in SERIES]


def _template(n: int, series: dict, study_uid: str, frame_uid: str) -> Dataset:
    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = series["image_type"]
    ds.InstanceCreationDate = "20260105"
    ds.InstanceCreationTime = "101530.123000"
    ds.SOPClassUID = series["sop_class"]
    ds.SOPInstanceUID = "1.2"
    # General Study / Patient / Series
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20260105"
    ds.StudyTime = "100212.000000"
    ds.SeriesTime = "101012.000000"
    ds.AcquisitionTime = "101012.500000"
    ds.ContentTime = "101012.500000"
    ds.AccessionNumber = f"BENCH{n:07d}"
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.InstitutionName = "Bench General Hospital"
    ds.InstitutionAddress = "1 Header Street, Parse City"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT54023"
    ds.StudyDescription = "CT ABDOMEN PELVIS W CONTRAST"
    ds.ProcedureCodeSequence = Sequence([_code("74177", "C4", "CT abd & pelvis w/contrast")])
    ds.SeriesDescription = series["description"]
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName = "Tech^Tom"
    ds.OperatorsName = "Tech^Tom"
    ds.ManufacturerModelName = "SOMATOM Definition AS+"
    ref_pps = Dataset()
    ref_pps.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    ref_pps.ReferencedSOPInstanceUID = _uid(n, "pps")
    ds.ReferencedPerformedProcedureStepSequence = Sequence([ref_pps])
    if series["sop_class"] == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
        ds.SecondaryCaptureDeviceManufacturer = "SIEMENS"
        ds.SecondaryCaptureDeviceManufacturerModelName = "SOMATOM Definition AS+"
        ds.SecondaryCaptureDeviceSoftwareVersions = "syngo CT VA48A"
    ds.PatientName = f"Bench^Patient^{n}"
    ds.PatientID = f"BP{n:06d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.PatientAge = "066Y"
    ds.PatientSize = "1.75"
    ds.PatientWeight = "80"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ContrastBolusAgent = "IOPAMIDOL 370"
    ds.ContrastBolusVolume = "100"
    if series["kernel"]:
        # CT Image / acquisition
        ds.ScanOptions = "HELICAL_CT"
        ds.SliceThickness = "1" if series["key"] == "acq" else "3"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.DeviceSerialNumber = "54023"
        ds.SoftwareVersions = "syngo CT VA48A"
        ds.ProtocolName = "AbdPel_Contrast"
        ds.ReconstructionDiameter = "380"
        ds.DistanceSourceToDetector = "1085.6"
        ds.DistanceSourceToPatient = "595"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "160"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = "210"
        ds.Exposure = "105"
        ds.FilterType = "FLAT"
        ds.GeneratorPower = "25"
        ds.FocalSpots = "1.2"
        ds.DateOfLastCalibration = "20260104"
        ds.TimeOfLastCalibration = "063012.000000"
        ds.ConvolutionKernel = series["kernel"]
        ds.PatientPosition = "FFS"
        ds.RevolutionTime = 0.5
        ds.SingleCollimationWidth = 0.6
        ds.TotalCollimationWidth = 38.4
        ds.TableSpeed = 46.0
        ds.TableFeedPerRotation = 23.0
        ds.SpiralPitchFactor = 0.6
        ds.DataCollectionCenterPatient = [0.0, -160.0, -510.0]
        ds.ReconstructionTargetCenterPatient = [0.0, -160.0, -510.0]
        ds.ExposureModulationType = "XYZ_EC"
        ds.CTDIvol = 12.43
        ds.CTDIPhantomTypeCodeSequence = Sequence([_code("113691", "DCM", "IEC Body Dosimetry Phantom")])
        ds.EstimatedDoseSaving = 31.2
    else:
        ds.DeviceSerialNumber = "54023"
        ds.SoftwareVersions = "syngo CT VA48A"
        ds.PatientPosition = "FFS"
    # Siemens private groups: 0019 (CT acquisition), 0021 (MED), 0029 (CSA + MEDCOM)
    block = ds.private_block(0x0019, "SIEMENS CT VA0  COAD", create=True)
    for offset, value in (
        (0x92, "1"),
        (0x93, "595"),
        (0x94, "1085.6"),
        (0x96, "0.5"),
        (0x97, "0"),
        (0x98, "21"),
        (0xB0, "38.4"),
    ):
        block.add_new(offset, "DS", value)
    block.add_new(0xA2, "UL", 1540)
    block = ds.private_block(0x0021, "SIEMENS MED", create=True)
    block.add_new(0x11, "DS", ["0", "0"])
    block.add_new(0x12, "FD", 0.0)
    block.add_new(0x14, "IS", "1")
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    block.add_new(0x09, "LO", "20260105")
    block.add_new(0x10, "OB", _csa_blob(CSA_IMAGE_BYTES, series["number"]))
    block.add_new(0x18, "CS", "CT")
    block.add_new(0x19, "LO", "20260105")
    block.add_new(0x20, "OB", _csa_blob(CSA_SERIES_BYTES, series["number"] + 1000))
    block = ds.private_block(0x0029, "SIEMENS MEDCOM HEADER2", create=True)
    block.add_new(0x60, "LO", "com")
    # General Study / Series / Frame of Reference identifiers
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(n, "series", series["key"])
    ds.StudyID = "1"
    ds.SeriesNumber = str(series["number"])
    if series["key"] == "acq":
        ds.AcquisitionNumber = "1"
    ds.InstanceNumber = "1"
    if series["sop_class"] == SECONDARY_CAPTURE:
        ds.PatientOrientation = ["L", "P"]
    if series["sop_class"] == CT_IMAGE:
        ds.ImagePositionPatient = ["-190", "-350", "-510"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = "-510"
    ds.PerformedProcedureStepStartDate = "20260105"
    ds.PerformedProcedureStepStartTime = "100212.000000"
    ds.PerformedProcedureStepID = f"PPS{n:06d}"
    ds.PerformedProcedureStepDescription = "CT Abdomen Pelvis"
    request = Dataset()
    request.RequestedProcedureID = f"RP{n:06d}"
    request.ScheduledProcedureStepID = f"SPS{n:06d}"
    request.ScheduledProcedureStepDescription = "CT ABDOMEN PELVIS W CONTRAST"
    ds.RequestAttributesSequence = Sequence([request])
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = ["0.7421875", "0.7421875"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["400", "2000"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["WINDOW1", "WINDOW2"]
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "YES" if series["sop_class"] == SECONDARY_CAPTURE else "NO"
    ds.IrradiationEventUID = _uid(n, "irradiation")
    if series["derivation"]:
        value, meaning = series["derivation"]
        ds.DerivationDescription = "Multiplanar reformatting, coronal, 3.0 mm"
        ds.DerivationCodeSequence = Sequence([_code(value, "DCM", meaning)])
    rng = np.random.default_rng(series["number"])
    ds.PixelData = rng.integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = series["sop_class"]
    meta.MediaStorageSOPInstanceUID = "1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = SIEMENS_IMPLEMENTATION
    meta.ImplementationVersionName = "SIEMENS_CTVA48A"
    ds.file_meta = meta
    return ds


def _ref_item(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def write_study(n: int, out: str | Path, *, force: bool = False) -> dict:
    """Write the ``n``-file study into ``out`` (a folder of one subfolder per series).

    Cached: when ``out`` already holds this generator version's study of ``n`` files (per its
    manifest ``<out>.json``), nothing is written. Returns the manifest.
    """
    out = Path(out)
    manifest_path = out.with_name(out.name + ".json")
    if not force and out.is_dir() and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("files") == n:
            manifest["cached"] = True
            return manifest
    started = time.perf_counter()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    study_uid = _uid(n, "study")
    frame_uid = _uid(n, "frame")
    acquisition_uids: list[str] = []
    localizer_uid = _uid(n, "localizer")
    series_counts = {}
    total_bytes = 0
    for series in plan(n):
        if not series["count"]:
            continue
        folder = partial / f"S{series['number']:03d}"
        folder.mkdir(parents=True)
        ds = _template(n, series, study_uid, frame_uid)
        for i in range(series["count"]):
            sop_uid = _uid(n, series["key"], i)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.InstanceNumber = str(i + 1)
            ds.ContentTime = f"1010{12 + i // 100000:02d}.{i % 1000000:06d}"
            if series["sop_class"] == CT_IMAGE:
                z = -510 + i * (1.0 if series["key"] == "acq" else 3.0)
                ds.ImagePositionPatient = ["-190", "-350", f"{z:g}"]
                ds.SliceLocation = f"{z:g}"
            if series["key"] == "acq":
                acquisition_uids.append(sop_uid)
                ds.ReferencedImageSequence = Sequence([_ref_item(CT_IMAGE, localizer_uid)])
            elif series["key"] in ("mpr", "mip") and acquisition_uids:
                width = 4 if series["key"] == "mpr" else 16
                start = (i * width) % max(1, len(acquisition_uids) - width)
                ds.SourceImageSequence = Sequence(
                    [_ref_item(CT_IMAGE, uid) for uid in acquisition_uids[start : start + width]]
                )
            path = folder / f"IM{i + 1:06d}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            total_bytes += path.stat().st_size
        series_counts[series["key"]] = series["count"]
    partial.rename(out)
    pixel_bytes = ROWS * COLUMNS * 2
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "files": n,
        "series": series_counts,
        "study_instance_uid": study_uid,
        "total_bytes": total_bytes,
        "mean_file_bytes": round(total_bytes / n),
        "mean_header_bytes": round(total_bytes / n) - pixel_bytes,
        "seconds_to_write": round(time.perf_counter() - started, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["cached"] = False
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=int, help="number of files (instances) in the study")
    parser.add_argument("out", type=Path, help="folder to write the study into")
    parser.add_argument("--force", action="store_true", help="rewrite even when cached")
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("files must be at least 1")
    manifest = write_study(args.files, args.out, force=args.force)
    json.dump(manifest, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small, valid DICOM files written on the fly for tests."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_dataset(
    study: str,
    series: str,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    station: str = "CT54023",
    rows: int = 2,
    **extra,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "P1", "TEST^CLI", "ACC-CLI"
    ds.Modality, ds.ImageType, ds.StudyDate, ds.StudyTime = "CT", image_type.split("\\"), "20260105", "101500"
    ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "", "1", 1, 1
    ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = "SIEMENS", "SOMATOM Definition AS+", station
    ds.DeviceSerialNumber, ds.SoftwareVersions = "54023", "syngo CT VA48A"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256) + b"\0" * (rows * rows * 2 % 256)
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def write_ct(
    path: Path, study: str, series: str, image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", station: str = "CT54023", **extra
) -> Path:
    ds = ct_dataset(study, series, image_type, station, **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(folder: Path, *, acquisition: int = 3, mip: int = 2, rows: int = 2) -> tuple[str, list[Path]]:
    """A CT study: an acquisition series and a console MIP series (supports 76376)."""
    study, acq, mip_series = generate_uid(), generate_uid(), generate_uid()
    paths = [
        write_ct(
            folder / "acq" / f"{i:04d}.dcm",
            study,
            acq,
            SeriesDescription="Abdomen 1.0",
            InstanceNumber=i + 1,
            rows=rows,
        )
        for i in range(acquisition)
    ]
    paths += [
        write_ct(
            folder / "mip" / f"{i:04d}.dcm",
            study,
            mip_series,
            "DERIVED\\PRIMARY\\AXIAL\\CT_SOM5 MIP",
            SeriesDescription="MIP cor",
            SeriesNumber=100,
            InstanceNumber=i + 1,
            rows=rows,
        )
        for i in range(mip)
    ]
    return study, paths


def encode_body(ds: Dataset) -> bytes:
    """The data set as a C-STORE carries it (Explicit VR Little Endian, no file meta), for tests that
    craft the DIMSE messages themselves."""
    body = ds.copy()
    del body.file_meta
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, body)
    return raw.getvalue()

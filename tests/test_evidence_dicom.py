"""The evidence KOS and SR of every synthetic study: valid for dciodvfy, readable by highdicom, their
references resolving to the cited stored instances, and a PHI-minimal variant with no patient name
or ID left anywhere."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicomcheck import __version__
from dicomcheck.evidence.collect import from_folder
from dicomcheck.evidence.dicom import (
    KOS_TITLE,
    MANUFACTURER,
    MINIMAL_PATIENT_NAME,
    MODEL_NAME,
    C,
    build_kos,
    build_sr,
    pseudonymous_id,
    write,
)
from dicomcheck.evidence.model import IMPLEMENTATION_CLASS_UID, EvidenceSource, is_own_object
from dicomcheck.extract import extract_facts
from fixtures.build import CASES

from .peers import require_peer

CASE_NAMES = [case.name for case in CASES]
IMAGE, COMPOSITE, TEXT = hd.sr.ValueTypeValues.IMAGE, hd.sr.ValueTypeValues.COMPOSITE, hd.sr.ValueTypeValues.TEXT


def dciodvfy(path: Path) -> list[str]:
    """The Error / Warning lines of dciodvfy; fails the test on any Error (printing the warnings)."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Error", "Warning"))]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy {path.name}:\n" + "\n".join(lines)
    return lines


def all_values(ds: pydicom.Dataset):
    """Every element value of the data set (and its file meta), sequences recursively, as text."""
    datasets = [ds] + ([ds.file_meta] if getattr(ds, "file_meta", None) is not None else [])
    for d in datasets:
        for element in d:
            if element.VR == "SQ":
                for item in element.value:
                    yield from all_values(item)
            elif element.value is not None:
                yield str(element.value)


def items(sr, name: hd.sr.CodedConcept, value_type=None) -> list:
    return hd.sr.utils.find_content_items(sr, name=name, value_type=value_type, recursive=True)


def text_values(sr, name: hd.sr.CodedConcept) -> list[str]:
    return [item.TextValue for item in items(sr, name, TEXT)]


def referenced_uids(content_items) -> set[str]:
    return {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in content_items}


def check_ours(ds: pydicom.Dataset, source: EvidenceSource) -> None:
    assert ds.StudyInstanceUID == source.study_instance_uid
    assert ds.Manufacturer == MANUFACTURER and ds.ManufacturerModelName == MODEL_NAME
    assert ds.SoftwareVersions == __version__  # the writer; the SR's provenance names the decider
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.SeriesInstanceUID.startswith("2.25.")
    assert ds.SeriesInstanceUID not in {s.series_instance_uid for s in source.decision.series}
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName == "DICOMCHECK"
    assert all(not str(v).startswith("1.2.826.0.1.3680043.10.511.") for v in all_values(ds)), "a highdicom-rooted UID"
    assert "ContributingEquipmentSequence" not in ds


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.peer
def test_kos_and_sr_of_every_fixture_study(case: str, fixture_source, tmp_path: Path) -> None:
    require_peer("dciodvfy")
    source = fixture_source(case, devices=True)
    document = source.decision.document()
    cited = {i.sop_instance_uid: i for i in source.instances}
    assert cited and all(i.path.is_file() for i in cited.values())
    header = pydicom.dcmread(
        next(i for i in source.instances if i.role in ("acquisition", "3d")).path, stop_before_pixels=True
    )
    warnings = {}

    # ---- KOS: every cited instance flagged, in the study, under our title
    kos_path = write(build_kos(source), tmp_path / "kos.dcm")
    warnings["kos"] = dciodvfy(kos_path)
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(kos_path))
    check_ours(kos, source)
    assert kos.Modality == "KO" and kos.PatientName == header.PatientName and kos.PatientID == header.PatientID
    assert kos.ConceptNameCodeSequence[0].CodeValue == KOS_TITLE.value
    references = kos.content.get_references()
    assert referenced_uids(references) == set(cited)
    for uid in cited:
        study, series, sop = kos.resolve_reference(uid)
        assert (study, series, sop) == (source.study_instance_uid, cited[uid].series_instance_uid, uid)
    description = hd.sr.utils.find_content_items(
        kos, name=hd.sr.CodedConcept("113012", "DCM", "Key Object Description")
    )
    assert document["outcome"] in description[0].TextValue

    # ---- SR: outcome, code, reasons, series equipment, references
    sr_path = write(build_sr(source), tmp_path / "sr.dcm")
    warnings["sr"] = dciodvfy(sr_path)
    sr = hd.sr.srread(sr_path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    check_ours(sr, source)
    assert sr.PatientName == header.PatientName and sr.PatientID == header.PatientID
    assert sr.AccessionNumber == header.AccessionNumber and sr.StudyDate == header.StudyDate
    evidence = sr.get_evidence()
    assert {e[2] for e in evidence} == set(cited)
    assert all(e[0] == source.study_instance_uid and e[1] == cited[e[2]].series_instance_uid for e in evidence)
    references = items(sr, None, IMAGE) + items(sr, None, COMPOSITE)
    assert referenced_uids(references) == set(cited)
    assert all(cited[uid].path.is_file() for uid in referenced_uids(references))
    assert [i.ConceptCodeSequence[0].CodeValue for i in items(sr, C.OUTCOME)] == [document["outcome"]]
    assert [i.ConceptCodeSequence[0].CodeValue for i in items(sr, C.BILLING_CODE)] == (
        [document["code"]] if document["code"] else []
    )
    assert sorted(text_values(sr, C.RULE)) == sorted(r["rule"] for r in document["reasons"])
    assert set(text_values(sr, C.STATEMENT)) == {r["text"] for r in document["reasons"]}
    cited_values = {}
    for item in items(sr, C.CITED_VALUE, TEXT):
        refs = referenced_uids(item.ContentSequence) if "ContentSequence" in item else set()
        cited_values.setdefault(item.TextValue, set()).update(refs)
    for reason in document["reasons"]:
        for e in reason["evidence"]:
            tag = f" {e['tag']}" if e["tag"] else ""
            text = f'{e["keyword"]}{tag} = "{e["value"] or ""}" [{e["signal"]}]'
            assert text in cited_values, f"{text} not among {sorted(cited_values)}"
            if e["sop_instance_uid"] in cited:
                assert e["sop_instance_uid"] in cited_values[text]  # INFERRED FROM the instance it was read from
    assert text_values(sr, C.ALGORITHM_VERSION) == [source.dicomcheck_version]
    assert text_values(sr, C.RULES_VERSION) == [source.rules_version]
    assert len(items(sr, C.PROCESSED_AT)) == 1
    series_containers = {c.ContentSequence[0].UID: c for c in items(sr, C.SERIES)}
    assert set(series_containers) == {s["series_instance_uid"] for s in document["series"]}
    for series in document["series"]:
        if not series["is_3d"]:
            continue
        container = series_containers[series["series_instance_uid"]]
        texts = {
            (i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
            for i in container.ContentSequence
            if i.ValueType == "TEXT"
        }
        expected = {(C.KIND.value, series["kind"]), (C.ORIGIN.value, series["origin"]), (C.IS_3D.value, "yes")}
        if series["product"]:
            expected.add((C.PRODUCT.value, series["product"]))
        equipment = series["equipment"]
        for concept, key in (
            (C.MANUFACTURER, "manufacturer"),
            (C.MODEL, "model"),
            (C.STATION, "station_name"),
            (C.SERIAL, "device_serial_number"),
            (C.SOFTWARE, "software_versions"),
        ):
            if equipment[key]:
                expected.add((concept.value, equipment[key]))
        assert expected <= texts, f"series {series['series_description']}: missing {expected - texts}"

    # ---- PHI-minimal variants: valid, no patient name / ID of the source anywhere
    secrets = [str(header.PatientName), str(header.PatientID)]
    for name, builder in (("kos", build_kos), ("sr", build_sr)):
        path = write(builder(source, minimal=True), tmp_path / f"{name}-minimal.dcm")
        warnings[f"{name}-minimal"] = dciodvfy(path)
        minimal = pydicom.dcmread(path)
        leaked = [v for v in all_values(minimal) for s in secrets if s and s in v]
        assert not leaked, f"{name}: source identifiers left in {leaked}"
        assert minimal.PatientIdentityRemoved == "YES" and minimal.DeidentificationMethod
        assert minimal.PatientName == MINIMAL_PATIENT_NAME
        assert (
            minimal.PatientID
            == hashlib.sha256(str(header.PatientID).encode()).hexdigest()[:16]
            == pseudonymous_id(header.PatientID)
        )
        assert minimal.PatientBirthDate == "" and minimal.AccessionNumber == "" and minimal.ReferringPhysicianName == ""
        assert minimal.StudyInstanceUID == source.study_instance_uid and minimal.StudyDate == header.StudyDate
        assert minimal.Manufacturer == MANUFACTURER
    # only the known, explained warnings remain: our private coding scheme in the SR, and the Study ID
    # the PHI-minimal variant empties
    unexpected = [
        line
        for lines in warnings.values()
        for line in lines
        if "<99DCMCHK>" not in line and "needed to build DICOMDIR - Study ID" not in line
    ]
    assert not unexpected, "\n".join(unexpected)
    assert not warnings["kos"]


def test_same_source_same_content_new_uids(fixture_source) -> None:
    source = fixture_source("both_console_and_workstation", devices=True)
    for builder in (build_kos, build_sr):
        for minimal in (False, True):
            first, second = builder(source, minimal=minimal), builder(source, minimal=minimal)
            assert first.SOPInstanceUID != second.SOPInstanceUID and first.SeriesInstanceUID != second.SeriesInstanceUID
            for ds in (first, second):
                ds.SOPInstanceUID = ds.SeriesInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.0"
            assert first.to_json_dict() == second.to_json_dict()


def test_own_objects_are_recognised_and_the_consoles_are_not(
    fixtures_output: Path, fixture_source, tmp_path: Path
) -> None:
    source = fixture_source("console_non3d_derived", devices=True)
    for name, ds in (("kos", build_kos(source)), ("sr", build_sr(source)), ("sr-min", build_sr(source, minimal=True))):
        path = write(ds, tmp_path / f"{name}.dcm")
        assert is_own_object(extract_facts(pydicom.dcmread(path, stop_before_pixels=True), str(path))), name
    # the scanner's own KOS and dose SR in the same study are decision input as before
    for folder in ("0997_Dose_Report_SR", "0998_Key_Images"):
        path = next((fixtures_output / "console_non3d_derived" / folder).glob("*.dcm"))
        assert not is_own_object(extract_facts(pydicom.dcmread(path, stop_before_pixels=True), str(path)))


def test_a_missing_or_foreign_cited_file_is_a_clear_error(fixtures_output: Path, tmp_path: Path) -> None:
    import dataclasses
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(fixtures_output / "ct_workstation_vr_sc", folder)
    (source,) = from_folder([folder])  # a copy: this test deletes a cited file
    gone = source.instances[0]
    gone.path.unlink()
    with pytest.raises(FileNotFoundError, match=gone.sop_instance_uid):
        build_kos(source)
    with pytest.raises(ValueError, match="no cited instance"):
        build_sr(dataclasses.replace(source, instances=()))
    other = next((fixtures_output / "ct_console_mip").glob("*/*.dcm"))
    moved = dataclasses.replace(source.instances[1], path=other)
    with pytest.raises(ValueError, match="holds .* not the cited"):
        build_sr(dataclasses.replace(source, instances=(moved,)))
    stranger = pydicom.dcmread(other)
    stranger.SOPInstanceUID = moved.sop_instance_uid
    write(stranger, tmp_path / "stranger.dcm")
    with pytest.raises(ValueError, match="belongs to study"):
        build_kos(dataclasses.replace(source, instances=(dataclasses.replace(moved, path=tmp_path / "stranger.dcm"),)))

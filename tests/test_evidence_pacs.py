"""Evidence KOS / SR over the network: sent to a real PACS (Orthanc) they land in the study beside its
images; routed back to dicomcheck they are stored but never decided from; PHI-minimal objects are
never sent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomcheck.evidence.collect import from_folder
from dicomcheck.evidence.dicom import build_kos, build_sr, write
from dicomcheck.evidence.send import AssociationRejected, PacsDestination, send_objects

from .dicomfiles import write_ct
from .peers import OrthancProcess, free_port, require_peer, start_orthanc, stopped_at_end, wait_for

CASE = "both_console_and_workstation"
STABLE_AFTER = 1.0


# ---------------------------------------------------------------------------- helpers
@pytest.fixture()
def orthanc_factory(tmp_path: Path):
    def start(n: int, modalities: dict[str, list]) -> OrthancProcess:
        return start_orthanc(tmp_path / f"orthanc{n}", modalities)

    with stopped_at_end(start) as factory:
        yield factory


def rows(server, sql: str, *params):
    with sqlite3.connect(server.db) as db:
        return db.execute(sql, params).fetchall()


def study_files(fixtures_output: Path, case: str = CASE) -> list[Path]:
    return sorted((fixtures_output / case).glob("*/*.dcm"))


def store_images(port: int, called_ae: str, paths: list[Path], calling_ae: str = "MODALITY") -> list[int]:
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def evidence_files(fixtures_output: Path, folder: Path, case: str = CASE) -> tuple[Path, Path, str]:
    (source,) = from_folder([fixtures_output / case])
    kos = write(build_kos(source), folder / "kos.dcm")
    sr = write(build_sr(source), folder / "sr.dcm")
    return kos, sr, source.study_instance_uid


def decided_state(server, study_uid: str):
    return (
        rows(server, "SELECT count(*) FROM decision WHERE study_instance_uid = ?", study_uid),
        rows(server, "SELECT needs_decision, instance_count FROM study WHERE study_instance_uid = ?", study_uid),
    )


def assert_no_new_decision(server, study_uid: str, before, folder: Path, *, calling_ae: str) -> None:
    """Nothing to decide after our objects arrived: waited for by deciding a study sent after them.
    The settler takes due studies oldest arrival first, so the pass that decides the later study
    would have decided this one too had our objects made it due."""
    later_study = generate_uid()
    later = write_ct(folder / "later-study.dcm", later_study, generate_uid())
    assert store_images(server.port, server.ae_title, [later], calling_ae=calling_ae) == [0]
    wait_for(lambda: rows(server, "SELECT 1 FROM decision WHERE study_instance_uid = ?", later_study), timeout=30)
    assert decided_state(server, study_uid) == before
    assert before[1][0][0] == 0  # needs_decision stays cleared


# ---------------------------------------------------------------------------- tests
@pytest.mark.peer
@pytest.mark.slow
def test_sending_the_kos_and_sr_to_orthanc_places_them_in_the_same_study_there(
    fixtures_output: Path, tmp_path: Path, receiver_factory, orthanc_factory
) -> None:
    receiver = receiver_factory("--allow-caller", "ORTHANC", stable_after=STABLE_AFTER)
    orthanc = orthanc_factory({"dicomcheck": ["DICOMCHECK", "127.0.0.1", receiver.port]})

    # the images reach the PACS, which routes them to dicomcheck; dicomcheck decides the study
    images = study_files(fixtures_output)
    uploaded = [orthanc.post("/instances", path.read_bytes()) for path in images]
    study_ids = {u["ParentStudy"] for u in uploaded}
    assert len(study_ids) == 1
    orthanc_study = study_ids.pop()
    orthanc.post("/modalities/dicomcheck/store", {"Resources": [orthanc_study], "Synchronous": True})
    study_uid = pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID
    wait_for(lambda: rows(receiver, "SELECT outcome FROM decision WHERE study_instance_uid = ?", study_uid), timeout=30)
    assert rows(receiver, "SELECT outcome, instance_count FROM decision") == [("supports_76377", len(images))]

    # the evidence built from the same files goes to the PACS by C-STORE
    kos_path, sr_path, source_study = evidence_files(fixtures_output, tmp_path / "evidence")
    assert source_study == study_uid
    statuses = send_objects([kos_path, sr_path], host="127.0.0.1", port=orthanc.dicom_port, called_ae=orthanc.ae_title)
    assert statuses == [0x0000, 0x0000]

    ours = {}
    for path in (kos_path, sr_path):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found = orthanc.lookup(ds.SOPInstanceUID)
        assert [f["Type"] for f in found] == ["Instance"], found
        instance_id = found[0]["ID"]
        assert orthanc.get(f"/instances/{instance_id}/study")["ID"] == orthanc_study
        ours[str(ds.SeriesInstanceUID)] = (ds.Modality, instance_id)
    assert [f["ID"] for f in orthanc.lookup(study_uid) if f["Type"] == "Study"] == [orthanc_study]
    series = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in orthanc.get(f"/studies/{orthanc_study}/series")}
    assert set(ours) <= set(series)
    assert {series[uid]["MainDicomTags"]["Modality"] for uid in ours} == {"KO", "SR"}
    assert orthanc.get(f"/studies/{orthanc_study}")["MainDicomTags"]["StudyInstanceUID"] == study_uid
    assert len(orthanc.get(f"/studies/{orthanc_study}/instances")) == len(images) + 2

    # the PACS routes them on to dicomcheck: stored, but no new decision
    before = decided_state(receiver, study_uid)
    orthanc.post("/modalities/dicomcheck/store", {"Resources": [i for _, i in ours.values()], "Synchronous": True})
    for path in (kos_path, sr_path):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = rows(receiver, "SELECT path FROM instance WHERE sop_instance_uid = ?", uid)
        assert len(stored) == 1 and (receiver.data / "storage" / stored[0][0]).is_file()
    assert rows(
        receiver,
        "SELECT calling_ae FROM receipt r JOIN instance i ON i.id = r.instance_id "
        "WHERE i.sop_class_uid IN ('1.2.840.10008.5.1.4.1.1.88.59', '1.2.840.10008.5.1.4.1.1.88.33')",
    ) == [("ORTHANC",), ("ORTHANC",)]
    assert_no_new_decision(receiver, study_uid, before, tmp_path, calling_ae="ORTHANC")
    assert before[1] == [(0, len(images))]

    # a PHI-minimal object is refused before any association; the PACS never sees it
    (source,) = from_folder([fixtures_output / CASE])
    minimal = write(build_sr(source, minimal=True), tmp_path / "evidence" / "sr-minimal.dcm")
    with pytest.raises(ValueError, match="sr-minimal.dcm"):
        send_objects([kos_path, minimal], host="127.0.0.1", port=orthanc.dicom_port, called_ae=orthanc.ae_title)
    assert orthanc.lookup(pydicom.dcmread(minimal, stop_before_pixels=True).SOPInstanceUID) == []


def test_evidence_sent_straight_to_dicomcheck_is_stored_not_decided(
    fixtures_output: Path, tmp_path: Path, receiver_factory
) -> None:
    receiver = receiver_factory("--allow-caller", "MODALITY", "--allow-caller", "DICOMCHECK", stable_after=STABLE_AFTER)
    images = study_files(fixtures_output, "ct_console_mip")
    assert set(store_images(receiver.port, receiver.ae_title, images)) == {0}
    kos_path, sr_path, study_uid = evidence_files(fixtures_output, tmp_path, "ct_console_mip")
    wait_for(lambda: rows(receiver, "SELECT 1 FROM decision WHERE study_instance_uid = ?", study_uid), timeout=30)
    before = decided_state(receiver, study_uid)

    destination = PacsDestination.parse(f"{receiver.ae_title}@127.0.0.1:{receiver.port}")
    assert destination.send([kos_path, sr_path]) == [0, 0]
    assert rows(receiver, "SELECT count(*) FROM instance WHERE study_instance_uid = ?", study_uid) == [
        (len(images) + 2,)
    ]
    assert rows(
        receiver,
        "SELECT instance_count FROM series WHERE series_instance_uid = ?",
        str(pydicom.dcmread(sr_path, stop_before_pixels=True).SeriesInstanceUID),
    ) == [(1,)]
    assert_no_new_decision(receiver, study_uid, before, tmp_path, calling_ae="MODALITY")
    document = json.loads(rows(receiver, "SELECT document FROM decision WHERE study_instance_uid = ?", study_uid)[0][0])
    assert document["instances"] == len(images)

    # a later image re-decides from the images only: our objects are not decision input
    later = pydicom.dcmread(images[-1])
    later.SOPInstanceUID = later.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    store_images(receiver.port, receiver.ae_title, [write(later, tmp_path / "later.dcm")])
    wait_for(
        lambda: rows(receiver, "SELECT count(*) FROM decision WHERE study_instance_uid = ?", study_uid)[0][0] == 2,
        timeout=30,
    )
    latest = json.loads(
        rows(
            receiver, "SELECT document FROM decision WHERE study_instance_uid = ? ORDER BY id DESC LIMIT 1", study_uid
        )[0][0]
    )
    assert latest["instances"] == len(images) + 1
    assert "non_image" not in {s["kind"] for s in latest["series"]}


def test_rejected_association_and_destination_strings(fixtures_output: Path, tmp_path: Path, receiver_factory) -> None:
    receiver = receiver_factory("--allow-caller", "ORTHANC")
    kos_path, _, _ = evidence_files(fixtures_output, tmp_path)
    with pytest.raises(AssociationRejected, match="rejected the association from DICOMCHECK"):
        send_objects([kos_path], host="127.0.0.1", port=receiver.port, called_ae=receiver.ae_title)
    image = study_files(fixtures_output)[0]
    with pytest.raises(ValueError, match="not a KOS or Comprehensive"):
        send_objects([image], host="127.0.0.1", port=receiver.port, called_ae=receiver.ae_title)

    assert PacsDestination.parse("PACS@pacs.example.org:11112") == PacsDestination(
        "pacs.example.org", 11112, "PACS", "DICOMCHECK"
    )
    assert PacsDestination.parse("PACS@[::1]:104", calling_ae="DC2").host == "::1"
    assert str(PacsDestination.parse("PACS@[::1]:104")) == "PACS@[::1]:104"
    for bad in (
        "PACS@host",
        "@host:104",
        "PACS@host:0",
        "PACS@host:70000",
        "A_TITLE_LONGER_THAN_16@h:104",
        "PACS host:104",
    ):
        with pytest.raises(ValueError):
            PacsDestination.parse(bad)


@pytest.mark.peer
@pytest.mark.slow
def test_configured_destination_receives_each_decisions_kos_and_sr(
    fixtures_output: Path, tmp_path: Path, receiver_factory, orthanc_factory
) -> None:
    """`serve --evidence-destination AE@host:port`: after deciding a study, its KOS and SR are
    C-STOREd to the PACS and sit there beside the study's images."""
    require_peer("Orthanc")
    port = free_port()
    orthanc = orthanc_factory({"dicomcheck": ["DICOMCHECK", "127.0.0.1", port]})
    server = receiver_factory(
        "--evidence-destination",
        f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
        port=port,
        stable_after=STABLE_AFTER,
    )
    images = study_files(fixtures_output)
    assert store_images(server.port, server.ae_title, images) == [0] * len(images)
    study_uid = str(pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID)
    wait_for(
        lambda: rows(server, "SELECT count(*) FROM decision WHERE study_instance_uid = ?", study_uid) == [(1,)],
        timeout=60,
    )

    def modalities_in_orthanc():
        found = orthanc.lookup(study_uid)
        if not found:
            return None
        series = orthanc.get(f"/studies/{found[0]['ID']}/series")
        return sorted(s["MainDicomTags"].get("Modality", "") for s in series)

    got = wait_for(lambda: (m := modalities_in_orthanc()) and {"KO", "SR"} <= set(m) and m, timeout=60)
    assert {"KO", "SR"} <= set(got)
    assert "not sent" not in server.log()
    assert (server.data / "evidence" / study_uid).is_dir()  # the pack that was sent is kept

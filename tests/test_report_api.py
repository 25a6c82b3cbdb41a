"""Reports through the API and the ``report`` part of a study (issue 12 §1, §3), on a real index (SQLite
and PostgreSQL) with the synthetic fixture studies."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access
from dicomcheck.store.reports import NewReport, Reports, text_sha256

from .test_api import auth, ingest_case, settle_all

WORKSTATION = "ct_workstation_vr_sc"  # supports_76377: volume rendering from an independent workstation
CONSOLE = "ct_console_mip"  # supports_76376: MIP from the scanner console

COMPLETE_76377 = """EXAM: CT angiography of the abdomen.

TECHNIQUE: Axial images were acquired after intravenous contrast. 3D volume rendered images were created on an \
independent workstation for surgical planning of the aneurysm repair.

FINDINGS: The 3D images demonstrate a 5 cm infrarenal abdominal aortic aneurysm."""

NO_3D = """EXAM: CT angiography of the abdomen.

FINDINGS: Coronal and sagittal reformats were reviewed. There is a 5 cm infrarenal abdominal aortic aneurysm.

IMPRESSION: Abdominal aortic aneurysm."""


def make_client(index_url: str, tmp_path: Path, fixtures_output: Path, cases: tuple[str, ...], **settings):
    config = Settings(data=tmp_path / "data", database_url=index_url, stable_after=0.01, **settings)
    receiver = Receiver(config)
    for case in cases:
        ingest_case(receiver, fixtures_output / case)
    settle_all(receiver)
    access = Access(receiver.engine)
    tokens = {role: access.create_token(f"{role}-token", role) for role in ("reader", "admin", "reporter")}
    expected = {case: json.loads((fixtures_output / case / "expected.json").read_text()) for case in cases}
    return TestClient(create_app(receiver.settings, receiver)), tokens, expected, receiver


@pytest.fixture()
def api(index_url: str, tmp_path: Path, fixtures_output: Path):
    client, tokens, expected, receiver = make_client(
        index_url, tmp_path, fixtures_output, (WORKSTATION,), http_max_body=4096
    )
    yield client, tokens, expected[WORKSTATION]["study_instance_uid"], receiver
    client.close()
    receiver.engine.dispose()


def patient_of(case: str, fixtures_output: Path) -> str:
    """The Patient ID of a fixture study, as its files carry it."""
    import pydicom

    first = sorted((fixtures_output / case).rglob("*.dcm"))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).PatientID)


def post(client: TestClient, uid: str, token: str, body: dict | str):
    if isinstance(body, str):
        headers = {**auth(token), "Content-Type": "text/plain; charset=utf-8"}
        return client.post(f"/studies/{uid}/report", content=body.encode(), headers=headers)
    return client.post(f"/studies/{uid}/report", json=body, headers=auth(token))


def test_post_report_roles_bodies_and_limits(api):
    client, tokens, uid, receiver = api
    assert client.post(f"/studies/{uid}/report", json={"text": "x"}).status_code == 401
    assert post(client, uid, tokens["reader"], {"text": "a report"}).status_code == 403
    assert post(client, "not-a-uid", "dck_unknown", {"text": "x"}).status_code == 401  # 401 before 422
    assert post(client, "not-a-uid", tokens["reporter"], {"text": "x"}).status_code == 422
    assert post(client, uid, tokens["reporter"], {"text": "x", "status": "Z"}).status_code == 422
    assert post(client, uid, tokens["reporter"], {"text": "x", "extra": 1}).status_code == 422
    assert post(client, uid, tokens["reporter"], {"text": "   "}).status_code == 422
    assert post(client, uid, tokens["reporter"], {"text": "a\x00b"}).status_code == 422
    assert post(client, uid, tokens["reporter"], ["text"]).status_code == 422  # type: ignore[arg-type]
    xml = client.post(
        f"/studies/{uid}/report", content=b"<r/>", headers={**auth(tokens["admin"]), "Content-Type": "text/xml"}
    )
    assert xml.status_code == 415
    latin = client.post(
        f"/studies/{uid}/report",
        content=b"caf\xe9",
        headers={**auth(tokens["admin"]), "Content-Type": "text/plain"},  # UTF-8 by default: not decodable
    )
    assert latin.status_code == 422
    assert post(client, uid, tokens["reporter"], "x" * 5000).status_code == 413  # http_max_body 4096

    made = post(client, uid, tokens["reporter"], {"text": "Preliminary read.", "status": "P"})
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "P" and made.json()["matched"] is True
    plain = post(client, uid, tokens["admin"], "Final report as plain text.")
    assert plain.status_code == 201 and plain.json()["status"] == "F"
    events = Access(receiver.engine).audit_events(study_uid=uid)
    created = [e for e in events if e.endpoint == f"/studies/{uid}/report" and e.action == "C"]
    assert {e.token_name for e in created} == {"reporter-token", "admin-token"}
    assert all("text" not in json.dumps(e.detail) for e in created), "report text reached the audit trail"
    alerts = Access(receiver.engine).audit_events(event="Security Alert")
    refused = [e for e in alerts if e.token_name == "reader-token" and e.endpoint.endswith("/report")]
    assert refused, "a refused role is audited"


def test_documentation_incomplete_then_complete_and_changed_after_read(api):
    client, tokens, uid, _ = api
    first = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()
    assert first["outcome"] == "supports_76377"
    assert first["report"]["documentation"] == "missing" and first["report"]["flags"] == []  # within report_wait
    assert first["changed_after_read"] is False
    assert [k for k in first if k == "documentation"] == []  # the verdict is under report only

    assert post(client, uid, tokens["reporter"], {"text": NO_3D}).status_code == 201
    body = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()
    report = body["report"]
    assert report["documentation"] == "incomplete"
    assert "report_lacks_3d_statement" in report["flags"] and "report_lacks_workstation" in report["flags"]
    assert report["status"] == "F" and report["matched_by"] == "study_instance_uid" and report["source"] == "api"
    assert body["changed_after_read"] is True, "the documentation verdict changed since this client's last read"
    again = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()
    assert again["changed_after_read"] is False

    assert post(client, uid, tokens["reporter"], {"text": COMPLETE_76377, "status": "C"}).status_code == 201
    report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
    assert report["documentation"] == "complete" and report["flags"] == []
    assert report["status"] == "C"
    sentences = {s["kind"]: s["sentence"] for s in report["statements"] if s["assertion"] == "affirmed"}
    assert "independent workstation" in sentences["place"]
    assert "The 3D images demonstrate" in sentences["finding"]
    history = report["history"]
    assert [h["status"] for h in history] == ["F", "C"] and [h["current"] for h in history] == [False, True]
    assert history[0]["superseded_by"] == history[1]["report_id"] == report["report_id"]


def test_report_missing_after_the_wait(index_url: str, tmp_path: Path, fixtures_output: Path):
    client, tokens, expected, receiver = make_client(index_url, tmp_path, fixtures_output, (CONSOLE,), report_wait="0")
    try:
        uid = expected[CONSOLE]["study_instance_uid"]
        report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
        assert (report["documentation"], report["flags"], report["status"]) == ("missing", ["report_missing"], None)
        assert (
            post(client, uid, tokens["reporter"], {"text": "3D MIP was performed.", "status": "P"}).status_code == 201
        )
        report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
        assert report["documentation"] == "missing" and report["status"] == "P", "a preliminary report is not final"
    finally:
        client.close()
        receiver.engine.dispose()


def test_report_before_images_waits_and_matches(index_url: str, tmp_path: Path, fixtures_output: Path):
    client, tokens, _, receiver = make_client(index_url, tmp_path, fixtures_output, ())
    try:
        want = json.loads((fixtures_output / WORKSTATION / "expected.json").read_text())
        uid = want["study_instance_uid"]
        early = post(client, uid, tokens["reporter"], {"text": COMPLETE_76377})
        assert early.status_code == 202 and early.json()["matched"] is False
        assert client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).status_code == 404
        ingest_case(receiver, fixtures_output / WORKSTATION)
        settle_all(receiver)
        report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
        assert report["documentation"] == "complete" and report["report_id"] == early.json()["report_id"]
    finally:
        client.close()
        receiver.engine.dispose()


def test_hl7_identifiers_match_by_accession_within_the_patient(index_url: str, tmp_path: Path, fixtures_output: Path):
    """A report naming only an accession number waits for its study, and matches it within the same
    patient ID only; a corrected report supersedes the final one (store level, both databases)."""
    client, _, _, receiver = make_client(index_url, tmp_path, fixtures_output, ())
    client.close()
    try:
        want = json.loads((fixtures_output / CONSOLE / "expected.json").read_text())
        uid, accession, patient = (
            want["study_instance_uid"],
            want["accession_number"],
            patient_of(CONSOLE, fixtures_output),
        )
        reports = Reports(receiver.engine)
        audit = {"event": "Procedure Record", "action": "C", "method": "MLLP", "endpoint": "hl7", "detail": {}}

        def add(status: str, patient_id: str, control: str):
            new = NewReport(
                None, accession, patient_id, status, f"report {control}", None, None, "hl7", "RIS^H", control
            )
            return reports.add(new, audit=audit)

        final, resend = add("F", patient, "1")
        assert not resend and add("F", patient, "1") == (final, True), "a resend is stored once"
        add("F", patient + "X", "2")  # another patient's report with the same accession
        assert not reports.patient_mismatch(None, accession, patient)  # no such study yet: it waits
        ingest_case(receiver, fixtures_output / CONSOLE)
        settle_all(receiver)
        matched = reports.for_study(uid, accession, patient)
        assert [m.report.id for m in matched.history] == [final.id]
        assert matched.current is not None and matched.current.matched_by == "accession_number"
        assert reports.patient_mismatch(None, accession, patient + "X")
        assert reports.patient_mismatch(uid, None, patient + "X") and not reports.patient_mismatch(uid, None, patient)
        corrected, _ = add("C", patient, "3")
        matched = reports.for_study(uid, accession, patient)
        assert matched.current is not None and matched.current.report.id == corrected.id
        assert [m.report.superseded_by for m in matched.history] == [corrected.id, None]
    finally:
        receiver.engine.dispose()


def test_reporter_tokens_read_nothing(api):
    client, tokens, uid, _ = api
    assert client.get(f"/studies/{uid}", headers=auth(tokens["reporter"])).status_code == 403
    assert client.get("/studies", headers=auth(tokens["reporter"])).status_code == 403


def test_list_and_exports_filter_by_documentation_and_flag(index_url: str, tmp_path: Path, fixtures_output: Path):
    client, tokens, expected, receiver = make_client(index_url, tmp_path, fixtures_output, (WORKSTATION, CONSOLE))
    try:
        workstation, console = (expected[c]["study_instance_uid"] for c in (WORKSTATION, CONSOLE))
        assert post(client, workstation, tokens["reporter"], {"text": NO_3D}).status_code == 201
        assert post(client, console, tokens["reporter"], {"text": COMPLETE_76377}).status_code == 201
        reader = auth(tokens["reader"])

        def listed(**params) -> list[str]:
            page = client.get("/studies", params=params, headers=reader)
            assert page.status_code == 200, page.text
            return [i["study_instance_uid"] for i in page.json()["items"]]

        assert listed(documentation="incomplete") == [workstation]
        assert listed(report_flag="report_lacks_workstation") == [workstation]
        assert set(listed()) == {workstation, console}
        # the console MIP study's report claims volume rendering on an independent workstation
        assert listed(documentation="conflicting") == [console] == listed(report_flag="report_origin_conflict")
        assert listed(documentation="complete") == []
        assert client.get("/studies", params={"documentation": "nonsense"}, headers=reader).status_code == 422
        first = client.get("/studies", params={"documentation": "incomplete", "limit": 1}, headers=reader).json()
        assert [i["study_instance_uid"] for i in first["items"]] == [workstation]
        if first["next_cursor"]:
            rest = client.get(
                "/studies", params={"documentation": "incomplete", "cursor": first["next_cursor"]}, headers=reader
            ).json()
            assert rest["items"] == []
        searched = client.post("/studies/search", json={"report_flag": "report_lacks_3d_statement"}, headers=reader)
        assert [i["study_instance_uid"] for i in searched.json()["items"]] == [workstation]

        export = client.get("/exports/decisions", params={"documentation": "incomplete"}, headers=reader)
        assert export.status_code == 200
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert [r["study_instance_uid"] for r in rows] == [workstation]
        assert rows[0]["documentation"] == "incomplete" and "report_lacks_3d_statement" in rows[0]["report_flags"]
        assert rows[0]["report_status"] == "F"
        everything = list(csv.DictReader(io.StringIO(client.get("/exports/decisions", headers=reader).text)))
        assert {r["study_instance_uid"] for r in everything} == {workstation, console}
    finally:
        client.close()
        receiver.engine.dispose()


@pytest.mark.peer
def test_evidence_pack_cites_the_report_sentences_and_hash(api, tmp_path: Path):
    import subprocess

    from dicomcheck.evidence.collect import from_index, pack_report
    from dicomcheck.evidence.keys import create_key
    from dicomcheck.evidence.pack import PackWriter, pack_dir_name, verify_pack

    from .peers import require_peer

    require_peer("pdftotext")
    client, tokens, uid, receiver = api
    assert post(client, uid, tokens["reporter"], {"text": COMPLETE_76377}).status_code == 201
    source = from_index(receiver.engine, receiver.settings.storage_dir, uid)
    report = pack_report(receiver.engine, source, report_wait=receiver.settings.report_wait_seconds)
    assert report is not None and report["documentation"] == "complete"
    key = create_key(tmp_path / "keys")
    writer = PackWriter(key)
    name = pack_dir_name(source, minimal=False, report_id=report["report_id"])
    assert name.endswith(f"-report-{report['report_id']}")
    folder = writer.write(source, tmp_path / "packs" / name, report=report)
    evidence = json.loads((folder / "evidence.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert evidence["report"]["text_sha256"] == text_sha256(COMPLETE_76377) == manifest["report_sha256"]
    workstation_sentence = next(s for s in evidence["report"]["sentences"] if "independent workstation" in s)
    text = subprocess.run(["pdftotext", str(folder / "report.pdf"), "-"], capture_output=True, text=True).stdout
    flat = " ".join(text.split())
    assert "Radiology report" in flat and text_sha256(COMPLETE_76377) in flat.replace(" ", "")
    assert " ".join(workstation_sentence.split()[:6]) in flat
    assert verify_pack(folder, trusted=[key.fingerprint], check_instances=False).ok

    minimal = writer.write(source, tmp_path / "packs" / (name + "-minimal"), minimal=True, report=report)
    kept = json.loads((minimal / "evidence.json").read_text())["report"]
    assert "sentences" not in kept and "statements" not in kept and kept["text_sha256"] == report["text_sha256"]
    assert "aneurysm" not in (minimal / "evidence.json").read_text()


def test_pack_served_by_the_api_carries_the_report_and_a_newer_report_adds_a_pack(api):
    """``GET /studies/{uid}/evidence`` writes the pack with the report held against the decision; a
    corrected report is a new pack beside the first (packs stay immutable)."""
    client, tokens, uid, _receiver = api
    assert post(client, uid, tokens["reporter"], {"text": COMPLETE_76377}).status_code == 201
    first = client.get(f"/studies/{uid}/evidence", headers=auth(tokens["admin"]))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["pack"].endswith(f"-report-{body['evidence']['report']['report_id']}")
    assert body["evidence"]["report"]["documentation"] == "complete"
    assert body["manifest"]["report_sha256"] == text_sha256(COMPLETE_76377)
    corrected = COMPLETE_76377 + " Addendum: no change to the 3D findings."
    assert post(client, uid, tokens["reporter"], {"text": corrected, "status": "C"}).status_code == 201
    second = client.get(f"/studies/{uid}/evidence", headers=auth(tokens["admin"])).json()
    assert second["pack"] != body["pack"]
    assert second["manifest"]["report_sha256"] == text_sha256(corrected)


def write_text_sr(path: Path, study_uid: str, patient_id: str, text: str, *, own: bool = False) -> Path:
    """A Basic Text SR (or, ``own``, an SR as dicomcheck writes its evidence) of the study, COMPLETE and VERIFIED."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.88.33" if own else "1.2.840.10008.5.1.4.1.1.88.11"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study_uid, generate_uid(), patient_id
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", "900", "1"
    ds.Manufacturer = "dicomcheck" if own else "Reporting System"
    ds.ContentDate, ds.ContentTime = "20261206", "101500"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Smith^Jane"
    ds.VerifyingObserverSequence = [observer]
    findings = Dataset()
    findings.RelationshipType, findings.ValueType, findings.TextValue = "CONTAINS", "TEXT", text
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    findings.ConceptNameCodeSequence = [name]
    ds.ContentSequence = [findings]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_text_sr_received_is_read_as_a_report_and_our_own_sr_is_not(api, tmp_path: Path, fixtures_output: Path):
    from dicomcheck.ingest import StoreStatus
    from dicomcheck.store.index import ReceiptInfo

    client, tokens, uid, receiver = api
    patient = patient_of(WORKSTATION, fixtures_output)
    receipt = ReceiptInfo(None, "RIS", "DICOMCHECK", "127.0.0.1", "1.2.3.4", "TESTSENDER", "1.2.840.10008.1.2.1")
    own = write_text_sr(tmp_path / "own.dcm", uid, patient, "3D rendering was not performed.", own=True)
    temp = receiver.files.new_temp()
    shutil.copyfile(own, temp)
    assert receiver.store_file(temp, receipt).status is StoreStatus.SUCCESS
    settle_all(receiver)
    report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
    assert report["documentation"] == "missing" and report["history"] == [], "our own SR is not a report"

    sr = write_text_sr(tmp_path / "sr.dcm", uid, patient, COMPLETE_76377)
    temp = receiver.files.new_temp()
    shutil.copyfile(sr, temp)
    assert receiver.store_file(temp, receipt).status is StoreStatus.SUCCESS
    settle_all(receiver)
    report = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
    assert (report["source"], report["status"], report["documentation"]) == ("sr", "F", "complete")
    assert report["radiologist"] == "Smith Jane"
    again = client.get(f"/studies/{uid}", headers=auth(tokens["reader"])).json()["report"]
    assert len(again["history"]) == 1, "an SR is read once"

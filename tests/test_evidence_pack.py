"""Evidence packs: written from files or the index, signed, verified, immutable, PHI-minimal."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.enums import Outcome
from dicomcheck.evidence.collect import from_folder
from dicomcheck.evidence.keys import create_key
from dicomcheck.evidence.pack import PackWriter, verify_pack
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access
from dicomcheck.store.index import ReceiptInfo

from .peers import require_peer, wait_for

CASE = "ct_workstation_vr_sc"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomcheck.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def case_copy(fixtures_output: Path, tmp_path: Path) -> Path:
    """A private copy of one fixture study (tests change its bytes)."""
    target = tmp_path / CASE
    shutil.copytree(fixtures_output / CASE, target)
    return target


@pytest.fixture()
def site(tmp_path: Path):
    """The site key (the `evidence` command never creates one) and its fingerprint."""
    return create_key(tmp_path / "keys")


@pytest.fixture()
def pack(case_copy: Path, tmp_path: Path, site) -> Path:
    proc = cli("evidence", case_copy, "--out", tmp_path / "packs", "--key-dir", tmp_path / "keys")
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "packs").glob("*/decision-*")
    return folder


def test_cli_pack_holds_every_part_and_verifies(pack: Path, tmp_path: Path):
    names = {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()}
    assert {
        "manifest.json",
        "manifest.sig",
        "public_key.pem",
        "evidence.json",
        "report.pdf",
        "kos.dcm",
        "sr.dcm",
    } <= names
    assert any(n.startswith("thumbnails/3d-") for n in names) and any(
        n.startswith("thumbnails/acquisition-") for n in names
    )
    evidence = json.loads((pack / "evidence.json").read_text())
    assert evidence["study"]["outcome"] == "supports_76377"
    assert evidence["cannot_show"] and evidence["facts"] and evidence["cited_instances"]
    assert all(c["receipts"] == "analysed from files: no network receipt" for c in evidence["cited_instances"])
    manifest = json.loads((pack / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == names - {"manifest.json", "manifest.sig"}
    proc = cli("evidence", "verify", pack, "--key-dir", tmp_path / "keys")
    assert proc.returncode == 0 and proc.stdout.startswith("OK "), proc.stdout + proc.stderr
    assert "offline analysis: supports_76377" in proc.stdout and "None" not in proc.stdout  # a pack made from files


@pytest.mark.parametrize(
    "name", ["evidence.json", "report.pdf", "kos.dcm", "sr.dcm", "public_key.pem", "manifest.json"]
)
def test_any_changed_byte_of_the_pack_fails_naming_the_file(pack: Path, name: str, site):
    path = pack / name
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = cli("evidence", "verify", pack, "--fingerprint", site.fingerprint)
    assert proc.returncode == 1
    assert f"FAIL {name}" in proc.stdout


def test_a_changed_cited_instance_fails_naming_it(pack: Path, case_copy: Path, site):
    manifest = json.loads((pack / "manifest.json").read_text())
    cited = Path(manifest["cited_instances"][0]["location"])
    assert cited.is_relative_to(case_copy)
    data = bytearray(cited.read_bytes())
    data[-1] ^= 0xFF
    cited.write_bytes(bytes(data))
    proc = cli("evidence", "verify", pack, "--fingerprint", site.fingerprint)
    assert proc.returncode == 1 and f"FAIL {cited}" in proc.stdout and "changed" in proc.stdout


def test_extra_or_missing_files_and_a_foreign_key_fail(pack: Path, tmp_path: Path, site):
    assert verify_pack(pack, trusted=[site.fingerprint]).ok
    other = create_key(tmp_path / "other-keys")
    assert any("not a trusted key" in p for p in verify_pack(pack, expected_fingerprint=other.fingerprint).problems)
    (pack / "thumbnails" / "extra.png").write_bytes(b"x")
    result = verify_pack(pack, trusted=[site.fingerprint])
    assert not result.ok and any(p.startswith("thumbnails/extra.png") for p in result.problems)


def test_zip_of_the_pack_verifies_too(pack: Path, tmp_path: Path, site):
    from dicomcheck.evidence.pack import zip_pack

    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_pack(pack))
    assert verify_pack(archive, trusted=[site.fingerprint]).ok
    assert cli("evidence", "verify", archive, "--fingerprint", site.fingerprint).returncode == 0


def test_re_derivation_reports_a_doctored_decision(case_copy: Path, tmp_path: Path):
    (source,) = from_folder([case_copy])
    doctored = replace(
        source, decision=source.decision.model_copy(update={"outcome": Outcome.SUPPORTS_76376, "code": "76376"})
    )
    key = create_key(tmp_path / "keys")
    folder = PackWriter(key).write(doctored, tmp_path / "doctored")
    result = verify_pack(folder, trusted=[key.fingerprint])
    assert not result.problems  # every byte is as signed ...
    assert any(d.startswith("outcome: recorded supports_76376") for d in result.differences)
    assert not result.ok  # ... but the recorded headers do not support the recorded outcome


@pytest.mark.peer
def test_minimal_pack_carries_no_patient_name_or_id(case_copy: Path, tmp_path: Path, site):
    require_peer("pdftotext")
    from pydicom import dcmread

    header = dcmread(next(case_copy.rglob("*.dcm")), stop_before_pixels=True)
    name, patient_id = str(header.PatientName), str(header.PatientID)
    proc = cli("evidence", case_copy, "--out", tmp_path / "packs", "--key-dir", tmp_path / "keys", "--minimal")
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "packs").glob("*/decision-*-minimal")
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".pdf":
            assert name.encode() not in path.read_bytes() and patient_id.encode() not in path.read_bytes(), path.name
    text = subprocess.run(["pdftotext", str(folder / "report.pdf"), "-"], capture_output=True, text=True).stdout
    assert name not in text and patient_id not in text
    evidence = json.loads((folder / "evidence.json").read_text())
    assert evidence["minimal"] and evidence["study"]["patient_id"].startswith("hmac-sha256:")
    assert dcmread(folder / "sr.dcm").PatientID == evidence["study"]["patient_id"]  # one pseudonym everywhere
    assert verify_pack(folder, trusted=[site.fingerprint]).ok


def test_keys_cli_create_show_and_refuse_to_overwrite(tmp_path: Path):
    first = cli("keys", "create", "--key-dir", tmp_path / "k")
    assert first.returncode == 0 and first.stdout.startswith("SHA256:")
    assert cli("keys", "create", "--key-dir", tmp_path / "k").returncode == 1
    shown = cli("keys", "show", "--key-dir", tmp_path / "k")
    assert shown.stdout.splitlines()[0] == first.stdout.strip() and "BEGIN PUBLIC KEY" in shown.stdout
    assert oct((tmp_path / "k" / "site-ed25519.pem").stat().st_mode & 0o777) == "0o600"


@pytest.fixture()
def served(tmp_path: Path, fixtures_output: Path):
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=0.01))
    for path in sorted((fixtures_output / CASE).rglob("*.dcm")):
        temp = receiver.files.new_temp()
        shutil.copyfile(path, temp)
        receiver.store_file(
            temp, ReceiptInfo(None, "PACS1", "DICOMCHECK", "10.0.0.7", "1.2.3.4", "PACSV1", "1.2.840.10008.1.2.1")
        )
    wait_for(
        lambda: (
            receiver.settle_once() >= 0
            and receiver.index.get_study(
                json.loads((fixtures_output / CASE / "expected.json").read_text())["study_instance_uid"]
            ).current_decision_id
        )
    )
    token = Access(receiver.engine).create_token("billing", "reader")
    with TestClient(create_app(receiver.settings, receiver)) as client:
        yield (
            client,
            {"Authorization": f"Bearer {token}"},
            receiver,
            json.loads((fixtures_output / CASE / "expected.json").read_text()),
        )
    receiver.engine.dispose()


def test_api_serves_json_pdf_zip_of_one_immutable_pack_per_decision(served, tmp_path: Path):
    client, headers, receiver, case = served
    uid = case["study_instance_uid"]
    body = client.get(f"/studies/{uid}/evidence", headers=headers).json()
    assert body["manifest"]["outcome"] == case["outcome"] and body["evidence"]["decision"]["id"]
    receipts = [r for c in body["evidence"]["cited_instances"] for r in c["receipts"]]
    assert receipts and receipts[0]["calling_ae"] == "PACS1" and receipts[0]["peer_address"] == "10.0.0.7"
    pdf = client.get(f"/studies/{uid}/evidence.pdf", headers=headers)
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    archive = client.get(f"/studies/{uid}/evidence.zip", headers=headers)
    (tmp_path / "api.zip").write_bytes(archive.content)
    assert verify_pack(tmp_path / "api.zip", trusted=[body["manifest"]["public_key_fingerprint"]]).ok
    from dicomcheck.evidence.keys import load_key

    assert body["manifest"]["public_key_fingerprint"] == load_key(receiver.settings.data / "keys").fingerprint
    folder = receiver.settings.data / "evidence" / uid / body["pack"]
    first_manifest = (folder / "manifest.json").read_bytes()
    assert client.get(f"/studies/{uid}/evidence", headers=headers).json()["pack"] == body["pack"]
    assert (folder / "manifest.json").read_bytes() == first_manifest  # never rewritten
    row = receiver.index.get_study(uid)
    receiver.decide(uid, last_arrival_seen=row.last_arrival)  # a new decision version
    newer = client.get(f"/studies/{uid}/evidence", headers=headers).json()
    assert newer["pack"] != body["pack"] and folder.is_dir()
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert "report.pdf" in z.namelist()
    events = Access(receiver.engine).audit_events(event="Data Export", study_uid=uid)
    assert {e.detail["evidence"] for e in events} >= {"json", "pdf", "zip"}


def test_api_refuses_evidence_for_a_pending_study(tmp_path: Path, fixtures_output: Path):
    receiver = Receiver(Settings(data=tmp_path / "data", stable_after=3600))
    path = next((fixtures_output / CASE).rglob("*.dcm"))
    temp = receiver.files.new_temp()
    shutil.copyfile(path, temp)
    receiver.store_file(temp, ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", None, None, None))
    token = Access(receiver.engine).create_token("billing", "reader")
    uid = json.loads((fixtures_output / CASE / "expected.json").read_text())["study_instance_uid"]
    with TestClient(create_app(receiver.settings, receiver)) as client:
        response = client.get(f"/studies/{uid}/evidence", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 409 and "pending" in response.json()["detail"]


def test_index_mode_cli_and_verify_against_the_storage(served, tmp_path: Path):
    _, _, receiver, case = served
    data = receiver.settings.data
    assert cli("keys", "create", "--data", data).returncode == 0
    proc = cli("evidence", case["study_instance_uid"], "--out", tmp_path / "out", "--data", data)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "out").glob("*/decision-*")
    assert cli("evidence", "verify", folder, "--data", data).returncode == 0  # the site key and DATA/storage
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = data / "storage" / manifest["cited_instances"][0]["storage_path"]
    stored.write_bytes(stored.read_bytes()[:-1] + bytes([stored.read_bytes()[-1] ^ 1]))
    proc = cli("evidence", "verify", folder, "--storage", data / "storage", "--data", data)
    assert proc.returncode == 1 and f"FAIL {stored}" in proc.stdout


def test_a_pack_from_the_index_carries_the_stored_decision_document_byte_for_byte(served, tmp_path: Path):
    """The typed record the producers read dumps to exactly the document the index keeps: same keys,
    order and values in evidence.json, full and PHI-minimal (but for the pseudonymised patient ID)."""
    from dicomcheck.evidence.collect import from_index
    from dicomcheck.store.reads import IndexReader

    _, _, receiver, case = served
    uid = case["study_instance_uid"]
    source = from_index(receiver.engine, receiver.settings.storage_dir, uid)
    with IndexReader.open(receiver.engine) as reader:
        stored = reader.decision(reader.study(uid).current_decision_id).document
    key = create_key(tmp_path / "keys")
    full = json.loads(PackWriter(key).build(source)["evidence.json"])["study"]
    assert json.dumps(full) == json.dumps(stored)
    minimal = json.loads(PackWriter(key).build(source, minimal=True)["evidence.json"])["study"]
    assert minimal["patient_id"].startswith("hmac-sha256:") and minimal["patient_id"] != stored["patient_id"]
    assert json.dumps({**minimal, "patient_id": stored["patient_id"]}) == json.dumps(stored)

"""The receiver with real peers over loopback: DCMTK echoscu / storescu and pynetdicom."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from .dicomfiles import ct_dataset, encode_body, write_study
from .peers import peer_env, require_peer, send_raw_c_store, wait_for

REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "realworld"


def rows(server, sql: str, *params):
    with sqlite3.connect(server.db) as db:
        return db.execute(sql, params).fetchall()


def storescu(
    server, *files: Path, calling: str = "STORESCU", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", server.ae_title, *extra, "127.0.0.1", str(server.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=300,
    )


def pynetdicom_store(server, datasets, calling: str = "PYNETDICOM", contexts=None):
    ae = AE(ae_title=calling)
    for context in contexts or [build_context(CTImageStorage, [ExplicitVRLittleEndian])]:
        ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


UNTUNED_LOG = "pynetdicom speed tuning off"

ALSO_UNTUNED = pytest.mark.parametrize("speed_tuning", [True, False], ids=["tuned", "untuned"])
"""Runs a test with speed tuning on (the default) and off (``DICOMCHECK_SPEED_TUNING=false``).

The untuned subset is what proves the receiver correct on pynetdicom's own reactors with only the
fault fixes on: allow-list and rejection provenance (echoscu), a whole storescu study stored,
indexed and decided with no temporary file left, a re-sent instance and a new version (pynetdicom
SCU, which pauses the reactor around each request), an unparseable data set quarantined.
"""


@pytest.fixture()
def speed_tuning() -> bool:
    return True


@pytest.fixture()
def receiver_factory(receiver_factory, speed_tuning):
    """conftest's receivers, with ``DICOMCHECK_SPEED_TUNING=false`` for the untuned runs (checked in their log)."""
    if speed_tuning:
        return receiver_factory

    def untuned(*extra: str, env: dict[str, str] | None = None, **kwargs):
        server = receiver_factory(*extra, env={**(env or os.environ), "DICOMCHECK_SPEED_TUNING": "false"}, **kwargs)
        assert UNTUNED_LOG in server.log()
        return server

    return untuned


@ALSO_UNTUNED
@pytest.mark.peer
def test_echo_and_unknown_calling_ae_rejected(receiver_factory):
    require_peer("echoscu")
    server = receiver_factory("--allow-caller", "GOODPACS", "--allow-caller", "ORTHANC")
    ok = subprocess.run(
        ["echoscu", "-aet", "GOODPACS", "-aec", "DICOMCHECK", "127.0.0.1", str(server.port)],
        env=peer_env(),
        capture_output=True,
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        ["echoscu", "-aet", "STRANGER", "-aec", "DICOMCHECK", "127.0.0.1", str(server.port)],
        env=peer_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
    wrong_called = subprocess.run(
        ["echoscu", "-aet", "GOODPACS", "-aec", "NOTUS", "127.0.0.1", str(server.port)],
        env=peer_env(),
        capture_output=True,
    )
    assert wrong_called.returncode != 0
    wait_for(lambda: len(rows(server, "SELECT 1 FROM association WHERE status = 'rejected'")) == 2)
    reasons = {
        r[0]: r[1] for r in rows(server, "SELECT calling_ae, reject_reason FROM association WHERE status = 'rejected'")
    }
    assert "calling AE title not recognised" in reasons["STRANGER"]
    assert "called AE title not recognised" in reasons["GOODPACS"]
    assert "STRANGER" in server.log() and "no --allow-caller" not in server.log()


def test_empty_allow_list_warns_at_start(receiver_factory):
    server = receiver_factory()
    assert "accepting associations from any calling AE title" in server.log()
    assert UNTUNED_LOG not in server.log()  # speed tuning is on by default


@ALSO_UNTUNED
@pytest.mark.peer
def test_storescu_study_is_stored_indexed_and_decided(receiver_factory, tmp_path):
    require_peer("storescu")
    study, paths = write_study(tmp_path / "study", acquisition=12, mip=4)
    server = receiver_factory(stable_after=1.0)
    proc = storescu(server, *paths)
    assert proc.returncode == 0, proc.stderr
    assert rows(server, "SELECT instance_count FROM study WHERE study_instance_uid = ?", study) == [(16,)]
    stored = rows(server, "SELECT path, sha256, transfer_syntax_uid FROM instance")
    assert len(stored) == 16
    for path, sha, syntax in stored:
        assert (server.data / "storage" / path).is_file() and len(sha) == 64 and syntax
    receipt = rows(
        server,
        "SELECT calling_ae, called_ae, peer_address, implementation_class_uid, implementation_version_name FROM "
        "receipt LIMIT 1",
    )[0]
    assert receipt[:3] == ("STORESCU", "DICOMCHECK", "127.0.0.1")
    assert receipt[3].startswith("1.2.276.0.7230010.3") and receipt[4].startswith("OFFIS_DCMTK")
    decision = wait_for(
        lambda: rows(
            server,
            "SELECT outcome, code, instance_count, rules_version FROM decision WHERE study_instance_uid = ?",
            study,
        )
    )
    assert decision[0][:3] == ("supports_76376", "76376", 16)
    assert rows(server, "SELECT needs_decision FROM study") == [(0,)]
    assert not list((server.data / "storage" / ".tmp").iterdir()), "temporary files left behind"
    log = server.log()
    assert "TEST^CLI" not in log and "P1" not in log.split()  # no patient names or IDs in logs


def test_later_arrival_re_decides_and_keeps_history(receiver_factory, tmp_path):
    study = generate_uid()
    acq = generate_uid()
    server = receiver_factory(stable_after=0.5)
    first = [ct_dataset(study, acq, SeriesDescription="Abdomen") for _ in range(2)]
    assert all(s.Status == 0 for s in pynetdicom_store(server, first))
    wait_for(lambda: rows(server, "SELECT outcome FROM decision") == [("no_3d",)])
    vr = ct_dataset(
        study, generate_uid(), "DERIVED\\SECONDARY\\AXIAL\\CT_SOM5 VRT", station="CT54023", SeriesDescription="VR"
    )
    assert pynetdicom_store(server, [vr], calling="LATE3DLAB")[0].Status == 0
    history = wait_for(
        lambda: (r := rows(server, "SELECT outcome, instance_count FROM decision ORDER BY id")) and len(r) == 2 and r
    )
    assert history == [("no_3d", 2), ("supports_76376", 3)]
    current = rows(server, "SELECT d.outcome FROM study s JOIN decision d ON d.id = s.current_decision_id")
    assert current == [("supports_76376",)]


@ALSO_UNTUNED
def test_resend_identical_is_success_without_duplicate_and_changed_content_is_a_version(receiver_factory):
    server = receiver_factory()
    ds = ct_dataset(generate_uid(), generate_uid())
    assert [s.Status for s in pynetdicom_store(server, [ds, ds])] == [0, 0]
    assert rows(server, "SELECT count(*) FROM instance") == [(1,)]
    assert rows(server, "SELECT duplicate FROM receipt ORDER BY id") == [(0,), (1,)]
    changed = ct_dataset(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, SOPInstanceUID=ds.SOPInstanceUID, SeriesDescription="corrected"
    )
    changed.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert pynetdicom_store(server, [changed])[0].Status == 0
    versions = rows(
        server, "SELECT version, path FROM instance WHERE sop_instance_uid = ? ORDER BY version", str(ds.SOPInstanceUID)
    )
    assert [v for v, _ in versions] == [1, 2] and versions[0][1] != versions[1][1]
    assert rows(server, "SELECT instance_count FROM study") == [(1,)]


def test_dataset_without_uids_is_quarantined_with_reason(receiver_factory):
    server = receiver_factory()
    ds = ct_dataset(generate_uid(), generate_uid())
    del ds.StudyInstanceUID
    status = pynetdicom_store(server, [ds])[0]
    assert status.Status == 0xC001
    assert "StudyInstanceUID" in status.ErrorComment
    ((path, reason, code),) = rows(server, "SELECT path, reason, status FROM quarantined")
    assert code == 0xC001 and "missing StudyInstanceUID" in reason
    quarantined = server.data / "quarantine" / path
    assert quarantined.is_file() and json.loads(quarantined.with_suffix(".json").read_text())["reason"] == reason
    assert rows(server, "SELECT count(*) FROM instance") == [(0,)]


@ALSO_UNTUNED
def test_unparseable_dataset_is_quarantined(receiver_factory):
    server = receiver_factory()
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        # a data set whose first element claims more bytes than were sent
        response = send_raw_c_store(
            assoc, sop_class=CTImageStorage, sop_instance=generate_uid(), body=b"\x08\x00\x18\x00UI\x40\x001.2.3"
        )
        assert response is not None and 0xC000 <= response.Status <= 0xCFFF
        assert response.ErrorComment
    finally:
        assoc.release()
    ((reason, status),) = rows(server, "SELECT reason, status FROM quarantined")
    assert reason and 0xC000 <= status <= 0xCFFF
    assert rows(server, "SELECT count(*) FROM instance") == [(0,)]


def test_sop_class_not_negotiated_on_the_context_is_0122(receiver_factory):
    server = receiver_factory()
    ae = AE(ae_title="SLOPPY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    try:
        ds = ct_dataset(generate_uid(), generate_uid(), SOPClassUID=MRImageStorage)
        response = send_raw_c_store(
            assoc, sop_class=MRImageStorage, sop_instance=ds.SOPInstanceUID, body=encode_body(ds)
        )
        assert response.Status == 0x0122
    finally:
        assoc.release()
    assert rows(server, "SELECT count(*) FROM instance") == [(0,)]


def test_private_sop_classes_are_refused_unless_configured(receiver_factory):
    private = "1.3.46.670589.5.0.1.1"  # Philips private 3D object storage (realworld ViewForum stub)
    ds = ct_dataset(generate_uid(), generate_uid(), SOPClassUID=private)
    ds.file_meta.MediaStorageSOPClassUID = private
    plain = receiver_factory()
    ae = AE(ae_title="VIEWFORUM")
    ae.add_requested_context(private, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", plain.port, ae_title=plain.ae_title)
    assert assoc.is_established
    (refused,) = assoc.rejected_contexts  # refused at negotiation: abstract syntax not supported
    assert refused.abstract_syntax == private and refused.result == 0x03
    assoc.release()
    configured = receiver_factory("--private-sop-class", private)
    status = pynetdicom_store(configured, [ds], contexts=[build_context(private, [ExplicitVRLittleEndian])])[0]
    assert status.Status == 0
    assert rows(configured, "SELECT sop_class_uid FROM instance") == [(private,)]


@pytest.mark.realworld
@pytest.mark.parametrize(
    ("name", "syntax", "propose"),
    [
        ("us_ge_logiqe_original.dcm", "1.2.840.10008.1.2.4.91", "-xw"),  # JPEG 2000
        ("sc_mevislab_testpattern.dcm", "1.2.840.10008.1.2.4.80", "-xt"),  # JPEG-LS lossless
    ],
)
@pytest.mark.peer
def test_compressed_instances_are_stored_as_sent(receiver_factory, realworld, name, syntax, propose):
    require_peer("storescu")
    source = realworld / name
    assert str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    server = receiver_factory()
    proc = storescu(server, source, extra=(propose, "-R"))
    assert proc.returncode == 0, proc.stderr
    ((path, stored_syntax),) = rows(server, "SELECT path, transfer_syntax_uid FROM instance")
    assert stored_syntax == syntax
    original, received = dcmread(source), dcmread(server.data / "storage" / path)
    assert received.file_meta.TransferSyntaxUID == syntax
    assert received.PixelData == original.PixelData  # the encapsulated fragments, byte for byte
    for element in original:
        if element.tag != 0x7FE00010:
            assert received[element.tag].value == element.value


def test_htj2k_instance_sent_with_pynetdicom_is_stored_as_sent(receiver_factory):
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    ds = ct_dataset(generate_uid(), generate_uid(), rows=4)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    fragment = b"\xff\x4f\xff\x51" + bytes(range(60))  # opaque codestream bytes: stored, never decoded
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    server = receiver_factory()
    status = pynetdicom_store(server, [ds], contexts=[build_context(CTImageStorage, [HTJ2KLossless])])[0]
    assert status.Status == 0
    ((path, syntax),) = rows(server, "SELECT path, transfer_syntax_uid FROM instance")
    assert syntax == HTJ2KLossless
    assert dcmread(server.data / "storage" / path).PixelData == ds.PixelData


def test_verification_with_pynetdicom(receiver_factory):
    server = receiver_factory()
    ae = AE(ae_title="PYECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()

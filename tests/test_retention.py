"""Pixel retention (issue 10 part 2): header-only copies byte-exact but for the pixel data, the signed
retention record, quarantine expiry, and `evidence verify` of a pack made before retention.

Real files (generated and the real-world corpus), a real index (SQLite and PostgreSQL), and for the
acceptance test a real `serve` receiving a 512 x 512 CT study over a real association.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicomcheck.config import Settings
from dicomcheck.evidence.keys import create_key
from dicomcheck.evidence.retention import RetentionLedger, prune, retention_root, storage_status, study_records_dir
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.model import facts_to_dict
from dicomcheck.sources import Source, read_facts
from dicomcheck.store.index import ReceiptInfo
from dicomcheck.store.reads import IndexReader
from dicomcheck.store.retention import PIXEL_TAGS, NotCuttable, pixel_spans, write_header_copy

from .conftest import run_cli
from .dicomfiles import ct_dataset, write_study
from .peers import nodelay, wait_for


# ---------------------------------------------------------------- byte-exactness
def _removed_chunk(original: bytes, header: bytes) -> tuple[int, bytes]:
    """Where the one removed contiguous chunk starts and what it is (the header copy is the original
    with exactly that chunk cut out), checked from the bytes alone."""
    assert len(header) < len(original)
    start = next((i for i, (a, b) in enumerate(zip(original, header, strict=False)) if a != b), len(header))
    removed = len(original) - len(header)
    assert original[:start] == header[:start]
    assert original[start + removed :] == header[start:], "bytes after the removed pixel data differ"
    return start, original[start : start + removed]


def _raw_elements(path: Path) -> dict[int, tuple]:
    """Every top-level element as pydicom reads it, raw where unconverted (tag -> VR, value), file meta included."""
    ds = pydicom.dcmread(path, force=True)
    elements = {int(tag): (ds.get_item(tag).VR, ds.get_item(tag).value) for tag in ds._dict}
    meta = {int(tag): (e.VR, e.value) for tag, e in ds.file_meta.items()}
    return {**elements, **{-t: v for t, v in meta.items()}}


def _assert_header_only(original: Path, header: Path) -> None:
    before, after = _raw_elements(original), _raw_elements(header)
    kept = {tag: value for tag, value in before.items() if tag not in PIXEL_TAGS}
    assert after == kept, "an element other than the pixel data changed, appeared or went missing"
    _, chunk = _removed_chunk(original.read_bytes(), header.read_bytes())
    assert chunk[:4] in (
        b"\xe0\x7f\x10\x00",  # little endian (7FE0,0010), (7FE0,0008), (7FE0,0009)
        b"\xe0\x7f\x08\x00",
        b"\xe0\x7f\x09\x00",
        b"\x7f\xe0\x00\x10",  # big endian
    ), "the removed bytes do not start with a pixel data tag"


def _trailing_elements(ds) -> None:
    """Elements after the pixel data and an undefined-length sequence: kept byte-exact too."""
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113100", "DCM", "Basic Application"
    ds.DeidentificationMethodCodeSequence = [item]
    ds.DeidentificationMethodCodeSequence.is_undefined_length = True
    ds.DataSetTrailingPadding = b"\0" * 16


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless], ids=str
)
def test_header_only_copy_is_the_file_without_its_pixel_data_byte_for_byte(tmp_path, syntax):
    ds = ct_dataset(generate_uid(), generate_uid(), rows=128)
    _trailing_elements(ds)
    if syntax == RLELossless:
        ds.compress(RLELossless)  # encapsulated: undefined length, fragments, sequence delimiter
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    original = tmp_path / "original.dcm"
    ds.save_as(original, enforce_file_format=True)
    copy = write_header_copy(original, tmp_path)
    assert copy.removed == ("7FE00010",)
    assert copy.original_size == original.stat().st_size and copy.header_size == copy.temp.stat().st_size
    assert copy.header_size < 2000 < copy.original_size
    _assert_header_only(original, copy.temp)
    assert "PixelData" not in pydicom.dcmread(copy.temp) and "DataSetTrailingPadding" in pydicom.dcmread(copy.temp)


def test_float_pixel_data_is_removed_too(tmp_path):
    ds = ct_dataset(generate_uid(), generate_uid(), rows=16)
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = b"\0\0\x80?" * 256
    original = tmp_path / "float.dcm"
    ds.save_as(original, enforce_file_format=True)
    copy = write_header_copy(original, tmp_path)
    assert copy.removed == ("7FE00008",)
    _assert_header_only(original, copy.temp)


def test_a_deflated_data_set_is_kept_whole(tmp_path):
    """Deflated Explicit VR: cutting would re-encode the compressed stream, so the file is kept as received."""
    ds = ct_dataset(generate_uid(), generate_uid(), rows=16)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    original = tmp_path / "deflated.dcm"
    ds.save_as(original, enforce_file_format=True)
    with pytest.raises(NotCuttable, match="Deflated"), original.open("rb") as fh:
        pixel_spans(fh)


@pytest.mark.realworld
def test_realworld_header_only_copies_are_byte_exact_and_give_the_same_facts(realworld, tmp_path):
    """Every real file: a header-only copy that is the file minus its pixel data element, whose header
    facts are identical (facts never depend on the pixel data), or kept whole for a stated reason."""
    cut = kept = 0
    for path in sorted(realworld.glob("*.dcm")):
        try:
            copy = write_header_copy(path, tmp_path)
        except NotCuttable as exc:
            kept += 1
            assert str(exc), path.name
            continue
        if not copy.removed:  # no top-level pixel data (SR, PR, a stub): nothing to remove
            assert copy.header_sha256 == copy.original_sha256
            copy.temp.unlink()
            continue
        cut += 1
        _, chunk = _removed_chunk(path.read_bytes(), copy.temp.read_bytes())
        assert chunk[:4] == b"\xe0\x7f\x10\x00", path.name
        before, after = read_facts(Source(str(path))), read_facts(Source(str(copy.temp)))
        assert not hasattr(before, "reason") and not hasattr(after, "reason"), path.name
        assert {**facts_to_dict(before), "source": None} == {**facts_to_dict(after), "source": None}, path.name
        with_pixels = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        without = pydicom.dcmread(copy.temp, force=True)
        for tag, element in with_pixels._dict.items():  # raw elements, as read: never converted here
            assert element.value == without._dict[tag].value, (path.name, tag)
        copy.temp.unlink()
    assert cut >= 30 and kept <= 2, (cut, kept)


# ---------------------------------------------------------------- the index side, SQLite and PostgreSQL
RECEIPT = ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", "1.2.3.4", "TESTSENDER", "1.2.840.10008.1.2.1")


def _ingest(receiver: Receiver, paths) -> None:
    for path in paths:
        temp = receiver.files.new_temp()
        shutil.copyfile(path, temp)
        assert receiver.store_file(temp, RECEIPT).status is StoreStatus.SUCCESS


def _settle(receiver: Receiver, study: str) -> None:
    wait_for(
        lambda: (
            receiver.settle_once() >= 0 and (s := receiver.index.get_study(study)) is not None and s.status == "decided"
        ),
        timeout=30,
    )


def _close(receiver: Receiver) -> None:
    close = getattr(receiver, "close", None)
    if close is not None:
        close()
    receiver.engine.dispose()


def test_prune_keeps_thumbnails_records_what_it_removed_and_expires_quarantine(index_url, tmp_path):
    settings = Settings(data=tmp_path / "data", database_url=index_url, stable_after=0.01)
    receiver = Receiver(settings)
    key = create_key(settings.data / "keys")
    try:
        study, paths = write_study(tmp_path / "study", acquisition=5, mip=3, rows=64)
        _ingest(receiver, paths)
        garbage = receiver.files.new_temp()
        garbage.write_bytes(b"not DICOM at all" * 64)
        assert receiver.store_file(garbage, RECEIPT).status is StoreStatus.CANNOT_UNDERSTAND
        _settle(receiver, study)
        reader = IndexReader(receiver.engine)
        assert reader.studies_due_for_retention(dt.datetime.now(dt.UTC), limit=10) == [study]
        assert reader.oldest_unpruned_decision() is not None
        full_before = reader.stored_bytes_by_pixel_state()["full"]

        # nothing is due under the default 30 days, and a quarantined input of today is kept
        idle = prune(settings, receiver.engine, key, older_than=30 * 86400.0, quarantine_older_than=90 * 86400.0)
        assert (idle.studies, idle.quarantine_deleted, idle.records) == (0, 0, [])

        quarantined = next(settings.quarantine_dir.rglob("*.dcm"))
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=91)).timestamp()
        os.utime(quarantined, (old, old))
        report = prune(settings, receiver.engine, key, older_than=0.0, quarantine_older_than=90 * 86400.0)
        assert report.problems == []
        assert (report.studies, report.header_only, report.thumbnails_kept) == (1, 6, 2)
        assert report.quarantine_deleted == 1 and not quarantined.exists()
        assert not quarantined.with_suffix(".json").exists()

        rows = reader.retention_instances(study)
        header_only = [r for r in rows if r.pixel_state == "header_only"]
        assert len(header_only) == 6 and len([r for r in rows if r.pixel_state == "full"]) == 2
        for row in header_only:
            stored = settings.storage_dir / row.path
            assert stored.stat().st_size == row.header_size < row.size and row.pruned_at is not None
            assert "PixelData" not in pydicom.dcmread(stored)
        # the two kept whole are the thumbnails a pack shows (middle of the MIP series, middle acquisition)
        from dicomcheck.evidence.collect import from_index

        shown = {
            (c.sop_instance_uid, c.sha256)
            for c in from_index(receiver.engine, settings.storage_dir, study).instances
            if c.role in ("3d", "acquisition")
        }
        assert {(r.sop_instance_uid, r.sha256) for r in rows if r.pixel_state == "full"} == shown
        states = reader.stored_bytes_by_pixel_state()
        assert states["header_only"] == sum(r.header_size or 0 for r in header_only)
        assert states["full"] < full_before / 3
        assert reader.studies_due_for_retention(dt.datetime.now(dt.UTC), limit=10) == []
        assert reader.oldest_unpruned_decision() is None

        # the signed records: one for the study, one for the expired quarantine
        ledger = RetentionLedger(retention_root(settings.data), frozenset({key.fingerprint}))
        removals = ledger.removals(study)
        assert {r.sop_instance_uid for r in removals} == {r.sop_instance_uid for r in header_only}
        for row in header_only:
            removal, _ = ledger.header_only(study, row.sop_instance_uid, row.sha256, row.header_sha256 or "")
            assert removal is not None and removal.signer == key.fingerprint
        assert ledger.header_only(study, header_only[0].sop_instance_uid, header_only[0].sha256, "0" * 64)[0] is None
        untrusted = RetentionLedger(retention_root(settings.data), frozenset({"SHA256:someone-else"}))
        row = header_only[0]
        assert untrusted.header_only(study, row.sop_instance_uid, row.sha256, row.header_sha256 or "")[0] is None
        (quarantine_record,) = (retention_root(settings.data) / "quarantine").glob("*.json")
        deleted = json.loads(quarantine_record.read_text())["quarantine_deleted"]
        assert [d["quarantine_path"] for d in deleted] == [quarantined.relative_to(settings.quarantine_dir).as_posix()]
        with receiver.engine.connect() as connection:
            expired = connection.exec_driver_sql("SELECT expired_at FROM quarantined").scalars().all()
        assert len(expired) == 1 and expired[0] is not None, "the quarantine row is kept, marked expired"

        # a second pass finds nothing more to do
        again = prune(settings, receiver.engine, key, older_than=0.0, quarantine_older_than=90 * 86400.0)
        assert (again.studies, again.header_only, again.records) == (0, 0, [])
        status = storage_status(settings, receiver.engine, settings.min_free_space_budget)
        assert status.bytes_by_state["header_only"] == states["header_only"] and status.free
    finally:
        _close(receiver)


def test_a_record_without_a_valid_signature_proves_nothing(tmp_path):
    key = create_key(tmp_path / "keys")
    folder = study_records_dir(tmp_path / "retention", "1.2.3")
    from dicomcheck.evidence.retention import RECORD_FORMAT, write_record

    entry = {"study_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4", "original_sha256": "a" * 64}
    record = write_record(folder, {"format": RECORD_FORMAT, "instances": [{**entry, "header_sha256": "b" * 64}]}, key)
    ledger = RetentionLedger(tmp_path / "retention", frozenset({key.fingerprint}))
    assert ledger.header_only("1.2.3", "1.2.3.4", "a" * 64, "b" * 64)[0] is not None
    record.chmod(0o644)
    record.write_text(record.read_text().replace("b" * 64, "c" * 64))  # a changed record
    ledger = RetentionLedger(tmp_path / "retention", frozenset({key.fingerprint}))
    assert ledger.header_only("1.2.3", "1.2.3.4", "a" * 64, "c" * 64)[0] is None
    assert any("signature does not match" in note for note in ledger.notes)


# ---------------------------------------------------------------- acceptance: serve, pack, prune, reanalyze, verify
def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _decisions(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT id, outcome, code, document FROM decision ORDER BY id").fetchall()


@pytest.mark.slow
def test_acceptance_prune_shrinks_a_ct_study_by_90_percent_and_the_earlier_pack_still_verifies(
    receiver_factory, tmp_path
):
    """Issue 10 acceptance: a 512 x 512 CT study received over a real association into `serve`, decided,
    packed; `storage prune --older-than 0s` shrinks its storage by more than 90 %; the decision after
    re-analysis is identical; `evidence verify` of the earlier pack passes and names the header-only
    instances."""
    study, paths = write_study(tmp_path / "study", acquisition=30, mip=6, rows=512)
    data = tmp_path / "data"
    server = receiver_factory(data=data, stable_after=0.5)
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = nodelay(ae.associate("127.0.0.1", server.port, ae_title="DICOMCHECK"))
    assert assoc.is_established
    for path in paths:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    assoc.release()
    wait_for(lambda: len(_decisions(server.db)) == 1, timeout=60, describe=lambda: _decisions(server.db))
    server.stop()
    ((decision_id, outcome, code, document),) = _decisions(server.db)
    assert outcome == "supports_76376"

    run_cli("keys", "create", "--data", data, check=True)
    packs = tmp_path / "packs"
    run_cli("evidence", study, "--data", data, "--out", packs, check=True)
    (pack,) = packs.glob("*/decision-*")
    analysed_before = run_cli("analyze", "--format", "json", data / "storage", check=True).stdout

    storage_before = _du(data / "storage")
    pruned = run_cli("storage", "prune", "--data", data, "--older-than", "0s", check=True)
    assert "34 instances now header-only" in pruned.stdout and "2 thumbnail instances kept whole" in pruned.stdout
    storage_after = _du(data / "storage")
    assert storage_after < 0.1 * storage_before, f"{storage_before} -> {storage_after} bytes: not shrunk by 90 %"
    status = run_cli("storage", "status", "--data", data, check=True).stdout
    assert "header_only" in status and "free" in status

    # re-analysis (a real `serve` with the API, POST /studies/{uid}/reanalyze) gives the identical decision
    token = run_cli("token", "create", "coder", "--role", "admin", "--data", data, check=True).stdout.strip()
    from .peers import free_port

    http_port = free_port()
    api = receiver_factory("--http-port", str(http_port), data=data, stable_after=0.5)
    import httpx

    def api_up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(api_up, timeout=60)
    response = httpx.post(
        f"http://127.0.0.1:{http_port}/studies/{study}/reanalyze",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    api.stop()
    decisions = _decisions(server.db)
    assert len(decisions) == 2 and decisions[1][1:3] == (outcome, code)
    assert json.loads(decisions[1][3]) == json.loads(document), "the decision after retention differs"
    # and the headers read from the pruned files decide exactly as before
    assert run_cli("analyze", "--format", "json", data / "storage", check=True).stdout == analysed_before

    # the pack made before retention still verifies, naming the header-only cited instances
    verified = run_cli("evidence", "verify", pack, "--data", data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "header-only after pixel retention" in verified.stdout
    manifest = json.loads((pack / "manifest.json").read_text())
    with sqlite3.connect(server.db) as connection:
        now_header_only = {
            uid
            for (uid,) in connection.execute("SELECT sop_instance_uid FROM instance WHERE pixel_state='header_only'")
        }
    cited_header_only = [
        c["sop_instance_uid"] for c in manifest["cited_instances"] if c["sop_instance_uid"] in now_header_only
    ]
    assert cited_header_only, "the pack cites no pruned instance: the test proves nothing"
    for uid in cited_header_only:
        assert f"cited instance {uid} is now header-only" in verified.stdout
    # from the storage folder alone (no index, no --data): the retention folder beside it is found
    fingerprint = run_cli("keys", "show", "--data", data, check=True).stdout.split()[0]
    alone = run_cli("evidence", "verify", pack, "--storage", data / "storage", "--fingerprint", fingerprint)
    assert alone.returncode == 0, alone.stdout
    # never a false OK: a header-only file changed after retention fails
    victim = next(c for c in manifest["cited_instances"] if c["sop_instance_uid"] in now_header_only)
    stored = data / "storage" / victim["storage_path"]
    stored.write_bytes(stored.read_bytes().replace(b"SIEMENS", b"SIEMENZ", 1))
    tampered = run_cli("evidence", "verify", pack, "--data", data)
    assert tampered.returncode == 1 and f"cited instance {victim['sop_instance_uid']} changed" in tampered.stdout

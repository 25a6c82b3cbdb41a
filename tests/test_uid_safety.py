"""Issue 8 §1: no received UID ever names a path; what a killed receiver leaves is repaired at start.

Real components only: a ``dicomcheck serve`` process, real associations over loopback (pynetdicom,
hand-made C-STOREs for values pydicom's encoder would never write), a real SQLite file and a real
PostgreSQL schema, and real faults (SIGKILL; the index really locked by another connection).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3

import pytest
import sqlalchemy
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from .conftest import drop_postgres_schema, postgres_schema_url
from .dicomfiles import ct_dataset
from .peers import nodelay, send_raw_c_store, wait_for

STUDY, SERIES, SOP = Tag("StudyInstanceUID"), Tag("SeriesInstanceUID"), Tag("SOPInstanceUID")
DERIVED = re.compile(r"^[0-9a-f]{32}/[0-9a-f]{32}/[0-9a-f]{32}\.[0-9a-f]{64}\.dcm$")

HOSTILE: list[tuple[str, Tag, bytes]] = [
    ("study '..'", STUDY, b".."),
    ("study '.'", STUDY, b"."),
    ("study '.tmp'", STUDY, b".tmp"),
    ("study 'quarantine'", STUDY, b"quarantine"),
    ("study 'storage'", STUDY, b"storage"),
    ("study with '/'", STUDY, b"1.2/../../3"),
    ("study with NUL", STUDY, b"1.2\x003.4"),
    ("study non-ASCII", STUDY, "1.2.\u00e93".encode("latin-1")),
    ("study over 64", STUDY, b"1." + b"2" * 70),
    ("study empty component", STUDY, b"1..2"),
    ("series '..'", SERIES, b".."),
    ("series '.tmp'", SERIES, b".tmp"),
    ("series absolute path", SERIES, b"/tmp/x"),
    ("sop '..'", SOP, b".."),
    ("sop over 64", SOP, b"1.2." + b"3" * 64),
]
"""What a hostile or broken peer puts in the three UIDs that used to name folders and files."""


def body_with(ds, tag: Tag, value: bytes) -> bytes:
    """The data set (explicit VR little endian) with ``tag`` holding exactly ``value`` (padded to even)."""
    body = ds.copy()
    del body.file_meta
    value = value + (b"\0" if len(value) % 2 else b"")
    body[tag] = RawDataElement(tag, "UI", len(value), value, 0, False, True)
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, body)
    return raw.getvalue()


class Index:
    """The receiver's index, read with SQLAlchemy (SQLite file or PostgreSQL schema)."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url)

    def rows(self, sql: str, **params):
        with self.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sqlalchemy.text(sql), params)]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """``(extra serve arguments, index URL)`` for the embedded SQLite index and for PostgreSQL."""
    if request.param == "sqlite":
        yield (), f"sqlite:///{tmp_path / 'data' / 'index.sqlite3'}"
        return
    import uuid

    name = f"dc_uid_{uuid.uuid4().hex[:12]}"
    url = postgres_schema_url(name)
    yield ("--database-url", url), url
    drop_postgres_schema(name)


def associate(server, calling: str = "HOSTILE"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = nodelay(ae.associate("127.0.0.1", server.port, ae_title=server.ae_title))
    assert assoc.is_established
    return assoc


def test_non_conformant_uids_are_refused_0xC003_quarantined_and_never_name_a_path(receiver_factory, backend, tmp_path):
    extra, url = backend
    data = tmp_path / "data"
    server = receiver_factory(*extra, data=data)
    index = Index(url)
    parent_before = set(os.listdir(tmp_path))
    top_before = set(os.listdir(data))
    study, series = generate_uid(), generate_uid()
    answers: dict[str, tuple[int, str]] = {}
    assoc = associate(server)
    try:
        for name, tag, value in HOSTILE:
            ds = ct_dataset(study, series)
            request_sop = str(ds.SOPInstanceUID)  # the request carries a valid UID; the data set the hostile one
            response = send_raw_c_store(
                assoc, sop_class=CTImageStorage, sop_instance=request_sop, body=body_with(ds, tag, value)
            )
            answers[name] = (response.Status, str(getattr(response, "ErrorComment", None) or ""))
        # a soft deviation real vendors emit (a leading zero in a component) is accepted
        soft = ct_dataset("1.2.840.99.0123.4", series)
        response = send_raw_c_store(
            assoc,
            sop_class=CTImageStorage,
            sop_instance=str(soft.SOPInstanceUID),
            body=body_with(soft, STUDY, b"1.2.840.99.0123.4"),
        )
        answers["soft"] = (response.Status, "")
    finally:
        assoc.release()

    wrong = {
        name: f"0x{status:04X} {comment}"
        for name, (status, comment) in answers.items()
        if name != "soft" and not (status == 0xC003 and "UID" in comment)
    }
    assert not wrong, f"not refused with 0xC003 (invalid UID): {wrong}"
    assert answers["soft"][0] == 0x0000

    # quarantined, each with its reason and status, named by the product
    wait_for(lambda: len(index.rows("SELECT id FROM quarantined")) == len(HOSTILE), timeout=30)
    quarantined = index.rows("SELECT path, reason, status FROM quarantined ORDER BY id")
    for (path, reason, status), (name, tag, _) in zip(quarantined, HOSTILE, strict=True):
        assert status == 0xC003, name
        keyword = {STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", SOP: "SOPInstanceUID"}[tag]
        assert keyword in reason, (name, reason)
        kept = data / "quarantine" / path
        assert kept.is_file() and kept.with_suffix(".json").is_file(), name
        assert re.fullmatch(r"\d{8}/\d{6}-[0-9a-f]{12}\.dcm", path), path
        assert "\x00" not in reason

    # only the soft instance is indexed, under a derived name; nothing else reached storage
    ((path, stored_study),) = index.rows("SELECT path, study_instance_uid FROM instance")
    assert stored_study == "1.2.840.99.0123.4"
    assert DERIVED.match(path), path
    on_disk = {p.relative_to(data / "storage").as_posix() for p in (data / "storage").rglob("*") if p.is_file()}
    journal = {name for name in on_disk if name.startswith(".journal/")}
    assert on_disk - journal == {path}, sorted(on_disk)  # no journal entry left beside it either
    # the journal: a folder of a random name per receiver with its owner file and derived-name markers
    assert all(re.fullmatch(r"\.journal/[0-9a-f]{32}/(owner|[0-9a-f]{32}\.[0-9a-f]{32})", n) for n in journal), journal
    assert {p.name for p in (data / "storage").iterdir()} <= {path.split("/")[0], ".tmp", ".journal"}
    # the data folder's top level and its parent gained nothing a peer named
    assert set(os.listdir(tmp_path)) == parent_before
    assert set(os.listdir(data)) - top_before <= {"index.sqlite3-wal", "index.sqlite3-shm"}
    assert "Traceback" not in server.log() and "\x00" not in server.log()


# ---------------------------------------------------------------- killed between answer and index
def journal_entries(storage):
    return list(storage.glob("*/*/*.pending"))


def test_an_instance_answered_but_not_indexed_when_killed_is_indexed_and_its_association_closed_at_start(
    receiver_factory, tmp_path
):
    """SIGKILL after the third instance was answered (its file and journal entry durable) and before
    its index row was written: made real by holding the SQLite index's write lock from another
    connection, which holds the receiver's index writer (never the answer)."""
    data = tmp_path / "data"
    server = receiver_factory(data=data)
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(study, series, InstanceNumber=i + 1) for i in range(3)]
    assoc = associate(server, "KILLED")
    assert [assoc.send_c_store(ds).Status for ds in datasets[:2]] == [0, 0]
    storage = data / "storage"
    with sqlite3.connect(server.db) as db:
        wait_for(lambda: db.execute("SELECT count(*) FROM instance").fetchone() == (2,))

    blocker = sqlite3.connect(server.db, timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the receiver can read, but not write the index
    try:
        assert assoc.send_c_store(datasets[2]).Status == 0  # answered: durable, indexed later
        assert len({p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts}) == 3
        assert len(journal_entries(storage)) == 1
        server.kill()  # the third file is in storage and in the journal; its row is not in the index
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with sqlite3.connect(server.db) as db:
        assert db.execute("SELECT count(*) FROM instance").fetchone() == (2,)
        assert db.execute("SELECT status, ended_at FROM association").fetchall() == [("accepted", None)]

    restarted = receiver_factory(data=data)
    with sqlite3.connect(restarted.db) as db:
        instances = db.execute("SELECT sop_instance_uid, path, sha256, size, association_id FROM instance").fetchall()
        ((association_id, status, ended, received, failures),) = db.execute(
            "SELECT id, status, ended_at, instances_received, failures FROM association"
        ).fetchall()
        receipts = db.execute("SELECT calling_ae, association_id FROM receipt").fetchall()
        count = db.execute("SELECT instance_count FROM study").fetchall()
    assert {sop for sop, *_ in instances} == {str(ds.SOPInstanceUID) for ds in datasets}
    for _, path, sha, size, assoc_id in instances:
        stored = storage / path
        assert stored.stat().st_size == size and hashlib.sha256(stored.read_bytes()).hexdigest() == sha
        assert assoc_id == association_id
    assert {p.relative_to(storage).as_posix() for p in storage.rglob("*.dcm") if ".tmp" not in p.parts} == {
        i[1] for i in instances
    }
    assert count == [(3,)]
    assert receipts == [("KILLED", association_id)] * 3  # provenance kept for the recovered one too
    # the killed process's association is closed as aborted with what it acknowledged, replayed first
    assert (status, received, failures) == ("aborted", 3, 0) and ended is not None
    assert not journal_entries(storage), "the journal entry was not cleared"
    assert len(list((storage / ".journal").iterdir())) == 1, "the killed receiver's journal was not removed"
    assert not [p for p in (storage / ".tmp").iterdir()]
    assert "Traceback" not in restarted.log()


def test_an_aborted_association_is_recorded_aborted_with_its_count(receiver_factory, tmp_path):
    server = receiver_factory()
    study, series = generate_uid(), generate_uid()
    assoc = associate(server, "ABORTER")
    assert [assoc.send_c_store(ct_dataset(study, series)).Status for _ in range(3)] == [0, 0, 0]
    assoc.abort()
    dropped = associate(server, "DROPPER")  # the connection just goes away: no A-ABORT, no release
    assert dropped.send_c_store(ct_dataset(study, series)).Status == 0
    dropped.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    def ended():
        with sqlite3.connect(server.db) as db:
            found = db.execute(
                "SELECT calling_ae, status, instances_received FROM association WHERE ended_at IS NOT NULL ORDER BY id"
            ).fetchall()
        return found if len(found) == 2 else None

    assert wait_for(ended, timeout=30) == [("ABORTER", "aborted", 3), ("DROPPER", "aborted", 1)]


def test_error_comments_are_one_printable_lo_value():
    """A reason quoting a received value must not put a backslash (LO's value delimiter) or control
    characters into the Error Comment of the C-STORE response."""
    from dicomcheck.ingest import StoreStatus
    from scp.handlers import _status

    answer = _status(StoreStatus.INVALID_UID, "invalid SOP Instance UID '1.2\\3.4\x00\x1b[31m'")
    comment = answer.ErrorComment
    assert "\\" not in comment and all(" " <= c <= "~" for c in comment)
    assert comment.startswith("invalid SOP Instance UID '1.2?3.4")
    assert answer.Status == 0xC003

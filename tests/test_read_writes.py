"""Issue 14: an audited study read commits in three statements (audit insert, study_read upsert, report_read
upsert) when what the client read before comes with the study (``IndexReader.study_for_read(reader=...)``);
on SQLite and on PostgreSQL, on the API request's connection as the route uses it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access
from dicomcheck.store.reads import IndexSession
from dicomcheck.store.records import EarlierRead, StudyForRead

from .test_api import auth, ingest_case, settle_all

AUDIT = {
    "event": "DICOM Instances Accessed",
    "action": "R",
    "outcome": 0,
    "token_name": "ris",
    "role": "reader",
    "method": "GET",
    "endpoint": "/studies/-",
    "detail": {},
}


@pytest.fixture(scope="module")
def indexed(module_index_url: str, tmp_path_factory: pytest.TempPathFactory, fixtures_output: Path):
    """One decided study on a real index (SQLite, then PostgreSQL)."""
    data = tmp_path_factory.mktemp("read-writes")
    receiver = Receiver(Settings(data=data, database_url=module_index_url, stable_after=0.01))
    ingest_case(receiver, fixtures_output / "ct_console_mip")
    settle_all(receiver)
    uid = json.loads((fixtures_output / "ct_console_mip" / "expected.json").read_text())["study_instance_uid"]
    yield receiver, uid
    receiver.engine.dispose()


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends while the block runs (their first three words)."""
    sent: list[str] = []

    def record(_conn, _cursor, statement: str, *_args) -> None:
        sent.append(" ".join(statement.split()[:3]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def read_as(session: IndexSession, uid: str, reader: str) -> StudyForRead:
    found = session.reader.study_for_read(uid, reader=reader)
    assert found is not None
    return found


def test_the_previous_read_comes_with_the_study_and_the_write_reads_nothing(indexed):
    receiver, uid = indexed
    engine = receiver.engine
    with IndexSession.open(engine) as session:
        assert session.reader.study_for_read(uid) is not None
        assert session.reader.study_for_read(uid).earlier is None  # not asked for a reader
        first = read_as(session, uid, "ris-3")
        assert first.earlier == EarlierRead(None, None)
        decision_id = first.decision.id if first.decision else None
        with statements_sent(engine) as sent:
            returned = session.access.record_read(
                uid, "ris-3", decision_id, "documented", audit=AUDIT, earlier=first.earlier
            )
        assert returned == first.earlier
        assert sent == [
            "INSERT INTO audit_event",
            "INSERT INTO study_read",
            "INSERT INTO report_read",
        ]
        again = read_as(session, uid, "ris-3")
        assert again.earlier is not None and again.earlier.study_read is not None
        assert (again.earlier.study_read.decision_id, again.earlier.documentation) == (decision_id, "documented")
        assert read_as(session, uid, "someone-else").earlier == EarlierRead(None, None)
        # a later read updates both rows in place (one row per client and study) and still reads nothing
        with statements_sent(engine) as sent:
            session.access.record_read(uid, "ris-3", None, "undocumented", audit=AUDIT, earlier=again.earlier)
        assert sent == ["INSERT INTO audit_event", "INSERT INTO study_read", "INSERT INTO report_read"]
        latest = read_as(session, uid, "ris-3").earlier
        assert latest is not None and latest.study_read is not None
        assert (latest.study_read.decision_id, latest.documentation) == (None, "undocumented")
    assert [r.token_name for r in Access(engine).reads(uid)].count("ris-3") == 1


def test_a_read_without_the_previous_one_reads_it_in_its_transaction(indexed):
    receiver, uid = indexed
    with IndexSession.open(receiver.engine) as session:
        assert session.access.record_read(uid, "ris-4", 7, "documented", audit=AUDIT) == EarlierRead(None, None)
        earlier = session.access.record_read(uid, "ris-4", 8, None, audit=AUDIT)
        assert earlier.study_read is not None
        assert (earlier.study_read.decision_id, earlier.documentation) == (7, "documented")
        earlier = session.access.record_read(uid, "ris-4", 9, "undocumented")
        assert earlier.study_read is not None
        assert (earlier.study_read.decision_id, earlier.documentation) == (8, "documented")


def test_the_study_read_route_never_locks_or_updates_read_rows(indexed):
    """GET /studies/{uid}: each read is one upsert per read row (no UPDATE), one row per client and study, and
    a second read of the same decision is not ``changed_after_read``."""
    receiver, uid = indexed
    token = Access(receiver.engine).create_token("ris-route", "reader")
    with TestClient(create_app(receiver.settings, receiver)) as client:
        with statements_sent(receiver.engine) as sent:
            first = client.get(f"/studies/{uid}", headers=auth(token))
            second = client.get(f"/studies/{uid}", headers=auth(token))
        assert first.status_code == second.status_code == 200
        assert not first.json()["changed_after_read"] and not second.json()["changed_after_read"]
        assert not any(s.startswith("UPDATE") for s in sent if "read" in s), sent
        assert sent.count("INSERT INTO study_read") == 2
        assert sent.count("INSERT INTO report_read") == 2
    assert [r.token_name for r in Access(receiver.engine).reads(uid)].count("ris-route") == 1

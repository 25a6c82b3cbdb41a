"""Issue 14: an audited study read commits in three statements (audit insert, study_read upsert, report_read
upsert) on SQLite and in ONE statement (data-modifying CTEs) on PostgreSQL when what the client read before comes
with the study (``IndexReader.study_for_read(reader=...)``); on the API request's connection as the route uses it.
On PostgreSQL a lookup's connection reads in autocommit: no BEGIN / ROLLBACK round trips around its reads, and
several writes still share one real transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access, audit_row
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


def writes_of_a_read(engine: Engine) -> list[str]:
    """What ``record_read`` sends for a read whose previous read came with the study, on ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        return ["WITH audit_written AS"]
    return ["INSERT INTO audit_event", "INSERT INTO study_read", "INSERT INTO report_read"]


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
        assert sent == writes_of_a_read(engine)
        again = read_as(session, uid, "ris-3")
        assert again.earlier is not None and again.earlier.study_read is not None
        assert (again.earlier.study_read.decision_id, again.earlier.documentation) == (decision_id, "documented")
        assert read_as(session, uid, "someone-else").earlier == EarlierRead(None, None)
        # a later read updates both rows in place (one row per client and study) and still reads nothing
        with statements_sent(engine) as sent:
            session.access.record_read(uid, "ris-3", None, "undocumented", audit=AUDIT, earlier=again.earlier)
        assert sent == writes_of_a_read(engine)
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
        for statement in writes_of_a_read(receiver.engine):
            assert sent.count(statement) == 2, sent
    assert [r.token_name for r in Access(receiver.engine).reads(uid)].count("ris-route") == 1


def test_a_lookup_sends_three_reads_and_its_writes(indexed):
    """``GET /studies/{uid}`` sends the token check, the study (with its previous read) and its reports, then the
    audited read's writes. On PostgreSQL each statement runs with the server idle (no BEGIN sent before it, none
    left open after it: one round trip each) and the writes are one statement; the read is still audited."""
    receiver, uid = indexed
    engine = receiver.engine
    postgresql = engine.dialect.name == "postgresql"
    token = Access(engine).create_token("ris-autocommit", "reader")
    states: list[tuple[str, TransactionStatus]] = []

    def after(conn, _cursor, statement: str, *_args) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status if postgresql else None
        states.append((" ".join(statement.split()[:3]), status))

    with TestClient(create_app(receiver.settings, receiver)) as client:
        assert client.get(f"/studies/{uid}", headers=auth(token)).status_code == 200  # the token's last use: written
        event.listen(engine, "after_cursor_execute", after)
        try:
            answer = client.get(f"/studies/{uid}", headers=auth(token))
        finally:
            event.remove(engine, "after_cursor_execute", after)
    assert answer.status_code == 200
    assert [s for s, _ in states] == [
        "SELECT api_token.id, api_token.name,",
        "SELECT study.study_instance_uid, study.accession_number,",  # with its decision, review, session, last read
        "SELECT report.id, report.study_instance_uid,",
        *writes_of_a_read(engine),
    ], states
    if postgresql:
        assert all(status == TransactionStatus.IDLE for _, status in states), states
    events = Access(engine).audit_events(study_uid=uid)
    assert any(e.token_name == "ris-autocommit" and e.event == "DICOM Instances Accessed" for e in events)


def test_several_writes_on_a_lookup_connection_are_still_one_transaction(indexed):
    """A lookup session (``autocommit_reads``) leaves autocommit for ``transaction()``: a failure inside rolls back
    every write of the block, and the connection reads in autocommit again after it."""
    receiver, uid = indexed
    engine = receiver.engine
    with IndexSession.open(engine, autocommit_reads=True) as session:
        with pytest.raises(RuntimeError), session.transaction():
            session.access.record_read(uid, "ris-atomic", None, "documented", audit=AUDIT)
            session.access.audit(audit_row(event="Query", action="E", method="GET", endpoint="/x", token=None))
            raise RuntimeError("after two writes")
        assert session.reader.study_for_read(uid, reader="ris-atomic").earlier == EarlierRead(None, None)
        if engine.dialect.name == "postgresql":
            bind = session.reader.bind
            assert bind.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
            assert bind.connection.dbapi_connection.autocommit
        with session.transaction():
            session.access.record_read(uid, "ris-atomic", None, "documented", audit=AUDIT)
    assert [r.token_name for r in Access(engine).reads(uid)].count("ris-atomic") == 1

"""Every list and search the store runs is served by an index (issue 14): on SQLite and on PostgreSQL
filled with 20,000 studies (bulk Core inserts: ``bench/bench_api.py``'s ``populate``), statistics
gathered, the SQL each store function really executes is captured as it runs and EXPLAINed on the same
database. No plan may read the whole study, instance or audit table, so a later change cannot drop an
index (or write a query no index serves) without this failing.

What is not checked here, on purpose: the reads that return or aggregate every row by design
(``current_decisions`` and ``series_equipment`` for the inventory and dashboard, ``reviewed_studies``,
``stored_bytes_by_pixel_state``) — an index cannot make them cheaper than reading the table.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from dicomcheck.store.access import Access
from dicomcheck.store.engine import make_engine
from dicomcheck.store.reads import IndexReader, QueueFilters
from dicomcheck.store.records import StudyFilters, StudyPosition
from dicomcheck.store.reports import Reports
from dicomcheck.store.sessions import Sessions
from dicomcheck.store.signals import operations_signals
from dicomcheck.store.tables import AuditEvent, Review, StudyRead

from .conftest import drop_postgres_schema, postgres_schema_url

pytestmark = pytest.mark.slow

STUDIES = 20_000
AUDIT_EVENTS = 40_000
ROOT = Path(__file__).resolve().parent.parent
# a site's mix: most studies have no 3D; one in twenty needs a coder (templates 3 and 13 of 20)
OUTCOMES = ("no_3d",) * 3 + ("needs_review",) + ("no_3d",) * 4 + ("supports_76377", "supports_76376")
MODALITIES = ("CT", "MR", "CT", "PT", "CT")
EVENTS = ("DICOM Instances Accessed", "Query", "Data Export", "Security Alert", "Audit Log Used")


def _bench_api() -> Any:
    """``bench/bench_api.py`` (not a package), for its bulk population code."""
    spec = importlib.util.spec_from_file_location("bench_api", ROOT / "bench" / "bench_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _templates() -> list[dict]:
    """Small decided studies in ``populate``'s template form (``S`` is replaced by each study's UID): ten
    kinds, four outcomes, three modalities, twenty stations (the selectivity real sites have)."""
    result = []
    for n in range(20):
        outcome = OUTCOMES[n % len(OUTCOMES)]
        rows = [
            {
                "series": j + 1,
                "modality": MODALITIES[(n + j) % len(MODALITIES)] if j == 0 else "OT",
                "series_number": str(j + 1),
                "series_description": "3D VR" if j else "AXIAL",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7" if j else "1.2.840.10008.5.1.4.1.1.2",
                "station_name": f"ST{n}" if j == 0 else f"WS{n % 3}",
                "device_serial_number": f"SN{n}",
                "manufacturer": "ACME",
                "model": f"M{n % 4}",
                "facts": ['{"study_instance_uid": "', "S", '", "source": "', "F", '"}'],
            }
            for j in range(1 + n % 3)
        ]
        code = {"supports_76377": "76377", "supports_76376": "76376"}.get(outcome)
        result.append(
            {
                "document": [  # the analyze shape the API serves, with no reasons or series
                    '{"study_instance_uid": "',
                    "S",
                    '", "accession_number": "',
                    "A",
                    '", "patient_id": "',
                    "P",
                    f'", "study_description": "CT ABDOMEN", "study_date": "20261201", "outcome": "{outcome}", '
                    f'"code": {json.dumps(code)}, "instances": {len(rows)}, "reasons": [], "series": []}}',
                ],
                "outcome": outcome,
                "code": code,
                "instances": len(rows),
                "study_date": "20261201",
                "study_description": "CT ABDOMEN",
                "modalities": rows[0]["modality"],
                "rows": rows,
            }
        )
    return result


def _fill(url: str) -> None:
    """20,000 studies (series, instances, decisions), 40,000 audit events, reviews and reads; then ANALYZE."""
    bench = BENCH
    bench.populate(url, STUDIES, _templates(), sqlite_fast=url.startswith("sqlite"))
    rng = random.Random(14)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    events = [
        {
            "at": start + dt.timedelta(seconds=i * 90 * 86400 // AUDIT_EVENTS),
            "event": EVENTS[i % len(EVENTS)],
            "action": "R",
            "outcome": 0,
            "token_name": f"client-{i % 7}",
            "role": "reader",
            "method": "GET",
            "endpoint": "/studies",
            "study_instance_uid": bench.study_uid(rng.randrange(STUDIES)),
            "client_address": "127.0.0.1",
            "detail": {},
        }
        for i in range(AUDIT_EVENTS)
    ]
    reviews = [
        {
            "study_instance_uid": bench.study_uid(i),
            "decision_id": i + 1,
            "outcome": "supports_76376",
            "code": "76376",
            "reviewer": "coder",
            "token_name": "client-0",
            "reason": "checked",
            "created_at": start,
        }
        for i in range(3, STUDIES, 100)  # a tenth of the needs_review studies (templates 3, 13) is settled
    ]
    reads = [
        {
            "study_instance_uid": bench.study_uid(i),
            "token_name": "client-1",
            "decision_id": i + 1,
            "read_at": start,
        }
        for i in range(0, STUDIES, 3)
    ]
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(AuditEvent.__table__.insert(), events)  # type: ignore[attr-defined]
        connection.execute(Review.__table__.insert(), reviews)  # type: ignore[attr-defined]
        connection.execute(StudyRead.__table__.insert(), reads)  # type: ignore[attr-defined]
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('explain') / 'index.sqlite3'}"
        _fill(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    name = f"dc_explain_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_url(name)
    try:
        _fill(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
    finally:
        drop_postgres_schema(name)


@contextmanager
def executed(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements (with their parameters) the engine runs inside the block."""
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and re.search(r"\bFROM\b", statement, re.I):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


FULL_SCAN_SQLITE = re.compile(r"^SCAN (study|instance|audit_event)\b(?!.*\bUSING (COVERING )?INDEX\b)")
FULL_SCAN_POSTGRES = re.compile(r"Seq Scan on (study|instance|audit_event)\b")


def plan(engine: Engine, statement: str, parameters: Any, *, seqscan: bool = True) -> list[str]:
    """The plan of ``statement``; ``seqscan=False`` (PostgreSQL): with sequential scans priced out, so a
    sequential scan left in the plan means that no index can serve the query at all."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return [str(row[-1]) for row in rows]
        if not seqscan:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [str(row[0]) for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()]


def full_scans(engine: Engine, lines: list[str]) -> list[str]:
    """The plan lines that read a whole study / instance / audit table (SQLite: a SCAN not through an index)."""
    pattern = FULL_SCAN_POSTGRES if engine.dialect.name == "postgresql" else FULL_SCAN_SQLITE
    return [line for line in lines if pattern.search(line.strip())]


PLAN, JOINED = "plan", "joined"
"""A case whose PostgreSQL plan may hash-join a whole study table at 20,000 studies: the exports and the
worklist join each study to its current decision and select on the decision's time or outcome, and for a
few hundred rows out of 20,000 the planner rightly prices one sequential pass (about 600 pages) below
as many index lookups. The choice scales with the rows selected, not with the table; what is checked for
these is that an index path exists (the plan with sequential scans priced out has none left), on SQLite
that the plan itself uses the indexes."""


def _cases(bench: Any) -> dict[str, tuple[Callable[[Engine], Any], str]]:
    """name -> (the store call, ``PLAN``: the plan itself must use indexes, or ``JOINED``: see above)."""
    now = dt.datetime.now(dt.UTC)
    day_ago, week_ago, month_ago = now - dt.timedelta(days=1), now - dt.timedelta(days=7), now - dt.timedelta(days=30)
    uid, acc = bench.study_uid(1234), bench.accession(1234)
    scope = tuple(bench.study_uid(i) for i in range(3))
    after = StudyPosition(now - dt.timedelta(days=45), bench.study_uid(777))

    def find(filters: StudyFilters, after: StudyPosition | None = None) -> Callable[[Engine], Any]:
        return lambda engine: IndexReader(engine).find_studies(filters, after=after, limit=50)

    def queue(filters: QueueFilters) -> Callable[[Engine], Any]:
        return lambda engine: IndexReader(engine).review_queue(filters, limit=200)

    cases: dict[str, tuple[Callable[[Engine], Any], str]] = {
        # GET /studies and POST /studies/search (one store function, every filter and none)
        "studies newest first": (find(StudyFilters()), PLAN),
        "studies next page": (find(StudyFilters(), after), PLAN),
        "studies by accession": (find(StudyFilters(accession=acc)), PLAN),
        "studies by patient": (find(StudyFilters(patient_id="BP001234")), PLAN),
        "studies by modality": (find(StudyFilters(modality="PT")), PLAN),
        "studies received from": (find(StudyFilters(received_from=week_ago)), PLAN),
        "studies received to": (find(StudyFilters(received_to=month_ago)), PLAN),
        "studies in a day": (find(StudyFilters(received_from=day_ago, received_to=now)), PLAN),
        "studies of an auditor": (find(StudyFilters(scope_studies=scope, scope_accessions=(acc,))), PLAN),
        "studies by outcome, all and a week": (
            find(StudyFilters(outcome="needs_review", received_from=week_ago)),
            PLAN,
        ),
        "studies by session verdict": (find(StudyFilters(session_verdict="one_unit")), PLAN),
        # exports by date range
        "export a day": (
            lambda e: IndexReader(e).decisions_for_export(
                decided_from=day_ago, decided_to=now, outcome=None, limit=100_000
            ),
            JOINED,
        ),
        "export a week of one outcome": (
            lambda e: IndexReader(e).decisions_for_export(
                decided_from=week_ago, decided_to=now, outcome="supports_76377", limit=100_000
            ),
            JOINED,
        ),
        # the audit query
        "audit newest": (lambda e: Access(e).audit_events(limit=1000), PLAN),
        "audit since a day": (lambda e: Access(e).audit_events(since=day_ago, limit=1000), PLAN),
        "audit of a week": (lambda e: Access(e).audit_events(since=week_ago, until=day_ago, limit=1000), PLAN),
        "audit by event": (lambda e: Access(e).audit_events(event="Data Export", limit=1000), PLAN),
        "audit of a study": (lambda e: Access(e).audit_events(study_uid=uid, limit=1000), PLAN),
        # the coders' worklist and the other web page reads
        "worklist": (queue(QueueFilters()), JOINED),
        "worklist by station": (queue(QueueFilters(station="ST13")), JOINED),
        "worklist by modality": (queue(QueueFilters(modality="PT")), JOINED),
        "worklist of a week": (queue(QueueFilters(received_from=week_ago, received_before=now)), JOINED),
        "worklist of an auditor": (queue(QueueFilters(scope_studies=scope, scope_accessions=(acc,))), JOINED),
        "pending studies": (lambda e: IndexReader(e).pending_studies(), PLAN),
        "sessions asking the coder to choose": (lambda e: Sessions(e).asking_to_choose(), PLAN),
        # retention (issue 10): the studies whose decision is old enough, oldest first
        "studies due for retention": (
            lambda e: IndexReader(e).studies_due_for_retention(month_ago, limit=500),
            PLAN,
        ),
        "oldest study retention has not gone over": (lambda e: IndexReader(e).oldest_unpruned_decision(), PLAN),
        # /metrics, /healthz: what waits (the review backlog is the worklist's selection, counted)
        "operations signals": (lambda e: operations_signals(e), JOINED),
        "equipment's studies": (lambda e: IndexReader(e).studies_using_equipment(station_name="ST3"), PLAN),
        # one study: the lookup, its history, instances, deliveries, reviews, reads, reports
        "study": (lambda e: IndexReader(e).study(uid), PLAN),
        # GET /studies/{uid}: the study, its decision, latest review and session in one statement
        "study as read": (lambda e: IndexReader(e).study_for_read(uid), PLAN),
        "decision history": (lambda e: IndexReader(e).decision_history(uid), PLAN),
        "instances of a study": (lambda e: IndexReader(e).instances_of_study(uid), PLAN),
        "deliveries of a study": (lambda e: IndexReader(e).study_deliveries(uid), PLAN),
        "reviews": (lambda e: Access(e).reviews(uid), PLAN),
        "reads": (lambda e: Access(e).reads(uid), PLAN),
        "reports of a study": (lambda e: Reports(e).for_study(uid, acc, "BP001234"), PLAN),
    }
    return cases


BENCH = _bench_api()
CASE_NAMES = list(_cases(BENCH))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_no_full_scan(filled: Engine, case: str) -> None:
    call, kind = _cases(BENCH)[case]
    with executed(filled) as statements:
        call(filled)
    assert statements, f"{case}: the store ran no SELECT"
    for statement, parameters in statements:
        lines = plan(filled, statement, parameters, seqscan=kind != JOINED)
        bad = full_scans(filled, lines)
        assert not bad, f"{case} reads a whole table on {filled.dialect.name}:\n{statement}\n" + "\n".join(lines)


def test_the_newest_first_page_reads_no_sort(filled: Engine) -> None:
    """The unfiltered first page (what issue 14 found scanning and sorting every study) walks the
    first-arrival index in order: no sort step at all."""
    with executed(filled) as statements:
        IndexReader(filled).find_studies(StudyFilters(), after=None, limit=50)
    ((statement, parameters),) = statements
    lines = plan(filled, statement, parameters)
    text = "\n".join(lines)
    assert "ix_study_first_arrival_uid" in text, text
    assert "TEMP B-TREE" not in text and "Sort" not in text, text


def test_keyset_pages_stay_stable_under_inserts(tmp_path: Path) -> None:
    """Paging newest first while studies keep arriving (newer ones, and ones at the very time of a page's
    last row): every study there was at the start is listed exactly once, in order."""
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    BENCH.populate(url, 300, _templates(), sqlite_fast=True)
    engine = make_engine(url)
    reader = IndexReader(engine)
    study_t = BENCH._light_tables()[0]
    before = {
        item.study.study_instance_uid for item in reader.find_studies(StudyFilters(), after=None, limit=500).items
    }
    seen: list[tuple[dt.datetime, str]] = []
    after = None
    for page_number in range(100):
        page = reader.find_studies(StudyFilters(), after=after, limit=40)
        seen += [(i.study.first_arrival, i.study.study_instance_uid) for i in page.items]
        if page.next_after is None:
            break
        after = page.next_after
        boundary = page.items[-1].study.first_arrival
        with engine.begin() as connection:  # a newer study, and one tied with the page's last row
            for n, when in enumerate((dt.datetime.now(dt.UTC), boundary)):
                connection.execute(
                    study_t.insert(),
                    {
                        "study_instance_uid": f"2.25.{page_number}.{n}",
                        "first_arrival": when.replace(tzinfo=None),
                        "last_arrival": when.replace(tzinfo=None),
                        "instance_count": 0,
                        "needs_decision": True,
                    },
                )
    engine.dispose()
    listed = [uid for _, uid in seen]
    assert before <= set(listed) and len(listed) == len(set(listed)), "a study was skipped or listed twice"
    assert seen == sorted(seen, reverse=True), "the pages left newest-first order"

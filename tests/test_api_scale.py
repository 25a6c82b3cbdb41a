"""The lookup API under load (issue 14): one COMMIT per answered read, with its audit event in it (on SQLite
shared by the reads that wait for it together: ``GroupCommit``); every answered request audited, also when
the server is killed mid-load."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, event, func, insert, select
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from dicomcheck.api import create_app
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.access import Access, GroupCommit
from dicomcheck.store.engine import make_engine, upgrade
from dicomcheck.store.tables import AuditEvent, utcnow

from .peers import free_port, start_api_only, stop_process, wait_for
from .test_explain import BENCH, _templates

READ_EVENT = "DICOM Instances Accessed"


def _audited(url: str, event_name: str | None = None) -> list[str | None]:
    engine = make_engine(url)
    with Session(engine) as session:
        query = select(AuditEvent.study_instance_uid)
        if event_name:
            query = query.where(AuditEvent.event == event_name)
        rows = list(session.execute(query).scalars())
    engine.dispose()
    return rows


@pytest.fixture()
def app(index_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Receiver, str]]:
    BENCH.populate(index_url, 60, _templates(), sqlite_fast=index_url.startswith("sqlite"))
    receiver = Receiver(Settings(data=tmp_path / "data", database_url=index_url))
    token = Access(receiver.engine).create_token("billing", "reader")
    client = TestClient(create_app(receiver.settings, receiver))
    yield client, receiver, token
    client.close()
    receiver.engine.dispose()


def test_a_lookup_commits_once_with_its_audit_event(app: tuple[TestClient, Receiver, str]) -> None:
    client, receiver, token = app
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/studies/{BENCH.study_uid(0)}", headers=headers).status_code == 200  # token's last use
    commits: list[int] = []
    event.listen(receiver.engine, "commit", lambda _connection: commits.append(1))
    requests = [
        ("GET", f"/studies/{BENCH.study_uid(1)}", None),
        ("GET", f"/studies/{BENCH.study_uid(1)}", None),  # the second read updates the first one's record
        ("GET", f"/studies?accession={BENCH.accession(2)}", None),
        ("GET", "/studies?limit=5", None),
        ("POST", "/studies/search", {"patient_id": "BP000003", "limit": 5}),
    ]
    for method, path, body in requests:
        before_commits = len(commits)
        with Session(receiver.engine) as session:
            before = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code == 200, response.text
        assert len(commits) - before_commits == 1, f"{method} {path}: {len(commits) - before_commits} commits"
        with Session(receiver.engine) as session:
            after = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        assert after == before + 1, f"{method} {path}: {after - before} audit events"


@pytest.fixture()
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _audit_job(n: int) -> Callable[[Connection], int]:
    def write(connection: Connection) -> int:
        connection.execute(
            insert(AuditEvent.__table__),  # type: ignore[arg-type]
            {
                "at": utcnow(),
                "event": READ_EVENT,
                "action": "R",
                "outcome": 0,
                "method": "GET",
                "endpoint": f"/{n}",
                "detail": {},
            },
        )
        return n

    return write


def _held_group(group: GroupCommit) -> tuple[threading.Event, threading.Thread]:
    """The group's writer blocked in a first job until the returned event is set (so jobs queue up behind it)."""
    entered, gate = threading.Event(), threading.Event()

    def blocking(_connection: Connection) -> None:
        entered.set()
        gate.wait(30)

    first = threading.Thread(target=group.run, args=(blocking,))
    first.start()
    assert entered.wait(30)
    return gate, first


def _run_all(group: GroupCommit, jobs: dict[int, Callable[[Connection], int]]) -> tuple[dict, list[threading.Thread]]:
    outcomes: dict[int, object] = {}

    def submit(n: int) -> None:
        try:
            outcomes[n] = group.run(jobs[n])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcomes[n] = exc

    threads = [threading.Thread(target=submit, args=(n,)) for n in jobs]
    for thread in threads:
        thread.start()
    return outcomes, threads


def test_concurrent_sqlite_writes_share_one_durable_commit(sqlite_engine: Engine) -> None:
    group = GroupCommit.of(sqlite_engine)
    commits: list[int] = []
    event.listen(sqlite_engine, "commit", lambda _connection: commits.append(1))
    gate, first = _held_group(group)
    outcomes, threads = _run_all(group, {n: _audit_job(n) for n in range(10)})
    wait_for(lambda: group._jobs.qsize() == 10, timeout=30)  # all ten wait behind the first job
    assert not outcomes, "a write returned before it was committed"
    gate.set()
    for thread in (first, *threads):
        thread.join(30)
    assert outcomes == {n: n for n in range(10)}
    assert len(commits) == 2, "the ten writes waiting together were not committed together"
    assert sorted(e.endpoint for e in Access(sqlite_engine).audit_events()) == sorted(f"/{n}" for n in range(10))


def test_a_failing_write_fails_alone_in_its_group(sqlite_engine: Engine) -> None:
    group = GroupCommit.of(sqlite_engine)

    def failing(_connection: Connection) -> int:
        raise ValueError("refused")

    gate, first = _held_group(group)
    outcomes, threads = _run_all(group, {0: _audit_job(0), 1: failing, 2: _audit_job(2)})
    wait_for(lambda: group._jobs.qsize() == 3, timeout=30)
    gate.set()
    for thread in (first, *threads):
        thread.join(30)
    assert outcomes[0] == 0 and outcomes[2] == 2
    assert isinstance(outcomes[1], ValueError)
    assert sorted(e.endpoint for e in Access(sqlite_engine).audit_events()) == ["/0", "/2"]


def test_the_group_commit_ends_with_its_engine(sqlite_engine: Engine) -> None:
    group = GroupCommit.of(sqlite_engine)
    assert GroupCommit.of(sqlite_engine) is group
    sqlite_engine.dispose()
    group._thread.join(30)
    assert not group._thread.is_alive()
    assert GroupCommit.of(sqlite_engine) is not group  # a later request on the same engine gets a new one
    assert group.run(_audit_job(7)) == 7  # one that still held the stopped one commits on its own connection
    assert [e.endpoint for e in Access(sqlite_engine).audit_events()] == ["/7"]


def test_concurrent_lookups_on_the_loop_await_one_shared_commit(sqlite_engine: Engine) -> None:
    """``GroupCommit.run_async``: coroutines on one event loop hand their writes over and are resumed only once
    those are committed; waiting together, they share one COMMIT, and the loop is free meanwhile."""
    group = GroupCommit.of(sqlite_engine)
    commits: list[int] = []
    event.listen(sqlite_engine, "commit", lambda _connection: commits.append(1))
    gate, first = _held_group(group)

    async def lookups() -> tuple[list[int], int]:
        tasks = [asyncio.create_task(group.run_async(_audit_job(n))) for n in range(8)]
        ticks = 0
        while group._jobs.qsize() < 8:  # the loop keeps running while the writes wait
            await asyncio.sleep(0.01)
            ticks += 1
        assert not any(task.done() for task in tasks), "a write returned before it was committed"
        gate.set()
        return list(await asyncio.gather(*tasks)), ticks

    results, ticks = asyncio.run(lookups())
    first.join(30)
    assert results == list(range(8))
    assert len(commits) == 2, "the eight writes waiting together were not committed together"
    assert sorted(e.endpoint for e in Access(sqlite_engine).audit_events()) == sorted(f"/{n}" for n in range(8))


def test_a_lookup_runs_on_the_loop_on_sqlite_and_in_a_worker_thread_on_postgresql(
    app: tuple[TestClient, Receiver, str],
) -> None:
    """``run_lookup``: SQLite reads in-process on the event loop's thread (no hand-off to a worker thread), the
    writes on the group commit's thread; PostgreSQL's round trips never on the loop."""
    client, receiver, token = app
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/studies/{BENCH.study_uid(0)}", headers=headers).status_code == 200  # token's last use
    threads: list[tuple[str, str]] = []

    def record(_conn, _cursor, statement: str, *_args) -> None:
        threads.append((statement.split()[0], threading.current_thread().name))

    event.listen(receiver.engine, "before_cursor_execute", record)
    try:
        for path in (f"/studies/{BENCH.study_uid(1)}", "/studies?limit=5"):
            assert client.get(path, headers=headers).status_code == 200
    finally:
        event.remove(receiver.engine, "before_cursor_execute", record)
    readers = {name for verb, name in threads if verb == "SELECT"}
    writers = {name for verb, name in threads if verb in ("INSERT", "WITH")}
    assert readers and writers, threads
    on_workers = {name for name in readers if "worker" in name.lower()}
    if receiver.engine.dialect.name == "sqlite":
        assert not on_workers, f"SQLite lookups read on worker threads: {threads}"
        assert writers == {"index-group-commit"}, threads
    else:
        assert on_workers == readers, f"PostgreSQL lookups read on the event loop: {threads}"


def test_a_lookup_whose_audit_cannot_be_written_is_not_answered(app: tuple[TestClient, Receiver, str]) -> None:
    """A read is answered only once its audit event is durable: when the index refuses the write (a real
    SQLite / PostgreSQL error, raised by a trigger), the client gets 500 and no study, never the study without
    its audit event."""
    client, receiver, token = app
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/studies/{BENCH.study_uid(2)}", headers=headers).status_code == 200
    with receiver.engine.begin() as connection:
        if receiver.engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )
    before = len(_audited(str(receiver.engine.url.render_as_string(hide_password=False))))
    with TestClient(create_app(receiver.settings, receiver), raise_server_exceptions=False) as failing:
        for path in (f"/studies/{BENCH.study_uid(3)}", "/studies?limit=5"):
            answer = failing.get(path, headers=headers)
            assert answer.status_code == 500, (path, answer.status_code)
            assert BENCH.study_uid(3) not in answer.text
    assert len(_audited(str(receiver.engine.url.render_as_string(hide_password=False)))) == before
    reads = [r.token_name for r in Access(receiver.engine).reads(BENCH.study_uid(3))]
    assert "billing" not in reads, "the read was recorded without its audit event"


def test_a_sqlite_lookup_on_the_loop_never_waits_for_the_pool(tmp_path: Path) -> None:
    """SQLite lookups run on the event loop, on a connection of the loop's own: with every pooled connection held
    elsewhere (requests on threads that give theirs back only through the loop), a lookup is still answered at
    once, not after the pool's timeout with a 500. (PostgreSQL lookups wait for the pool on a worker thread.)"""
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    BENCH.populate(url, 10, _templates(), sqlite_fast=True)
    receiver = Receiver(Settings(data=tmp_path / "data", database_url=url))
    token = Access(receiver.engine).create_token("billing", "reader")
    client = TestClient(create_app(receiver.settings, receiver))
    engine = receiver.engine
    headers = {"Authorization": f"Bearer {token}"}
    with client:  # start-up takes the loop's connection
        held = []
        try:
            while True:  # every connection the pool will give (then the 30 s pool timeout: a waiting lookup fails)
                try:
                    held.append(engine.connect())
                except PoolTimeout:
                    break
            assert held, "the pool gave no connection"
            for path in (f"/studies/{BENCH.study_uid(4)}", "/studies?limit=5"):
                assert client.get(path, headers=headers).status_code == 200, path
        finally:
            for connection in held:
                connection.close()
    engine.dispose()


def _serve(data: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = (data.parent / f"serve-{port}.log").open("a")
    proc = start_api_only(data, port, *extra, env=env, stdout=log)

    def healthy() -> bool:
        assert proc.poll() is None, (data.parent / f"serve-{port}.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60)
    return proc, port


def _load(port: int, token: str, studies: range, answered: list[str], *, threads: int = 12) -> None:
    """Each thread reads its share of the studies by UID on one keep-alive connection, and notes the UIDs
    answered 200; a refused or dropped connection ends the thread (the server was killed)."""

    def worker(share: list[int]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for i in share:
                uid = BENCH.study_uid(i)
                try:
                    response = http.get(f"/studies/{uid}", headers={"Authorization": f"Bearer {token}"})
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    answered.append(uid)

    pool = [threading.Thread(target=worker, args=(list(studies)[n::threads],)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_answered_read_is_audited_under_load_and_across_a_kill(tmp_path: Path, workers: str) -> None:
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'index.sqlite3'}"
    BENCH.populate(url, 3000, _templates(), sqlite_fast=True)
    token = Access(make_engine(url)).create_token("billing", "reader")

    proc, port = _serve(data, env={"DICOMCHECK_HTTP_WORKERS": workers})
    try:
        answered: list[str] = []
        _load(port, token, range(0, 300), answered)
        assert len(answered) == 300
        audited = _audited(url, READ_EVENT)
        assert sorted(audited) == sorted(answered), "answered reads and audit events differ"

        answered = []  # now kill the server once a few hundred more reads have been answered
        killer = threading.Thread(
            target=lambda: (wait_for(lambda: len(answered) >= 150, timeout=120), proc.kill()), daemon=True
        )
        killer.start()
        _load(port, token, range(300, 3000), answered)
        killer.join()
        assert proc.wait(timeout=30) == -9
        wait_for(lambda: not _listening(port), timeout=30)  # its workers died with it: nothing holds the port
        assert 150 <= len(answered) < 2700, "the kill did not land mid-load"
        audited_now = set(_audited(url, READ_EVENT))
        missing = set(answered) - audited_now
        assert not missing, f"{len(missing)} reads answered 200 have no audit event after the kill"
    finally:
        stop_process(proc, timeout=15)


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _owner(server_port: int, client_port: int, candidates: set[int]) -> int | None:
    """The process holding the server side of the loopback connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{server_port:04X}") and fields[2].endswith(f":{client_port:04X}"):
            inode = fields[9]
    for pid in candidates:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return pid
    return None


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request and read its whole response (head and Content-Length body)."""
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
def test_two_http_workers_answer_each_with_the_limits(tmp_path: Path) -> None:
    """``http_workers`` 2: two processes accept on the one port, each refuses an oversized header block (431),
    the main process keeps none of the connections, and a killed worker is started again."""
    data = tmp_path / "data"
    proc, port = _serve(data, env={"DICOMCHECK_HTTP_WORKERS": "2", "DICOMCHECK_HTTP_MAX_HEADER_SIZE": "2048"})
    log = data.parent / f"serve-{port}.log"
    try:
        wait_for(lambda: log.read_text().count("Application startup complete") >= 2, timeout=60)
        refused_by: dict[int, int] = {}
        children = _children(proc.pid)

        def one_connection() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                ok = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert ok.startswith(b"HTTP/1.1 200"), ok[:100]
                owner = _owner(port, sock.getsockname()[1], children | {proc.pid})
                assert owner is not None and owner != proc.pid, "the main process holds an HTTP connection"
                big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
                refused_by[owner] = int(_exchange(sock, big)[9:12] or 0)
            return len(refused_by) >= 2

        wait_for(one_connection, timeout=60, interval=0.01, describe=lambda: refused_by)
        assert set(refused_by.values()) == {431}, refused_by
        assert len(refused_by) == 2 and set(refused_by) <= children

        killed = next(iter(refused_by))
        os.kill(killed, 9)
        wait_for(lambda: log.read_text().count("Application startup complete") >= 3, timeout=60)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert killed not in _children(proc.pid)
    finally:
        stop_process(proc, timeout=20)
    assert proc.returncode == 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_workers_default_to_the_cores_on_both_databases(tmp_path: Path) -> None:
    from dicomcheck.api.server import worker_count

    pg = "postgresql+psycopg://u@127.0.0.1:5432/db"
    assert worker_count(Settings(data=tmp_path, database_url=pg)) == (os.cpu_count() or 1)
    assert worker_count(Settings(data=tmp_path)) == (os.cpu_count() or 1)
    assert worker_count(Settings(data=tmp_path, http_workers=3)) == 3


def test_the_bench_index_leaves_serve_no_background_work(tmp_path: Path) -> None:
    """bench_api.py populates what a running site has: every decided study's session row (else ``serve``
    backfills them all during the measured steps) and the pixel retention already applied where it would have
    been (else its retention thread prunes most of them a minute after start)."""
    import datetime as dt

    from dicomcheck.session_backfill import backfill
    from dicomcheck.store.reads import IndexReader

    templates = BENCH.templates(tmp_path)  # the fixture studies, decided, as the bench populates them
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    BENCH.populate(url, 200, templates, sqlite_fast=True, sessions=BENCH.session_templates(tmp_path, templates))
    engine = make_engine(url)
    try:
        assert backfill(engine, Settings(data=tmp_path, database_url=url)).written == 0
        due = IndexReader(engine).studies_due_for_retention(dt.datetime.now(dt.UTC) - BENCH.RETENTION_AGE, limit=10)
        assert due == []
        found = IndexReader(engine).study_for_read(BENCH.study_uid(7))
        assert found is not None and found.session is not None
        assert found.session["studies"][0]["study_instance_uid"] == BENCH.study_uid(7)
    finally:
        engine.dispose()


def test_the_bench_retries_a_noisy_step_only_within_its_time_budget() -> None:
    plan = BENCH.RunPlan()
    plan.start(steps=10, databases=1, population_reserve=120.0)
    plan.step_done(13.0, planned=True)
    assert plan.steps_left == 9
    plan.step_done(13.0, planned=False)  # a re-measurement is not one of the planned steps
    assert plan.steps_left == 9
    elapsed = plan.estimated_end() - (9 * 13.0 + 120.0)
    assert plan.room_for_one_more(budget=elapsed + 10 * 13.0 + 120.0 + 1)
    assert not plan.room_for_one_more(budget=elapsed + 9 * 13.0 + 120.0 + 1)


def test_the_http_server_freezes_its_start_up_objects() -> None:
    import gc

    from dicomcheck.api.server import freeze_startup_objects

    gc.unfreeze()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 10_000  # the imported modules, app and models are out of the collector's way
    finally:
        gc.unfreeze()

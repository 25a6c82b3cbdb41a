"""Benchmark: latency of the HTTP lookup API (by Study Instance UID and by accession number) with
100,000 studies indexed, on SQLite and on PostgreSQL, at fixed request rates from 50 concurrent
clients, beside Orthanc's ``POST /tools/find`` on the same studies in the same run.

    python bench/bench_api.py [--studies 100000] [--seconds 10] [--rebuild] [--no-orthanc]

What it does (see ``bench/README.md``, "Lookup API latency"):

1. Populates an index with ``--studies`` studies by bulk inserts (``study``, ``series``,
   ``instance``, ``decision``), the decision documents being real ``decide_study`` outputs of
   the fixture studies (``fixtures/build.py``) with fresh UIDs, accession and patient IDs. The
   populated SQLite file and the PostgreSQL schema ``dc_bench`` are kept in ``bench/out`` /
   the database, so reruns skip this unless ``--rebuild``.
2. Starts ``dicomcheck serve --no-scp`` as a subprocess, as a user would, with a reader token
   made by ``dicomcheck token create``.
3. Drives it with an open-loop load generator: ``--clients`` keep-alive connections; request *i*
   is scheduled at ``t0 + i / rate`` whatever the responses do, and its latency is measured from
   that scheduled time (no coordinated omission: a request that waits for a free connection is
   late by that wait). The rate steps up until p99 >= 20 ms, an error, or the last rate; then
   ``--refine`` geometric bisections between the last passing and the first failing rate.
4. Does the same against Orthanc (own config, loopback only, no plugins) holding
   ``--orthanc-studies`` single-instance studies with the same UIDs and accession numbers.
5. Profiles the API with py-spy at one rate (on-CPU, and wall time of the request threads).

The generator is a small raw HTTP/1.1 client on asyncio (stdlib only), much lighter than httpx,
because it shares the 2 cores with the server; its CPU use is reported for every step.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "out"
PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "dc_bench"
POPULATION_VERSION = 3
"""Bump when the populated rows change, so cached databases are rebuilt (2: with study_session rows; 3: pixel
retention marked as applied where it would have been)."""
RETENTION_AGE = dt.timedelta(days=30)
"""``pixel_retention``'s default: studies decided longer ago than this are populated as already gone over by
retention, as on a site that has been running (else ``serve``'s retention thread would start pruning about
two thirds of the bench's studies a minute after it starts, during the measured steps)."""
UID_ROOT = "1.2.826.0.1.3680043.10.1137.99"
TARGET_P99 = 0.020
TOKEN_NAME = "bench-reader"
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def study_uid(i: int) -> str:
    return f"{UID_ROOT}.{i + 1}"


def accession(i: int) -> str:
    return f"BN{i + 1:08d}"


def patient(i: int) -> str:
    """The patient ID of study i: two studies per patient at 100,000 studies."""
    return f"BP{i % 50_000:06d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_url(base: str) -> str:
    return f"{base}?options=-csearch_path%3D{PG_SCHEMA}"


# ============================================================================================
# 1. population
# ============================================================================================


def templates(out: Path) -> list[dict]:
    """The fixture studies decided as the receiver decides them, as substitution templates."""
    from dicomcheck.analysis import decide_study, group_by_study
    from dicomcheck.knowledge import builtin_knowledge
    from dicomcheck.model import InstanceFacts, facts_to_dict
    from dicomcheck.registry import Registry, load_registry
    from dicomcheck.report import study_dict
    from dicomcheck.sources import discover, read_all

    fixtures = out / "api-fixtures"
    if not (fixtures / ".complete").exists():
        shutil.rmtree(fixtures, ignore_errors=True)
        subprocess.run(
            [sys.executable, str(ROOT / "fixtures" / "build.py"), str(fixtures)], check=True, stdout=subprocess.DEVNULL
        )
        (fixtures / ".complete").write_text("")
    knowledge = builtin_knowledge()
    result = []
    for case in sorted(p for p in fixtures.iterdir() if p.is_dir()):
        sources, _ = discover([case])
        facts = [f for f in read_all(sources, workers=1) if isinstance(f, InstanceFacts)]
        registry = load_registry(case / "devices.toml") if (case / "devices.toml").exists() else Registry()
        ((uid, series_map),) = group_by_study(facts).items()
        decision = decide_study(uid, series_map, registry=registry, knowledge=knowledge)
        document = study_dict(decision)
        document["policy"] = registry.policy.as_dict()
        series_order = [s["series_instance_uid"] for s in document["series"]]
        first = facts[0]
        # UIDs, accession and patient ID of the template, to be replaced per study
        names = {uid: "S", first.accession_number: "A", first.patient_id: "P"}
        for j, series_uid in enumerate(series_order):
            names[series_uid] = f"R{j + 1}"
            for k, f in enumerate(series_map[series_uid]):
                names[f.sop_instance_uid] = f"I{j + 1}.{k + 1}"
        rows = []
        for j, series_uid in enumerate(series_order[:3]):  # 1-3 series and instances per study
            f = series_map[series_uid][0]
            rows.append(
                {
                    "series": j + 1,
                    "modality": f.modality,
                    "series_number": f.series_number,
                    "series_description": f.series_description,
                    "sop_class_uid": f.sop_class_uid,
                    "station_name": f.equipment.station_name,
                    "device_serial_number": f.equipment.device_serial_number,
                    "manufacturer": f.equipment.manufacturer,
                    "model": f.equipment.model,
                    "facts": json.dumps({**facts_to_dict(f), "source": "@@SOURCE@@"}, ensure_ascii=False),
                }
            )
        names["@@SOURCE@@"] = "F"
        pattern = re.compile(
            "|".join(rf"(?<![\w.]){re.escape(k)}(?![\w.])" for k in sorted(names, key=len, reverse=True) if k)
        )
        for row in rows:
            row["facts"] = _compile(row["facts"], pattern, names)
        result.append(
            {
                "case": case.name,
                "document": _compile(json.dumps(document, ensure_ascii=False), pattern, names),
                "outcome": document["outcome"],
                "code": document["code"],
                "instances": document["instances"],
                "study_date": document["study_date"],
                "study_description": document["study_description"],
                "modalities": first.modality,
                "rows": rows,
            }
        )
    return result


def _compile(text: str, pattern: re.Pattern, names: dict) -> list[str]:
    """Split a template at its UIDs / IDs: literal, code, literal, code, ..., literal."""
    parts, position = [], 0
    for match in pattern.finditer(text):
        parts += [text[position : match.start()], names[match.group(0)]]
        position = match.end()
    return parts + [text[position:]]


def session_id(i: int) -> str:
    """Study i's session id: each bench study is its own session (its session row says so)."""
    return "ses-" + hashlib.sha256(f"bench-session-{i}".encode()).hexdigest()[:24]


def _substitute(parts: list[str], i: int, source: str = "") -> str:
    """The template with study i's UIDs, accession, patient ID, session id (and the instance's storage path)."""
    suid = study_uid(i)
    values = {"S": suid, "A": accession(i), "P": patient(i), "F": source, "D": session_id(i)}
    # R<series> -> <study>.<series>; I<series>.<k> -> <study>.<series>.<k> (instances under the study's root)
    return "".join(
        part if n % 2 == 0 else (values[part] if part in values else f"{suid}.{part[1:]}")
        for n, part in enumerate(parts)
    )


def _light_tables():
    """Core tables with the JSON columns untyped, so pre-serialised JSON text goes in as is."""
    import sqlalchemy as sa

    from dicomcheck.store.tables import Decision, Instance, Series, Study, StudySession

    def light(table):
        return sa.table(
            table.name, *(sa.column(c.name, None if isinstance(c.type, sa.JSON) else c.type) for c in table.c)
        )

    return (
        light(Study.__table__),
        light(Series.__table__),
        light(Instance.__table__),
        light(Decision.__table__),
        light(StudySession.__table__),
    )


def session_templates(out: Path, tmpl: list[dict]) -> list[dict | None]:
    """Each template study's ``study_session`` row (issue 13) as the product writes it, as a substitution
    template: the template studies are populated into a scratch index and given their sessions by the real
    backfill (``dicomcheck.session_backfill``), whose rows are then read back. Without these rows ``serve``
    would backfill the sessions of every bench study in the background, during the measured steps (a few
    minutes of CPU at 100,000 studies)."""
    import sqlalchemy as sa

    from dicomcheck.config import Settings
    from dicomcheck.session_backfill import backfill
    from dicomcheck.store.engine import make_engine
    from dicomcheck.store.tables import StudySession

    scratch = out / "api-session-templates"
    shutil.rmtree(scratch, ignore_errors=True)
    url = f"sqlite:///{scratch / 'index.sqlite3'}"
    populate(url, len(tmpl), tmpl, sqlite_fast=True)
    engine = make_engine(url)
    backfill(engine, Settings(data=scratch, database_url=url))
    table = StudySession.__table__
    with engine.connect() as connection:
        rows = {row["study_instance_uid"]: dict(row) for row in connection.execute(sa.select(table)).mappings()}
    engine.dispose()
    shutil.rmtree(scratch, ignore_errors=True)
    result: list[dict | None] = []
    for t in range(len(tmpl)):
        row = rows.get(study_uid(t))
        if row is None:
            result.append(None)
            continue
        names = {study_uid(t): "S", accession(t): "A", patient(t): "P"}
        if row.get("session_id"):
            names[row["session_id"]] = "D"
        pattern = re.compile(
            "|".join(rf"(?<![\w.]){re.escape(k)}(?![\w.])" for k in sorted(names, key=len, reverse=True) if k)
        )
        template = {}
        for column in table.c:
            value = row[column.name]
            if isinstance(column.type, sa.JSON) and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            template[column.name] = _compile(value, pattern, names) if isinstance(value, str) else value
        result.append(template)
    return result


def populate(
    url: str, studies: int, tmpl: list[dict], *, sqlite_fast: bool, sessions: list[dict | None] | None = None
) -> float:
    """Bulk-insert ``studies`` decided studies (with ``sessions``: each with its ``study_session`` row from the
    template of its study, :func:`session_templates`); returns the seconds it took."""
    from dicomcheck import __version__
    from dicomcheck.rules import RULES_VERSION
    from dicomcheck.store.engine import make_engine, upgrade

    started = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    if sqlite_fast:  # the bench's own connections skip fsync; the server runs with the product's pragmas
        import sqlalchemy as sa

        engine.dispose()
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA synchronous=OFF"))
    study_t, series_t, instance_t, decision_t, session_t = _light_tables()
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    batch = 5000
    for start in range(0, studies, batch):
        decisions, study_rows, series_rows, instance_rows, session_rows = [], [], [], [], []
        for i in range(start, min(studies, start + batch)):
            t = tmpl[i % len(tmpl)]
            suid = study_uid(i)
            first = now - dt.timedelta(seconds=rng.randrange(90 * 86400))
            last = first + dt.timedelta(seconds=rng.randrange(600))
            decided = last + dt.timedelta(seconds=60 + rng.randrange(30))
            decisions.append(
                {
                    "id": i + 1,
                    "study_instance_uid": suid,
                    "decided_at": decided,
                    "node": "bench:0",
                    "rules_version": RULES_VERSION,
                    "dicomcheck_version": __version__,
                    "outcome": t["outcome"],
                    "code": t["code"],
                    "instance_count": t["instances"],
                    "registry_path": None,
                    "document": _substitute(t["document"], i),
                }
            )
            study_rows.append(
                {
                    "study_instance_uid": suid,
                    "accession_number": accession(i),
                    "patient_id": patient(i),
                    "study_date": t["study_date"],
                    "study_description": t["study_description"],
                    "modalities": t["modalities"],
                    "instance_count": len(t["rows"]),
                    "first_arrival": first,
                    "last_arrival": last,
                    "needs_decision": False,
                    "claimed_by": None,
                    "claimed_at": None,
                    "current_decision_id": i + 1,
                    "decided_at": decided,
                    "retention_applied_at": decided + RETENTION_AGE if decided + RETENTION_AGE < now else None,
                }
            )
            session = sessions[i % len(sessions)] if sessions else None
            if session is not None:
                values = {k: _substitute(v, i) if isinstance(v, list) else v for k, v in session.items()}
                session_rows.append({**values, "first_decided_at": decided, "updated_at": decided})
            for row in t["rows"]:
                series_uid = f"{suid}.{row['series']}"
                sop_uid = f"{series_uid}.1"
                series_rows.append(
                    {
                        "series_instance_uid": series_uid,
                        "study_instance_uid": suid,
                        "modality": row["modality"],
                        "series_number": row["series_number"],
                        "series_description": row["series_description"],
                        "sop_class_uid": row["sop_class_uid"],
                        "station_name": row["station_name"],
                        "device_serial_number": row["device_serial_number"],
                        "manufacturer": row["manufacturer"],
                        "model": row["model"],
                        "calling_ae": "MODALITY",
                        "instance_count": 1,
                    }
                )
                sha = hashlib.sha256(sop_uid.encode()).hexdigest()
                path = f"{suid}/{series_uid}/{sop_uid}.{sha[:16]}.dcm"
                facts = _substitute(row["facts"], i, json.dumps(path)[1:-1])
                instance_rows.append(
                    {
                        "sop_instance_uid": sop_uid,
                        "version": 1,
                        "study_instance_uid": suid,
                        "series_instance_uid": series_uid,
                        "sop_class_uid": row["sop_class_uid"],
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "sha256": sha,
                        "size": 52_000,
                        "path": path,
                        "received_at": first,
                        "association_id": None,
                        "facts": facts,
                    }
                )
        with engine.begin() as connection:
            connection.execute(decision_t.insert(), decisions)
            connection.execute(study_t.insert(), study_rows)
            connection.execute(series_t.insert(), series_rows)
            connection.execute(instance_t.insert(), instance_rows)
            if session_rows:
                connection.execute(session_t.insert(), session_rows)
        if (start // batch) % 4 == 3:
            log(f"  {min(studies, start + batch):,} studies")
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('decision', 'id'), (SELECT max(id) FROM decision))"
            )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return time.perf_counter() - started


_SESSION_TEMPLATES: dict[int, list[dict | None]] = {}


def _sessions_of(out: Path, tmpl: list[dict]) -> list[dict | None]:
    """:func:`session_templates`, made once per run."""
    if id(tmpl) not in _SESSION_TEMPLATES:
        started = time.perf_counter()
        _SESSION_TEMPLATES[id(tmpl)] = session_templates(out, tmpl)
        log(f"  session rows of the {len(tmpl)} templates in {time.perf_counter() - started:.1f} s")
    return _SESSION_TEMPLATES[id(tmpl)]


def prepare_sqlite(out: Path, studies: int, tmpl_factory, rebuild: bool) -> dict:
    data = out / "api-sqlite"
    meta_path = out / "api-sqlite.json"
    want = {"studies": studies, "population_version": POPULATION_VERSION}
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    db = data / "index.sqlite3"
    if not rebuild and db.exists() and {k: meta.get(k) for k in want} == want:
        log(f"SQLite index cached: {db} ({meta['studies']:,} studies)")
        return meta
    shutil.rmtree(data, ignore_errors=True)
    meta_path.unlink(missing_ok=True)
    log(f"populating SQLite index {db} with {studies:,} studies")
    tmpl = tmpl_factory()
    seconds = populate(f"sqlite:///{db}", studies, tmpl, sqlite_fast=True, sessions=_sessions_of(out, tmpl))
    meta = {
        **want,
        "populate_seconds": round(seconds, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "db_bytes": db.stat().st_size,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"  done in {seconds:.0f} s, {db.stat().st_size / 1e6:.0f} MB")
    return meta


def prepare_postgres(out: Path, base: str, studies: int, tmpl_factory, rebuild: bool) -> dict:
    import sqlalchemy as sa

    meta_path = out / "api-postgresql.json"
    want = {"studies": studies, "population_version": POPULATION_VERSION}
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.exec_driver_sql(f"SELECT to_regclass('{PG_SCHEMA}.study') IS NOT NULL").scalar()
        count = connection.exec_driver_sql(f"SELECT count(*) FROM {PG_SCHEMA}.study").scalar() if exists else 0
        if not rebuild and count == studies and {k: meta.get(k) for k in want} == want:
            admin.dispose()
            log(f"PostgreSQL schema {PG_SCHEMA} cached ({count:,} studies)")
            return meta
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        connection.exec_driver_sql(f"CREATE SCHEMA {PG_SCHEMA}")
    meta_path.unlink(missing_ok=True)
    log(f"populating PostgreSQL schema {PG_SCHEMA} with {studies:,} studies")
    tmpl = tmpl_factory()
    seconds = populate(pg_url(base), studies, tmpl, sqlite_fast=False, sessions=_sessions_of(out, tmpl))
    with admin.connect() as connection:
        size = connection.exec_driver_sql(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = '{PG_SCHEMA}' AND c.relkind = 'r'"
        ).scalar()
    admin.dispose()
    meta = {
        **want,
        "populate_seconds": round(seconds, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "db_bytes": int(size or 0),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"  done in {seconds:.0f} s, {int(size or 0) / 1e6:.0f} MB")
    return meta


def reset_reads(url: str) -> None:
    """Start each run from the same state: no audit events, reads or tokens from earlier runs."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for table in ("audit_event", "study_read", "report_read", "api_token"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE audit_event, study_read, report_read, api_token")
            # A fresh population leaves ~1 GB of WAL behind it: PostgreSQL then runs a checkpoint spread over
            # minutes (checkpoint_completion_target), writing and syncing thousands of files under the measured
            # steps (seen: one UID step's p99 at 89 ms, the others 13 ms). A DBA checkpoints after a bulk load;
            # so does the bench, so that every step measures the lookups, not the load's aftermath.
            connection.exec_driver_sql("CHECKPOINT")
    else:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


# ============================================================================================
# 2. load generator: raw HTTP/1.1 keep-alive connections, open-loop schedule
# ============================================================================================


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None
        if reused and (self.reader.at_eof() or self.writer.is_closing()):  # closed by the server while idle
            self.close()
            reused = False
        if self.writer is None:
            await self.open()
        try:
            return await self._exchange(data)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            # the server closed an idle keep-alive connection as we reused it: retry once on a new
            # connection, as HTTP clients do (the latency still counts from the scheduled time)
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            self.close()
            await self.open()
            return await self._exchange(data)

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        if match:
            body = await self.reader.readexactly(int(match.group(1)))
        elif b"transfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            self.close()
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the HTTP worker processes of ``serve``)."""
    total = _proc_cpu(pid)
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_cpu(int(child))
    except OSError:
        pass
    return total


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total


class CpuMeter:
    """CPU used by this process (the generator), the server, and the database, over a window."""

    def __init__(self, server_pid: int | None, database: bool) -> None:
        self.server_pid, self.database = server_pid, database

    def snapshot(self) -> dict:
        times = os.times()
        snap = {
            "wall": time.monotonic(),
            "generator": times.user + times.system,
            "server": _tree_cpu(self.server_pid) if self.server_pid else 0.0,
            "machine": _machine_busy(),
        }
        if self.database:
            snap["database"] = {pid: _proc_cpu(pid) for pid in _postgres_pids()}
        return snap

    @staticmethod
    def usage(a: dict, b: dict) -> dict:
        wall = b["wall"] - a["wall"]

        def pct(seconds: float) -> float:  # percent of one core
            return round(100 * seconds / wall, 1)

        result = {"generator_pct": pct(b["generator"] - a["generator"]), "server_pct": pct(b["server"] - a["server"])}
        if "database" in b:
            result["database_pct"] = pct(sum(v - a["database"].get(pid, 0.0) for pid, v in b["database"].items()))
        busy = b["machine"][0] - a["machine"][0]
        total = b["machine"][1] - a["machine"][1]
        result["machine_busy_pct"] = round(100 * busy / total, 1) if total else None
        if total:  # CPU used by anything else on the machine, % of one core
            ours = result["generator_pct"] + result["server_pct"] + result.get("database_pct", 0.0)
            result["others_pct"] = round(max(0.0, 100 * busy / total * (os.cpu_count() or 1) - ours), 1)
        return result


async def run_step(
    host: str,
    port: int,
    requests: list[tuple[bytes, bytes]],
    rate: float,
    *,
    warmup: float,
    seconds: float,
    clients: int,
    timeout: float,
    abort_backlog: float,
    meter: CpuMeter,
    arrivals: str = "even",
    seed: int = 0,
) -> dict:
    """One open-loop step: request i scheduled at t0 + i / rate (``arrivals`` even) or at the i-th event
    of a Poisson process of that rate (exponential gaps); latency counts from the scheduled time."""
    loop = asyncio.get_running_loop()
    schedule = arrival_times(rate, warmup + seconds, arrivals, seed)
    total = len(schedule)
    warm_n = sum(1 for t in schedule if t < warmup)
    connections = [Connection(host, port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in connections))
    t0 = loop.time() + 0.05
    state = {"next": 0, "abort_at": None}
    latencies: list[float] = []
    lags: list[float] = []
    errors: collections.Counter = collections.Counter()
    snaps: dict = {}
    loop.call_at(t0 + warmup, lambda: snaps.__setitem__("start", meter.snapshot()))
    loop.call_at(t0 + warmup + seconds, lambda: snaps.__setitem__("end", meter.snapshot()))

    async def worker(connection: Connection) -> None:
        while state["abort_at"] is None:
            i = state["next"]
            if i >= total:
                return
            state["next"] = i + 1
            scheduled = t0 + schedule[i]
            now = loop.time()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            elif now - scheduled > abort_backlog:  # hopelessly behind: stop the step, count the rest
                state["abort_at"] = now
                state["next"] = i
                return
            data, expect = requests[i % len(requests)]
            sent = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    status, body = await connection.request(data)
                ok = status == 200 and expect in body
                if not ok:
                    kind = f"HTTP {status}" if status != 200 else "unexpected body"
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                ok, kind = False, type(exc).__name__
                connection.close()
            done = loop.time()
            if i >= warm_n:
                latencies.append(done - scheduled)
                lags.append(sent - scheduled)
                if not ok:
                    errors[kind] += 1

    await asyncio.gather(*(worker(c) for c in connections))
    for c in connections:
        c.close()
    aborted_at = state["abort_at"]
    unsent = 0
    if aborted_at is not None:  # requests due but never sent: their latency is at least their age
        for i in range(max(state["next"], warm_n), total):
            scheduled = t0 + schedule[i]
            if scheduled >= aborted_at:
                break
            latencies.append(aborted_at - scheduled)
            unsent += 1
    end = snaps.get("end") or meter.snapshot()
    start = snaps.get("start") or end
    cpu = CpuMeter.usage(start, end) if end is not start else {}
    latencies.sort()
    lags.sort()
    measured = len(latencies) - unsent
    p99 = _percentile(latencies, 0.99)
    error_count = sum(errors.values())
    result = {
        "rate": rate,
        "scheduled": total - warm_n,
        "completed": measured,
        "unsent": unsent,
        "errors": error_count,
        "error_kinds": dict(errors),
        "p50_ms": _ms(_percentile(latencies, 0.50)),
        "p90_ms": _ms(_percentile(latencies, 0.90)),
        "p95_ms": _ms(_percentile(latencies, 0.95)),
        "p99_ms": _ms(p99),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "send_lag_p99_ms": _ms(_percentile(lags, 0.99)),
        "achieved_rps": round(measured / seconds, 1),
        "aborted_after_s": round(aborted_at - t0 - warmup, 1) if aborted_at is not None else None,
        "cpu": cpu,
    }
    result["pass"] = bool(
        p99 is not None and p99 < TARGET_P99 and error_count == 0 and aborted_at is None and measured > 0
    )
    return result


def arrival_times(rate: float, duration: float, arrivals: str, seed: int) -> list[float]:
    """Due times (s from the step's start) of the requests of one step."""
    if arrivals == "even":
        return [i / rate for i in range(int(duration * rate))]
    rng, times, t = random.Random(seed), [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return times
        times.append(t)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def measure_step(
    host: str, port: int, requests: list[tuple[bytes, bytes]], rate: float, args, meter: CpuMeter, *, seed: int
) -> dict:
    """One measured step at ``rate``, after waiting (up to ``--quiet-wait``) for a quieter machine; the
    background load seen while the server idled is recorded with the step's CPU figures."""
    background = background_busy(1.0)  # the machine while the server idles: other work competing for the cores
    deadline = time.monotonic() + args.quiet_wait
    while background > args.quiet_threshold and time.monotonic() < deadline:
        background = background_busy(1.0)  # wait (a while) for a quieter machine
    result = asyncio.run(
        run_step(
            host,
            port,
            requests,
            rate,
            warmup=args.warmup,
            seconds=args.seconds,
            clients=args.clients,
            timeout=args.timeout,
            abort_backlog=args.abort_backlog,
            meter=meter,
            arrivals=args.arrivals,
            seed=seed,
        )
    )
    result["cpu"]["background_busy_pct"] = background
    return result


def ladder(label: str, host: str, port: int, requests: list[tuple[bytes, bytes]], args, meter: CpuMeter) -> dict:
    """Step the rate up until the target fails, then bisect (geometrically) ``--refine`` times."""
    steps: list[dict] = []
    noisy: list[dict] = []

    def step(rate: float, retry: bool = True) -> dict:
        result = measure_step(
            host, port, requests, rate, args, meter, seed=args.seed + len(steps) + len(noisy) + int(rate)
        )
        others = result["cpu"].get("others_pct", 0.0)
        if not result["pass"] and retry and others > args.noisy:
            log(f"  {label} {rate:>6.0f}/s failed while other processes used {others}% of a core: measured again")
            noisy.append(result)
            return step(rate, retry=False)
        steps.append(result)
        cpu = result["cpu"]
        log(
            f"  {label} {rate:>6.0f}/s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}"
            f"{' (aborted: overloaded)' if result['aborted_after_s'] is not None else ''}, achieved "
            f"{result['achieved_rps']}/s, "
            f"cpu gen {cpu.get('generator_pct')}% server {cpu.get('server_pct')}%"
            + (f" db {cpu['database_pct']}%" if "database_pct" in cpu else "")
            + f", others {cpu.get('others_pct')}% -> {'PASS' if result['pass'] else 'fail'}"
        )
        return result

    best, first_fail = None, None
    for rate in args.rates:
        if step(rate)["pass"]:
            best = rate
        else:
            first_fail = rate
            break
    if best is None and first_fail is not None:  # even the lowest rate failed: look below it
        rate = first_fail
        for _ in range(3):
            rate = max(1, rate // 2)
            if step(rate)["pass"]:
                best = rate
                break
            first_fail = rate
    for _ in range(args.refine):
        if best is None or first_fail is None:
            break
        mid = _nice(math.sqrt(best * first_fail))
        if mid <= best or mid >= first_fail:
            break
        if step(mid)["pass"]:
            best = mid
        else:
            first_fail = mid
    steps.sort(key=lambda s: s["rate"])
    return {"steps": steps, "best_rate": best, "first_failing_rate": first_fail, "discarded_noisy_steps": noisy}


class RunPlan:
    """The run's steps against its time budget: a noisy step is measured again only while the run, by the mean
    time of its steps so far and a reserve for each database still to populate, still ends within ``--budget``."""

    def __init__(self) -> None:
        self.steps_left = 0
        self.step_seconds: list[float] = []
        self.databases_left = 0
        self.population_reserve = 0.0

    def start(self, steps: int, databases: int, population_reserve: float) -> None:
        """The run's planned steps and databases to populate, and the seconds kept for each population."""
        self.steps_left, self.databases_left, self.population_reserve = steps, databases, population_reserve

    def step_done(self, seconds: float, *, planned: bool) -> None:
        if planned:
            self.steps_left = max(0, self.steps_left - 1)
        self.step_seconds.append(seconds)

    def estimated_end(self, extra_steps: int = 0) -> float:
        """Seconds from the start at which the run is expected to end, with ``extra_steps`` more steps."""
        mean = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 15.0
        left = (self.steps_left + extra_steps) * mean + self.databases_left * self.population_reserve
        return time.monotonic() - STARTED + left

    def room_for_one_more(self, budget: float) -> bool:
        return self.estimated_end(extra_steps=1) <= budget


PLAN = RunPlan()


def fixed_rates(label: str, host: str, port: int, requests: list[tuple[bytes, bytes]], args, meter: CpuMeter) -> dict:
    """Every rate of ``--fixed-rates`` in every one of ``--repeats`` repeats, no bisection. A step that fails
    while other processes use more than ``--noisy`` % of a core is measured once more (while the run still
    ends within ``--budget``: :class:`RunPlan`); the first
    measurement is kept under ``discarded_noisy_steps`` with its p99 as ``p99_ms_discarded`` (so a reader of
    the ``steps`` finds only the measurements that count)."""
    steps: list[dict] = []
    noisy: list[dict] = []
    for repeat in range(1, args.repeats + 1):
        for rate in args.fixed_rates:
            for attempt in (1, 2):
                step_started = time.monotonic()
                result = measure_step(
                    host, port, requests, rate, args, meter, seed=args.seed + 1000 * repeat + attempt + int(rate)
                )
                PLAN.step_done(time.monotonic() - step_started, planned=attempt == 1)  # a retry was not planned
                result.update(repeat=repeat, arrivals=args.arrivals)
                others = result["cpu"].get("others_pct", 0.0)
                if not result["pass"] and attempt == 1 and others > args.noisy and PLAN.room_for_one_more(args.budget):
                    result["p99_ms_discarded"] = result.pop("p99_ms")
                    noisy.append(result)
                    log(f"  {label} {rate:>6.0f}/s repeat {repeat}: failed with others at {others}%: measured again")
                    continue
                steps.append(result)
                cpu = result["cpu"]
                log(
                    f"  {label} {rate:>6.0f}/s repeat {repeat}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, errors {result['errors']}, achieved {result['achieved_rps']}/s, "
                    f"cpu server {cpu.get('server_pct')}%"
                    + (f" db {cpu['database_pct']}%" if "database_pct" in cpu else "")
                    + f", others {cpu.get('others_pct')}% -> {'PASS' if result['pass'] else 'fail'}"
                )
                break
    passes = {f"{rate:g}": sum(1 for s in steps if s["rate"] == rate and s["pass"]) for rate in args.fixed_rates}
    return {"mode": "fixed", "steps": steps, "passes_by_rate": passes, "discarded_noisy_steps": noisy}


def background_busy(seconds: float) -> float:
    """Percent of the machine's CPUs busy over ``seconds`` (run while no load is sent)."""
    a = _machine_busy()
    time.sleep(seconds)
    b = _machine_busy()
    return round(100 * (b[0] - a[0]) / max(1, b[1] - a[1]), 1)


def _nice(value: float) -> int:
    """Round to two significant digits (a readable rate)."""
    digits = max(0, int(math.log10(value)) - 1)
    return int(round(value / 10**digits) * 10**digits)


# ============================================================================================
# 3. dicomcheck serve
# ============================================================================================


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMCHECK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_token(data: Path, url: str | None) -> str:
    args = [
        sys.executable,
        "-m",
        "dicomcheck.cli",
        "token",
        "create",
        TOKEN_NAME,
        "--role",
        "reader",
        "--data",
        str(data),
    ]
    if url:
        args += ["--database-url", url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"token create failed: {proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def wait_http(port: int, path: str, proc: subprocess.Popen, deadline: float = 120.0) -> None:
    import httpx

    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before answering {path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer on {path} after {deadline} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_serve(
    out: Path, name: str, data: Path, url: str | None, wrapper: Path | None = None
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    entry = [str(wrapper)] if wrapper else ["-m", "dicomcheck.cli"]
    args = [
        sys.executable,
        *entry,
        "serve",
        "--no-scp",
        "--http-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--data",
        str(data),
    ]
    if url:
        args += ["--database-url", url]
    logfile = open(out / f"api-serve-{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    wait_http(port, "/healthz", proc)
    return proc, port


KINDS = ("uid", "accession", "patient", "list", "search")


def api_requests(kind: str, n: int, port: int, token: str, count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``count`` requests of one kind for random studies, each with what its answer must contain:
    ``uid`` GET /studies/{uid}; ``accession`` / ``patient`` GET /studies?accession= / ?patient_id=;
    ``list`` GET /studies?limit=50 (the first page, newest first); ``search`` POST /studies/search with a
    patient ID and a received-from date in the JSON body."""
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    rng = random.Random(seed)
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=120)).isoformat(timespec="seconds")
    requests = []
    for _ in range(count):
        i = rng.randrange(n)
        method, body = "GET", b""
        if kind == "uid":
            target, expect = f"/studies/{study_uid(i)}", f'"study_instance_uid":"{study_uid(i)}"'
        elif kind == "accession":
            target, expect = f"/studies?accession={accession(i)}", f'"accession_number":"{accession(i)}"'
        elif kind == "patient":
            target, expect = f"/studies?patient_id={patient(i)}", f'"accession_number":"{accession(i)}"'
        elif kind == "list":
            target, expect = "/studies?limit=50", '"next_cursor":"'
        else:
            method, target, expect = "POST", "/studies/search", f'"accession_number":"{accession(i)}"'
            body = json.dumps({"patient_id": patient(i), "received_from": since, "limit": 50}).encode()
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\n"
        )
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        requests.append(((head + "\r\n").encode() + body, expect.encode()))
    return requests


# ============================================================================================
# 4. Orthanc
# ============================================================================================


def tiny_dicom(i: int) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop = f"{study_uid(i)}.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid(i)
    ds.SeriesInstanceUID = f"{study_uid(i)}.1"
    ds.AccessionNumber = accession(i)
    ds.PatientID = f"BP{i % 50_000:06d}"
    ds.PatientName = "BENCH^STUDY"
    ds.StudyDate = "20260105"
    ds.StudyTime = "083000"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def start_orthanc(out: Path) -> tuple[subprocess.Popen, int, dict]:
    folder = out / "api-orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "dicomcheck-bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 50,
        "SaveJobs": False,
        "SyncStorageArea": False,
        "LimitFindResults": 0,
        "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    logfile = open(out / "api-orthanc.log", "w")  # noqa: SIM115
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=logfile, stderr=subprocess.STDOUT)
    wait_http(port, "/system", proc)
    return proc, port, config


async def upload_orthanc(port: int, count: int, first: int, parallel: int = 8) -> None:
    state = {"next": first}

    async def worker() -> None:
        connection = Connection("127.0.0.1", port)
        while state["next"] < count:
            i = state["next"]
            state["next"] = i + 1
            body = tiny_dicom(i)
            head = (
                f"POST /instances HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            status, answer = await connection.request(head + body)
            if status != 200:
                raise SystemExit(f"Orthanc refused instance {i}: {status} {answer[:200]!r}")
            if i and i % 2500 == 0:
                log(f"  {i:,} instances uploaded")
        connection.close()

    await asyncio.gather(*(worker() for _ in range(parallel)))


def prepare_orthanc(out: Path, count: int, rebuild: bool) -> tuple[subprocess.Popen, int, dict]:
    import httpx

    folder = out / "api-orthanc"
    meta_path = out / "api-orthanc.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if rebuild or meta.get("population_version") != POPULATION_VERSION:
        shutil.rmtree(folder, ignore_errors=True)
        meta = {}
    proc, port, config = start_orthanc(out)
    have = httpx.get(f"http://127.0.0.1:{port}/statistics", timeout=10).json()["CountStudies"]
    if have > count:  # an earlier run loaded more: start again with exactly ``count``
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
        proc, port, config = start_orthanc(out)
        have = 0
    if have < count:
        log(f"loading {count - have:,} single-instance studies into Orthanc (POST /instances, 8 in parallel)")
        started = time.perf_counter()
        asyncio.run(upload_orthanc(port, count, have))
        seconds = time.perf_counter() - started
        meta = {
            "studies": count,
            "population_version": POPULATION_VERSION,
            "upload_seconds": round(seconds, 1),
            "upload_rate": round((count - have) / seconds, 1),
        }
        meta_path.write_text(json.dumps(meta, indent=2))
        log(f"  done in {seconds:.0f} s ({(count - have) / seconds:.0f} instances/s)")
    else:
        log(f"Orthanc storage cached ({have:,} studies)")
    have = httpx.get(f"http://127.0.0.1:{port}/statistics", timeout=10).json()["CountStudies"]
    if have != count:
        raise SystemExit(f"Orthanc holds {have} studies, expected {count}")
    return proc, port, {**meta, "config": config}


def orthanc_requests(kind: str, n: int, port: int, count: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        i = rng.randrange(n)
        query = {"StudyInstanceUID": study_uid(i)} if kind == "uid" else {"AccessionNumber": accession(i)}
        body = json.dumps({"Level": "Study", "Query": query}).encode()
        head = (
            f"POST /tools/find HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append((head + body, b'"'))  # one Orthanc ID in the answer: ["..."]; [] has no quote
    return requests


# ============================================================================================
# 5. profile (py-spy)
# ============================================================================================

PHASES = [  # (label, frame substring); the deepest matching frame of a sample names its phase
    ("uvicorn access log (logging)", "(logging/"),
    ("token check: SELECT + UPDATE last_used_at + COMMIT (Access.verify)", "verify (dicomcheck/store/access.py)"),
    ("study row (IndexReader.study)", "study (dicomcheck/store/reads.py)"),
    ("reviews query (Access.reviews)", "reviews (dicomcheck/store/access.py)"),
    ("study_read upsert + COMMIT (Access.record_read)", "record_read (dicomcheck/store/access.py)"),
    ("audit INSERT + COMMIT (Access.audit)", "audit (dicomcheck/store/access.py)"),
    ("decision row + document JSON (study_view)", "study_view (dicomcheck/api/routes/studies.py)"),
    ("accession query + summaries (list_studies)", "list_studies (dicomcheck/api/routes/studies.py)"),
    ("response validation + JSON encoding (FastAPI/pydantic)", "serialize_response (fastapi/"),
    ("response validation + JSON encoding (FastAPI/pydantic)", "jsonable_encoder (fastapi/"),
    ("response validation + JSON encoding (FastAPI/pydantic)", "render (starlette/"),
    ("request validation + dependency plumbing (FastAPI)", "solve_dependencies (fastapi/"),
    ("Prometheus latency metric", "(prometheus_client/"),
    ("HTTP protocol (uvicorn + h11)", "(h11/"),
    ("HTTP protocol (uvicorn + h11)", "(uvicorn/"),
    ("ASGI/Starlette routing + middleware", "(starlette/"),
    ("ASGI/Starlette routing + middleware", "(fastapi/"),
    ("threadpool hand-off (anyio)", "(anyio/"),
    ("event loop (asyncio)", "(asyncio/"),
]
FAMILIES = [  # inclusive share of samples with any frame of ...
    ("SQLAlchemy (ORM + Core)", "(sqlalchemy/"),
    ("  of which Session.commit", "commit (sqlalchemy/orm/session.py)"),
    ("  of which pool checkout/checkin (+ pre-ping)", "(sqlalchemy/pool/"),
    ("  of which JSON decode of the document", "process (sqlalchemy/sql/sqltypes.py)"),
    ("psycopg driver", "(psycopg/"),
    ("pydantic", "(pydantic/"),
    ("json module", "(json/"),
    ("logging", "(logging/"),
    ("h11", "(h11/"),
]


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    return stack.split(";"), int(count)


def _short(frame: str) -> str:
    return re.sub(r"\(/[^)]*?/(site-packages|lib/python3\.\d+)/", "(", frame)


def summarise_profile(path: Path, *, request_threads_only: bool) -> dict:
    phases: collections.Counter = collections.Counter()
    families: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        frames = [_short(f) for f in frames]
        joined = ";".join(frames)
        if request_threads_only and "(dicomcheck/api/app.py)" not in joined:
            continue  # idle workers, the event loop waiting in select(), the settler, ...
        total += count
        leaves[frames[-1]] += count
        label = "other"
        for frame in reversed(frames):
            hit = next((name for name, needle in PHASES if needle in frame), None)
            if hit:
                label = hit
                break
        phases[label] += count
        for name, needle in FAMILIES:
            if needle in joined:
                families[name] += count

    def pct(c: float) -> float:
        return round(100 * c / total, 1) if total else 0.0

    return {
        "samples": total,
        "phases_pct": {k: pct(v) for k, v in phases.most_common()},
        "families_pct": {name: pct(families[name]) for name, _ in FAMILIES},
        "top_self_pct": {k: pct(v) for k, v in leaves.most_common(15)},
    }


def profile(
    out: Path, name: str, server: subprocess.Popen, host: str, port: int, requests, rate: float, args, meter: CpuMeter
) -> dict:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        log("  py-spy not installed (pip install py-spy): no profile")
        return {}
    result = {"rate": rate, "seconds": args.profile_seconds}
    for mode in ("cpu", "wall"):
        raw = out / f"api-profile-{name}-{mode}.txt"
        cmd = [
            pyspy,
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(args.profile_seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nolineno",
            "--nonblocking",
            "--output",
            str(raw),
        ]
        if mode == "wall":
            cmd.append("--idle")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        step = asyncio.run(
            run_step(
                host,
                port,
                requests,
                rate,
                warmup=0.5,
                seconds=args.profile_seconds + 1.5,
                clients=args.clients,
                timeout=args.timeout,
                abort_backlog=args.abort_backlog,
                meter=meter,
            )
        )
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            log(f"  py-spy failed: {err.decode(errors='replace')[-300:]}")
            return result
        result[mode] = summarise_profile(raw, request_threads_only=mode == "wall")
        result[mode]["latency_while_profiling"] = {k: step[k] for k in ("p50_ms", "p99_ms", "errors", "achieved_rps")}
        result[mode]["raw"] = str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw)
        top = list(result[mode]["phases_pct"].items())[:6]
        log(f"  profile {name} {mode} at {rate}/s: " + ", ".join(f"{k.split(' (')[0]} {v}%" for k, v in top))
        time.sleep(1.0)
    return result


# ============================================================================================
# report
# ============================================================================================


def environment() -> dict:
    import sqlalchemy
    import uvicorn

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        ),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "uvicorn": uvicorn.__version__,
    }
    for module in ("fastapi", "pydantic", "psycopg", "httptools", "uvloop"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
        except AttributeError:
            info[module] = "installed"
    try:
        info["orthanc"] = (
            subprocess.run(
                [shutil.which("Orthanc") or "/usr/sbin/Orthanc", "--version"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            .stdout.split("\n")[0]
            .split()[-1]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        info["orthanc"] = None
    return info


def _best(run: dict, kind: str) -> str:
    if kind not in run:
        return "–"
    best, fail = run[kind]["best_rate"], run[kind]["first_failing_rate"]
    if best is None:
        return f"none (fails even at {fail:g}/s)"
    return f"{best:g}/s (fails at {fail:g}/s)" if fail else f"≥ {best:g}/s (highest tried)"


def markdown(results: dict) -> str:
    lines = [
        (
            "| Target | Lookup | Studies | Rate (req/s) | p50 (ms) | p99 (ms) | Errors | Achieved (req/s) | Gen. lag "
            "p99 (ms) "
            "| CPU gen / server / db / others (% of a core) | p99 < 20 ms |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|:-:|",
    ]
    summary = ["| Target | Studies | Highest rate with p99 < 20 ms, by UID | by accession |", "|---|---:|---:|---:|"]
    for target, run in results["runs"].items():
        best = {}
        for kind in ("uid", "accession"):
            if kind not in run:
                continue
            best[kind] = run[kind]["best_rate"]
            for s in run[kind]["steps"]:
                cpu = s["cpu"]
                cpus = " / ".join(
                    str(cpu.get(part, "–")) for part in ("generator_pct", "server_pct", "database_pct", "others_pct")
                )
                p99 = f"≥ {s['p99_ms']}" if s["aborted_after_s"] is not None else f"{s['p99_ms']}"
                lines.append(
                    f"| {target} | {kind} | {run['studies']:,} | {s['rate']:.0f} | {s['p50_ms']} | {p99} | "
                    f"{s['errors']} "
                    f"| {s['achieved_rps']} | {s['send_lag_p99_ms']} | {cpus} | {'yes' if s['pass'] else 'no'} |"
                )
        summary.append(f"| {target} | {run['studies']:,} | {_best(run, 'uid')} | {_best(run, 'accession')} |")
    return "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n"


def markdown_fixed(results: dict) -> str:
    """The fixed-rate tables: per target and kind, how many repeats passed at each rate, then every step."""
    summary = ["| Target | Lookup | Rate (req/s) | Repeats with p99 < 20 ms and no error | p99 of each repeat (ms) |"]
    summary.append("|---|---|---:|---:|---|")
    lines = [
        "| Target | Lookup | Rate | Repeat | p50 (ms) | p95 (ms) | p99 (ms) | Errors | Achieved (req/s) "
        "| CPU server / db / others (% of a core) | Pass |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|:-:|",
    ]
    for target, run in results["runs"].items():
        for kind in KINDS:
            if kind not in run:
                continue
            steps = run[kind]["steps"]
            for rate in sorted({s["rate"] for s in steps}):
                at = [s for s in steps if s["rate"] == rate]
                passed = sum(1 for s in at if s["pass"])
                p99s = ", ".join(str(s["p99_ms"]) for s in at)
                summary.append(f"| {target} | {kind} | {rate:g} | {passed} of {len(at)} | {p99s} |")
            for s in steps:
                cpu = s["cpu"]
                cpus = " / ".join(str(cpu.get(part, "–")) for part in ("server_pct", "database_pct", "others_pct"))
                lines.append(
                    f"| {target} | {kind} | {s['rate']:g} | {s['repeat']} | {s['p50_ms']} | {s['p95_ms']} | "
                    f"{s['p99_ms']} | {s['errors']} | {s['achieved_rps']} | {cpus} | {'yes' if s['pass'] else 'no'} |"
                )
    return "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n"


# ============================================================================================
# main
# ============================================================================================


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=100_000, help="studies in the index (default 100000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate step (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds before each step, discarded (default 2)"
    )
    parser.add_argument("--rates", default="50,100,200,400,800,1600,3200", help="rate ladder, req/s")
    parser.add_argument(
        "--refine", type=int, default=2, help="bisections between the last passing and first failing rate"
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent keep-alive connections (default 50)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s (counts as an error)")
    parser.add_argument(
        "--abort-backlog",
        type=float,
        default=3.0,
        help="end a step early once the schedule is this many seconds behind (overload)",
    )
    parser.add_argument(
        "--noisy",
        type=float,
        default=30.0,
        help="re-measure a failing step once if other processes used more than this %% of a core during it",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before a step, wait up to this many seconds for the machine to be quiet (default 20; 3 with "
        "--fixed-rates)",
    )
    parser.add_argument(
        "--fixed-rates",
        default=None,
        help="measure these rates (req/s, comma-separated) in every repeat, instead of the ladder and bisection",
    )
    parser.add_argument("--repeats", type=int, default=1, help="with --fixed-rates: how many times (default 1)")
    parser.add_argument(
        "--arrivals",
        choices=("even", "poisson"),
        default="even",
        help="request due times: evenly spaced (default) or a Poisson process of the rate",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=840.0,
        help="with --fixed-rates: re-measure a noisy failing step only while the run, by the mean time of its steps "
        "so far, still ends within this many seconds (default 840: 14 minutes)",
    )
    parser.add_argument(
        "--population-reserve",
        type=float,
        default=120.0,
        help="seconds the budget keeps for populating each database not populated yet (default 120)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=15.0,
        help="quiet = under this %% of all CPUs busy while the server idles (default 15)",
    )
    parser.add_argument("--databases", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument(
        "--kinds", default="uid,accession", help=f"comma-separated, of {', '.join(KINDS)} (default uid,accession)"
    )
    parser.add_argument(
        "--pg-base",
        default=os.environ.get("BENCH_PG_URL", PG_BASE),
        help="PostgreSQL URL (schema dc_bench is made in it)",
    )
    parser.add_argument(
        "--pg-schema",
        default="dc_bench",
        help="schema the populated index lives in (default dc_bench; dropped and made again on --rebuild)",
    )
    parser.add_argument(
        "--orthanc-studies", type=int, default=10_000, help="studies loaded into Orthanc (default 10000)"
    )
    parser.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument(
        "--serve-wrapper",
        type=Path,
        default=None,
        help="a script run instead of `-m dicomcheck.cli` (same arguments), to try a change without editing the tree",
    )
    parser.add_argument("--label", default="", help="suffix of the result file names (api-results<label>.json)")
    parser.add_argument("--rebuild", action="store_true", help="populate the databases (and Orthanc) again")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=20260105)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", args.pg_schema):
        parser.error("--pg-schema: lower-case letters, digits and _ only")
    args.rates = [float(r) for r in args.rates.split(",")]
    args.fixed_rates = [float(r) for r in args.fixed_rates.split(",")] if args.fixed_rates else None
    if args.quiet_wait is None:
        args.quiet_wait = 3.0 if args.fixed_rates else 20.0
    for kind in args.kinds.split(","):
        if kind.strip() and kind.strip() not in KINDS:
            parser.error(f"--kinds: {kind!r} is not one of {', '.join(KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    global PG_SCHEMA  # one schema per run, read by pg_url() and prepare_postgres()
    PG_SCHEMA = args.pg_schema
    measure = fixed_rates if args.fixed_rates else ladder
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    started = time.perf_counter()

    cache: dict = {}

    def tmpl() -> list[dict]:
        if "t" not in cache:
            cache["t"] = templates(out)
            log(f"  {len(cache['t'])} fixture studies as templates")
        return cache["t"]

    results: dict = {
        "benchmark": "lookup API latency",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        "parameters": {
            "serve_wrapper": str(args.serve_wrapper) if args.serve_wrapper else None,
            "studies": args.studies,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rates": args.rates,
            "refine": args.refine,
            "fixed_rates": args.fixed_rates,
            "repeats": args.repeats if args.fixed_rates else None,
            "arrivals": args.arrivals,
            "clients": args.clients,
            "timeout": args.timeout,
            "target_p99_ms": TARGET_P99 * 1000,
            "orthanc_studies": 0 if args.no_orthanc else min(args.orthanc_studies, args.studies),
        },
        "population": {},
        "runs": {},
        "profiles": {},
    }
    results_path = out / f"api-results{args.label}.json"

    def save() -> None:
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    if args.fixed_rates:
        targets = len(databases) * len(kinds)
        if not args.no_orthanc and args.orthanc_studies > 0:  # Orthanc answers uid and accession lookups
            targets += sum(1 for kind in kinds if kind in ("uid", "accession"))
        PLAN.start(targets * args.repeats * len(args.fixed_rates), len(databases), args.population_reserve)
    processes: list[subprocess.Popen] = []
    try:
        for database in databases:
            if database == "sqlite":
                data = out / "api-sqlite"
                results["population"]["sqlite"] = prepare_sqlite(out, args.studies, tmpl, args.rebuild)
                url = None
                engine_url = f"sqlite:///{data / 'index.sqlite3'}"
            elif database == "postgresql":
                data = out / "api-pg-data"  # storage/ and quarantine/ only; the index is in PostgreSQL
                results["population"]["postgresql"] = prepare_postgres(
                    out, args.pg_base, args.studies, tmpl, args.rebuild
                )
                url = engine_url = pg_url(args.pg_base)
            else:
                raise SystemExit(f"unknown database {database!r}")
            PLAN.databases_left -= 1
            reset_reads(engine_url)
            token = make_token(data, url)
            server, port = start_serve(out, database, data, url, args.serve_wrapper)
            processes.append(server)
            log(f"dicomcheck serve on {database}: pid {server.pid}, port {port}")
            meter = CpuMeter(server.pid, database == "postgresql")
            wrapper = f" + {args.serve_wrapper.stem}" if args.serve_wrapper else ""
            target = f"dicomcheck ({'SQLite' if database == 'sqlite' else 'PostgreSQL'}){wrapper}"
            run = results["runs"].setdefault(target, {"studies": args.studies})
            for n, kind in enumerate(kinds):
                requests = api_requests(kind, args.studies, port, token, 50_000, args.seed + n)
                run[kind] = measure(f"{database}/{kind}", "127.0.0.1", port, requests, args, meter)
                save()
            if not args.no_profile and "uid" in run:
                best = run["uid"].get("best_rate") or min(args.fixed_rates or args.rates)
                requests = api_requests("uid", args.studies, port, token, 50_000, args.seed + 99)
                results["profiles"][f"{database}/uid"] = profile(
                    out, f"{database}-uid{args.label}", server, "127.0.0.1", port, requests, best, args, meter
                )
                save()
            stop(server)
        if not args.no_orthanc and args.orthanc_studies > 0:
            count = min(args.orthanc_studies, args.studies)
            orthanc, port, meta = prepare_orthanc(out, count, args.rebuild)
            processes.append(orthanc)
            results["population"]["orthanc"] = meta
            meter = CpuMeter(orthanc.pid, False)
            run = results["runs"].setdefault(
                f"Orthanc {results['environment']['orthanc']} /tools/find", {"studies": count}
            )
            for n, kind in enumerate(kinds):
                if kind not in ("uid", "accession"):  # Orthanc is queried by UID and by accession only
                    continue
                requests = orthanc_requests(kind, count, port, 50_000, args.seed + n)
                run[kind] = measure(f"orthanc/{kind}", "127.0.0.1", port, requests, args, meter)
                save()
            stop(orthanc)
    finally:
        for proc in processes:
            stop(proc)
        save()
    table = markdown_fixed(results) if args.fixed_rates else markdown(results)
    (out / f"api-results{args.label}.md").write_text(table)
    print()
    print(table)
    log(f"results in {results_path} (total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared test fixtures: the real-world corpus, the synthetic studies, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALWORLD = SHARED / "realworld"

if str(ROOT) not in sys.path:  # the fixture generator lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def realworld() -> Path:
    if not (REALWORLD / "MANIFEST.csv").is_file():
        pytest.skip(f"{REALWORLD} is absent (a user's clone without ../shared); CI always has it")
    return REALWORLD


@pytest.fixture(scope="session")
def fixtures_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic studies, generated once per test session."""
    from fixtures.build import build

    out = tmp_path_factory.mktemp("fixtures-output")
    build(out)
    return out


def run_cli(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI as a user would (a real process, real exit status)."""
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, "-m", "dicomcheck.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def analyze_json(*args: str | Path) -> dict:
    proc = run_cli("analyze", "--format", "json", *args)
    assert proc.returncode in (0, 2), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture()
def receiver_factory(tmp_path: Path):
    """Start receivers for one test and always stop them."""
    from .peers import start_receiver

    started = []

    def factory(*extra: str, data: Path | None = None, **kwargs):
        server = start_receiver(data or tmp_path / f"data{len(started)}", *extra, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


POSTGRES_URL = os.environ.get("DICOMCHECK_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_schema_url(name: str) -> str:
    """A fresh schema in the test database (dropped by the caller); fails under CI, skips elsewhere."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        reason = f"PostgreSQL at {POSTGRES_URL} unreachable: {type(exc).__name__}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return f"{POSTGRES_URL}?options=-csearch_path%3D{name}"


def drop_postgres_schema(name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def index_url(request: pytest.FixtureRequest, tmp_path: Path):
    """The index database, once on SQLite (embedded default) and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
        return
    import uuid

    name = f"dc_test_{uuid.uuid4().hex[:12]}"
    yield postgres_schema_url(name)
    drop_postgres_schema(name)

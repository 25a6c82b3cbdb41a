"""Shared test fixtures: the real-world corpus, the synthetic studies, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .peers import missing_prerequisite, start_receiver, stopped_at_end

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALWORLD = SHARED / "realworld"

if str(ROOT) not in sys.path:  # the fixture generator lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))


def realworld_corpus(folder: Path = REALWORLD) -> Path:
    """The real-world corpus; absent in a user's clone without ../shared (skipped), never under CI (failed)."""
    if not (folder / "MANIFEST.csv").is_file():
        missing_prerequisite(f"{folder} is absent (a user's clone without ../shared); CI always has it")
    return folder


@pytest.fixture(scope="session")
def realworld() -> Path:
    return realworld_corpus()


@pytest.fixture(scope="session")
def fixtures_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic studies, generated once per test session."""
    from fixtures.build import build

    out = tmp_path_factory.mktemp("fixtures-output")
    build(out)
    return out


@pytest.fixture(scope="session")
def fixture_source(fixtures_output: Path):
    """``fixture_source(case, devices=False)``: the evidence source of one synthetic study, analysed
    once per session (with the case's devices.toml when ``devices``). Shared: a test that changes
    one works on ``dataclasses.replace`` / ``copy.deepcopy`` copies, never on the source itself."""
    from dicomcheck.evidence.collect import from_folder
    from dicomcheck.registry import load_registry

    analysed = {}

    def source(case: str, *, devices: bool = False):
        if (case, devices) not in analysed:
            folder = fixtures_output / case
            registry_file = folder / "devices.toml"
            registry = load_registry(registry_file) if devices and registry_file.is_file() else None
            sources = from_folder([folder], registry=registry)
            assert len(sources) == 1, f"{case}: {len(sources)} studies"
            analysed[case, devices] = sources[0]
        return analysed[case, devices]

    return source


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


@pytest.fixture(scope="session")
def upgraded_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose index is made as a user makes one (`dicomcheck db upgrade`), empty, once per
    session: the token CLI tests share it, each with token names of its own."""
    data = tmp_path_factory.mktemp("upgraded-index") / "data"
    run_cli("db", "upgrade", "--data", data, check=True)
    return data


def imported_modules(importtime_report: str) -> set[str]:
    """Every module named in the stderr of a ``python -X importtime`` run."""
    return {
        line.rsplit("|", 1)[1].strip() for line in importtime_report.splitlines() if line.startswith("import time:")
    }


@pytest.fixture(scope="session")
def conformance_generator() -> subprocess.CompletedProcess[str]:
    """`python -m scp.conformance` (how docs/conformance.md is regenerated), run once per session with no
    DICOMCHECK_* settings; ``-X importtime`` names on stderr every module it imported."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "scp.conformance"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def errors_of(importtime_report: str) -> str:
    """The stderr of a ``-X importtime`` run without its import lines (what went wrong, if anything)."""
    return "\n".join(line for line in importtime_report.splitlines() if not line.startswith("import time:"))[-3000:]


def analyze_json(*args: str | Path) -> dict:
    proc = run_cli("analyze", "--format", "json", *args)
    assert proc.returncode in (0, 2), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture()
def receiver_factory(tmp_path: Path):
    """Start receivers for one test and always stop them."""

    def start(n: int, *extra: str, data: Path | None = None, **kwargs):
        return start_receiver(data or tmp_path / f"data{n}", *extra, **kwargs)

    with stopped_at_end(start) as factory:
        yield factory


@pytest.fixture(scope="module")
def module_receiver_factory(tmp_path_factory: pytest.TempPathFactory):
    """Like ``receiver_factory``, for a receiver the tests of one module share (each leaves it as it found
    it: no test may depend on another having run); stopped after the module's last test."""
    folder = tmp_path_factory.mktemp("module-receivers")

    def start(n: int, *extra: str, data: Path | None = None, **kwargs):
        return start_receiver(data or folder / f"data{n}", *extra, **kwargs)

    with stopped_at_end(start) as factory:
        yield factory


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
        missing_prerequisite(f"PostgreSQL at {POSTGRES_URL} unreachable: {type(exc).__name__}")
    return f"{POSTGRES_URL}?options=-csearch_path%3D{name}"


def drop_postgres_schema(name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    engine.dispose()


INDEX_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)]


def _index_url(backend: str, folder: Path):
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'index.sqlite3'}"
        return
    import uuid

    name = f"dc_test_{uuid.uuid4().hex[:12]}"
    yield postgres_schema_url(name)
    drop_postgres_schema(name)


@pytest.fixture(params=INDEX_BACKENDS)
def index_url(request: pytest.FixtureRequest, tmp_path: Path):
    """The index database, once on SQLite (embedded default) and once on PostgreSQL."""
    yield from _index_url(request.param, tmp_path)


@pytest.fixture(scope="module", params=INDEX_BACKENDS)
def module_index_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``index_url`` for an index the tests of one module share (read-only tests)."""
    yield from _index_url(request.param, tmp_path_factory.mktemp("module-index"))

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

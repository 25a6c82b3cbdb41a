"""The quality gates, run from pytest so that the README's one test command (which ``.ci/run`` calls
verbatim) runs them too: ruff, mypy, the import contracts (import-linter) and vulture, each with its
configuration in pyproject.toml. A gate that finds something fails with the tool's own report.

The four tools start together (they are independent; mypy takes longest) and each test waits for its own.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

BIN = Path(sys.executable).parent
GATES = {
    "ruff": [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
    "mypy": [sys.executable, "-m", "mypy"],  # incremental: the checkout's .mypy_cache (git-ignored), see below
    "import contracts": [str(BIN / "lint-imports"), "--no-cache"],
    "vulture": [sys.executable, "-m", "vulture"],
}
"""Each gate's command, run in the project root; every one reads its settings from pyproject.toml."""

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate_runs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """mypy keeps its cache in the checkout's .mypy_cache: a fresh clone gets the full check (~30 s),
    a later run re-checks what changed and what depends on it (mypy's own incremental mode, ~2 s)."""
    runs = {
        name: subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, command in GATES.items()
    }
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
        run.communicate()


@pytest.mark.parametrize("gate", list(GATES))
def test_gate_passes(gate: str, gate_runs: dict[str, subprocess.Popen[str]]) -> None:
    report, _ = gate_runs[gate].communicate(timeout=600)
    assert gate_runs[gate].returncode == 0, f"{gate} found:\n{report}"


def _top_level_modules() -> set[str]:
    """Every module and subpackage directly under dicomcheck/ (``dicomcheck.x``), and ``scp``."""
    package = ROOT / "dicomcheck"
    modules = {f"dicomcheck.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"dicomcheck.{p.parent.name}" for p in package.glob("*/__init__.py")}
    return modules | {"scp"}


def _layered_modules() -> set[str]:
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "flow")
    return {name.strip() for layer in contract["layers"] for name in layer.replace(":", "|").split("|")}


def test_every_module_has_its_place_in_the_layers() -> None:
    """A new module outside the layers contract would escape the import-direction check unseen."""
    missing = _top_level_modules() - _layered_modules()
    assert not missing, f"add these to the 'flow' layers in pyproject.toml [tool.importlinter]: {sorted(missing)}"
    gone = _layered_modules() - _top_level_modules()
    assert not gone, f"the 'flow' layers name modules that do not exist: {sorted(gone)}"


def test_the_gate_tools_are_pinned_in_the_test_extra() -> None:
    """A new release of a gate adds checks: unpinned, an unchanged tree could start failing."""
    extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    for tool in ("ruff", "mypy", "import-linter", "vulture"):
        assert any(requirement.startswith(f"{tool}==") for requirement in extra), f"{tool} is not pinned with =="

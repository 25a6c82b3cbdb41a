"""CI runs every test it has (issue 9 point 8): `.ci/run` says CI=true itself, and under CI nothing
missing (a peer program, PostgreSQL, ../shared) turns into a skip or an expected failure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT, realworld_corpus
from .peers import missing_prerequisite, require_peer

TESTS = Path(__file__).parent


def test_ci_run_exports_ci_before_running_exactly_the_readme_command():
    script = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Install and run the tests.*?```sh\n(.+?)\n```", readme, re.S).group(1)
    assert command.strip() in script.splitlines()
    exported = script.index("export CI=true\n")
    assert exported < script.index(command.strip())


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_prerequisite_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no such program"):
        missing_prerequisite("no such program")
    with pytest.raises(outcome, match="not installed"):
        require_peer("dicomcheck-no-such-peer-program")
    with pytest.raises(outcome, match="absent"):
        realworld_corpus(tmp_path / "shared" / "realworld")


def test_tests_give_up_only_through_missing_prerequisite():
    """No runtime xfail anywhere, and every skip goes through the one helper that fails under CI."""
    for path in sorted(set(TESTS.glob("*.py")) - {Path(__file__)}):
        text = path.read_text()
        assert "pytest.xfail(" not in text, f"{path.name}: a runtime xfail"
        if path.name != "peers.py":
            assert not re.search(r"pytest\.skip\(|importorskip\(|mark\.skip(if)?\b", text), (
                f"{path.name}: a skip outside peers.missing_prerequisite"
            )

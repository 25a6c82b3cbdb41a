"""Errors a user meets first (issue 8 §5): each one a clear line and a non-zero exit, or, for the
live device registry, decisions that go on with the last good version until the file is fixed."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import run_cli
from .dicomfiles import write_study
from .peers import free_port, peer_env, require_peer, wait_for

GOOD = '[[device]]\nstation_name = "CT54023"\nrole = "independent_workstation"\nnote = "console used as a 3D lab"\n'
TYPO = '[[device]]\nstation_name = "CT54023"\nrole = "independent-workstation"\n'  # the typo: a dash
OTHER = '[[device]]\nstation_name = "3DLAB-01"\nrole = "independent_workstation"\n'


def _token(data: Path, name: str, role: str) -> str:
    return run_cli("token", "create", name, "--role", role, "--data", data, check=True).stdout.strip()


def _storescu_folder(port: int, folder: Path) -> None:
    """The README's line for sending a whole folder with DCMTK (other files in it are skipped)."""
    proc = subprocess.run(
        [
            "storescu",
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            "-R",
            "-aet",
            "MODALITY",
            "-aec",
            "DICOMCHECK",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=peer_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def _registry_gauge(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return float(re.search(r"^dicomcheck_registry_file_error (\S+)$", text, re.M).group(1))


@pytest.mark.peer
def test_a_typo_in_the_live_registry_keeps_deciding_with_the_last_good_one(receiver_factory, tmp_path):
    require_peer("storescu")
    devices = tmp_path / "devices.toml"
    devices.write_text(GOOD)
    data, http_port = tmp_path / "data", free_port()
    server = receiver_factory("--http-port", str(http_port), "--devices", str(devices), data=data, stable_after=0.5)
    wait_for(lambda: "API listening" in server.log())
    admin = {"Authorization": f"Bearer {_token(data, 'admin', 'admin')}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers=admin, timeout=30) as client:
        wait_for(lambda: _answers(client, "/healthz"))  # "API listening" is printed just before uvicorn binds
        assert client.get("/healthz").json()["status"] == "ok" and _registry_gauge(client) == 0

        devices.write_text(TYPO)  # the administrator's typo, in the live file
        wait_for(lambda: client.get("/healthz").json()["status"] == "degraded")
        health = client.get("/healthz")
        assert health.status_code == 200  # still serving lookups: degraded, not down
        assert health.json()["registry"] == "error" and health.json()["index"] == "reachable"
        assert "devices.toml:1: device #1: role must be one of" in health.json()["reason"]
        assert _registry_gauge(client) == 1

        study, _ = write_study(tmp_path / "study-a")
        (tmp_path / "study-a" / "notes.txt").write_text("not DICOM: storescu +sp '*.dcm' skips it")
        _storescu_folder(server.port, tmp_path / "study-a")
        wait_for(lambda: client.get(f"/studies/{study}").json().get("status") == "decided", timeout=60)
        assert client.get(f"/studies/{study}").json()["outcome"] == "supports_76377"  # the last good registry decided
        reanalyzed = client.post(f"/studies/{study}/reanalyze")
        assert reanalyzed.status_code == 200, reanalyzed.text
        assert reanalyzed.json()["outcome"] == "supports_76377"
        assert server.log().count("device registry") == 1, (
            server.log()
        )  # once for this version of the file, not every pass
        assert "Traceback" not in server.log()

        devices.write_text(OTHER)  # fixed (and now naming another station)
        wait_for(lambda: client.get("/healthz").json()["status"] == "ok")
        assert client.get("/healthz").json()["registry"] == "ok" and _registry_gauge(client) == 0
        reanalyzed = client.post(f"/studies/{study}/reanalyze")
        assert (
            reanalyzed.status_code == 200 and reanalyzed.json()["outcome"] == "supports_76376"
        )  # the fixed file is used
        wait_for(lambda: "is valid again" in server.log())  # logged by the deciding process, at its next pass


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_on_a_taken_dicom_port_says_so_in_one_line(tmp_path, processes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(
            "serve",
            "--data",
            tmp_path / "data",
            "--bind",
            "127.0.0.1",
            "--dicom-port",
            str(port),
            "--no-api",
            "--allow-caller",
            "MODALITY",
            "--processes",
            str(processes),
        )
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [
        f"dicomcheck: cannot listen for DICOM on 127.0.0.1:{port}: Address already in use"
    ], proc.stderr


def test_version_option_and_command():
    assert re.fullmatch(r"dicomcheck \d+\.\d+\.\d+\S*\n", run_cli("--version", check=True).stdout)
    assert run_cli("version", check=True).stdout.startswith("dicomcheck ")


def test_token_expiring_in_the_past_is_refused(upgraded_index):
    data = upgraded_index  # made by `dicomcheck db upgrade`, shared: token names of this test only
    refused = run_cli(
        "token", "create", "late", "--role", "auditor", "--study", "1.2.3", "--expires", "2020-01-31", "--data", data
    )
    assert refused.returncode == 1 and "2020-01-31 is in the past" in refused.stderr
    assert "late" not in run_cli("token", "list", "--data", data, check=True).stdout
    assert (
        run_cli(
            "token",
            "create",
            "audit",
            "--role",
            "auditor",
            "--study",
            "1.2.3",
            "--expires",
            "2999-01-31",
            "--data",
            data,
        ).returncode
        == 0
    )


@pytest.mark.parametrize("command", [("create", "ris", "--role", "reader"), ("list",), ("revoke", "ris")])
def test_token_commands_never_create_an_index(tmp_path, command):
    data = tmp_path / "typo-data"
    proc = run_cli("token", *command, "--data", data)
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"dicomcheck: no index at {data / 'index.sqlite3'}: create it with `dicomcheck db upgrade --data {data}` "
        "(or start `dicomcheck serve`)\n"
    )
    assert not data.exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("syntax.toml", 'ae_title = "DICOMCHECK"\ndicom_port = \n', "{file}:2: TOML syntax error: Invalid value"),
        (
            "range.toml",
            'ae_title = "DICOMCHECK"\ndicom_port = 70000\n',
            "{file}: dicom_port: Input should be less than or equal to 65535 (got 70000)",
        ),
        ("unknown.toml", "stable_afte = 5\n", "{file}: stable_afte: unknown setting"),
        ("ae.toml", 'allow_callers = ["A\\\\B"]\n', "{file}: allow_callers: not AE titles"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_field(tmp_path, name, text, message):
    config = tmp_path / name
    config.write_text(text)
    proc = run_cli("serve", "--data", tmp_path / "data", "--config", config, "--no-api")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("dicomcheck: bad settings: " + message.format(file=config)), proc.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_bad_registry_at_start_is_one_line_with_file_line_and_reason(tmp_path):
    devices = tmp_path / "devices.toml"
    devices.write_text(TYPO)
    proc = run_cli("serve", "--data", tmp_path / "data", "--devices", devices, "--no-api")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"dicomcheck: bad --devices file: {devices}:1: device #1: role must be one of "
        "['scanner_console', 'pacs_viewer', 'independent_workstation'], not 'independent-workstation'"
    ]

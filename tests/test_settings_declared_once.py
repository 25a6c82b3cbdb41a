"""Each serve setting is declared once, on its Settings field: the `serve` flags, the README table and the
conformance statement are read from there, and a flag given on the command line reaches Settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from typer.testing import CliRunner

from dicomcheck import cli
from dicomcheck.config import Settings, flag_of, flag_spellings, settings_table_markdown

from .conftest import errors_of, imported_modules, run_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- settings-table:start", "<!-- settings-table:end -->"
FLAGGED = [name for name in Settings.model_fields if flag_of(name)]
PRIVATE = "1.3.46.670589.5.0.1.1"  # Philips private 3D object storage: accepted only when configured


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, "README needs one settings-table marker pair"
    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    return block.split("\n", 1)[1]  # after the rest of the start marker's line


def test_readme_settings_table_is_the_generators_output():
    assert readme_table() == settings_table_markdown(), (
        "README's settings table is stale: replace it with the output of `python -m dicomcheck.config`"
    )


def test_the_generator_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "dicomcheck.config"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == settings_table_markdown()


def test_every_setting_has_help_and_a_row_in_readme():
    table = readme_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description (its help)"
        assert f"| `{name}` | " in table, name
        assert f"`DICOMCHECK_{name.upper()}`" in table, name


def test_serve_flags_are_exactly_the_flagged_fields_plus_config():
    serve = typer.main.get_command(cli.app).commands["serve"]  # type: ignore[attr-defined]
    options = {param.name: (*param.opts, *param.secondary_opts) for param in serve.params}
    assert options == {"config": ("--config",), **{name: flag_spellings(name) for name in FLAGGED}}


def test_serve_help_shows_every_flag_with_its_help():
    proc = run_cli("serve", "--help", check=True)
    for name in FLAGGED:
        for spelling in flag_spellings(name):
            assert spelling in proc.stdout, spelling
        first_words = " ".join(Settings.model_fields[name].description.split()[:3])
        assert first_words in proc.stdout, (name, first_words)
    assert "--config" in proc.stdout


def test_current_flag_spellings_are_kept():
    """The spellings users and scripts already type (issue 9 redesign: none renamed)."""
    assert {spelling for name in FLAGGED for spelling in flag_spellings(name)} >= {
        "--data",
        "--ae-title",
        "--dicom-port",
        "--bind",
        "--allow-caller",
        "--devices",
        "--stable-after",
        "--database-url",
        "--max-associations",
        "--private-sop-class",
        "--tls-cert",
        "--tls-key",
        "--tls-ca",
        "--tls-require-client-cert",
        "--no-tls-require-client-cert",
        "--processes",
        "--evidence-destination",
        "--http-port",
        "--no-api",
        "--no-scp",
    }


def test_conformance_reads_flags_without_importing_the_cli(conformance_generator):
    proc = conformance_generator  # `python -X importtime -m scp.conformance`: its imports are on stderr
    assert proc.returncode == 0, errors_of(proc.stderr)
    imported = imported_modules(proc.stderr)
    assert {"scp", "dicomcheck.config"} <= imported, "the import report was not read"  # (-m runs it as __main__)
    assert not {"dicomcheck.cli", "typer"} & imported, "the CLI was imported"
    assert "| `allow_callers` | `--allow-caller` |" in proc.stdout
    assert "| `tls_require_client_cert` | `--tls-require-client-cert` / `--no-tls-require-client-cert` |" in proc.stdout


@pytest.mark.parametrize("table", ["NETWORK_FIELDS", "LIMITS"])
def test_conformance_refuses_a_setting_that_does_not_exist(monkeypatch, table):
    import scp.conformance as conformance

    missing = "receiver_processes"
    entry = missing if table == "NETWORK_FIELDS" else ("a limit", missing, "breach")
    monkeypatch.setattr(conformance, table, (*getattr(conformance, table), entry))
    with pytest.raises(RuntimeError, match=missing):
        conformance.statement()


def test_every_flag_reaches_settings(tmp_path, monkeypatch):
    """Each flag with a value it would not have without the flag, through typer into Settings (the start stubbed)."""
    for variable in [v for v in os.environ if v.upper().startswith("DICOMCHECK_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("DICOMCHECK_SCP", "false")  # so that `--scp` changes something: the flag beats the environment
    without_flags = Settings()
    devices = tmp_path / "devices.toml"
    devices.write_text("")
    given = {
        "data": (["--data", str(tmp_path / "d")], tmp_path / "d"),
        "database_url": (["--database-url", "sqlite:///x.sqlite3"], "sqlite:///x.sqlite3"),
        "ae_title": (["--ae-title", "OTHER"], "OTHER"),
        "dicom_port": (["--dicom-port", "11113"], 11113),
        "bind": (["--bind", "127.0.0.1"], "127.0.0.1"),
        "allow_callers": (["--allow-caller", "PACS1", "--allow-caller", "PACS2"], ["PACS1", "PACS2"]),
        "devices": (["--devices", str(devices)], devices),
        "stable_after": (["--stable-after", "2.5"], 2.5),
        "max_associations": (["--max-associations", "3"], 3),
        "private_sop_classes": (["--private-sop-class", PRIVATE], [PRIVATE]),
        "tls_cert": (["--tls-cert", "c.pem"], Path("c.pem")),
        "tls_key": (["--tls-key", "k.pem"], Path("k.pem")),
        "tls_ca": (["--tls-ca", "ca.pem"], Path("ca.pem")),
        "tls_require_client_cert": (["--tls-require-client-cert"], True),
        "evidence_destination": (["--evidence-destination", "PACS@127.0.0.1:104"], "PACS@127.0.0.1:104"),
        "forwarded_allow_ips": (
            ["--forwarded-allow-ip", "10.0.0.5", "--forwarded-allow-ip", "10.1.0.0/16"],
            ["10.0.0.5", "10.1.0.0/16"],
        ),
        "processes": (["--processes", "2"], 2),
        "http_port": (["--http-port", "8081"], 8081),
        "api": (["--no-api"], False),
        "scp": (["--scp"], True),
        "pixel_retention": (["--pixel-retention", "7d"], "7d"),
        "quarantine_retention": (["--quarantine-retention", "off"], "off"),
        "min_free_space": (["--min-free-space", "2GiB"], "2GiB"),
        "hl7_port": (["--hl7-port", "2575"], 2575),
        "hl7_allow_senders": (["--hl7-allow-sender", "RIS", "--hl7-allow-sender", "^HOSP"], ["RIS", "^HOSP"]),
        "report_wait": (["--report-wait", "12h"], "12h"),
        "made_later_days": (["--made-later-days", "3"], 3),
    }
    assert set(given) == set(FLAGGED), "a new flag needs a value here"
    started: list[Settings] = []
    monkeypatch.setattr(cli, "_run_server", lambda settings, *_: started.append(settings))
    args = [arg for flag_args, _ in given.values() for arg in flag_args]
    result = CliRunner().invoke(cli.app, ["serve", *args])
    assert result.exit_code == 0, result.output
    (settings,) = started
    for name, (_, expected) in given.items():
        assert getattr(settings, name) == expected, name
        assert expected != getattr(without_flags, name), f"{name}: pick a value the flag changes"


def test_a_bad_flag_value_names_the_flag_as_spelled(tmp_path):
    proc = run_cli("serve", "--data", tmp_path / "data", "--no-api", "--allow-caller", "A\\B")
    assert proc.returncode == 1
    assert proc.stderr.startswith("dicomcheck: bad settings: --allow-caller: not AE titles"), proc.stderr
    assert not (tmp_path / "data").exists()


def _associate(port: int, calling: str, called: str, *contexts: str) -> tuple[bool, set[str]]:
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False, set()
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assoc.release()
    return True, accepted


def test_repeated_list_flags_reach_a_real_receiver(receiver_factory):
    server = receiver_factory("--allow-caller", "ONE", "--allow-caller", "TWO", "--private-sop-class", PRIVATE)
    assert _associate(server.port, "STRANGER", server.ae_title, Verification) == (False, set())
    assert _associate(server.port, "ONE", server.ae_title, Verification) == (True, {Verification})
    assert _associate(server.port, "TWO", server.ae_title, Verification, PRIVATE) == (True, {Verification, PRIVATE})

"""The analyze command as a user runs it: inputs, formats, exit statuses, errors.

Exit statuses, error lines, the terminal view and one JSON document come from the real process
(``run_cli``); the other JSON documents from the same command run in this process (``analyze_document``):
what those tests check is the analysis of their inputs, not the process around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from .conftest import ROOT, imported_modules, run_cli
from .dicomfiles import write_ct

SCHEMA = json.loads((ROOT / "dicomcheck/schema/analysis.schema.json").read_text())


def analyze_document(*args: str | Path) -> dict:
    """The JSON document of `dicomcheck analyze --format json ARGS` (exit status 0), the command run in
    this process by typer's test runner: the command's own code, without an interpreter start."""
    from typer.testing import CliRunner

    from dicomcheck import cli

    result = CliRunner().invoke(cli.app, ["analyze", "--format", "json", *map(str, args)])
    assert result.exit_code == 0, (result.exit_code, result.output[-2000:], result.exception)
    return json.loads(result.stdout)


@pytest.fixture()
def study_dir(tmp_path: Path) -> Path:
    study = generate_uid()
    acq, mip = generate_uid(), generate_uid()
    for i in range(3):
        write_ct(tmp_path / "study" / "acq" / f"{i}.dcm", study, acq, SeriesDescription="Abdomen 1.0")
    for i in range(2):
        write_ct(
            tmp_path / "study" / "mip" / f"{i}.dcm",
            study,
            mip,
            "DERIVED\\PRIMARY\\AXIAL\\CT_SOM5 MIP",
            SeriesDescription="MIP cor",
        )
    (tmp_path / "study" / "notes.txt").write_text("not DICOM, skipped in folder walks")
    return tmp_path / "study"


def test_json_document_is_schema_valid_and_decides(study_dir: Path):
    proc = run_cli("analyze", "--format", "json", study_dir, check=True)
    document = json.loads(proc.stdout)
    jsonschema.validate(document, SCHEMA)
    (study,) = document["studies"]
    assert study["outcome"] == "supports_76376" and study["code"] == "76376"
    assert study["accession_number"] == "ACC-CLI"
    kinds = {s["series_description"]: (s["kind"], s["origin"], s["instances"]) for s in study["series"]}
    assert kinds == {
        "Abdomen 1.0": ("acquisition", "scanner_console", 3),
        "MIP cor": ("projection", "scanner_console", 2),
    }
    assert document["errors"] == []
    evidence = next(s for s in study["series"] if s["kind"] == "projection")["evidence"]
    assert {"signal": "kind.image_type_vendor_token", "tag": "(0008,0008)", "keyword": "ImageType"}.items() <= evidence[
        0
    ].items()


def test_table_is_readable(study_dir: Path):
    proc = run_cli("analyze", study_dir, check=True)
    assert "supports_76376" in proc.stdout and "CPT 76376" in proc.stdout
    assert "MIP cor" in proc.stdout and "projection" in proc.stdout
    assert "outcome.console_or_viewer" in proc.stdout
    assert "TEST^CLI" not in proc.stdout + proc.stderr  # no patient names on the terminal


def test_errors_never_stop_the_run(study_dir: Path, tmp_path: Path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not dicom at all" * 20)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(next(study_dir.rglob("*.dcm")).read_bytes()[:200])
    document = analyze_document(study_dir, junk, truncated, tmp_path / "missing.dcm")
    assert len(document["studies"]) == 1
    reasons = {Path(e["path"]).name: e["reason"] for e in document["errors"]}
    assert set(reasons) == {"junk.dcm", "truncated.dcm", "missing.dcm"}
    assert "not a DICOM" in reasons["junk.dcm"]
    assert reasons["missing.dcm"] == "no such file or folder"


def test_exit_status_two_when_nothing_analysed(tmp_path: Path):
    (tmp_path / "a.dcm").write_bytes(b"nope")
    proc = run_cli("analyze", "--format", "json", tmp_path / "a.dcm")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["studies"] == []


@pytest.mark.parametrize("args", [(), ("--format", "xml", "."), ("--bogus", "."), ("--devices",)])
def test_usage_errors_exit_one(args):
    assert run_cli("analyze", *args).returncode == 1


def test_bad_registry_is_rejected_with_line_and_reason(study_dir: Path, tmp_path: Path):
    devices = tmp_path / "devices.toml"
    devices.write_text('[[device]]\nstation_name = "X"\nrole = "3d-lab"\n')
    proc = run_cli("analyze", "--devices", devices, study_dir)
    assert proc.returncode == 1
    assert "devices.toml:1: device #1: role must be one of" in proc.stderr.replace("\n", "").replace("│", "")


def test_registry_changes_the_decision(study_dir: Path, tmp_path: Path):
    devices = tmp_path / "devices.toml"
    devices.write_text(
        '[[device]]\nstation_name = "CT54023"\nrole = "independent_workstation"\nnote = "console re-used as 3D lab"\n'
    )
    document = analyze_document("--devices", devices, study_dir)
    study = document["studies"][0]
    assert study["outcome"] == "supports_76377"
    assert document["devices"] == str(devices)
    mip = next(s for s in study["series"] if s["kind"] == "projection")
    assert mip["origin_rule"] == "origin.registry"


def test_zip_archive(study_dir: Path, tmp_path: Path):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in study_dir.rglob("*.dcm"):
            zf.write(path, path.relative_to(study_dir).as_posix())
        zf.writestr("README.txt", "not DICOM")
    document = analyze_document(archive)
    assert document["studies"][0]["instances"] == 5 and document["errors"] == []


def test_dicomdir_media(study_dir: Path, tmp_path: Path):
    fileset = FileSet()
    from pydicom import dcmread

    for path in sorted(study_dir.rglob("*.dcm")):
        fileset.add(dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    document = analyze_document(media / "DICOMDIR")
    assert document["studies"][0]["instances"] == 5 and document["errors"] == []
    # the same medium walked as a folder: the DICOMDIR index is not an instance, nor an error
    document = analyze_document(media)
    assert document["studies"][0]["instances"] == 5 and document["errors"] == []


def test_duplicate_inputs_count_once(study_dir: Path):
    document = analyze_document(study_dir, study_dir)
    assert document["studies"][0]["instances"] == 5


def test_parallel_reading_gives_the_same_answer(study_dir: Path):
    one = analyze_document("--workers", "1", study_dir)
    from dicomcheck import sources

    assert sources.PARALLEL_THRESHOLD > 5  # small inputs are read in-process; force the pool below
    from dicomcheck.analysis import decide_studies
    from dicomcheck.report import study_dict

    found, _ = sources.discover([study_dir])
    results = []
    original = sources.PARALLEL_THRESHOLD
    sources.PARALLEL_THRESHOLD = 1
    try:
        results = list(sources.read_all(found, workers=2))
    finally:
        sources.PARALLEL_THRESHOLD = original
    (study,) = decide_studies([r for r in results if not isinstance(r, sources.ReadError)])
    assert study_dict(study)["outcome"] == one["studies"][0]["outcome"]
    assert study_dict(study)["instances"] == one["studies"][0]["instances"]


def test_rules_and_version_commands():
    proc = run_cli("rules", check=True)
    assert "outcome.independent_workstation" in proc.stdout and "rules version" in proc.stdout
    assert "dicomcheck" in run_cli("version", check=True).stdout
    assert run_cli("--help", check=True).stdout.count("analyze") >= 1


HEAVY = ("pydicom", "pynetdicom", "fastapi", "sqlmodel", "sqlalchemy")
"""What `--version` and every `--help` must not load: each command imports what it needs when it runs."""


def test_version_and_help_load_no_dicom_network_web_or_database_library():
    version = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dicomcheck.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.returncode == 0 and version.stdout.startswith("dicomcheck "), version.stderr[-2000:]
    loaded = {name.split(".")[0] for name in imported_modules(version.stderr)}
    assert {"typer", "dicomcheck"} <= loaded, "the import report was not read"  # the check below means something
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    commands = [["--help"], ["analyze", "--help"], ["serve", "--help"], ["token", "create", "--help"]]
    commands += [["evidence", "--help"], ["storage", "prune", "--help"], ["db", "upgrade", "--help"]]
    commands += [["sessions", "backfill", "--help"], ["sessions", "rebuild", "--help"]]
    code = (
        "import sys\nfrom dicomcheck import cli\n"
        f"for args in {commands!r}:\n"
        "    try:\n        cli.main(args)\n"
        "    except SystemExit as exit:\n        assert exit.code == 0, (args, exit.code)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    helps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert helps.returncode == 0, helps.stderr[-2000:]
    assert "Usage:" in helps.stdout and helps.stdout.splitlines()[-1] == "[]", helps.stdout[-2000:]

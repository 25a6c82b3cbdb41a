"""The synthetic fixture studies (fixtures/build.py): readable, deterministic, self-consistent."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomcheck.enums import Origin, SeriesKind

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `fixtures` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from fixtures import build as fixture_build  # noqa: E402

KINDS = {kind.value for kind in SeriesKind}  # the product's vocabulary, not a copy of it
ORIGINS = {origin.value for origin in Origin}
OUTCOME_CODES = {
    "supports_76377": "76377",
    "supports_76376": "76376",
    "no_3d": None,
    "bundled": None,
    "needs_review": None,
}
MAX_TOTAL_BYTES = 3_000_000


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("fixtures-a")
    return out, fixture_build.build(out)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _dicom_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_one_folder_per_case_in_case_order(built: tuple[Path, list[dict]]) -> None:
    out, records = built
    names = [case.name for case in fixture_build.CASES]
    assert len(names) == len(set(names))
    assert [r["case"] for r in records] == names
    assert [p.name for p in _case_dirs(out)] == sorted(names)


def test_every_file_is_part10_and_reads_fully(built: tuple[Path, list[dict]]) -> None:
    out, _ = built
    files = _dicom_files(out)
    assert files
    for path in files:
        assert path.read_bytes()[128:132] == b"DICM", path
        ds = pydicom.dcmread(path)  # no force: preamble and file meta are required
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian, path
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID, path
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, path
        assert meta.ImplementationClassUID, path
        if "PixelData" in ds:
            frames = int(ds.get("NumberOfFrames", 1))
            assert ds.pixel_array.size == frames * ds.Rows * ds.Columns * ds.SamplesPerPixel, path


def test_build_is_deterministic(
    built: tuple[Path, list[dict]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first, first_records = built
    second = tmp_path_factory.mktemp("fixtures-b")
    second_records = fixture_build.build(second)
    assert first_records == second_records
    first_files = [p.relative_to(first) for p in _files(first)]
    assert first_files == [p.relative_to(second) for p in _files(second)]
    for rel in first_files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_rebuilding_into_the_same_folder_replaces_it(tmp_path: Path) -> None:
    fixture_build.build(tmp_path)
    stray = tmp_path / fixture_build.CASES[0].name / "9999_stray" / "0001.dcm"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    fixture_build.build(tmp_path)
    assert not stray.exists()


def test_series_folders_match_expected_json(built: tuple[Path, list[dict]]) -> None:
    out, records = built
    by_case = {r["case"]: r for r in records}
    for case_dir in _case_dirs(out):
        expected = json.loads((case_dir / "expected.json").read_text())
        assert expected == by_case[case_dir.name]
        found: dict[str, str] = {}
        for series_dir in sorted(p for p in case_dir.iterdir() if p.is_dir()):
            paths = sorted(series_dir.glob("*.dcm"))
            headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
            assert headers, series_dir
            assert len({h.SeriesInstanceUID for h in headers}) == 1, series_dir
            assert len({h.SeriesDescription for h in headers}) == 1, series_dir
            assert {h.StudyInstanceUID for h in headers} == {expected["study_instance_uid"]}
            assert {h.AccessionNumber for h in headers} == {expected["accession_number"]}
            description = headers[0].SeriesDescription
            assert description not in found, f"{case_dir.name}: {description!r} in two folders"
            found[description] = series_dir.name
        assert set(found) == set(expected["series"]), case_dir.name


def test_sop_instance_uids_are_unique(built: tuple[Path, list[dict]]) -> None:
    out, _ = built
    uids = Counter(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in _dicom_files(out))
    assert [uid for uid, n in uids.items() if n > 1] == []


def test_expected_records_use_the_contract_vocabulary(built: tuple[Path, list[dict]]) -> None:
    out, records = built
    for record in records:
        name = record["case"]
        assert record["code"] == OUTCOME_CODES[record["outcome"]], name
        assert record["series"], name
        for series in record["series"].values():
            assert series["kind"] in KINDS and series["origin"] in ORIGINS, name
        devices = out / name / "devices.toml"
        if record["devices"] is None:
            assert record["without_devices"] is None and not devices.exists(), name
        else:
            assert devices.is_file(), name
            without = record["without_devices"]
            assert without["code"] == OUTCOME_CODES[without["outcome"]], name


def test_every_case_has_a_one_line_summary() -> None:
    """A case's summary is its builder's docstring, folded to one line (it is ``expected.json``'s description)."""
    for case in fixture_build.CASES:
        assert case.summary and case.summary == " ".join(case.summary.split()), case.name


def test_policy_variants_repeat_their_base_case_under_a_policy(built: tuple[Path, list[dict]]) -> None:
    """``with_policy`` cases: the same series as the case before them, new UIDs, a devices.toml, and without it
    the base case's outcome."""
    _, records = built
    by_name = {r["case"]: r for r in records}
    cases = fixture_build.CASES
    variants = [(cases[i - 1], c) for i, c in enumerate(cases) if c.summary.startswith("Same content as ")]
    assert len(variants) >= 2
    for base, variant in variants:
        assert variant.summary.startswith(f"Same content as {base.name}; the site policy ")
        assert variant.build_series is base.build_series and variant.devices_toml.startswith("[policy]\n")
        assert by_name[variant.name]["series"] == by_name[base.name]["series"]
        assert by_name[variant.name]["study_instance_uid"] != by_name[base.name]["study_instance_uid"]
        assert by_name[variant.name]["without_devices"]["outcome"] == by_name[base.name]["outcome"]


def test_output_stays_small(built: tuple[Path, list[dict]]) -> None:
    out, _ = built
    assert sum(p.stat().st_size for p in _files(out)) < MAX_TOTAL_BYTES


def test_cli_prints_one_line_per_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fixture_build.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [case.name for case in fixture_build.CASES]


def test_readme_has_one_row_per_case() -> None:
    readme = (REPO / "fixtures" / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|")[2].strip(" `") for line in readme.splitlines() if line.startswith("| ")]
    names = [row for row in rows if row not in ("case", "---")]
    assert names == [case.name for case in fixture_build.CASES]

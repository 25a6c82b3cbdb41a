"""The 40 real DICOM files of ../shared/realworld: every one analysed without a crash, and each
file's kind / made_where in MANIFEST.csv matched.

Manifest vocabulary -> ours (issue 2): original_acquisition -> acquisition, mpr -> mpr,
mip_or_minip -> projection, volume_or_surface_render -> volume_render | surface_render,
secondary_capture -> any non-3D kind, presentation_or_sr_or_kos -> non_image, malformed -> errors
or any kind; the `other` rows (README "How to use them"): SEG -> segmentation, relCBF map ->
other_derived.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import jsonschema
import pytest

from dicomcheck.analysis import decide_studies
from dicomcheck.model import InstanceFacts
from dicomcheck.sources import Source, read_facts

from .conftest import REALWORLD, analyze_json

NON_3D = {"acquisition", "mpr", "other_derived", "non_image"}
KIND_MAP: dict[str, set[str]] = {
    "original_acquisition": {"acquisition"},
    "mpr": {"mpr"},
    "mip_or_minip": {"projection"},
    "volume_or_surface_render": {"volume_render", "surface_render"},
    "secondary_capture": NON_3D,
    "presentation_or_sr_or_kos": {"non_image"},
}
OTHER_KIND = {
    "seg_dcmqi_liver.dcm": {"segmentation"},
    "seg_tcia_ispy1_breast_voi.dcm": {"segmentation"},
    "mr_siemens_prisma_xa30_derived_relcbf.dcm": {"other_derived"},
}
# Files whose manifest label we believe is wrong, with our value and the reason (none so far).
MANIFEST_DISAGREEMENTS: dict[tuple[str, str], tuple[str, str]] = {}


def _rows() -> list[dict[str, str]]:
    manifest = REALWORLD / "MANIFEST.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


ROWS = _rows()
ROW_CASES = [pytest.param(row, id=row["file"]) for row in ROWS] or [pytest.param(None, id="no-MANIFEST-rows")]
"""One case per manifest row; never zero cases: without rows the one case still asks for the corpus
(skipped on a laptop without ../shared, failed under CI) and fails when the manifest lists nothing."""


@pytest.fixture(scope="module")
def decided(realworld: Path) -> dict[str, tuple[str, str] | str]:
    """file name -> (kind, origin) of the series holding it, or the read error."""
    results = {row["file"]: read_facts(Source(str(realworld / row["file"]))) for row in ROWS}
    facts = [r for r in results.values() if isinstance(r, InstanceFacts)]
    by_instance = {}
    for study in decide_studies(facts):
        for series in study.series:
            by_instance[series.series_instance_uid] = (series.kind.value, series.origin.value)
    out: dict[str, tuple[str, str] | str] = {}
    for name, result in results.items():
        out[name] = by_instance[result.series_instance_uid] if isinstance(result, InstanceFacts) else result.reason
    return out


@pytest.mark.realworld
@pytest.mark.parametrize("row", ROW_CASES)
def test_manifest_row(row: dict[str, str] | None, decided: dict, realworld: Path) -> None:
    assert row is not None, f"{realworld / 'MANIFEST.csv'} lists no file"
    path = realworld / row["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], "fixture changed"
    result = decided[row["file"]]
    if row["kind"] == "malformed":
        # errors, or any kind; when analysed, where it was made must still match the manifest
        if isinstance(result, str):
            assert result
            return
    else:
        assert not isinstance(result, str), f"not analysed: {result}"
    kind, origin = result
    expected_kinds = OTHER_KIND.get(row["file"]) or KIND_MAP.get(row["kind"])
    if expected_kinds is not None:
        override = MANIFEST_DISAGREEMENTS.get((row["file"], "kind"))
        assert kind in ({override[0]} if override else expected_kinds), row["note"]
    override = MANIFEST_DISAGREEMENTS.get((row["file"], "made_where"))
    assert origin == (override[0] if override else row["made_where"]), row["note"]


@pytest.mark.realworld
def test_manifest_lists_every_corpus_file(realworld: Path) -> None:
    """The parametrisation above covers the corpus: one row per file, no file left out."""
    on_disk = {p.name for p in realworld.iterdir() if p.is_file()} - {"MANIFEST.csv", "README.md"}
    assert on_disk and {row["file"] for row in ROWS} == on_disk


@pytest.mark.realworld
def test_cli_on_whole_corpus_is_schema_valid(realworld: Path) -> None:
    import json

    document = analyze_json(realworld)
    schema = json.loads((Path(__file__).parents[1] / "dicomcheck/schema/analysis.schema.json").read_text())
    jsonschema.validate(document, schema)
    analysed = {e["sop_instance_uid"] for s in document["studies"] for ser in s["series"] for e in ser["evidence"]}
    assert len(document["studies"]) >= 30
    error_files = {Path(e["path"]).name for e in document["errors"]}
    # only files the manifest marks malformed may fail, and each failure says why
    assert error_files <= {r["file"] for r in ROWS if r["kind"] == "malformed"} | {"README.md", "MANIFEST.csv"}
    assert all(e["reason"] for e in document["errors"])
    assert analysed


@pytest.mark.realworld
@pytest.mark.parametrize(
    "files",
    [
        ("ct_philips_ingenuity_original_axial.dcm", "sc_philips_ingenuity_exam_summary_surview.dcm"),
        ("mr_siemens_prisma_xa30_derived_relcbf.dcm", "sr_siemens_xa30_phoenix_report.dcm"),
    ],
)
def test_shared_study_pairs_have_no_3d(files: tuple[str, str], realworld: Path) -> None:
    document = analyze_json(*(realworld / f for f in files))
    assert len(document["studies"]) == 1
    study = document["studies"][0]
    assert study["outcome"] == "no_3d" and study["code"] is None
    assert {s["origin"] for s in study["series"]} == {"scanner_console"}

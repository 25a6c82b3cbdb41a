"""The documentation verdict: report statements held against the image decision (issue 12 §2), per outcome,
each flag raised alone, the verdict's precedence, and the fixture studies' final reports against their real
decisions. Real text through the shipped phrase set; real DICOM fixtures decided by the real rules."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dicomcheck.enums import Origin, Outcome, PacsViewerCode
from dicomcheck.registry import Policy
from dicomcheck.reports import Documentation, ReportFlag, documentation_verdict, read_statements

from .conftest import ROOT

REPORTS = ROOT / "fixtures" / "reports"

WS, CONSOLE, PACS, UNKNOWN = (
    Origin.INDEPENDENT_WORKSTATION,
    Origin.SCANNER_CONSOLE,
    Origin.PACS_VIEWER,
    Origin.UNKNOWN,
)
S76377, S76376, NO_3D, BUNDLED, REVIEW = (
    Outcome.SUPPORTS_76377,
    Outcome.SUPPORTS_76376,
    Outcome.NO_3D,
    Outcome.BUNDLED,
    Outcome.NEEDS_REVIEW,
)

COMPLETE = (
    "3D volume-rendered images were created on an independent workstation for surgical planning. "
    "They demonstrate a comminuted acetabular fracture."
)
"""What was made (3D, VR), where (independent workstation), why (surgical planning), what it showed."""
CONSOLE_REPORT = (
    "3D MIP images were created at the scanner console to evaluate the pulmonary arteries. They show no filling defect."
)


def verdict(outcome, text, origins=(), policy=None, *, final=True, waited=True):
    statements = read_statements(text) if text is not None else None
    return documentation_verdict(
        outcome,
        statements,
        final_report_received=final,
        waited_long_enough=waited,
        three_d_origins=origins,
        policy=policy,
    )


F = ReportFlag
CASES = [
    # ---- supports_76377: complete, then each flag raised alone
    ("76377 complete", S76377, COMPLETE, {WS}, Documentation.COMPLETE, []),
    (
        "76377 no '3D' in words",
        S76377,
        "Volume-rendered images were created on an independent workstation for surgical planning. "
        "They demonstrate a fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_3D_STATEMENT],
    ),
    (
        "76377 3D with no technique",
        S76377,
        "3D reconstructions were created on an independent workstation for surgical planning and demonstrate a "
        "fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_TECHNIQUE],
    ),
    (
        "76377 no reason",
        S76377,
        "3D volume-rendered images were created on an independent workstation. They demonstrate a fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_INDICATION],
    ),
    (
        "76377 clinical history is not the reason",
        S76377,
        "CLINICAL HISTORY: Fall, evaluate for fracture.\nTECHNIQUE: 3D volume-rendered images were created on an "
        "independent workstation. They demonstrate a fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_INDICATION],
    ),
    (
        "76377 no workstation",
        S76377,
        "3D volume-rendered images were created for surgical planning. They demonstrate a fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_WORKSTATION],
    ),
    (
        "76377 'PACS workstation' is not one",
        S76377,
        "3D volume-rendered images were created on the PACS workstation for surgical planning. They demonstrate a "
        "fracture.",
        {WS},
        Documentation.CONFLICTING,
        [F.REPORT_LACKS_WORKSTATION, F.REPORT_ORIGIN_CONFLICT],
    ),
    (
        "76377 a bare 'a workstation' is not one",
        S76377,
        "3D volume-rendered images were created on a workstation for surgical planning. They demonstrate a fracture.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_WORKSTATION],
    ),
    (
        "76377 a named product is one",
        S76377,
        "3D volume-rendered images were created on TeraRecon for surgical planning. They demonstrate a fracture.",
        {WS},
        Documentation.COMPLETE,
        [],
    ),
    (
        "76377 no 3D finding: no flag but incomplete",
        S76377,
        "3D volume-rendered images were created on an independent workstation for surgical planning.",
        {WS},
        Documentation.INCOMPLETE,
        [],
    ),
    (
        "76377 report that never mentions 3D",
        S76377,
        "Coronal and sagittal reformats were reviewed. The lungs are clear.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_3D_STATEMENT, F.REPORT_LACKS_TECHNIQUE, F.REPORT_LACKS_INDICATION, F.REPORT_LACKS_WORKSTATION],
    ),
    (
        "76377 3D negated",
        S76377,
        "No 3D reconstructions were performed.",
        {WS},
        Documentation.INCOMPLETE,
        [F.REPORT_LACKS_3D_STATEMENT, F.REPORT_LACKS_TECHNIQUE, F.REPORT_LACKS_INDICATION, F.REPORT_LACKS_WORKSTATION],
    ),
    # ---- supports_76376: no workstation needed; origin conflict alone
    ("76376 complete", S76376, CONSOLE_REPORT, {CONSOLE}, Documentation.COMPLETE, []),
    (
        "76376 report names a workstation, images show the console",
        S76376,
        COMPLETE,
        {CONSOLE},
        Documentation.CONFLICTING,
        [F.REPORT_ORIGIN_CONFLICT],
    ),
    (
        "76377 report names the console, images show a workstation",
        S76377,
        CONSOLE_REPORT,
        {WS},
        Documentation.CONFLICTING,
        [F.REPORT_LACKS_WORKSTATION, F.REPORT_ORIGIN_CONFLICT],
    ),
    (
        "76377 console and workstation both made 3D",
        S76377,
        CONSOLE_REPORT + " Volume rendering was done on a separate workstation for surgical planning.",
        {WS, CONSOLE},
        Documentation.COMPLETE,
        [],
    ),
    (
        "76376 reformats called 3D",
        S76376,
        "3D MIP images were created at the scanner console to evaluate the arteries and show no stenosis. "
        "3D multiplanar reformations were also performed.",
        {CONSOLE},
        Documentation.CONFLICTING,
        [F.REPORT_MPR_ONLY_CALLED_3D],
    ),
    (
        "conflicting outranks incomplete",
        S76376,
        "3D reconstructions were created on an independent workstation.",
        {CONSOLE},
        Documentation.CONFLICTING,
        [F.REPORT_LACKS_TECHNIQUE, F.REPORT_LACKS_INDICATION, F.REPORT_ORIGIN_CONFLICT],
    ),
    # ---- no_3d
    ("no_3d silent report", NO_3D, "The lungs are clear.", (), Documentation.COMPLETE, []),
    ("no_3d MPR only", NO_3D, "Coronal and sagittal reformats were obtained.", (), Documentation.COMPLETE, []),
    (
        "no_3d report says no 3D",
        NO_3D,
        "Coronal reformats were obtained. No 3D reconstructions were performed.",
        (),
        Documentation.COMPLETE,
        [],
    ),
    ("no_3d hypothetical 3D", NO_3D, "3D reconstructions can be performed on request.", (), Documentation.COMPLETE, []),
    (
        "no_3d report claims 3D",
        NO_3D,
        "3D volume rendering was performed.",
        (),
        Documentation.CONFLICTING,
        [F.REPORT_3D_WITHOUT_IMAGES],
    ),
    (
        "no_3d report names a technique only",
        NO_3D,
        "MIP images of the chest were reviewed.",
        (),
        Documentation.CONFLICTING,
        [F.REPORT_3D_WITHOUT_IMAGES],
    ),
    (
        "no_3d reformats called 3D",
        NO_3D,
        "3D multiplanar reformations were performed.",
        (),
        Documentation.CONFLICTING,
        [F.REPORT_MPR_ONLY_CALLED_3D],
    ),
    # ---- bundled: statements recorded, never a flag
    ("bundled complete report", BUNDLED, COMPLETE, {WS}, Documentation.COMPLETE, []),
    ("bundled silent report", BUNDLED, "CTA of the head shows no aneurysm.", {CONSOLE}, Documentation.COMPLETE, []),
    ("bundled report contradicting the images", BUNDLED, COMPLETE, {CONSOLE}, Documentation.COMPLETE, []),
    # ---- needs_review: no lacks-flags; only contradictions
    ("needs_review silent report", REVIEW, "The lungs are clear.", {UNKNOWN}, Documentation.COMPLETE, []),
    (
        "needs_review place contradicts a known origin",
        REVIEW,
        CONSOLE_REPORT,
        {WS},
        Documentation.CONFLICTING,
        [F.REPORT_ORIGIN_CONFLICT],
    ),
    (
        "needs_review unknown origin is never contradicted",
        REVIEW,
        CONSOLE_REPORT,
        {UNKNOWN},
        Documentation.COMPLETE,
        [],
    ),
    (
        "needs_review reformats called 3D",
        REVIEW,
        "3D multiplanar reformations were performed.",
        {UNKNOWN},
        Documentation.CONFLICTING,
        [F.REPORT_MPR_ONLY_CALLED_3D],
    ),
]


@pytest.mark.parametrize(
    ("outcome", "text", "origins", "documentation", "flags"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdict_table(outcome, text, origins, documentation, flags):
    result = verdict(outcome, text, origins)
    assert (result.documentation, list(result.flag_names)) == (documentation, flags)
    for flag in result.flags:
        assert flag.reason.endswith(".") and len(flag.reason) > 30


def test_every_flag_and_verdict_is_exercised():
    assert {flag for c in CASES for flag in c[5]} | {F.REPORT_MISSING} == set(ReportFlag)
    assert {c[4] for c in CASES} | {Documentation.MISSING} == set(Documentation)


@pytest.mark.parametrize("outcome", [S76377, S76376])
def test_no_final_report_of_a_coded_study_is_missing_and_flagged_after_the_wait(outcome):
    waited = verdict(outcome, None, final=False, waited=True)
    assert waited.documentation is Documentation.MISSING and waited.flag_names == (F.REPORT_MISSING,)
    assert outcome.code in waited.flags[0].reason
    early = verdict(outcome, None, final=False, waited=False)
    assert early.documentation is Documentation.MISSING and early.flag_names == ()
    assert "once the configured wait has passed" in early.notes[0]


@pytest.mark.parametrize("outcome", [NO_3D, BUNDLED, REVIEW])
def test_no_final_report_of_another_study_is_missing_without_a_flag(outcome):
    result = verdict(outcome, None, final=False, waited=True)
    assert (result.documentation, result.flag_names) == (Documentation.MISSING, ())


def test_a_preliminary_report_is_recorded_but_not_judged():
    result = verdict(S76377, COMPLETE, {WS}, final=False, waited=True)
    assert result.documentation is Documentation.MISSING and result.flag_names == (F.REPORT_MISSING,)
    assert result.statements is not None and result.statements.states_3d
    assert any("not final" in note for note in result.notes)


def test_a_final_report_needs_its_statements():
    with pytest.raises(ValueError, match="no statements"):
        documentation_verdict(S76377, None, final_report_received=True, waited_long_enough=True)


def test_the_site_policy_decides_minip_curved_mpr_and_the_pacs_viewer():
    minip = "3D minimum intensity projection images were reviewed."
    assert verdict(NO_3D, minip).flag_names == (F.REPORT_3D_WITHOUT_IMAGES,)
    not_3d = Policy(minip_is_3d=False)
    assert verdict(NO_3D, "Minimum intensity projections were reviewed.", policy=not_3d).flag_names == ()

    curved = (
        "3D curved planar reformations were created at the scanner console for stent planning. They demonstrate a "
        "3.9 cm aorta."
    )
    reformats = verdict(S76376, curved, {CONSOLE})  # by default curved reformats are 2D: nothing 3D is stated
    assert reformats.flag_names == (F.REPORT_LACKS_3D_STATEMENT, F.REPORT_LACKS_TECHNIQUE, F.REPORT_MPR_ONLY_CALLED_3D)
    as_3d = verdict(S76376, curved, {CONSOLE}, policy=Policy(curved_mpr_is_3d=True))
    assert (as_3d.documentation, as_3d.flag_names) == (Documentation.COMPLETE, ())

    viewer_as_workstation = Policy(pacs_viewer_code=PacsViewerCode.CODE_76377)
    assert verdict(S76377, COMPLETE, {PACS}).flag_names == (F.REPORT_ORIGIN_CONFLICT,)
    assert verdict(S76377, COMPLETE, {PACS}, policy=viewer_as_workstation).documentation is Documentation.COMPLETE


def test_notes_say_what_was_not_checked():
    assert any("not given" in n for n in verdict(S76377, COMPLETE).notes)
    assert any("unknown origin" in n for n in verdict(REVIEW, COMPLETE, {UNKNOWN, WS}).notes)
    assert any("settle no code" in n for n in verdict(REVIEW, COMPLETE, {WS}).notes)
    truncated = verdict(S76377, COMPLETE + " The liver is normal." * 6_000, {WS})
    assert truncated.statements is not None and truncated.statements.truncated
    assert any("longer than the part read" in n for n in truncated.notes)


def test_reasons_quote_the_report_and_the_document_is_json():
    result = verdict(S76376, COMPLETE, {CONSOLE})
    [conflict] = result.flags
    assert "independent workstation" in conflict.reason and "the scanner console" in conflict.reason
    assert [s.phrase for s in conflict.statements] == ["independent workstation"]
    document = result.document()
    assert json.loads(json.dumps(document)) == document
    assert document["documentation"] == "conflicting" and document["flags"] == ["report_origin_conflict"]
    assert document["reasons"][0]["sentences"] == [conflict.statements[0].sentence]
    assert document["statements"] and all("sentence" in s for s in document["statements"])


def test_values_are_the_issue_vocabulary():
    assert {f.value for f in ReportFlag} == {
        "report_missing",
        "report_lacks_3d_statement",
        "report_lacks_technique",
        "report_lacks_indication",
        "report_lacks_workstation",
        "report_3d_without_images",
        "report_origin_conflict",
        "report_mpr_only_called_3d",
    }
    assert [d.value for d in Documentation] == ["complete", "incomplete", "missing", "conflicting"]


# ------------------------------------------------------------------------------------------- fixture reports


def _manifest() -> dict:
    return tomllib.loads((REPORTS / "manifest.toml").read_text("utf-8"))


def test_every_fixture_study_has_a_final_report():
    from fixtures.build import CASES as FIXTURE_CASES

    names = {case.name for case in FIXTURE_CASES}
    assert set(_manifest()) == names
    assert {p.stem for p in REPORTS.glob("*.txt")} == names
    verdicts = {entry["documentation"] for entry in _manifest().values()}
    assert {"complete", "incomplete", "conflicting"} <= verdicts


def _decide(folder: Path):
    from dicomcheck.analysis import decide_studies
    from dicomcheck.registry import Registry, load_registry
    from dicomcheck.sources import discover, read_facts

    sources, errors = discover([folder])
    assert not errors
    registry_file = folder / "devices.toml"
    registry = load_registry(registry_file) if registry_file.is_file() else Registry()
    [decision] = decide_studies([read_facts(s) for s in sources], registry=registry)
    return decision, registry.policy


@pytest.mark.parametrize("case", sorted(_manifest()))
def test_fixture_report_gets_its_expected_verdict(case, fixtures_output):
    expected = _manifest()[case]
    decision, policy = _decide(fixtures_output / case)
    recorded = json.loads((fixtures_output / case / "expected.json").read_text())
    assert decision.outcome == recorded["outcome"]  # the decision the report is held against
    origins = {series.origin for series in decision.series if series.is_3d}
    text = (REPORTS / f"{case}.txt").read_text("utf-8")
    result = documentation_verdict(
        decision.outcome,
        read_statements(text),
        final_report_received=True,
        waited_long_enough=True,
        three_d_origins=origins,
        policy=policy,
    )
    assert result.documentation.value == expected["documentation"], [f.reason for f in result.flags]
    assert [f.value for f in result.flag_names] == expected["flags"]

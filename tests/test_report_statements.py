"""The report reader: real-style report sentences and whole reports -> the statements they make, and the
phrase set's validation. No mocks: the shipped phrase set, real text.

Each table row is one report sentence and the statements expected from it, written as short codes:
``3d`` 3D wording, ``mip minip vr ssd seg`` 3D techniques, ``mpr cpr thick`` reformats, ``called``
reformats called 3D, ``ws console pacs station`` places (``station``: an unqualified workstation),
``ind`` indication, ``find`` finding. A prefix gives the assertion: ``-`` negated, ``?`` hypothetical,
``^`` historical (none: affirmed).
"""

from __future__ import annotations

import random
import tomllib
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomcheck.enums import Origin, Technique
from dicomcheck.reports import (
    Assertion,
    PhraseSetError,
    ReportStatements,
    StatementKind,
    builtin_phrases,
    load_phrases,
    read_statements,
)
from dicomcheck.reports.phrases import FILE_NAME, parse_phrases
from dicomcheck.reports.sentences import split_sentences
from dicomcheck.reports.statements import MAX_REPORT_CHARS

_TECHNIQUE_CODES = {
    Technique.MIP: "mip",
    Technique.MINIP: "minip",
    Technique.VOLUME_RENDER: "vr",
    Technique.SURFACE_RENDER: "ssd",
    Technique.SEGMENTATION: "seg",
    Technique.MPR: "mpr",
    Technique.CURVED_MPR: "cpr",
    Technique.THICK_MPR: "thick",
}
_PLACE_CODES = {
    Origin.INDEPENDENT_WORKSTATION: "ws",
    Origin.SCANNER_CONSOLE: "console",
    Origin.PACS_VIEWER: "pacs",
    Origin.UNKNOWN: "station",
}
_PREFIX = {Assertion.AFFIRMED: "", Assertion.NEGATED: "-", Assertion.HYPOTHETICAL: "?", Assertion.HISTORICAL: "^"}


def codes(statements: ReportStatements) -> set[str]:
    found = set()
    for s in statements.statements:
        if s.kind is StatementKind.THREE_D:
            code = "3d"
        elif s.kind in (StatementKind.TECHNIQUE, StatementKind.REFORMAT):
            assert s.technique is not None
            code = _TECHNIQUE_CODES[s.technique]
        elif s.kind is StatementKind.REFORMAT_CALLED_3D:
            code = "called"
        elif s.kind is StatementKind.PLACE:
            assert s.place is not None
            code = _PLACE_CODES[s.place]
        else:
            code = {StatementKind.INDICATION: "ind", StatementKind.FINDING: "find"}[s.kind]
        found.add(_PREFIX[s.assertion] + code)
    return found


SENTENCES = [
    # ---- 3D stated, techniques named (US and British spelling, abbreviations)
    ("3D volume-rendered images were created.", {"3d", "vr"}),
    ("Three-dimensional reconstructions were performed.", {"3d"}),
    ("3-D reconstructions of the pelvis were obtained.", {"3d"}),
    ("Three dimensional (3D) surface rendering of the facial bones was performed.", {"3d", "ssd"}),
    ("Maximum intensity projection images were generated.", {"mip"}),
    ("MIP and VR reconstructions were performed.", {"mip", "vr"}),
    ("Thin-slab MIPs of the pulmonary arteries were reviewed.", {"mip"}),
    ("Minimum intensity projections of the airways were created.", {"minip"}),
    ("MinIP images show mosaic attenuation.", {"minip", "find"}),
    ("Shaded surface display (SSD) images of the skull were generated.", {"ssd"}),
    ("Surface-rendered images of the fetal face were obtained.", {"ssd"}),
    ("Volumetric analysis of the liver was performed with semi-automated segmentation.", {"seg"}),
    ("Cinematic rendering of the heart was performed.", {"vr"}),
    ("VRT images of the aorta were created.", {"vr"}),
    ("3D rendering was performed.", {"3d"}),
    ("The images were rendered in 3D.", {"3d"}),
    ("Virtual bronchoscopy images were generated.", {"vr"}),
    ("3D volume-rendered reconstructions were made to characterise the fracture.", {"3d", "vr", "ind"}),
    ("Three-dimensional reconstruction was undertaken for surgical planning.", {"3d", "ind"}),
    ("SSD reconstructions of the mandible were created.", {"ssd"}),
    ("3D VOLUME RENDERED IMAGES WERE CREATED ON AN INDEPENDENT WORKSTATION.", {"3d", "vr", "ws"}),
    # ---- reformats only (not 3D), and reformats next to 3D
    ("Coronal and sagittal reformats were obtained.", {"mpr"}),
    ("Multiplanar reformations were reviewed.", {"mpr"}),
    ("MPRs were performed in the coronal and sagittal planes.", {"mpr"}),
    ("Sagittal and coronal reconstructions demonstrate no fracture.", {"mpr"}),
    ("Axial, coronal and sagittal recons were sent to PACS.", {"mpr"}),
    ("Curved planar reformations of the coronary arteries were created.", {"cpr"}),
    ("Stretched CPR views of the right coronary artery were generated.", {"cpr"}),
    ("Curved MPR images of the pancreatic duct were created.", {"cpr"}),
    ("Average intensity projection images were reviewed.", {"thick"}),
    ("Coronal MIP reconstructions were obtained.", {"mip"}),
    ("Coronal, sagittal and 3D reconstructions were obtained.", {"mpr", "3d"}),
    ("MPR and 3D images were created.", {"mpr", "3d"}),
    ("3D and multiplanar reconstructions were performed.", {"3d", "mpr"}),
    ("Status post CPR, rib fractures are noted.", set()),
    # ---- reformats called 3D
    ("3D multiplanar reformations were performed.", {"called"}),
    ("3D coronal and sagittal reformats were generated.", {"called"}),
    ("3D MPR images were created.", {"called"}),
    ("Coronal 3D reformats were created.", {"called"}),
    ("3D curved reformats of the aorta were created.", {"called"}),
    # ---- negated
    ("No 3D reconstructions were performed.", {"-3d"}),
    ("3D rendering was not obtained.", {"-3d"}),
    ("CT of the abdomen without volume rendering.", {"-vr"}),
    ("3D reconstructions were not performed as they were not clinically indicated.", {"-3d"}),
    ("Neither MIP nor volume-rendered images were generated.", {"-mip", "-vr"}),
    ("No MIP or 3D images were created.", {"-mip", "-3d"}),
    ("MPR images only; no 3D rendering was performed.", {"mpr", "-3d"}),
    ("Three-dimensional post-processing was deferred.", {"-3d"}),
    ("3D reconstructions: none.", {"-3d"}),
    ("Volume rendering was not possible due to motion.", {"-vr"}),
    ("3D reconstructions could not be obtained because of streak artefact.", {"-3d"}),
    ("3D images weren't generated.", {"-3d"}),
    # ---- negation that is not about the 3D work
    ("There is no fracture on the 3D reconstructions.", {"3d", "find"}),
    ("The 3D images do not show a fracture.", {"3d", "find"}),
    ("No acute fracture is identified; the volume-rendered images demonstrate old rib fractures.", {"vr", "find"}),
    ("Images were obtained without contrast and 3D reconstructions were performed.", {"3d"}),
    ("Non-contrast CT with MIP images of the chest.", {"mip"}),
    # ---- hypothetical and historical
    ("3D reconstructions can be performed on request.", {"?3d"}),
    ("Recommend 3D reconstruction for surgical planning.", {"?3d"}),
    ("If clinically indicated, volume-rendered images could be obtained.", {"?vr"}),
    ("3D images can be viewed in PACS.", {"3d"}),
    ("Compared with the prior 3D reconstructions from 2019 the fracture has healed.", {"^3d"}),
    ("CLINICAL HISTORY: Facial trauma, 3D reconstructions requested.", {"^3d"}),
    ("EXAM: CT FACIAL BONES WITH 3D RECONSTRUCTIONS", {"^3d"}),
    # ---- MR sequences, printing: not rendering
    ("Sagittal 3D T1 MPRAGE images were acquired.", set()),
    ("3D TOF MRA of the circle of Willis was performed.", set()),
    ("A 3D printed model was requested.", set()),
    ("3D FLAIR sequence shows no abnormality.", set()),
    # ---- places
    ("3D reconstructions were performed on an independent workstation.", {"3d", "ws"}),
    ("Volume rendering was performed on a separate workstation.", {"vr", "ws"}),
    ("Post-processing was performed on an offline workstation.", {"ws"}),
    ("3D images were created in the 3D lab.", {"3d", "ws"}),
    ("VR images were generated on a Vitrea workstation.", {"vr", "ws"}),
    ("MIPs were created using syngo.via.", {"mip", "ws"}),
    ("Surface renderings were produced on the GE AW Server.", {"ssd", "ws"}),
    ("TeraRecon iNtuition was used for the 3D analysis.", {"3d", "ws"}),
    ("3D reconstructions were created on IntelliSpace Portal.", {"3d", "ws"}),
    ("3D volume rendering was performed on a dedicated 3D workstation.", {"3d", "vr", "ws"}),
    ("3D reconstructions were performed at the scanner console.", {"3d", "console"}),
    ("MIP images were created on the CT console by the technologist.", {"mip", "console"}),
    ("Volume-rendered images were reviewed on the PACS workstation.", {"vr", "pacs"}),
    ("3D images were made on a workstation.", {"3d", "station"}),
    ("3D images were generated at the console, not on an independent workstation.", {"3d", "console", "-ws"}),
    ("The patient was positioned on the scanner.", set()),
    ("Images were sent to PACS and reviewed on a workstation.", set()),
    # ---- indications (a reason for the 3D, not the clinical history)
    ("3D reconstructions were obtained to better evaluate the fracture.", {"3d", "ind"}),
    ("For preoperative planning, volume-rendered images were created.", {"vr", "ind"}),
    ("Liver volumetry was performed for preoperative planning.", {"seg", "ind"}),
    ("3D VR images were created at the request of the orthopaedic surgeon.", {"3d", "vr", "ind"}),
    ("CT chest was performed to evaluate for pulmonary embolism.", set()),
    ("Coronal reformats were obtained to evaluate the fracture.", {"mpr"}),
    ("Reason for 3D: complex acetabular fracture.", {"ind"}),
    ("Indication for 3D: preoperative planning.", {"ind"}),
    # ---- findings
    ("The 3D reconstructions demonstrate a comminuted fracture of the left acetabulum.", {"3d", "find"}),
    ("Volume-rendered images show a 5.2 cm infrarenal abdominal aortic aneurysm.", {"vr", "find"}),
    ("MIP images confirm a patent left anterior descending artery stent.", {"mip", "find"}),
    ("3D reconstructions were performed to better demonstrate the fracture.", {"3d", "ind"}),
    (
        "3D VR and MIP images were created on an independent workstation for surgical planning and demonstrate "
        "a displaced fracture.",
        {"3d", "vr", "mip", "ws", "ind", "find"},
    ),
]


def test_the_table_is_large_and_varied():
    assert len(SENTENCES) >= 60
    expected = set().union(*(e for _, e in SENTENCES))
    for code in ("3d", "-3d", "?3d", "^3d", "mip", "minip", "vr", "ssd", "seg", "mpr", "cpr", "thick", "called"):
        assert code in expected, code
    for code in ("ws", "-ws", "console", "pacs", "station", "ind", "find"):
        assert code in expected, code


@pytest.mark.parametrize(("sentence", "expected"), SENTENCES, ids=[s[:60] for s, _ in SENTENCES])
def test_sentence(sentence, expected):
    assert codes(read_statements(sentence)) == expected


@pytest.mark.parametrize(
    ("sentence", "product"),
    [
        ("VR images were generated on a Vitrea workstation.", "vital-images-vitrea"),
        ("MIPs were created using syngo.via.", "siemens-syngo-via"),
        ("Surface renderings were produced on the GE AW Server.", "ge-advantage-workstation"),
        ("3D images were created with Volume Viewer.", "ge-volume-viewer"),
    ],
)
def test_a_named_product_is_the_fingerprint_product(sentence, product):
    names = {p.id: p.name for p in _products()}
    places = read_statements(sentence).affirmed(StatementKind.PLACE)
    assert names[product] in {s.product for s in places}


def test_a_product_that_runs_on_consoles_and_workstations_names_no_place():
    statements = read_statements("3D images were created with Volume Viewer.")
    assert statements.states_3d and not statements.places


def _products():
    from dicomcheck.knowledge import builtin_knowledge

    return builtin_knowledge().products


# ------------------------------------------------------------------------------------------- whole reports

COMPLETE_76377 = """\
EXAM: CT FACIAL BONES WITHOUT CONTRAST WITH 3D RECONSTRUCTION

CLINICAL HISTORY: Fall. Facial pain. Evaluate for fracture.

TECHNIQUE: Axial images of the facial bones were obtained without intravenous contrast. Coronal and
sagittal reformats were generated. 3D volume rendered images were created by the radiologist on an
independent workstation (Vitrea) for surgical planning at the request of Dr. Jones.

FINDINGS:
There is a comminuted fracture of the left zygomatic arch. The 3D reconstructions demonstrate
depression of the arch by approx. 6 mm and involvement of the lateral orbital wall.

IMPRESSION:
1. Left zygomaticomaxillary complex fracture.
2. No orbital floor fracture.
"""


def test_a_complete_report_states_every_element_with_its_sentence():
    statements = read_statements(COMPLETE_76377)
    assert statements.three_d_stated and statements.techniques == {Technique.VOLUME_RENDER}
    assert statements.workstation_stated and statements.indication_stated and statements.findings_stated
    assert statements.reformats == {Technique.MPR} and not statements.mpr_only
    title = [s for s in statements.statements if s.assertion is Assertion.HISTORICAL]
    assert [s.phrase for s in title] == ["3D RECONSTRUCTION"]  # the exam title is the order, not a statement
    finding = statements.affirmed(StatementKind.FINDING)[0]
    assert finding.sentence.startswith("The 3D reconstructions demonstrate")
    assert "approx. 6 mm" in finding.sentence  # "approx." does not end the sentence
    indication = statements.affirmed(StatementKind.INDICATION)
    assert {s.phrase for s in indication} >= {"for surgical planning"}


def test_spans_cite_the_text_exactly():
    for text in (COMPLETE_76377, COMPLETE_76377.replace("\n", "\r\n"), COMPLETE_76377.upper()):
        statements = read_statements(text)
        assert statements.statements
        for s in statements.statements:
            assert text[s.start : s.end] == s.phrase
            assert text[s.sentence_start : s.sentence_end] == s.sentence
            assert s.sentence_start <= s.start < s.end <= s.sentence_end


def test_sentence_splitting_copes_with_report_formatting():
    text = (
        "FINDINGS: The mass measures approx. 3.2 x 2.1 cm, per Dr. Smith e.g. on series 3. No change.\n"
        "IMPRESSION: 1. Fracture. 2. No dislocation.\n"
        "- Bullet one\n"
        "- Bullet two\n"
        "3D volume rendered images were created on an independent\n"
        "workstation.\n"
        "\n"
        "Signed 10:30 by J. Smith, MD"
    )
    phrases = builtin_phrases()
    sentences = [text[s.start : s.end] for s in split_sentences(text, phrases)]
    assert sentences == [
        "FINDINGS: The mass measures approx. 3.2 x 2.1 cm, per Dr. Smith e.g. on series 3.",
        "No change.",
        "IMPRESSION: 1. Fracture.",
        "2. No dislocation.",
        "- Bullet one",
        "- Bullet two",
        "3D volume rendered images were created on an independent\nworkstation.",
        "Signed 10:30 by J. Smith, MD",
    ]
    assert [s.paragraph_start for s in split_sentences(text, phrases)][-1]
    assert read_statements(text).workstation_stated  # the wrapped "independent / workstation"


def test_hard_wrapped_capitals_are_joined():
    text = (
        "3D VOLUME RENDERED AND MAXIMUM INTENSITY PROJECTION IMAGES WERE CREATED ON AN\n"
        "INDEPENDENT WORKSTATION FOR PREOPERATIVE PLANNING. THEY DEMONSTRATE A 5.1 CM\n"
        "INFRARENAL AORTIC ANEURYSM.\n"
    )
    statements = read_statements(text)
    assert statements.sentences == 2
    assert statements.workstation_stated and statements.indication_stated and statements.findings_stated
    assert statements.techniques == {Technique.VOLUME_RENDER, Technique.MIP}


def test_a_finding_may_follow_in_the_next_sentence_or_under_a_3d_heading():
    follow = read_statements("3D volume rendered images were created. They demonstrate a displaced fracture.")
    assert follow.findings_stated
    heading = read_statements(
        "3D RECONSTRUCTIONS:\nVolume rendered images were created on a Vitrea workstation.\n"
        "The fracture extends into the articular surface.\n\nIMPRESSION: Fracture."
    )
    assert heading.findings_stated and heading.workstation_stated
    unrelated = read_statements("3D volume rendered images were created.\n\nThe liver appears normal.")
    assert not unrelated.findings_stated  # a new paragraph: not about the 3D images


def test_a_negated_3d_heading_and_no_3d_mention_give_no_3d_statement():
    for text in ("3D RECONSTRUCTIONS:\nNot performed.", "3D: N/A", "TECHNIQUE: Axial images. MPR only."):
        statements = read_statements(text)
        assert not statements.states_3d, text
    assert read_statements("3D RECONSTRUCTIONS:\nNot performed.").negated_3d


def test_mpr_only_wording_is_recorded_as_such():
    statements = read_statements("Coronal and sagittal reformats were obtained. No 3D reconstructions were performed.")
    assert statements.mpr_only and not statements.states_3d and statements.negated_3d
    assert not read_statements("Coronal reformats and MIP images were obtained.").mpr_only


def test_the_console_as_the_place():
    assert read_statements("3D MIP images were created at the scanner console.").console_stated
    assert not read_statements("3D MIP images were created on an independent workstation.").console_stated


def test_a_place_needs_a_sentence_about_post_processing():
    assert read_statements("The study was reviewed on the PACS workstation.").places == frozenset()
    assert read_statements("MIPs were made. This was done on the PACS workstation.").places == {Origin.PACS_VIEWER}


def test_document_is_json_ready():
    import json

    document = read_statements(COMPLETE_76377).document()
    assert json.loads(json.dumps(document)) == document
    assert {"kind", "assertion", "phrase", "span", "sentence", "sentence_span"} <= set(document[0])


def test_a_long_report_is_read_up_to_the_limit():
    long = ("The liver is normal. " * 5_000) + "3D volume rendered images were created."
    statements = read_statements(long)
    assert statements.truncated and not statements.states_3d
    assert read_statements(long, max_chars=len(long)).states_3d
    assert len(long) > MAX_REPORT_CHARS


# ------------------------------------------------------------------------------------------- properties

_REPORT_TEXT = (
    "3D 3-D three-dimensional volume rendered rendering MIP MinIP VR SSD surface segmentation reformats coronal "
    "sagittal multiplanar MPR curved reconstructions images no not without were performed obtained can be prior "
    "independent workstation console PACS Vitrea for surgical planning demonstrate and or , . ; : IMPRESSION: 1. "
    "approx. Dr. T1 printed they"
)
_REPORT_WORDS = [*_REPORT_TEXT.split(" "), "\n", "\n\n"]


def _check_invariants(text: str) -> None:
    statements = read_statements(text)
    for s in statements.statements:
        assert text[s.start : s.end] == s.phrase
        assert text[s.sentence_start : s.sentence_end] == s.sentence
    if statements.mpr_only:
        assert not statements.states_3d
    three_d = [
        s for s in statements.statements if s.kind in (StatementKind.THREE_D, StatementKind.TECHNIQUE) and s.affirmed
    ]
    for reformat in statements.affirmed(StatementKind.REFORMAT, StatementKind.REFORMAT_CALLED_3D):
        assert all((reformat.start, reformat.end) != (s.start, s.end) for s in three_d)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_never_raises_on_any_text(text):
    _check_invariants(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_REPORT_WORDS), max_size=60).map(" ".join))
def test_report_like_text_keeps_the_invariants(text):
    _check_invariants(text)


@pytest.mark.parametrize(
    "make",
    [
        lambda: COMPLETE_76377 * (1_048_576 // len(COMPLETE_76377)),
        lambda: "3D " * 400_000,
        lambda: "a" * 1_048_576,
        lambda: "\n" * 1_048_576,
        lambda: ". A" * 350_000,
        lambda: "".join(map(chr, random.Random(7).choices(range(0x20, 0x2FFFF), k=1_048_576))),
        lambda: "\u0130\u00df\ufb03\u2028\u0085\x00\ud7ff\U0001f600 3D rendering " * 60_000,
    ],
    ids=["reports", "3d", "one-word", "newlines", "periods", "random-unicode", "case-changing-unicode"],
)
def test_a_megabyte_never_raises(make):
    _check_invariants(make())


# ------------------------------------------------------------------------------------------- the phrase set


def _shipped() -> dict:
    return tomllib.loads(resources.files("dicomcheck.knowledge").joinpath(FILE_NAME).read_text("utf-8"))


def test_every_section_names_its_source():
    data = _shipped()
    for key, value in data.items():
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            assert key == "product" or row["source"].strip(), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["three_d"].update(colour="red"), r"\[three_d\]: unknown key 'colour'"),
        (lambda d: d["negation"].update(before=[]), r"\[negation\] before: must be a non-empty list"),
        (lambda d: d["finding"].pop("source"), r"\[finding\]: missing key 'source'"),
        (lambda d: d["technique"][0].update(technique="hologram"), r"'hologram' is not a technique"),
        (lambda d: d["place"][0].update(place="moon"), r"'moon' is not an origin"),
        (lambda d: d["product"][0].update(fingerprint="acme-3d"), r"'acme-3d' is not a product"),
        (lambda d: d["sentences"].update(max_chars=0), r"max_chars: must be a positive integer"),
        (lambda d: d["indication"]["cues"].append("to evaluate"), r"repeats 'to evaluate'"),
        (lambda d: d["context"]["cues"].append("(re)render"), r"malformed entry"),
        (lambda d: d.update(extra={"source": "x"}), r"\[extra\]: unknown section"),
        (lambda d: d["hypothetical"].pop("after_gap"), r"go together"),
    ],
)
def test_a_malformed_phrase_set_fails_loudly_with_file_and_key(change, message):
    data = _shipped()
    change(data)
    with pytest.raises(PhraseSetError, match=message) as raised:
        parse_phrases(data, "report_phrases.toml", _products())
    assert str(raised.value).startswith("report_phrases.toml: ")


def test_a_file_that_is_not_toml_is_named():
    with pytest.raises(PhraseSetError, match=r"^broken\.toml: not TOML"):
        load_phrases("[three_d\n", "broken.toml")


def test_a_product_with_no_role_of_its_own_names_no_place():
    statements = read_statements("3D images were created in RadiAnt DICOM Viewer and OsiriX.")
    assert statements.states_3d and not statements.places
    assert {s.product for s in statements.affirmed(StatementKind.PLACE)} == {"RadiAnt DICOM Viewer", "OsiriX"}

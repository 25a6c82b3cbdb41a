"""Series kind: what a series is. Pure functions over :class:`InstanceFacts`.

Signals, most specific first (``decision-outcomes.md``): SOP class, Volume Based Calculation
Technique, derivation code, vendor Image Type token (value 4+), Image Type value 3, Derivation
Description, Series Description. Only a signal that *names* a technique counts; generic values
(AXIAL, REFORMATTED, OTHER, RECON TOMO) name none and never outrank a technique named lower down.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from pydicom.uid import UID

from ..enums import RuleId, SeriesKind, Technique
from ..model import Evidence, InstanceFacts, KindDecision, RuleHit
from .tags import tag_of

SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
_SOP_CLASS_KIND = {
    "1.2.840.10008.5.1.4.1.1.66.4": (SeriesKind.SEGMENTATION, Technique.SEGMENTATION),
    "1.2.840.10008.5.1.4.1.1.66.5": (SeriesKind.SEGMENTATION, Technique.SEGMENTATION),
    "1.2.840.10008.5.1.4.1.1.66.7": (SeriesKind.SEGMENTATION, Technique.SEGMENTATION),
    "1.2.840.10008.5.1.4.1.1.11.9": (SeriesKind.VOLUME_RENDER, Technique.VOLUME_RENDER),
    "1.2.840.10008.5.1.4.1.1.11.10": (SeriesKind.VOLUME_RENDER, Technique.VOLUME_RENDER),
    "1.2.840.10008.5.1.4.1.1.11.11": (SeriesKind.VOLUME_RENDER, Technique.VOLUME_RENDER),
    "1.2.840.10008.5.1.4.1.1.11.6": (SeriesKind.MPR, Technique.MPR),
    "1.2.840.10008.5.1.4.1.1.11.7": (SeriesKind.MPR, Technique.MPR),
}
_NON_IMAGE_NAME = re.compile(
    r"SR Storage|Structured Report|Key Object|Presentation State|Raw Data|Encapsulated|Waveform|"
    r"ECG|Registration|Fiducials|Real World Value|RT Plan|RT Structure|RT Beams|RT Treatment|"
    r"RT Ion|Measurements|Report|Surface Scan|Tractography|Content Assessment|Hanging Protocol|"
    r"Color Palette|Implant|Protocol Storage|Audio|Annotation",
    re.IGNORECASE,
)
_NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "REG", "RWV", "FID", "DOC", "PLAN", "RTPLAN", "RTSTRUCT"})

# Volume Based Calculation Technique (0008,9207) defined terms.
_VOLUME_TECHNIQUES = {
    "MAX_IP": Technique.MIP,
    "MIN_IP": Technique.MINIP,
    "VOLUME_RENDER": Technique.VOLUME_RENDER,
    "SURFACE_RENDER": Technique.SURFACE_RENDER,
    "MPR": Technique.MPR,
    "CURVED_MPR": Technique.CURVED_MPR,
}
# CID 7203 Image Derivation codes that name a technique.
_DERIVATION_CODES = {
    "113072": Technique.MPR,
    "113073": Technique.CURVED_MPR,
    "113074": Technique.VOLUME_RENDER,
    "113075": Technique.SURFACE_RENDER,
    "113076": Technique.SEGMENTATION,
    "113078": Technique.MIP,
    "113079": Technique.MINIP,
}
COMPRESSION_CODES = frozenset({"113040", "121327", "121320", "121330"})
_COMPRESSION_TEXT = re.compile(r"LOSSY|LOSSLESS|COMPRESS|JPEG|J2K|JPEG ?2000|\bRLE\b", re.IGNORECASE)

# Image Type tokens (values 3 and later), matched against the whole token.
_TOKENS: tuple[tuple[re.Pattern[str], Technique], ...] = tuple(
    (re.compile(pattern), technique)
    for pattern, technique in (
        (r"^(?:CT_SOM\d+ |CSA )?(?:MIN ?IP|MNIP|MINIP|MIN_IP)(?:[ _].*)?$", Technique.MINIP),
        (r"^(?:CT_SOM\d+ |CSA |HD )?(?:MIP|MAX_IP)(?:[ _].*)?$", Technique.MIP),
        (r"^PROJECTION IMAGE$", Technique.MIP),
        (r"^(?:CSA |CT_SOM\d+ )?(?:SSD|SURFACE[ _]?REND\w*)$", Technique.SURFACE_RENDER),
        (
            r"^(?:CT_SOM\d+ |CSA )?(?:VRT|VR|VOLREN|VOLUME[ _]?REND\w*|3D ?PROJECTION|CINEMATIC\w*)$",
            Technique.VOLUME_RENDER,
        ),
        (r"^(?:CSA |CT_SOM\d+ )?(?:CPR|CURVED(?:[ _]MPR)?|CURVED[ _]PLANAR\w*)$", Technique.CURVED_MPR),
        (r"^(?:(?:CSA )?MPR[ _]THICK.*|AVERAGE|AVG|THICK ?SLAB)$", Technique.THICK_MPR),
        (r"^(?:CT_SOM\d+ |CSA )?MPR(?:[ _].*)?$", Technique.MPR),
        (
            r"^(?:SCREEN ?SAVE|DOSE_?INFO|DOSE ?REPORT|REF_SURVIEW|PATIENT_INFO|RESULTS|CT_SOM\d+ PROT)$",
            Technique.NOT_3D,
        ),
    )
)
# Free text (Derivation Description, Series Description), searched in this order.
_TEXT: tuple[tuple[re.Pattern[str], Technique], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), technique)
    for pattern, technique in (
        (r"\bMIN(?:IMUM)?[ -]?(?:INTENSITY[ -]?)?(?:IP|PROJ\w*)\b|\bMINIP\b|\bMNIP\b", Technique.MINIP),
        (r"\bMIPS?\b|MAXIMUM[ -]INTENSITY|\bMAX[ -]?IP\b", Technique.MIP),
        (r"\bSSD\b|SURFACE[ -]?REND\w*|SHADED[ -]SURFACE", Technique.SURFACE_RENDER),
        (r"\bVRT?\b|VOLUME[ -]?REND\w*|\bVOLREN\b|\bCINEMATIC\b", Technique.VOLUME_RENDER),
        (r"\bCPR\b|\bCURVED\b", Technique.CURVED_MPR),
        (r"\bTHICK\b|\bAVERAGE\b|\bAVG\b", Technique.THICK_MPR),
        (
            r"\bMPRS?\b|\bREFORMAT\w*|MULTI-?PLANAR|\bCOR(?:ONAL)?\b|\bSAG(?:ITTAL|IT)?\b|\bOBL(?:IQUE)?\b",
            Technique.MPR,
        ),
        (r"\bSEGMENT(?:ATION|ED)?\b|\bVOLUMETRY\b", Technique.SEGMENTATION),
        (r"\bPROJECT(?:ED|ION)\b", Technique.MIP),
    )
)
_GENERIC_VALUE3 = frozenset({"", "AXIAL", "OTHER", "NONE"})
# "3D" naming no technique (decision-outcomes.md, '"3D" alone'): a rendering of unstated technique, used only
# when no signal at any level names a technique.
_UNSTATED_3D_TOKEN = re.compile(r"^(?:CT_SOM\d+ |CSA )?3-?D$")
_UNSTATED_3D_TEXT = re.compile(r"\b3-?D\b", re.IGNORECASE)

# Which technique wins when one signal names several (most 3D first).
TECHNIQUE_RANK = (
    Technique.SEGMENTATION,
    Technique.VOLUME_RENDER,
    Technique.SURFACE_RENDER,
    Technique.MIP,
    Technique.MINIP,
    Technique.CURVED_MPR,
    Technique.THICK_MPR,
    Technique.MPR,
    Technique.NOT_3D,
)
KIND_RANK = (
    SeriesKind.SEGMENTATION,
    SeriesKind.VOLUME_RENDER,
    SeriesKind.SURFACE_RENDER,
    SeriesKind.PROJECTION,
    SeriesKind.MPR,
    SeriesKind.ACQUISITION,
    SeriesKind.OTHER_DERIVED,
    SeriesKind.NON_IMAGE,
)


def is_secondary_capture(facts: InstanceFacts) -> bool:
    return facts.sop_class_uid in SECONDARY_CAPTURE_CLASSES


def is_non_image_class(sop_class_uid: str | None, modality: str | None, has_pixels: bool) -> bool:
    if modality in _NON_IMAGE_MODALITIES:
        return True
    if not sop_class_uid:
        return False
    name = UID(sop_class_uid).name
    if name == sop_class_uid:  # not in the dictionary: a private class
        return not has_pixels
    return bool(_NON_IMAGE_NAME.search(name)) and "Image" not in name.replace("Image Registration", "")


def token_technique(token: str) -> Technique | None:
    for pattern, technique in _TOKENS:
        if pattern.match(token):
            return technique
    return None


def text_technique(text: str | None) -> tuple[Technique, str] | None:
    if not text:
        return None
    for pattern, technique in _TEXT:
        found = pattern.search(text)
        if found:
            return technique, found.group(0)
    return None


def _best(found: list[tuple[Technique, Evidence]]) -> tuple[Technique, Evidence] | None:
    if not found:
        return None
    return min(found, key=lambda item: TECHNIQUE_RANK.index(item[0]))


def _is_derived_image(facts: InstanceFacts) -> bool:
    image_type = facts.image_type
    value1 = image_type[0] if image_type else ""
    value2 = image_type[1] if len(image_type) > 1 else ""
    return value1 == "DERIVED" or value2 == "SECONDARY" or is_secondary_capture(facts)


def _evidence(rule: RuleId, keyword: str, value: str, facts: InstanceFacts) -> Evidence:
    return Evidence(rule, keyword, value, tag_of(keyword), facts.sop_instance_uid)


def _signals(facts: InstanceFacts) -> list[tuple[RuleId, list[tuple[Technique, Evidence]]]]:
    """Each signal level, most specific first, with the techniques it names."""
    levels: list[tuple[RuleId, list[tuple[Technique, Evidence]]]] = []
    derived = _is_derived_image(facts)

    vbct = [
        (
            _VOLUME_TECHNIQUES[value],
            _evidence(RuleId.KIND_VOLUME_TECHNIQUE, "VolumeBasedCalculationTechnique", value, facts),
        )
        for value in facts.volume_techniques
        if value in _VOLUME_TECHNIQUES
    ]
    levels.append((RuleId.KIND_VOLUME_TECHNIQUE, vbct))

    codes = [
        (
            _DERIVATION_CODES[code.value],
            _evidence(RuleId.KIND_DERIVATION_CODE, "DerivationCodeSequence", str(code), facts),
        )
        for code in facts.derivation_codes
        if code.value in _DERIVATION_CODES and code.scheme.upper() in ("DCM", "")
    ]
    levels.append((RuleId.KIND_DERIVATION_CODE, codes))

    image_types = [facts.image_type, *facts.frame_types] if facts.image_type else list(facts.frame_types)
    vendor: list[tuple[Technique, Evidence]] = []
    value3: list[tuple[Technique, Evidence]] = []
    enhanced = bool(facts.frame_types)
    for image_type in image_types:
        keyword = "ImageType" if image_type is facts.image_type else "FrameType"
        joined = "\\".join(image_type)
        for index, token in enumerate(image_type[2:], start=3):
            if _UNSTATED_3D_TOKEN.match(token):
                continue  # "3D" names no technique: see _unstated_3d
            technique = token_technique(token)
            if technique is None and token == "VOLUME" and not enhanced and image_type[:1] == ("DERIVED",):
                technique = Technique.VOLUME_RENDER  # legacy DERIVED\...\VOLUME (enhanced: an image flavor)
            if technique is None:
                continue
            target = value3 if index == 3 else vendor
            rule = RuleId.KIND_IMAGE_TYPE_VALUE3 if index == 3 else RuleId.KIND_IMAGE_TYPE_VENDOR_TOKEN
            target.append((technique, _evidence(rule, keyword, joined, facts)))
    levels.append((RuleId.KIND_IMAGE_TYPE_VENDOR_TOKEN, vendor))
    levels.append((RuleId.KIND_IMAGE_TYPE_VALUE3, value3))

    if derived or facts.volume_techniques or facts.derivation_codes:
        for rule, keyword, text in (
            (RuleId.KIND_DERIVATION_DESCRIPTION, "DerivationDescription", facts.derivation_description),
            (RuleId.KIND_SERIES_DESCRIPTION, "SeriesDescription", facts.series_description),
        ):
            found = text_technique(text)
            levels.append((rule, [(found[0], _evidence(rule, keyword, text or "", facts))] if found else []))
    return levels


def _unstated_3d(facts: InstanceFacts) -> Evidence | None:
    """The signal that says "3D" and nothing more specific: an Image Type token ``3D`` of a derived image, or "3D"
    in the Derivation / Series Description of a derived image that is not PRIMARY (3D in an acquisition's
    description, a 3D sequence or 3D exposure modulation, is never a rendering)."""
    if not _is_derived_image(facts):
        return None
    for image_type in ([facts.image_type] if facts.image_type else []) + list(facts.frame_types):
        if any(_UNSTATED_3D_TOKEN.match(token) for token in image_type[2:]):
            keyword = "ImageType" if image_type is facts.image_type else "FrameType"
            return _evidence(RuleId.KIND_UNSTATED_3D, keyword, "\\".join(image_type), facts)
    value2 = facts.image_type[1] if len(facts.image_type) > 1 else ""
    if value2 == "PRIMARY" and not is_secondary_capture(facts):
        return None
    for keyword, text in (
        ("DerivationDescription", facts.derivation_description),
        ("SeriesDescription", facts.series_description),
    ):
        if text and _UNSTATED_3D_TEXT.search(text):
            return _evidence(RuleId.KIND_UNSTATED_3D, keyword, text, facts)
    return None


def _compression_only(facts: InstanceFacts) -> Evidence | None:
    codes = [c for c in facts.derivation_codes if c.value in COMPRESSION_CODES]
    others = [c for c in facts.derivation_codes if c.value not in COMPRESSION_CODES]
    if others:
        return None
    if codes:
        return _evidence(RuleId.KIND_COMPRESSION_ONLY, "DerivationCodeSequence", "; ".join(map(str, codes)), facts)
    if facts.derivation_description and _COMPRESSION_TEXT.search(facts.derivation_description):
        return _evidence(RuleId.KIND_COMPRESSION_ONLY, "DerivationDescription", facts.derivation_description, facts)
    return None


def _decided(
    kind: SeriesKind, technique: Technique | None, rule: RuleId, text: str, evidence: Evidence
) -> KindDecision:
    return KindDecision(kind, technique, RuleHit(rule, text, evidence=(evidence,)))


def _image_type_evidence(rule: RuleId, facts: InstanceFacts) -> Evidence:
    return _evidence(rule, "ImageType", "\\".join(facts.image_type) or "(absent)", facts)


def classify_instance(facts: InstanceFacts) -> KindDecision:
    """The kind of one instance, with the rule and the header value that decided it."""
    sop_kind = _SOP_CLASS_KIND.get(facts.sop_class_uid or "")
    if sop_kind or is_non_image_class(facts.sop_class_uid, facts.modality, facts.has_pixel_attributes):
        kind, technique = sop_kind or (SeriesKind.NON_IMAGE, None)
        value = facts.sop_class_uid or f"Modality {facts.modality}"
        name = UID(facts.sop_class_uid).name if facts.sop_class_uid else value
        evidence = _evidence(RuleId.KIND_SOP_CLASS, "SOPClassUID" if facts.sop_class_uid else "Modality", value, facts)
        return _decided(kind, technique, RuleId.KIND_SOP_CLASS, f"SOP class {name} is {kind.value}.", evidence)

    for rule, found in _signals(facts):
        best = _best(found)
        if best:
            technique, evidence = best
            text = f"{evidence.keyword} '{evidence.value}' names {technique.value.replace('_', ' ')}."
            return _decided(technique.kind, technique, rule, text, evidence)

    unstated = _unstated_3d(facts)
    if unstated:
        text = (
            f"{unstated.keyword} '{unstated.value}' says 3D and names no technique: a 3D rendering of unstated "
            "technique, counted as volume rendering."
        )
        return _decided(SeriesKind.VOLUME_RENDER, None, RuleId.KIND_UNSTATED_3D, text, unstated)

    image_type = facts.image_type
    value1 = image_type[0] if image_type else ""
    value2 = image_type[1] if len(image_type) > 1 else ""
    value3 = image_type[2] if len(image_type) > 2 else ""
    if value1 == "ORIGINAL" or (not value1 and not is_secondary_capture(facts)):
        rule, text = RuleId.KIND_ORIGINAL, "Original image with no 3D or reformat technique named: acquisition."
        return _decided(SeriesKind.ACQUISITION, None, rule, text, _image_type_evidence(rule, facts))
    compression = _compression_only(facts)
    if compression:
        text = "Derived only by compression: still the acquisition."
        return _decided(SeriesKind.ACQUISITION, None, RuleId.KIND_COMPRESSION_ONLY, text, compression)
    if (
        value2 == "PRIMARY"
        and value3 in _GENERIC_VALUE3
        and not is_secondary_capture(facts)
        and not facts.derivation_codes
    ):
        rule = RuleId.KIND_DERIVED_PRIMARY_RECONSTRUCTION
        text = "DERIVED\\PRIMARY with no technique named: a re-reconstruction of the acquisition."
        return _decided(SeriesKind.ACQUISITION, None, rule, text, _image_type_evidence(rule, facts))
    rule, text = RuleId.KIND_DERIVED_NO_TECHNIQUE, "Derived image with no recognised technique: other derived."
    return _decided(SeriesKind.OTHER_DERIVED, None, rule, text, _image_type_evidence(rule, facts))


def _signature(facts: InstanceFacts) -> tuple[object, ...]:
    return (
        facts.sop_class_uid,
        facts.modality,
        facts.has_pixel_attributes,
        facts.image_type,
        facts.frame_types,
        facts.volume_techniques,
        facts.derivation_codes,
        facts.derivation_description,
        facts.series_description,
    )


def classify_series(instances: Sequence[InstanceFacts]) -> tuple[KindDecision, Counter[SeriesKind]]:
    """The kind of a series: its instances' kind, or the most specific one when they disagree."""
    if not instances:
        raise ValueError("classify_series needs at least one instance")
    memo: dict[tuple[object, ...], KindDecision] = {}
    decisions = []
    for facts in instances:
        key = _signature(facts)
        decision = memo.get(key)
        if decision is None:
            decision = memo[key] = classify_instance(facts)
        decisions.append(decision)
    counts = Counter(d.kind for d in decisions)
    best = min(decisions, key=lambda d: KIND_RANK.index(d.kind))
    if len(counts) == 1:
        return best, counts
    summary = ", ".join(f"{n} {kind.value}" for kind, n in counts.most_common())
    hit = RuleHit(
        RuleId.KIND_MIXED_SERIES,
        f"Instances disagree ({summary}); the series is {best.kind.value} because: {best.hit.text}",
        evidence=best.hit.evidence,
    )
    return KindDecision(best.kind, best.technique, hit), counts

"""Series origin: where a series was made. Pure functions.

Strongest first (``decision-outcomes.md``): the site device registry; built-in product
fingerprints; the study itself (a derived series whose station / serial / model / software match
the acquisition series was made on the console). Conversion Type WSD, implementation version names
and source AE titles name the last writer and never decide alone. A series that differs from the
acquisition but matches no registry entry and no known product stays ``unknown``; so does a 3D series
written by a general-purpose viewer (known, with no role until the registry gives one).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..enums import ComparisonResult, Origin, Role, RuleId, SeriesKind
from ..knowledge import Clause, Knowledge, Product
from ..model import Equipment, Evidence, InstanceFacts, OriginDecision, RuleHit
from ..registry import Registry
from .outcome import THREE_D_KINDS
from .tags import tag_of

_FIELD_KEYWORDS = {
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "station": "StationName",
    "serial": "DeviceSerialNumber",
    "software": "SoftwareVersions",
    "sc_manufacturer": "SecondaryCaptureDeviceManufacturer",
    "sc_model": "SecondaryCaptureDeviceManufacturerModelName",
    "sc_software": "SecondaryCaptureDeviceSoftwareVersions",
    "implementation_version_name": "ImplementationVersionName",
    "implementation_class_uid": "ImplementationClassUID",
    "source_ae_title": "SourceApplicationEntityTitle",
    "image_type_token": "ImageType",
}
_REGISTRY_KEYWORDS = {
    "device_serial_number": "DeviceSerialNumber",
    "station_name": "StationName",
    "ae_title": "SourceApplicationEntityTitle",
    "manufacturer+model": "ManufacturerModelName",
}


@dataclass(frozen=True, slots=True)
class ProductMatch:
    product: Product
    clause: Clause
    evidence: tuple[Evidence, ...]

    @property
    def weak(self) -> bool:
        return self.clause.weak


def _field_values(facts: InstanceFacts, name: str) -> Iterator[tuple[str, Evidence]]:
    uid = facts.sop_instance_uid
    if name == "private_creator":
        for creator in facts.private_creators:
            yield creator.creator, Evidence(RuleId.ORIGIN_PRODUCT, "PrivateCreator", creator.creator, creator.tag, uid)
        return
    if name == "image_type_token":
        joined = "\\".join(facts.image_type)
        for token in facts.image_type[2:]:
            yield token, Evidence(RuleId.ORIGIN_PRODUCT, "ImageType", joined, tag_of("ImageType"), uid)
        return
    equipment = facts.equipment
    value = {
        "manufacturer": equipment.manufacturer,
        "model": equipment.model,
        "station": equipment.station_name,
        "serial": equipment.device_serial_number,
        "software": equipment.software_versions,
        "sc_manufacturer": facts.sc_manufacturer,
        "sc_model": facts.sc_model,
        "sc_software": facts.sc_software_versions,
        "implementation_version_name": facts.implementation_version_name,
        "implementation_class_uid": facts.implementation_class_uid,
        "source_ae_title": facts.source_ae_title,
    }[name]
    if value:
        keyword = _FIELD_KEYWORDS[name]
        yield value, Evidence(RuleId.ORIGIN_PRODUCT, keyword, value, tag_of(keyword), uid)


def _clause_evidence(facts: InstanceFacts, clause: Clause) -> tuple[Evidence, ...] | None:
    evidence = []
    for name, pattern in clause.patterns:
        hit = next((ev for value, ev in _field_values(facts, name) if pattern.search(value)), None)
        if hit is None:
            return None
        evidence.append(hit)
    return tuple(evidence)


def match_products(facts: InstanceFacts, knowledge: Knowledge) -> tuple[ProductMatch, ...]:
    """Every built-in product whose fingerprint the instance carries (first matching clause)."""
    matches = []
    for product in knowledge.products:
        for clause in product.clauses:
            evidence = _clause_evidence(facts, clause)
            if evidence is not None:
                matches.append(ProductMatch(product, clause, evidence))
                break
    return tuple(matches)


def _norm(value: str | None) -> str | None:
    return " ".join(value.split()).upper() if value and value.strip() else None


def _vendor_word(manufacturer: str | None) -> str | None:
    text = _norm(manufacturer)
    return re.split(r"[\s.,]+", text.replace("G.E.", "GE"))[0] if text else None


@dataclass(frozen=True, slots=True)
class Comparison:
    result: ComparisonResult
    evidence: tuple[Evidence, ...]


_COMPARED_ATTRIBUTES = {
    "StationName": "station_name",
    "DeviceSerialNumber": "device_serial_number",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model",
    "SoftwareVersions": "software_versions",
}
"""Equipment keyword -> :class:`Equipment` attribute, for the values a comparison cites."""


def _verdicts(equipment: Equipment, other: Equipment, keywords: Sequence[str]) -> list[tuple[bool, str]]:
    """(same?, keyword) for each of ``keywords`` that both equipments carry."""
    verdicts = []
    for keyword in keywords:
        attr = _COMPARED_ATTRIBUTES[keyword]
        mine, theirs = _norm(getattr(equipment, attr)), _norm(getattr(other, attr))
        if mine and theirs:
            verdicts.append((mine == theirs, keyword))
    return verdicts


def compare_with_acquisitions(facts: InstanceFacts, acquisitions: Sequence[InstanceFacts]) -> Comparison | None:
    """Compare a series' equipment with the study's acquisition series (None: not comparable)."""
    equipment = facts.equipment
    differs: Comparison | None = None
    seen: set[Equipment] = set()
    for acq in acquisitions:
        if acq.equipment in seen:
            continue
        seen.add(acq.equipment)
        verdicts = _verdicts(equipment, acq.equipment, ("StationName", "DeviceSerialNumber"))
        if not verdicts:
            mine_vendor, their_vendor = _vendor_word(equipment.manufacturer), _vendor_word(acq.equipment.manufacturer)
            if mine_vendor and their_vendor and mine_vendor != their_vendor:
                verdicts.append((False, "Manufacturer"))
            else:
                verdicts = _verdicts(equipment, acq.equipment, ("ManufacturerModelName", "SoftwareVersions"))
                if len(verdicts) < 2 and all(v for v, _ in verdicts):
                    verdicts = []  # model or software alone is not enough to call it the console
        if not verdicts:
            continue
        evidence = []
        for _, keyword in verdicts:
            for signal, instance in (("origin.compare", facts), ("origin.compare.acquisition", acq)):
                value = str(getattr(instance.equipment, _COMPARED_ATTRIBUTES[keyword]))
                evidence.append(Evidence(signal, keyword, value, tag_of(keyword), instance.sop_instance_uid))
        if all(same for same, _ in verdicts):
            return Comparison(ComparisonResult.MATCH, tuple(evidence))
        differs = differs or Comparison(ComparisonResult.DIFFERS, tuple(evidence))
    return differs


def _station_carries_serial(equipment: Equipment) -> bool:
    station, serial = equipment.station_name or "", equipment.device_serial_number or ""
    digits = re.search(r"(\d{4,})$", station)
    serial_digits = re.sub(r"\D", "", serial)
    return bool(digits and serial_digits and digits.group(1).lstrip("0") == serial_digits.lstrip("0"))


def _equipment_evidence(facts: InstanceFacts, rule: RuleId) -> tuple[Evidence, ...]:
    equipment = facts.equipment
    pairs = (
        ("Manufacturer", equipment.manufacturer),
        ("ManufacturerModelName", equipment.model),
        ("StationName", equipment.station_name),
        ("DeviceSerialNumber", equipment.device_serial_number),
        ("SoftwareVersions", equipment.software_versions),
    )
    return tuple(Evidence(rule, k, v, tag_of(k), facts.sop_instance_uid) for k, v in pairs if v)


def _hit(rule: RuleId, text: str, evidence: Sequence[Evidence]) -> RuleHit:
    return RuleHit(
        rule,
        text,
        evidence=tuple(
            Evidence(
                rule if e.signal == RuleId.ORIGIN_PRODUCT else e.signal, e.keyword, e.value, e.tag, e.sop_instance_uid
            )
            for e in evidence
        ),
    )


def _decided(
    origin: Origin, rule: RuleId, text: str, evidence: Sequence[Evidence], product: str | None = None
) -> OriginDecision:
    """The origin, the rule that placed it (citing ``evidence``) and the product that made the series."""
    return OriginDecision(origin, _hit(rule, text, evidence), product)


def _stripped(facts: InstanceFacts, text: str) -> OriginDecision:
    """Equipment tags removed: the origin cannot be named."""
    absent = Evidence(
        RuleId.ORIGIN_EQUIPMENT_STRIPPED, "Manufacturer", "(absent)", tag_of("Manufacturer"), facts.sop_instance_uid
    )
    return _decided(Origin.UNKNOWN, RuleId.ORIGIN_EQUIPMENT_STRIPPED, text, [absent])


def parse_study_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def decide_origin(
    facts: InstanceFacts,
    kind: SeriesKind,
    *,
    acquisitions: Sequence[InstanceFacts],
    registry: Registry,
    knowledge: Knowledge,
) -> OriginDecision:
    """The origin of a series, judged on its representative instance ``facts``.

    The first signal that speaks decides: the site registry, then (for acquisitions) the modality
    itself, then product fingerprints, then the equipment compared with the study's acquisitions."""
    registered = _registry_origin(facts, registry)
    if registered is not None:
        return registered
    if kind is SeriesKind.ACQUISITION:
        return _acquisition_origin(facts)
    products = [m for m in match_products(facts, knowledge) if not m.weak and m.product.role is not Role.ARCHIVE]
    makers = [m for m in products if m.product.role in (Role.INDEPENDENT_WORKSTATION, Role.PACS_VIEWER)]
    viewers = [m for m in products if m.product.role is None]
    both = [m for m in products if m.product.role is Role.CONSOLE_OR_WORKSTATION]
    consoles = [m for m in products if m.product.role is Role.SCANNER_CONSOLE]
    comparison = compare_with_acquisitions(facts, acquisitions)
    if makers:
        return _maker_origin(makers, consoles, comparison)
    if viewers:
        return _general_viewer_origin(viewers[0], kind)
    if both:
        return _both_role_origin(facts, both[0], consoles, comparison)
    return _equipment_origin(facts, consoles, comparison)


def _registry_origin(facts: InstanceFacts, registry: Registry) -> OriginDecision | None:
    """The role the site registry gives this equipment, if it lists it."""
    equipment = facts.equipment
    match = registry.match(
        station_name=equipment.station_name,
        ae_title=facts.source_ae_title,
        device_serial_number=equipment.device_serial_number,
        manufacturer=equipment.manufacturer,
        model=equipment.model,
        study_date=parse_study_date(facts.study_date),
    )
    if match is None:
        return None
    device = match.device
    keyword = _REGISTRY_KEYWORDS[match.key]
    entry = f"{device.source or registry.path or 'registry'} role={device.role.value}"
    if device.note:
        entry += f" note={device.note!r}"
    if device.valid_from or device.valid_to:
        entry += f" valid {device.valid_from or '…'}..{device.valid_to or '…'}"
    evidence = (
        Evidence(RuleId.ORIGIN_REGISTRY, keyword, match.value, tag_of(keyword), facts.sop_instance_uid),
        Evidence(RuleId.ORIGIN_REGISTRY, "RegistryEntry", entry, None, None),
    )
    text = f"Site registry: {device.label} is a {device.role.value}."
    return _decided(device.role.origin, RuleId.ORIGIN_REGISTRY, text, evidence, f"registry: {device.label}")


def _acquisition_origin(facts: InstanceFacts) -> OriginDecision:
    """Acquisition images come from their modality (unless the equipment tags were stripped)."""
    if facts.equipment.is_empty:
        return _stripped(facts, "Acquisition with its equipment tags removed: the modality cannot be named.")
    text = "Acquisition images come from the modality that acquired them."
    evidence = _equipment_evidence(facts, RuleId.ORIGIN_ACQUISITION)
    return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_ACQUISITION, text, evidence)


def _fingerprint_evidence(rule: RuleId, matches: Sequence[ProductMatch]) -> list[Evidence]:
    """The header values each fingerprint matched, then the fingerprint itself (id and status; its row in
    fingerprints.toml names the public source)."""
    values = [e for m in matches for e in m.evidence]
    cited = [Evidence(rule, "Fingerprint", m.product.cited(), None, None) for m in matches]
    return values + cited


def _general_viewer_origin(viewer: ProductMatch, kind: SeriesKind) -> OriginDecision:
    """A general-purpose viewer wrote the series: known, but with no role until the site registry gives one."""
    product = viewer.product
    evidence = _fingerprint_evidence(RuleId.ORIGIN_GENERAL_VIEWER, [viewer])
    if kind in THREE_D_KINDS:
        text = (
            f"Made with {product.name}, a general-purpose viewer with no role until the site registry gives one "
            f"({product.reason}): origin unknown; registering the device settles every study it wrote."
        )
        return _decided(Origin.UNKNOWN, RuleId.ORIGIN_GENERAL_VIEWER, text, evidence, product.name)
    text = f"Made with {product.name}, a general-purpose viewer; a {kind.value} series is viewer work, not 3D."
    return _decided(Origin.PACS_VIEWER, RuleId.ORIGIN_GENERAL_VIEWER, text, evidence, product.name)


def _maker_origin(
    makers: list[ProductMatch], consoles: list[ProductMatch], comparison: Comparison | None
) -> OriginDecision:
    """A workstation or PACS-viewer product fingerprint names the origin, unless signals conflict."""
    roles = {m.product.role for m in makers if m.product.role is not None}
    evidence = _fingerprint_evidence(RuleId.ORIGIN_PRODUCT, makers)
    names = " / ".join(m.product.name for m in makers)
    if len(roles) > 1:
        return _decided(
            Origin.UNKNOWN, RuleId.ORIGIN_PRODUCT_CONFLICT, f"Fingerprints of {names} disagree on the role.", evidence
        )
    if consoles and (comparison is None or comparison.result is ComparisonResult.MATCH):
        evidence += [e for m in consoles for e in m.evidence] + list(comparison.evidence if comparison else ())
        text = (
            f"{names} fingerprint, but the equipment module names a scanner console "
            f"({consoles[0].product.name}): conflicting signals."
        )
        return _decided(Origin.UNKNOWN, RuleId.ORIGIN_PRODUCT_CONFLICT, text, evidence)
    role = roles.pop()
    return _decided(role.origin, RuleId.ORIGIN_PRODUCT, f"Made with {names} ({role.value}).", evidence, names)


def _both_role_origin(
    facts: InstanceFacts, product: ProductMatch, consoles: list[ProductMatch], comparison: Comparison | None
) -> OriginDecision:
    """A product that runs on consoles and workstations: the equipment around it places it."""
    equipment = facts.equipment
    name = product.product.name
    evidence = _fingerprint_evidence(RuleId.ORIGIN_PRODUCT, [product])
    vendor = product.product.vendor
    if vendor and equipment.manufacturer and not vendor.search(equipment.manufacturer):
        evidence += _equipment_evidence(facts, RuleId.ORIGIN_BOTH_ROLE_ELSEWHERE)[:1]
        text = f"{name} used on {equipment.manufacturer} data: cannot be that scanner's console."
        return _decided(Origin.INDEPENDENT_WORKSTATION, RuleId.ORIGIN_BOTH_ROLE_ELSEWHERE, text, evidence, name)
    if comparison and comparison.result is ComparisonResult.MATCH:
        text = f"{name} on the acquisition's station: the scanner console."
        evidence += comparison.evidence
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_BOTH_ROLE_MATCH, text, evidence, name)
    if comparison and comparison.result is ComparisonResult.DIFFERS:
        text = f"{name} on another station than the acquisition: an independent workstation."
        evidence += comparison.evidence
        return _decided(Origin.INDEPENDENT_WORKSTATION, RuleId.ORIGIN_BOTH_ROLE_ELSEWHERE, text, evidence, name)
    if consoles:
        text = f"{name} with the equipment of a {consoles[0].product.name}."
        evidence += consoles[0].evidence
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_CONSOLE_FINGERPRINT, text, evidence, name)
    if _station_carries_serial(equipment):
        text = f"{name} on a station named after the device serial number."
        evidence += _equipment_evidence(facts, RuleId.ORIGIN_CONSOLE_STATION_SERIAL)
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_CONSOLE_STATION_SERIAL, text, evidence, name)
    text = f"{name} runs on consoles and workstations; nothing places this one."
    return _decided(Origin.UNKNOWN, RuleId.ORIGIN_UNIDENTIFIED, text, evidence)


def _equipment_origin(
    facts: InstanceFacts, consoles: list[ProductMatch], comparison: Comparison | None
) -> OriginDecision:
    """No product fingerprint: the equipment module, compared with the study's acquisitions."""
    equipment = facts.equipment
    if equipment.is_empty and not (facts.sc_manufacturer or facts.sc_model):
        return _stripped(facts, "Equipment tags (Manufacturer, Model, Station, Serial, Software) are absent.")
    if comparison and comparison.result is ComparisonResult.MATCH:
        text = "Same equipment as the study's acquisition: made on the scanner console."
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_STUDY_MATCH, text, comparison.evidence)
    if comparison and comparison.result is ComparisonResult.DIFFERS:
        text = "Equipment differs from the study's acquisition and names no known product."
        return _decided(Origin.UNKNOWN, RuleId.ORIGIN_STUDY_DIFFERS, text, comparison.evidence)
    if consoles:
        text = f"Equipment of a {consoles[0].product.name}."
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_CONSOLE_FINGERPRINT, text, consoles[0].evidence)
    if _station_carries_serial(equipment):
        text = "Station name carries the device serial number, as scanner consoles do."
        evidence = _equipment_evidence(facts, RuleId.ORIGIN_CONSOLE_STATION_SERIAL)
        return _decided(Origin.SCANNER_CONSOLE, RuleId.ORIGIN_CONSOLE_STATION_SERIAL, text, evidence)
    text = "No registry entry, product fingerprint or acquisition to compare identifies the equipment."
    return _decided(
        Origin.UNKNOWN, RuleId.ORIGIN_UNIDENTIFIED, text, _equipment_evidence(facts, RuleId.ORIGIN_UNIDENTIFIED)
    )


def weak_marks(facts: InstanceFacts, knowledge: Knowledge) -> tuple[Evidence, ...]:
    """Fingerprints recorded as evidence only (last writer, archive marks)."""
    return tuple(
        Evidence(f"mark:{m.product.id}", e.keyword, e.value, e.tag, e.sop_instance_uid)
        for m in match_products(facts, knowledge)
        if m.weak or m.product.role is Role.ARCHIVE
        for e in m.evidence
    )

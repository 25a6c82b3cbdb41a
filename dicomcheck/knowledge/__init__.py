"""Built-in knowledge, shipped as data: product fingerprints and codes that bundle 3D.

The TOML files beside this module are the single source; this module only parses and validates
them into typed, immutable objects. Nothing here reads DICOM.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ..enums import Role

MATCH_FIELDS = (
    "manufacturer",
    "model",
    "station",
    "serial",
    "software",
    "sc_manufacturer",
    "sc_model",
    "sc_software",
    "private_creator",
    "image_type_token",
    "implementation_version_name",
    "implementation_class_uid",
    "source_ae_title",
)
FINGERPRINT_STATUSES = ("observed", "dictionary", "guess")
NO_ROLE = "none"
"""The ``role`` of a product the table knows but gives no role (a general-purpose viewer): its row says why."""


@dataclass(frozen=True, slots=True)
class Clause:
    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    weak: bool = False


@dataclass(frozen=True, slots=True)
class Product:
    """A product fingerprint. ``role`` None: the product is known but has no role until the site registry gives
    one (``reason`` says why); a series it made is not placed by the built-in table."""

    id: str
    name: str
    role: Role | None
    source: str
    status: str
    clauses: tuple[Clause, ...]
    vendor: re.Pattern[str] | None = None
    reason: str | None = None

    def cited(self) -> str:
        """The fingerprint as the evidence cites it: its id (which names its public source in fingerprints.toml)
        and how sure that source is."""
        return f"{self.id} ({self.status})"


@dataclass(frozen=True, slots=True)
class CodeGroup:
    name: str
    codes: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    status: str
    source: str

    def contains(self, value: str) -> bool:
        value = value.strip().upper()
        if value in self.codes:
            return True
        return any(len(value) == len(low) and low <= value <= high for low, high in self.ranges)


@dataclass(frozen=True, slots=True)
class NamedPattern:
    name: str
    pattern: re.Pattern[str]
    source: str


@dataclass(frozen=True, slots=True)
class Knowledge:
    products: tuple[Product, ...]
    code_groups: tuple[CodeGroup, ...]
    descriptions: tuple[NamedPattern, ...]
    bundled_modalities: dict[str, str]
    image_flavors: frozenset[str]

    def product(self, product_id: str) -> Product:
        for product in self.products:
            if product.id == product_id:
                return product
        raise KeyError(product_id)


def _compile(text: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{where}: bad pattern {text!r}: {exc}") from exc


def parse_fingerprints(data: dict) -> tuple[Product, ...]:
    products = []
    seen: set[str] = set()
    for index, row in enumerate(data.get("product", []), start=1):
        where = f"product #{index} ({row.get('id', '?')})"
        for key in ("id", "name", "role", "source", "status", "match"):
            if key not in row:
                raise ValueError(f"{where}: missing {key!r}")
        if row["id"] in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(row["id"])
        if row["status"] not in FINGERPRINT_STATUSES:
            raise ValueError(f"{where}: status must be one of {FINGERPRINT_STATUSES}")
        role = None if row["role"] == NO_ROLE else Role(row["role"])
        if (role is None) != bool(row.get("reason")):
            raise ValueError(f"{where}: role {NO_ROLE!r} and a 'reason' go together")
        clauses = []
        for clause in row["match"]:
            unknown = set(clause) - set(MATCH_FIELDS) - {"weak"}
            if unknown or not set(clause) - {"weak"}:
                raise ValueError(f"{where}: bad clause {clause!r}")
            patterns = tuple((name, _compile(value, where)) for name, value in clause.items() if name != "weak")
            clauses.append(Clause(patterns, bool(clause.get("weak", False))))
        products.append(
            Product(
                id=row["id"],
                name=row["name"],
                role=role,
                source=row["source"],
                status=row["status"],
                clauses=tuple(clauses),
                vendor=_compile(row["vendor"], where) if "vendor" in row else None,
                reason=row.get("reason"),
            )
        )
    return tuple(products)


def parse_bundling(
    data: dict,
) -> tuple[tuple[CodeGroup, ...], tuple[NamedPattern, ...], dict[str, str], frozenset[str]]:
    groups = tuple(
        CodeGroup(
            name=row["name"],
            codes=frozenset(code.upper() for code in row.get("codes", [])),
            ranges=tuple((low.upper(), high.upper()) for low, high in row.get("ranges", [])),
            status=row["status"],
            source=row["source"],
        )
        for row in data.get("group", [])
    )
    descriptions = tuple(
        NamedPattern(row["name"], _compile(row["pattern"], row["name"]), row["source"])
        for row in data.get("description", [])
    )
    modalities = {row["modality"].upper(): row["name"] for row in data.get("modality", [])}
    flavors = frozenset(row["token"].upper() for row in data.get("image_flavor", []))
    return groups, descriptions, modalities, flavors


def _read(name: str) -> dict:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tomllib.loads(text)


@lru_cache(maxsize=1)
def builtin_knowledge() -> Knowledge:
    """The knowledge shipped with this version (parsed once per process)."""
    groups, descriptions, modalities, flavors = parse_bundling(_read("bundling.toml"))
    return Knowledge(
        products=parse_fingerprints(_read("fingerprints.toml")),
        code_groups=groups,
        descriptions=descriptions,
        bundled_modalities=modalities,
        image_flavors=flavors,
    )

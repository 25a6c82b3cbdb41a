"""Closed vocabularies of the product contract (``decision-outcomes.md``).

Every vocabulary is a ``StrEnum``: a member is its value wherever it is written (``str()``, f-strings,
JSON, SQL parameters), so code names members and never spells the strings again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

CptCode = Literal["76377", "76376"]
"""The CPT codes an outcome can support."""


class SeriesKind(StrEnum):
    """What a series is."""

    ACQUISITION = "acquisition"
    """Original images from the modality (incl. lossy-compressed or re-reconstructed originals)."""
    MPR = "mpr"
    """Planar or curved reformats and averaged thick slabs: not 3D rendering."""
    PROJECTION = "projection"
    """Maximum or minimum intensity projection."""
    VOLUME_RENDER = "volume_render"
    """Volume rendering (VR, VRT, cinematic)."""
    SURFACE_RENDER = "surface_render"
    """Shaded surface display."""
    SEGMENTATION = "segmentation"
    """Quantitative 3D work: segmentations, volumetry, surgical planning."""
    OTHER_DERIVED = "other_derived"
    """Derived, but nothing shows 3D rendering."""
    NON_IMAGE = "non_image"
    """SR, KOS, presentation states, raw data."""


class Technique(StrEnum):
    """The post-processing technique a signal names (finer than :class:`SeriesKind`)."""

    MIP = "mip"
    MINIP = "minip"
    MPR = "mpr"
    CURVED_MPR = "curved_mpr"
    THICK_MPR = "thick_mpr"
    VOLUME_RENDER = "volume_render"
    SURFACE_RENDER = "surface_render"
    SEGMENTATION = "segmentation"
    NOT_3D = "not_3d"
    """A named content that is not 3D: dose page, screen save, localizer, exam summary."""

    @property
    def kind(self) -> SeriesKind:
        return _TECHNIQUE_KIND[self]


_TECHNIQUE_KIND = {
    Technique.MIP: SeriesKind.PROJECTION,
    Technique.MINIP: SeriesKind.PROJECTION,
    Technique.MPR: SeriesKind.MPR,
    Technique.CURVED_MPR: SeriesKind.MPR,
    Technique.THICK_MPR: SeriesKind.MPR,
    Technique.VOLUME_RENDER: SeriesKind.VOLUME_RENDER,
    Technique.SURFACE_RENDER: SeriesKind.SURFACE_RENDER,
    Technique.SEGMENTATION: SeriesKind.SEGMENTATION,
    Technique.NOT_3D: SeriesKind.OTHER_DERIVED,
}


class Origin(StrEnum):
    """Where a series was made."""

    SCANNER_CONSOLE = "scanner_console"
    PACS_VIEWER = "pacs_viewer"
    INDEPENDENT_WORKSTATION = "independent_workstation"
    UNKNOWN = "unknown"


class Role(StrEnum):
    """The role of a device in the site registry or of a product fingerprint."""

    SCANNER_CONSOLE = "scanner_console"
    PACS_VIEWER = "pacs_viewer"
    INDEPENDENT_WORKSTATION = "independent_workstation"
    CONSOLE_OR_WORKSTATION = "console_or_workstation"
    """A product that runs on consoles and workstations alike (GE Volume Viewer, syngo InSpace)."""
    ARCHIVE = "archive"
    """PACS / archive / toolkit marks: they name the last writer, never who made the pixels."""

    @property
    def origin(self) -> Origin:
        return {
            Role.SCANNER_CONSOLE: Origin.SCANNER_CONSOLE,
            Role.PACS_VIEWER: Origin.PACS_VIEWER,
            Role.INDEPENDENT_WORKSTATION: Origin.INDEPENDENT_WORKSTATION,
        }.get(self, Origin.UNKNOWN)


REGISTRY_ROLES = (Role.SCANNER_CONSOLE, Role.PACS_VIEWER, Role.INDEPENDENT_WORKSTATION)


class Outcome(StrEnum):
    """What the images of one study prove."""

    SUPPORTS_76377 = "supports_76377"
    SUPPORTS_76376 = "supports_76376"
    NO_3D = "no_3d"
    BUNDLED = "bundled"
    NEEDS_REVIEW = "needs_review"

    @property
    def code(self) -> CptCode | None:
        codes: dict[Outcome, CptCode] = {Outcome.SUPPORTS_76377: "76377", Outcome.SUPPORTS_76376: "76376"}
        return codes.get(self)


class PacsViewerCode(StrEnum):
    """Site policy: what 3D made in the PACS viewer supports."""

    CODE_76376 = "76376"
    CODE_76377 = "76377"
    REVIEW = "review"


class RuleId(StrEnum):
    """Every rule that can fire (the ids of ``rules.RULES``); a hit's ``rule`` and a series' ``kind_rule`` / ``origin_rule``."""  # noqa: E501 - one line: the docstring is this enum's description in schema/analysis.schema.json

    KIND_COMPRESSION_ONLY = "kind.compression_only"
    KIND_DERIVATION_CODE = "kind.derivation_code"
    KIND_DERIVATION_DESCRIPTION = "kind.derivation_description"
    KIND_DERIVED_NO_TECHNIQUE = "kind.derived_no_technique"
    KIND_DERIVED_PRIMARY_RECONSTRUCTION = "kind.derived_primary_reconstruction"
    KIND_IMAGE_TYPE_VALUE3 = "kind.image_type_value3"
    KIND_IMAGE_TYPE_VENDOR_TOKEN = "kind.image_type_vendor_token"
    KIND_MIXED_SERIES = "kind.mixed_series"
    KIND_ORIGINAL = "kind.original"
    KIND_SERIES_DESCRIPTION = "kind.series_description"
    KIND_SOP_CLASS = "kind.sop_class"
    KIND_UNSTATED_3D = "kind.unstated_3d"
    KIND_VOLUME_TECHNIQUE = "kind.volume_technique"
    ORIGIN_ACQUISITION = "origin.acquisition"
    ORIGIN_BOTH_ROLE_ELSEWHERE = "origin.both_role_elsewhere"
    ORIGIN_BOTH_ROLE_MATCH = "origin.both_role_match"
    ORIGIN_CONFLICT = "origin.conflict"
    ORIGIN_CONSOLE_FINGERPRINT = "origin.console_fingerprint"
    ORIGIN_CONSOLE_STATION_SERIAL = "origin.console_station_serial"
    ORIGIN_EQUIPMENT_STRIPPED = "origin.equipment_stripped"
    ORIGIN_GENERAL_VIEWER = "origin.general_viewer"
    ORIGIN_PRODUCT = "origin.product"
    ORIGIN_PRODUCT_CONFLICT = "origin.product_conflict"
    ORIGIN_REGISTRY = "origin.registry"
    ORIGIN_STUDY_DIFFERS = "origin.study_differs"
    ORIGIN_STUDY_MATCH = "origin.study_match"
    ORIGIN_UNIDENTIFIED = "origin.unidentified"
    OUTCOME_BUNDLED_CPT = "outcome.bundled_cpt"
    OUTCOME_BUNDLED_DESCRIPTION = "outcome.bundled_description"
    OUTCOME_BUNDLED_IMAGE_FLAVOR = "outcome.bundled_image_flavor"
    OUTCOME_BUNDLED_MODALITY = "outcome.bundled_modality"
    OUTCOME_CONSOLE_OR_VIEWER = "outcome.console_or_viewer"
    OUTCOME_INDEPENDENT_WORKSTATION = "outcome.independent_workstation"
    OUTCOME_NO_3D = "outcome.no_3d"
    OUTCOME_NO_BASE_ACQUISITION = "outcome.no_base_acquisition"
    OUTCOME_NON_TOMOGRAPHIC = "outcome.non_tomographic"
    OUTCOME_UNKNOWN_ORIGIN = "outcome.unknown_origin"
    POLICY_CURVED_MPR_IS_3D = "policy.curved_mpr_is_3d"
    POLICY_MINIP_IS_3D = "policy.minip_is_3d"
    POLICY_PACS_VIEWER_CODE = "policy.pacs_viewer_code"


class ComparisonResult(StrEnum):
    """How a series' equipment compares with the study's acquisition series."""

    MATCH = "match"
    DIFFERS = "differs"


class DeviceRole(StrEnum):
    """The roles a site can give a device in its registry (``REGISTRY_ROLES``, a part of :class:`Role`)."""

    SCANNER_CONSOLE = Role.SCANNER_CONSOLE.value
    PACS_VIEWER = Role.PACS_VIEWER.value
    INDEPENDENT_WORKSTATION = Role.INDEPENDENT_WORKSTATION.value


class TokenRole(StrEnum):
    """What an API token may do: read, administer, audit a scope of studies, or send reports."""

    READER = "reader"
    ADMIN = "admin"
    AUDITOR = "auditor"
    REPORTER = "reporter"
    """Sends radiology reports (``POST /studies/{uid}/report``) and nothing else."""


class StudyStatus(StrEnum):
    """A study in the index: ``pending`` (not yet stable, or newer instances than its decision) or ``decided``."""

    PENDING = "pending"
    DECIDED = "decided"


class CitedRole(StrEnum):
    """Why an instance is in an evidence pack. A ``StrEnum``: it is also formatted into file names."""

    THREE_D = "3d"
    """A representative image of a 3D series."""
    ACQUISITION = "acquisition"
    """One representative base image."""
    CITED = "cited"
    """An instance whose header values the decision cites."""

"""Closed vocabularies of the product contract (``decision-outcomes.md``)."""

from __future__ import annotations

from enum import Enum


class SeriesKind(str, Enum):
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


class Technique(str, Enum):
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


class Origin(str, Enum):
    """Where a series was made."""

    SCANNER_CONSOLE = "scanner_console"
    PACS_VIEWER = "pacs_viewer"
    INDEPENDENT_WORKSTATION = "independent_workstation"
    UNKNOWN = "unknown"


class Role(str, Enum):
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


class Outcome(str, Enum):
    """What the images of one study prove."""

    SUPPORTS_76377 = "supports_76377"
    SUPPORTS_76376 = "supports_76376"
    NO_3D = "no_3d"
    BUNDLED = "bundled"
    NEEDS_REVIEW = "needs_review"

    @property
    def code(self) -> str | None:
        return {Outcome.SUPPORTS_76377: "76377", Outcome.SUPPORTS_76376: "76376"}.get(self)


class PacsViewerCode(str, Enum):
    """Site policy: what 3D made in the PACS viewer supports."""

    CODE_76376 = "76376"
    CODE_76377 = "76377"
    REVIEW = "review"

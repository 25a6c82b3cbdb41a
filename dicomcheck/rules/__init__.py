"""The rule set: pure functions from header facts to kind, origin and study outcome.

Every rule has a stable id, a :class:`~dicomcheck.enums.RuleId` member, described in :data:`RULES`;
a decision cites the ids that fired. Change :data:`RULES_VERSION` whenever a rule's behaviour
changes, so that stored decisions say under which rules they were made.
"""

from __future__ import annotations

from ..enums import RuleId

RULES_VERSION = "2026.12.1"

RULES: dict[str, str] = {  # keyed by RuleId members; a StrEnum, so the ids read back from a stored decision look up too
    # ---- kind: what a series is (most specific signal wins)
    RuleId.KIND_SOP_CLASS: "The SOP class fixes the kind (SR, KOS, presentation states, raw data are non-image; SEG "
    "is segmentation; volume-rendering presentation states are volume rendering).",
    RuleId.KIND_VOLUME_TECHNIQUE: "Volume Based Calculation Technique (0008,9207) names the technique (strongest "
    "signal).",
    RuleId.KIND_DERIVATION_CODE: "A Derivation Code Sequence (0008,9215) code from CID 7203 names the technique "
    "(113072-113079).",
    RuleId.KIND_IMAGE_TYPE_VENDOR_TOKEN: "An Image Type value 4 or later (vendor token, e.g. CT_SOM5 MIP, CSA MPR, "
    "VOLREN) names the technique.",
    RuleId.KIND_IMAGE_TYPE_VALUE3: "Image Type value 3 names the technique (MPR, PROJECTION IMAGE, MIP_TRA, "
    "REFORMATTED\\MIP).",
    RuleId.KIND_DERIVATION_DESCRIPTION: "The Derivation Description (0008,2111) names the technique.",
    RuleId.KIND_SERIES_DESCRIPTION: "The Series Description of a derived image names the technique (weakest signal).",
    RuleId.KIND_UNSTATED_3D: "A derived image whose only technique word is 3D (Image Type token 3D, a series "
    "description '3D ...' naming nothing more specific): a 3D rendering of unstated technique, counted as volume "
    "rendering. 3D in an acquisition's description (value 2 PRIMARY) is never a rendering.",
    RuleId.KIND_ORIGINAL: "ORIGINAL image with no projection or rendering technique: an acquisition.",
    RuleId.KIND_COMPRESSION_ONLY: "DERIVED only by compression (113040, 121327 or a compression note): still the "
    "acquisition.",
    RuleId.KIND_DERIVED_PRIMARY_RECONSTRUCTION: "DERIVED\\PRIMARY image with a generic value 3 and no derivation of "
    "interest: a re-reconstruction of the acquisition.",
    RuleId.KIND_DERIVED_NO_TECHNIQUE: "Derived image with no recognised technique (dose page, screen save, map, "
    "summary): other derived.",
    RuleId.KIND_MIXED_SERIES: "Instances of the series disagree on the kind; the series takes the most specific 3D "
    "kind present.",
    # ---- origin: where a series was made
    RuleId.ORIGIN_REGISTRY: "The site device registry names this equipment's role.",
    RuleId.ORIGIN_ACQUISITION: "Acquisition images come from the modality that acquired them.",
    RuleId.ORIGIN_PRODUCT: "A built-in product fingerprint names the software that made the series.",
    RuleId.ORIGIN_PRODUCT_CONFLICT: "A product fingerprint names post-processing software while the equipment module "
    "names a scanner console and the study offers no comparison: conflicting signals.",
    RuleId.ORIGIN_GENERAL_VIEWER: "A general-purpose DICOM viewer (OsiriX / Horos, RadiAnt, Weasis, MicroDicom, ...) "
    "wrote the series: sites use it both as a PACS viewer and as a 3D workstation, so its 3D series stay of unknown "
    "origin until the site registry gives the device a role; what else it writes (annotations, presentation states) "
    "is viewer work.",
    RuleId.ORIGIN_STUDY_MATCH: "Station / serial / model / software match the study's acquisition series: made on the "
    "scanner console.",
    RuleId.ORIGIN_STUDY_DIFFERS: "The equipment differs from the study's acquisition series and names no known "
    "product: origin cannot be named.",
    RuleId.ORIGIN_BOTH_ROLE_MATCH: "A product that runs on consoles and workstations matches the acquisition's "
    "station / serial: the console.",
    RuleId.ORIGIN_BOTH_ROLE_ELSEWHERE: "A product that runs on consoles and workstations was used on another station "
    "or another vendor's data: an independent workstation.",
    RuleId.ORIGIN_CONSOLE_FINGERPRINT: "No acquisition to compare with; station naming / model and software releases "
    "identify a scanner console.",
    RuleId.ORIGIN_CONSOLE_STATION_SERIAL: "No acquisition to compare with; the station name carries the device serial "
    "number, as scanner consoles do.",
    RuleId.ORIGIN_EQUIPMENT_STRIPPED: "Equipment tags are absent (anonymised or stripped): origin unknown.",
    RuleId.ORIGIN_UNIDENTIFIED: "No registry entry, product fingerprint or in-study comparison identifies the "
    "equipment.",
    RuleId.ORIGIN_CONFLICT: "Instances of the series point to different origins.",
    # ---- outcome: per study, first match wins
    RuleId.OUTCOME_NO_3D: "No 3D series (projection, volume rendering, surface rendering, segmentation) in the study.",
    RuleId.OUTCOME_BUNDLED_CPT: "A CPT code of the study's procedure already includes 3D (angiography, cardiac CT/MR, "
    "nuclear medicine, ...).",
    RuleId.OUTCOME_BUNDLED_DESCRIPTION: "The study or requested procedure is angiography or another procedure that "
    "already includes 3D.",
    RuleId.OUTCOME_BUNDLED_MODALITY: "The study's modality already includes 3D (nuclear medicine, PET, X-ray "
    "angiography).",
    RuleId.OUTCOME_BUNDLED_IMAGE_FLAVOR: "Enhanced Image Type value 3 marks angiography / cardiac CTA.",
    RuleId.OUTCOME_NON_TOMOGRAPHIC: "3D rendering codes apply only to CT, MR, ultrasound or other tomographic studies.",
    RuleId.OUTCOME_NO_BASE_ACQUISITION: "No base acquisition of the study was received and no derived series "
    "references one.",
    RuleId.OUTCOME_INDEPENDENT_WORKSTATION: "A 3D series was made on an independent workstation: supports 76377 (one "
    "code per study).",
    RuleId.OUTCOME_UNKNOWN_ORIGIN: "A 3D series of unknown origin: needs review.",
    RuleId.OUTCOME_CONSOLE_OR_VIEWER: "All 3D series were made on the scanner console or in the PACS viewer: supports "
    "76376.",
    # ---- site policies (cited when they decided something)
    RuleId.POLICY_PACS_VIEWER_CODE: "Site policy pacs_viewer_code maps 3D made in the PACS viewer to 76376, 76377 or "
    "review.",
    RuleId.POLICY_MINIP_IS_3D: "Site policy minip_is_3d decides whether a minimum intensity projection counts as 3D.",
    RuleId.POLICY_CURVED_MPR_IS_3D: "Site policy curved_mpr_is_3d decides whether a curved reformat counts as 3D.",
}

__all__ = ["RULES", "RULES_VERSION"]

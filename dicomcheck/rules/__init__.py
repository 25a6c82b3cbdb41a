"""The rule set: pure functions from header facts to kind, origin and study outcome.

Every rule has a stable id listed in :data:`RULES`; a decision cites the ids that fired. Change
:data:`RULES_VERSION` whenever a rule's behaviour changes, so that stored decisions say under which
rules they were made.
"""

from __future__ import annotations

RULES_VERSION = "2026.11.1"

RULES: dict[str, str] = {
    # ---- kind: what a series is (most specific signal wins)
    "kind.sop_class": "The SOP class fixes the kind (SR, KOS, presentation states, raw data are non-image; SEG is "
    "segmentation; volume-rendering presentation states are volume rendering).",
    "kind.volume_technique": "Volume Based Calculation Technique (0008,9207) names the technique (strongest signal).",
    "kind.derivation_code": "A Derivation Code Sequence (0008,9215) code from CID 7203 names the technique "
    "(113072-113079).",
    "kind.image_type_vendor_token": "An Image Type value 4 or later (vendor token, e.g. CT_SOM5 MIP, CSA MPR, VOLREN) "
    "names the technique.",
    "kind.image_type_value3": "Image Type value 3 names the technique (MPR, PROJECTION IMAGE, MIP_TRA, 3D, "
    "REFORMATTED\\MIP).",
    "kind.derivation_description": "The Derivation Description (0008,2111) names the technique.",
    "kind.series_description": "The Series Description of a derived image names the technique (weakest signal).",
    "kind.original": "ORIGINAL image with no projection or rendering technique: an acquisition.",
    "kind.compression_only": "DERIVED only by compression (113040, 121327 or a compression note): still the "
    "acquisition.",
    "kind.derived_primary_reconstruction": "DERIVED\\PRIMARY image with a generic value 3 and no derivation of "
    "interest: a re-reconstruction of the acquisition.",
    "kind.derived_no_technique": "Derived image with no recognised technique (dose page, screen save, map, summary): "
    "other derived.",
    "kind.mixed_series": "Instances of the series disagree on the kind; the series takes the most specific 3D kind "
    "present.",
    # ---- origin: where a series was made
    "origin.registry": "The site device registry names this equipment's role.",
    "origin.acquisition": "Acquisition images come from the modality that acquired them.",
    "origin.product": "A built-in product fingerprint names the software that made the series.",
    "origin.product_conflict": "A product fingerprint names post-processing software while the equipment module names "
    "a scanner console and the study offers no comparison: conflicting signals.",
    "origin.study_match": "Station / serial / model / software match the study's acquisition series: made on the "
    "scanner console.",
    "origin.study_differs": "The equipment differs from the study's acquisition series and names no known product: "
    "origin cannot be named.",
    "origin.both_role_match": "A product that runs on consoles and workstations matches the acquisition's station / "
    "serial: the console.",
    "origin.both_role_elsewhere": "A product that runs on consoles and workstations was used on another station or "
    "another vendor's data: an independent workstation.",
    "origin.console_fingerprint": "No acquisition to compare with; station naming / model and software releases "
    "identify a scanner console.",
    "origin.console_station_serial": "No acquisition to compare with; the station name carries the device serial "
    "number, as scanner consoles do.",
    "origin.equipment_stripped": "Equipment tags are absent (anonymised or stripped): origin unknown.",
    "origin.unidentified": "No registry entry, product fingerprint or in-study comparison identifies the equipment.",
    "origin.conflict": "Instances of the series point to different origins.",
    # ---- outcome: per study, first match wins
    "outcome.no_3d": "No 3D series (projection, volume rendering, surface rendering, segmentation) in the study.",
    "outcome.bundled_cpt": "A CPT code of the study's procedure already includes 3D (angiography, cardiac CT/MR, "
    "nuclear medicine, ...).",
    "outcome.bundled_description": "The study or requested procedure is angiography or another procedure that already "
    "includes 3D.",
    "outcome.bundled_modality": "The study's modality already includes 3D (nuclear medicine, PET, X-ray angiography).",
    "outcome.bundled_image_flavor": "Enhanced Image Type value 3 marks angiography / cardiac CTA.",
    "outcome.non_tomographic": "3D rendering codes apply only to CT, MR, ultrasound or other tomographic studies.",
    "outcome.no_base_acquisition": "No base acquisition of the study was received and no derived series references "
    "one.",
    "outcome.independent_workstation": "A 3D series was made on an independent workstation: supports 76377 (one code "
    "per study).",
    "outcome.unknown_origin": "A 3D series of unknown origin: needs review.",
    "outcome.console_or_viewer": "All 3D series were made on the scanner console or in the PACS viewer: supports "
    "76376.",
    # ---- site policies (cited when they decided something)
    "policy.pacs_viewer_code": "Site policy pacs_viewer_code maps 3D made in the PACS viewer to 76376, 76377 or "
    "review.",
    "policy.minip_is_3d": "Site policy minip_is_3d decides whether a minimum intensity projection counts as 3D.",
    "policy.curved_mpr_is_3d": "Site policy curved_mpr_is_3d decides whether a curved reformat counts as 3D.",
}

__all__ = ["RULES", "RULES_VERSION"]

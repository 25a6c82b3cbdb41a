"""Study outcome: the contract's precedence, first match wins. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..enums import Origin, Outcome, PacsViewerCode, RuleId, SeriesKind, Technique
from ..knowledge import Knowledge
from ..model import Evidence, InstanceFacts, RuleHit, SeriesDecision
from ..registry import Policy
from .tags import tag_of

THREE_D_KINDS = frozenset(
    {SeriesKind.PROJECTION, SeriesKind.VOLUME_RENDER, SeriesKind.SURFACE_RENDER, SeriesKind.SEGMENTATION}
)
TOMOGRAPHIC_MODALITIES = frozenset({"CT", "MR", "US", "PT", "NM", "OCT", "IVOCT", "IVUS", "OPT"})
_CPT_SCHEMES = frozenset({"C4", "CPT", "CPT4", "CPT-4"})
_CPT_SHAPE = re.compile(r"^\d{4}[0-9A-Z]$")
DERIVED_ONLY_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "OT", "REG", "RWV", "DOC"})


def three_d_status(kind: SeriesKind, technique: Technique | None, policy: Policy) -> tuple[bool, RuleHit | None]:
    """Whether a series counts as 3D rendering, and the policy hit when a site policy decided it."""
    if technique is Technique.MINIP:
        text = "MinIP counts as 3D" if policy.minip_is_3d else "MinIP does not count as 3D"
        return policy.minip_is_3d, RuleHit(
            RuleId.POLICY_MINIP_IS_3D, f"Site policy minip_is_3d = {str(policy.minip_is_3d).lower()}: {text}."
        )
    if technique is Technique.CURVED_MPR:
        text = "curved reformats count as 3D" if policy.curved_mpr_is_3d else "curved reformats are reformats, not 3D"
        return policy.curved_mpr_is_3d, RuleHit(
            RuleId.POLICY_CURVED_MPR_IS_3D,
            f"Site policy curved_mpr_is_3d = {str(policy.curved_mpr_is_3d).lower()}: {text}.",
        )
    return kind in THREE_D_KINDS, None


def _bundling_hits(
    series: Sequence[SeriesDecision],
    instances: Sequence[InstanceFacts],
    acquisition_series: frozenset[str],
    knowledge: Knowledge,
) -> list[RuleHit]:
    hits: list[RuleHit] = []
    seen: set[tuple[str, str]] = set()
    for facts in instances:
        for proc in facts.procedure_codes:
            code = proc.code
            scheme = code.scheme.strip().upper()
            if scheme not in _CPT_SCHEMES or not _CPT_SHAPE.match(code.value.strip().upper()):
                continue
            for group in knowledge.code_groups:
                if group.contains(code.value) and ("cpt", code.value) not in seen:
                    seen.add(("cpt", code.value))
                    evidence = Evidence(
                        RuleId.OUTCOME_BUNDLED_CPT,
                        proc.keyword,
                        f"{code} (designator {code.scheme})",
                        tag_of(proc.keyword),
                        facts.sop_instance_uid,
                    )
                    hits.append(
                        RuleHit(
                            RuleId.OUTCOME_BUNDLED_CPT,
                            f"CPT {code.value} ({group.name}, {group.status}) already includes 3D.",
                            evidence=(evidence,),
                        )
                    )
        texts = [
            ("StudyDescription", facts.study_description),
            ("PerformedProcedureStepDescription", facts.performed_procedure_step_description),
        ]
        texts += [("RequestedProcedureDescription", t) for t in facts.requested_procedure_descriptions]
        if facts.series_instance_uid in acquisition_series:
            texts += [("ProtocolName", facts.protocol_name), ("SeriesDescription", facts.series_description)]
        for keyword, text in texts:
            if not text or (keyword, text) in seen:
                continue
            for named in knowledge.descriptions:
                found = named.pattern.search(text)
                if found:
                    seen.add((keyword, text))
                    evidence = Evidence(
                        RuleId.OUTCOME_BUNDLED_DESCRIPTION, keyword, text, tag_of(keyword), facts.sop_instance_uid
                    )
                    hits.append(
                        RuleHit(
                            RuleId.OUTCOME_BUNDLED_DESCRIPTION,
                            f"{keyword} '{text}' names {named.name} ('{found.group(0)}').",
                            evidence=(evidence,),
                        )
                    )
                    break
        for image_type in (facts.image_type, *facts.frame_types):
            flavor = image_type[2] if len(image_type) > 2 else ""
            if flavor in knowledge.image_flavors and ("flavor", flavor) not in seen and facts.frame_types:
                seen.add(("flavor", flavor))
                evidence = Evidence(
                    RuleId.OUTCOME_BUNDLED_IMAGE_FLAVOR,
                    "ImageType",
                    "\\".join(image_type),
                    tag_of("ImageType"),
                    facts.sop_instance_uid,
                )
                hits.append(
                    RuleHit(
                        RuleId.OUTCOME_BUNDLED_IMAGE_FLAVOR,
                        f"Enhanced image flavor {flavor} marks a study that includes 3D.",
                        evidence=(evidence,),
                    )
                )
    for s in series:
        name = knowledge.bundled_modalities.get(s.modality or "")
        if name and ("modality", s.modality) not in seen:
            seen.add(("modality", s.modality or ""))
            evidence = Evidence(RuleId.OUTCOME_BUNDLED_MODALITY, "Modality", s.modality or "", tag_of("Modality"), None)
            hits.append(
                RuleHit(
                    RuleId.OUTCOME_BUNDLED_MODALITY,
                    f"Modality {s.modality} ({name}) already includes 3D.",
                    (s.series_instance_uid,),
                    (evidence,),
                )
            )
    return hits


def _series_hit(rule: RuleId, text: str, series: Sequence[SeriesDecision]) -> RuleHit:
    evidence = tuple(e for s in series for e in (*s.kind_hit.evidence[:1], *s.origin_hit.evidence[:3]))
    return RuleHit(rule, text, tuple(s.series_instance_uid for s in series), evidence)


def _describe(series: Sequence[SeriesDecision]) -> str:
    return "; ".join(
        f"'{s.series_description or s.series_instance_uid}' ({s.kind.value}, {s.origin.value}"
        + (f", {s.product}" if s.product else "")
        + ")"
        for s in series
    )


def decide_outcome(
    series: Sequence[SeriesDecision],
    instances: Sequence[InstanceFacts],
    *,
    acquisition_series: frozenset[str],
    knowledge: Knowledge,
    policy: Policy,
) -> tuple[Outcome, tuple[RuleHit, ...]]:
    """The study outcome and the rules that fired, in the contract's precedence."""
    three_d = [s for s in series if s.is_3d]
    policy_hits: list[RuleHit] = []
    for s in series:
        _, hit = three_d_status(s.kind, s.technique, policy)
        if hit and hit.rule not in {h.rule for h in policy_hits}:
            policy_hits.append(RuleHit(hit.rule, hit.text, (s.series_instance_uid,), s.kind_hit.evidence))

    if not three_d:
        kinds = ", ".join(sorted({s.kind.value for s in series}))
        return Outcome.NO_3D, (
            RuleHit(
                RuleId.OUTCOME_NO_3D,
                f"No 3D series; the study holds: {kinds}.",
                tuple(s.series_instance_uid for s in series),
            ),
            *policy_hits,
        )

    bundled = _bundling_hits(series, instances, acquisition_series, knowledge)
    if bundled:
        first = bundled[0]
        lead = RuleHit(
            first.rule,
            f"{first.text} 3D present ({_describe(three_d)}), but the base study already includes it.",
            tuple(s.series_instance_uid for s in three_d),
            first.evidence,
        )
        return Outcome.BUNDLED, (lead, *bundled[1:], *policy_hits)

    image_modalities = {
        s.modality
        for s in series
        if s.kind not in (SeriesKind.NON_IMAGE,) and s.modality and s.modality not in DERIVED_ONLY_MODALITIES
    }
    if image_modalities and not image_modalities & TOMOGRAPHIC_MODALITIES:
        evidence = tuple(
            Evidence(RuleId.OUTCOME_NON_TOMOGRAPHIC, "Modality", m, tag_of("Modality"), None)
            for m in sorted(image_modalities)
        )
        return Outcome.NEEDS_REVIEW, (
            RuleHit(
                RuleId.OUTCOME_NON_TOMOGRAPHIC,
                f"3D codes apply to CT, MR or ultrasound; this study is {', '.join(sorted(image_modalities))}.",
                evidence=evidence,
            ),
            *policy_hits,
        )

    if not acquisition_series:
        references = [
            (f, uid)
            for f in instances
            for uid in f.referenced_sop_instance_uids[:1]
            if f.series_instance_uid in {s.series_instance_uid for s in three_d}
        ]
        if not references:
            return Outcome.NEEDS_REVIEW, (
                _series_hit(
                    RuleId.OUTCOME_NO_BASE_ACQUISITION,
                    f"No base acquisition received and no 3D series references one: {_describe(three_d)}.",
                    three_d,
                ),
                *policy_hits,
            )

    viewer_origin = {
        PacsViewerCode.CODE_76376: Origin.SCANNER_CONSOLE,
        PacsViewerCode.CODE_76377: Origin.INDEPENDENT_WORKSTATION,
        PacsViewerCode.REVIEW: Origin.UNKNOWN,
    }[policy.pacs_viewer_code]
    effective = {
        s.series_instance_uid: (viewer_origin if s.origin is Origin.PACS_VIEWER else s.origin) for s in three_d
    }
    viewer = [s for s in three_d if s.origin is Origin.PACS_VIEWER]
    if viewer:
        counted_as = viewer_origin.value.replace("_", " ") if viewer_origin is not Origin.UNKNOWN else "needing review"
        policy_hits.append(
            RuleHit(
                RuleId.POLICY_PACS_VIEWER_CODE,
                f"Site policy pacs_viewer_code = {policy.pacs_viewer_code.value}: 3D made in the PACS viewer counts "
                f"as {counted_as}.",
                tuple(s.series_instance_uid for s in viewer),
            )
        )

    workstation = [s for s in three_d if effective[s.series_instance_uid] is Origin.INDEPENDENT_WORKSTATION]
    if workstation:
        return Outcome.SUPPORTS_76377, (
            _series_hit(
                RuleId.OUTCOME_INDEPENDENT_WORKSTATION,
                f"3D made on an independent workstation: {_describe(workstation)}.",
                workstation,
            ),
            *policy_hits,
        )
    unknown = [s for s in three_d if effective[s.series_instance_uid] is Origin.UNKNOWN]
    if unknown:
        return Outcome.NEEDS_REVIEW, (
            _series_hit(RuleId.OUTCOME_UNKNOWN_ORIGIN, f"3D of unknown origin: {_describe(unknown)}.", unknown),
            *policy_hits,
        )
    return Outcome.SUPPORTS_76376, (
        _series_hit(
            RuleId.OUTCOME_CONSOLE_OR_VIEWER,
            f"All 3D made on the scanner console or in the PACS viewer: {_describe(three_d)}.",
            three_d,
        ),
        *policy_hits,
    )

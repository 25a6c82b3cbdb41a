"""Presentation of decisions: the JSON document (schema/analysis.schema.json) and the terminal table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .decision_document import study_dict
from .decision_record import AnalysisDocument, PolicyRecord, ReadErrorRecord, StudyDecisionRecord
from .enums import Outcome
from .model import StudyDecision
from .registry import Policy
from .rules import RULES_VERSION
from .sources import ReadError

__all__ = ["analysis_document", "render_table", "study_dict"]
"""The per-study conversion lives in the core (:mod:`dicomcheck.decision_record`); re-exported here."""


def analysis_document(
    studies: Sequence[StudyDecision], errors: Sequence[ReadError], *, policy: Policy, registry_path: str | None
) -> dict:
    """The ``analyze --format json`` document, built through its typed model."""
    return AnalysisDocument(
        dicomcheck_version=__version__,
        rules_version=RULES_VERSION,
        policy=PolicyRecord.from_policy(policy),
        devices=registry_path,
        studies=[StudyDecisionRecord.from_decision(s) for s in studies],
        errors=[ReadErrorRecord.model_validate(e.as_dict()) for e in errors],
    ).model_dump(mode="json")


_OUTCOME_STYLE = {
    Outcome.SUPPORTS_76377: "bold green",
    Outcome.SUPPORTS_76376: "bold cyan",
    Outcome.NO_3D: "bold",
    Outcome.BUNDLED: "bold magenta",
    Outcome.NEEDS_REVIEW: "bold yellow",
}


def render_table(console: Console, studies: Sequence[StudyDecision], errors: Sequence[ReadError]) -> None:
    """One block per study: outcome, code, series with kind / origin / counts, the reasons."""
    for study in studies:
        title = Text.assemble(
            (study.outcome.value, _OUTCOME_STYLE[study.outcome]),
            f"  CPT {study.code}" if study.code else "  no 3D code",
        )
        header = (
            f"Study {study.study_instance_uid}\n"
            f"Accession {study.accession_number or '-'}   Date {study.study_date or '-'}   "
            f"{study.study_description or ''}   ({study.instances} instances)"
        )
        console.print(header, style="dim", highlight=False)
        table = Table(title=title, title_justify="left", show_lines=False, expand=False)
        table.add_column("series", overflow="fold")
        table.add_column("mod")
        table.add_column("n", justify="right")
        table.add_column("kind")
        table.add_column("3D")
        table.add_column("origin")
        table.add_column("made by / equipment", overflow="fold")
        for s in study.series:
            equipment = (
                s.product
                or " / ".join(v for v in (s.equipment.manufacturer, s.equipment.model, s.equipment.station_name) if v)
                or "-"
            )
            table.add_row(
                s.series_description or f"(no description) …{s.series_instance_uid[-12:]}",
                s.modality or "-",
                str(s.instances),
                s.kind.value + (f" ({s.technique.value})" if s.technique and s.technique.value != s.kind.value else ""),
                "yes" if s.is_3d else "",
                s.origin.value,
                equipment,
            )
        console.print(table)
        for hit in study.reasons:
            console.print(f"  [bold]{hit.rule}[/bold]  {hit.text}", highlight=False)
            for ev in hit.evidence[:6]:
                console.print(f"      {ev.tag or ''} {ev.keyword} = {ev.value!r}", style="dim", highlight=False)
        console.print()
    if errors:
        console.print(f"[bold red]{len(errors)} input(s) not analysed[/bold red]")
        for error in errors:
            console.print(f"  {error.path}: {error.reason}", highlight=False)
    console.print(f"{len(studies)} studies analysed · dicomcheck {__version__} · rules {RULES_VERSION}", style="dim")

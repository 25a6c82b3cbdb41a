"""A typed decision as the JSON document of one study (schema/analysis.schema.json ``studies[]``).

The document is the dump of :class:`dicomcheck.decision_record.StudyDecisionRecord`; this function
stays for callers that want the plain dict of a decision in one call.
"""

from __future__ import annotations

from typing import Any

from .decision_record import StudyDecisionRecord
from .model import StudyDecision


def study_dict(study: StudyDecision) -> dict[str, Any]:
    return StudyDecisionRecord.from_decision(study).document()

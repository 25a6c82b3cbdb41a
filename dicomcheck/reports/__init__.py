"""Report reconciliation core (issue 12 §2): what a radiology report states about 3D work, and the
documentation verdict that holds those statements against the image decision.

Pure: no I/O, no SQL, no network. :func:`read_statements` reads a report's text;
:func:`documentation_verdict` compares its statements with a study's outcome.
"""

from __future__ import annotations

from .documentation import Documentation, DocumentationVerdict, FlagReason, ReportFlag, documentation_verdict
from .phrases import PhraseSetError, builtin_phrases, load_phrases
from .statements import Assertion, ReportStatements, Statement, StatementKind, read_statements

__all__ = [
    "Assertion",
    "Documentation",
    "DocumentationVerdict",
    "FlagReason",
    "PhraseSetError",
    "ReportFlag",
    "ReportStatements",
    "Statement",
    "StatementKind",
    "builtin_phrases",
    "documentation_verdict",
    "load_phrases",
    "read_statements",
]

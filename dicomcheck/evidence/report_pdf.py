"""The PDF report of one study for an audit pack (reportlab platypus).

One study per PDF: identifiers, the outcome and code in large type, the rules that fired with the
header values they cite, the site policies that decided something, what header evidence cannot
show (billing-rules R10-R12), the equipment behind each series, thumbnails of every 3D series and
of one acquisition image, and where every cited instance came from. Every page carries a footer
with the generation time, the dicomcheck and rules versions, the decision and "page x of y".

Text is set in DejaVu Sans when the system has it (Latin, Greek, Cyrillic) and otherwise in the
Bitstream Vera fonts that ship inside reportlab (Latin-1); either way the font is embedded and
characters it lacks are transliterated (accents dropped) or shown as "?" rather than as blank
boxes. The output is deterministic: the same source and thumbnails give the same bytes (reportlab
invariant mode, with the PDF creation date set to ``source.generated_at``).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import io
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias
from xml.sax.saxutils import escape

from ..decision_record import EvidenceRecord
from ..enums import CitedRole, Origin, Outcome, RuleId, SeriesKind
from .model import CitedInstance, EvidenceSource, Receipt
from .thumbnails import BURNED_IN_NOTE, Thumbnail

__all__ = ["render_pdf", "OUTCOME_WORDS", "CANNOT_SHOW"]

OUTCOME_WORDS: dict[Outcome, tuple[str, str]] = {
    Outcome.SUPPORTS_76377: (
        "3D on an independent workstation",
        "The images show 3D post-processing made on an independent workstation: they support 76377.",
    ),
    Outcome.SUPPORTS_76376: (
        "3D on the scanner console or PACS viewer",
        "The images show 3D post-processing made on the scanner console or in the PACS viewer: they support 76376.",
    ),
    Outcome.NO_3D: (
        "No 3D post-processing",
        "The images show no 3D post-processing (originals, reformats or other derived images only).",
    ),
    Outcome.BUNDLED: (
        "3D bundled in the base study",
        "3D is present, but the base study already includes 3D: neither 76376 nor 76377 applies.",
    ),
    Outcome.NEEDS_REVIEW: (
        "Needs review",
        "3D is present, but the headers cannot settle where it was made or what it belongs to.",
    ),
}

CANNOT_SHOW: tuple[tuple[str, str], ...] = (
    (
        "Concurrent physician supervision (R11)",
        "Whether a physician took part in and monitored the 3D post-processing - chose the anatomy, the structures "
        "to show and the views to keep, and adjusted the result. DICOM headers cannot show it; Operators' Name and "
        "Performing Physician's Name are hints at most.",
    ),
    (
        "Medical necessity and the order (R12)",
        "Whether the 3D was ordered and medically necessary. That is in the order and the clinical record, "
        "not in the images.",
    ),
    (
        "The written 3D report (R10, R12)",
        "The interpretation of the 3D images, the description of the technique, and the report's own statement of "
        "where the 3D was made (scanner console or independent workstation). This evidence corroborates or "
        "contradicts that statement; it does not replace it.",
    ),
)

_KIND_WORDS: dict[SeriesKind, str] = {
    SeriesKind.ACQUISITION: "acquisition (original images)",
    SeriesKind.MPR: "reformat (MPR) - not 3D",
    SeriesKind.PROJECTION: "projection (MIP / MinIP)",
    SeriesKind.VOLUME_RENDER: "volume rendering",
    SeriesKind.SURFACE_RENDER: "surface rendering (SSD)",
    SeriesKind.SEGMENTATION: "segmentation / quantitative 3D",
    SeriesKind.OTHER_DERIVED: "other derived (no 3D technique)",
    SeriesKind.NON_IMAGE: "not an image (SR, KOS, presentation state, raw)",
}
_ORIGIN_WORDS: dict[Origin, str] = {
    Origin.SCANNER_CONSOLE: "scanner console",
    Origin.PACS_VIEWER: "PACS viewer",
    Origin.INDEPENDENT_WORKSTATION: "independent workstation",
    Origin.UNKNOWN: "unknown",
}
_ROLE_WORDS: dict[CitedRole, str] = {
    CitedRole.THREE_D: "3D image",
    CitedRole.ACQUISITION: "acquisition image",
    CitedRole.CITED: "cited",
}
_ROLE_RANK: dict[CitedRole, int] = {CitedRole.THREE_D: 0, CitedRole.ACQUISITION: 1, CitedRole.CITED: 2}
_POLICY_RULES: dict[RuleId, str] = {
    rule: rule.value.removeprefix("policy.") for rule in RuleId if rule.value.startswith("policy.")
}
"""The rule a site policy fires when it decides something -> that setting's name (a ``PolicyRecord`` field)."""
_POLICY_NOTES = {
    "pacs_viewer_code": (
        "Sources disagree whether 3D made in a PACS viewer is 76376 or 76377 (billing-rules R9); "
        "this site's setting decided."
    ),
    "minip_is_3d": "No billing source names MinIP; it is the MIP operation with the minimum (billing-rules R4).",
    "curved_mpr_is_3d": (
        "No billing source names curved reformats; by default they are reformats, not 3D (billing-rules R3)."
    ),
}
_OUTCOME_COLOURS: dict[Outcome, tuple[str, str]] = {  # (background, text) in hex
    Outcome.SUPPORTS_76377: ("#D8F0DC", "#14532D"),
    Outcome.SUPPORTS_76376: ("#D6EEF5", "#0C4A6E"),
    Outcome.NO_3D: ("#E8E8E8", "#222222"),
    Outcome.BUNDLED: ("#F1DDF0", "#701A75"),
    Outcome.NEEDS_REVIEW: ("#FCEBC7", "#78350F"),
}
Flowable: TypeAlias = Any
"""A reportlab flowable (Paragraph, Table, Image, Spacer ...): reportlab ships no type information."""
Style: TypeAlias = Any
"""A reportlab ``ParagraphStyle``."""
TableCommand: TypeAlias = tuple[Any, ...]
"""A reportlab ``TableStyle`` command: (name, start cell, end cell, arguments ...)."""
_MAX_VALUE_CHARS = 600
_MARGIN = 0.55 * 72  # points: page margins left / right / top; the footer sits in the bottom margin


# ------------------------------------------------------------------------------------------ fonts


@dataclass(frozen=True, slots=True)
class _Fonts:
    regular: str
    bold: str
    mono: str
    glyphs: dict[str, frozenset[int]]
    """Font name -> the code points it has glyphs for."""
    description: str

    def covers(self, font: str) -> Callable[[str], bool]:
        glyphs = self.glyphs.get(font) or self.glyphs[self.regular]
        return lambda ch: ord(ch) in glyphs


def _font_dirs() -> list[Path]:
    dirs = [
        Path(p)
        for p in (
            "/usr/share/fonts/truetype/dejavu",
            "/usr/share/fonts/dejavu",
            "/usr/share/fonts/TTF",
            "/usr/share/fonts/dejavu-sans-fonts",
            "/usr/share/fonts/dejavu-sans-mono-fonts",
            "/usr/share/fonts/truetype",
            "/usr/local/share/fonts",
            "/opt/homebrew/share/fonts",
            "/Library/Fonts",
            "C:/Windows/Fonts",
        )
    ]
    try:
        spec = importlib.util.find_spec("matplotlib")  # ships DejaVu; located without importing it
    except (ImportError, ValueError):
        spec = None
    if spec and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    return dirs


def _find(name: str) -> Path | None:
    for folder in _font_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _glyphs(font: Any) -> frozenset[int]:
    return frozenset(getattr(font.face, "charToGlyph", None) or ())


@functools.cache
def _fonts() -> _Fonts:
    import reportlab
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    regular, bold, mono = _find("DejaVuSans.ttf"), _find("DejaVuSans-Bold.ttf"), _find("DejaVuSansMono.ttf")
    family, bold_name, description = "DejaVuSans", "DejaVuSans-Bold", "DejaVu Sans"
    if not (regular and bold):
        bundled = Path(reportlab.__file__).parent / "fonts"
        regular, bold = bundled / "Vera.ttf", bundled / "VeraBd.ttf"
        family, bold_name, description = "Vera", "VeraBd", "Bitstream Vera (bundled with reportlab)"
    faces = [TTFont(family, str(regular)), TTFont(bold_name, str(bold))]
    if mono:
        faces.append(TTFont("DejaVuSansMono", str(mono)))
    for face in faces:
        pdfmetrics.registerFont(face)
    for is_bold, is_italic in ((0, 0), (1, 0), (0, 1), (1, 1)):  # <b> in paragraphs; no italics used
        addMapping(family, is_bold, is_italic, bold_name if is_bold else family)
    mono_name = "DejaVuSansMono" if mono else family  # else the sans face (embedded, unlike Courier)
    return _Fonts(family, bold_name, mono_name, {face.fontName: _glyphs(face) for face in faces}, description)


def _clean(text: object, covers: Callable[[str], bool]) -> str:
    """Text the font can draw: control characters become spaces, uncovered letters lose their
    accents (NFKD) or become '?'."""
    out = []
    for ch in str(text):
        if ch in "\t\r\n" or unicodedata.category(ch) == "Cc":
            out.append(" ")
        elif covers(ch):
            out.append(ch)
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            out.append(base if base and all(covers(c) for c in base) else "?")
    return "".join(out)


# ----------------------------------------------------------------------------------------- styles


class _Styles:
    def __init__(self, fonts: _Fonts) -> None:
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle

        self.fonts = fonts
        base = ParagraphStyle("base", fontName=fonts.regular, fontSize=8.5, leading=10.5, splitLongWords=1)
        self.body = base
        self.small = ParagraphStyle("small", base, fontSize=7, leading=8.6)
        self.tiny = ParagraphStyle("tiny", base, fontSize=6.3, leading=7.6, textColor=colors.HexColor("#333333"))
        self.mono = ParagraphStyle("mono", base, fontName=fonts.mono, fontSize=6.3, leading=7.6)
        self.cell_head = ParagraphStyle("cellhead", base, fontName=fonts.bold, fontSize=7, leading=8.6)
        self.title = ParagraphStyle("title", base, fontName=fonts.bold, fontSize=17, leading=21, spaceAfter=2)
        self.subtitle = ParagraphStyle(
            "subtitle", base, fontSize=8.5, textColor=colors.HexColor("#555555"), spaceAfter=8
        )
        self.h2 = ParagraphStyle(
            "h2", base, fontName=fonts.bold, fontSize=12, leading=15, spaceBefore=10, spaceAfter=4, keepWithNext=1
        )
        self.h3 = ParagraphStyle(
            "h3", base, fontName=fonts.bold, fontSize=9, leading=11.5, spaceBefore=6, spaceAfter=2, keepWithNext=1
        )
        self.rule_text = ParagraphStyle("ruletext", base, leftIndent=8, spaceAfter=3)
        self.caption = ParagraphStyle("caption", base, fontSize=6.8, leading=8.2)
        self.note = ParagraphStyle("note", base, fontSize=8, leading=10, textColor=colors.HexColor("#7A2E0E"))

    def p(self, text: object, style: Style | None = None) -> Flowable:
        """A paragraph of plain text (escaped, cleaned for the style's font)."""
        from reportlab.platypus import Paragraph

        style = style or self.body
        return Paragraph(escape(_clean(text, self.fonts.covers(style.fontName))), style)

    def markup(self, parts: Iterable[tuple[str, object]], style: Style | None = None) -> Flowable:
        """A paragraph from (kind, text) parts: kind 't' text, 'b' bold, 'm' monospace, 'br' line break."""
        from reportlab.platypus import Paragraph

        style = style or self.body
        fonts = self.fonts
        chunks = []
        for kind, text in parts:
            if kind == "br":
                chunks.append("<br/>")
            elif kind == "m":
                chunks.append(f'<font face="{fonts.mono}">{escape(_clean(text, fonts.covers(fonts.mono)))}</font>')
            elif kind == "b":
                chunks.append(f"<b>{escape(_clean(text, fonts.covers(fonts.bold)))}</b>")
            else:
                chunks.append(escape(_clean(text, fonts.covers(style.fontName))))
        return Paragraph("".join(chunks), style)


def _grid_style(header: bool = True, extra: Iterable[TableCommand] = ()) -> Any:
    from reportlab.lib import colors
    from reportlab.platypus import TableStyle

    commands = [
        ("FONTNAME", (0, 0), (-1, -1), _fonts().regular),  # plain-string cells: never the unembedded Helvetica
        ("GRID", (0, 0), (-1, -1), 0.35, colors.HexColor("#B8B8B8")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if header:
        commands.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#EDEDED")))
    commands.extend(extra)
    return TableStyle(commands)


def _table(
    rows: list[list[Flowable]], widths: list[float], *, header: bool = True, extra: Iterable[TableCommand] = ()
) -> Flowable:
    from reportlab.platypus import Table

    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, splitByRow=1, hAlign="LEFT")
    table.setStyle(_grid_style(header, extra))
    return table


# ----------------------------------------------------------------------------------------- values


def _utc(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # the index stores UTC
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "-"


def _value(value: object) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _recorded(value: object) -> str:
    """An ISO 8601 time as the report shows times (UTC, to the second), anything else as given."""
    try:
        return _utc(dt.datetime.fromisoformat(str(value))) or "-"
    except ValueError:
        return _or_dash(value)


def _or_dash(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def _transfer_syntax(uid: str | None) -> tuple[str, str]:
    if not uid:
        return "-", ""
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:  # noqa: BLE001
        name = uid
    return (name, uid) if name != uid else ("", uid)


# -------------------------------------------------------------------------------------- the canvas


def _canvas_class(footer: Callable[[int, int], tuple[str, str]], generated: dt.datetime, fonts: _Fonts) -> type:
    """A canvas that draws the footer once the page count is known ("page x of y")."""
    from reportlab.lib import colors
    from reportlab.pdfgen.canvas import Canvas

    stamp = generated.astimezone(dt.UTC)

    class FooterCanvas(Canvas):  # type: ignore[misc]  # reportlab ships no type information
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["initialFontName"] = kwargs.get("initialFontName") or fonts.regular  # not the unembedded Helvetica
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []
            self.setDateFormatter(lambda *_: stamp.strftime("D:%Y%m%d%H%M%S+00'00'"))

        def showPage(self) -> None:  # noqa: N802 - reportlab's name
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for number, state in enumerate(self._pages, start=1):
                self.__dict__.update(state)
                self._footer(number, total)
                Canvas.showPage(self)
            Canvas.save(self)

        def _footer(self, number: int, total: int) -> None:
            width, _ = self._pagesize
            first, second = footer(number, total)
            self.saveState()
            self.setStrokeColor(colors.HexColor("#B8B8B8"))
            self.setLineWidth(0.4)
            self.line(_MARGIN, 0.62 * 72, width - _MARGIN, 0.62 * 72)
            self.setFillColor(colors.HexColor("#444444"))
            self.setFont(fonts.regular, 6.8)
            covers = fonts.covers(fonts.regular)
            self.drawString(_MARGIN, 0.48 * 72, _clean(first, covers))
            self.drawString(_MARGIN, 0.34 * 72, _clean(second, covers))
            self.setFont(fonts.bold, 7.5)
            self.drawRightString(width - _MARGIN, 0.34 * 72, f"page {number} of {total}")
            self.restoreState()

    return FooterCanvas


# ------------------------------------------------------------------------------------------ render


def render_pdf(
    source: EvidenceSource,
    thumbnails: dict[str, Thumbnail],
    *,
    minimal: bool = False,
    review: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
) -> bytes:
    """The report of ``source`` as PDF bytes (with the coder's ``review`` of the decision, when given, and
    the radiology ``report`` held against it: its documentation verdict, flags, cited sentences and hash).

    ``thumbnails`` maps SOP Instance UID -> :class:`Thumbnail` for the instances with role ``3d`` and
    ``acquisition`` (a missing entry is reported in place of the picture). ``minimal`` (PHI-minimal
    pack) withholds the patient ID and, as a second line of defence, any picture of an instance
    whose header says Burned In Annotation YES.
    """
    from reportlab.lib.pagesizes import letter
    from reportlab.platypus import SimpleDocTemplate

    fonts = _fonts()
    styles = _Styles(fonts)
    decision_record = source.decision
    builder = _Builder(source, thumbnails, styles, minimal, review, report, session)
    story = builder.story()

    generated = source.generated_at if source.generated_at.tzinfo else source.generated_at.replace(tzinfo=dt.UTC)
    decision = (
        f"decision #{source.decision_id} decided {_utc(source.decided_at) or '-'}"
        if source.decision_id is not None or source.decided_at is not None
        else "offline analysis (no stored decision)"
    )
    study_line = f"Study {source.study_instance_uid}"
    if decision_record.accession_number:
        study_line += f" · accession {decision_record.accession_number}"
    study_line += f" · outcome {decision_record.outcome.value}" + (
        f" (CPT {decision_record.code})" if decision_record.code else ""
    )

    def footer(number: int, total: int) -> tuple[str, str]:
        return study_line, (
            f"Generated {_utc(generated)} · dicomcheck {source.dicomcheck_version} · "
            f"rules {source.rules_version} · {decision}"
        )

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=letter,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=0.55 * 72,
        bottomMargin=0.8 * 72,
        title=f"dicomcheck evidence report - study {source.study_instance_uid}",
        author="dicomcheck",
        subject="3D post-processing evidence (CPT 76376 / 76377)",
        creator=f"dicomcheck {source.dicomcheck_version}",
        producer="dicomcheck (reportlab)",
        invariant=1,
        lang="en",
        initialFontName=fonts.regular,
    )
    doc.build(story, canvasmaker=_canvas_class(footer, generated, fonts))
    return buffer.getvalue()


class _Builder:
    def __init__(
        self,
        source: EvidenceSource,
        thumbnails: dict[str, Thumbnail],
        styles: _Styles,
        minimal: bool,
        review: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        session: dict[str, Any] | None = None,
    ) -> None:
        from reportlab.lib.pagesizes import letter

        self.source = source
        self.decision = source.decision
        self.thumbnails = thumbnails
        self.s = styles
        self.minimal = minimal
        self.review = review
        self.report = report
        self.session = session
        self.width = letter[0] - 2 * _MARGIN
        self.series = {s.series_instance_uid: s for s in self.decision.series}

    # -- helpers

    def series_label(self, uid: str | None) -> str:
        series = self.series.get(uid or "")
        if series is None:
            return "(series not in the decision)"
        return series.series_description or f"(no description) …{(uid or '')[-12:]}"

    def ordered_instances(self, roles: tuple[CitedRole, ...]) -> list[CitedInstance]:
        order = {uid: i for i, uid in enumerate(self.series)}
        chosen = [i for i in self.source.instances if i.role in roles]
        return sorted(
            chosen,
            key=lambda i: (
                _ROLE_RANK[i.role] if len(roles) > 1 else 0,
                order.get(i.series_instance_uid, len(order)),
            ),
        )

    # -- story

    def story(self) -> list[Flowable]:
        story: list[Flowable] = []
        story += self.heading()
        story += self.outcome()
        story += self.coder_review()
        story += self.radiology_report()
        story += self.session_part()
        story += self.rules()
        story += self.policies()
        story += self.cannot_show()
        story += self.equipment()
        story += self.images()
        story += self.provenance()
        return story

    def heading(self) -> list[Flowable]:
        s, d = self.s, self.decision
        patient = "withheld (PHI-minimal pack)" if self.minimal else _or_dash(d.patient_id)
        decided = (
            f"#{self.source.decision_id}, decided {_utc(self.source.decided_at) or '-'}"
            if self.source.decision_id is not None or self.source.decided_at is not None
            else "offline analysis of files (no stored decision)"
        )
        rows = [
            ("Study Instance UID", d.study_instance_uid, True),
            ("Accession number", _or_dash(d.accession_number), False),
            ("Study date", _date(d.study_date), False),
            ("Study description", _or_dash(d.study_description), False),
            ("Patient ID", patient, False),
            ("Received", f"{d.instances} instances in {len(d.series)} series", False),
            ("Decision", decided, False),
        ]
        table = _table(
            [[s.p(k, s.cell_head), s.p(v, s.mono) if mono else s.p(v, s.small)] for k, v, mono in rows],
            [110, self.width - 110],
            header=False,
        )
        return [
            s.p("3D post-processing evidence", s.title),
            s.p(
                "dicomcheck evidence report: what the images of one study prove about 3D post-processing, "
                "with the DICOM header values behind every statement. A coder makes the billing call.",
                s.subtitle,
            ),
            table,
        ]

    def outcome(self) -> list[Flowable]:
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle
        from reportlab.platypus import Spacer, Table, TableStyle

        s, d = self.s, self.decision
        outcome = d.outcome
        label, meaning = OUTCOME_WORDS[outcome]
        background, ink = _OUTCOME_COLOURS[outcome]
        big = ParagraphStyle(
            "big", s.body, fontName=s.fonts.bold, fontSize=19, leading=23, textColor=colors.HexColor(ink)
        )
        code = d.code
        code_style = ParagraphStyle("code", big, fontSize=30 if code else 19, leading=35 if code else 23, alignment=2)
        plain = ParagraphStyle("plain", s.body, fontSize=9.5, leading=12, textColor=colors.HexColor(ink))
        banner = Table(
            [
                [s.p(label, big), s.p(f"CPT {code}" if code else "no 3D code", code_style)],
                [
                    s.markup(
                        [
                            ("t", meaning),
                            ("br", ""),
                            ("b", "Outcome: "),
                            ("m", outcome.value),
                            ("b", "   Code: "),
                            ("m", code or "none"),
                        ],
                        plain,
                    ),
                    "",
                ],
            ],
            colWidths=[self.width * 0.66, self.width * 0.34],
        )
        banner.setStyle(
            TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), s.fonts.regular),
                    ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(background)),
                    ("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor(ink)),
                    ("SPAN", (0, 1), (1, 1)),
                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 10),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 10),
                    ("TOPPADDING", (0, 0), (-1, 0), 10),
                    ("BOTTOMPADDING", (0, -1), (-1, -1), 9),
                ]
            )
        )
        return [Spacer(1, 10), banner]

    def coder_review(self) -> list[Flowable]:
        """The coder's final outcome for this decision, when the pack was written after a review."""
        review = self.review
        if not review:
            return []
        s = self.s
        code = review.get("code")
        rows = [
            ("Final outcome", f"{review.get('outcome')} " + (f"(CPT {code})" if code else "(no 3D code)")),
            ("Reviewer", _or_dash(review.get("reviewer"))),
            ("Recorded", f"{_recorded(review.get('created_at'))} with token {_or_dash(review.get('token_name'))}"),
            ("Reason", _or_dash(review.get("reason"))),
        ]
        table = _table([[s.p(k, s.cell_head), s.p(v, s.small)] for k, v in rows], [110, self.width - 110], header=False)
        return [
            s.p("Coder's review", s.h2),
            s.p("A coder reviewed the automatic decision above and recorded this final outcome.", s.small),
            table,
        ]

    def radiology_report(self) -> list[Flowable]:
        """The radiology report held against the decision (issue 12): verdict, flags with their reasons, the
        report's sentences about the 3D work, and the SHA-256 of the report text the verdict was read from."""
        report = self.report
        if not report:
            return []
        s = self.s
        status = {"P": "preliminary", "F": "final", "C": "corrected"}.get(str(report.get("status")), "none received")
        rows = [
            ("Documentation", _or_dash(report.get("documentation"))),
            ("Flags", ", ".join(report.get("flags") or []) or "none"),
            ("Report", f"{status}, received {_recorded(report.get('received'))}, {_or_dash(report.get('source'))}"),
            ("Text SHA-256", _or_dash(report.get("text_sha256"))),
        ]
        story: list[Flowable] = [
            s.p("Radiology report", s.h2),
            s.p(
                "What the radiologist's report states about the 3D work, held against the images. The outcome above "
                "does not change on the report; this is a separate documentation verdict.",
                s.small,
            ),
            _table([[s.p(k, s.cell_head), s.p(v, s.small)] for k, v in rows], [110, self.width - 110], header=False),
        ]
        for reason in report.get("reasons") or []:
            story.append(s.p(f"{reason.get('flag')}: {reason.get('reason')}", s.small))
        sentences = report.get("sentences") or []
        if sentences:
            story.append(s.p("Sentences of the report about the 3D work", s.cell_head))
            story += [s.p(f"\u201c{sentence}\u201d", s.small) for sentence in sentences]
        elif self.minimal and report.get("text_sha256"):
            story.append(s.p("The report's sentences are withheld (PHI-minimal pack); its hash is above.", s.small))
        return story

    def session_part(self) -> list[Flowable]:
        """The study's session (issue 13): one patient, one day; its verdict and studies, and the 3D series dated
        after the study (the same-day tie). A PHI-minimal pack shows this study's part only."""
        session, later = self.session, self.decision.made_later
        if not session and not later:
            return []
        s = self.s
        story: list[Flowable] = [
            s.p("Session", s.h2),
            s.p(
                "The 3D add-on code is reported with the primary procedure of its day, once per session when the "
                "regions rendered are contiguous. The session verdict depends on the outcomes and regions of the "
                "patient's studies of that day; it never changes the outcome above.",
                s.small,
            ),
        ]
        rows: list[tuple[str, str]] = []
        if session:
            rows.append(("Verdict", f"{session.get('verdict')}" + ("" if session.get("final") else " (not final)")))
            if "session_id" in session:
                rows.append(("Session", _or_dash(session.get("session_id"))))
                rows.append(("Carrier", _or_dash(session.get("carrier"))))
            chosen = _carrier_from(session)
            if chosen:
                rows.append(("Carrier from", chosen))
            mine = session.get("this_study")
            if isinstance(mine, dict):  # a PHI-minimal pack: this study's part only
                rows.append(("Studies", f"{session.get('studies')} in the session"))
                carries = "carries the unit" if mine.get("carries_unit") else "does not carry the unit"
                regions = ", ".join(mine.get("regions") or []) or "unknown"
                counted = f"outcome {_session_outcome(mine)}"
                rows.append(("This study", f"{counted}; {carries}; regions {regions}"))
        if later:
            rows.append(("3D dated later", later.text))
        story.append(
            _table([[s.p(k, s.cell_head), s.p(v, s.small)] for k, v in rows], [110, self.width - 110], header=False)
        )
        studies = (session or {}).get("studies")
        if isinstance(studies, list) and studies:
            table = [[s.p(h, s.cell_head) for h in ("Study Instance UID", "Outcome", "Regions", "Carries")]]
            for study in studies:
                table.append(
                    [
                        s.p(str(study.get("study_instance_uid")), s.mono),
                        s.p(_session_outcome(study), s.small),
                        s.p(", ".join(study.get("regions") or []) or "unknown", s.small),
                        s.p("yes" if study.get("carries_unit") else "", s.small),
                    ]
                )
            story.append(_table(table, [200, 110, self.width - 200 - 110 - 50, 50]))
        for note in (session or {}).get("notes") or []:
            story.append(s.p(str(note), s.small))
        return story

    def evidence_table(self, evidence: Sequence[EvidenceRecord]) -> Flowable:
        s = self.s
        rows = [[s.p(h, s.cell_head) for h in ("Tag", "Keyword", "Value", "SOP Instance UID")]]
        for item in evidence:
            rows.append(
                [
                    s.p(item.tag or "-", s.mono),
                    s.p(item.keyword, s.small),
                    s.p(_value(item.value), s.small),
                    s.p(item.sop_instance_uid or "-", s.mono),
                ]
            )
        return _table(rows, [52, 118, self.width - 52 - 118 - 165, 165])

    def rules(self) -> list[Flowable]:
        from reportlab.platypus import CondPageBreak, KeepTogether

        from ..rules import RULES

        s = self.s
        out = [s.p("Rules that fired", s.h2)]
        for reason in self.decision.reasons:  # at least one: the record requires it
            rule = reason.rule.value
            head = s.markup([("m", rule), ("t", "  "), ("t", RULES.get(rule, ""))], s.h3)
            parts = [head, s.p(reason.text, s.rule_text)]
            if reason.series:
                names = "; ".join(self.series_label(uid) for uid in reason.series)
                parts.append(s.markup([("b", "Series: "), ("t", names)], s.rule_text))
            evidence = reason.evidence
            if evidence:
                parts.append(self.evidence_table(evidence))
            else:
                parts.append(
                    s.p(
                        "No header values are cited by this rule itself; the series it names are listed "
                        "with their equipment below.",
                        s.tiny,
                    )
                )
            if len(evidence) <= 8:
                out.append(KeepTogether(parts))
            else:  # a long table starts here when 2 inches are left, and splits with its header repeated
                out += [CondPageBreak(144), *parts]
        return out

    def policies(self) -> list[Flowable]:
        s = self.s
        policy = dict(self.decision.policy)  # setting name -> value, in the record's order
        decided = {_POLICY_RULES[r.rule]: r for r in self.decision.reasons if r.rule in _POLICY_RULES}
        out = [s.p("Site policies", s.h2)]
        if not decided:
            values = ", ".join(f"{k} = {_policy_value(v)}" for k, v in policy.items())
            out.append(s.p(f"No site policy decided anything in this study. In force: {values}.", s.small))
            return out
        out.append(
            s.p(
                "These site settings decided part of this study. They are choices of the site, "
                "not of the coding sources, and are shown so that an auditor can weigh them.",
                s.small,
            )
        )
        rows = [[s.p(h, s.cell_head) for h in ("Policy", "Value", "Decided this study", "Why it is a setting")]]
        for key in list(policy) + [k for k in decided if k not in policy]:
            hit = decided.get(key)
            rows.append(
                [
                    s.p(key, s.mono),
                    s.p(_policy_value(policy.get(key, "-")), s.small),
                    s.p(hit.text if hit else "no", s.small),
                    s.p(_POLICY_NOTES.get(key, ""), s.tiny),
                ]
            )
        out.append(_table(rows, [88, 52, (self.width - 140) * 0.55, (self.width - 140) * 0.45]))
        return out

    def cannot_show(self) -> list[Flowable]:
        from reportlab.lib import colors
        from reportlab.platypus import KeepTogether

        s = self.s
        rows = [[s.p(title, s.cell_head), s.p(text, s.small)] for title, text in CANNOT_SHOW]
        rows.append(
            [
                s.p("Therefore", s.cell_head),
                s.p(
                    "The coder must check these in the patient's record (order, 3D report, supervision) "
                    "before reporting 76376 or 76377. dicomcheck states what the images prove; it does not bill.",
                    s.small,
                ),
            ]
        )
        table = _table(
            rows,
            [150, self.width - 150],
            header=False,
            extra=[("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#FFF6E0"))],
        )
        return [KeepTogether([s.p("What this evidence cannot show", s.h2), table])]

    def equipment(self) -> list[Flowable]:
        s = self.s
        out = [s.p("Equipment behind each series", s.h2)]
        rows = [[s.p(h, s.cell_head) for h in ("Series", "Kind, 3D, origin", "Equipment", "Capture and derivation")]]
        for series in self.decision.series:
            eq = series.equipment
            evidence = series.evidence
            kind, technique = series.kind, series.technique
            kind_words = _KIND_WORDS[kind]
            if technique is not None and technique.value != kind.value:  # a finer name than the kind's
                kind_words += f" ({technique.value})"
            sc = [e for e in evidence if e.keyword.startswith("SecondaryCaptureDevice")]
            conversion = [e for e in evidence if e.keyword == "ConversionType"]
            kind_rule = series.kind_rule.value
            derivation = [e for e in evidence if e.signal == kind_rule] or [
                e for e in evidence if e.signal.startswith("kind.")
            ]
            capture: list[tuple[str, object]] = []
            for e in _unique(sc):
                capture += [("b", f"{_short_sc(e.keyword)}: "), ("t", _value(e.value)), ("br", "")]
            capture += [("b", "Conversion type: "), ("t", ", ".join(_unique_values(conversion)) or "-"), ("br", "")]
            if not sc:
                capture += [("b", "Secondary-capture device: "), ("t", "-"), ("br", "")]
            capture += [("b", "Kind decided by: "), ("m", kind_rule)]
            for e in _unique(derivation):
                capture += [("br", ""), ("t", f"{e.keyword} = {_value(e.value)}")]
            rows.append(
                [
                    s.markup(
                        [
                            ("b", series.series_description or "(no description)"),
                            ("br", ""),
                            ("t", f"{series.modality or '-'} · {series.instances} instances"),
                            ("br", ""),
                            ("m", series.series_instance_uid),
                        ],
                        s.small,
                    ),
                    s.markup(
                        _labelled(
                            ("Kind", "t", kind_words),
                            ("3D", "t", "yes" if series.is_3d else "no"),
                            ("Origin", "t", _ORIGIN_WORDS[series.origin]),
                            ("Product", "t", _or_dash(series.product)),
                            ("Origin rule", "m", series.origin_rule.value),
                        ),
                        s.small,
                    ),
                    s.markup(
                        _labelled(
                            ("Manufacturer", "t", _or_dash(eq.manufacturer)),
                            ("Model", "t", _or_dash(eq.model)),
                            ("Station", "t", _or_dash(eq.station_name)),
                            ("Software", "t", _or_dash(eq.software_versions)),
                            ("Serial", "t", _or_dash(eq.device_serial_number)),
                        ),
                        s.small,
                    ),
                    s.markup(capture, s.small),
                ]
            )
        if len(rows) == 1:
            out.append(s.p("No series in the decision.", s.small))
            return out
        w = self.width
        out.append(_table(rows, [w * 0.25, w * 0.24, w * 0.24, w * 0.27]))
        return out

    def images(self) -> list[Flowable]:
        from reportlab.platypus import Image, Spacer

        s = self.s
        instances = self.ordered_instances((CitedRole.THREE_D, CitedRole.ACQUISITION))
        out = [
            s.p("Images", s.h2),
            s.p(
                "One image of every 3D series and one acquisition image, as decoded from the stored files "
                "(the middle frame of a multi-frame instance).",
                s.small,
            ),
            Spacer(1, 4),
        ]
        if not instances:
            out.append(s.p("No 3D series and no acquisition image to show.", s.small))
            return out
        per_row = 3
        box = (self.width - 6 * per_row) / per_row
        cells = []
        for instance in instances:
            thumb = self.thumbnails.get(instance.sop_instance_uid)
            if thumb is not None and thumb.png is not None and self.minimal and _burned_in(instance.path):
                thumb = Thumbnail(None, BURNED_IN_NOTE, 0, None, thumb.frames)
            role = "3D series" if instance.role == CitedRole.THREE_D else "Acquisition"
            caption = [
                ("b", f"{role}: "),
                ("t", self.series_label(instance.series_instance_uid)),
                ("br", ""),
                ("t", "SOP Instance UID "),
                ("m", instance.sop_instance_uid),
            ]
            if thumb is not None and thumb.png is not None:
                picture = Image(io.BytesIO(thumb.png))
                scale = min(box / picture.imageWidth, box / picture.imageHeight)
                picture.drawWidth, picture.drawHeight = picture.imageWidth * scale, picture.imageHeight * scale
                caption += [("br", ""), ("t", f"frame {thumb.frame} of {thumb.frames} · window: {thumb.window or '-'}")]
                cells.append([picture, s.markup(caption, s.caption)])
            else:
                note = thumb.note if thumb is not None else "no thumbnail was made for this instance"
                cells.append([s.p(f"No picture: {note}", s.note), s.markup(caption, s.caption)])
        rows = []
        for i in range(0, len(cells), per_row):
            row = cells[i : i + per_row]
            rows.append(row + [""] * (per_row - len(row)))
        out.append(_table(rows, [box + 6] * per_row, header=False, extra=[("ALIGN", (0, 0), (-1, -1), "CENTER")]))
        return out

    def provenance(self) -> list[Flowable]:
        s = self.s
        out = [
            s.p("Receipt provenance", s.h2),
            s.p("Every cited instance: who sent it, when, from where and how. SHA-256 is of the stored file.", s.small),
        ]
        instances = self.ordered_instances(tuple(CitedRole))
        if not instances:
            out.append(s.p("No instance is cited.", s.small))
            return out
        rows = [
            [
                s.p(h, s.cell_head)
                for h in (
                    "Instance",
                    "Received (UTC)",
                    "Sender -> receiver",
                    "Transfer syntax",
                    "Sender implementation",
                )
            ]
        ]
        spans = []
        for instance in instances:
            who = s.markup(
                [
                    ("b", f"{_ROLE_WORDS[instance.role]}: "),
                    ("t", self.series_label(instance.series_instance_uid)),
                    ("br", ""),
                    ("m", instance.sop_instance_uid),
                    ("br", ""),
                    ("m", f"sha256 {instance.sha256}"),
                ],
                s.small,
            )
            if not instance.receipts:
                spans.append(len(rows))
                rows.append([who, s.p("analysed from files, no network receipt", s.small), "", "", ""])
                continue
            for n, receipt in enumerate(instance.receipts):
                rows.append(
                    [who if n == 0 else s.p("(same instance, another copy)", s.tiny), *self.receipt_cells(receipt)]
                )
        w = self.width
        widths = [w * 0.30, w * 0.14, w * 0.19, w * 0.18, w * 0.19]
        out.append(_table(rows, widths, extra=[("SPAN", (1, r), (4, r)) for r in spans]))
        return out

    def receipt_cells(self, receipt: Receipt) -> list[Flowable]:
        s = self.s
        name, uid = _transfer_syntax(receipt.transfer_syntax_uid)
        when = (_utc(receipt.received_at) or "-").replace("T", " ")
        if receipt.duplicate:
            when += " (duplicate copy)"
        return [
            s.p(when, s.small),
            s.markup(
                [
                    ("m", receipt.calling_ae or "-"),
                    ("t", " -> "),
                    ("m", receipt.called_ae or "-"),
                    ("br", ""),
                    ("t", "from "),
                    ("m", receipt.peer_address or "-"),
                ],
                s.small,
            ),
            s.markup([("t", name), ("br", "") if name and uid else ("t", ""), ("m", uid)], s.small),
            s.markup(
                [
                    ("m", receipt.implementation_class_uid or "-"),
                    ("br", ""),
                    ("t", receipt.implementation_version_name or "-"),
                ],
                s.small,
            ),
        ]


def _policy_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value.value) if isinstance(value, Enum) else str(value)


def _labelled(*lines: tuple[str, str, object]) -> list[tuple[str, object]]:
    """Markup parts of ``label: value`` lines, one a line: each line is (label, value kind 't' or 'm', value)."""
    parts: list[tuple[str, object]] = []
    for label, kind, value in lines:
        parts += [("br", "")] if parts else []
        parts += [("b", f"{label}: "), (kind, value)]
    return parts


def _short_sc(keyword: str) -> str:
    return {
        "SecondaryCaptureDeviceManufacturer": "SC device manufacturer",
        "SecondaryCaptureDeviceManufacturerModelName": "SC device model",
        "SecondaryCaptureDeviceSoftwareVersions": "SC device software",
        "SecondaryCaptureDeviceID": "SC device ID",
    }.get(keyword, keyword)


def _unique(items: list[EvidenceRecord]) -> list[EvidenceRecord]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = (item.keyword, item.value)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _unique_values(items: list[EvidenceRecord]) -> list[str]:
    return list(dict.fromkeys(i.value for i in items if i.value))


def _burned_in(path: Path) -> bool:
    """Burned In Annotation YES in the header (unreadable headers count as no: the thumbnail exists)."""
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["BurnedInAnnotation"])
        return str(header.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    except Exception:  # noqa: BLE001
        return False


def _session_outcome(study: dict[str, Any]) -> str:
    """The outcome a session counts for one of its studies, marked "(coder review)" when a coder's current review
    gave it (issue 13) rather than the decision; with who and when where the pack has them."""
    outcome = str(study.get("outcome"))
    if study.get("outcome_from") != "coder_review":
        return outcome
    review = study.get("review")
    if isinstance(review, dict):
        when = str(review.get("reviewed_at"))[:10]
        return f"{outcome} (coder review: {review.get('reviewer')}, {when})"
    return f"{outcome} (coder review)"


def _carrier_from(session: dict[str, Any]) -> str | None:
    """Why the carrier carries (issue 13): a coder's choice (who, when, why) or the default (the first decided).
    A PHI-minimal pack has ``carrier_from`` only, not the coder's words."""
    choice = session.get("carrier_choice")
    basis = session.get("carrier_from")
    if isinstance(choice, dict):
        said = (
            f"chosen by a coder: {choice.get('reviewer')}, {str(choice.get('chosen_at'))[:19].replace('T', ' ')} UTC"
            f" (choice #{choice.get('choice_id')}): {choice.get('reason')}"
        )
        if choice.get("applied"):
            return said
        return f"the first decided study; a coder's choice does not apply now ({said})"
    if basis == "coder_choice":
        return "chosen by a coder (POST /sessions/{session_id}/carrier)"
    if basis == "first_decided":
        return "the first decided study (the default; no coder chose another)"
    return None

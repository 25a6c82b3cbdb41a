"""One HL7 v2 ORU^R01 report message: read it (pure: bytes in, :class:`IncomingReport` or :class:`Refused`
out) and answer it (:func:`ack`).

Every value is read from hostile input: the character set is MSH-18's (ASCII, 8859/n, UNICODE UTF-8;
undecodable bytes are an AE with the byte's offset, never an exception), every identifier has a length
bound (longer is an AE), display values are cut, and nothing read names a path or reaches a log but the
message control ID. The segments and fields are split by ``hl7`` (python-hl7); the escape sequences are
decoded here (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\`` and the FT formatting commands as line breaks),
because the library's decoder logs the field it decodes (report text is PHI).

Matching identifiers, per IHE RAD (issue 12): the Study Instance UID in ZDS-1 when present, else the
accession number (OBR-18, then OBR-3, then ORC-3), within the patient ID of PID-3 component 1.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import hl7

MAX_ID = 64
"""Patient ID, accession number, Study Instance UID, sending application / facility: longer is an AE."""
MAX_CONTROL_ID = 199
"""Message control ID (MSH-10; HL7 v2.7 allows 199 characters): longer is an AE."""
MAX_NAME = 128
"""Reporting radiologist (OBR-32) as kept: longer names are cut."""
TEXT_TYPES = ("TX", "FT", "ST")
STATUSES = ("P", "F", "C")
ACCEPT, ERROR, REJECT = "AA", "AE", "AR"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LINES = re.compile(r"\r\n|\r|\n")
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_CHARSETS = {
    "": "",  # no MSH-18: ASCII by the standard, UTF-8 accepted (what senders mean when they leave it out)
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}
_ECHO = re.compile(r"[^\x20-\x7e]|[|^~\\&]")


class Refused(Exception):  # noqa: N818 - a refusal answered with an ACK code, not an error of ours
    """A message answered AE (cannot be used) or AR (refused); ``reason`` is shown to the sender and logged,
    so it never quotes a value but the control ID; ``error_code`` is the HL7 table 0357 code."""

    def __init__(self, code: str, reason: str, error_code: str = "207") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class Header:
    """What the MSH says about the message, read even from a message that is refused (for its ACK)."""

    control_id: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger: str
    processing_id: str
    version: str
    charset: str

    @property
    def sender(self) -> str:
        """``APP^FACILITY`` (MSH-3 and MSH-4, component 1 each), as the allow-list names senders."""
        return f"{self.sending_application}^{self.sending_facility}"


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """A report as a message carried it."""

    study_instance_uid: str | None
    accession_number: str | None
    patient_id: str | None
    status: str
    """P preliminary, F final, C corrected (replaces the final one)."""
    text: str
    radiologist: str | None
    report_time: dt.datetime | None


def read_header(block: bytes) -> Header | None:
    """The MSH of ``block`` (the message between the MLLP start and end bytes), or None when it has none.

    Read from the raw bytes, before the character set is known: the MSH is ASCII in every set this reads."""
    head = block.lstrip(b"\r\n\t ")
    if not head.startswith(b"MSH") or len(head) < 8:
        return None
    line = _LINES.split(head[:4096].decode("latin-1"), maxsplit=1)[0]
    field_sep = line[3]
    fields = line.split(field_sep)
    component_sep = fields[1][:1] if len(fields) > 1 and fields[1] else "^"

    def field(n: int) -> str:  # MSH-n is fields[n - 1]: MSH-1 is the separator itself
        value = fields[n - 1] if 0 < n - 1 < len(fields) else ""
        return value.split(component_sep)[0] if n != 9 else value

    message_type = field(9).split(component_sep) + ["", ""]
    return Header(
        control_id=_echo(field(10), MAX_CONTROL_ID + 1),  # one more: an over-long ID is seen, and refused
        sending_application=_echo(field(3), MAX_ID),
        sending_facility=_echo(field(4), MAX_ID),
        receiving_application=_echo(field(5), MAX_ID),
        receiving_facility=_echo(field(6), MAX_ID),
        message_type=_echo(message_type[0], 8),
        trigger=_echo(message_type[1], 8),
        processing_id=_echo(field(11), 3),
        version=_echo(field(12), 16),
        charset=(fields[17] if len(fields) > 17 else "").split(fields[1][1:2] or "~")[0].strip().upper(),
    )


def check_header(header: Header) -> None:
    """Refuse what is not an ORU^R01 or cannot be answered by its control ID."""
    if len(header.control_id) > MAX_CONTROL_ID:
        raise Refused(ERROR, f"MSH-10 (message control ID) longer than {MAX_CONTROL_ID} characters", "102")
    if not header.control_id:
        raise Refused(ERROR, "no message control ID (MSH-10)", "101")
    if header.message_type != "ORU":
        raise Refused(ERROR, f"message type {header.message_type or '(none)'} is not ORU (only ORU^R01 is read)", "200")
    if header.trigger != "R01":
        raise Refused(ERROR, f"trigger event {header.trigger or '(none)'} is not R01 (only ORU^R01 is read)", "201")


def sender_allowed(header: Header, allowed: list[str] | tuple[str, ...]) -> bool:
    """Whether the sender is on the allow-list (empty: everyone). An entry ``APP`` names a sending
    application from any facility, ``APP^FACILITY`` both, ``^FACILITY`` any application of a facility."""
    if not allowed:
        return True
    for entry in allowed:
        app, _, facility = entry.partition("^")
        if (not app or app == header.sending_application) and (not facility or facility == header.sending_facility):
            return True
    return False


def read_message(block: bytes, header: Header) -> IncomingReport:
    """The report of an ORU^R01 (its header already checked); :class:`Refused` (AE) names what is wrong."""
    text = _decode(block, header.charset)
    lines = [line for line in _LINES.split(text.strip("\r\n\x00 ")) if line.strip()]
    message = _parse(lines)
    seps = message.separators  # segment, field, repetition, component, subcomponent
    reader = _Fields(message, seps, str(message.esc), _CHARSETS.get(header.charset) or "utf-8")

    patient_id = reader.identifier("PID", 3, "PID-3 (patient ID)")
    if not patient_id:
        raise Refused(ERROR, "no patient ID (PID-3 component 1)", "101")
    study_uid = reader.identifier("ZDS", 1, "ZDS-1 (Study Instance UID)")
    if study_uid is not None and not _UID.match(study_uid):
        raise Refused(ERROR, "ZDS-1 is not a Study Instance UID (digits and dots)", "102")
    accession = (
        reader.identifier("OBR", 18, "OBR-18 (accession number)")
        or reader.identifier("OBR", 3, "OBR-3 (filler order number)")
        or reader.identifier("ORC", 3, "ORC-3 (filler order number)")
    )
    if not (study_uid or accession):
        raise Refused(ERROR, "no study identifier: neither ZDS-1 nor an accession number (OBR-18, OBR-3, ORC-3)", "101")

    observations = [s for s in message if str(s[0]) == "OBX"]
    pieces = [
        reader.text(segment)
        for segment in observations
        if reader.component(segment, 2).upper() in TEXT_TYPES and reader.raw(segment, 5)
    ]
    body = "\n".join(p for p in pieces if p.strip()).strip()
    if not body:
        raise Refused(ERROR, "no report text: no OBX segment of value type TX, FT or ST with a value", "101")

    status = reader.component_of("OBR", 25).upper()
    if not status and observations:
        status = reader.component(observations[0], 11).upper()
    if status not in STATUSES:
        shown = status[:4] if status.isalnum() else "(none)" if not status else "(not a status)"
        raise Refused(ERROR, f"result status {shown} is not P, F or C (OBR-25)", "103")

    radiologist = reader.person("OBR", 32)
    when = _time(reader.component_of("OBR", 22)) or (
        _time(reader.component(observations[0], 14)) if observations else None
    )
    return IncomingReport(
        study_instance_uid=study_uid,
        accession_number=accession,
        patient_id=patient_id,
        status=status,
        text=body.replace("\x00", "\ufffd"),
        radiologist=radiologist,
        report_time=when,
    )


def ack(header: Header | None, code: str, reason: str | None = None, *, error_code: str = "207") -> bytes:
    """The HL7 ACK of a message (``header`` None: of one whose MSH could not be read), ASCII, with the
    reason in MSA-3 and ERR for an AE / AR. Every value echoed from the message is printable ASCII with
    no separator."""
    now = dt.datetime.now(dt.UTC)
    h = header
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            (h.receiving_application if h else "") or "DICOMCHECK",
            h.receiving_facility if h else "",
            h.sending_application if h else "",
            h.sending_facility if h else "",
            now.strftime("%Y%m%d%H%M%S+0000"),
            "",
            f"ACK^{h.trigger if h else ''}^ACK",
            f"DC{now.strftime('%Y%m%d%H%M%S%f')}",
            (h.processing_id if h else "") or "P",
            (h.version if h else "") or "2.5.1",
        ]
    )
    shown = _echo(reason or "", 200)
    segments = [msh, f"MSA|{code}|{h.control_id if h else ''}" + (f"|{shown}" if shown else "")]
    if code != ACCEPT:
        segments.append(f"ERR|||{error_code}^{shown}^HL70357|E")
    return ("\r".join(segments) + "\r").encode("ascii")


def _echo(value: str, limit: int) -> str:
    """A value as an ACK or a log may show it: printable ASCII, no HL7 separator, at most ``limit`` characters."""
    return _ECHO.sub("?", value.strip())[:limit]


def _decode(block: bytes, charset: str) -> str:
    codec = _CHARSETS.get(charset)
    if codec == "":
        codec = "ascii"
    elif codec is None:
        raise Refused(
            ERROR,
            f"character set {_echo(charset, 32)} (MSH-18) is not supported: ASCII, 8859/n or UNICODE UTF-8",
            "103",
        )
    # no MSH-18: ASCII by the standard; UTF-8 is what senders mean when they leave it out
    failure: UnicodeDecodeError | None = None
    for attempt in (codec, "utf-8") if not charset else (codec,):
        try:
            return block.decode(attempt)
        except UnicodeDecodeError as exc:
            failure = exc
    where = failure.start if failure is not None else 0
    raise Refused(
        ERROR,
        f"byte 0x{block[where]:02X} at offset {where} is not {codec.upper()} "
        f"(MSH-18 {'says ' + _echo(charset, 32) if charset else 'empty: ASCII or UTF-8'})",
        "102",
    )


def _parse(lines: list[str]) -> Any:
    """The message split by python-hl7; a line that does not start a segment continues the one before
    (a sender's raw line break inside a text value), kept as a line break."""
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise Refused(ERROR, "the message does not start with an MSH segment", "100")
    escape = lines[0][6] if len(lines[0]) > 6 else "\\"
    starts = re.compile(r"^[A-Z][A-Z0-9]{2}(?:$|" + re.escape(lines[0][3]) + ")")
    joined: list[str] = []
    for line in lines:
        if joined and not starts.match(line):
            joined[-1] += f"{escape}.br{escape}{line}"
        else:
            joined.append(line)
    try:
        return hl7.parse("\r".join(joined))
    except (hl7.ParseException, IndexError, ValueError):
        raise Refused(
            ERROR, "unparseable segment: the message cannot be split into segments and fields", "100"
        ) from None


class _Fields:
    """Bounded reads of a parsed message's fields, decoded."""

    def __init__(self, message: Any, seps: str, esc: str, codec: str) -> None:
        self.message = message
        self.field_sep, self.rep, self.comp, self.sub = seps[1], seps[2], seps[3], seps[4]
        self.esc = esc
        self.codec = codec

    def first(self, segment_id: str) -> Any | None:
        return next((s for s in self.message if str(s[0]) == segment_id), None)

    def raw(self, segment: Any, n: int) -> str:
        return str(segment[n]) if segment is not None and n < len(segment) else ""

    def component(self, segment: Any, n: int, component: int = 1) -> str:
        first_repetition = self.raw(segment, n).split(self.rep)[0]
        parts = first_repetition.split(self.comp)
        return unescape(parts[component - 1], self) if len(parts) >= component else ""

    def component_of(self, segment_id: str, n: int) -> str:
        return self.component(self.first(segment_id), n).strip()

    def identifier(self, segment_id: str, n: int, name: str) -> str | None:
        value = self.component(self.first(segment_id), n).split(self.sub)[0].strip()
        if len(value) > MAX_ID:
            raise Refused(ERROR, f"{name} longer than {MAX_ID} characters", "102")
        return value or None

    def person(self, segment_id: str, n: int) -> str | None:
        """OBR-32 (NDL: name&ID parts in component 1) as readable text, cut to :data:`MAX_NAME`."""
        component = self.component(self.first(segment_id), n)
        words = [w.strip() for w in component.split(self.sub) if w.strip()]
        if not words:
            return None
        ident, names = (words[0], words[1:]) if len(words) > 1 and words[0].isdigit() else ("", words)
        shown = " ".join(names[1:2] + names[:1] + names[2:]) + (f" ({ident})" if ident else "")
        return shown[:MAX_NAME] or None

    def text(self, segment: Any) -> str:
        """OBX-5 of a TX / FT / ST observation: each repetition a line, escapes decoded."""
        return "\n".join(unescape(rep, self) for rep in self.raw(segment, 5).split(self.rep))


def unescape(value: str, fields: _Fields) -> str:
    """HL7 escape sequences decoded: separators, ``\\Xhh..\\`` bytes in the message's character set, FT
    formatting commands as line breaks (``.br``, ``.sp[n]``, ``.ce``) or nothing (``.fi``, ``.nf``,
    ``.in``, ``.ti``, highlighting ``H`` / ``N``); character-set switches and ``Z`` sequences dropped.
    An unterminated escape is kept as written."""
    esc = fields.esc
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        end = value.find(esc, i + 1) if ch == esc else -1
        if ch != esc or end < 0:
            out.append(ch)
            i += 1
            continue
        out.append(_sequence(value[i + 1 : end], fields))
        i = end + 1
    return "".join(out)


def _sequence(code: str, fields: _Fields) -> str:
    simple = {"F": fields.field_sep, "S": fields.comp, "T": fields.sub, "R": fields.rep, "E": fields.esc}
    if code in simple:
        return simple[code]
    if code in ("H", "N", ".fi", ".nf") or code[:3] in (".in", ".ti") or code[:1] in ("C", "M", "Z"):
        return ""
    if code == ".br" or code == ".ce":
        return "\n"
    if code == ".sk" or code.startswith(".sk"):
        return " "
    if code.startswith(".sp"):
        count = code[3:].strip().lstrip("+")
        return "\n" * min(int(count), 20) if count.isdigit() else "\n"
    if code[:1] == "X" and len(code) % 2 == 1:
        try:
            return bytes.fromhex(code[1:]).decode(fields.codec)
        except (ValueError, UnicodeDecodeError):
            raise Refused(ERROR, f"an escape \\X..\\ holds bytes that are not {fields.codec.upper()}", "102") from None
    return ""


def _time(value: str) -> dt.datetime | None:
    """An HL7 DTM as an aware time (no offset: taken as UTC); None when absent or not a time."""
    match = _DTM.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        zone = dt.UTC
        if offset:
            sign = -1 if offset[0] == "-" else 1
            zone = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=zone
        ).astimezone(dt.UTC)
    except ValueError:
        return None

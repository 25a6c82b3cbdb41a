"""Generate dicomcheck's DICOM Conformance Statement from the code that negotiates and answers.

    python -m scp.conformance > docs/conformance.md

Everything in the statement comes from the running code: the presentation contexts are
``scp.server.supported_contexts(Settings())`` with ``TRANSFER_SYNTAXES``, the AE settings with their
flags, defaults and meanings are declared on the ``dicomcheck.config.Settings`` fields (no CLI import),
the DIMSE statuses are ``dicomcheck.ingest.StoreStatus``. ``tests/test_conformance.py`` fails when
docs/conformance.md is not this module's output, and checks the contexts and rejections over real associations.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from pydicom.uid import UID

from dicomcheck import __version__
from dicomcheck.config import Settings, default_text, flag_markdown, settings_table_markdown
from dicomcheck.ingest import StoreStatus

from .server import TRANSFER_SYNTAXES, make_ae, supported_contexts

VERIFICATION = "1.2.840.10008.1.1"

REJECTIONS: tuple[tuple[str, int, int, int, str], ...] = (
    # (when, result, source, reason/diagnostic, meaning) -- A-ASSOCIATE-RJ as pynetdicom sends it
    (
        "the calling AE title is not in the allow-list (`allow_callers`, when set)",
        0x01,
        0x01,
        0x03,
        "rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized",
    ),
    (
        "the called AE title is not ours (when `require_called_ae`, the default)",
        0x01,
        0x01,
        0x07,
        "rejected-permanent, DICOM UL service-user, called-AE-title-not-recognized",
    ),
    (
        "`max_associations` associations are already open (per receiver process; see below)",
        0x02,
        0x03,
        0x02,
        "rejected-transient, DICOM UL service-provider (presentation related), local-limit-exceeded",
    ),
)

STATUS_MEANING: dict[StoreStatus, tuple[str, str]] = {
    StoreStatus.SUCCESS: (
        "Success",
        "The file is on disk (fsynced, renamed into place, directory fsynced) with its journal entry; its "
        "index rows follow within moments. Also answered for an identical re-send (recorded as a duplicate "
        "receipt, stored once) and for changed content under a known SOP Instance UID (kept as a new version).",
    ),
    StoreStatus.SOP_CLASS_NOT_SUPPORTED: (
        "Refused: SOP Class not supported",
        "The request's Affected SOP Class UID is not a storage class we accept, or "
        "differs from the abstract syntax of the presentation context it was sent on. "
        "Nothing is stored.",
    ),
    StoreStatus.OUT_OF_RESOURCES: (
        "Refused: Out of Resources",
        "Storage full or failing, the storage volume below `min_free_space`, or the index unavailable. Nothing was "
        "answered success; the sender may retry later.",
    ),
    StoreStatus.CANNOT_UNDERSTAND: (
        "Error: Cannot understand",
        "The data set cannot be parsed. Kept in quarantine with the reason.",
    ),
    StoreStatus.MISSING_UIDS: (
        "Error: Cannot understand (0xC001)",
        "Study, Series or SOP Instance UID missing. Kept in quarantine with the reason.",
    ),
    StoreStatus.UID_MISMATCH: (
        "Error: Cannot understand (0xC002)",
        "The data set's SOP Instance or SOP Class UID differs from the C-STORE request's. "
        "Kept in quarantine with the reason.",
    ),
    StoreStatus.INVALID_UID: (
        "Error: Cannot understand (0xC003)",
        "The data set's Study, Series or SOP Instance UID breaks PS3.5 §9.1 (after removing the "
        "trailing NUL / space padding): more than 64 characters, a character other than digits "
        "and '.', or an empty component. Kept in quarantine with the reason, the same on SQLite "
        "and PostgreSQL. A component with a leading zero is accepted.",
    ),
}

NETWORK_FIELDS: tuple[str, ...] = (
    # Settings fields of section 2.1, in this order; flag, default and meaning are read from each field
    "ae_title",
    "dicom_port",
    "bind",
    "processes",
    "allow_callers",
    "require_called_ae",
    "max_associations",
    "max_pdu",
    "acse_timeout",
    "dimse_timeout",
    "network_timeout",
    "private_sop_classes",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_require_client_cert",
    "stable_after",
    "evidence_destination",
)


LIMITS: tuple[tuple[str, str | None, str], ...] = (
    # (what is bounded, Settings field, what a breach gets) -- DICOM first, then HTTP
    (
        "Association request (A-ASSOCIATE-RQ) complete, measured from the TCP connection (ARTIM, PS3.8 §9.1.5)",
        "acse_timeout",
        "the connection is closed; its slot is free again",
    ),
    (
        "One PDU complete, measured from its first byte; bytes trickling in do not extend it",
        "pdu_deadline",
        "connection closed; a data set cut short is discarded (never acknowledged)",
    ),
    ("Network inactivity on an association", "network_timeout", "A-ABORT, connection closed"),
    (
        "DICOM TLS handshake: done by the association's own thread, within the association-request deadline "
        "(a peer that never sends its ClientHello blocks nobody else)",
        "acse_timeout",
        "the connection is closed",
    ),
    (
        "Concurrent associations (connections still sending their A-ASSOCIATE-RQ do not count)",
        "max_associations",
        "A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded",
    ),
    (
        "Size a Deflated Explicit VR Little Endian data set may inflate to (inflated as a stream, never held in "
        "memory)",
        "max_inflated_size",
        "`0xA700` Out of Resources (retryable); nothing stored. A deflate stream that cannot be "
        "decoded: `0xC000`, quarantined",
    ),
    (
        "Header values read per instance: top-level values over 1 MB (private blobs, overlays, icons) are skipped by "
        "their length, never read; at most 256 MB of header values in all",
        None,
        "over 256 MB of header values: `0xA700`",
    ),
    (
        "Free space kept on the storage volume (share of the volume or a size; `statvfs` checked at most once a second "
        "before each instance is stored)",
        "min_free_space",
        "`0xA700` Out of Resources (retryable), Error Comment `storage below min_free_space`; logged once per "
        "transition, `/healthz` degraded, metric `dicomcheck_storage_below_min_free_space`; retention and quarantine "
        "expiry run at once",
    ),
    (
        "Pixel data kept after a study's current decision: then each instance becomes a header-only copy (every other "
        "element byte-exact; the thumbnail instances of a pack kept whole; a Deflated data set kept whole), listed in "
        "a signed retention record; the index keeps the original SHA-256 and size",
        "pixel_retention",
        "nothing is refused: space is freed by the hourly retention pass or `dicomcheck storage prune`",
    ),
    (
        "Quarantined inputs kept",
        "quarantine_retention",
        "deleted by the retention pass; the index row stays, marked expired, and a signed record lists them",
    ),
    (
        "HTTP: a connection idle, or sending a request's headers or body, for longer than",
        "http_idle_timeout",
        "the connection is closed",
    ),
    (
        "HTTP: request body size (checked against Content-Length before reading; chunked bodies while streaming)",
        "http_max_body",
        "`413 Content Too Large`, body not read",
    ),
    ("HTTP: request header block size", "http_max_header_size", "`431` / connection closed"),
    (
        "HTTP: open connections",
        "http_max_connections",
        "further connections answered `503` and closed (never more than half the descriptors; accepted a"
        " quarter of the cap at a time), so the DICOM receiver keeps its file descriptors",
    ),
    (
        "HL7 MLLP: message size (between the start byte and the end bytes; a 1 MB report passes)",
        "hl7_max_message",
        "ACK `AR` (message larger than ...), connection closed; nothing stored",
    ),
    (
        "HL7 MLLP: time a connection may take to send its next complete message (idle or trickling)",
        "hl7_idle_timeout",
        "the connection is closed; a message cut short is not stored (never acknowledged)",
    ),
    ("HL7 MLLP: open connections", "hl7_max_connections", "one more is closed at once"),
)

EVIDENCE_FIELDS = (
    # Settings fields of section 7 (the evidence return to the PACS), in this order
    "evidence_destination",
    "evidence_retry_base",
    "evidence_retry_max_delay",
    "evidence_retry_max_attempts",
    "evidence_retry_max_age",
)

HL7_FIELDS = (
    "hl7_port",
    "hl7_allow_senders",
    "hl7_max_message",
    "hl7_idle_timeout",
    "hl7_max_connections",
    "report_wait",
)


def _name(uid: str) -> str:
    name = UID(uid).name
    return "" if name == uid else name


def _check_fields() -> None:
    """Every setting the statement names is a Settings field: a renamed one fails here instead of vanishing."""
    named = [
        *NETWORK_FIELDS,
        *EVIDENCE_FIELDS,
        *HL7_FIELDS,
        "forwarded_allow_ips",
        *(field for _, field, _ in LIMITS if field),
    ]
    missing = [field for field in named if field not in Settings.model_fields]
    if missing:
        raise RuntimeError(f"scp.conformance: not Settings fields: {missing}")


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def statement(settings: Settings | None = None) -> str:
    settings = settings or Settings.model_validate({})  # the defaults: no environment, no config file
    ae = make_ae(settings)
    contexts = supported_contexts(settings)
    storage = [str(cx.abstract_syntax) for cx in contexts if str(cx.abstract_syntax) != VERIFICATION]
    verification = next(cx for cx in contexts if str(cx.abstract_syntax) == VERIFICATION)
    _check_fields()
    out: list[str] = []
    add = out.append

    add("# dicomcheck DICOM Conformance Statement")
    add("")
    add(
        f"dicomcheck {__version__}. Generated from the code by `python -m scp.conformance > docs/conformance.md`; "
        "`tests/test_conformance.py` fails when this file differs from the generator's output and checks the contexts "
        "and rejections below over real associations. Do not edit by hand."
    )
    add("")
    add("## 1. Overview")
    add("")
    add(
        "dicomcheck receives studies from a PACS or modality (`dicomcheck serve`), keeps every instance as received, "
        "indexes its header facts and decides, per study, whether the images support CPT 76376 / 76377. This statement "
        "covers its network roles:"
    )
    add("")
    out += _table(
        ["SOP Classes", "User of service (SCU)", "Provider of service (SCP)"],
        [
            ["Verification", "no", "yes"],
            [
                f"Storage ({len(storage)} SOP classes, section 4)",
                "evidence objects only, when `evidence_destination` is set (section 7)",
                "yes",
            ],
        ],
    )
    add("")
    add("No Query/Retrieve, Worklist, MPPS, Storage Commitment or Print services.")
    add("")

    add("## 2. Application Entity")
    add("")
    out += _table(
        ["Item", "Value"],
        [
            ["AE title", f"`{settings.ae_title}` by default (`ae_title`)"],
            ["Implementation Class UID", f"`{ae.implementation_class_uid}` (pynetdicom's)"],
            ["Implementation Version Name", f"`{ae.implementation_version_name}`"],
            ["Network", "TCP/IP, DICOM Upper Layer (PS3.8); IPv4 and IPv6"],
            ["Maximum PDU length received", f"{settings.max_pdu} bytes by default (`max_pdu`)"],
            ["Asynchronous operations window", "not negotiated: one operation at a time on an association"],
            ["SCP/SCU role selection", "default roles only (the requestor is SCU, dicomcheck is SCP)"],
            ["Extended negotiation, user identity", "none; a User Identity item is not required and not answered"],
        ],
    )
    add("")
    add("### 2.1 Settings")
    add("")
    add(
        "Each setting is a flag of `dicomcheck serve` (when listed), an environment variable `DICOMCHECK_<NAME>` or "
        "a key of the `--config` TOML file; flags win over the environment, which wins over the file."
    )
    add("")
    add(settings_table_markdown(NETWORK_FIELDS))

    add("## 3. Association policies")
    add("")
    add("An association request is accepted unless one of these holds; the A-ASSOCIATE-RJ then carries:")
    add("")
    out += _table(
        ["When", "Result", "Source", "Reason", "Meaning"],
        [[when, f"0x{r:02X}", f"0x{s:02X}", f"0x{d:02X}", meaning] for when, r, s, d, meaning in REJECTIONS],
    )
    add("")
    add(
        "Accepted and rejected associations are recorded in the index with the calling and called AE titles, the "
        "peer address, the implementation class UID and version name, TLS, and the rejection reason."
    )
    add("")
    add(
        f"Receiver processes: with N receiver processes ({flag_markdown('processes')} N) one process listens and "
        "hands each "
        "new association to the receiver process with the fewest open associations; each accepts "
        "`ceil(max_associations / N)`, so the total stays `max_associations`."
    )
    add("")
    add(
        "Presentation contexts are negotiated per context: a context whose abstract syntax is not listed in "
        "section 4 is rejected with result 0x03 (abstract syntax not supported); one that proposes none of the "
        "transfer syntaxes of section 4.1 is rejected with result 0x04 (transfer syntaxes not supported). When a "
        "context proposes several transfer syntaxes we support, the first in the order of section 4.1 is accepted."
    )
    add("")

    add("## 4. Presentation contexts (SCP)")
    add("")
    add(
        f"Verification SOP Class `{VERIFICATION}`: transfer syntaxes "
        + ", ".join(f"{_name(str(t))} `{t}`" for t in verification.transfer_syntax)
        + "."
    )
    add("")
    add(
        f"Every storage SOP class below is accepted with every transfer syntax of section 4.1, in the SCP role. "
        f"Private storage SOP classes are accepted only when configured (`private_sop_classes`, "
        f"{flag_markdown('private_sop_classes')}), with the same transfer syntaxes; any other SOP class "
        "is refused at negotiation (result 0x03), so unknown objects are never received."
    )
    add("")
    add("### 4.1 Transfer syntaxes (in order of preference)")
    add("")
    out += _table(["Transfer syntax", "UID"], [[_name(t), f"`{t}`"] for t in TRANSFER_SYNTAXES])
    add("")
    add(f"### 4.2 Storage SOP classes ({len(storage)})")
    add("")
    out += _table(
        ["SOP Class", "UID", "Role"], [[_name(u) or "(private, configured)", f"`{u}`", "SCP"] for u in storage]
    )
    add("")

    add("## 5. C-STORE SCP behaviour")
    add("")
    add(
        "- **Stored as received.** The data set bytes are written as they arrive (straight to a temporary file on "
        "the storage volume, not held in memory), after a File Meta Information header naming the SOP Class and "
        "Instance UIDs of the request and the accepted transfer syntax. Nothing is decompressed, transcoded or "
        "coerced; the SHA-256 of the stored file is kept in the index."
    )
    add(
        "- **Durable before success.** Success is answered only after the file is fsynced, renamed into "
        "`storage/<h(study)>/<h(series)>/<h(instance)>.<sha256>.dcm` (each `h` the first 32 hex digits of the SHA-256 "
        "of the UID: no received value ever names a file or folder; the UIDs are kept in the index) and its "
        "directory fsynced, with a journal entry beside it (created before the rename, made durable by the same "
        "fsync). A failure of any of these is answered with a failure status, never success. The index rows are "
        "written right after the answer, in batches; a study is never decided while an instance of it that was "
        "answered is not yet indexed (by any receiver sharing the storage folder), an A-RELEASE-RP is sent only "
        "once the association's instances are indexed, and the journal lets the next start index what a receiver "
        "killed (or cut off by a power failure) had answered or renamed but not indexed."
    )
    add(
        "- **Duplicates and versions.** An identical re-send is answered Success and recorded as a duplicate receipt "
        "(stored once). Different content under a known SOP Instance UID is stored as a new version; nothing is "
        "overwritten."
    )
    add(
        "- **SOP class checks.** A C-STORE whose Affected SOP Class UID differs from its presentation context's "
        "abstract syntax is refused with 0x0122 (the context decides what may be sent on it)."
    )
    add(
        "- **Provenance.** Each receipt records calling and called AE titles, peer address, implementation class UID "
        "and version name, the transfer syntax and the Move Originator AE title (when present)."
    )
    add("")
    add("DIMSE statuses of C-STORE responses:")
    add("")
    missing = [s for s in StoreStatus if s not in STATUS_MEANING]
    if missing:
        raise RuntimeError(f"scp.conformance: no meaning written for {missing}")
    out += _table(
        ["Status", "Name", "Meaning"],
        [[f"`0x{int(s):04X}`", STATUS_MEANING[s][0], STATUS_MEANING[s][1]] for s in StoreStatus],
    )
    add("")
    add(
        "An unexpected exception in the receiver is answered by pynetdicom with `0xC211` (Cannot understand); "
        "error responses carry an Error Comment (0000,0902) of at most 64 characters."
    )
    add("")

    add("### 5.1 Resource limits")
    add("")
    add(
        "Every limit has a safe default and a setting; a breach is answered as below and never loses an instance "
        "already acknowledged."
    )
    add("")
    out += _table(
        ["Limit", "Setting", "Default", "When exceeded"],
        [
            [what, f"`{field}`" if field else "(fixed)", default_text(field) if field else "", breach]
            for what, field, breach in LIMITS
        ],
    )
    add("")

    add("## 6. Security")
    add("")
    add("- Calling AE allow-list (`allow_callers`) and called AE check (`require_called_ae`), section 3.")
    add(
        "- DICOM TLS (PS3.15 Annex B) on the DICOM port when `tls_cert` and `tls_key` are set: TLS 1.2 or newer, "
        "server certificate from `tls_cert`; with `tls_require_client_cert` a client certificate signed by `tls_ca` "
        "is required (mutual TLS). Without TLS settings the port is plain TCP."
    )
    add(
        "- HTTP behind a TLS-terminating reverse proxy: `X-Forwarded-Proto` and `X-Forwarded-For` are trusted only "
        "from the addresses in `forwarded_allow_ips` (empty by default: from nobody). From them the forwarded "
        "scheme is what the web pages' Origin check compares and what makes the session cookie `Secure`, and the "
        "forwarded client address is audited; the proxy must pass the `Host` header on."
    )
    add("- Logs carry UIDs, AE titles and addresses, never patient names or IDs.")
    add("")

    add("## 7. Storage SCU (evidence objects)")
    add("")
    try:
        from dicomcheck.evidence.model import OWN_SOP_CLASSES
        from dicomcheck.evidence.send import DEFAULT_CALLING_AE
    except ImportError:
        add("Not available in this build.")
    else:
        add(
            "When `evidence_destination` (`AE@host:port`) is set, dicomcheck sends each decision's evidence objects "
            f"to that PACS with C-STORE, calling AE title `{DEFAULT_CALLING_AE}` by default, proposing each SOP class "
            "below with Explicit VR Little Endian (the syntax dicomcheck writes them in). PHI-minimal objects are "
            "never sent."
        )
        add("")
        out += _table(["SOP Class", "UID", "Role"], [[_name(u), f"`{u}`", "SCU"] for u in sorted(OWN_SOP_CLASSES)])
        add("")
        add(
            "Each decision queues its return in the index (one per study, decision and destination; a newer decision "
            "of the study supersedes a return still waiting, so only the newest pack is sent). Receivers sharing the "
            "index take each due return under a lease, so no two send it. The KOS and the SR go in one association; "
            "a return is sent when every C-STORE answers success or a warning (`0x0000`, `0x0001`, `0x0107`, "
            "`0x0116`, `0xBxxx`). An unreachable PACS, a rejected association, an association that ends mid-way or "
            "any other status fails that attempt: the next waits `evidence_retry_base` seconds, doubled after each "
            "failure up to `evidence_retry_max_delay`, less up to 20 % jitter; after `evidence_retry_max_attempts` "
            "attempts or `evidence_retry_max_age` the return is `failed` (`/healthz` degraded, the dashboard and "
            "`dicomcheck evidence returns` list it with its error class; `--retry` queues it again). Objects that can "
            "never be sent (not a KOS / SR of ours, PHI-minimal, another transfer syntax) fail at once, with the "
            "reason. Metric `dicomcheck_evidence_returns{state}`."
        )
        add("")
        add(settings_table_markdown(EVIDENCE_FIELDS))
    add("")

    add("## 8. Character sets")
    add("")
    add(
        "Data sets are stored byte for byte, whatever their Specific Character Set (0008,0005). For the index, "
        "header values are decoded by pydicom according to (0008,0005)."
    )
    add("")

    add("## 9. HL7 v2 reports (MLLP)")
    add("")
    add(
        "With `hl7_port` set, `serve` also listens for radiology reports as HL7 v2 ORU^R01 messages over MLLP (the "
        "framing of HL7 v2 Appendix C; python-hl7's asyncio MLLP server). Each message is answered with an original "
        "mode ACK: `AA` once the report and its audit event are committed to the index (a resend of a stored "
        "message, same sender, control ID and text, is `AA` without a second copy); `AE` with the reason in MSA-3 "
        "and ERR for a message that cannot be used (not ORU^R01, no MSH or an unparseable segment, no OBX text of "
        "type TX / FT / ST, no patient ID, no study identifier, undecodable bytes, an identifier over 64 "
        "characters, a study of another patient); `AR` for a refused one (sending application / facility not in "
        "`hl7_allow_senders`, a message over `hl7_max_message`, a block without the start byte 0x0B, an index that "
        "cannot store it now). A block cut off by a new start byte is dropped and the whole message after it "
        "answered."
    )
    add("")
    add(
        "Read: Study Instance UID from ZDS-1 (IHE RAD), else the accession number from OBR-18, OBR-3 or ORC-3, "
        "matched within the patient ID of PID-3 component 1; report text from the OBX segments of value type TX, FT "
        "and ST (escape sequences decoded, FT formatting commands as line breaks); status from OBR-25 (P, F, C: a "
        "corrected report replaces the final one, every version kept); radiologist from OBR-32; report time from "
        "OBR-22 or OBX-14 (a time without offset is taken as UTC). Character sets (MSH-18): ASCII, 8859/1 to 8859/9 "
        "and 8859/15, UNICODE UTF-8; without MSH-18 ASCII, and UTF-8 is accepted. Logs carry the message control ID, "
        "the sender and UIDs, never report text or patient data; every message writes an audit event."
    )
    add("")
    add(
        "Reports also arrive as DICOM text SR (Basic Text, Enhanced and Comprehensive SR) over C-STORE: stored like "
        "any instance, and read into the reports (TEXT content items; status F when COMPLETE and VERIFIED, C with a "
        "predecessor document, else P) once, when the study is decided. dicomcheck's own evidence SR is "
        "recognised and ignored."
    )
    add("")
    add(settings_table_markdown(HL7_FIELDS))
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(statement())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The HL7 v2 MLLP listener of ``serve --hl7-port``: radiology reports (ORU^R01) in, one ACK out per message.

Runs its own asyncio event loop in a thread of the serving process, on python-hl7's MLLP stream
protocol (``hl7.mllp``); the index work runs in a small thread pool so a slow commit never stalls
the other connections. Every message is answered:

* **AA** once the report and its audit event are committed to the index (so an ACKed report survives
  a kill; a resend of a stored message — same sender, control ID and text — is AA without a copy);
* **AE** with the reason for a message it cannot use: not ORU^R01, no MSH / unparseable segment, no
  OBX text, no patient ID or study identifier, undecodable bytes, an over-long identifier, a study
  of another patient;
* **AR** for one it refuses: a sender not on the allow-list, a message over ``hl7_max_message`` (the
  connection is then closed), a block without the MLLP start byte, or an index that cannot store it
  now (send it again).

Limits: ``hl7_max_message`` bytes a message, ``hl7_idle_timeout`` seconds for a connection's next
complete message, ``hl7_max_connections`` open connections (one more is closed at once). Logs carry
the message control ID, the sender's application / facility and UIDs only, never report text or
patient data; every message writes an audit event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hl7.mllp import HL7StreamProtocol, HL7StreamWriter, MLLPStreamReader
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..store.access import Access, audit_row
from ..store.reports import NewReport, Reports
from .hl7_message import ACCEPT, ERROR, REJECT, Header, Refused, ack, check_header, read_header, read_message
from .hl7_message import sender_allowed as _sender_allowed

log = logging.getLogger("dicomcheck.hl7")
START, END = b"\x0b", b"\x1c\x0d"
AUDIT_EVENT = "Procedure Record"


@dataclass(frozen=True, slots=True)
class MllpLimits:
    max_message: int = 2 << 20
    idle_timeout: float = 120.0
    max_connections: int = 16


class _TooLarge(Exception):  # noqa: N818 - a signal between the reader and the connection loop
    def __init__(self, head: bytes) -> None:
        super().__init__("message too large")
        self.head = head


class _Reader(MLLPStreamReader):
    """python-hl7's MLLP reader, returning the raw block (start byte and all) so a block with bad framing
    can still be answered, and keeping the head of an over-long one for its AR."""

    async def next_block(self) -> bytes:
        try:
            return await self.readuntil(END)
        except asyncio.LimitOverrunError:
            head = bytes(self._buffer[:4096])  # StreamReader's buffer, as hl7.mllp's own readblock uses it
            self._buffer.clear()
            raise _TooLarge(head) from None


class MllpListener:
    """Listen for MLLP on ``host:port`` (port 0: one the OS picks) and store the reports in ``engine``'s index."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        allowed_senders: Sequence[str] = (),
        limits: MllpLimits | None = None,
    ) -> None:
        self.engine = engine
        self.host, self.port = host, port
        self.allowed = tuple(allowed_senders)
        self.limits = limits or MllpLimits()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dicomcheck-mllp", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=min(4, self.limits.max_connections), thread_name_prefix="mllp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.server_address: tuple[str, int] = (host, port)

    # ---------------------------------------------------------------- start / stop
    def start(self) -> MllpListener:
        """Bind and serve; returns once listening (OSError when the port cannot be opened)."""
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._pool.shutdown()
            raise
        address = self._server.sockets[0].getsockname()
        self.server_address = (address[0], address[1])
        if not self.allowed:
            log.warning("no --hl7-allow-sender configured: accepting HL7 reports from any sending application")
        return self

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def protocol() -> HL7StreamProtocol:
            reader = _Reader(limit=self.limits.max_message + len(START) + len(END), loop=loop)
            return HL7StreamProtocol(reader, self._connected, loop=loop)

        return await loop.create_server(protocol, self.host, self.port)

    def shutdown(self) -> None:
        """Stop listening, close the connections, finish the messages being stored (they are in the index
        even when their ACK could not be sent: a resend is then answered AA without a copy)."""
        if self._server is None:
            return
        server, self._server = self._server, None

        async def stop() -> None:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._pool.shutdown(wait=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------- connections
    def _connected(self, reader: _Reader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if len(self._connections) >= self.limits.max_connections:
            log.warning("MLLP connection from %s closed: %d connections open already", address, len(self._connections))
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, address))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: _Reader, writer: HL7StreamWriter, address: str | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(reader.next_block(), self.limits.idle_timeout)
                except TimeoutError:
                    log.info(
                        "MLLP connection from %s closed: no complete message in %ss", address, self.limits.idle_timeout
                    )
                    return
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        log.warning("MLLP connection from %s closed in the middle of a message (not stored)", address)
                    return
                except _TooLarge as exc:
                    header = read_header(exc.head.lstrip(b"\x0b"))
                    reason = f"message larger than {self.limits.max_message} bytes"
                    answer = await loop.run_in_executor(
                        self._pool, self._refused, header, address, Refused(REJECT, reason, "207")
                    )
                    writer.writeblock(answer)
                    await writer.drain()
                    return
                answer = await loop.run_in_executor(self._pool, self.handle, raw, address)
                writer.writeblock(answer)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    # ---------------------------------------------------------------- one message
    def handle(self, raw: bytes, address: str | None) -> bytes:
        """The ACK of one block as read (start byte to end bytes); stores an accepted report first."""
        block = raw[: -len(END)] if raw.endswith(END) else raw
        framed = block.startswith(START)
        if START in block:  # a start byte inside: an earlier message was cut off; the last one is whole
            block = block[block.rindex(START) + 1 :]
        header = read_header(block)
        try:
            if not framed and START not in raw:
                raise Refused(REJECT, "bad framing: the block does not begin with the MLLP start byte 0x0B", "100")
            if header is None:
                raise Refused(ERROR, "the message does not start with an MSH segment", "100")
            if not _sender_allowed(header, self.allowed):
                raise Refused(REJECT, f"sender {header.sender} is not allowed to send reports", "207")
            check_header(header)
            report = read_message(block, header)
            reports = Reports(self.engine)
            if reports.patient_mismatch(report.study_instance_uid, report.accession_number, report.patient_id):
                raise Refused(ERROR, "the study named by the report belongs to another patient ID (PID-3)", "204")
        except Refused as refusal:
            return self._refused(header, address, refusal)
        except Exception as exc:  # noqa: BLE001 - a message this cannot read is answered, never a dead connection
            log.error("HL7 message %s not read: %s", header.control_id if header else "(no MSH)", type(exc).__name__)
            return self._refused(header, address, Refused(ERROR, "the message could not be read", "207"))
        new = NewReport(
            study_instance_uid=report.study_instance_uid,
            accession_number=report.accession_number,
            patient_id=report.patient_id,
            status=report.status,
            text=report.text,
            radiologist=report.radiologist,
            report_time=report.report_time,
            source="hl7",
            sender=header.sender,
            message_control_id=header.control_id,
        )
        audit = _audit(header, address, report.study_instance_uid, ACCEPT, None)
        try:
            stored, resend = reports.add(new, audit=audit)
        except SQLAlchemyError as exc:
            log.error("HL7 %s from %s not stored: %s", header.control_id, header.sender, type(exc).__name__)
            return ack(header, REJECT, "the report could not be stored now; send it again", error_code="207")
        log.info(
            "HL7 report %s from %s stored as report %d (status %s, study %s)%s",
            header.control_id,
            header.sender,
            stored.id,
            stored.status,
            stored.study_instance_uid or "by accession",
            " (a resend, already stored)" if resend else "",
        )
        return ack(header, ACCEPT, "already stored" if resend else None)

    def _refused(self, header: Header | None, address: str | None, refusal: Refused) -> bytes:
        control = header.control_id if header else "(no MSH)"
        sender = header.sender if header else "(unknown)"
        log.warning(
            "HL7 message %s from %s (%s) answered %s: %s", control, sender, address, refusal.code, refusal.reason
        )
        try:
            Access(self.engine).audit(_audit(header, address, None, refusal.code, refusal.reason))
        except SQLAlchemyError as exc:
            log.error("audit event of HL7 message %s not written: %s", control, type(exc).__name__)
        return ack(header, refusal.code, refusal.reason, error_code=refusal.error_code)


def _audit(header: Header | None, address: str | None, study_uid: str | None, code: str, reason: str | None) -> dict:
    """The audit event of one message (``store.access.audit_row``)."""
    not_allowed = code == REJECT and reason is not None and "not allowed" in reason
    detail: dict[str, Any] = {
        "control_id": header.control_id if header else None,
        "sender": header.sender if header else None,
        "ack": code,
    }
    if reason:
        detail["reason"] = reason
    return audit_row(
        event="Security Alert" if not_allowed else AUDIT_EVENT,
        action="E" if not_allowed else "C",
        outcome=0 if code == ACCEPT else 4,
        method="MLLP",
        endpoint="hl7",
        token=None,
        study_uid=study_uid,
        client_address=address,
        detail=detail,
    )

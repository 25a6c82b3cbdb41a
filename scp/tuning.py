"""Receive-path speed tuning of pynetdicom 3.0.4 (the ``speed_tuning`` setting), measured in
bench/README.md ("Receiver").

pynetdicom runs two polling loops per association: the DUL reactor (socket -> PDUs) sleeps 1 ms
whenever its socket has nothing to read, and the association reactor (PDUs -> DIMSE -> C-STORE
handler) sleeps 1 ms before every look at its message queue. On one association each C-STORE
round trip crosses those loops three times: measured, the sleeps cost ~1 ms an instance and the
wake-ups slowed the handler by another ~0.8 ms (GIL); it also reads every PDU 4 KB at a time. The
steps below remove that latency and overhead without touching what is received, stored or answered:

``quiet``    no per-PDU / per-DIMSE standard log handlers (``_config.LOG_HANDLER_LEVEL = "none"``).
``recv``     read a PDU in chunks of up to 256 KB instead of 4 KB.
``reactor``  event-driven reactors: the DUL waits in ``select()`` on its socket and a wake-up pipe
             (written when a primitive is queued for sending or the DUL is stopped) instead of
             sleeping; the association reactor waits on an event the DUL sets when it queued
             something for it (or a sender wants the reactor paused). Timers (ARTIM, network idle)
             are still checked at least every 50 ms. Acceptors only.
``nodelay``  ``TCP_NODELAY`` on every accepted socket (the response leaves at once).
``context``  copy the ~170 supported presentation contexts for each new association shallowly
             (pynetdicom deep-copies them, re-validating every UID: ~26 ms per association).
``meta``     the File Meta Information that pynetdicom writes at the head of each received data set's
             file written from a byte template instead of a pydicom FileMetaDataset built and
             encoded per instance (the same bytes; only for UIDs of digits and dots, at most 64
             characters; anything else goes pynetdicom's way).
``switch``   the interpreter's thread switch interval 1 ms instead of 5 ms: the association thread,
             back from an fsync, waits at most that long for the GIL while the index writer (or
             another association) computes, instead of up to 5 ms.
``response`` the C-STORE-RSP written from a byte template (Implicit VR Little Endian command set:
             group length, SOP class, command field, message ID, data set type, status, SOP
             instance) instead of a pydicom Dataset built and encoded for every instance. Only a
             response without Error Comment / Offending Element that fits one PDU, and only when no
             EVT_DIMSE_SENT handler is bound; anything else goes pynetdicom's way.

With ``speed_tuning`` on (the default) all apply; ``DICOMCHECK_SCP_TUNING`` (``none``, ``all`` or a
comma list such as ``quiet,recv``) selects some of them for measurements (bench/bench_receiver.py).
They change only *when* loops wake up and how bytes are read. Like the fault fixes
(scp/pynetdicom_fixes.py, always on) they are written against pynetdicom
``pynetdicom_fixes.VERIFIED_VERSION`` only, which the receiver requires before it starts.
"""

from __future__ import annotations

import copy
import os
import re
import select
import socket
import struct
import sys
import threading
import time
import weakref
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from dicomcheck.config import Settings

from . import pynetdicom_fixes as fixes

STEPS = ("quiet", "recv", "reactor", "nodelay", "context", "response", "meta", "switch")
ENV = "DICOMCHECK_SCP_TUNING"

TIMER_CHECK = 0.05
"""Longest wait of a reactor without an event, so ARTIM / idle timers are still checked."""

RECV_CHUNK = 256 * 1024
SWITCH_INTERVAL = 0.001
"""Seconds (``sys.setswitchinterval``) with the ``switch`` step."""

_applied: set[str] = set()
_lock = threading.Lock()
_EVENT_DRIVEN = [False]
_TEMPLATED_RESPONSE = [False]
_ORIGINAL: dict[str, Any] = {}


def selected(value: str | None = None) -> set[str]:
    """The steps named by ``DICOMCHECK_SCP_TUNING`` (default: all)."""
    value = os.environ.get(ENV, "all") if value is None else value
    value = value.strip().lower()
    if value in ("", "all"):
        return set(STEPS)
    if value == "none":
        return set()
    steps = {s.strip() for s in value.split(",") if s.strip()}
    unknown = steps - set(STEPS)
    if unknown:
        raise ValueError(f"{ENV}: unknown tuning steps {sorted(unknown)} (known: {', '.join(STEPS)}, all, none)")
    return steps


def steps_for(settings: Settings) -> set[str]:
    """The steps this receiver runs with: none when ``speed_tuning`` is off."""
    return selected() if settings.speed_tuning else set()


def apply(steps: set[str]) -> set[str]:
    """Put ``steps`` in effect in this process (after ``pynetdicom_fixes.install``); returns them."""
    with _lock:
        _config.LOG_HANDLER_LEVEL = "none" if "quiet" in steps else "standard"
        fixes.LIMITS.recv_chunk = RECV_CHUNK if "recv" in steps else fixes.PYNETDICOM_RECV_CHUNK
        if "reactor" in steps:
            _install_event_driven_reactors()
        if "response" in steps:
            _install_response_template()
        _TEMPLATED_RESPONSE[0] = "response" in steps
        meta = "meta" in steps
        dimse_messages.create_file_meta = _file_meta if meta else create_file_meta
        dimse_messages.write_file_meta_info = _write_file_meta if meta else write_file_meta_info
        _ORIGINAL.setdefault("switch_interval", sys.getswitchinterval())
        sys.setswitchinterval(SWITCH_INTERVAL if "switch" in steps else _ORIGINAL["switch_interval"])
        _EVENT_DRIVEN[0] = "reactor" in steps
        fixes.IDLE.wait = _dul_wait if _EVENT_DRIVEN[0] else fixes._sleep_like_pynetdicom
        fixes.IDLE.queued_for_association = _wake_assoc if _EVENT_DRIVEN[0] else fixes._nothing
        fixes.IDLE.ended = _close_pipe if _EVENT_DRIVEN[0] else fixes._nothing
        _applied.clear()
        _applied.update(steps)
    return set(steps)


# ---------------------------------------------------------------------------------------------- reactors
def _install_event_driven_reactors() -> None:
    """Give each DUL a wake-up pipe and each association a wake-up event, written where pynetdicom
    queues work; replace the acceptor's association loop by :func:`_assoc_run_reactor` (once)."""
    if _ORIGINAL:
        return
    _ORIGINAL.update(
        dul_init=DULServiceProvider.__init__,
        assoc_init=Association.__init__,
        send_pdu=DULServiceProvider.send_pdu,
        kill_dul=DULServiceProvider.kill_dul,
        assoc_run_reactor=Association._run_reactor,
    )

    def dul_init(self: DULServiceProvider, assoc: Any) -> None:
        _ORIGINAL["dul_init"](self, assoc)
        pipe = self._dc_pipe = _WakePipe()  # type: ignore[attr-defined]
        weakref.finalize(self, pipe.close)  # a DUL whose reactor never ran

    def assoc_init(self: Association, ae: Any, mode: str) -> None:
        wake = self._dc_wake = threading.Event()  # type: ignore[attr-defined]
        _ORIGINAL["assoc_init"](self, ae, mode)
        # A thread that wants to send on this association clears the checkpoint and waits until the
        # reactor pauses there: wake the reactor so it gets there at once.
        self._reactor_checkpoint = _Checkpoint(wake)

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        _ORIGINAL["send_pdu"](self, primitive)
        _wake_dul(self)

    def kill_dul(self: DULServiceProvider) -> None:
        _ORIGINAL["kill_dul"](self)
        _wake_dul(self)

    def stop_dul(self: DULServiceProvider) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            _wake_dul(self)
            while self.is_alive():
                time.sleep(0.0005)
            return True
        return False

    DULServiceProvider.__init__ = dul_init  # type: ignore[method-assign]
    Association.__init__ = assoc_init  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = stop_dul  # type: ignore[method-assign]
    Association._run_reactor = _assoc_run_reactor  # type: ignore[method-assign]


class _Checkpoint(threading.Event):
    """``Association._reactor_checkpoint`` (set: run; cleared: pause) that wakes the reactor when cleared."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake
        self.set()

    def clear(self) -> None:
        super().clear()
        self._wake.set()


class _WakePipe:
    """A non-blocking pipe that wakes a DUL reactor's ``select()``; closed exactly once, and never
    written after closing (a closed descriptor number may already belong to another file)."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)
        os.set_blocking(self.write, False)
        self.lock = threading.Lock()
        self.open = True

    def wake(self) -> None:
        with self.lock:
            if self.open:
                try:
                    os.write(self.write, b"!")
                except BlockingIOError:  # full: the reactor has plenty of wake-ups to read
                    pass

    def drain(self) -> None:
        with self.lock:
            if self.open:
                try:
                    while os.read(self.read, 4096):
                        pass
                except BlockingIOError:
                    pass

    def close(self) -> None:
        with self.lock:
            if self.open:
                self.open = False
                os.close(self.read)
                os.close(self.write)


def _wake_dul(dul: DULServiceProvider) -> None:
    pipe = getattr(dul, "_dc_pipe", None)
    if pipe is not None:
        pipe.wake()


def _wake_assoc(dul: DULServiceProvider) -> None:
    wake = getattr(dul.assoc, "_dc_wake", None)
    if wake is not None:
        wake.set()


def _close_pipe(dul: DULServiceProvider) -> None:
    pipe = getattr(dul, "_dc_pipe", None)
    if pipe is not None:
        pipe.close()


def _dul_wait(self: DULServiceProvider) -> None:
    """Sleep until the socket is readable, a primitive is queued, or TIMER_CHECK passes."""
    if self.to_provider_queue.qsize() or self.event_queue.qsize() or self._kill_thread:
        return
    pipe: _WakePipe | None = getattr(self, "_dc_pipe", None)
    if pipe is None or not pipe.open:  # a DUL made before the tuning was applied
        time.sleep(self._run_loop_delay)
        return
    wrapped = self.socket
    sock = wrapped.socket if wrapped is not None and wrapped._is_connected else None
    watch: list[Any] = [pipe.read]
    if sock is not None:
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: bytes already decrypted in the SSL buffer
            return
        watch.append(sock)
    timeout = TIMER_CHECK if sock is not None else self._run_loop_delay
    try:
        ready, _, _ = select.select(watch, [], [], timeout)
    except (OSError, ValueError):  # socket closed meanwhile: let the reactor find out
        return
    if pipe.read in ready:
        pipe.drain()


def _assoc_run_reactor(self: Association) -> None:
    """pynetdicom 3.0.4 ``Association._run_reactor`` with the 1 ms sleep made an event wait.

    Acceptors only (the receiver); an association we request (e.g. sending evidence) keeps
    pynetdicom's own loop, and so does every association while the ``reactor`` step is off.
    """
    from pynetdicom.association import LOGGER

    wake: threading.Event | None = getattr(self, "_dc_wake", None)
    if not self.is_acceptor or not _EVENT_DRIVEN[0] or wake is None:
        return _ORIGINAL["assoc_run_reactor"](self)

    self._is_paused = False
    while not self._kill:
        if not (self.dimse.msg_queue.qsize() or self.dul.to_user_queue.qsize()):
            wake.wait(TIMER_CHECK)
        wake.clear()

        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)  # type: ignore[arg-type]

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


# ---------------------------------------------------------------------------------------------- C-STORE-RSP
def _element(element: int, value: bytes) -> bytes:
    """One command element, Implicit VR Little Endian (group 0000)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def store_response_command(message_id: int, status: int, sop_class: str | None, sop_instance: str | None) -> bytes:
    """The encoded command set of a C-STORE-RSP without Error Comment or Offending Element, as
    pynetdicom 3.0.4 encodes it (PS3.7 9.3.1.2, elements in tag order, no data set)."""
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class)) if sop_class else b"",
            _element(0x0100, struct.pack("<H", 0x8001)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", 0x0101)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, _uid(sop_instance)) if sop_instance else b"",
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _install_response_template() -> None:
    if "send_msg" in _ORIGINAL:
        return
    _ORIGINAL["send_msg"] = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        if (
            _TEMPLATED_RESPONSE[0]
            and type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and isinstance(primitive.Status, int)
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            encoded = store_response_command(
                primitive.MessageIDBeingRespondedTo,
                primitive.Status,
                primitive.AffectedSOPClassUID,
                primitive.AffectedSOPInstanceUID,
            )
            if not self.maximum_pdu_size or len(encoded) <= self.maximum_pdu_size - 6:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))  # last command fragment
                self.dul.send_pdu(pdata)
                return
        _ORIGINAL["send_msg"](self, primitive, context_id)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- file meta
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")


class _Meta(bytes):
    """The encoded File Meta Information group of a received data set (:func:`file_meta_bytes`)."""


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Group 0002 as pynetdicom 3.0.4 writes it for a received data set (``create_file_meta`` and
    pydicom's ``write_file_meta_info``), Explicit VR Little Endian, after the preamble and ``DICM``."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\0\x01"),
            _explicit(0x0002, b"UI", _uid(sop_class)),
            _explicit(0x0003, b"UI", _uid(sop_instance)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax)),
            _explicit(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
            _explicit(0x0013, b"SH", version + b" " if len(version) % 2 else version),
        )
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _file_meta(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any, **rest: Any) -> Any:
    values = (sop_class_uid, sop_instance_uid, transfer_syntax)
    if rest or not all(isinstance(v, str) and _PLAIN_UID.fullmatch(v) for v in values):
        return create_file_meta(
            sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax, **rest
        )
    return _Meta(file_meta_bytes(*values))


def _write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(file_meta, _Meta):
        fp.write(bytes(file_meta))
    else:
        write_file_meta_info(fp, file_meta, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- accepted sockets
def prepare_accepted(sock: socket.socket) -> None:
    """Per-connection socket options for an accepted association (the ``nodelay`` step)."""
    if "nodelay" in _applied:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (tests) or already closed
            pass


def share_contexts(contexts: list) -> list:
    """The server's supported contexts, cheap to copy per association (the ``context`` step)."""
    return _SharedContexts(contexts) if "context" in _applied else contexts


class _SharedContexts(list):
    """pynetdicom deep-copies the server's contexts for each association (``RequestHandler.
    _create_association``); this list copies each context shallowly instead, with its own list of
    transfer syntaxes (UIDs are immutable strings, the rest are scalars)."""

    def __deepcopy__(self, memo: dict) -> list:
        out = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            out.append(clone)
        return out

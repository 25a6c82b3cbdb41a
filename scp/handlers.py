"""Short event handlers: map receiver results to DIMSE statuses, keep association provenance.

Logs carry UIDs and AE titles only, never patient names or IDs.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import A_RELEASE

from dicomcheck import metrics
from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver, StoreStatus
from dicomcheck.store.files import SpoolFile, printable
from dicomcheck.store.index import ReceiptInfo

log = logging.getLogger(__name__)

ASSOCIATION_END_FLUSH = 30.0
"""Seconds an ending association waits for its instances' index rows before its end is recorded."""


@dataclass
class _Tally:
    association_id: int | None
    received: int = 0
    duplicates: int = 0
    failures: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handlers:
    def __init__(self, receiver: Receiver, settings: Settings, supported_sop_classes: list[str]) -> None:
        self.receiver = receiver
        self.settings = settings
        self.supported = set(supported_sop_classes)
        # keyed by the association itself, weakly: an association whose end no event reports
        # (its network thread crashed) leaves nothing behind, and a new one never inherits its counts
        self._tallies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- associations
    def on_open(self, event) -> None:
        """EVT_CONN_OPEN: bound the connection's socket reads and writes by the network timeout.

        pynetdicom (3.0) applies ``network_timeout`` to the listening socket only; an accepted
        socket blocks without limit, so a peer that stops in the middle of a PDU keeps its
        connection, its threads and one of ``max_associations`` forever. With a timeout the read
        fails and the connection is closed. (Bound by ``scp.server``; ``on_accepted`` does the same
        for established associations.)
        """
        _bound_socket(event.assoc, self.settings.network_timeout)

    def _peer(self, assoc) -> dict:
        requestor = assoc.requestor
        primitive = requestor.primitive
        return {
            "calling_ae": str(getattr(primitive, "calling_ae_title", "") or requestor.ae_title or "").strip(),
            "called_ae": str(getattr(primitive, "called_ae_title", "") or "").strip(),
            "peer_address": str(requestor.address),
            "peer_port": requestor.port,
            "implementation_class_uid": str(requestor.implementation_class_uid or "") or None,
            "implementation_version_name": str(requestor.implementation_version_name or "").strip() or None,
        }

    def _tally(self, assoc) -> _Tally:
        with self._lock:
            tally = self._tallies.get(assoc)
            if tally is None:
                tally = self._tallies[assoc] = _Tally(None)
            return tally

    def on_accepted(self, event) -> None:
        _bound_socket(event.assoc, self.settings.network_timeout)  # in case EVT_CONN_OPEN is not bound
        peer = self._peer(event.assoc)
        tls = self.settings.tls_cert is not None
        try:
            association_id = self.receiver.index.open_association(**peer, tls=tls)
        except Exception:  # noqa: BLE001 - provenance is best effort; stores still succeed
            log.exception("association not recorded")
            association_id = None
        self._tally(event.assoc).association_id = association_id
        metrics.ASSOCIATIONS.labels("accepted").inc()
        log.info(
            "association %s from %s (%s) accepted", association_id, printable(peer["calling_ae"]), peer["peer_address"]
        )

    def on_rejected(self, event) -> None:
        peer = self._peer(event.assoc)
        if self.settings.allow_callers and peer["calling_ae"] not in self.settings.allow_callers:
            reason = "calling AE title not recognised (0x01, 0x01, 0x03)"
        elif self.settings.require_called_ae and peer["called_ae"] != self.settings.ae_title:
            reason = "called AE title not recognised (0x01, 0x01, 0x07)"
        else:
            reason = "local limit exceeded or other (see log)"
        log.warning(
            "association from %s (%s) rejected: %s", printable(peer["calling_ae"]), peer["peer_address"], reason
        )
        metrics.ASSOCIATIONS.labels("rejected").inc()
        try:
            self.receiver.index.open_association(
                **peer, tls=self.settings.tls_cert is not None, status="rejected", reject_reason=reason
            )
        except Exception:  # noqa: BLE001
            log.exception("rejection not recorded")

    def on_acse_received(self, event) -> None:
        """EVT_ACSE_RECV: on an A-RELEASE-RQ, the association's instances are indexed before the
        A-RELEASE-RP goes out (the association thread sends it right after this event), so a peer
        whose release completed finds all it sent in the index (and in the API)."""
        primitive = event.primitive
        if isinstance(primitive, A_RELEASE) and primitive.result is None and event.assoc.is_acceptor:
            self.receiver.flush(timeout=ASSOCIATION_END_FLUSH)

    def on_ended(self, event) -> None:
        _discard_partial_dataset(event.assoc)
        with self._lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None or tally.association_id is None or tally.closed:
            return
        tally.closed = True
        status = _ending(event)
        with tally.lock:
            counts = {"received": tally.received, "duplicates": tally.duplicates, "failures": tally.failures}
        # its instances indexed before its end is recorded (the peer has had its last answer already)
        self.receiver.flush(timeout=ASSOCIATION_END_FLUSH)
        try:
            self.receiver.index.close_association(tally.association_id, status=status, **counts)
        except Exception:  # noqa: BLE001
            log.exception("association end not recorded")

    # ---------------------------------------------------------------- C-STORE
    def on_store(self, event) -> Dataset | int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        tally = self._tally(event.assoc)
        try:
            path = Path(event.dataset_path)
        except AttributeError:
            return _status(StoreStatus.CANNOT_UNDERSTAND, "no dataset received")
        if sop_class not in self.supported or sop_class != str(event.context.abstract_syntax):
            tally.failures += 1
            log.warning(
                "SOP class %s not supported on this presentation context (%s)",
                printable(sop_class),
                printable(sop_instance),
            )
            return _status(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported on this context")
        peer = self._peer(event.assoc)
        receipt = ReceiptInfo(
            association_id=tally.association_id,
            calling_ae=peer["calling_ae"],
            called_ae=peer["called_ae"],
            peer_address=peer["peer_address"],
            implementation_class_uid=peer["implementation_class_uid"],
            implementation_version_name=peer["implementation_version_name"],
            transfer_syntax_uid=str(event.context.transfer_syntax),
            move_originator_ae=str(request.MoveOriginatorApplicationEntityTitle or "").strip() or None,
        )
        result = self.receiver.store_file(  # answered once durable; indexed behind the answer
            path,
            receipt,
            expected_sop_instance_uid=sop_instance or None,
            expected_sop_class_uid=sop_class or None,
            wait=False,
        )
        with tally.lock:
            if result.status is StoreStatus.SUCCESS:
                tally.received += 1
                tally.duplicates += int(result.duplicate)
            else:
                tally.failures += 1
        if result.status is not StoreStatus.SUCCESS:
            log.warning(
                "C-STORE %s from %s: 0x%04X %s",
                printable(sop_instance),
                printable(peer["calling_ae"]),
                result.status,
                result.comment or "",
            )
        return _status(result.status, result.comment)


def _ending(event) -> str:
    """How the association ended: ``released``, ``aborted`` or ``closed`` (the connection went away
    with no release or abort at all).

    The first of EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE records the end. On an A-ABORT from the
    peer, or a connection lost in the middle of an association (an A-P-ABORT), pynetdicom's
    network thread closes the connection (EVT_CONN_CLOSE) before the association's own thread
    reports EVT_ABORTED: the abort indication is already waiting in the DUL's queue then.
    """
    name = event.event.name
    assoc = event.assoc
    if name == "EVT_RELEASED" or getattr(assoc, "is_released", False):
        return "released"
    if name == "EVT_ABORTED" or getattr(assoc, "is_aborted", False) or getattr(assoc, "_sent_abort", False):
        return "aborted"
    try:
        if assoc.acse.is_aborted():  # an A-ABORT indication not yet taken by the association
            return "aborted"
        if assoc.dul.state_machine.current_state == "Sta13":  # A-RELEASE-RP sent, the peer closes (AR-5)
            return "released"
    except Exception:  # noqa: BLE001 - no DUL any more
        return "closed"
    # the connection went away in the middle of an established association: PS3.8 9.2 (AA-4) makes
    # that an A-P-ABORT; pynetdicom closes (EVT_CONN_CLOSE) before it queues the indication
    return "aborted" if getattr(assoc, "is_established", False) else "closed"


def _bound_socket(assoc, timeout: float | None) -> None:
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None and timeout:
        try:
            sock.settimeout(timeout)
        except OSError:  # already closed by the peer
            pass


def _discard_partial_dataset(assoc) -> None:
    """Remove the file of a data set whose transfer the association's end cut short.

    pynetdicom receives each data set into a temporary file on the storage volume and removes it
    after the C-STORE handler; a message still incomplete when the association is released,
    aborted or closed is dropped with its file left behind. An ending event comes after the last
    PDU of the association was decoded, so the message cannot complete meanwhile.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if message is None or spool is None:
        return
    SpoolFile.discard(spool)
    message._data_set_file = None
    message._data_set_path = None
    log.info("association ended in the middle of a data set: partial file removed")


def _status(status: StoreStatus, comment: str | None) -> Dataset | int:
    metrics.INSTANCES.labels(f"0x{int(status):04X}").inc()
    if status is StoreStatus.SUCCESS or not comment:
        return int(status)
    ds = Dataset()
    ds.Status = int(status)
    # Error Comment is LO: one value, no backslash (the value delimiter), no control characters
    ds.ErrorComment = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in comment)[:64]
    return ds

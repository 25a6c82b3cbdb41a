"""The DICOM receiver's application entity: contexts, limits, allow-list, TLS.

``make_ae(settings)`` builds a pynetdicom AE from settings; ``supported_contexts(settings)`` is the
single list the conformance statement (docs/conformance.md, ``python -m scp.conformance``) is
generated from. ``build_server`` is the one start-up of a receiver: the pynetdicom fault fixes
(scp/pynetdicom_fixes.py), the speed tuning if ``speed_tuning`` is on (scp/tuning.py), the AE, the
event handlers and the association server. ``start`` serves it in this process; scp/workers.py
builds one in each of N receiver processes behind one port; scp/listen.py chooses.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import tempfile
import threading

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification, register_uid  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver

from . import pynetdicom_fixes as fixes
from . import trace, tuning
from .handlers import Handlers

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.JPEG2000MCLossless,
    uid.JPEG2000MC,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
)
"""Transfer syntaxes accepted for every storage SOP class; datasets are stored as received."""


def storage_sop_classes(settings: Settings) -> list[str]:
    """Every storage SOP class pynetdicom knows, plus the configured private classes."""
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return known + [u for u in settings.private_sop_classes if u not in known]


def supported_contexts(settings: Settings) -> list[PresentationContext]:
    contexts = [build_context(Verification, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])]
    contexts += [build_context(sop_class, list(TRANSFER_SYNTAXES)) for sop_class in storage_sop_classes(settings)]
    return contexts


def configure_process(settings: Settings) -> set[str]:
    """Process-wide library settings, set by :func:`build_server`: the pynetdicom fault fixes
    (always), the speed tuning steps in effect (returned), logging without PHI."""
    fixes.install(spool_dir=settings.storage_dir / ".tmp", pdu_deadline=settings.pdu_deadline)
    # Scratch files of the receive path (inflating a Deflated data set, dicomcheck/sources.py) stay
    # on the storage volume, bounded by it, as the received data sets do: sources.py takes no folder.
    tempfile.tempdir = str(settings.storage_dir / ".tmp")
    # Configured private SOP classes belong to the storage service (else pynetdicom drops them).
    for number, private in enumerate(settings.private_sop_classes, start=1):
        if private not in _STORAGE_CLASSES.values():
            register_uid(private, f"DicomcheckPrivateStorage{number}", StorageServiceClass)
    # pynetdicom logs dataset summaries at INFO/DEBUG; keep only its warnings (no PHI in logs).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    steps = tuning.apply(tuning.steps_for(settings))
    trace.install()  # only with DICOMCHECK_SCP_TRACE set (bench/bench_receiver.py --profile)
    return steps


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
    )
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_NONE
    return context


class ReceiverAE(AE):
    """pynetdicom's AE whose association limit counts associations, not connections.

    pynetdicom 3.0's ACSE rejects an A-ASSOCIATE-RQ (local-limit-exceeded, 0x02/0x03/0x02) when
    more acceptor threads run than ``maximum_associations``, and there is one thread per TCP
    connection from its first byte on: 24 connections that never finish their A-ASSOCIATE-RQ (each
    bounded by the ARTIM timer, ``scp.pynetdicom_fixes``) locked every real peer out for as long as they
    lasted. ``maximum_associations`` as read here is the configured limit plus the connections still
    waiting for their request, so only connections that have sent an A-ASSOCIATE-RQ count against
    it (ACSE's comparison is the only reader of the value in pynetdicom 3.0).
    """

    @property
    def maximum_associations(self) -> int:
        return self._maximum_associations + waiting_for_request(self)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)  # type: ignore[attr-defined]


def waiting_for_request(ae: AE) -> int:
    """Connections accepted by ``ae`` whose A-ASSOCIATE-RQ has not arrived (yet)."""
    return sum(1 for assoc in ae.active_associations if assoc.is_acceptor and assoc.requestor.primitive is None)


def make_ae(settings: Settings) -> AE:
    ae = ReceiverAE(ae_title=settings.ae_title)
    ae.supported_contexts = supported_contexts(settings)
    ae.require_calling_aet = list(settings.allow_callers)
    ae.require_called_aet = settings.require_called_ae
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.implementation_version_name = "DICOMCHECK"
    return ae


def bindings(handlers: Handlers) -> list:
    """The event handlers of every association (C-STORE, provenance of accepted/rejected/ended)."""
    return [
        (evt.EVT_CONN_OPEN, handlers.on_open),  # socket timeouts before any association (handlers.py)
        (evt.EVT_C_STORE, handlers.on_store),
        (evt.EVT_ACCEPTED, handlers.on_accepted),
        (evt.EVT_REJECTED, handlers.on_rejected),
        (evt.EVT_ACSE_RECV, handlers.on_acse_received),  # a release waits for the association's index rows
        (evt.EVT_RELEASED, handlers.on_ended),
        (evt.EVT_ABORTED, handlers.on_ended),
        (evt.EVT_CONN_CLOSE, handlers.on_ended),
    ]


def build_server(
    settings: Settings,
    receiver: Receiver,
    server_class: type[ThreadedAssociationServer] | None = None,
    **server_arguments,
) -> ThreadedAssociationServer:
    """The receiver's association server, not yet serving: one start-up for ``serve`` in this process
    (:func:`start`) and for each ``--processes`` receiver process (scp/workers.py, its own
    ``server_class``). Refuses an unverified pynetdicom (``pynetdicom_fixes.UnverifiedPynetdicom``)."""
    steps = configure_process(settings)
    if steps:
        log.info("pynetdicom speed tuning: %s", ", ".join(sorted(steps)))
    else:
        log.warning("pynetdicom speed tuning off: pynetdicom's own polling reactors and 4 KB reads (slower)")
    ae = make_ae(settings)
    handlers = Handlers(receiver, settings, storage_sop_classes(settings))
    server = ae.make_server(
        (settings.bind, settings.dicom_port),
        evt_handlers=bindings(handlers),
        ssl_context=ssl_context(settings),
        server_class=server_class or ReceiverServer,
        **server_arguments,
    )
    server.contexts = tuning.share_contexts(server.contexts)
    return server


def start(settings: Settings, receiver: Receiver) -> ThreadedAssociationServer:
    """Listen and serve associations on a thread of this process; returns the server (``shutdown()``)."""
    server = build_server(settings, receiver)
    log.info("listening as %s on %s:%d", settings.ae_title, settings.bind, settings.dicom_port)
    thread = threading.Thread(target=make_target(server.serve_forever), name="dicomcheck-listener", daemon=True)
    thread.start()
    return server


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with per-connection socket options (``scp.tuning``) and a listen
    backlog of 128 (``socketserver``'s default of 5 makes the kernel drop the SYNs of a sixth
    simultaneous connection: retried after 1 s, 3 s, ... while dripping peers hold the first five)."""

    request_queue_size = 128

    def shutdown(self) -> None:
        """Stop serving, close the socket and wait for the open associations (as pynetdicom's does),
        without removing the server from ``ae._servers``: only ``AE.start_server`` puts it there,
        and ``AE.make_server`` (which takes our server class) does not."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self):
        """Accept a connection; a TLS handshake is left to the association's own thread.

        Handshaking here (the listener thread, no timeout) let one peer that never sends its
        ClientHello block every later connection; done lazily by the first read of the
        association's thread, it is bounded by the ARTIM / PDU deadlines like any other byte.
        """
        client, address = self.socket.accept()
        tuning.prepare_accepted(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

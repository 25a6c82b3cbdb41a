"""The DICOM receiver's application entity: contexts, limits, allow-list, TLS.

``make_ae(settings)`` builds a pynetdicom AE from settings; ``supported_contexts(settings)`` is the
single list the conformance statement (docs/conformance.md, ``python -m scp.conformance``) is
generated from. ``start`` runs the receiver in this process; ``start_processes`` runs N receiver
processes behind one port (scp/workers.py), since one interpreter serves every association on one
core. ``configure_process`` applies the receive-path tuning of scp/tuning.py (bench/README.md).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification, register_uid
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicomcheck.config import Settings
from dicomcheck.ingest import Receiver
from dicomcheck.store.files import SpoolFile

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


def configure_process(settings: Settings) -> None:
    """Process-wide library settings, set once by the entry point (pynetdicom / tempfile)."""
    # Receive each dataset straight to a file on the storage volume, never into memory or /tmp,
    # into a SpoolFile: a volume that fills up meanwhile is answered 0xA700 instead of killing the
    # network thread (tests/test_receiver_faults.py).
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = tuning.tracked(SpoolFile)
    tmp = settings.storage_dir / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp)
    # Configured private SOP classes belong to the storage service (else pynetdicom drops them).
    for number, private in enumerate(settings.private_sop_classes, start=1):
        if private not in _STORAGE_CLASSES.values():
            register_uid(private, f"DicomcheckPrivateStorage{number}", StorageServiceClass)
    # pynetdicom logs dataset summaries at INFO/DEBUG; keep only its warnings (no PHI in logs).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    tuning.apply()
    tuning.set_limits(pdu_deadline=settings.pdu_deadline)
    trace.install()  # only with DICOMCHECK_SCP_TRACE set (bench/bench_receiver.py --profile)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_NONE
    return context


class ReceiverAE(AE):
    """pynetdicom's AE whose association limit counts associations, not connections.

    pynetdicom 3.0's ACSE rejects an A-ASSOCIATE-RQ (local-limit-exceeded, 0x02/0x03/0x02) when
    more acceptor threads run than ``maximum_associations``, and there is one thread per TCP
    connection from its first byte on: 24 connections that never finish their A-ASSOCIATE-RQ (each
    bounded by the ARTIM timer, ``scp.tuning``) locked every real peer out for as long as they
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
        (evt.EVT_RELEASED, handlers.on_ended),
        (evt.EVT_ABORTED, handlers.on_ended),
        (evt.EVT_CONN_CLOSE, handlers.on_ended),
    ]


def start(settings: Settings, receiver: Receiver, *, block: bool = True):
    """Start listening; returns the server (``block=False``) or blocks until shut down."""
    configure_process(settings)
    if not settings.allow_callers:
        log.warning("no --allow-caller configured: accepting associations from any calling AE title")
    ae = make_ae(settings)
    handlers = Handlers(receiver, settings, storage_sop_classes(settings))
    log.info("listening as %s on %s:%d", settings.ae_title, settings.bind, settings.dicom_port)
    server = ae.make_server((settings.bind, settings.dicom_port), evt_handlers=bindings(handlers), ssl_context=ssl_context(settings),
                            server_class=ReceiverServer)
    server.contexts = tuning.share_contexts(server.contexts, tuning.applied())
    ae._servers.append(server)
    if block:
        try:
            server.serve_forever()
        finally:
            server.shutdown()
        return None
    thread = threading.Thread(target=make_target(server.serve_forever), name="dicomcheck-listener", daemon=True)
    thread.start()
    return server


def start_processes(settings: Settings, processes: int):
    """Listen on the DICOM port and serve associations from ``processes`` receiver processes.

    Returns at once (after every receiver process is ready) with an object that has
    ``server_address`` and ``shutdown()``, like :func:`start` with ``block=False``. The caller keeps
    running the settle loop (and the API) in this process. ``processes=1`` still uses a separate
    receiver process; use :func:`start` for the single-process receiver.
    """
    from .workers import ReceiverProcesses

    if not settings.allow_callers:
        log.warning("no --allow-caller configured: accepting associations from any calling AE title")
    return ReceiverProcesses(settings, processes).start()


def serve_processes(settings: Settings, processes: int) -> None:
    """``dicomcheck serve --no-api --processes N``: receivers + settle loop until SIGTERM / SIGINT."""
    import signal

    from dicomcheck.ingest import Settler

    receiver = Receiver(settings)
    settler = Settler(receiver)
    settler.start()
    server = start_processes(settings, processes) if processes > 1 else start(settings, receiver, block=False)
    print(f"dicomcheck: {settings.ae_title} listening on {settings.bind}:{server.server_address[1]} "
          f"({processes} receiver process{'es' if processes > 1 else ''}), data in {settings.data}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.shutdown()
        settler.stop()


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with per-connection socket options (``scp.tuning``) and a listen
    backlog of 128 (``socketserver``'s default of 5 makes the kernel drop the SYNs of a sixth
    simultaneous connection: retried after 1 s, 3 s, ... while dripping peers hold the first five)."""

    request_queue_size = 128

    def get_request(self):
        """Accept a connection; a TLS handshake is left to the association's own thread.

        Handshaking here (the listener thread, no timeout) let one peer that never sends its
        ClientHello block every later connection; done lazily by the first read of the
        association's thread, it is bounded by the ARTIM / PDU deadlines like any other byte.
        """
        client, address = self.socket.accept()
        tuning.prepare_accepted(client, tuning.applied())
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

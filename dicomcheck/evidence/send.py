"""Send the evidence KOS / SR to a PACS (C-STORE SCU), so they sit in the study beside its images.

PHI-minimal objects (Patient Identity Removed ``YES``, written by dicomcheck for packs that leave the
organisation) are never sent: a PACS would file them as a second, pseudonymous patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from .model import IMPLEMENTATION_CLASS_UID, OWN_MANUFACTURER, OWN_SOP_CLASSES

DEFAULT_CALLING_AE = "DICOMCHECK"
TIMEOUT = 30.0
"""Seconds for association, DIMSE responses and network inactivity."""


class SendError(RuntimeError):
    """The objects could not be stored on the destination."""


class AssociationRejected(SendError):
    """The destination rejected the association (unknown calling / called AE title, busy, ...)."""


class StoreRefused(SendError):
    """The destination answered a C-STORE with a status that is neither success nor a warning."""


class NotSendable(ValueError):
    """A file that is never sent (not our KOS / SR, a PHI-minimal object, another transfer syntax): no
    retry can change that."""


WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})
"""C-STORE warnings outside the 0xBxxx range (PS3.7 C.4.2.1.4; PS3.4 GG.4.2)."""


def stored(status: int) -> bool:
    """Whether a C-STORE status means the object was stored: success, or a warning (PS3.4 Annex B.2.3)."""
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF or status in WARNING_STATUSES


def _check_ae(title: str, what: str) -> str:
    if (
        not title
        or len(title) > 16
        or title.strip() == ""
        or "\\" in title
        or not title.isascii()
        or not title.isprintable()
    ):
        raise ValueError(f"{what} {title!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return title


@dataclass(frozen=True, slots=True)
class PacsDestination:
    """Where evidence is sent: ``AE@host:port`` (IPv6 hosts in brackets: ``AE@[::1]:104``)."""

    host: str
    port: int
    ae_title: str
    calling_ae: str = DEFAULT_CALLING_AE

    _PATTERN = re.compile(r"^(?P<ae>[^@]+)@(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:@\[\]]+)):(?P<port>\d{1,5})$")

    @classmethod
    def parse(cls, text: str, *, calling_ae: str = DEFAULT_CALLING_AE) -> PacsDestination:
        match = cls._PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"destination {text!r} is not AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"destination {text!r}: port {port} is out of range")
        return cls(
            match["v6"] or match["host"],
            port,
            _check_ae(match["ae"], "called AE title"),
            _check_ae(calling_ae, "calling AE title"),
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    def send(self, paths: list[Path]) -> list[int]:
        return send_objects(paths, host=self.host, port=self.port, called_ae=self.ae_title, calling_ae=self.calling_ae)


def is_phi_minimal_own(ds: pydicom.Dataset) -> bool:
    """One of our PHI-minimal objects: written by dicomcheck, Patient Identity Removed YES."""
    ours = (
        ds.get("Manufacturer") == OWN_MANUFACTURER
        or getattr(getattr(ds, "file_meta", None), "ImplementationClassUID", None) == IMPLEMENTATION_CLASS_UID
    )
    return ours and str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"


def _load(paths: list[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    """Read and vet every file before any association: all are sent, or none."""
    loaded: list[tuple[Path, pydicom.Dataset]] = []
    for path in map(Path, paths):
        ds = pydicom.dcmread(path)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class not in OWN_SOP_CLASSES:
            raise NotSendable(f"{path}: SOP class {sop_class or '(none)'} is not a KOS or Comprehensive / Enhanced SR")
        if is_phi_minimal_own(ds):
            raise NotSendable(
                f"{path}: a PHI-minimal dicomcheck object (Patient Identity Removed YES) is never sent to a PACS"
            )
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax != ExplicitVRLittleEndian:
            raise NotSendable(f"{path}: transfer syntax {syntax} (only Explicit VR Little Endian is proposed)")
        loaded.append((path, ds))
    return loaded


def send_objects(
    paths: list[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = DEFAULT_CALLING_AE,
    timeout: float = TIMEOUT,
) -> list[int]:
    """C-STORE ``paths`` (our KOS / SR files) in one association; the DIMSE status of each, in order.

    Raises :class:`NotSendable` (a ValueError) before connecting when a file is not a KOS / SR or is a
    PHI-minimal object of ours; :class:`AssociationRejected` when the destination rejects us; :class:`SendError`
    when it cannot be reached, accepts none of our contexts, or the association ends mid-way."""
    _check_ae(called_ae, "called AE title")
    _check_ae(calling_ae, "calling AE title")
    loaded = _load(paths)
    if not loaded:
        return []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for sop_class in sorted(OWN_SOP_CLASSES):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        detail = (
            f"result {primitive.result_str}, source {primitive.source_str}, reason {primitive.reason_str}"
            if primitive is not None
            else "no details"
        )
        raise AssociationRejected(f"{called_ae}@{host}:{port} rejected the association from {calling_ae} ({detail})")
    if not assoc.is_established:
        raise SendError(f"no association with {called_ae}@{host}:{port} (unreachable, aborted or timed out)")
    statuses: list[int] = []
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for path, ds in loaded:
            if str(ds.SOPClassUID) not in accepted:
                raise SendError(f"{called_ae}@{host}:{port} did not accept SOP class {ds.SOPClassUID} ({path.name})")
            response = assoc.send_c_store(ds)
            status = response.get("Status") if response is not None else None
            if status is None:
                raise SendError(
                    f"no C-STORE response for {path.name} from {called_ae}@{host}:{port} "
                    f"({len(statuses)} of {len(loaded)} stored)"
                )
            statuses.append(int(status))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses

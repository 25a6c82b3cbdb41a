"""docs/conformance.md is the generator's output, and what it lists is what a real association gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RawDataStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
    VolumeRenderingVolumetricPresentationStateStorage,
)

from .conftest import errors_of

ROOT = Path(__file__).resolve().parents[1]
STATEMENT = ROOT / "docs" / "conformance.md"

SOP_CLASSES = [
    CTImageStorage,
    EnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    KeyObjectSelectionDocumentStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    VolumeRenderingVolumetricPresentationStateStorage,
    RawDataStorage,
]
TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.JPEGLSLossless,
    uid.RLELossless,
    uid.DeflatedExplicitVRLittleEndian,
    uid.HTJ2KLossless,
    uid.JPEGLosslessSV1,
]
PRIVATE = "1.3.46.670589.5.0.1.1"  # Philips private 3D object storage: not listed unless configured
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"  # a real transfer syntax we do not accept


def listed() -> tuple[set[str], set[str], str]:
    """(storage SOP class UIDs, transfer syntax UIDs) listed in the committed statement, and its text."""
    text = STATEMENT.read_text(encoding="utf-8")
    syntaxes_section = text.split("### 4.1", 1)[1].split("### 4.2", 1)[0]
    storage_section = text.split("### 4.2", 1)[1].split("\n## ", 1)[0]
    syntaxes = set(re.findall(r"\| `([0-9.]+)` \|", syntaxes_section))
    storage = set(re.findall(r"\| `([0-9.]+)` \| SCP \|", storage_section))
    return storage, syntaxes, text


def test_committed_statement_is_the_generators_output(conformance_generator):
    proc = conformance_generator  # `python -m scp.conformance`, no DICOMCHECK_* settings
    assert proc.returncode == 0, errors_of(proc.stderr)
    assert proc.stdout == STATEMENT.read_text(encoding="utf-8"), (
        "docs/conformance.md is stale: run `python -m scp.conformance > docs/conformance.md` and commit it"
    )


def test_statement_lists_exactly_the_contexts_the_ae_supports():
    from dicomcheck.config import Settings
    from scp.server import TRANSFER_SYNTAXES as ACCEPTED
    from scp.server import supported_contexts

    storage, syntaxes, _ = listed()
    contexts = supported_contexts(Settings.model_validate({}))
    assert storage == {str(cx.abstract_syntax) for cx in contexts} - {Verification}
    assert syntaxes == set(ACCEPTED)
    assert all(set(cx.transfer_syntax) == set(ACCEPTED) for cx in contexts if cx.abstract_syntax != Verification)


@pytest.fixture(scope="module")
def receiver(module_receiver_factory):
    """`dicomcheck serve` with the default settings but an allow-list, shared by this module's association tests."""
    return module_receiver_factory("--allow-caller", "CONFORMANCE")


def test_every_context_accepted_over_a_real_association_is_listed(receiver):
    storage, syntaxes, _ = listed()
    server = receiver
    ae = AE(ae_title="CONFORMANCE")
    for sop_class in SOP_CLASSES:
        for syntax in TRANSFER_SYNTAXES:  # one context per (SOP class, transfer syntax): 64 of at most 128
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(PRIVATE, uid.ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, JPEG_XL_LOSSLESS)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        rejected = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.result for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert accepted == {(str(s), str(t)) for s in SOP_CLASSES for t in TRANSFER_SYNTAXES}
    for sop_class, syntax in accepted:
        assert sop_class in storage and syntax in syntaxes, (sop_class, syntax)
    # refused as the statement says: unknown abstract syntax 0x03, unsupported transfer syntax 0x04
    assert PRIVATE not in storage and rejected[(PRIVATE, uid.ExplicitVRLittleEndian)] == 0x03
    assert JPEG_XL_LOSSLESS not in syntaxes and rejected[(CTImageStorage, JPEG_XL_LOSSLESS)] == 0x04


def _reject_reason(port: int, calling: str, called: str, keep: list) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ (result, source, reason), or None when accepted (kept open in ``keep``)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        keep.append(assoc)
        return None
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def test_association_rejections_carry_the_listed_reasons(receiver, receiver_factory):
    _, _, text = listed()
    server = receiver
    limited = receiver_factory("--allow-caller", "CONFORMANCE", "--max-associations", "2")
    open_associations: list = []
    try:
        observed = {
            "calling": _reject_reason(server.port, "STRANGER", server.ae_title, open_associations),
            "called": _reject_reason(server.port, "CONFORMANCE", "NOTUS", open_associations),
        }
        for _ in range(6):  # open associations until the limit answers
            reason = _reject_reason(limited.port, "CONFORMANCE", limited.ae_title, open_associations)
            if reason is not None:
                observed["limit"] = reason
                break
        assert open_associations, "no association accepted before the limit"
    finally:
        for assoc in open_associations:
            assoc.release()
    assert observed == {"calling": (0x01, 0x01, 0x03), "called": (0x01, 0x01, 0x07), "limit": (0x02, 0x03, 0x02)}
    rows = [line for line in text.splitlines() if line.startswith("| ") and "rejected-" in line]
    for result, source, reason in observed.values():
        assert any(f"| 0x{result:02X} | 0x{source:02X} | 0x{reason:02X} |" in row for row in rows), (
            result,
            source,
            reason,
        )

"""The raw path of ``extract_facts`` gives exactly the facts of the reference path.

``extract_facts(ds, source)`` decodes values straight from pydicom's raw elements and parses
sequence items itself (the analyze benchmark needs it); ``extract_facts(..., fast=False)`` reads
every value through pydicom. Every input here is read twice (a dataset caches what pydicom
converts, so each path gets its own) and the two ``InstanceFacts`` must be equal: the real-world
corpus, the synthetic fixture studies, pydicom's own test and character set files, and hand-made
edge cases (character sets, implicit VR, big endian, VR UN, odd values, odd sequence encodings).
The module also checks that the raw path stays raw where it should and falls back where it must,
and that the pool in ``read_all`` and the in-memory file reading change nothing.
"""

from __future__ import annotations

import io
import struct
import tomllib
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import config, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomcheck import extract, raw_elements, sources
from dicomcheck.extract import MAX_REFERENCES, extract_facts
from dicomcheck.model import InstanceFacts

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"


def _quietly(function: Callable, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd values on purpose here
        return function(*args, **kwargs)


def _both(read: Callable[[], Dataset], source: str = "case") -> InstanceFacts:
    """The facts of a fresh dataset through each path; they must be equal."""
    fast = _quietly(extract_facts, read(), source)
    reference = _quietly(extract_facts, read(), source, fast=False)
    assert fast == reference, _difference(fast, reference)
    return fast


def _difference(fast: InstanceFacts, reference: InstanceFacts) -> str:
    return "; ".join(
        f"{name}: raw {getattr(fast, name)!r} != pydicom {getattr(reference, name)!r}"
        for name in InstanceFacts.__slots__
        if getattr(fast, name) != getattr(reference, name)
    )


def _mismatches(loaders: dict[str, Callable[[], Dataset]]) -> list[str]:
    """Compare every readable input; an unreadable one is skipped (nothing to extract)."""
    found = []
    for name, read in loaders.items():
        try:
            _quietly(read)
        except Exception:  # noqa: BLE001, S112 - unreadable: nothing to compare
            continue
        try:
            _both(read, name)
        except AssertionError as exc:
            found.append(f"{name}: {exc}")
    return found


def _loaders(files: list[Path]) -> dict[str, Callable[[], Dataset]]:
    return {str(path): (lambda path=path: sources.read_dataset(str(path))) for path in files}


# ---------------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------------


def test_realworld_corpus(realworld: Path) -> None:
    files = sorted(p for p in realworld.iterdir() if p.suffix == ".dcm")
    assert len(files) >= 30
    assert _mismatches(_loaders(files)) == []


def _fixture_loaders(fixtures_output: Path) -> dict[str, Callable[[], Dataset]]:
    found, _ = sources.discover([fixtures_output])
    loaders = {}
    for source in found:
        if source.member is None:
            loaders[source.name] = lambda source=source: sources.read_dataset(source.path)
        else:

            def read(source: sources.Source = source) -> Dataset:
                with zipfile.ZipFile(source.path) as archive:
                    return sources.read_dataset(io.BytesIO(archive.read(source.member)))

            loaders[source.name] = read
    return loaders


def test_fixture_studies(fixtures_output: Path) -> None:
    loaders = _fixture_loaders(fixtures_output)
    assert len(loaders) >= 100
    assert _mismatches(loaders) == []


# ---------------------------------------------------------------------------------------------
# the pydicom version guard
# ---------------------------------------------------------------------------------------------


def test_the_verified_pydicom_is_the_pinned_and_installed_one() -> None:
    """The raw decoders copy one pydicom release's converters: the one pyproject pins and CI runs."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = [d.split("#")[0].replace(" ", "") for d in pyproject["project"]["dependencies"] if d.startswith("pydicom")]
    assert pins == [f"pydicom=={raw_elements.VERIFIED_PYDICOM}"]
    assert pydicom.__version__ == raw_elements.VERIFIED_PYDICOM
    assert raw_elements.raw_reading_is_exact()


def test_another_pydicom_release_reads_every_value_through_pydicom(
    fixtures_output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an unverified pydicom the raw reader is never used, and the facts are the same."""
    loaders = _fixture_loaders(fixtures_output)
    verified = {name: _quietly(extract_facts, read(), name) for name, read in loaders.items()}
    raw_readers = []
    monkeypatch.setattr(extract, "RawReader", lambda: raw_readers.append(1) or raw_elements.RawReader())
    monkeypatch.setattr(pydicom, "__version__", "3.0.99")
    assert not raw_elements.raw_reading_is_exact()
    unverified = {name: _quietly(extract_facts, read(), name) for name, read in loaders.items()}
    assert raw_readers == []
    assert unverified == verified
    ds = _case(EDGE_CASES["sequences, defined and undefined lengths"])()
    extract.header_value(ds, "StationName")
    assert raw_readers == [] and _converted(ds), "an unverified pydicom release decoded raw elements"


def test_pydicom_test_files() -> None:
    """pydicom's own files: big endian, implicit VR, deflate, 20 character sets, DICOMDIRs,
    private and UN sequences, truncated and badly encoded files."""
    files = sorted(
        p
        for folder in ("test_files", "charset_files")
        for p in (PYDICOM_DATA / folder).rglob("*")
        if p.is_file() and p.suffix not in {".txt", ".json", ".dump", ".icc", ".gz", ".py"}
    )
    assert len(files) >= 80
    assert _mismatches(_loaders(files)) == []


# ---------------------------------------------------------------------------------------------
# hand-made edge cases, written byte by byte where pydicom would not write them
# ---------------------------------------------------------------------------------------------

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


def _padded(value: bytes | str, pad: bytes = b" ") -> bytes:
    data = value.encode("latin-1") if isinstance(value, str) else value
    return data + pad if len(data) % 2 else data


def _element(tag: int, vr: str | None, value: bytes | str, *, undefined: bool = False) -> bytes:
    """One little endian element; ``vr=None`` for implicit VR. Values are padded to even length."""
    data = value.encode("latin-1") if isinstance(value, str) else value
    length = _UNDEFINED if undefined else len(data)
    group, element = tag >> 16, tag & 0xFFFF
    if vr is None:
        return struct.pack("<HHL", group, element, length) + data
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", group, element, vr.encode(), 0, length) + data
    return struct.pack("<HH2sH", group, element, vr.encode(), length) + data


def _item(body: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHL", *_ITEM, _UNDEFINED) + body + struct.pack("<HHL", *_ITEM_END, 0)
    return struct.pack("<HHL", *_ITEM, len(body)) + body


def _sequence(tag: int, *items: bytes, vr: str | None = "SQ", undefined: bool = False) -> bytes:
    body = b"".join(items)
    if undefined:
        return _element(tag, vr, body + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)
    return _element(tag, vr, body)


def _reference(uid: str, vr: str | None = "UI") -> bytes:
    return _element(0x00081150, vr, _padded(CTImageStorage, b"\0")) + _element(0x00081155, vr, _padded(uid, b"\0"))


def _code(value: str, scheme: str, meaning: str, vr: Callable[[str], str | None] = lambda v: v) -> bytes:
    return (
        _element(0x00080100, vr("SH"), _padded(value))
        + _element(0x00080102, vr("SH"), _padded(scheme))
        + _element(0x00080104, vr("LO"), _padded(meaning))
    )


def _header(*, implicit: bool = False, charset: str | None = None, **overrides: bytes) -> dict[int, bytes]:
    """A small CT header as {tag: encoded element}; ``overrides`` replace or add by keyword."""
    vr = (lambda v: None) if implicit else (lambda v: v)
    elements = {
        0x00080008: _element(0x00080008, vr("CS"), _padded("DERIVED\\SECONDARY\\MPR")),
        0x00080016: _element(0x00080016, vr("UI"), _padded(CTImageStorage, b"\0")),
        0x00080018: _element(0x00080018, vr("UI"), _padded("1.2.3.4.5.6.7", b"\0")),
        0x00080020: _element(0x00080020, vr("DA"), "20240101"),
        0x00080060: _element(0x00080060, vr("CS"), "CT"),
        0x00080070: _element(0x00080070, vr("LO"), _padded("ACME Imaging")),
        0x00081010: _element(0x00081010, vr("SH"), _padded("CT01")),
        0x00081090: _element(0x00081090, vr("LO"), _padded("Scanner 3000")),
        0x00181020: _element(0x00181020, vr("LO"), _padded("VA10\\VB20 ")),
        0x0020000D: _element(0x0020000D, vr("UI"), _padded("1.2.3.4", b"\0")),
        0x0020000E: _element(0x0020000E, vr("UI"), _padded("1.2.3.4.5", b"\0")),
        0x00200011: _element(0x00200011, vr("IS"), _padded("7")),
        0x00280010: _element(0x00280010, vr("US"), struct.pack("<H", 16)),
        0x00190010: _element(0x00190010, vr("LO"), _padded("ACME PRIVATE 1")),
        0x00191010: _element(0x00191010, vr("LO"), _padded("private value")),
    }
    if charset is not None:
        elements[0x00080005] = _element(0x00080005, vr("CS"), _padded(charset))
    for keyword, data in overrides.items():
        elements[pydicom.datadict.tag_for_keyword(keyword) or int(keyword[3:], 16)] = data
    return elements


def _file(elements: dict[int, bytes], *, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.3.4.5.6"
    meta.ImplementationVersionName = "EDGE_1"
    meta.SourceApplicationEntityTitle = " EDGE AE "
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + b"".join(elements[tag] for tag in sorted(elements))


def _case(data: bytes) -> Callable[[], Dataset]:
    return lambda: dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


def _implicit(vr: str) -> None:
    return None


EXPLICIT_SEQUENCES = {
    "SourceImageSequence": _sequence(
        0x00082112, _item(_reference("1.9.1")), _item(_reference("1.9.2"), undefined=True)
    ),
    "ReferencedImageSequence": _sequence(0x00081140, _item(_reference("1.9.3")), undefined=True),
    "DerivationCodeSequence": _sequence(0x00089215, _item(_code("113072", "DCM", "Multiplanar reformatting"))),
    "ProcedureCodeSequence": _sequence(0x00081032, _item(_code("74177", "C4", "CT abd & pelvis"))),
    "RequestAttributesSequence": _sequence(
        0x00400275,
        _item(
            _element(0x00321060, "LO", _padded("Requested description"))
            + _sequence(0x00321064, _item(_code("RPC1", "99LOCAL", "Requested")), undefined=True)
        ),
    ),
    "ReferencedSeriesSequence": _sequence(
        0x00081115,
        _item(
            _sequence(0x0008114A, _item(_reference("1.9.4")), _item(_reference("1.9.5")))
            + _element(0x0020000E, "UI", _padded("1.9", b"\0"))
        ),
    ),
    "CurrentRequestedProcedureEvidenceSequence": _sequence(
        0x0040A375,
        _item(_sequence(0x00081115, _item(_sequence(0x00081199, _item(_reference("1.9.6"))))), undefined=True),
    ),
}


def _enhanced_groups(implicit: bool = False) -> dict[str, bytes]:
    vr = (lambda v: None) if implicit else (lambda v: v)
    frame_type = _sequence(
        0x00189329,
        _item(
            _element(0x00089007, vr("CS"), _padded("DERIVED\\PRIMARY\\VOLUME\\MIP"))
            + _element(0x00089207, vr("CS"), _padded("MAX_IP"))
        ),
        vr=vr("SQ"),
    )
    derivation = _sequence(
        0x00089124,
        _item(
            _sequence(0x00082112, _item(_reference("1.8.1", vr("UI"))), vr=vr("SQ"))
            + _sequence(0x00089215, _item(_code("113073", "DCM", "Maximum intensity projection", vr)), vr=vr("SQ"))
            + _element(0x00082111, vr("ST"), _padded("MIP of the axial series "))
        ),
        vr=vr("SQ"),
    )
    frames = [_item(frame_type + derivation, undefined=index % 2 == 1) for index in range(3)]
    return {
        "SharedFunctionalGroupsSequence": _sequence(0x52009229, _item(frame_type), vr=vr("SQ")),
        "PerFrameFunctionalGroupsSequence": _sequence(0x52009230, *frames, vr=vr("SQ")),
        "NumberOfFrames": _element(0x00280008, vr("IS"), _padded("3")),
    }


def _edge_cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}
    cases["plain explicit VR"] = _file(_header())
    cases["sequences, defined and undefined lengths"] = _file(_header(**EXPLICIT_SEQUENCES))
    cases["enhanced functional groups"] = _file(_header(**_enhanced_groups()))
    cases["enhanced functional groups, implicit VR"] = _file(
        _header(implicit=True, **_enhanced_groups(implicit=True)), transfer_syntax=ImplicitVRLittleEndian
    )
    cases["references beyond the cap"] = _file(
        _header(
            SourceImageSequence=_sequence(
                0x00082112, *(_item(_reference(f"1.7.{n}")) for n in range(MAX_REFERENCES + 10))
            )
        )
    )
    # character sets
    cases["ISO_IR 100 accents"] = _file(
        _header(
            charset="ISO_IR 100",
            StationName=_element(0x00081010, "SH", _padded("Salle é".encode("latin-1"))),
            Manufacturer=_element(0x00080070, "LO", _padded("Müller Médical".encode("latin-1"))),
            DerivationDescription=_element(0x00082111, "ST", _padded("Réformation \\ coronale".encode("latin-1"))),
            tag00190010=_element(0x00190010, "LO", _padded("CRÉATEUR".encode("latin-1"))),
        )
    )
    cases["ISO_IR 192 UTF-8"] = _file(
        _header(
            charset="ISO_IR 192",
            StationName=_element(0x00081010, "SH", _padded("Ünïcødé 東京".encode())),
            StudyDescription=_element(0x00081030, "LO", _padded("Schädel\\Kopf ".encode())),
            SeriesDescription=_element(0x0008103E, "LO", _padded(b"broken \xff\xfe utf-8")),
        )
    )
    cases["ISO 2022 IR 87 Japanese"] = _file(
        _header(
            charset="\\ISO 2022 IR 87",
            StationName=_element(0x00081010, "SH", _padded("東京ステーション".encode("iso2022_jp"))),
            StudyDescription=_element(0x00081030, "LO", _padded("頭部 CT".encode("iso2022_jp"))),
            ProcedureCodeSequence=_sequence(
                0x00081032,
                _item(
                    _element(0x00080100, "SH", "P1")
                    + _element(0x00080102, "SH", "L1")
                    + _element(0x00080104, "LO", _padded("頭部".encode("iso2022_jp")))
                ),
            ),
        )
    )
    cases["ISO 2022 IR 87 Japanese, top level only"] = _file(
        _header(
            charset="\\ISO 2022 IR 87", StationName=_element(0x00081010, "SH", _padded("東京".encode("iso2022_jp")))
        )
    )
    cases["ISO_IR 144 Cyrillic"] = _file(
        _header(charset="ISO_IR 144", StationName=_element(0x00081010, "SH", _padded("Томограф".encode("iso8859_5"))))
    )
    cases["item with its own character set"] = _file(
        _header(
            ProcedureCodeSequence=_sequence(
                0x00081032, _item(_element(0x00080005, "CS", _padded("ISO_IR 192")) + _code("P1", "L1", "x"))
            )
        )
    )
    # encodings
    cases["implicit VR little endian"] = _file(
        _header(
            implicit=True,
            SourceImageSequence=_sequence(
                0x00082112, _item(_reference("1.9.1", None)), _item(_reference("1.9.2", None), undefined=True), vr=None
            ),
            ProcedureCodeSequence=_sequence(
                0x00081032, _item(_code("74177", "C4", "CT", _implicit)), vr=None, undefined=True
            ),
            RequestAttributesSequence=_sequence(
                0x00400275,
                _item(
                    _element(0x00321060, None, _padded("Requested"))
                    + _sequence(0x00321064, _item(_code("R1", "L", "Requested", _implicit)), vr=None, undefined=True)
                ),
                vr=None,
            ),
            tag00290010=_element(0x00290010, None, _padded("IMPLICIT CREATOR")),
        ),
        transfer_syntax=ImplicitVRLittleEndian,
    )
    cases["VR UN everywhere"] = _file(
        _header(
            StationName=_element(0x00081010, "UN", _padded("UNSTATION")),
            ImageType=_element(0x00080008, "UN", _padded("ORIGINAL\\PRIMARY")),
            SeriesNumber=_element(0x00200011, "UN", _padded(" 12")),
            tag00190010=_element(0x00190010, "UN", _padded("UN CREATOR")),
            SourceImageSequence=_sequence(0x00082112, _item(_reference("1.9.1", None)), vr="UN"),
            ReferencedImageSequence=_sequence(0x00081140, _item(_reference("1.9.2", None)), vr="UN", undefined=True),
        )
    )
    cases["VR differs from the dictionary"] = _file(
        _header(
            StationName=_element(0x00081010, "LO", _padded("LONGER STATION NAME")),
            Modality=_element(0x00080060, "SH", "MR"),
            SeriesNumber=_element(0x00200011, "DS", _padded("3.0")),
        )
    )
    cases["implicit VR items in an explicit VR file"] = _file(
        _header(
            SourceImageSequence=_sequence(
                0x00082112, _item(_reference("1.9.1", None)), _item(_reference("1.9.2", None))
            )
        )
    )
    # values
    for label, raw in {
        "leading zeros": " 0007 ",
        "plus": "+3",
        "float": "1.0",
        "junk": "abc",
        "huge": "99999999999999999999",
        "empty": "",
        "blank": "  ",
        "multi": "1\\2",
        "NUL": "5\0",
        "negative": "-2",
    }.items():
        cases[f"IS {label}"] = _file(
            _header(
                SeriesNumber=_element(0x00200011, "IS", _padded(raw)),
                NumberOfFrames=_element(0x00280008, "IS", _padded(raw)),
            )
        )
    cases["padding, NULs and empty values"] = _file(
        _header(
            Manufacturer=_element(0x00080070, "LO", b"ACME\0\0"),
            StationName=_element(0x00081010, "SH", b""),
            ImageType=_element(0x00080008, "CS", b""),
            Modality=_element(0x00080060, "CS", b"ct"),
            SoftwareVersions=_element(0x00181020, "LO", b" V1 \\\0V2\n\\ "),
            DeviceSerialNumber=_element(0x00181000, "LO", b"\t12\xa034 "),
            AccessionNumber=_element(0x00080050, "SH", b"A\0B "),
            DerivationDescription=_element(0x00082111, "ST", b"  keeps \\ backslashes\0"),
            tag00190010=_element(0x00190010, "LO", b"A\\B "),
            tag00210010=_element(0x00210010, "LO", b""),
            tag00230010=_element(0x00230010, "SH", _padded("SH CREATOR")),
            tag00250010=_element(0x00250010, "LO", b"\0\0"),
        )
    )
    cases["empty and zero-length sequences"] = _file(
        _header(
            SourceImageSequence=_sequence(0x00082112),
            ReferencedImageSequence=_sequence(0x00081140, _item(b""), _item(b"", undefined=True)),
            ProcedureCodeSequence=_sequence(0x00081032, undefined=True),
        )
    )
    garbled = _item(_reference("1.9.1"))
    cases["sequence overrunning its item"] = _file(
        _header(
            SourceImageSequence=_element(
                0x00082112, "SQ", garbled[:-6] + b"\0" * 6 + struct.pack("<HHL", 0xFFFE, 0xE000, 40)
            )
        )
    )
    cases["stray delimiter in an item"] = _file(
        _header(
            ReferencedImageSequence=_sequence(
                0x00081140, _item(_reference("1.9.1") + struct.pack("<HHL", *_ITEM_END, 0) + _reference("1.9.2"))
            )
        )
    )
    cases["unknown VR in an item"] = _file(
        _header(
            ReferencedImageSequence=_sequence(
                0x00081140, _item(_reference("1.9.1") + struct.pack("<HH2sH", 0x0009, 0x1001, b"ZZ", 2) + b"ab")
            )
        )
    )
    cases["undefined-length non-sequence in an item"] = _file(
        _header(
            ReferencedImageSequence=_sequence(
                0x00081140,
                _item(
                    _reference("1.9.1")
                    + _element(0x00091001, "OB", b"\x01\x02" + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)
                ),
                undefined=True,
            )
        )
    )

    # inside a defined-length sequence, which the raw item reader parses itself
    def in_items(*items: bytes) -> bytes:
        return _file(_header(SourceImageSequence=_sequence(0x00082112, *items)))

    cases["item: UID with a VR other than UI"] = in_items(_item(_element(0x00081155, "LO", _padded("1.9.1"))))
    cases["item: empty UID"] = in_items(_item(_element(0x00081155, "UI", b"")), _item(_reference("1.9.2")))
    cases["item: UID encoded as a sequence"] = in_items(_item(_sequence(0x00081155, _item(b""), undefined=True)))
    cases["item: nested sequence in UN"] = _file(
        _header(
            RequestAttributesSequence=_sequence(
                0x00400275, _item(_sequence(0x00321064, _item(_code("R1", "L", "Requested", _implicit)), vr="UN"))
            )
        )
    )
    cases["item: garbled nested sequence"] = _file(
        _header(RequestAttributesSequence=_sequence(0x00400275, _item(_element(0x00321064, "SQ", b"\x01\x02\x03\x04"))))
    )
    cases["item: stray bytes after the items"] = in_items(_item(_reference("1.9.1")), b"\x00\x00\x00\x00")
    cases["item: element where an item belongs"] = in_items(_reference("1.9.1"))
    cases["item: truncated element header"] = in_items(_item(b"\x08\x00\x55\x11"))
    cases["item: truncated long element header"] = in_items(_item(struct.pack("<HH2sH", 0x0009, 0x1001, b"OB", 0)))
    cases["item: undefined-length OB"] = in_items(
        _item(
            _reference("1.9.1")
            + _element(0x00091001, "OB", b"\x01\x02" + struct.pack("<HHL", *_SEQUENCE_END, 0), undefined=True)
        )
    )
    cases["item: element overrunning the item"] = in_items(
        _item(_element(0x00081155, "UI", _padded("1.9.1", b"\0"))[:-2]), _item(_reference("1.9.2"))
    )
    cases["item: undefined-length private sequence, implicit VR"] = _file(
        _header(
            implicit=True,
            SourceImageSequence=_sequence(
                0x00082112,
                _item(_reference("1.9.1", None) + _sequence(0x00091001, _item(b""), vr=None, undefined=True)),
                vr=None,
            ),
        ),
        transfer_syntax=ImplicitVRLittleEndian,
    )
    cases["item: sequence delimiter inside a defined-length sequence"] = in_items(
        _item(_reference("1.9.1")), struct.pack("<HHL", *_SEQUENCE_END, 0), _item(_reference("1.9.2"))
    )
    return cases


EDGE_CASES = _edge_cases()


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_case(name: str) -> None:
    _both(_case(EDGE_CASES[name]), name)


def test_edge_cases_decode_what_they_hold() -> None:
    """Equal is not enough: the values must also be the right ones."""
    facts = {name: _both(_case(data), name) for name, data in EDGE_CASES.items()}
    assert facts["ISO_IR 100 accents"].equipment.station_name == "Salle é"
    assert facts["ISO_IR 100 accents"].equipment.manufacturer == "Müller Médical"
    assert facts["ISO_IR 100 accents"].derivation_description == "Réformation \\ coronale"
    assert [c.creator for c in facts["ISO_IR 100 accents"].private_creators] == ["CRÉATEUR"]
    assert facts["ISO_IR 192 UTF-8"].equipment.station_name == "Ünïcødé 東京"
    assert facts["ISO_IR 192 UTF-8"].study_description == "Schädel\\Kopf"
    assert facts["ISO 2022 IR 87 Japanese"].equipment.station_name == "東京ステーション"
    assert facts["ISO 2022 IR 87 Japanese"].procedure_codes[0].code.meaning == "頭部"
    assert facts["ISO_IR 144 Cyrillic"].equipment.station_name == "Томограф"
    sequences = facts["sequences, defined and undefined lengths"]
    assert sequences.referenced_sop_instance_uids == ("1.9.1", "1.9.2", "1.9.3", "1.9.4", "1.9.5", "1.9.6")
    assert [(c.code.value, c.keyword) for c in sequences.procedure_codes] == [
        ("74177", "ProcedureCodeSequence"),
        ("RPC1", "RequestedProcedureCodeSequence"),
    ]
    assert sequences.requested_procedure_descriptions == ("Requested description",)
    assert [c.value for c in sequences.derivation_codes] == ["113072"]
    for name in ("enhanced functional groups", "enhanced functional groups, implicit VR"):
        enhanced = facts[name]
        assert enhanced.frame_types == (("DERIVED", "PRIMARY", "VOLUME", "MIP"),)
        assert enhanced.volume_techniques == ("MAX_IP",)
        assert [c.value for c in enhanced.derivation_codes] == ["113073"]
        assert enhanced.derivation_description == "MIP of the axial series"
        assert enhanced.referenced_sop_instance_uids == ("1.8.1",)
        assert enhanced.number_of_frames == 3
    assert len(facts["references beyond the cap"].referenced_sop_instance_uids) == MAX_REFERENCES
    implicit = facts["implicit VR little endian"]
    assert implicit.referenced_sop_instance_uids == ("1.9.1", "1.9.2")
    assert [c.creator for c in implicit.private_creators] == ["ACME PRIVATE 1", "IMPLICIT CREATOR"]
    assert facts["VR UN everywhere"].equipment.station_name == "UNSTATION"
    assert facts["VR UN everywhere"].image_type == ("ORIGINAL", "PRIMARY")
    assert [c.creator for c in facts["VR UN everywhere"].private_creators] == ["UN CREATOR"]
    assert facts["IS leading zeros"].series_number == "0007" and facts["IS leading zeros"].number_of_frames == 7
    assert facts["IS float"].series_number == "1.0" and facts["IS float"].number_of_frames == 1
    assert facts["IS junk"].series_number == "abc"  # pydicom retries the value as SH
    padded = facts["padding, NULs and empty values"]
    assert padded.equipment.software_versions == "V1\\V2\\"
    assert padded.image_type == ("",)
    assert padded.modality == "CT"
    assert facts["plain explicit VR"].source_ae_title == "EDGE AE"
    assert facts["plain explicit VR"].implementation_version_name == "EDGE_1"


# ---------------------------------------------------------------------------------------------
# the raw path stays raw where it should, and falls back where it must
# ---------------------------------------------------------------------------------------------


def _converted(ds: Dataset) -> set[int]:
    """Tags pydicom has converted (no longer RawDataElement), meta included."""
    tags = {tag for tag, elem in ds._dict.items() if not isinstance(elem, RawDataElement)}
    return tags | {tag for tag, elem in ds.file_meta._dict.items() if not isinstance(elem, RawDataElement)}


def test_clean_header_is_read_without_pydicom_conversion() -> None:
    ds = _case(EDGE_CASES["sequences, defined and undefined lengths"])()
    before = _converted(ds)
    facts = extract_facts(ds, "clean")
    assert facts.referenced_sop_instance_uids
    assert _converted(ds) == before  # not one element converted by pydicom


def test_japanese_falls_back_to_pydicom() -> None:
    ds = _case(EDGE_CASES["ISO 2022 IR 87 Japanese"])()
    facts = _quietly(extract_facts, ds, "japanese")
    assert facts.equipment.station_name == "東京ステーション"
    assert not isinstance(ds._dict[0x00081010], RawDataElement)  # pydicom decoded it
    # Japanese inside a sequence item sends the whole header through pydicom; at the top level
    # only the elements that need the character set go there.
    ds = _case(EDGE_CASES["ISO 2022 IR 87 Japanese, top level only"])()
    assert _quietly(extract_facts, ds, "japanese").equipment.station_name == "東京"
    assert not isinstance(ds._dict[0x00081010], RawDataElement)
    assert isinstance(ds._dict[0x00080018], RawDataElement)  # a UID needs no character set


def test_big_endian_falls_back_to_pydicom() -> None:
    source = Dataset()
    source.SOPClassUID, source.SOPInstanceUID = CTImageStorage, "1.2.3.9"
    source.StudyInstanceUID, source.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    source.StationName, source.Modality, source.ImageType = "BIG", "CT", ["ORIGINAL", "PRIMARY"]
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, "1.2.3.1"
    source.SourceImageSequence = Sequence([item])
    source.add_new(0x00190010, "LO", "BIG CREATOR")
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    out = io.BytesIO()
    _quietly(source.save_as, out, enforce_file_format=True)
    read = _case(out.getvalue())
    assert not _quietly(lambda: read().is_little_endian)
    facts = _both(read, "big endian")
    assert facts.equipment.station_name == "BIG" and facts.referenced_sop_instance_uids == ("1.2.3.1",)
    assert [c.creator for c in facts.private_creators] == ["BIG CREATOR"]


def test_elements_already_converted_are_taken_as_they_are() -> None:
    def read() -> Dataset:
        ds = _case(EDGE_CASES["sequences, defined and undefined lengths"])()
        _ = ds.StationName, ds.SourceImageSequence, ds.file_meta.ImplementationVersionName  # converts them
        return ds

    _both(read, "converted")


def test_an_unexpected_error_in_the_raw_path_gives_the_reference_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, codec: str | None) -> None:
        raise RuntimeError("a bug in a raw decoder")

    monkeypatch.setitem(raw_elements._DECODERS, "UI", broken)
    read = _case(EDGE_CASES["sequences, defined and undefined lengths"])
    assert extract_facts(read(), "bug") == extract_facts(read(), "bug", fast=False)


@pytest.mark.parametrize("setting", ["use_none_as_empty_text_VR_value", "datetime_conversion", "raise"])
def test_pydicom_configured_otherwise(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-default pydicom settings change converted values: both paths still agree."""
    if setting == "raise":
        monkeypatch.setattr(config.settings, "_reading_validation_mode", config.RAISE)
    else:
        monkeypatch.setattr(config, setting, True)
    for name in ("padding, NULs and empty values", "sequences, defined and undefined lengths", "IS junk"):
        _both(_case(EDGE_CASES[name]), name)


# ---------------------------------------------------------------------------------------------
# reading: the pool and in-memory files change nothing
# ---------------------------------------------------------------------------------------------


def test_read_all_in_a_pool_equals_serial_reading(fixtures_output: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found, _ = sources.discover([fixtures_output])
    found += [sources.Source(str(next(fixtures_output.glob("*/expected.json")))), sources.Source("/nonexistent.dcm")]
    serial = list(sources.read_all(found, workers=1))
    assert sum(isinstance(r, sources.ReadError) for r in serial) == 2
    monkeypatch.setattr(sources, "PARALLEL_THRESHOLD", 1)
    monkeypatch.setattr(sources, "CHUNK_LIMITS", (3, 5))  # many small tasks, several in flight
    seen: list[int] = []
    pooled = list(sources.read_all(found, workers=2, progress=seen.append))
    assert pooled == serial
    assert sum(seen) == len(found)


def test_files_read_from_memory_or_disk_give_the_same_facts(realworld: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [sources.Source(str(p)) for p in sorted(realworld.iterdir()) if p.suffix == ".dcm"]
    from_memory = [sources.read_facts(s) for s in files]
    monkeypatch.setattr(sources, "WHOLE_FILE_LIMIT", -1)  # every file parsed from disk
    assert [sources.read_facts(s) for s in files] == from_memory

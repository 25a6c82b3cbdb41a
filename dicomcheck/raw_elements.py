"""The raw path of :mod:`dicomcheck.extract`: header values decoded straight from the bytes pydicom
has already read, a measured fast path (about half the cost of reading values through pydicom).

Until first access a pydicom dataset holds ``RawDataElement`` tuples, so a text value is one
``bytes.decode`` away, and a sequence's items are parsed by a small reader that keeps only the
elements asked for. It copies exactly what pydicom's converters do for the text VRs read here
(``UI CS AS DA DT TM AE IS SH LO UC ST LT UT``) and hands anything else back to pydicom:

* an element whose VR is not the dictionary VR (UN is accepted where pydicom replaces it);
* a character set other than the default, ISO_IR 6, ISO_IR 100 or ISO_IR 192, text with escape
  sequences, UTF-8 that does not decode;
* big endian data, deferred values, an IS value that is not a plain integer;
* a sequence item that is not clean little endian items and elements: a VR switch, an unknown
  VR, an undefined-length element that is not a sequence, a stray delimiter, a length that
  overruns, an item with its own Specific Character Set;
* pydicom configured differently from its defaults (callbacks, hooks, datetime or numpy values,
  RAISE validation);
* a pydicom release other than :data:`VERIFIED_PYDICOM`: the decoders copy that release's
  converters, so on any other one every value is read through pydicom.

A top-level element falls back on its own; anything odd inside a sequence item the raw reader
parsed itself raises :class:`RawReadingFallback`, which sends the whole instance through pydicom.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Iterable
from typing import Any

import pydicom
from pydicom import config
from pydicom import hooks as pydicom_hooks
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from .model import PrivateCreator
from .pydicom_reader import PydicomReader, creator_name, creator_text, dataset_items, get_value, sequence_items

VERIFIED_PYDICOM = "3.0.2"
"""The pydicom release whose converters the raw decoders copy (``pydicom==`` in pyproject.toml);
``tests/test_extract_speed.py`` checks both paths give identical facts on it."""


class RawReadingFallback(Exception):
    """A raw sequence item holds something only pydicom reads: use the reference path."""


_SLOW: Any = object()
"""Returned by the raw decoders for "ask pydicom" (``None`` is a real value: absent)."""

_DEFAULT_VR_HOOK = pydicom_hooks.raw_element_vr
_DEFAULT_VALUE_HOOK = pydicom_hooks.raw_element_value

_DIRECT_CODECS = frozenset({default_encoding, "latin_1", "UTF8"})
"""Python codecs pydicom uses for no / ISO_IR 6 / ISO_IR 100 / ISO_IR 192 Specific Character Set.
A value in one of them without escape sequences is a plain ``bytes.decode`` for pydicom too."""
_ESC = b"\x1b"
_IS_VALUE = re.compile(r" *[+-]?[0-9]{1,15} *")
"""An IS value pydicom turns into an exact int (longer numbers lose precision in its float check)."""
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _split_strings(text: str) -> Any:
    """pydicom's ``multi_string``: strip trailing padding, split on backslashes."""
    parts = text.rstrip(" \x00").split("\\")
    return parts[0] if len(parts) == 1 else parts


def _one_or_many(parts: list[str]) -> Any:
    return parts[0] if len(parts) == 1 else parts


# One decoder per VR read here, each returning what pydicom 3's converter returns (a list
# standing in for its MultiValue), or _SLOW. ``codec`` is only used by the character set VRs.


def _decode_string(data: bytes, codec: str | None) -> Any:
    return _split_strings(data.decode(default_encoding))  # convert_string (CS, DA, TM, AS, DT)


def _decode_ui(data: bytes, codec: str | None) -> Any:
    parts = data.decode(default_encoding).rstrip("\0 ").split("\\")  # convert_UI
    return _one_or_many([part.strip() for part in parts])  # UID() strips each value


def _decode_ae(data: bytes, codec: str | None) -> Any:
    return _one_or_many([part.strip() for part in data.decode(default_encoding).split("\\")])


def _decode_is(data: bytes, codec: str | None) -> Any:
    parts = data.decode(default_encoding).rstrip(" \x00").split("\\")  # multi_string(..., IS)
    if not all(_IS_VALUE.fullmatch(part) for part in parts):
        return _SLOW
    return _one_or_many([part.strip() for part in parts])  # str(IS) is the stripped original


def _decode_charset(data: bytes, codec: str | None) -> Any:
    if codec is None or _ESC in data:
        return _SLOW
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return _SLOW  # pydicom warns and decodes with replacement characters


def _decode_text(data: bytes, codec: str | None) -> Any:
    text = _decode_charset(data, codec)  # convert_text (SH, LO, UC)
    if text is _SLOW:
        return _SLOW
    return _one_or_many([part.rstrip("\0 ") for part in text.split("\\")])


def _decode_single_text(data: bytes, codec: str | None) -> Any:
    text = _decode_charset(data, codec)  # convert_single_string (ST, LT, UT): no splitting
    return _SLOW if text is _SLOW else text.rstrip("\0 ")


_DECODERS = {
    "CS": _decode_string,
    "DA": _decode_string,
    "TM": _decode_string,
    "AS": _decode_string,
    "DT": _decode_string,
    "UI": _decode_ui,
    "AE": _decode_ae,
    "IS": _decode_is,
    "SH": _decode_text,
    "LO": _decode_text,
    "UC": _decode_text,
    "ST": _decode_single_text,
    "LT": _decode_single_text,
    "UT": _decode_single_text,
}


def _decode_value(vr: str, data: bytes, codec: str | None) -> Any:
    decoder = _DECODERS.get(vr)
    return _SLOW if decoder is None else decoder(data, codec)


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag, str(dictionary_VR(tag))


@functools.cache
def _implicit_creator_vr(tag: int) -> str:
    """The VR pydicom gives a private creator read with implicit VR (LO unless in its dictionary)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "LO"


def raw_reading_is_exact() -> bool:
    """True on the verified pydicom release configured as the raw decoders assume (its defaults)."""
    return (
        pydicom.__version__ == VERIFIED_PYDICOM
        and config.data_element_callback is None
        and pydicom_hooks.hooks.raw_element_vr is _DEFAULT_VR_HOOK
        and pydicom_hooks.hooks.raw_element_value is _DEFAULT_VALUE_HOOK
        and not pydicom_hooks.hooks.raw_element_kwargs
        and not config.datetime_conversion
        and not config.use_IS_numpy
        and config.replace_un_with_known_vr
        and config.settings.reading_validation_mode != config.RAISE
    )


def _codec(ds: Dataset) -> str | None:
    """The Python codec pydicom decodes ``ds``'s SH/LO/ST/LT/UC/UT values with, if a single
    direct one; ``None`` (use pydicom) for code extensions and other character sets."""
    encodings = ds.original_character_set or ds._character_set
    if not isinstance(encodings, str):
        if len(encodings) != 1:
            return None
        encodings = encodings[0]
    return encodings if encodings in _DIRECT_CODECS else None


def _resolve_vr(file_vr: str | None, expected: str, data: bytes) -> str | None:
    """The VR pydicom converts with (``raw_element_vr``) when it is the dictionary VR, else None."""
    if file_vr is None or file_vr == expected:
        return expected  # implicit VR: pydicom looks the tag up in its dictionary
    if file_vr == "UN" and len(data) < 0xFFFF:
        return expected  # pydicom replaces UN by the known VR (replace_un_with_known_vr)
    return None


def _raw_element_value(elem: RawDataElement, expected_vr: str, codec: str | None) -> Any:
    """The value pydicom would give a public element on first access, or ``_SLOW``."""
    data = elem.value
    if not elem.is_little_endian or (data is None and elem.length != 0):
        return _SLOW  # big endian, or deferred: pydicom reads it from the file
    vr = _resolve_vr(elem.VR, expected_vr, data or b"")
    if vr is None:
        return _SLOW
    if not data:  # length 0 (a value that is not deferred has exactly its length in bytes)
        return empty_value_for_VR(vr)
    return _decode_value(vr, data, codec)


def _raw_creator_name(tag: int, elem: Any, codec: str | None) -> Any:
    """A private creator (always LO for pydicom) decoded from its raw bytes, or ``_SLOW``."""
    if type(elem) is not RawDataElement or not elem.is_little_endian:
        return _SLOW
    vr = elem.VR
    if vr is None:
        vr = _implicit_creator_vr(tag)
    elif vr == "UN":
        vr = "LO"  # pydicom: a private creator in UN is LO
    data = elem.value
    if vr != "LO" or (data is None and elem.length != 0):
        return _SLOW
    if not data:  # length 0
        return creator_text(empty_value_for_VR("LO"))
    if b"\\" in data:
        return _SLOW  # pydicom makes it a MultiValue; its str() is what the facts record
    value = _decode_value("LO", data, codec)
    return _SLOW if value is _SLOW else creator_text(value)


# ---- sequences -------------------------------------------------------------------------------

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_TAG_LENGTH = struct.Struct("<HHL")  # item headers, implicit VR element headers
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")
_LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_KNOWN_VRS = frozenset(vr for vr in ENCODED_VR if len(vr) == 2)


class _Unparsed(Exception):
    """The sequence bytes are not what the raw item reader handles; let pydicom read them."""


class _RawItem:
    """One sequence item as parsed from its bytes: tag -> (VR or None, value).

    The value is the element's bytes, or for a sequence of undefined length (which has to be
    walked to find its end anyway) the list of its items already parsed.
    """

    __slots__ = ("codec", "elements", "implicit")

    def __init__(self, elements: dict[int, tuple[str | None, Any]], implicit: bool, codec: str | None):
        self.elements = elements
        self.implicit = implicit
        self.codec = codec

    def value(self, keyword: str) -> Any:
        tag, expected = _tag_and_vr(keyword)
        entry = self.elements.get(tag)
        if entry is None:
            return None
        file_vr, data = entry
        if not isinstance(data, bytes):
            raise RawReadingFallback(keyword)
        vr = _resolve_vr(file_vr, expected, data)
        if vr is None:
            raise RawReadingFallback(keyword)
        if not data:
            return empty_value_for_VR(vr)
        value = _decode_value(vr, data, self.codec)
        if value is _SLOW:
            raise RawReadingFallback(keyword)
        return value

    def items(self, keyword: str, limit: int | None) -> list[_RawItem]:
        tag, _ = _tag_and_vr(keyword)
        entry = self.elements.get(tag)
        if entry is None:
            return []
        file_vr, data = entry
        if file_vr not in (None, "SQ"):
            raise RawReadingFallback(keyword)
        if isinstance(data, list):
            return data[:limit]
        items = _parse_sequence(data, self.implicit, self.codec)
        if items is None:
            raise RawReadingFallback(keyword)
        return items[:limit]


def _parse_sequence(data: bytes, implicit: bool, codec: str | None) -> list[_RawItem] | None:
    """The items of a defined-length little endian sequence value, or ``None`` if unsure."""
    try:
        items, _ = _read_items(data, 0, len(data), implicit, codec, delimited=False)
    except (_Unparsed, struct.error, RecursionError, UnicodeDecodeError):
        return None
    return items


def _read_items(
    buf: bytes, pos: int, end: int, implicit: bool, codec: str | None, *, delimited: bool
) -> tuple[list[_RawItem], int]:
    """Items from ``buf[pos:end]``: all of them, or up to the Sequence Delimitation Item."""
    items: list[_RawItem] = []
    while delimited or pos < end:
        if pos + 8 > end:
            raise _Unparsed("truncated item header")
        group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END and delimited and length == 0:
            return items, pos
        if tag != _ITEM:
            raise _Unparsed(f"({group:04X},{element:04X}) where an item was expected")
        if length == _UNDEFINED_LENGTH:
            elements, pos = _read_elements(buf, pos, end, implicit, codec, delimited=True)
        else:
            if pos + length > end:
                raise _Unparsed("item overruns its sequence")
            elements, pos = _read_elements(buf, pos, pos + length, implicit, codec, delimited=False)
        if 0x00080005 in elements:
            raise _Unparsed("item with its own Specific Character Set")
        items.append(_RawItem(elements, implicit, codec))
    return items, pos


def _read_elements(
    buf: bytes, pos: int, end: int, implicit: bool, codec: str | None, *, delimited: bool
) -> tuple[dict[int, tuple[str | None, Any]], int]:
    """The elements of one item: all of ``buf[pos:end]``, or up to its Item Delimitation Item.

    Mirrors pydicom's ``read_dataset`` / ``data_element_generator`` for well-formed items and
    raises :class:`_Unparsed` wherever pydicom would switch VR encoding, guess, or warn.
    """
    elements: dict[int, tuple[str | None, Any]] = {}
    first = True
    while delimited or pos < end:
        if pos + 8 > end:
            raise _Unparsed("truncated element header")
        group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | element
        if tag == _ITEM_END and delimited and length == 0:
            return elements, pos + 8
        if group == 0xFFFE:
            raise _Unparsed("stray delimiter")
        vr: str | None = None
        if implicit:
            pos += 8
        else:
            _, _, vr_bytes, length = _EXPLICIT_HEADER.unpack_from(buf, pos)
            if first and not (0x40 < vr_bytes[0] < 0x5B and 0x40 < vr_bytes[1] < 0x5B):
                raise _Unparsed("implicit VR item in an explicit VR dataset")
            if vr_bytes not in _KNOWN_VRS:
                raise _Unparsed("unknown VR")
            vr = vr_bytes.decode("ascii")
            if vr in _LONG_LENGTH_VRS:
                if pos + 12 > end:
                    raise _Unparsed("truncated element header")
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                pos += 12
            else:
                pos += 8
        first = False
        if length == _UNDEFINED_LENGTH:
            if vr != "SQ" and not (vr is None and _is_public_sequence(tag)):
                raise _Unparsed("undefined length element that is not a sequence")
            nested, pos = _read_items(buf, pos, end, implicit, codec, delimited=True)
            elements[tag] = (vr, nested)
            continue
        if pos + length > end:
            raise _Unparsed("element overruns its item")
        elements[tag] = (vr, buf[pos : pos + length])
        pos += length
    return elements, pos


@functools.cache
def _is_public_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class RawReader(PydicomReader):
    """Reads from the raw elements, for one header (it caches per dataset).

    Falls back to pydicom per element or per top-level sequence where the containing
    ``Dataset`` is at hand, and raises :class:`RawReadingFallback` inside items it parsed itself.
    """

    def __init__(self) -> None:
        self._views: dict[int, tuple[dict[int, Any], str | None]] = {}
        self._sequences: dict[tuple[int, int], list[_RawItem] | None] = {}

    def _view(self, ds: Dataset) -> tuple[dict[int, Any], str | None]:
        """``ds``'s elements keyed by plain ints, and its codec.

        pydicom keys its datasets by ``BaseTag``, whose ``__eq__`` is Python code: every lookup
        would call it. A snapshot keyed by ``int`` costs less than a handful of such lookups.
        """
        view = self._views.get(id(ds))
        if view is None:
            elements = ds._dict
            view = self._views[id(ds)] = (dict(zip(map(int, elements), elements.values(), strict=True)), _codec(ds))
        return view

    def value(self, ds: Any, keyword: str) -> Any:
        if type(ds) is _RawItem:
            return ds.value(keyword)
        tag, vr = _tag_and_vr(keyword)
        elements, codec = self._view(ds)
        elem = elements.get(tag)
        if elem is None:
            return None
        if type(elem) is not RawDataElement:
            return elem.value  # already converted: exactly what ds.get() returns
        value = _raw_element_value(elem, vr, codec)
        return get_value(ds, keyword) if value is _SLOW else value

    def items(self, ds: Any, keyword: str, limit: int | None = None) -> Iterable[Any]:
        if ds is None:
            return ()
        if type(ds) is _RawItem:
            return ds.items(keyword, limit)
        tag, _ = _tag_and_vr(keyword)
        elements, codec = self._view(ds)
        elem = elements.get(tag)
        if elem is None:
            return ()
        if type(elem) is not RawDataElement:
            return sequence_items(elem.value, limit)
        key = (id(ds), tag)
        if key not in self._sequences:
            self._sequences[key] = _raw_sequence_items(elem, codec)
        items = self._sequences[key]
        if items is None:
            return dataset_items(ds, keyword, limit)  # pydicom reads this sequence
        return items[:limit]

    def private_creators(self, ds: Dataset) -> tuple[PrivateCreator, ...]:
        elements, codec = self._view(ds)
        creators: list[PrivateCreator] = []
        for tag, elem in elements.items():
            # _is_creator_tag inlined: odd group above 0008, element 0010-00FF
            if tag & 0x10000 and tag > 0x8FFFF and 0x10 <= tag & 0xFFFF <= 0xFF:
                name = _raw_creator_name(tag, elem, codec)
                if name is _SLOW:
                    name = creator_name(ds, BaseTag(tag))
                if name:
                    creators.append(PrivateCreator(tag >> 16, tag & 0xFFFF, name))
        return tuple(creators)


def _raw_sequence_items(elem: RawDataElement, codec: str | None) -> list[_RawItem] | None:
    """The items of a top-level sequence still in raw form, or ``None`` for pydicom to read."""
    if not elem.is_little_endian or elem.value is None:
        return None
    if elem.VR != "SQ" and not (elem.VR is None and elem.is_implicit_VR):
        return None  # UN (pydicom guesses the item encoding) or an unknown VR
    if elem.length == 0:
        return []
    return _parse_sequence(elem.value, elem.is_implicit_VR, codec)

"""Storage that lasts, the file and index side: header-only copies, quarantine expiry, the free-space budget.

**Header-only copy.** :func:`write_header_copy` streams a stored instance once: every byte goes into the
SHA-256 of the original (checked against the index before anything changes), and every byte outside
the top-level Pixel Data, Float Pixel Data and Double Float Pixel Data elements (7FE0,0010 / 0008 /
0009) is written to a temporary file on the storage volume. The elements are found by walking the
top-level elements of the raw file (:func:`pixel_spans`): explicit and implicit VR, little and big
endian, undefined lengths (sequences, encapsulated pixel data with its fragments and delimiter)
skipped item by item. Every other byte - preamble, file meta, every other element, anything after
the pixel data - is kept as it was, so every other element stays byte-exact; nothing is re-encoded.
A Deflated Explicit VR Little Endian data set is **kept whole** (cutting would mean re-encoding the
compressed stream): :class:`NotCuttable` says so and the instance stays ``full``.

The copy replaces the original under the same name (the name keeps the original's digest; the index
keeps the original's SHA-256 and size beside the copy's, and the signed retention record lists both),
written like every stored file: temporary file, fsync, rename, directory fsync.

**Budget.** :func:`free_space_refusal` answers whether the storage volume is below ``min_free_space``
(``statvfs``, cached for :data:`BUDGET_CACHE_SECONDS`); the receiver refuses new instances with 0xA700
then, and the retention loop runs at once. A transition is logged once, not per instance.

Only this module and ``store.reads`` touch the retention columns of the index.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import Engine, update
from sqlmodel import Session, col

from .. import metrics
from .files import fsync_dir
from .tables import Instance, Quarantined, Study

log = logging.getLogger(__name__)

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
"""Pixel Data, Float Pixel Data, Double Float Pixel Data: the top-level elements a header-only copy drops."""
FULL, HEADER_ONLY = "full", "header_only"
"""``instance.pixel_state`` values."""

_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 64
_CHUNK = 1 << 20


class NotCuttable(ValueError):
    """The file is kept whole: deflated, no file meta, or its elements cannot be walked (the reason)."""


# ---------------------------------------------------------------- finding the pixel data in the raw bytes
class _Walker:
    """The top-level elements of one file, read by their headers only (values are seeked over)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size

    def read(self, at: int, count: int) -> bytes:
        self.fh.seek(at)
        data = self.fh.read(count)
        if len(data) != count:
            raise NotCuttable(f"truncated at byte {at}")
        return data

    def header(self, at: int, implicit: bool, endian: str) -> tuple[int, bytes | None, int, int]:
        """``(tag, VR or None, value length, header length)`` of the element at ``at``."""
        group, element = struct.unpack(endian + "HH", self.read(at, 4))
        tag = group << 16 | element
        if group == 0xFFFE or implicit:  # items and delimiters never carry a VR
            (length,) = struct.unpack(endian + "L", self.read(at + 4, 4))
            return tag, None, length, 8
        vr = self.read(at + 4, 2)
        if vr in _LONG_VRS:
            (length,) = struct.unpack(endian + "L", self.read(at + 8, 4))
            return tag, vr, length, 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise NotCuttable(f"no value representation at byte {at + 4}")
        (length,) = struct.unpack(endian + "H", self.read(at + 6, 2))
        return tag, vr, length, 8

    def value_end(self, start: int, length: int) -> int:
        end = start + length
        if end > self.size:
            raise NotCuttable(f"a value at byte {start} runs past the end of the file")
        return end

    def skip_undefined(self, at: int, implicit: bool, endian: str, depth: int) -> int:
        """The end of an undefined-length value starting at ``at``: items (each a data set of
        elements, or a fragment of defined length) up to the sequence delimiter."""
        if depth > _MAX_DEPTH:
            raise NotCuttable("sequences nested too deep")
        while True:
            if at == self.size:  # the delimiter is missing at the end of the file (seen in real files): tolerated
                return at
            tag, _, length, header = self.header(at, True, endian)
            at += header
            if tag == _SEQUENCE_END:
                return at
            if tag != _ITEM:
                raise NotCuttable(f"an item was expected at byte {at - header}")
            if length != _UNDEFINED:
                at = self.value_end(at, length)
                continue
            while True:  # an item of undefined length: its elements up to the item delimiter
                tag, vr, length, header = self.header(at, implicit, endian)
                if tag == _ITEM_END:
                    at += header
                    break
                at = self.element_end(at, vr, length, header, implicit, endian, depth + 1)

    def element_end(
        self, at: int, vr: bytes | None, length: int, header: int, implicit: bool, endian: str, depth: int
    ) -> int:
        start = at + header
        if length != _UNDEFINED:
            return self.value_end(start, length)
        # undefined length: a sequence, encapsulated pixel data, or UN whose content is implicit VR (PS3.5 6.2.2)
        return self.skip_undefined(start, implicit or vr == b"UN", endian, depth)


def _meta(walker: _Walker) -> tuple[int, str]:
    """Where the data set starts and its transfer syntax, from the file meta (explicit VR little endian)."""
    head = walker.read(0, min(132, walker.size))
    if len(head) == 132 and head[128:132] == b"DICM":
        at = 132
    elif head[:2] == b"\x02\x00":
        at = 0
    else:
        raise NotCuttable("no DICOM file meta (a header-only copy keeps only files with one)")
    syntax: str | None = None
    while at + 8 <= walker.size and walker.read(at, 2) == b"\x02\x00":  # group 0002
        tag, _, length, header = walker.header(at, False, "<")
        if length == _UNDEFINED:
            raise NotCuttable("an undefined length in the file meta")
        if tag == 0x00020010:
            syntax = walker.read(at + header, length).rstrip(b"\0 ").decode("ascii", "replace")
        at = walker.value_end(at + header, length)
    if not syntax:
        raise NotCuttable("no Transfer Syntax UID in the file meta")
    return at, syntax


def pixel_spans(fh: BinaryIO) -> list[tuple[int, int, int]]:
    """``(start, end, tag)`` of the top-level pixel data elements of the file open in ``fh`` (each from
    its tag to the end of its value; empty when it has none). NotCuttable when the file
    is kept whole (deflated data set, no file meta, elements that cannot be walked)."""
    fh.seek(0, os.SEEK_END)
    walker = _Walker(fh, fh.tell())
    at, syntax = _meta(walker)
    if syntax == _DEFLATED:
        raise NotCuttable("a Deflated Explicit VR data set is kept whole (cutting would re-encode it)")
    implicit, endian = syntax == _IMPLICIT_LE, ">" if syntax == _EXPLICIT_BE else "<"
    spans = []
    while at < walker.size:
        if walker.size - at < 8:
            raise NotCuttable(f"{walker.size - at} stray bytes at the end")
        tag, vr, length, header = walker.header(at, implicit, endian)
        if tag >> 16 == 0xFFFE:  # a stray item or delimiter (seen in real files): kept as it is when it has a length
            if length == _UNDEFINED:
                raise NotCuttable(f"an item of undefined length outside any sequence at byte {at}")
            at = walker.value_end(at + header, length)
            continue
        end = walker.element_end(at, vr, length, header, implicit, endian, 0)
        if tag in PIXEL_TAGS:
            spans.append((at, end, tag))
        at = end
    return spans


# ---------------------------------------------------------------- writing the header-only copy
@dataclass(frozen=True, slots=True)
class HeaderCopy:
    """A header-only copy waiting in ``storage/.tmp`` to replace the original (:func:`replace_original`)."""

    temp: Path
    original_sha256: str
    original_size: int
    header_sha256: str
    header_size: int
    removed: tuple[str, ...]
    """The removed elements' tags (``7FE00010``); empty when the file held no pixel data."""


def write_header_copy(original: Path, tmp_dir: Path) -> HeaderCopy:
    """Hash ``original`` and write its header-only copy to a temporary file in ``tmp_dir`` (fsynced).

    NotCuttable when it is kept whole; OSError as raised (a full volume among them: the partial copy is removed)."""
    temp = tmp_dir / f"{uuid.uuid4().hex}.part"
    original_digest, header_digest = hashlib.sha256(), hashlib.sha256()
    original_size = header_size = 0
    with original.open("rb") as fh:
        found = pixel_spans(fh)
        spans = [(start, end) for start, end, _ in found]
        removed = tuple(f"{tag:08X}" for _, _, tag in found)
        fh.seek(0)
        try:
            with temp.open("xb") as out:
                position = 0
                while chunk := fh.read(_CHUNK):
                    original_digest.update(chunk)
                    original_size += len(chunk)
                    kept = _outside(chunk, position, spans)
                    for part in kept:
                        header_digest.update(part)
                        out.write(part)
                        header_size += len(part)
                    position += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    return HeaderCopy(temp, original_digest.hexdigest(), original_size, header_digest.hexdigest(), header_size, removed)


def _outside(chunk: bytes, position: int, spans: list[tuple[int, int]]) -> list[bytes]:
    """The parts of ``chunk`` (file bytes from ``position``) outside every span."""
    parts, at, end = [], position, position + len(chunk)
    for start, stop in spans:
        if stop <= at or start >= end:
            continue
        if start > at:
            parts.append(chunk[at - position : start - position])
        at = max(at, stop)
    if at < end:
        parts.append(chunk[at - position :])
    return parts


def replace_original(copy: HeaderCopy, original: Path) -> None:
    """Rename the header-only copy over the original (atomic, same volume) and fsync the folder."""
    os.replace(copy.temp, original)
    fsync_dir(original.parent)


# ---------------------------------------------------------------- index writes
@dataclass(frozen=True, slots=True)
class RetentionInstance:
    """One stored content version as retention sees it (``store.reads.IndexReader.retention_instances``)."""

    id: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    version: int
    sha256: str
    size: int
    path: str
    pixel_state: str
    header_sha256: str | None
    header_size: int | None
    pruned_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: int
    path: str
    sha256: str | None
    received_at: dt.datetime


def mark_header_only(engine: Engine, instance_id: int, copy: HeaderCopy, when: dt.datetime) -> bool:
    """Record that the instance's file is now its header-only copy; False when another pass did it first."""
    with Session(engine) as session:
        result = session.execute(
            update(Instance)
            .where(col(Instance.id) == instance_id, col(Instance.pixel_state) == FULL)
            .values(
                pixel_state=HEADER_ONLY, header_sha256=copy.header_sha256, header_size=copy.header_size, pruned_at=when
            )
        )
        session.commit()
        return bool(getattr(result, "rowcount", 0))


def mark_retention_applied(engine: Engine, study_uid: str, when: dt.datetime) -> None:
    with Session(engine) as session:
        session.execute(
            update(Study).where(col(Study.study_instance_uid) == study_uid).values(retention_applied_at=when)
        )
        session.commit()


def mark_quarantine_expired(engine: Engine, paths: Iterable[str], when: dt.datetime) -> int:
    """Mark the quarantine rows of ``paths`` (relative to ``quarantine/``) expired; how many rows."""
    wanted = list(paths)
    if not wanted:
        return 0
    with Session(engine) as session:
        result = session.execute(
            update(Quarantined)
            .where(col(Quarantined.path).in_(wanted), col(Quarantined.expired_at).is_(None))
            .values(expired_at=when)
        )
        session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


# ---------------------------------------------------------------- the free-space budget
BUDGET_CACHE_SECONDS = 1.0
"""How long one ``statvfs`` of the storage volume answers the budget check, while the volume is far from it."""
BUDGET_NEAR = 256 << 20
"""Within this many bytes of ``min_free_space`` every check reads the volume again: a sender can store more
than the whole margin within one cache period (``statvfs`` costs microseconds, an instance milliseconds)."""


@dataclass(frozen=True, slots=True)
class FreeSpace:
    free: int
    """Bytes available on the storage volume (``f_bavail``)."""
    total: int
    wanted: int
    """``min_free_space`` in bytes (0: no budget)."""

    @property
    def below(self) -> bool:
        return self.wanted > 0 and self.free < self.wanted


def volume_space(path: Path, min_free: tuple[float, int] | None) -> FreeSpace:
    """The free space of the volume holding ``path`` against ``min_free`` (``config.parse_free_space``)."""
    stats = os.statvfs(path)
    total, free = stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    share, size = min_free or (0.0, 0)
    return FreeSpace(free, total, size or int(share * total))


class FreeSpaceBudget:
    """The ``min_free_space`` check of one storage volume; thread-safe, ``statvfs`` cached."""

    def __init__(self, storage_dir: Path, min_free: tuple[float, int] | None) -> None:
        self.storage_dir, self.min_free = storage_dir, min_free
        self._lock = threading.Lock()
        self._checked_at = -1e18
        self._space: FreeSpace | None = None
        self._below = False

    def space(self) -> FreeSpace | None:
        """The volume's free space now (at most :data:`BUDGET_CACHE_SECONDS` old); None when it cannot be read."""
        with self._lock:
            now = time.monotonic()
            cached = self._space
            near = cached is not None and cached.wanted > 0 and cached.free - cached.wanted < BUDGET_NEAR
            if cached is None or near or now - self._checked_at >= BUDGET_CACHE_SECONDS:
                try:
                    self._space = volume_space(self.storage_dir, self.min_free)
                except OSError as exc:
                    log.warning("free space of %s not readable: %s", self.storage_dir, exc.strerror)
                    self._space = None
                self._checked_at = now
                self._note(self._space)
            return self._space

    def _note(self, space: FreeSpace | None) -> None:
        below = space is not None and space.below
        if space is not None:
            metrics.STORAGE_FREE_BYTES.set(space.free)
        metrics.STORAGE_BELOW_MIN_FREE.set(1 if below else 0)
        if below == self._below or space is None:
            return
        self._below = below
        if below:
            log.error(
                "storage volume below min_free_space (%s free, %s wanted): refusing new instances with 0xA700; "
                "retention and quarantine expiry run now",
                human_bytes(space.free),
                human_bytes(space.wanted),
            )
        else:
            log.warning(
                "storage volume above min_free_space again (%s free): accepting instances", human_bytes(space.free)
            )

    def refusal(self) -> str | None:
        """The 0xA700 comment when the volume is below the budget, else None."""
        space = self.space()
        if space is None or not space.below:
            return None
        return "storage below min_free_space"


_budgets: dict[tuple[Path, tuple[float, int] | None], FreeSpaceBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(storage_dir: Path, min_free: tuple[float, int] | None) -> FreeSpaceBudget:
    """The one budget check of this process for ``storage_dir`` (its cache and its transition state)."""
    key = (Path(storage_dir), min_free)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = FreeSpaceBudget(Path(storage_dir), min_free)
        return budget


class _BudgetSettings(Protocol):
    @property
    def storage_dir(self) -> Path: ...

    @property
    def min_free_space_budget(self) -> tuple[float, int] | None: ...


def storage_refusal(settings: _BudgetSettings) -> str | None:
    """The 0xA700 comment while the storage volume is below ``min_free_space`` (``config.Settings``), else None."""
    return budget_for(settings.storage_dir, settings.min_free_space_budget).refusal()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - the loop returns

"""Input side of ``analyze``: files, folders, ZIP archives and DICOMDIR media -> facts or errors.

This is I/O at the edge: it finds instances, reads their headers (never the pixel data) and hands
the parsed datasets to the pure :func:`dicomcheck.extract.extract_facts`. Unreadable or non-DICOM
inputs become :class:`ReadError` records; nothing here stops a run.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_partial, read_preamble
from pydicom.filereader import read_dataset as pydicom_read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .extract import extract_facts, header_value
from .model import Code, Equipment, InstanceFacts, PrivateCreator, ProcedureCode

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NON_DICOM_SUFFIXES = frozenset(
    {
        ".json",
        ".toml",
        ".md",
        ".txt",
        ".csv",
        ".xml",
        ".html",
        ".pdf",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".py",
        ".pyc",
        ".log",
        ".ini",
        ".yaml",
        ".yml",
        ".sh",
        ".exe",
        ".dll",
        ".inf",
    }
)
PARALLEL_THRESHOLD = 400
"""From this many inputs on, headers are read in a pool of processes (one per core)."""
CHUNK_LIMITS = (16, 64)
"""Smallest and largest number of inputs a pool worker reads per task: small enough that the
workers finish together, large enough that handing tasks over costs next to nothing."""
TASKS_PER_WORKER = 4
"""Tasks submitted ahead per worker; bounds the results held for in-order delivery."""
WHOLE_FILE_LIMIT = 4 * 1024 * 1024
"""Files up to this size are read with one ``read()`` and parsed from memory. pydicom parses a
``BytesIO`` about a fifth faster than a file, whose many small reads and ``tell()`` calls each go
through the buffered reader's lock and often a system call. Larger files (multi-frames) are
parsed from disk so that their pixel data is never read."""


@dataclass(frozen=True, slots=True)
class Source:
    """One instance to read: a file, or a member of a ZIP archive."""

    path: str
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path


@dataclass(frozen=True, slots=True)
class ReadError:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def _dicomdir_members(path: Path) -> Iterator[Source]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
    root = path.parent
    for record in ds.get("DirectoryRecordSequence", []):
        ids = record.get("ReferencedFileID")
        if ids:
            parts = [ids] if isinstance(ids, str) else list(ids)
            yield Source(str(root.joinpath(*parts)))


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() != "DICOMDIR":
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["MediaStorageSOPClassUID"], force=True)
        return getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY
    except Exception:  # noqa: BLE001
        return False


def discover(paths: Iterable[str | Path]) -> tuple[list[Source], list[ReadError]]:
    """Every instance under ``paths``: folders recursively, ZIP members, DICOMDIR references.

    A DICOMDIR found while walking a folder is an index, not an instance: the files it lists are
    found by the walk itself. Files with an obviously non-DICOM suffix are skipped in folder walks
    (but reported when named explicitly).
    """
    sources: dict[str, Source] = {}
    errors: list[ReadError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [_file_sources(file, explicit=False) for file in _walk(path)]
        elif path.is_file():
            found = [_file_sources(path, explicit=True)]
        else:
            found = [([], ReadError(str(path), "no such file or folder"))]
        for members, error in found:
            for source in members:
                sources.setdefault(source.name, source)
            if error is not None:
                errors.append(error)
    return list(sources.values()), errors


def _walk(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` in a stable order, hidden files and folders left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _file_sources(path: Path, explicit: bool) -> tuple[list[Source], ReadError | None]:
    """The instances one file holds (itself, its ZIP members, or the files a named DICOMDIR lists)."""
    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [
                    Source(str(path), info.filename)
                    for info in archive.infolist()
                    if not info.is_dir() and Path(info.filename).suffix.lower() not in NON_DICOM_SUFFIXES
                ]
        except (zipfile.BadZipFile, OSError) as exc:
            return [], ReadError(str(path), f"unreadable ZIP archive: {exc}")
        return members, None
    if _is_dicomdir(path):
        if not explicit:
            return [], None  # an index found by walking: the walk finds the files it lists
        members = []
        try:
            members.extend(_dicomdir_members(path))
        except Exception as exc:  # noqa: BLE001
            return members, ReadError(str(path), f"unreadable DICOMDIR: {exc}")
        return members, None
    if explicit or path.suffix.lower() not in NON_DICOM_SUFFIXES:
        return [Source(str(path))], None
    return [], None


class ResourceLimitExceeded(Exception):
    """Reading the input would exceed a configured resource limit (e.g. the inflated size of a
    Deflated data set). Not a malformed input: the receiver answers 0xA700 (retryable), never 0xC000."""


DEFAULT_MAX_INFLATED_SIZE = 1 << 30
"""Largest size a Deflated Explicit VR Little Endian data set may inflate to when reading it
(``Settings.max_inflated_size`` for the receiver; this default for ``analyze``)."""
DEFER_SIZE = 1 << 20
"""Top-level element values longer than this are not read into memory while parsing a header
(files larger than ``WHOLE_FILE_LIMIT`` and inflated data sets): pydicom skips them by their length.
Such a value is never a header attribute the facts need (a 256 MB private OB, overlay or icon
data), except a sequence with a defined length: those up to ``MAX_SEQUENCE_SIZE`` are read
afterwards, larger ones are left out of the header like every other skipped value."""
MAX_SEQUENCE_SIZE = 64 << 20
"""Largest top-level sequence of defined length read into a header (e.g. the per-frame functional
groups of a large enhanced multi-frame)."""
MAX_HEADER_SIZE = 256 << 20
"""Largest total size of the top-level values read into memory for one header; beyond it reading
stops with :class:`ResourceLimitExceeded` (a header of hundreds of values of just under
``DEFER_SIZE`` each)."""
HEAD_SIZE = 4096
"""Bytes of a file looked at for its transfer syntax before choosing how to read it."""
INFLATE_CHUNK = 1 << 20
"""Compressed bytes read, and inflated bytes produced, per step while inflating."""

_DEFLATED = str(DeflatedExplicitVRLittleEndian)
_DEFLATED_BYTES = _DEFLATED.encode("ascii")
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_UNDEFINED_LENGTH = 0xFFFFFFFF
_META_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_META_SHORT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FD",
        b"FL",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)


def _maybe_deflated(head: bytes) -> bool:
    """False when ``head`` (the first bytes of a file) certainly holds no Deflated transfer syntax.

    A few microseconds of ``struct`` over the file meta group instead of a second pydicom parse of
    it: every file that is not plainly something else goes through :func:`_read_meta`, which
    asks pydicom exactly what its reader would do.
    """
    pos = 132 if head[128:132] == b"DICM" else 0
    end = len(head)
    while True:
        if pos + 8 > end:
            return True  # the meta runs past what we looked at
        group, element, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 2:
            return False  # the meta group ended without a Deflated transfer syntax
        if vr in _META_LONG_VRS:
            if pos + 12 > end:
                return True
            (length,) = struct.unpack_from("<L", head, pos + 8)
            pos += 12
        elif vr in _META_SHORT_VRS:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        else:
            return True  # implicit VR or odd meta: let pydicom decide
        if length == _UNDEFINED_LENGTH or pos + length > end:
            return True
        if element == 0x0010 and _DEFLATED_BYTES in head[pos : pos + length]:
            return True
        pos += length


def _read_meta(fh: BinaryIO, force: bool) -> tuple[bytes | None, FileMetaDataset]:
    """Preamble and file meta exactly as ``dcmread`` reads them; ``fh`` left at the data set."""
    fh.seek(0)
    preamble = read_preamble(fh, force)
    return preamble, _read_file_meta_info(fh)


def _inflate(fh: BinaryIO, out: BinaryIO, limit: int) -> int:
    """Inflate the raw deflate stream from ``fh``'s position into ``out``, at most ``limit`` bytes.

    Streamed: at most ``INFLATE_CHUNK`` compressed and inflated bytes in memory at any time
    (``decompressobj`` with ``max_length``). A stream that inflates beyond ``limit`` raises
    :class:`ResourceLimitExceeded` as soon as the limit is passed; a corrupt one raises ``zlib.error``.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while not inflater.eof:
        data = fh.read(INFLATE_CHUNK)
        if not data:
            break
        while data and not inflater.eof:
            chunk = inflater.decompress(data, INFLATE_CHUNK)
            data = inflater.unconsumed_tail
            total += len(chunk)
            if total > limit:
                raise ResourceLimitExceeded(f"deflated data set inflates beyond {limit} bytes")
            out.write(chunk)
    chunk = inflater.flush()
    total += len(chunk)
    if total > limit:
        raise ResourceLimitExceeded(f"deflated data set inflates beyond {limit} bytes")
    out.write(chunk)
    return total


def _bounded_stop() -> Callable[[Any, Any, int], bool]:
    """pydicom's ``stop_before_pixels``, also counting the top-level bytes read into memory."""
    read = 0

    def stop(tag: Any, vr: Any, length: int) -> bool:
        nonlocal read
        if tag in _PIXEL_TAGS:
            return True
        if length <= DEFER_SIZE:  # longer ones are skipped (and undefined lengths are huge)
            read += length
            if read > MAX_HEADER_SIZE:
                raise ResourceLimitExceeded(f"header values exceed {MAX_HEADER_SIZE} bytes")
        return False

    return stop


def _is_sequence(elem: Any) -> bool:
    vr = elem.VR
    if vr == "SQ":
        return True
    if vr is None or vr == "UN":
        try:
            return dictionary_VR(elem.tag) == "SQ"
        except KeyError:
            return False
    return False


def _settle_deferred(ds: Dataset, fh: BinaryIO) -> None:
    """Read the skipped sequences that may be read (``MAX_SEQUENCE_SIZE``) from ``fh`` now, and
    drop every other skipped value: nothing in the header is left to be read later (from a file
    that may be gone, or hold the deflated bytes)."""
    elements = ds._dict
    budget = MAX_HEADER_SIZE
    for tag, elem in list(elements.items()):
        if type(elem) is not RawDataElement or elem.value is not None or elem.length == 0:
            continue
        if elem.length != _UNDEFINED_LENGTH and elem.length <= min(MAX_SEQUENCE_SIZE, budget) and _is_sequence(elem):
            fh.seek(elem.value_tell)
            value = fh.read(elem.length)
            if len(value) == elem.length:
                budget -= elem.length
                elements[tag] = elem._replace(value=value)
                continue
        del elements[tag]


def _read_careful(fh: BinaryIO, name: str, force: bool, limit: int) -> Dataset:
    """The header of a file that may be deflated: its meta read as pydicom does, then either the
    bounded parse, or the data set inflated (streamed, at most ``limit`` bytes, into a temporary
    file, never into memory) and parsed from there."""
    preamble, meta = _read_meta(fh, force)
    if meta.get("TransferSyntaxUID") != _DEFLATED:
        return _read_bounded(fh, force)
    with tempfile.TemporaryFile() as inflated:
        _inflate(fh, inflated, limit)
        inflated.seek(0)
        dataset = pydicom_read_dataset(inflated, False, True, stop_when=_bounded_stop(), defer_size=DEFER_SIZE)
        ds = FileDataset(name, dataset, preamble, meta, False, True)
        ds.set_original_encoding(False, True, dataset._character_set)
        _settle_deferred(ds, inflated)
    return ds


def _read_bounded(fh: BinaryIO, force: bool) -> Dataset:
    """``dcmread(stop_before_pixels=True)`` skipping long values (``DEFER_SIZE``), within ``MAX_HEADER_SIZE``."""
    fh.seek(0)
    ds = read_partial(fh, _bounded_stop(), defer_size=DEFER_SIZE, force=force)
    _settle_deferred(ds, fh)
    return ds


def _read(fp: str | io.BytesIO, force: bool, limit: int) -> Dataset:
    if isinstance(fp, io.BytesIO):  # small (WHOLE_FILE_LIMIT) or a ZIP member: already in memory
        fp.seek(0)
        head = fp.read(HEAD_SIZE)
        fp.seek(0)
        if not _maybe_deflated(head):
            return dcmread(fp, stop_before_pixels=True, force=force)
        return _read_careful(fp, getattr(fp, "name", None) or "<memory>", force, limit)
    with open(fp, "rb") as fh:
        if not _maybe_deflated(fh.read(HEAD_SIZE)):
            return _read_bounded(fh, force)
        return _read_careful(fh, fp, force, limit)


def read_dataset(fp: str | io.BytesIO, *, max_inflated_size: int = DEFAULT_MAX_INFLATED_SIZE) -> Dataset:
    """Read a header without pixel data; tolerate files without preamble or file meta.

    Bounded whatever the input: a Deflated data set is inflated streamed and refused with
    :class:`ResourceLimitExceeded` beyond ``max_inflated_size`` bytes; values longer than
    ``DEFER_SIZE`` are skipped, not read (see ``DEFER_SIZE``, ``MAX_HEADER_SIZE``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _read(fp, False, max_inflated_size)
        except InvalidDicomError:
            ds = _read(fp, True, max_inflated_size)
            if not any(k in ds for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
                raise InvalidDicomError("not a DICOM file (no preamble, no DICOM identifiers)") from None
            return ds


def read_facts(source: Source, *, max_inflated_size: int = DEFAULT_MAX_INFLATED_SIZE) -> InstanceFacts | ReadError:
    """Read one source into facts, or say why it cannot be analysed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's value warnings quote header values (PHI)
        return _read_facts(source, max_inflated_size)


def read_file_header(path: str, *, max_inflated_size: int = DEFAULT_MAX_INFLATED_SIZE) -> Dataset:
    """:func:`read_dataset` of a file, from memory when the file is small (``WHOLE_FILE_LIMIT``)."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        data = fh.read() if stat.S_ISREG(info.st_mode) and info.st_size <= WHOLE_FILE_LIMIT else None
    return read_dataset(path if data is None else io.BytesIO(data), max_inflated_size=max_inflated_size)


def _read_facts(source: Source, max_inflated_size: int) -> InstanceFacts | ReadError:
    try:
        if source.member is None:
            ds = read_file_header(source.path, max_inflated_size=max_inflated_size)
        else:
            with zipfile.ZipFile(source.path) as archive:
                ds = read_dataset(io.BytesIO(archive.read(source.member)), max_inflated_size=max_inflated_size)
    except InvalidDicomError as exc:
        return ReadError(source.name, str(exc) or "not a DICOM file")
    except OSError as exc:
        return ReadError(source.name, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a broken file is a finding, never a crash
        return ReadError(source.name, f"unparseable DICOM: {type(exc).__name__}: {exc}")
    if (
        getattr(ds, "file_meta", None) is not None
        and header_value(ds.file_meta, "MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY
    ):
        return ReadError(
            source.name, "a DICOMDIR index, not an instance (name it explicitly to read the files it lists)"
        )
    try:
        facts = extract_facts(ds, source.name)
    except Exception as exc:  # noqa: BLE001
        return ReadError(source.name, f"unparseable DICOM header: {type(exc).__name__}: {exc}")
    missing = [
        name
        for name, value in (
            ("Study Instance UID", facts.study_instance_uid),
            ("SOP Instance UID", facts.sop_instance_uid),
        )
        if not value
    ]
    if missing:
        return ReadError(source.name, f"DICOM header without {' and '.join(missing)}: cannot be placed in a study")
    return facts


def _read_batch(batch: list[Source]) -> list[InstanceFacts | ReadError]:
    return [read_facts(source) for source in batch]


def _by_fields(cls: type) -> Callable[[object], tuple] | None:
    """A pickle reducer rebuilding a frozen dataclass from its fields: ``cls(*values)``.

    The default for slotted dataclasses goes through ``dataclasses.fields()`` and a per-field
    ``setattr`` on both sides; this halves the cost of handing results to the main process.
    """
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        return None
    names = tuple(f.name for f in fields)

    def reduce(obj: object) -> tuple:
        return cls, tuple([getattr(obj, name) for name in names])

    return reduce


def _worker_setup() -> None:
    """Runs once in every pool worker (never in the caller's process)."""
    for cls in (InstanceFacts, Equipment, Code, ProcedureCode, PrivateCreator, ReadError):
        reducer = _by_fields(cls)
        if reducer is not None:
            ForkingPickler.register(cls, reducer)  # only the pool's pickling of results


def read_all(
    sources: list[Source], *, workers: int | None = None, progress=None
) -> Iterator[InstanceFacts | ReadError]:
    """Read every source, in a process pool for large inputs; results in input order.

    ``progress(n)`` is called after every ``n`` results. The pool gets small tasks, a few per
    worker ahead of the results being consumed, so the workers never wait for each other and
    the results held at any time stay bounded whatever the number of inputs.
    """
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(sources) < PARALLEL_THRESHOLD:
        for source in sources:
            yield read_facts(source)
            if progress:
                progress(1)
        return
    smallest, largest = CHUNK_LIMITS
    chunk = max(smallest, min(largest, len(sources) // (workers * 8)))
    pending: deque[Future[list[InstanceFacts | ReadError]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_setup) as pool:
        try:
            for start in range(0, len(sources), chunk):
                pending.append(pool.submit(_read_batch, sources[start : start + chunk]))
                if len(pending) >= workers * TASKS_PER_WORKER:
                    yield from _delivered(pending.popleft(), progress)
            while pending:
                yield from _delivered(pending.popleft(), progress)
        finally:  # the caller stopped early: do not read what nobody will use
            for task in pending:
                task.cancel()


def _delivered(task: Future[list[InstanceFacts | ReadError]], progress) -> Iterator[InstanceFacts | ReadError]:
    results = task.result()
    yield from results
    if progress:
        progress(len(results))

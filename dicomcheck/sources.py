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
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .extract import extract_facts, header_value
from .model import Code, Equipment, InstanceFacts, PrivateCreator, ProcedureCode

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NON_DICOM_SUFFIXES = frozenset(
    {".json", ".toml", ".md", ".txt", ".csv", ".xml", ".html", ".pdf", ".png", ".jpg", ".jpeg",
     ".gif", ".py", ".pyc", ".log", ".ini", ".yaml", ".yml", ".sh", ".exe", ".dll", ".inf"}
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

    def add(source: Source) -> None:
        sources.setdefault(source.name, source)

    def add_file(path: Path, explicit: bool) -> None:
        if _is_zip(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    for info in archive.infolist():
                        if not info.is_dir() and Path(info.filename).suffix.lower() not in NON_DICOM_SUFFIXES:
                            add(Source(str(path), info.filename))
            except (zipfile.BadZipFile, OSError) as exc:
                errors.append(ReadError(str(path), f"unreadable ZIP archive: {exc}"))
        elif _is_dicomdir(path):
            if explicit:
                try:
                    for source in _dicomdir_members(path):
                        add(source)
                except Exception as exc:  # noqa: BLE001
                    errors.append(ReadError(str(path), f"unreadable DICOMDIR: {exc}"))
        elif explicit or path.suffix.lower() not in NON_DICOM_SUFFIXES:
            add(Source(str(path)))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        add_file(Path(root) / name, explicit=False)
        elif path.is_file():
            add_file(path, explicit=True)
        else:
            errors.append(ReadError(str(path), "no such file or folder"))
    return list(sources.values()), errors


class ResourceLimitExceeded(Exception):
    """Reading the input would exceed a configured resource limit (e.g. the inflated size of a
    Deflated data set). Not a malformed input: the receiver answers 0xA700 (retryable), never 0xC000."""


def read_dataset(fp: str | io.BytesIO) -> Dataset:
    """Read a header without pixel data; tolerate files without preamble or file meta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            if isinstance(fp, io.BytesIO):
                fp.seek(0)
            ds = dcmread(fp, stop_before_pixels=True, force=True)
            if not any(k in ds for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
                raise InvalidDicomError("not a DICOM file (no preamble, no DICOM identifiers)") from None
            return ds


def read_facts(source: Source) -> InstanceFacts | ReadError:
    """Read one source into facts, or say why it cannot be analysed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's value warnings quote header values (PHI)
        return _read_facts(source)


def read_file_header(path: str) -> Dataset:
    """:func:`read_dataset` of a file, from memory when the file is small (``WHOLE_FILE_LIMIT``)."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        data = fh.read() if stat.S_ISREG(info.st_mode) and info.st_size <= WHOLE_FILE_LIMIT else None
    return read_dataset(path if data is None else io.BytesIO(data))


def _read_facts(source: Source) -> InstanceFacts | ReadError:
    try:
        if source.member is None:
            ds = read_file_header(source.path)
        else:
            with zipfile.ZipFile(source.path) as archive:
                ds = read_dataset(io.BytesIO(archive.read(source.member)))
    except InvalidDicomError as exc:
        return ReadError(source.name, str(exc) or "not a DICOM file")
    except OSError as exc:
        return ReadError(source.name, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a broken file is a finding, never a crash
        return ReadError(source.name, f"unparseable DICOM: {type(exc).__name__}: {exc}")
    if getattr(ds, "file_meta", None) is not None and header_value(ds.file_meta, "MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        return ReadError(source.name, "a DICOMDIR index, not an instance (name it explicitly to read the files it lists)")
    try:
        facts = extract_facts(ds, source.name)
    except Exception as exc:  # noqa: BLE001
        return ReadError(source.name, f"unparseable DICOM header: {type(exc).__name__}: {exc}")
    missing = [name for name, value in (("Study Instance UID", facts.study_instance_uid), ("SOP Instance UID", facts.sop_instance_uid)) if not value]
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


def read_all(sources: list[Source], *, workers: int | None = None, progress=None) -> Iterator[InstanceFacts | ReadError]:
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
                pending.append(pool.submit(_read_batch, sources[start:start + chunk]))
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

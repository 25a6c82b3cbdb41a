"""A header's values read through pydicom: the reference every faster reader is checked against.

Tolerant (highdicom's principle): a value that is absent, empty or cannot be decoded (bad VR, odd
character set, broken item) reads as ``None`` / empty rather than failing the instance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from .model import PrivateCreator

log = logging.getLogger(__name__)


def get_value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value that cannot be decoded is treated as absent
        log.debug("undecodable %s", keyword)
        return None


def _as_text(value: Any) -> str | None:
    """A value as one stripped string (multiple values joined by backslashes), or ``None``."""
    if value is None:
        return None
    try:
        if type(value) is str:
            text = value.strip()
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v).strip() for v in value)
        else:
            text = str(value).strip()
    except Exception:  # noqa: BLE001
        return None
    text = text.replace("\x00", "").strip()
    return text or None


def _as_values(value: Any) -> tuple[str, ...]:
    """A value as a tuple of stripped, upper-case strings (e.g. Image Type)."""
    if value is None:
        return ()
    try:
        if isinstance(value, str):
            items: Iterable[Any] = value.split("\\")
        elif isinstance(value, (bytes, bytearray)):
            items = value.decode("ascii", "replace").split("\\")
        else:
            items = list(value)
        return tuple(str(v).strip().upper() for v in items)
    except Exception:  # noqa: BLE001
        return ()


def sequence_items(seq: Any, limit: int | None = None) -> Iterator[Dataset]:
    if not seq:
        return
    try:
        for index, item in enumerate(seq):
            if limit is not None and index >= limit:
                return
            if isinstance(item, Dataset):
                yield item
    except Exception:  # noqa: BLE001
        return


def dataset_items(ds: Dataset | None, keyword: str, limit: int | None = None) -> Iterator[Dataset]:
    if ds is None:
        return
    yield from sequence_items(get_value(ds, keyword), limit)


def creator_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).replace("\x00", "").strip()


def creator_name(ds: Dataset, tag: BaseTag) -> str | None:
    try:
        return creator_text(ds[tag].value)
    except Exception:  # noqa: BLE001
        return None


def _is_creator_tag(group: int, element: int) -> bool:
    return group % 2 == 1 and 0x10 <= element <= 0xFF and group > 0x0008


def _private_creators(ds: Dataset) -> tuple[PrivateCreator, ...]:
    creators: list[PrivateCreator] = []
    try:
        tags = [BaseTag(t) for t in ds.keys()]  # noqa: SIM118 - iterating a Dataset gives elements, not tags
    except Exception:  # noqa: BLE001
        return ()
    for tag in tags:
        if _is_creator_tag(tag.group, tag.element):
            name = creator_name(ds, tag)
            if name:
                creators.append(PrivateCreator(tag.group, tag.element, name))
    return tuple(creators)


class PydicomReader:
    """Reads values, sequence items and private creators through pydicom (the reference)."""

    def value(self, ds: Any, keyword: str) -> Any:
        return get_value(ds, keyword)

    def text(self, ds: Any, keyword: str) -> str | None:
        return _as_text(self.value(ds, keyword))

    def values(self, ds: Any, keyword: str) -> tuple[str, ...]:
        return _as_values(self.value(ds, keyword))

    def items(self, ds: Any, keyword: str, limit: int | None = None) -> Iterable[Any]:
        return dataset_items(ds, keyword, limit)

    def private_creators(self, ds: Dataset) -> tuple[PrivateCreator, ...]:
        return _private_creators(ds)

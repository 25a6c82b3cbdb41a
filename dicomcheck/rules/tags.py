"""Keyword -> "(gggg,eeee)" for evidence (pydicom's data dictionary)."""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import tag_for_keyword

_EXTRA = {"PrivateCreator": None, "RegistryEntry": None, "Modality": "(0008,0060)"}


@lru_cache(maxsize=256)
def tag_of(keyword: str) -> str | None:
    if keyword in _EXTRA:
        return _EXTRA[keyword]
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"

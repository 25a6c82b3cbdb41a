"""Packs kept beside the decision history: one per decision version (and variant), never rewritten."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .collect import from_index
from .keys import KeyError_, SiteKey, create_key, load_key
from .pack import PackWriter, pack_dir_name

log = logging.getLogger(__name__)
_lock = threading.Lock()


def site_key(key_dir: Path) -> SiteKey:
    """The site key; created (and its fingerprint logged) the first time a pack is needed."""
    try:
        return load_key(key_dir)
    except KeyError_:
        if (key_dir / "site-ed25519.pem").exists():
            raise
        key = create_key(key_dir)
        log.warning("created the site key %s (fingerprint %s): publish the fingerprint outside the packs",
                    key_dir / "site-ed25519.pem", key.fingerprint)
        return key


def evidence_root(data_dir: Path) -> Path:
    return data_dir / "evidence"


def ensure_pack(receiver, study_uid: str, *, minimal: bool = False, decision_id: int | None = None) -> Path:
    """The pack of the study's current decision (or ``decision_id``), written on first request."""
    settings = receiver.settings
    with _lock:
        source = from_index(receiver.engine, settings.storage_dir, study_uid, decision_id=decision_id,
                            registry=receiver.effective_registry())
        folder = evidence_root(settings.data) / study_uid / pack_dir_name(source, minimal=minimal)
        if (folder / "manifest.json").is_file():
            return folder  # immutable: a decision's pack is written once
        PackWriter(site_key(settings.data / "keys")).write(source, folder, minimal=minimal)
        log.info("evidence pack written for study %s decision %s%s", study_uid, source.decision_id, " (minimal)" if minimal else "")
        return folder

"""Write and verify self-contained evidence packs.

A pack is a folder (or the same folder zipped)::

    manifest.json      what is in the pack: SHA-256 of every file and of every cited stored instance
    manifest.sig       Ed25519 signature of manifest.json by the site key
    public_key.pem     the site public key (its fingerprint is published by `dicomcheck keys show`)
    evidence.json      the study decision with every cited header value, the facts of every instance
                       it was made from, the receipt provenance of the cited instances, the registry
    report.pdf         the readable report with thumbnails
    kos.dcm, sr.dcm    DICOM Key Object Selection and Comprehensive SR in the study
    thumbnails/*.png

``verify_pack`` detects any changed byte of the pack or of a cited stored instance, and re-derives
the outcome from the recorded headers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..analysis import decide_study, group_by_study
from ..model import facts_from_dict, facts_to_dict
from ..registry import registry_from_dict
from ..report import study_dict
from ..rules import RULES_VERSION
from .keys import SiteKey, fingerprint, load_public_pem, verify_signature
from .model import EvidenceSource

FORMAT = "dicomcheck-evidence-pack/1"
CANNOT_SHOW = (
    "Concurrent physician supervision of the 3D post-processing (CPT descriptor; billing-rules R11): headers do not record who chose the anatomy, views and images.",
    "Medical necessity and the order for 3D rendering (R12): these live in the order and the clinical record.",
    "The written report: a separate 3D interpretation and its statement of where the 3D was made (R10, R12). The images corroborate or contradict it; they do not replace it.",
    "Units: one code per study is stated here; whether non-contiguous regions justify more is a coding decision (R15).",
)
SIGNED = ("manifest.json", "manifest.sig")


class PackError(ValueError):
    """The pack cannot be written or read (not a pack, unsigned, unreadable)."""


def pseudonym(value: str | None, key: SiteKey) -> str | None:
    """A keyed hash for identifiers in PHI-minimal packs: stable at one site, not reversible elsewhere."""
    if not value:
        return None
    secret = hashlib.sha256(b"dicomcheck-pseudonym" + key.private.private_bytes_raw()).digest()
    return "hmac-sha256:" + hmac.new(secret, value.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False, default=str) + "\n").encode("utf-8")


def minimal_source(source: EvidenceSource, key: SiteKey) -> EvidenceSource:
    """The PHI-minimal variant: patient IDs replaced by keyed hashes (UIDs, dates and equipment kept)."""
    document = dict(source.document)
    document["patient_id"] = pseudonym(document.get("patient_id"), key)
    facts = tuple(replace(f, patient_id=pseudonym(f.patient_id, key)) for f in source.facts)
    return replace(source, document=document, facts=facts)


@dataclass
class PackWriter:
    """Assembles a pack; the producers are injected so each part can be tested on its own."""

    key: SiteKey
    kos: Callable[..., object] | None = None
    sr: Callable[..., object] | None = None
    thumbnail: Callable[..., object] | None = None
    pdf: Callable[..., bytes] | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kos is None or self.sr is None:
            from .dicom import build_kos, build_sr

            self.kos, self.sr = self.kos or build_kos, self.sr or build_sr
        if self.thumbnail is None:
            from .thumbnails import thumbnail

            self.thumbnail = thumbnail
        if self.pdf is None:
            from .report_pdf import render_pdf

            self.pdf = render_pdf

    def build(self, source: EvidenceSource, *, minimal: bool = False) -> dict[str, bytes]:
        """Every file of the pack, by relative path (manifest and signature included)."""
        if minimal:
            source = minimal_source(source, self.key)
        files: dict[str, bytes] = {}
        thumbs = {}
        thumb_index = {}
        for cited in source.instances:
            if cited.role not in ("3d", "acquisition"):
                continue
            thumb = self.thumbnail(cited.path, allow_burned_in=not minimal)
            thumbs[cited.sop_instance_uid] = thumb
            entry = {"role": cited.role, "note": getattr(thumb, "note", None), "window": getattr(thumb, "window", None), "file": None}
            if getattr(thumb, "png", None):
                name = f"thumbnails/{cited.role}-{cited.sop_instance_uid}.png"
                files[name] = thumb.png
                entry["file"] = name
            thumb_index[cited.sop_instance_uid] = entry
        files["report.pdf"] = self.pdf(source, thumbs, minimal=minimal)
        for name, build in (("kos.dcm", self.kos), ("sr.dcm", self.sr)):
            dataset = build(source, minimal=minimal)
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            files[name] = buffer.getvalue()
        files["evidence.json"] = _json({
            "format": "dicomcheck-evidence/1",
            "minimal": minimal,
            "generated_at": source.generated_at.isoformat(),
            "dicomcheck_version": __version__,
            "decision": {
                "id": source.decision_id,
                "decided_at": source.decided_at.isoformat() if source.decided_at else None,
                "rules_version": source.rules_version,
                "dicomcheck_version": source.dicomcheck_version,
            },
            "study": source.document,
            "cited_instances": [
                {"sop_instance_uid": c.sop_instance_uid, "sop_class_uid": c.sop_class_uid,
                 "series_instance_uid": c.series_instance_uid, "role": c.role, "sha256": c.sha256,
                 "receipts": [r.as_dict() for r in c.receipts] or "analysed from files: no network receipt"}
                for c in source.instances
            ],
            "thumbnails": thumb_index,
            "cannot_show": list(CANNOT_SHOW),
            "registry": source.registry,
            "facts": [facts_to_dict(f) for f in source.facts],
        })
        files["public_key.pem"] = self.key.public_pem()
        manifest = {
            "format": FORMAT,
            "study_instance_uid": source.study_instance_uid,
            "decision_id": source.decision_id,
            "outcome": source.document.get("outcome"),
            "code": source.document.get("code"),
            "rules_version": source.rules_version,
            "dicomcheck_version": __version__,
            "generated_at": source.generated_at.isoformat(),
            "minimal": minimal,
            "public_key_fingerprint": self.key.fingerprint,
            "files": [{"path": name, "sha256": _sha256(data), "size": len(data)} for name, data in sorted(files.items())],
            "cited_instances": [
                {"sop_instance_uid": c.sop_instance_uid, "sha256": c.sha256, "location": str(c.path),
                 "storage_path": source.storage_paths.get(c.sop_instance_uid)}
                for c in source.instances
            ],
        }
        files["manifest.json"] = _json(manifest)
        files["manifest.sig"] = (self.key.sign(files["manifest.json"]).hex() + "\n").encode()
        return files

    def write(self, source: EvidenceSource, out_dir: Path, *, minimal: bool = False) -> Path:
        """Write the pack into ``out_dir`` (must not exist or be empty); files end read-only."""
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise PackError(f"{out_dir} exists and is not empty: packs are never overwritten")
        files = self.build(source, minimal=minimal)
        staging = out_dir.with_name(out_dir.name + ".part")
        if staging.exists():
            shutil.rmtree(staging)
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
        return out_dir


def zip_pack(pack_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in pack_dir.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(pack_dir).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


# ---------------------------------------------------------------- verification


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    """Integrity failures, each naming the file: any one fails verification."""
    differences: list[str] = field(default_factory=list)
    """Re-derivation differences (under the same rules version they fail verification too)."""
    notes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        same_rules = self.manifest.get("rules_version") == RULES_VERSION
        return not self.problems and not (same_rules and self.differences)


def _read_pack(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    try:
        with zipfile.ZipFile(path) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackError(f"{path}: neither a pack folder nor a pack ZIP ({exc})") from None


def verify_pack(path: Path, *, storage_root: Path | None = None, expected_fingerprint: str | None = None) -> Verification:
    """Check the signature, every file and every cited stored instance; re-derive the outcome."""
    result = Verification()
    files = _read_pack(Path(path))
    for required in ("manifest.json", "manifest.sig", "public_key.pem"):
        if required not in files:
            result.problems.append(f"{required}: missing from the pack")
    if result.problems:
        return result
    try:
        key = load_public_pem(files["public_key.pem"])
        manifest = json.loads(files["manifest.json"])
        signature = bytes.fromhex(files["manifest.sig"].decode().strip())
    except (ValueError, UnicodeDecodeError) as exc:
        result.problems.append(f"manifest.json / manifest.sig / public_key.pem: unreadable ({exc})")
        return result
    result.manifest = manifest
    if not verify_signature(key, signature, files["manifest.json"]):
        result.problems.append("manifest.json: the signature does not match (manifest or signature changed)")
    if manifest.get("public_key_fingerprint") != fingerprint(key):
        result.problems.append("public_key.pem: not the key the manifest names")
    if expected_fingerprint and fingerprint(key) != expected_fingerprint:
        result.problems.append(f"public_key.pem: fingerprint {fingerprint(key)} is not the published {expected_fingerprint}")
    listed = {entry["path"]: entry for entry in manifest.get("files", [])}
    for name, entry in listed.items():
        data = files.get(name)
        if data is None:
            result.problems.append(f"{name}: missing from the pack")
        elif _sha256(data) != entry["sha256"]:
            result.problems.append(f"{name}: changed (SHA-256 differs from the manifest)")
    for name in sorted(set(files) - set(listed) - set(SIGNED)):
        result.problems.append(f"{name}: not in the manifest")
    for cited in manifest.get("cited_instances", []):
        location = Path(cited["location"])
        if storage_root is not None and cited.get("storage_path"):
            location = storage_root / cited["storage_path"]
        if not location.is_file():
            result.problems.append(f"{location}: cited instance {cited['sop_instance_uid']} is missing")
        elif _file_sha256(location) != cited["sha256"]:
            result.problems.append(f"{location}: cited instance {cited['sop_instance_uid']} changed (SHA-256 differs)")
    if "evidence.json" in files:
        _rederive(json.loads(files["evidence.json"]), manifest, result)
    return result


def _rederive(evidence: dict, manifest: dict, result: Verification) -> None:
    facts = [facts_from_dict(f) for f in evidence.get("facts", [])]
    if not facts:
        result.notes.append("evidence.json records no header facts: the outcome was not re-derived")
        return
    if manifest.get("rules_version") != RULES_VERSION:
        result.notes.append(f"pack made under rules {manifest.get('rules_version')}; re-derived under this version's rules {RULES_VERSION}")
    registry = registry_from_dict(evidence.get("registry") or {})
    studies = group_by_study(facts)
    recorded = evidence.get("study", {})
    series_map = studies.get(recorded.get("study_instance_uid") or manifest.get("study_instance_uid"))
    if series_map is None:
        result.differences.append("evidence.json: the recorded facts belong to another study")
        return
    again = study_dict(decide_study(manifest["study_instance_uid"], series_map, registry=registry))
    if (again["outcome"], again["code"]) != (recorded.get("outcome"), recorded.get("code")):
        result.differences.append(f"outcome: recorded {recorded.get('outcome')} ({recorded.get('code')}), re-derived {again['outcome']} ({again['code']})")
    mine = {s["series_instance_uid"]: (s["kind"], s["origin"]) for s in again["series"]}
    theirs = {s["series_instance_uid"]: (s["kind"], s["origin"]) for s in recorded.get("series", [])}
    for uid in sorted(set(mine) | set(theirs)):
        if mine.get(uid) != theirs.get(uid):
            result.differences.append(f"series {uid}: recorded {theirs.get(uid)}, re-derived {mine.get(uid)}")


def pack_dir_name(source: EvidenceSource, *, minimal: bool) -> str:
    stamp = source.decision_id if source.decision_id is not None else source.generated_at.strftime("%Y%m%dT%H%M%SZ")
    return f"decision-{stamp}" + ("-minimal" if minimal else "")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

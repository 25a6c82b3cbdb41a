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
the outcome from the recorded headers. The key inside a pack proves nothing by itself (anyone can
re-sign a changed pack with their own key): verification needs a trust anchor, the fingerprint of the
site key known beforehand, and fails without one. A pack ZIP with an entry name twice, an absolute or
a ``..`` entry is refused. In pack-only mode (``check_instances=False``) the cited stored instances
are not checked, and the result says so.
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
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..analysis import decide_study, group_by_study
from ..decision_record import StudyDecisionRecord
from ..enums import CitedRole
from ..model import facts_from_dict, facts_to_dict
from ..registry import registry_from_dict, registry_to_dict
from ..rules import RULES_VERSION
from .keys import SiteKey, fingerprint, load_public_pem, verify_signature
from .model import EvidenceSource, Receipt

if TYPE_CHECKING:  # types only: the producers are imported when a writer is made (highdicom, reportlab are heavy)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from pydicom.dataset import Dataset

    from .thumbnails import Thumbnail

FORMAT = "dicomcheck-evidence-pack/1"
PACK_VERSION = 2
"""The manifest's ``pack_version``: 2 since the decision is a typed record; packs written before
carry none and are version 1 (the same files). ``verify_pack`` reads every version up to this one."""
CANNOT_SHOW = (
    "Concurrent physician supervision of the 3D post-processing (CPT descriptor; billing-rules R11): "
    "headers do not record who chose the anatomy, views and images.",
    "Medical necessity and the order for 3D rendering (R12): these live in the order and the clinical record.",
    "The written report: a separate 3D interpretation and its statement of where the 3D was made (R10, R12). "
    "The images corroborate or contradict it; they do not replace it.",
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
    decision = source.decision.model_copy(update={"patient_id": pseudonym(source.decision.patient_id, key)})
    facts = tuple(replace(f, patient_id=pseudonym(f.patient_id, key)) for f in source.facts)
    return replace(source, decision=decision, facts=facts)


def _receipt_json(receipt: Receipt) -> dict[str, Any]:
    """One receipt of a cited instance as ``evidence.json`` records it (fields in order, time as ISO 8601)."""
    return {**asdict(receipt), "received_at": receipt.received_at.isoformat()}


@dataclass
class PackWriter:
    """Assembles a pack; the producers are injected so each part can be tested on its own."""

    key: SiteKey
    kos: Callable[..., Dataset] | None = None
    sr: Callable[..., Dataset] | None = None
    thumbnail: Callable[..., Thumbnail] | None = None
    pdf: Callable[..., bytes] | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kos, self.sr, self.thumbnail, self.pdf = self._producers()

    def _producers(
        self,
    ) -> tuple[Callable[..., Dataset], Callable[..., Dataset], Callable[..., Thumbnail], Callable[..., bytes]]:
        """The injected producers, the default one in place of any left None."""
        kos, sr, thumbnail, pdf = self.kos, self.sr, self.thumbnail, self.pdf
        if kos is None or sr is None:
            from .dicom import build_kos, build_sr

            kos, sr = kos or build_kos, sr or build_sr
        if thumbnail is None:
            from .thumbnails import thumbnail as default_thumbnail

            thumbnail = default_thumbnail
        if pdf is None:
            from .report_pdf import render_pdf

            pdf = render_pdf
        return kos, sr, thumbnail, pdf

    def build(
        self,
        source: EvidenceSource,
        *,
        minimal: bool = False,
        review: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        session: dict[str, Any] | None = None,
    ) -> dict[str, bytes]:
        """Every file of the pack, by relative path (manifest and signature included); ``review``: the
        coder's review of the decision, recorded in ``evidence.json`` and shown in the report; ``report``:
        the radiology report held against the decision (``collect.pack_report``), its sentences and hash
        recorded and shown (a PHI-minimal pack keeps the verdict, flags and hash, not the sentences);
        ``session``: the study's session (issue 13, ``collect.pack_session``), recorded and shown (a PHI-minimal
        pack keeps the verdict and this study's part, not the other studies)."""
        if minimal:
            session = minimal_session(session, source.study_instance_uid)
            source = minimal_source(source, self.key)
            report = minimal_report(report)
        kos, sr, make_thumbnail, pdf = self._producers()
        files: dict[str, bytes] = {}
        thumbs: dict[str, Thumbnail] = {}
        thumb_index: dict[str, dict[str, object]] = {}
        for cited in source.instances:
            if cited.role not in (CitedRole.THREE_D, CitedRole.ACQUISITION):
                continue
            thumb = make_thumbnail(cited.path, allow_burned_in=not minimal)
            thumbs[cited.sop_instance_uid] = thumb
            entry = {
                "role": cited.role,
                "note": getattr(thumb, "note", None),
                "window": getattr(thumb, "window", None),
                "file": None,
            }
            png = getattr(thumb, "png", None)
            if png:
                name = f"thumbnails/{cited.role}-{cited.sop_instance_uid}.png"
                files[name] = png
                entry["file"] = name
            thumb_index[cited.sop_instance_uid] = entry
        extra: dict[str, Any] = {"review": review} if review else {}
        if report:
            extra["report"] = report
        if session:
            extra["session"] = session
        files["report.pdf"] = pdf(source, thumbs, minimal=minimal, **extra)
        for name, build in (("kos.dcm", kos), ("sr.dcm", sr)):
            dataset = build(source, minimal=minimal)
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            files[name] = buffer.getvalue()
        files["evidence.json"] = _json(
            {
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
                "study": source.decision.model_dump(mode="json"),
                "cited_instances": [
                    {
                        "sop_instance_uid": c.sop_instance_uid,
                        "sop_class_uid": c.sop_class_uid,
                        "series_instance_uid": c.series_instance_uid,
                        "role": c.role,
                        "sha256": c.sha256,
                        "receipts": [_receipt_json(r) for r in c.receipts] or "analysed from files: no network receipt",
                    }
                    for c in source.instances
                ],
                "thumbnails": thumb_index,
                "cannot_show": list(CANNOT_SHOW),
                "registry": registry_to_dict(source.registry),
                "facts": [facts_to_dict(f) for f in source.facts],
                **({"review": review} if review else {}),
                **({"report": report} if report else {}),
                **({"session": session} if session else {}),
            }
        )
        files["public_key.pem"] = self.key.public_pem()
        manifest = {
            "format": FORMAT,
            "pack_version": PACK_VERSION,
            "study_instance_uid": source.study_instance_uid,
            "decision_id": source.decision_id,
            "outcome": source.decision.outcome.value,
            "code": source.decision.code,
            "rules_version": source.rules_version,
            "dicomcheck_version": __version__,
            "generated_at": source.generated_at.isoformat(),
            "minimal": minimal,
            **({"review_id": review.get("id")} if review else {}),
            **({"report_sha256": report.get("text_sha256")} if report and report.get("text_sha256") else {}),
            "public_key_fingerprint": self.key.fingerprint,
            "files": [
                {"path": name, "sha256": _sha256(data), "size": len(data)} for name, data in sorted(files.items())
            ],
            "cited_instances": [
                {
                    "sop_instance_uid": c.sop_instance_uid,
                    "sha256": c.sha256,
                    "location": str(c.path),
                    "storage_path": source.storage_paths.get(c.sop_instance_uid),
                }
                for c in source.instances
            ],
        }
        files["manifest.json"] = _json(manifest)
        files["manifest.sig"] = (self.key.sign(files["manifest.json"]).hex() + "\n").encode()
        return files

    def write(
        self,
        source: EvidenceSource,
        out_dir: Path,
        *,
        minimal: bool = False,
        review: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        session: dict[str, Any] | None = None,
    ) -> Path:
        """Write the pack into ``out_dir`` (must not exist or be empty); files end read-only."""
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise PackError(f"{out_dir} exists and is not empty: packs are never overwritten")
        files = self.build(source, minimal=minimal, review=review, report=report, session=session)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".part-", dir=out_dir.parent))
        try:
            for name, data in files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            staging.chmod(0o755)
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above); fails if a pack appeared meanwhile
            os.replace(staging, out_dir)
        except OSError as exc:
            raise PackError(
                f"{out_dir}: the pack could not be written ({type(exc).__name__}: {exc.strerror or exc})"
            ) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
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
    signer: str | None = None
    """Fingerprint of the key that signed the manifest (whoever that was)."""
    trusted: bool = False
    """The signer is one of the trust anchors given; without an anchor a pack never verifies."""
    instances_checked: bool = True
    """False in pack-only mode: the cited stored instances were not compared with the manifest."""
    header_only: list[str] = field(default_factory=list)
    """SOP Instance UIDs of cited instances now header-only (pixel retention), each matching the
    header-only SHA-256 a retention record signed by a trusted key lists for its original."""

    @property
    def ok(self) -> bool:
        same_rules = self.manifest.get("rules_version") == RULES_VERSION
        return self.trusted and not self.problems and not (same_rules and self.differences)


MAX_PACK_BYTES = 1 << 30
"""A pack ZIP may declare at most this many uncompressed bytes (a pack is a few MB; this stops bombs)."""


def _entry_problem(name: str) -> str | None:
    """Why a ZIP entry name cannot be part of a pack, or None."""
    if "\\" in name or "\0" in name:
        return "has a backslash or NUL: an absolute path or a path of another system"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "has a '..' component"
    if any(part in ("", ".") for part in name.rstrip("/").split("/")):
        return "is not a plain relative path"
    return None


def _read_pack(path: Path) -> dict[str, bytes]:
    """Every file of a pack folder or ZIP, by relative path. A ZIP with an entry name twice, an
    absolute or ``..`` entry or one that is too large is refused outright: which of two same-named
    entries a reader sees depends on the reader, so such a ZIP can show a payer another pack."""
    if path.is_dir():
        try:
            links = [p for p in path.rglob("*") if p.is_symlink()]
            if links:
                raise PackError(f"{links[0]}: a symbolic link (a pack holds only its own files); not a pack")
            return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
        except OSError as exc:
            raise PackError(
                f"{path}: the pack folder cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
            ) from None
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            seen: set[str] = set()
            for info in infos:
                problem = _entry_problem(info.filename)
                if problem:
                    raise PackError(f"{path}: entry {info.filename!r} {problem}; not a pack")
                if info.filename in seen:
                    raise PackError(
                        f"{path}: entry {info.filename!r} appears twice "
                        "(a second file of one name could show another pack); not a pack"
                    )
                seen.add(info.filename)
            if sum(info.file_size for info in infos) > MAX_PACK_BYTES:
                raise PackError(f"{path}: declares more than {MAX_PACK_BYTES} bytes uncompressed; not a pack")
            return {info.filename: archive.read(info) for info in infos if not info.is_dir()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
        raise PackError(f"{path}: neither a pack folder nor a pack ZIP ({type(exc).__name__}: {exc})") from None


def _stored_location(cited: dict, storage_root: Path | None) -> Path | None:
    """Where to find a cited instance: under ``storage_root`` by its storage path, else where it was."""
    relative = cited.get("storage_path")
    if storage_root is not None and isinstance(relative, str) and relative:
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts:
            return None
        return storage_root / relative
    location = cited.get("location")
    return Path(location) if isinstance(location, str) and location else None


def verify_pack(
    path: Path,
    *,
    storage_root: Path | None = None,
    expected_fingerprint: str | None = None,
    trusted: Iterable[str] = (),
    check_instances: bool = True,
    retention_root: Path | None = None,
) -> Verification:
    """Check the signature and its signer against the trust anchors (``trusted`` fingerprints and
    ``expected_fingerprint``), every file, and (unless ``check_instances`` is False: pack-only
    mode) every cited stored instance; re-derive the outcome from the recorded headers.

    A cited instance whose pixel data retention removed passes as header-only (``header_only``) when
    its SHA-256 is the one a retention record signed by a trusted key lists for it
    (``evidence.retention``); the records are read from ``retention_root``, by default the
    ``retention`` folder beside the storage folder.

    Without any trust anchor the result is never ok: a pack re-signed by anyone with their own key is
    internally consistent, so only a key known beforehand makes the signature mean something."""
    result = Verification(instances_checked=check_instances)
    anchors = {*trusted, *([expected_fingerprint] if expected_fingerprint else [])}
    files = _read_pack(Path(path))
    signed = _read_signed(files, result)
    if signed is None:
        return result
    key, manifest, signature = signed
    result.manifest = manifest
    result.signer = fingerprint(key)
    if problem := _version_problem(manifest.get("pack_version", 1)):
        result.problems.append(problem)
        return result
    _check_signature(files["manifest.json"], key, signature, anchors, result)
    contents = _manifest_contents(manifest)
    if contents is None:
        result.problems.append("manifest.json: not a pack manifest (files / cited_instances malformed)")
        return result
    listed, cited_list = contents
    _check_files(files, listed, result)
    if check_instances:
        folder = _retention_folder(cited_list, storage_root, retention_root)
        _check_instances(cited_list, storage_root, result, folder, str(manifest.get("study_instance_uid")), anchors)
    else:
        result.notes.append(
            f"pack-only: the {len(cited_list)} cited stored instances were NOT checked "
            "(only the pack's own files, its signature and the re-derivation from its recorded headers)"
        )
    if "evidence.json" in files:
        _rederive_recorded(files["evidence.json"], manifest, result)
    return result


_UNREADABLE = (ValueError, TypeError, UnicodeDecodeError)


def _read_signed(
    files: dict[str, bytes], result: Verification
) -> tuple[Ed25519PublicKey, dict[str, Any], bytes] | None:
    """The public key, the manifest (a JSON object) and the signature of a pack, or None with the
    problems recorded in ``result`` (a part missing, unreadable, or a manifest that is no object)."""
    for required in ("manifest.json", "manifest.sig", "public_key.pem"):
        if required not in files:
            result.problems.append(f"{required}: missing from the pack")
    if result.problems:
        return None

    def unreadable(name: str, exc: Exception) -> None:
        result.problems.append(f"{name}: unreadable ({type(exc).__name__}: {str(exc)[:200]})")

    key: Ed25519PublicKey | None = None
    manifest: object = None
    signature: bytes | None = None
    try:
        key = load_public_pem(files["public_key.pem"])
    except _UNREADABLE as exc:
        unreadable("public_key.pem", exc)
    try:
        manifest = json.loads(files["manifest.json"])
    except _UNREADABLE as exc:
        unreadable("manifest.json", exc)
    try:
        signature = bytes.fromhex(files["manifest.sig"].decode().strip())
    except _UNREADABLE as exc:
        unreadable("manifest.sig", exc)
    if result.problems or key is None or signature is None:
        return None
    if not isinstance(manifest, dict):
        result.problems.append("manifest.json: not a JSON object")
        return None
    return key, manifest, signature


def _check_signature(
    manifest_bytes: bytes, key: Ed25519PublicKey, signature: bytes, anchors: set[str], result: Verification
) -> None:
    """The signature over the manifest, the key the manifest names, and the signer against the trust anchors."""
    if not verify_signature(key, signature, manifest_bytes):
        result.problems.append("manifest.json: the signature does not match (manifest or signature changed)")
    if result.manifest.get("public_key_fingerprint") != result.signer:
        result.problems.append("public_key.pem: not the key the manifest names")
    if not anchors:
        result.problems.append(
            f"signer unknown: the pack is signed by {result.signer} and no trust anchor was given "
            "(the site's published fingerprint, its key or a file of trusted fingerprints); "
            "compare this fingerprint with the one the site publishes"
        )
    elif result.signer in anchors:
        result.trusted = True
    else:
        result.problems.append(
            f"public_key.pem: signed by {result.signer}, which is not a trusted key "
            f"(trusted: {', '.join(sorted(anchors))}); the pack may have been re-signed"
        )


def _manifest_contents(manifest: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The manifest's files (path -> entry) and cited instances, or None when they are malformed."""
    try:
        listed = {entry["path"]: entry for entry in manifest.get("files", [])}
        cited_list = list(manifest.get("cited_instances", []))
        if not all(isinstance(c, dict) and isinstance(c.get("sop_instance_uid"), str) for c in cited_list):
            raise TypeError("cited_instances")
    except (TypeError, KeyError, AttributeError):
        return None
    return listed, cited_list


def _check_files(files: dict[str, bytes], listed: dict[str, Any], result: Verification) -> None:
    """Every file the manifest lists is in the pack with its SHA-256, and the pack holds no other."""
    for name, entry in listed.items():
        data = files.get(name)
        if data is None:
            result.problems.append(f"{name}: missing from the pack")
        elif not isinstance(entry, dict) or _sha256(data) != entry.get("sha256"):
            result.problems.append(f"{name}: changed (SHA-256 differs from the manifest)")
    for name in sorted(set(files) - set(listed) - set(SIGNED)):
        result.problems.append(f"{name}: not in the manifest")


def _retention_folder(cited_list: list[dict[str, Any]], storage_root: Path | None, given: Path | None) -> Path | None:
    """Where the retention records are: ``given``, else beside the storage folder (``DATA/retention``)."""
    if given is not None:
        return given
    if storage_root is not None:
        return storage_root.parent / "retention"
    for cited in cited_list:  # the storage folder the pack recorded: its location minus its storage path
        location, relative = cited.get("location"), cited.get("storage_path")
        if isinstance(location, str) and isinstance(relative, str) and relative and location.endswith("/" + relative):
            return Path(location[: -len(relative) - 1]).parent / "retention"
    return None


def _check_instances(
    cited_list: list[dict[str, Any]],
    storage_root: Path | None,
    result: Verification,
    retention_root: Path | None = None,
    study_uid: str = "",
    anchors: Iterable[str] = (),
) -> None:
    """Every cited stored instance is where the manifest says, with its SHA-256, or its header-only copy
    with the SHA-256 a trusted retention record lists."""
    from .retention import RetentionLedger

    ledger = RetentionLedger(retention_root, frozenset(anchors)) if retention_root is not None else None
    for cited in cited_list:
        location = _stored_location(cited, storage_root)
        sop_uid = cited["sop_instance_uid"]
        if location is None or not location.is_file():
            result.problems.append(
                f"{location}: cited instance {sop_uid} is missing (with only the pack, verify with --pack-only)"
            )
            continue
        actual = _file_sha256(location)
        if actual == cited.get("sha256"):
            continue
        removal, why_not = (
            ledger.header_only(study_uid, sop_uid, str(cited.get("sha256")), actual) if ledger else (None, None)
        )
        if removal is not None:
            result.header_only.append(sop_uid)
            result.notes.append(
                f"cited instance {sop_uid} is now header-only: pixel data removed by retention at "
                f"{removal.removed_at} (record {removal.record}, signed by {removal.signer}); "
                "every other element is the original's"
            )
            continue
        hint = why_not or (
            f"no retention record in {retention_root} lists it"
            if retention_root is not None
            else "no retention records to check it against (give --retention DIR)"
        )
        result.problems.append(f"{location}: cited instance {sop_uid} changed (SHA-256 differs; {hint})")
    if ledger is not None:
        result.notes.extend(ledger.notes)


def _rederive_recorded(evidence_json: bytes, manifest: dict[str, Any], result: Verification) -> None:
    """Re-derive the outcome from evidence.json; recorded headers that cannot be re-derived are a
    difference, and a problem too when the pack was made under other rules."""
    try:
        _rederive(json.loads(evidence_json), manifest, result)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        result.differences.append(f"evidence.json: the recorded headers cannot be re-derived ({type(exc).__name__})")
        if manifest.get("rules_version") != RULES_VERSION:
            result.problems.append("evidence.json: unreadable recorded headers")


def _version_problem(version: object) -> str | None:
    """Why this dicomcheck cannot read a pack of ``version`` (the manifest's ``pack_version``), or None."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"manifest.json: pack_version {version!r} is not a pack version (a whole number from 1)"
    if version > PACK_VERSION:
        return (
            f"manifest.json: pack_version {version} is newer than this dicomcheck {__version__} reads "
            f"(versions 1 to {PACK_VERSION}); verify it with the dicomcheck that wrote it or a later one"
        )
    return None


def _rederive(evidence: dict[str, Any], manifest: dict[str, Any], result: Verification) -> None:
    facts = [facts_from_dict(f) for f in evidence.get("facts", [])]
    if not facts:
        result.notes.append("evidence.json records no header facts: the outcome was not re-derived")
        return
    if manifest.get("rules_version") != RULES_VERSION:
        result.notes.append(
            f"pack made under rules {manifest.get('rules_version')}; "
            f"re-derived under this version's rules {RULES_VERSION}"
        )
    registry = registry_from_dict(evidence.get("registry") or {})
    studies = group_by_study(facts)
    recorded = evidence.get("study", {})
    study_uid = recorded.get("study_instance_uid") or manifest.get("study_instance_uid")
    series_map = studies.get(study_uid) if study_uid is not None else None  # no study: no facts of it
    if series_map is None:
        result.differences.append("evidence.json: the recorded facts belong to another study")
        return
    again = StudyDecisionRecord.from_decision(
        decide_study(manifest["study_instance_uid"], series_map, registry=registry)
    )
    if (again.outcome.value, again.code) != (recorded.get("outcome"), recorded.get("code")):
        result.differences.append(
            f"outcome: recorded {recorded.get('outcome')} ({recorded.get('code')}), "
            f"re-derived {again.outcome.value} ({again.code})"
        )
    mine = {s.series_instance_uid: (s.kind.value, s.origin.value) for s in again.series}
    theirs = {s["series_instance_uid"]: (s["kind"], s["origin"]) for s in recorded.get("series", [])}
    for uid in sorted(set(mine) | set(theirs)):
        if mine.get(uid) != theirs.get(uid):
            result.differences.append(f"series {uid}: recorded {theirs.get(uid)}, re-derived {mine.get(uid)}")


def pack_dir_name(
    source: EvidenceSource,
    *,
    minimal: bool,
    review_id: int | None = None,
    report_id: int | None = None,
    session: dict[str, Any] | None = None,
) -> str:
    """``decision-<id>[-session-<hash>][-review-<id>][-report-<id>][-minimal]``: a session that changed since
    (another study of it decided; issue 13), a coder's review, or a newer radiology report adds a pack beside the
    decision's own."""
    stamp = source.decision_id if source.decision_id is not None else source.generated_at.strftime("%Y%m%dT%H%M%SZ")
    reviewed = f"-review-{review_id}" if review_id is not None else ""
    reported = f"-report-{report_id}" if report_id is not None else ""
    in_session = f"-session-{session_digest(session)}" if session else ""
    return f"decision-{stamp}{in_session}{reviewed}{reported}" + ("-minimal" if minimal else "")


def session_digest(session: dict[str, Any]) -> str:
    """12 hex digits naming one state of a session part (its canonical JSON)."""
    canonical = json.dumps(session, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def minimal_session(session: dict[str, Any] | None, study_uid: str) -> dict[str, Any] | None:
    """The session part a PHI-minimal pack carries: the verdict, whether it is final, how many studies the session
    has and this study's own part (regions, outcome and whether a coder's review gave it, whether it carries the
    unit, its 3D dates); not the other studies' UIDs or accession numbers, nor the notes that name them, nor the
    coder's name."""
    if not session:
        return session
    studies: list[dict[str, Any]] = session.get("studies", [])
    mine: dict[str, Any] = next((s for s in studies if s.get("study_instance_uid") == study_uid), {})
    kept = (
        "outcome",
        "code",
        "outcome_from",
        "has_3d",
        "regions",
        "regions_from",
        "carries_unit",
        "carrier_chosen",
        "made_later",
    )
    return {
        "verdict": session.get("verdict"),
        "final": session.get("final"),
        "studies": len(studies),
        "carrier_from": session.get("carrier_from"),
        "this_study": {key: mine.get(key) for key in kept},
    }


def minimal_report(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report part a PHI-minimal pack carries: the verdict, flags, reasons' flag names, status and hash; no
    sentence of the report (they may name the patient or findings), no radiologist."""
    if not report:
        return report
    kept = ("documentation", "flags", "status", "received", "matched_by", "report_id", "text_sha256", "source")
    return {key: report.get(key) for key in kept}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

"""Evidence packs cannot be made to lie (issue 8 §4): trust anchors, hostile ZIPs, pack-only
verification, one writer among several processes, and no silently created site key."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from dicomcheck.enums import Outcome
from dicomcheck.evidence.collect import from_folder
from dicomcheck.evidence.keys import SiteKey, create_key
from dicomcheck.evidence.pack import PACK_VERSION, PackError, PackWriter, verify_pack, zip_pack

from .peers import free_port, start_receiver

CASE = "ct_workstation_vr_sc"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomcheck.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pristine(fixtures_output: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One pack written from a private copy of a fixture study by a site key in DATA/keys (built once)."""
    root = tmp_path_factory.mktemp("trust")
    study = root / CASE
    shutil.copytree(fixtures_output / CASE, study)
    key = create_key(root / "data" / "keys")
    (source,) = from_folder([study])
    folder = PackWriter(key).write(source, root / "pack")
    return {"root": root, "study": study, "key": key, "data": root / "data", "pack": folder}


@pytest.fixture()
def pack(pristine: dict, tmp_path: Path) -> Path:
    """A writable copy of the pristine pack."""
    target = tmp_path / "pack"
    shutil.copytree(pristine["pack"], target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def re_sign(folder: Path, key: SiteKey, changes: dict[str, bytes]) -> None:
    """What a forger does: change files, re-hash them into the manifest and sign with their own key."""
    for name, data in changes.items():
        (folder / name).write_bytes(data)
    (folder / "public_key.pem").write_bytes(key.public_pem())
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    manifest["public_key_fingerprint"] = key.fingerprint
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    (folder / "manifest.json").write_bytes(body)
    (folder / "manifest.sig").write_bytes((key.sign(body).hex() + "\n").encode())


def test_verify_without_a_trust_anchor_fails_and_prints_the_signer(pristine: dict):
    proc = cli("evidence", "verify", pristine["pack"])
    assert proc.returncode != 0, proc.stdout
    assert "signer unknown" in proc.stdout and pristine["key"].fingerprint in proc.stdout
    assert not proc.stdout.startswith("OK")
    assert not verify_pack(pristine["pack"]).ok  # the library answers the same


@pytest.mark.parametrize("anchor", ["fingerprint", "data", "trusted-keys"])
def test_each_trust_anchor_accepts_the_site_key(pristine: dict, tmp_path: Path, anchor: str):
    fp = pristine["key"].fingerprint
    if anchor == "fingerprint":
        args = ["--fingerprint", fp]
    elif anchor == "data":
        args = ["--data", pristine["data"]]
    else:
        other = create_key(tmp_path / "other").fingerprint
        (tmp_path / "trusted.txt").write_text(f"# keys our payers accept\n\n{other}  # hospital B\n{fp} hospital A\n")
        args = ["--trusted-keys", tmp_path / "trusted.txt"]
    proc = cli("evidence", "verify", pristine["pack"], *args)
    assert proc.returncode == 0 and proc.stdout.startswith("OK ") and fp in proc.stdout, proc.stdout + proc.stderr


def test_a_pack_re_signed_with_another_key_fails_against_every_anchor(pack: Path, pristine: dict, tmp_path: Path):
    forger = create_key(tmp_path / "forger")
    report = (pack / "report.pdf").read_bytes()
    re_sign(pack, forger, {"report.pdf": report.replace(b"76377", b"76378", 1) + b"\n% forged\n"})
    assert verify_pack(pack, expected_fingerprint=forger.fingerprint).ok  # internally consistent ...
    site = pristine["key"].fingerprint
    (tmp_path / "trusted.txt").write_text(site + "\n")
    for args in (
        [],
        ["--fingerprint", site],
        ["--data", pristine["data"]],
        ["--trusted-keys", tmp_path / "trusted.txt"],
    ):
        proc = cli("evidence", "verify", pack, *args)
        assert proc.returncode == 1, (args, proc.stdout)  # ... but not signed by the anchor
        assert forger.fingerprint in proc.stdout and not proc.stdout.startswith("OK"), (args, proc.stdout)
    assert not verify_pack(pack, trusted=[site]).ok


def _with_pack_version(pack: Path, key: SiteKey, version: object) -> None:
    """Rewrite the manifest's pack_version (None: drop it, as packs written before it existed) and re-sign."""
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest.pop("pack_version")
    if version is not None:
        manifest = {"format": manifest.pop("format"), "pack_version": version, **manifest}
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    re_sign(pack, key, {})


def test_packs_are_written_as_the_current_pack_version(pristine: dict):
    manifest = json.loads((pristine["pack"] / "manifest.json").read_text())
    assert list(manifest)[:2] == ["format", "pack_version"] and manifest["pack_version"] == PACK_VERSION == 2


def test_a_version_1_pack_without_pack_version_still_verifies(pack: Path, pristine: dict):
    _with_pack_version(pack, pristine["key"], None)
    assert "pack_version" not in json.loads((pack / "manifest.json").read_text())
    result = verify_pack(pack, trusted=[pristine["key"].fingerprint])
    assert result.ok, result.problems + result.differences
    proc = cli("evidence", "verify", pack, "--data", pristine["data"])
    assert proc.returncode == 0 and proc.stdout.startswith("OK "), proc.stdout + proc.stderr


def test_a_newer_pack_version_is_refused_clearly(pack: Path, pristine: dict):
    _with_pack_version(pack, pristine["key"], PACK_VERSION + 1)
    assert not verify_pack(pack, trusted=[pristine["key"].fingerprint]).ok
    proc = cli("evidence", "verify", pack, "--data", pristine["data"])
    assert proc.returncode == 1, proc.stdout
    assert f"FAIL manifest.json: pack_version {PACK_VERSION + 1} is newer than this dicomcheck" in proc.stdout
    assert f"(versions 1 to {PACK_VERSION})" in proc.stdout


@pytest.mark.parametrize("version", [0, "2", True])
def test_a_pack_version_that_is_no_version_is_refused(pack: Path, pristine: dict, version: object):
    _with_pack_version(pack, pristine["key"], version)
    result = verify_pack(pack, trusted=[pristine["key"].fingerprint])
    assert not result.ok and any("is not a pack version" in p for p in result.problems), result.problems


def test_bad_trust_anchors_are_usage_errors(pristine: dict, tmp_path: Path):
    (tmp_path / "trusted.txt").write_text("not-a-fingerprint\n")
    proc = cli("evidence", "verify", pristine["pack"], "--trusted-keys", tmp_path / "trusted.txt")
    assert proc.returncode == 1 and "trusted.txt" in proc.stderr and "line 1" in proc.stderr
    proc = cli("evidence", "verify", pristine["pack"], "--data", tmp_path / "no-such-site")
    assert proc.returncode == 1 and "no site key" in proc.stderr


def _zip_with(pack: Path, target: Path, extra: list[tuple[str, bytes]], *, first: bool) -> Path:
    genuine = zipfile.ZipFile(__import__("io").BytesIO(zip_pack(pack)))
    with warnings.catch_warnings(), zipfile.ZipFile(target, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name a forger writes on purpose
        if first:
            for name, data in extra:
                archive.writestr(name, data)
        for info in genuine.infolist():
            archive.writestr(info, genuine.read(info))
        if not first:
            for name, data in extra:
                archive.writestr(name, data)
    return target


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("report.pdf", "twice"),
        ("/etc/report.pdf", "absolute"),
        ("thumbnails/../../report.pdf", ".."),
        ("C:\\report.pdf", "absolute"),
    ],
)
def test_zip_with_duplicate_absolute_or_dotdot_entries_is_rejected(
    pristine: dict, tmp_path: Path, entry: str, reason: str
):
    forged = _zip_with(
        pristine["pack"], tmp_path / "forged.zip", [(entry, b"%PDF-1.4 forged: supports_76377")], first=True
    )
    with pytest.raises(PackError, match=reason):
        verify_pack(forged, trusted=[pristine["key"].fingerprint])
    proc = cli("evidence", "verify", forged, "--fingerprint", pristine["key"].fingerprint)
    assert proc.returncode == 1 and reason in proc.stdout + proc.stderr and "OK" not in proc.stdout


def test_the_api_zip_form_verifies_with_an_anchor(pristine: dict, tmp_path: Path):
    archive = tmp_path / "evidence.zip"
    archive.write_bytes(zip_pack(pristine["pack"]))
    assert verify_pack(archive, trusted=[pristine["key"].fingerprint]).ok
    assert cli("evidence", "verify", archive, "--data", pristine["data"]).returncode == 0


def test_pack_only_mode_checks_everything_in_the_pack_and_says_instances_were_not_checked(
    pristine: dict, tmp_path: Path
):
    payer = tmp_path / "payer"  # the payer has the pack, not the hospital's files
    payer.mkdir()
    archive = payer / "evidence.zip"
    archive.write_bytes(zip_pack(pristine["pack"]))
    moved = tmp_path / "away"
    shutil.move(pristine["study"], moved)
    try:
        fp = pristine["key"].fingerprint
        full = cli("evidence", "verify", archive, "--fingerprint", fp)
        assert full.returncode == 1 and "is missing" in full.stdout and "--pack-only" in full.stdout
        proc = cli("evidence", "verify", archive, "--fingerprint", fp, "--pack-only")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "stored instances were NOT checked" in proc.stdout and proc.stdout.count("OK ") == 1
        result = verify_pack(archive, trusted=[fp], check_instances=False)
        assert result.ok and not result.instances_checked
    finally:
        shutil.move(moved, pristine["study"])


def test_pack_only_mode_still_fails_a_changed_file_or_a_doctored_decision(pack: Path, pristine: dict, tmp_path: Path):
    fp = pristine["key"].fingerprint
    sr = bytearray((pack / "sr.dcm").read_bytes())
    sr[len(sr) // 2] ^= 1
    (pack / "sr.dcm").write_bytes(bytes(sr))
    proc = cli("evidence", "verify", pack, "--fingerprint", fp, "--pack-only")
    assert proc.returncode == 1 and "FAIL sr.dcm" in proc.stdout and "NOT checked" in proc.stdout
    # a decision the recorded headers do not support, correctly signed by the site key itself
    from dataclasses import replace

    (source,) = from_folder([pristine["study"]])
    doctored = replace(
        source, decision=source.decision.model_copy(update={"outcome": Outcome.SUPPORTS_76376, "code": "76376"})
    )
    folder = PackWriter(pristine["key"]).write(doctored, tmp_path / "doctored")
    proc = cli("evidence", "verify", folder, "--fingerprint", fp, "--pack-only")
    assert proc.returncode == 1 and "DIFF outcome: recorded supports_76376" in proc.stdout


def test_evidence_command_refuses_without_a_site_key_naming_keys_create(pristine: dict, tmp_path: Path):
    data = tmp_path / "data"
    proc = cli("evidence", pristine["study"], "--out", tmp_path / "packs", "--data", data)
    assert proc.returncode == 1
    assert "dicomcheck keys create" in proc.stderr and str(data) in proc.stderr
    assert not (data / "keys").exists() and not (tmp_path / "packs").exists()
    proc = cli("evidence", pristine["study"], "--out", tmp_path / "packs", "--key-dir", tmp_path / "k")
    assert proc.returncode == 1 and "dicomcheck keys create --key-dir" in proc.stderr and not (tmp_path / "k").exists()


def test_serve_creates_the_site_key_at_first_start_and_logs_its_fingerprint_once(tmp_path: Path):
    data = tmp_path / "data"
    first = start_receiver(data, "--http-port", str(free_port()))
    try:
        assert (data / "keys" / "site-ed25519.pem").is_file()
        shown = cli("keys", "show", "--data", data).stdout.splitlines()[0]
        assert shown.startswith("SHA256:") and first.log().count(shown) == 1, first.log()
    finally:
        first.stop()
    second = start_receiver(data, "--http-port", str(free_port()))
    try:
        assert shown not in second.log() and "created the site key" not in second.log()
        assert cli("keys", "show", "--data", data).stdout.splitlines()[0] == shown  # the same key, kept
    finally:
        second.stop()


# ---------------------------------------------------------------- several processes, one pack


def _pack_in_process(data: str, study_uid: str, barrier, results) -> None:
    from dicomcheck.config import Settings
    from dicomcheck.evidence.service import ensure_pack
    from dicomcheck.ingest import Receiver

    receiver = Receiver(Settings(data=Path(data)))
    barrier.wait(timeout=120)
    try:
        folder = ensure_pack(receiver, study_uid)
        results.put(("ok", folder.name, (folder / "manifest.json").read_bytes()))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(("error", f"{type(exc).__name__}: {exc}", b""))


def test_several_processes_asking_for_one_pack_get_the_one_written(fixtures_output: Path, tmp_path: Path):
    from dicomcheck.config import Settings
    from dicomcheck.ingest import Receiver
    from dicomcheck.store.index import ReceiptInfo

    from .peers import wait_for

    data = tmp_path / "data"
    receiver = Receiver(Settings(data=data, stable_after=0.01))
    for path in sorted((fixtures_output / CASE).rglob("*.dcm")):
        temp = receiver.files.new_temp()
        shutil.copyfile(path, temp)
        receiver.store_file(temp, ReceiptInfo(None, "PACS1", "DICOMCHECK", "127.0.0.1", None, None, None))
    uid = json.loads((fixtures_output / CASE / "expected.json").read_text())["study_instance_uid"]
    wait_for(lambda: receiver.settle_once() >= 0 and receiver.index.get_study(uid).current_decision_id)
    receiver.engine.dispose()
    key = create_key(data / "keys")

    workers = 4
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    procs = [context.Process(target=_pack_in_process, args=(str(data), uid, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    answers = [results.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert [a[0] for a in answers] == ["ok"] * workers, [a[1] for a in answers if a[0] != "ok"]
    assert len({a[1] for a in answers}) == 1 and len({a[2] for a in answers}) == 1  # one pack, served to all
    study_dir = data / "evidence" / uid
    assert sorted(p.name for p in study_dir.iterdir() if not p.name.startswith(".")) == [answers[0][1]]
    assert not [p for p in study_dir.rglob("*") if ".part" in p.name]
    assert verify_pack(study_dir / answers[0][1], storage_root=data / "storage", trusted=[key.fingerprint]).ok


def _site_key_in_process(key_dir: str, barrier, results) -> None:
    from dicomcheck.evidence.service import site_key

    barrier.wait(timeout=120)
    try:
        results.put(site_key(Path(key_dir)).fingerprint)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(f"error {type(exc).__name__}: {exc}")


def test_processes_creating_the_site_key_at_once_end_with_one_key(tmp_path: Path):
    from dicomcheck.evidence.keys import load_key, site_fingerprint

    workers = 4
    context = multiprocessing.get_context("fork")  # cheap: the children only generate and link a key
    barrier, results = context.Barrier(workers), context.Queue()
    procs = [
        context.Process(target=_site_key_in_process, args=(str(tmp_path / "keys"), barrier, results))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    answers = {results.get(timeout=120) for _ in procs}
    for proc in procs:
        proc.join(timeout=60)
    assert answers == {load_key(tmp_path / "keys").fingerprint}, answers
    (tmp_path / "keys" / "site-ed25519.pem").rename(tmp_path / "private.pem")
    assert site_fingerprint(tmp_path / "keys") in answers  # the public part beside it is the same key
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["site-ed25519.pub.pem"]  # no temporary files left


def test_a_pack_folder_with_a_symlink_or_a_manifest_naming_a_path_outside_the_storage_fails(
    pack: Path, pristine: dict, tmp_path: Path
):
    fp = pristine["key"].fingerprint
    (pack / "thumbnails" / "link.png").symlink_to(pack / "report.pdf")
    with pytest.raises(PackError, match="symbolic link"):
        verify_pack(pack, trusted=[fp])
    (pack / "thumbnails" / "link.png").unlink()
    # a manifest (even one the site key signed) never makes verify read outside --storage
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"not stored")
    storage = tmp_path / "storage"
    storage.mkdir()
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["cited_instances"] = [
        {
            "sop_instance_uid": "1.2.3",
            "sha256": hashlib.sha256(b"not stored").hexdigest(),
            "location": str(outside),
            "storage_path": "../outside.dcm",
        }
    ]
    (pack / "manifest.json").write_text(json.dumps(manifest))
    re_sign(pack, pristine["key"], {})
    result = verify_pack(pack, storage_root=storage, trusted=[fp])
    assert not result.ok and any("cited instance 1.2.3 is missing" in p for p in result.problems), result.problems

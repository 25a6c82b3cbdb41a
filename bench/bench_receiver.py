"""Receiver benchmark: dicomcheck's Storage SCP against DCMTK ``storescp`` and Orthanc.

Not a test. One run compares, side by side over loopback and with the same DCMTK ``storescu`` as the
sender, the receivers below on a synthetic 512 x 512 16-bit CT study:

* ``storescp``          DCMTK storescp writing files (one process; ``--fork`` for concurrent runs),
* ``orthanc``           Orthanc with its default SQLite index and ``SyncStorageArea`` (fsync),
* ``dicomcheck``        ``dicomcheck serve`` (indexing on: every instance is fsynced and renamed, its
                        journal entry and folder fsynced before the C-STORE response, and indexed in
                        SQLite right after it, in batches), one process,
* ``dicomcheck-pN``     the same with N receiver processes sharing the listening port,
* ``pynetdicom``        (reference) a bare pynetdicom receiver with library defaults writing
                        ``event.encoded_dataset()`` to a file, no fsync, no index (what the issue
                        measured as "a bare pynetdicom receiver writing files").

Modes: one association sending the whole study; 4 concurrent associations (4 ``storescu`` each
sending a quarter); peak memory (VmHWM of every receiver process) at 500 and at 2,000 instances.

Every process (senders and receivers) runs inside a network namespace this script creates, so all
traffic stays on that namespace's loopback (``storescp`` has no bind option) and nothing listens on
the host. Every DCMTK process and Orthanc get ``TCP_NODELAY=1`` in their environment: without it
DCMTK leaves Nagle's algorithm on and each C-STORE stalls on a delayed ACK (see bench/README.md).
Needs root (``ip netns``), DCMTK and Orthanc.

Other load on a shared machine is measured (``/proc/stat`` minus the receiver and the senders) and a
run during which other processes used more than ``--max-foreign`` cores is taken again.

Usage (as root)::

    python bench/bench_receiver.py                      # everything, 3 repeats (about 7-9 minutes)
    python bench/bench_receiver.py --repeats 5 --receivers storescp,dicomcheck --modes single
    python bench/bench_receiver.py --profile            # tuning steps with a per-instance timeline, and py-spy

Study files and run folders live in ``bench/out/`` (git-ignored); results are written to
``bench/out/receiver-results.json`` and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
GENERATOR_VERSION = 1
SENDER_AE = "BENCHSCU"
ROWS = COLUMNS = 512
RECEIVERS = ("storescp", "orthanc", "dicomcheck", "dicomcheck-p4", "pynetdicom")
DEFAULT_RECEIVERS = ("storescp", "orthanc", "dicomcheck", "dicomcheck-p4", "pynetdicom")


def peer_env(**extra: str) -> dict[str, str]:
    """DCMTK (and Orthanc, built on DCMTK) wait on delayed ACKs unless TCP_NODELAY is set."""
    return {**os.environ, "TCP_NODELAY": "1", **extra}


# ---------------------------------------------------------------------------------------------- study
def make_study(n: int, folder: Path) -> list[Path]:
    """A deterministic CT study of ``n`` 512 x 512 16-bit images (about 520 KB a file); cached."""
    marker = folder / "study.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if meta.get("generator_version") == GENERATOR_VERSION and meta.get("files") == n:
            return [folder / name for name in meta["names"]]
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["dicomcheck-bench-receiver", str(n), *map(str, parts)])

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    study, series, frame = uid("study"), uid("series"), uid("frame")
    rng = np.random.default_rng(76376)
    base = rng.integers(0, 1400, size=(ROWS, COLUMNS), dtype=np.uint16)
    names = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = uid("sop", i)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = (
            ds.file_meta.MediaStorageSOPClassUID,
            ds.file_meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260105"
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "100212", "101012", "101012.5"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "BENCHRX1", "CT", "SIEMENS"
        ds.InstitutionName, ds.StationName = "Bench General Hospital", "CT54023"
        ds.StudyDescription, ds.SeriesDescription = "CT ABDOMEN PELVIS W CONTRAST", "Abdomen  1.0  Br40  3"
        ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.SoftwareVersions = (
            "SOMATOM Definition AS+",
            "54023",
            "syngo CT VA48A",
        )
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Receiver", "BR000001", "19600101", "O"
        ds.BodyPartExamined, ds.SliceThickness, ds.KVP, ds.ConvolutionKernel = "ABDOMEN", "1", "120", "Br40d"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "1", 2, i + 1, 1
        ds.ImagePositionPatient = [-190.0, -350.0, -100.0 - i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.742, 0.742]
        ds.SliceLocation = -100.0 - i
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = "-1024", "1", "40", "400"
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        name = f"CT{i + 1:05d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    marker.write_text(
        json.dumps(
            {
                "generator_version": GENERATOR_VERSION,
                "files": n,
                "study_instance_uid": study,
                "bytes": sum((folder / x).stat().st_size for x in names),
                "names": names,
            }
        )
    )
    return [folder / name for name in names]


# ---------------------------------------------------------------------------------------------- namespace
class Netns:
    """A network namespace with only ``lo`` up; deleted on exit."""

    def __init__(self) -> None:
        self.name = f"dcbench{os.getpid()}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(self.cmd(["ip", "link", "set", "lo", "up"]), check=True)
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def cmd(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


# ---------------------------------------------------------------------------------------------- processes
def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM / VmRSS (MiB) and CPU seconds (user + system) of one live process."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return out


@dataclass
class Receiver:
    """One running receiver inside the namespace."""

    kind: str
    port: int
    ae_title: str
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    count: object  # () -> int: instances held
    seen: dict[int, dict] = field(default_factory=dict)
    """Last status of every process of the receiver's tree seen so far (storescp --fork children exit)."""

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def poll(self) -> None:
        for pid in self.pids():
            status = proc_status(pid)
            if status:
                self.seen[pid] = status

    def sample(self) -> dict:
        self.poll()
        per = self.seen
        return {
            "processes": len(per),
            "peak_rss_mib_max": round(max((s.get("VmHWM", 0) for s in per.values()), default=0), 1),
            "peak_rss_mib_sum": round(sum(s.get("VmHWM", 0) for s in per.values()), 1),
            "cpu_s": round(sum(s.get("cpu", 0) for s in per.values()), 2),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait()


def wait_listening(ns: Netns, receiver: Receiver, timeout: float = 60.0) -> None:
    """Poll with DCMTK echoscu inside the namespace until the receiver answers C-ECHO."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.proc.poll() is not None:
            raise RuntimeError(
                f"{receiver.kind} exited "
                f"{receiver.proc.returncode}:\n{receiver.log_path.read_text(errors='replace')[-3000:]}"
            )
        echo = subprocess.run(
            ns.cmd(
                ["echoscu", "-to", "2", "-aet", SENDER_AE, "-aec", receiver.ae_title, "127.0.0.1", str(receiver.port)]
            ),
            env=peer_env(),
            capture_output=True,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    receiver.stop()
    raise RuntimeError(
        f"{receiver.kind} did not answer C-ECHO:\n{receiver.log_path.read_text(errors='replace')[-3000:]}"
    )


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def start_receiver(
    ns: Netns, kind: str, workdir: Path, port: int, *, concurrent: bool, env: dict[str, str] | None = None
) -> Receiver:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log_path = workdir / "receiver.log"
    log = log_path.open("wb")
    if kind == "storescp":
        store = workdir / "files"
        store.mkdir()
        args = [
            "storescp",
            "--aetitle",
            "STORESCP",
            "--output-directory",
            str(store),
            *(["--fork"] if concurrent else []),
            str(port),
        ]
        receiver = Receiver(
            kind,
            port,
            "STORESCP",
            workdir,
            subprocess.Popen(ns.cmd(args), stdout=log, stderr=subprocess.STDOUT, env=peer_env()),
            log_path,
            lambda: count_files(store),
        )
    elif kind == "orthanc":
        storage, index = workdir / "storage", workdir / "index"
        config = {
            "Name": "bench",
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": port + 1,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "DicomModalities": {},
            "HttpServerEnabled": True,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        receiver = Receiver(
            kind,
            port,
            "ORTHANC",
            workdir,
            subprocess.Popen(
                ns.cmd(["Orthanc", str(workdir / "orthanc.json")]), stdout=log, stderr=subprocess.STDOUT, env=peer_env()
            ),
            log_path,
            lambda: count_files(storage),
        )
    elif kind.startswith("dicomcheck"):
        processes = int(kind.split("-p", 1)[1]) if "-p" in kind else 1
        data = workdir / "data"
        common = [
            "--data",
            str(data),
            "--dicom-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--ae-title",
            "DICOMCHECK",
            "--allow-caller",
            SENDER_AE,
            "--stable-after",
            "3600",
        ]
        args = [
            PYTHON,
            "-m",
            "dicomcheck.cli",
            "serve",
            "--no-api",
            *common,
            *(["--processes", str(processes)] if processes > 1 else []),
        ]
        receiver = Receiver(
            kind,
            port,
            "DICOMCHECK",
            workdir,
            subprocess.Popen(
                ns.cmd(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            ),
            log_path,
            lambda: _count_instances(data),
        )
    elif kind == "pynetdicom":
        store = workdir / "files"
        store.mkdir()
        receiver = Receiver(
            kind,
            port,
            "PYNETDICOM",
            workdir,
            subprocess.Popen(
                ns.cmd([PYTHON, __file__, "--serve-bare", str(port), str(store)]), stdout=log, stderr=subprocess.STDOUT
            ),
            log_path,
            lambda: count_files(store),
        )
    else:
        raise ValueError(kind)
    wait_listening(ns, receiver)
    return receiver


def _count_instances(data: Path) -> int:
    with sqlite3.connect(data / "index.sqlite3") as db:
        return db.execute("SELECT count(*) FROM instance").fetchone()[0]


def cpu_busy() -> float:
    """Seconds of CPU the whole machine spent busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def send(ns: Netns, receiver: Receiver, files: list[Path], associations: int, measure: dict | None = None) -> float:
    """Send ``files`` over ``associations`` concurrent storescu processes; seconds until all exit.

    With ``measure``, also the CPU seconds of the receiver, of the senders and of everything else
    on the machine during the transfer (other work on a shared machine skews the figures).
    """
    parts = [files[i::associations] for i in range(associations)]
    receiver_before, senders_before, busy_before = receiver.sample()["cpu_s"], children_cpu(), cpu_busy()
    done = threading.Event()

    def sampler() -> None:  # short-lived children (storescp --fork) would otherwise be missed
        while not done.wait(0.05):
            receiver.poll()

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ns.cmd(
                [
                    "storescu",
                    "-aet",
                    SENDER_AE,
                    "-aec",
                    receiver.ae_title,
                    "127.0.0.1",
                    str(receiver.port),
                    *map(str, part),
                ]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=peer_env(),
        )
        for part in parts
    ]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - started
    done.set()
    thread.join()
    if measure is not None:
        receiver_cpu = receiver.sample()["cpu_s"] - receiver_before
        senders_cpu = children_cpu() - senders_before
        busy = cpu_busy() - busy_before
        measure.update(
            receiver_cpu_s=round(receiver_cpu, 2),
            sender_cpu_s=round(senders_cpu, 2),
            other_cpu_s=round(max(0.0, busy - receiver_cpu - senders_cpu), 2),
            machine_busy=round(busy / elapsed / (os.cpu_count() or 1), 2),
        )
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(
                f"storescu failed ({p.returncode}) sending to {receiver.kind}:\n{out.decode(errors='replace')[-3000:]}"
            )
    return elapsed


def run_once(
    ns: Netns,
    kind: str,
    files: list[Path],
    associations: int,
    workdir: Path,
    port: int,
    env: dict[str, str] | None = None,
) -> dict:
    concurrent = associations > 1
    receiver = start_receiver(ns, kind, workdir, port, concurrent=concurrent, env=env)
    measure: dict = {}
    try:
        elapsed = send(ns, receiver, files, associations, measure)
        held = _wait_count(receiver, len(files))
        sample = receiver.sample()
    finally:
        receiver.stop()
    if held != len(files):
        raise RuntimeError(
            f"{kind}: {held} of {len(files)} instances held after the "
            f"run:\n{receiver.log_path.read_text(errors='replace')[-3000:]}"
        )
    # Run folders are deleted at the end: deleting 250 MB on a discard-mounted disk right before the
    # next run slows that run's fsyncs. Flush this run's dirty pages so the next one does not pay.
    os.sync()
    return {
        "port": port,
        "instances": len(files),
        "seconds": round(elapsed, 3),
        "instances_per_s": round(len(files) / elapsed, 1),
        **sample,
        **measure,
    }


LOAD = {"max_foreign": 0.5, "retries": 2, "retry_until": float("inf")}
"""A run during which other processes used more than ``max_foreign`` cores is taken again (up to
``retries`` times, and only before ``retry_until`` on the monotonic clock, so the whole benchmark
stays within its time budget); the least loaded attempt is kept. Set from the command line."""


def measured(run) -> dict:
    """``run(attempt)`` repeated while other load on the shared machine was above ``LOAD['max_foreign']``."""
    attempts = []
    for attempt in range(1 + LOAD["retries"]):
        row = run(attempt)
        row["foreign_cores"] = round(row["other_cpu_s"] / row["seconds"], 2)
        attempts.append(row)
        if row["foreign_cores"] <= LOAD["max_foreign"] or time.monotonic() > LOAD["retry_until"]:
            break
    best = min(attempts, key=lambda r: r["foreign_cores"])
    best["discarded_attempts"] = len(attempts) - 1
    return best


def _wait_count(receiver: Receiver, expected: int, timeout: float = 10.0) -> int:
    """Orthanc and storescp --fork may still be closing files when storescu exits."""
    deadline = time.monotonic() + timeout
    while True:
        held = receiver.count()
        if held >= expected or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- in-namespace servers
def serve_bare(port: int, folder: Path) -> None:
    """A bare pynetdicom Storage SCP with library defaults, writing the received bytes to files."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    def on_store(event):
        with (folder / f"{event.request.AffectedSOPInstanceUID}.dcm").open("wb") as fh:
            fh.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PYNETDICOM")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    print("listening", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT}) if hasattr(signal, "sigwait") else signal.pause()
    server.shutdown()


# ---------------------------------------------------------------------------------------------- profile / tuning
TUNING_VARIANTS: list[tuple[str, dict[str, str]]] = [
    # cumulative steps of scp/tuning.py, then the maximum PDU size we announce (Settings.max_pdu)
    ("library (no tuning), max PDU 256 KiB", {"DICOMCHECK_SCP_TUNING": "none"}),
    ("+ quiet", {"DICOMCHECK_SCP_TUNING": "quiet"}),
    ("+ recv", {"DICOMCHECK_SCP_TUNING": "quiet,recv"}),
    ("+ reactor", {"DICOMCHECK_SCP_TUNING": "quiet,recv,reactor"}),
    ("+ nodelay", {"DICOMCHECK_SCP_TUNING": "quiet,recv,reactor,nodelay"}),
    ("+ context", {"DICOMCHECK_SCP_TUNING": "quiet,recv,reactor,nodelay,context"}),
    ("+ response", {"DICOMCHECK_SCP_TUNING": "quiet,recv,reactor,nodelay,context,response"}),
    ("+ switch (all)", {"DICOMCHECK_SCP_TUNING": "all"}),
    ("all, max PDU 16 KiB", {"DICOMCHECK_SCP_TUNING": "all", "DICOMCHECK_MAX_PDU": "16384"}),
    ("all, max PDU 1 MiB", {"DICOMCHECK_SCP_TUNING": "all", "DICOMCHECK_MAX_PDU": "1048576"}),
    ("all, max PDU unlimited (0)", {"DICOMCHECK_SCP_TUNING": "all", "DICOMCHECK_MAX_PDU": "0"}),
]


def tuning_steps(ns: Netns, files: list[Path], work: Path, repeats: int, port: int) -> dict:
    """dicomcheck on one association with each tuning step, interleaved, plus a timeline trace."""
    rows: dict[str, list[dict]] = defaultdict(list)
    traces: dict[str, list[dict]] = defaultdict(list)
    for repeat in range(repeats):
        for label, env in TUNING_VARIANTS:
            port += 2
            paths: list[Path] = []

            def run(attempt: int, port: int = port, env: dict = env, paths: list[Path] = paths) -> dict:
                port += 1000 * attempt
                paths.append(work / f"trace-{port}.json")
                return run_once(
                    ns,
                    "dicomcheck",
                    files,
                    1,
                    work / f"tuning-{port}",
                    port,
                    env={**env, "DICOMCHECK_SCP_TRACE": str(paths[-1])},
                )

            row = measured(run)
            rows[label].append(row)
            kept = next((p for p in paths if p.name == f"trace-{row['port']}.json"), None)
            if kept is not None and kept.is_file():
                traces[label].append(json.loads(kept.read_text()))
            print(
                f"  repeat {repeat + 1} {label:38s} {row['instances_per_s']:7.1f}/s  receiver cpu "
                f"{row['receiver_cpu_s']:.1f}s  "
                f"other cpu {row['other_cpu_s']:.1f}s",
                flush=True,
            )
    out = {}
    for label, _ in TUNING_VARIANTS:
        out[label] = median_row(rows[label]) | {"timeline_ms": _median_trace(traces[label]), "runs": rows[label]}
    return out


def association_latency(ns: Netns, file: Path, work: Path, port: int, count: int = 40) -> dict:
    """One instance per association (a sender that opens one association per image): median seconds
    of a whole ``storescu`` run (process start, association, C-STORE, release), untuned vs tuned."""
    out = {}
    for label, env in (("library (no tuning)", {"DICOMCHECK_SCP_TUNING": "none"}), ("all tuning", {})):
        port += 2
        receiver = start_receiver(ns, "dicomcheck", work / f"latency-{port}", port, concurrent=False, env=env)
        try:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                send(ns, receiver, [file], 1)
                times.append(time.perf_counter() - started)
        finally:
            receiver.stop()
        out[label] = round(1000 * statistics.median(times[5:]), 1)
        print(f"  one instance per association, {label}: {out[label]} ms per storescu run", flush=True)
    return out


def _median_trace(traces: list[dict]) -> dict:
    """Median over repeats of each phase's per-instance mean (ms)."""
    merged: dict[str, dict[str, float]] = {}
    for group in ("phases", "handler_parts"):
        names = {name for t in traces for name in t.get(group, {})}
        merged[group] = {
            name: round(statistics.median(t[group][name]["mean_ms"] for t in traces if name in t.get(group, {})), 3)
            for name in sorted(names)
        }
    return merged


def py_spy(ns: Netns, files: list[Path], workdir: Path, port: int, raw: Path) -> dict:
    """py-spy (wall clock: idle and waiting included) of the tuned receiver while storescu sends ``files``."""
    py_spy_bin = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(py_spy_bin).exists():
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    receiver = start_receiver(ns, "dicomcheck", workdir, port, concurrent=False)
    spy = subprocess.Popen(
        [
            py_spy_bin,
            "record",
            "--pid",
            str(receiver.proc.pid),
            "--rate",
            "250",
            os.environ.get("PY_SPY_MODE", "--idle"),
            "--threads",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # py-spy attaches
    try:
        elapsed = send(ns, receiver, files, 1)
    finally:
        time.sleep(0.3)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        receiver.stop()
    return {"instances_per_s_while_sampled": round(len(files) / elapsed, 1), "threads": summarise_py_spy(raw)}


def summarise_py_spy(raw: Path, top: int = 14) -> dict:
    """Per thread: share of samples in the busiest frames (inclusive), dicomcheck and pynetdicom only."""
    totals: Counter = Counter()
    inclusive: dict[str, Counter] = defaultdict(Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip()
        thread = (
            "association (reactor + handler)"
            if "AcceptorThread" in thread
            else "DUL (socket reader)"
            if "reactor" in thread
            else thread
        )
        totals[thread] += int(count)
        for frame in set(frames[1:]):
            if any(
                k in frame
                for k in ("dicomcheck/", "scp/", "pynetdicom/", "sqlalchemy/engine/default.py", "tempfile.py")
            ):
                inclusive[thread][frame] += int(count)
    return {
        thread: {"samples": n, "frames_pct": {f: round(100 * c / n, 1) for f, c in inclusive[thread].most_common(top)}}
        for thread, n in totals.most_common()
        if thread in ("association (reactor + handler)", "DUL (socket reader)")
    }


# ---------------------------------------------------------------------------------------------- main
def machine() -> dict:
    import pydicom
    import pynetdicom

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    dcmtk = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    orthanc = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
        "orthanc": orthanc,
        "git": head,
    }


def median_row(runs: list[dict]) -> dict:
    keys = (
        "seconds",
        "instances_per_s",
        "peak_rss_mib_max",
        "peak_rss_mib_sum",
        "cpu_s",
        "receiver_cpu_s",
        "sender_cpu_s",
        "other_cpu_s",
        "machine_busy",
        "foreign_cores",
    )
    quiet = [r["instances_per_s"] for r in runs if r["foreign_cores"] <= LOAD["max_foreign"]]
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in keys} | {
        "repeats": len(runs),
        "instances": runs[0]["instances"],
        "processes": runs[0]["processes"],
        "instances_per_s_all": [r["instances_per_s"] for r in runs],
        "quiet_runs": len(quiet),
        "quiet_instances_per_s": round(statistics.median(quiet), 1) if quiet else None,
    }


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument(
        "--memory-instances", type=int, default=2000, help="the larger study of the memory comparison (0 = skip)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument(
        "--receivers", default=",".join(DEFAULT_RECEIVERS), help=f"comma list of {', '.join(RECEIVERS)}"
    )
    parser.add_argument("--modes", default="single,concurrent,memory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: dicomcheck on one association with each tuning step (timeline trace) and a py-spy profile",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=LOAD["max_foreign"],
        help="retake a run when other processes used more cores than this meanwhile",
    )
    parser.add_argument("--retries", type=int, default=LOAD["retries"])
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds after which loaded runs are no longer retaken"
    )
    parser.add_argument("--output", type=Path, default=OUT / "receiver-results.json")
    args = parser.parse_args()
    LOAD.update(max_foreign=args.max_foreign, retries=args.retries, retry_until=time.monotonic() + args.budget)
    if os.geteuid() != 0:
        parser.error("needs root for ip netns")
    for program in ("ip", "storescu", "storescp", "echoscu", "Orthanc"):
        if shutil.which(program) is None:
            parser.error(f"{program} not installed (apt-get install dcmtk orthanc iproute2)")
    receivers = [r for r in args.receivers.split(",") if r]
    unknown = [r for r in receivers if r not in RECEIVERS and not r.startswith("dicomcheck-p")]
    if unknown:
        parser.error(f"unknown receivers {unknown}")
    modes = set(args.modes.split(","))
    big = max(args.instances, args.memory_instances if "memory" in modes else 0)
    print(f"study: {big} instances of {ROWS}x{COLUMNS} 16-bit CT in {OUT / f'receiver-study-{big}'}", flush=True)
    all_files = make_study(big, OUT / f"receiver-study-{big}")
    files = all_files[: args.instances]
    work = Path(tempfile.mkdtemp(prefix="receiver-run-", dir=OUT))
    results: dict = {
        "machine": machine(),
        "instances": args.instances,
        "instance_bytes": files[0].stat().st_size,
        "associations": args.associations,
        "repeats": args.repeats,
        "tcp_nodelay": "TCP_NODELAY=1 for every DCMTK process and Orthanc",
        "runs": {},
    }
    port = 11112
    try:
        with Netns() as ns:
            if args.profile:
                os.sync()
                results["tuning"] = tuning_steps(ns, files, work, args.repeats, port)
                results["association_ms"] = association_latency(ns, files[0], work, port + 2000)
                results["py_spy"] = py_spy(ns, files, work / "py-spy", port + 1000, OUT / "receiver-py-spy.raw.txt")
                output = args.output if args.output != OUT / "receiver-results.json" else OUT / "receiver-profile.json"
                output.write_text(json.dumps(results, indent=2))
                print(profile_report(results))
                return 0
            send_warm = start_receiver(ns, "storescp", work / "warm", port, concurrent=False)  # page cache of the study
            try:
                send(ns, send_warm, all_files, 1)
            finally:
                send_warm.stop()
                shutil.rmtree(work / "warm", ignore_errors=True)
                os.sync()
            plan: list[tuple[str, str, list[Path], int]] = []
            if "single" in modes:
                plan += [("single", r, files, 1) for r in receivers]
            if "concurrent" in modes:
                plan += [("concurrent", r, files, args.associations) for r in receivers]
            memory_plan = []
            if "memory" in modes and args.memory_instances:
                memory_plan = [
                    ("memory", r, all_files[: args.memory_instances], 1)
                    for r in receivers
                    if r.startswith("dicomcheck")
                ]
            runs: dict[str, list[dict]] = defaultdict(list)
            for repeat in range(args.repeats):  # round robin, so drift hits every receiver alike
                for mode, kind, chosen, assocs in plan + (memory_plan if repeat < args.memory_repeats else []):
                    port += 2

                    def run(
                        attempt: int, kind=kind, chosen=chosen, assocs=assocs, name=f"{mode}-{kind}-{repeat}", port=port
                    ) -> dict:
                        port += 1000 * attempt
                        return run_once(ns, kind, chosen, assocs, work / f"{name}-{port}", port)

                    row = measured(run)
                    runs[f"{mode}/{kind}"].append(row)
                    print(
                        f"  repeat {repeat + 1} {mode:10s} {kind:14s} {len(chosen):5d} inst  "
                        f"{row['instances_per_s']:7.1f}/s  "
                        f"peak RSS {row['peak_rss_mib_max']:.0f} MiB (sum {row['peak_rss_mib_sum']:.0f})  cpu "
                        f"{row['cpu_s']:.1f}s  "
                        f"other load {row['foreign_cores']:.2f} cores"
                        + (f" ({row['discarded_attempts']} retried)" if row["discarded_attempts"] else ""),
                        flush=True,
                    )
            results["runs"] = {key: median_row(value) | {"runs": value} for key, value in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def profile_report(results: dict) -> str:
    lines = [
        f"dicomcheck, one association, {results['instances']} instances, medians of {results['repeats']} repeats",
        "",
        "| step | instances/s | receiver CPU ms/instance | receive | dispatch | handler | respond | sender | other "
        "CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    n = results["instances"]
    for label, row in results["tuning"].items():
        phases = row["timeline_ms"]["phases"]
        cells = " | ".join(
            f"{phases.get(p, float('nan')):.2f}" for p in ("receive", "dispatch", "handler", "respond", "sender")
        )
        cpu = statistics.median(r["receiver_cpu_s"] for r in row["runs"]) * 1000 / n
        other = statistics.median(r["other_cpu_s"] for r in row["runs"])
        lines.append(f"| {label} | {row['instances_per_s']:.0f} | {cpu:.1f} | {cells} | {other:.1f} |")
    if "association_ms" in results:
        lines += [
            "",
            "one instance per association (median ms per storescu run): "
            + ", ".join(f"{k} {v}" for k, v in results["association_ms"].items()),
        ]
    last = list(results["tuning"].values())[5]["timeline_ms"]["handler_parts"]
    lines += [
        "",
        "handler parts (ms per instance, all tuning): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(last.items(), key=lambda x: -x[1])),
    ]
    spy = results.get("py_spy", {})
    for thread, info in spy.get("threads", {}).items():
        lines += ["", f"py-spy, {thread} ({info['samples']} samples):"] + [
            f"  {pct:5.1f}%  {frame}" for frame, pct in info["frames_pct"].items()
        ]
    return "\n".join(lines)


def report(results: dict) -> str:
    runs = results["runs"]
    lines = [
        f"{results['instances']} instances of {results['instance_bytes'] // 1024} KB, medians of {results['repeats']} "
        "repeats; "
        f"{results['tcp_nodelay']}",
        "",
        "| mode | receiver | processes | instances/s (median) | vs storescp | vs Orthanc | quiet runs: instances/s "
        "(n) | quiet vs storescp | receiver CPU ms/instance | other load (cores) | peak RSS MiB (max / sum) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(a, b) -> str:
        return f"{a / b:.2f}" if a and b else "–"

    for mode in ("single", "concurrent"):
        ref = runs.get(f"{mode}/storescp", {})
        orth = runs.get(f"{mode}/orthanc", {})
        for key, row in runs.items():
            if not key.startswith(mode + "/"):
                continue
            rate, quiet = row["instances_per_s"], row["quiet_instances_per_s"]
            kind = key.split("/", 1)[1] + (" --fork" if mode == "concurrent" and key.endswith("storescp") else "")
            lines.append(
                f"| {mode} | {kind} | {row['processes']} | {rate:.0f} | {ratio(rate, ref.get('instances_per_s'))} | "
                f"{ratio(rate, orth.get('instances_per_s'))} | {f'{quiet:.0f}' if quiet else '–'} "
                f"({row['quiet_runs']}) | "
                f"{ratio(quiet, ref.get('quiet_instances_per_s'))} | "
                f"{1000 * row['receiver_cpu_s'] / row['instances']:.1f} | "
                f"{row['foreign_cores']:.2f} | {row['peak_rss_mib_max']:.0f} / {row['peak_rss_mib_sum']:.0f} |"
            )
    memory = {k.split("/", 1)[1]: v for k, v in runs.items() if k.startswith("memory/")}
    if memory:
        lines += [
            "",
            f"| receiver | peak RSS at {results['instances']} instances (MiB, max / sum) | at "
            f"{next(iter(memory.values()))['instances']} | change of the sum |",
            "|---|---|---|---|",
        ]
        for kind, row in memory.items():
            small = runs.get(f"single/{kind}")
            if small:
                change = row["peak_rss_mib_sum"] / small["peak_rss_mib_sum"] - 1
                lines.append(
                    f"| {kind} | {small['peak_rss_mib_max']:.0f} / {small['peak_rss_mib_sum']:.0f} | "
                    f"{row['peak_rss_mib_max']:.0f} / {row['peak_rss_mib_sum']:.0f} | {change:+.1%} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Real peers and a real receiver process for tests: free ports, no sleeps, everything stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Running under CI (``.ci/run`` exports ``CI=true``), where every prerequisite is installed."""
    return os.environ.get("CI", "").lower() == "true"


def missing_prerequisite(reason: str) -> NoReturn:
    """The one way a test gives up on something absent (a peer program, PostgreSQL, ../shared):
    skip with the reason on a laptop, fail under CI=true, where a skip would hide a lost test."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def peer_program(name: str) -> str | None:
    """A peer program's path; Debian installs Orthanc in /usr/sbin, not on every user's PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def require_peer(*programs: str) -> str:
    """Skip (on a laptop) or fail (under CI=true) when a real peer program is missing; the first one's path."""
    missing = [p for p in programs if peer_program(p) is None]
    if missing:
        missing_prerequisite(
            f"peer program(s) {missing} not installed (apt-get install dcmtk dicom3tools orthanc poppler-utils)"
        )
    return peer_program(programs[0]) or programs[0]


def stop_process(proc: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def stopped_at_end(start):
    """A fixture's factory: ``factory(*args, **kwargs)`` returns ``start(n, *args, **kwargs)`` (``n``
    counts the things started, for distinct folders); every one is stopped when the block ends."""
    started = []

    def factory(*args, **kwargs):
        thing = start(len(started), *args, **kwargs)
        started.append(thing)
        return thing

    try:
        yield factory
    finally:
        for thing in started:
            thing.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peer_env() -> dict[str, str]:
    """DCMTK and Orthanc wait on delayed ACKs unless TCP_NODELAY is set (see shared/reference/peers.md)."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class ReceiverProcess:
    data: Path
    port: int
    ae_title: str
    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.data / "index.sqlite3"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_receiver(
    data: Path,
    *extra: str,
    port: int | None = None,
    ae_title: str = "DICOMCHECK",
    stable_after: float = 1.0,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 60.0,
) -> ReceiverProcess:
    """Run `dicomcheck serve` as a user would, on loopback and a free port; wait until it listens."""
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / f"{data.name}-serve-{port}.log"
    if "--http-port" not in extra and "--no-scp" not in extra:
        extra = ("--no-api", *extra)  # the DICOM receiver alone unless a test asks for the API
    args = [
        *(prefix or []),
        sys.executable,
        "-m",
        "dicomcheck.cli",
        "serve",
        "--data",
        str(data),
        "--dicom-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--ae-title",
        ae_title,
        "--stable-after",
        str(stable_after),
        *extra,
    ]
    log = log_path.open("ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    server = ReceiverProcess(data, port, ae_title, proc, log_path, args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"receiver exited {proc.returncode}:\n{server.log()}")
        if "listening on" in server.log():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return server
        time.sleep(0.05)
    server.kill()
    raise AssertionError(f"receiver did not start:\n{server.log()}")


def start_api_only(
    data: Path, port: int, *extra: str, env: dict[str, str] | None = None, stdout=None
) -> subprocess.Popen:
    """`dicomcheck serve --no-scp` on 127.0.0.1:``port`` (the API alone), the test run's own DICOMCHECK_* settings
    left out and ``env`` added; its output to ``stdout`` (a file or ``subprocess.PIPE``, as text)."""
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("DICOMCHECK_")}, **(env or {})}
    command = [sys.executable, "-m", "dicomcheck.cli", "serve", "--no-scp", "--http-port", str(port)]
    return subprocess.Popen(
        [*command, "--bind", "127.0.0.1", "--data", str(data), *extra],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=environment,
        text=True,
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, *, describe=None):
    """Poll ``predicate`` until it is truthy (its value is returned) or fail after ``timeout`` seconds,
    with ``describe()`` (what was seen instead) in the message when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s" + (f": {describe()}" if describe else ""))
        time.sleep(interval)


def send_raw_c_store(assoc, *, sop_class: str, sop_instance: str, body: bytes, context_id: int | None = None):
    """Send a C-STORE whose command and data set we craft (a sloppy or hostile sender).

    pynetdicom's own SCU pauses its reactor around a request so the response is not swallowed;
    this does the same with a request built by hand. Returns the response primitive (or None).
    """
    import io

    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = io.BytesIO(body)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id or assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return response


def tmpfs_prefix(mount_point: Path, size: str) -> list[str]:
    """A ``start_receiver(prefix=...)`` running the receiver in its own mount namespace with a
    ``size`` tmpfs (e.g. ``"256k"``) on ``mount_point``; the host never sees that tmpfs, and it goes
    away with the process. ``unshare`` and ``sh`` exec in place: the process id stays the receiver's."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size},mode=0755 dicomcheck-test "$0" && exec "$@"',
        str(mount_point),
    ]


def require_mount_namespace(scratch: Path) -> None:
    """Skip (on a laptop) or fail (under CI=true) unless a tmpfs can be mounted in a new mount namespace."""
    missing = [p for p in ("unshare", "mount", "sh") if shutil.which(p) is None]
    reason = f"programs {missing} missing" if missing else None
    if reason is None:
        scratch.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            [*tmpfs_prefix(scratch, "64k"), "true"], check=False, capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            reason = (
                f"cannot mount a tmpfs in a new mount namespace (root / CAP_SYS_ADMIN needed): {probe.stderr.strip()}"
            )
    if reason:
        missing_prerequisite(reason)


def in_namespace(pid: int, path: Path) -> Path:
    """``path`` as the process ``pid`` sees it (through its own mount namespace)."""
    return Path(f"/proc/{pid}/root") / Path(path).resolve().relative_to("/")


def nodelay(assoc):
    """TCP_NODELAY on a pynetdicom requestor's socket (like ``peer_env()`` for DCMTK): a C-STORE's
    command and data set go out as two writes, and Nagle + delayed ACK cost ~40 ms an instance."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None and assoc.is_established:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # closed meanwhile (aborted by the peer)
            pass
    return assoc


@dataclass
class OrthancProcess:
    proc: subprocess.Popen
    http_port: int
    dicom_port: int
    ae_title: str
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        import httpx

        response = httpx.get(self.base + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: bytes | str | dict | list, timeout: float = 120):
        import json

        import httpx

        content = body if isinstance(body, bytes | str) else json.dumps(body)
        response = httpx.post(self.base + path, content=content, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def lookup(self, uid: str) -> list[dict]:
        return self.post("/tools/lookup", uid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


def start_orthanc(folder: Path, modalities: dict[str, list], *, dicom_server: bool = True) -> OrthancProcess:
    """Our own Orthanc (shared/reference/peers.md): loopback HTTP, free ports, storage in
    ``folder``, no plugins; C-STORE accepted only from the declared modalities on their declared
    host. ``dicom_server=False`` when Orthanc only sends: then nothing listens but loopback HTTP."""
    import json

    import httpx

    require_peer("Orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "dicomcheck-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomServerEnabled": dicom_server,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
        "StableAge": 3600,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": modalities,
        "DicomScuTimeout": 30,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = folder / "orthanc.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [peer_program("Orthanc") or "Orthanc", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=peer_env(),
        )
    orthanc = OrthancProcess(proc, http_port, dicom_port, "ORTHANC", log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited {proc.returncode}:\n{orthanc.log()[-3000:]}")
        try:
            return httpx.get(orthanc.base + "/system", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=60)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc

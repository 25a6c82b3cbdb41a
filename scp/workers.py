"""Several receiver processes behind one listening port (``dicomcheck serve --processes N``).

pynetdicom runs every association on a thread of one interpreter, so concurrent associations share
one core (the GIL): 4 senders at once are no faster than one. Here the serving process keeps the
listening socket and hands each accepted connection to the receiver process with the fewest open
associations (the descriptor travels over a Unix socket, ``SCM_RIGHTS``); each receiver process is
a full pynetdicom AE + ``Receiver`` (own file store handle, own index connection, same data
folder and index). Least-connections beats ``SO_REUSEPORT`` (a hash of the peer's port: 4
associations land on 4 different processes only 9 % of the time) and a shared ``accept()`` (an idle
process and a busy one race for each connection).

The serving process keeps what is process-wide: the settle loop (and the HTTP API), which read the
shared index. A receiver process that dies is restarted; its open associations are lost, as they
would be with one process. ``max_associations`` is shared out: each process accepts
``ceil(max_associations / N)``.

Protocol on each ``AF_UNIX``/``SOCK_SEQPACKET`` channel: parent -> worker ``C`` + one descriptor (a
connection); worker -> parent ``R`` (ready) and ``D`` (a connection finished). A worker exits when
the channel closes (parent gone) or on SIGTERM (after its open associations end).
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import cast

from pynetdicom.transport import ThreadedAssociationServer

from dicomcheck.config import Settings

from . import tuning
from .server import build_server

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen
    channel: socket.socket
    ready: bool = False
    active: int = 0
    started: float = field(default_factory=time.monotonic)


class ReceiverProcesses:
    """The listening socket and ``processes`` receiver processes; ``shutdown()`` stops them all.

    Quacks like pynetdicom's server where the CLI uses it: ``server_address`` and ``shutdown()``.
    """

    def __init__(self, settings: Settings, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.settings = settings
        self.processes = processes
        family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
        self.listener = socket.create_server((settings.bind, settings.dicom_port), family=family, backlog=128)
        self.listener.setblocking(False)
        self.server_address = self.listener.getsockname()
        self.workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._listening = False
        self._turn = 0
        self._thread = threading.Thread(target=self._loop, name="dicomcheck-dispatcher", daemon=True)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ReceiverProcesses:
        try:
            for number in range(self.processes):
                self.workers.append(self._spawn(number))
            deadline = time.monotonic() + READY_TIMEOUT
            for worker in self.workers:
                self._wait_ready(worker, deadline)
        except BaseException:
            self._stop_workers()
            self.listener.close()
            raise
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for worker in self.workers:
            self._selector.register(worker.channel, selectors.EVENT_READ, worker)
        self._listen(True)
        self._thread.start()
        log.info("%d receiver processes on %s:%d", self.processes, *self.server_address[:2])
        return self

    def shutdown(self) -> None:
        """Stop accepting, let every receiver process finish its associations, and stop them."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_TIMEOUT)
        self._stop_workers()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    # ------------------------------------------------------------------ workers
    def _spawn(self, number: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        per_process = max(1, math.ceil(self.settings.max_associations / self.processes))
        args = [
            sys.executable,
            "-m",
            "scp.workers",
            "--channel",
            str(child.fileno()),
            "--number",
            str(number),
            "--max-associations",
            str(per_process),
            "--port",
            str(self.server_address[1]),
        ]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=[child.fileno()], close_fds=True)
        child.close()
        assert proc.stdin is not None
        proc.stdin.write(self.settings.model_dump_json().encode())  # settings (may hold a DB password): not argv/env
        proc.stdin.close()
        return _Worker(number, proc, parent)

    def _wait_ready(self, worker: _Worker, deadline: float) -> None:
        worker.channel.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                if worker.proc.poll() is not None:
                    raise RuntimeError(
                        f"receiver process {worker.number} exited with {worker.proc.returncode} while starting"
                    )
                try:
                    message = worker.channel.recv(16)
                except TimeoutError:
                    continue
                if message == b"R":
                    worker.ready = True
                    return
                if not message:
                    raise RuntimeError(f"receiver process {worker.number} closed its channel while starting")
            raise RuntimeError(f"receiver process {worker.number} not ready within {READY_TIMEOUT:.0f} s")
        finally:
            worker.channel.setblocking(False)

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("receiver process %d did not stop; killing it", worker.number)
                worker.proc.kill()
                worker.proc.wait()
            worker.channel.close()

    def _replace(self, worker: _Worker) -> None:
        """A receiver process died: log it and start another in its place (ready asynchronously)."""
        if self._stopping:
            return
        code = worker.proc.wait()
        log.error(
            "receiver process %d exited with %s (%d associations lost); starting a new one",
            worker.number,
            code,
            worker.active,
        )
        self._selector.unregister(worker.channel)
        worker.channel.close()
        fresh = self._spawn(worker.number)
        fresh.channel.setblocking(False)
        self.workers[self.workers.index(worker)] = fresh
        self._selector.register(fresh.channel, selectors.EVENT_READ, fresh)

    # ------------------------------------------------------------------ dispatch loop
    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._selector.register(self.listener, selectors.EVENT_READ, "listener")
        elif not on and self._listening:
            self._selector.unregister(self.listener)
        self._listening = on

    def _candidates(self) -> list[_Worker]:
        """Ready receiver processes, fewest open associations first (ties rotate)."""
        self._turn += 1
        ready = [w for w in self.workers if w.ready]
        return sorted(ready, key=lambda w: (w.active, (w.number - self._turn) % len(self.workers)))

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data == "wake":
                    continue
                if key.data == "listener":
                    self._accept()
                else:
                    self._from_worker(key.data)
            if any(w.ready for w in self.workers) != self._listening:
                self._listen(not self._listening)
        self._listen(False)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the backlog for a moment
                log.error("accept failed: %s", exc)
                time.sleep(0.05)
                return
            with conn:  # the receiver process has its own copy once sent
                for worker in self._candidates():
                    try:
                        socket.send_fds(worker.channel, [b"C"], [conn.fileno()])
                    except BlockingIOError:  # its channel is full: the next one
                        continue
                    except OSError:  # it just died; its channel's EOF restarts it
                        worker.ready = False
                        continue
                    worker.active += 1
                    break
                else:
                    log.error("no receiver process ready: connection closed")

    def _from_worker(self, worker: _Worker) -> None:
        while True:
            try:
                message = worker.channel.recv(16)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self._replace(worker)
                return
            if message == b"D":
                worker.active = max(0, worker.active - 1)
            elif message == b"R":
                worker.ready = True


# ---------------------------------------------------------------------- the receiver process
class WorkerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server fed by the serving process's descriptors instead of ``accept()``."""

    def __init__(self, *args, channel: socket.socket, stop: threading.Event, **kwargs) -> None:
        self.channel, self.stop = channel, stop
        self._send_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        if self.socket is not None:
            self.socket.close()  # the serving process holds the listening socket
        self.socket = channel

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def tell(self, message: bytes) -> None:
        """One message to the serving process (``R`` ready, ``D`` a connection finished)."""
        with self._send_lock:
            try:
                self.channel.send(message)
            except OSError:
                pass

    def get_request(self):
        message, fds, _, _ = socket.recv_fds(self.socket, 16, 4)
        if not message:  # the serving process is gone
            self.stop.set()
            raise OSError("channel closed")
        if message != b"C" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError("unexpected message on the channel")
        client = socket.socket(fileno=fds[0])
        tuning.prepare_accepted(client)
        try:
            address = client.getpeername()
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except OSError:
            client.close()
            self.tell(b"D")
            raise
        return client, address

    def handle_error(self, request, client_address) -> None:
        log.exception("association from %s failed", client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.tell(b"D")

    def shutdown(self) -> None:
        """Stop serving and wait for the open associations (pynetdicom joins their threads); the
        server is not in ``ae._servers`` (see ``scp.server.ReceiverServer.shutdown``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _worker_main(argv: list[str]) -> int:
    import argparse

    from dicomcheck.ingest import Receiver

    parser = argparse.ArgumentParser(prog="python -m scp.workers")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--max-associations", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s %(name)s[{args.number}]: %(message)s")
    settings = Settings.model_validate_json(sys.stdin.read())
    settings = settings.model_copy(update={"dicom_port": args.port, "max_associations": args.max_associations})
    stop = threading.Event()
    receiver = Receiver(settings)
    server = cast(  # build_server makes an instance of the class it is given
        WorkerServer,
        build_server(settings, receiver, WorkerServer, channel=socket.socket(fileno=args.channel), stop=stop),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="dicomcheck-worker", daemon=True
    )
    thread.start()
    server.tell(b"R")
    # Short waits, not one long one: the kernel may deliver SIGTERM to a receiver thread, and Python runs the
    # handler on this (main) thread only when it next runs; asleep in an untimed wait it never would.
    while not stop.wait(0.25):
        pass
    server.shutdown()  # waits for open associations
    receiver.close()  # the rows queued are written, its journal removed
    receiver.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))

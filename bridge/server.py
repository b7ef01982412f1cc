"""``mailjet-bridge serve``: uvicorn serving the web app, a writer process and a delivery process.

uvicorn reads every request on its event loop, so a client that trickles its headers or its body
holds no thread; gunicorn's sync workers were each held by one such client (docs/benchmarks.md).
The web processes run ``bridge.web.rsgi``'s front through ASGI (``bridge.web.asgi``): the Mailjet
webhook on the event loop, the Flask app on threads. They parse HTTP on the loop's own thread:
under granian, whose Rust threads handed each request to the loop and back, a single-event post
cost about half again as much CPU (#11). The other work runs in processes of its own. ``serve``
supervises:

- the writer process (``mailjet-bridge writer``, ``bridge.storage.writer``): it commits the Mailjet
  webhook's writes of every web process together. Started first; restarted here if it dies (the
  requests it had not answered get a 503, and the sender retries);
- the web server: uvicorn's main process and its ``workers`` web processes, which it restarts if
  one dies;
- the delivery process (forwarder, contact sync, janitor, ``mailjet-bridge worker``), restarted here
  if it dies, with a growing pause if it keeps dying; while it drains a backlog, it starts drain
  helpers of its own (``DrainHelpers``);
- SIGTERM or Ctrl-C stops them all: requests in flight get their answer (the writer is stopped
  last, once the web processes have ended), the loops give their leases back, and everything has
  exited within about 10 s.

Every process counts metrics in PROMETHEUS_MULTIPROC_DIR (``serve`` sets it), so ``/metrics`` on any
web process adds up the counters of all of them, the delivery process's included. ``wsgi:app`` under
a plain gunicorn has none of this: there the loops run as ``mailjet-bridge worker``, and each web
process commits its own requests.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.config import Settings
from bridge.metrics import mark_process_dead
from bridge.signals import stopped_by_first
from bridge.storage.group_commit import turn_lent

if TYPE_CHECKING:
    from bridge.web.asgi import AsgiFront

log = logging.getLogger(__name__)

#: SIGTERM to exit: everything is stopped by then (what is still running after it is killed).
SHUTDOWN_SECONDS = 10.0
#: A web process answers the requests in flight for at most this long after SIGTERM, then ends.
WEB_KILL_SECONDS = 8
#: Requests for the Flask app (every route but the Mailjet webhook) one web process runs at once,
#: on threads of its own (see TakingTurns); their bodies have been read on the event loop first.
REQUEST_THREADS = 128
#: Of those, how many run app code at once. A request waits for its body from the client without a
#: turn. More turns only make requests wait on each other for the interpreter: with a turn for every
#: thread, docs/benchmarks.md measured about 12 % fewer single-event and 16 % fewer 100-event posts.
APP_TURNS = 2
#: How much of a body is read before its request takes a turn (the rest, if any, is read by the app,
#: which gives its turn up while it waits for the client). A Mailjet post of 100 events is 40 KB.
READ_AHEAD_BYTES = 256 * 1024
#: Pauses before restarting a writer or delivery process that died: doubling from the first to the last, and
#: back to the first once a process has lived for RESTART_RESET_SECONDS.
RESTART_PAUSE_SECONDS = (1.0, 30.0)
RESTART_RESET_SECONDS = 60.0
POLL_SECONDS = 0.2
#: How much less CPU priority a drain helper takes (``nice``): the webhook's processes come first.
HELPER_NICENESS = 10
#: How often the worker looks whether its forwarder drains a backlog and its helpers are there.
HELPER_CHECK_SECONDS = 0.25
#: A drain helper that ended by itself (no backlog left for it) is not started again sooner.
HELPER_REST_SECONDS = 10.0
#: Where ``serve`` tells its processes the writer's socket is (in a folder of its own, mode 0700).
WRITER_SOCKET_ENV = "BRIDGE_WRITER_SOCKET"
#: How long the writer process may take to listen before ``serve`` gives up.
WRITER_START_SECONDS = 30.0


#: uvicorn's own lines as JSON too, through the root handler (where the secrets filter sits).
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "bridge.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"uvicorn": {"level": "INFO", "propagate": True, "handlers": []}},
}


class TakingTurns:
    """A WSGI app that runs app code for at most ``turns`` requests at a time, on the server's threads.

    Turns: a request runs app code only while it holds a turn. Its body is read before it takes one
    (up to READ_AHEAD_BYTES; for the rest the app gives its turn up while it waits), so a client that
    sends its body slowly holds a thread, not a turn. The app reads the same bytes either way. A
    request waiting for its group commit (``bridge.storage.group_commit``) gives its turn up too.

    Under ``serve`` the requests run on the web process's pool of threads (``bridge.web.rsgi``),
    with their bodies already read on the event loop, so the read-ahead finds them whole; it still
    serves a WSGI server that hands the app a body still arriving. The SQLite store's connections
    are a pool, not one per thread, so threads that come and go leave nothing open.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], turns: int) -> None:
        self.app = app
        self.turns = threading.BoundedSemaphore(turns)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["wsgi.input"] = _read_ahead(environ, self.turns)
        with self.turns, turn_lent(self.turns):  # a wait for a group commit gives the turn up
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def _read_ahead(environ: dict[str, Any], turns: threading.BoundedSemaphore) -> Any:
    """The body as a new ``wsgi.input``: read here up to READ_AHEAD_BYTES, the rest left to the app."""
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    want = READ_AHEAD_BYTES if length < 0 else min(length, READ_AHEAD_BYTES)
    chunks, got, ended = [], 0, False
    while got < want:
        chunk = stream.read(want - got)
        if not chunk:
            ended = True
            break
        chunks.append(chunk)
        got += len(chunk)
    head = b"".join(chunks)
    if ended or got == length:
        return io.BytesIO(head)
    return _RestWithoutTurn(head, stream, turns)


class _RestWithoutTurn:
    """What was read ahead, then the rest of the body; reads of the rest give the turn up meanwhile."""

    def __init__(self, head: bytes, stream: Any, turns: threading.BoundedSemaphore) -> None:
        self.head = io.BytesIO(head)
        self.stream = stream
        self.turns = turns

    def _rest(self, method: str, size: int) -> bytes:
        self.turns.release()
        try:
            read = getattr(self.stream, method)
            return read() if size < 0 else read(size)
        finally:
            self.turns.acquire()

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        data = self.head.read(size)
        if size < 0:
            return data + self._rest("read", -1)
        return data or self._rest("read", size)

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        line = self.head.readline(size)
        if line.endswith(b"\n") or 0 <= size <= len(line):
            return line
        return line + self._rest("readline", size - len(line) if size >= 0 else -1)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def asgi_app() -> AsgiFront:
    """What each web process serves: the Flask app (``create_app``, every route but the Mailjet
    webhook) on REQUEST_THREADS threads, APP_TURNS at a time, and the webhook on the event loop,
    its writes committed by the writer process (``bridge.web.rsgi.LoopFront``), through ASGI."""
    from bridge.app import create_app
    from bridge.storage.writer import WriterClient
    from bridge.web.asgi import AsgiFront
    from bridge.web.rsgi import LoopFront

    app = create_app()
    path = os.environ.get(WRITER_SOCKET_ENV)
    return AsgiFront(LoopFront(TakingTurns(app, APP_TURNS), app.extensions["bridge"], REQUEST_THREADS,
                               WriterClient(path) if path else None))


def _serve_web(host: str, port: int, workers: int, client_timeout: float) -> None:
    """The web server's main process: uvicorn's, with ``workers`` web processes that it starts again
    if one dies (one included), and ``client_timeout`` seconds for each request's headers and for
    a silent body (``bridge.web.deadline``). Until uvicorn sets its own handlers, SIGTERM ends this
    process at once (nothing is served yet). Ctrl-C is left to serve, which sends SIGTERM; a web
    process ignores SIGINT too (``AsgiFront``): its main process stops it in order."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from bridge.web.deadline import ReadDeadline

    config = uvicorn.Config(
        "bridge.server:asgi_app", factory=True, host=host, port=port, workers=workers,
        loop="uvloop", http=functools.partial(ReadDeadline, timeout=client_timeout),  # type: ignore[arg-type]
        ws="none", lifespan="on", interface="asgi3",
        proxy_headers=False, server_header=False, access_log=False, log_config=LOGGING,
        timeout_graceful_shutdown=WEB_KILL_SECONDS,
    )
    sys.stdin = None  # type: ignore[assignment]  # multiprocessing's devnull: no fd a spawned worker has
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    # Ctrl-C stays serve's to act on (it stops this process with SIGTERM, in order); the web
    # processes start with it ignored too, until uvicorn's handlers and then AsgiFront's rule.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    supervisor.run()


def address_problem(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port (taken, not this machine's), or None.

    To ask before anything starts: the web server would end its process with an error of its own.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else str(exc)
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (none if /proc cannot be read)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


class ChildProcess:
    """A ``mailjet-bridge`` command as a child process, started again whenever it dies."""

    def __init__(self, name: str, command: str) -> None:
        self.name = name
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pause = RESTART_PAUSE_SECONDS[0]
        self.restart_at: float | None = None

    def start(self) -> None:
        """Started with SIGINT blocked, which it keeps through exec: Ctrl-C reaches the whole process
        group, but serve stops its children itself (SIGTERM, in order), and one that came while the
        child was still importing was a KeyboardInterrupt traceback. Blocked, not ignored, here:
        a Ctrl-C meanwhile waits for serve instead of being lost."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridge", self.command])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("%s process started", self.name, extra={"pid": self.proc.pid})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Restart the process if it died and its pause is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        if self.proc is None or self.proc.poll() is None:
            return
        mark_process_dead(self.proc.pid)
        if now - self.started >= RESTART_RESET_SECONDS:
            self.pause = RESTART_PAUSE_SECONDS[0]
        log.warning("%s process exited with code %s; starting it again in %.0f s", self.name,
                    self.proc.returncode, self.pause, extra={"pid": self.proc.pid})
        self.restart_at = now + self.pause
        self.pause = min(self.pause * 2, RESTART_PAUSE_SECONDS[1])

    def terminate(self) -> None:
        self.restart_at = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s process still running after %.0f s; killed", self.name,
                        SHUTDOWN_SECONDS, extra={"pid": self.proc.pid})
            self.proc.kill()
            self.proc.wait()
        mark_process_dead(self.proc.pid)


class DrainHelpers:
    """Forwarder processes (``mailjet-bridge drain-helper``) that join the worker's while it drains
    a backlog.

    One interpreter maps and posts about a core's worth of events (docs/benchmarks.md, R3): while
    the worker's forwarder claims full rounds, each helper claims ranges of the same backlog beside
    it, at a lower priority than the webhook's processes (``HELPER_NICENESS``), so that a drain only
    takes cores the intake leaves idle. Ranges and leases keep their work apart, as between workers
    of a scale-out. A helper ends by itself once it has delivered no backlog for a few seconds (none
    left, or Segment not taking it) or once the worker is gone; one that dies is started again,
    while the drain lasts, after a growing pause (its rounds come back when their lease ends).
    """

    def __init__(self, count: int, draining: Callable[[], bool]) -> None:
        #: Whether the worker's forwarder is delivering a backlog now (``drain_delivering``).
        self.draining = draining
        self.helpers = [ChildProcess(f"drain helper {n}", "drain-helper") for n in range(1, count + 1)]

    def check(self) -> None:
        """Note the helpers that ended; start those missing, if the forwarder is draining and their
        pause (``restart_at``) is over."""
        now = time.monotonic()
        for helper in self.helpers:
            if helper.alive():
                continue
            if helper.proc is not None:  # it ended since the last check
                self._ended(helper, now)
            if (helper.restart_at is None or now >= helper.restart_at) and self.draining():
                helper.start()

    @staticmethod
    def _ended(helper: ChildProcess, now: float) -> None:
        """A helper that ended by itself rests; one that died waits a pause that grows."""
        assert helper.proc is not None
        code, pid = helper.proc.returncode, helper.proc.pid
        mark_process_dead(pid)
        helper.proc = None
        if code == 0:
            log.info("%s process ended: no backlog it could deliver", helper.name, extra={"pid": pid})
            helper.restart_at = now + HELPER_REST_SECONDS
            helper.pause = RESTART_PAUSE_SECONDS[0]
            return
        log.warning("%s process exited with code %s; another joins the drain in %.0f s if it still "
                    "lasts", helper.name, code, helper.pause, extra={"pid": pid})
        helper.restart_at = now + helper.pause
        helper.pause = min(helper.pause * 2, RESTART_PAUSE_SECONDS[1])

    def terminate(self) -> None:
        for helper in self.helpers:
            helper.terminate()

    def wait(self, deadline: float) -> None:
        for helper in self.helpers:
            helper.wait(deadline)


def _writer_listens(writer: ChildProcess, path: str, stop: threading.Event) -> bool:
    """Until the writer process accepts connections (False if it exits or serve is stopped)."""
    deadline = time.monotonic() + WRITER_START_SECONDS
    while writer.alive() and not stop.is_set() and time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return True
            except OSError:
                pass
        stop.wait(0.02)
    return False


def accepts(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port now (a wildcard host: on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=POLL_SECONDS):
            return True
    except OSError:
        return False


class BridgeServer:
    """The writer process, the web server and one delivery process, until SIGTERM or Ctrl-C."""

    #: The exit code of ``run`` when the web server ended before it ever listened (port taken).
    NEVER_LISTENED = 2

    def __init__(self, settings: Settings, workers: int, *, delivery: bool = True) -> None:
        self.settings = settings
        self.workers = workers
        #: False: the web server alone, with the delivery loops in a ``mailjet-bridge worker`` of
        #: their own (a systemd unit each, deploy/).
        self.delivery = delivery

    def run(self, on_listening: Callable[[], None] | None = None) -> int:
        """Serve until asked to stop (exit code 0), or until the web server ends by itself (1, or
        NEVER_LISTENED when it never listened). ``on_listening`` is called once the port accepts."""
        stop = threading.Event()
        stopped_by_first(lambda _signum: stop.set())
        with tempfile.TemporaryDirectory(prefix="mailjet-bridge-") as private:  # mode 0700
            os.environ[WRITER_SOCKET_ENV] = os.path.join(private, "writer.sock")
            try:
                return self._run(stop, on_listening)
            finally:
                os.environ.pop(WRITER_SOCKET_ENV, None)

    def _run(self, stop: threading.Event, on_listening: Callable[[], None] | None) -> int:
        writer = ChildProcess("writer", "writer")
        writer.start()  # first: the web processes send it their webhook writes
        if not _writer_listens(writer, os.environ[WRITER_SOCKET_ENV], stop):
            writer.terminate()
            writer.wait(time.monotonic() + SHUTDOWN_SECONDS)
            if stop.is_set():
                return 0
            log.error("the writer process did not start; stopping")
            return 1
        web = multiprocessing.get_context("fork").Process(
            target=_serve_web, args=(self.settings.host, self.settings.port, self.workers,
                                       self.settings.client_timeout),
            name="mailjet-bridge web")
        web.start()
        delivery = ChildProcess("delivery", "worker")
        if self.delivery:
            delivery.start()
        code = 0
        listening = False
        try:
            while not stop.wait(POLL_SECONDS):
                if web.exitcode is not None:
                    if not listening:
                        code = self.NEVER_LISTENED
                        break
                    log.error("the web server exited with code %s; stopping", web.exitcode)
                    code = 1
                    break
                if not listening and accepts(self.settings.host, self.settings.port):
                    listening = True
                    if on_listening is not None:  # on a thread: it writes to the store, and this
                        # loop must never wait on storage (a locked database must not delay SIGTERM)
                        threading.Thread(target=on_listening, name="on-listening", daemon=True).start()
                delivery.check()
                writer.check()
        finally:
            deadline = time.monotonic() + SHUTDOWN_SECONDS
            if web.exitcode is None:
                web.terminate()
            delivery.terminate()
            web.join(max(0.0, deadline - time.monotonic()))
            if web.exitcode is None:
                log.warning("web server still running after %.0f s; killed", SHUTDOWN_SECONDS)
                web_processes = descendants(web.pid) if web.pid is not None else []
                web.kill()
                web.join()
                for pid in web_processes:  # the web processes outlive their main process
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            writer.terminate()  # last: the web processes' requests in flight were its to commit
            delivery.wait(deadline)
            writer.wait(deadline)
        return code

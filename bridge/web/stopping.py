"""How granian's processes hear the signals that stop them under ``serve``.

``serve`` stops its children in order with SIGTERM: the web server first (requests in flight get
their answer), the writer last. Ctrl-C in a terminal, though, sends SIGINT to the whole process
group, and granian (2.8) acts on SIGINT itself, which went wrong three ways (Ctrl-C right after
start took 8-15 s instead of under a second in 8 of 12 tries):

- its web processes stopped at once, out of order, and its main process logged "Unexpected exit";
- its main process's handler sets a ``threading.Event``. A second signal (Ctrl-C, then ``serve``'s
  SIGTERM) arriving while the first handler is inside ``Event.set`` runs the handler again in the
  same thread, which waits for the lock the first one holds: that process hung until ``serve``
  killed it 10 s later;
- a web process that got its SIGTERM while still loading the app, before its event loop listened
  for signals, lost it (the handler it inherited from the main process at fork only marks that
  process's copy of the server) and served on until granian killed it 8 s later.

So granian's main process acts on the first of SIGINT and SIGTERM and ignores any after it. It
also hears them from any of its threads: its main thread waits on that ``threading.Event`` with no
timeout, and a signal that another thread takes (the kernel picks one that has no signal pending)
runs no Python handler until that wait ends, which left it waiting for good in 4 of 16 tries. A
web process ignores SIGINT and sends itself again, once its loop runs, a SIGTERM that came before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from bridge.signals import STOPS, heard

#: A SIGTERM reached this web process before its event loop listened for signals.
_stop_asked = False


def hear_stop_signals(server: Any) -> None:
    """In granian's main process, before ``server.serve()``: its stop handler (which granian installs
    for SIGINT and SIGTERM as it starts) acts on the first stop signal, whichever thread took it
    (by the main thread's handler, or a thread reading the wakeup pipe: at most once each)."""
    granian_handler = server.signal_handler_interrupt
    server.signal_handler_interrupt = _first_only(granian_handler)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # the C handler writes each signal's number here, whichever thread the kernel gave it to
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def read() -> None:
        while numbers := os.read(read_end, 64):
            stop = next((n for n in numbers if n in STOPS), None)
            if stop is not None:
                granian_handler(stop, None)  # sets a flag and a threading.Event: safe off the main thread
                return

    threading.Thread(target=read, name="stop-signals", daemon=True).start()


def _first_only(granian_handler: Callable[..., Any]) -> Callable[[int, Any], None]:
    """The handler of the main thread, for the first stop signal only. Web processes inherit it at
    fork, and there, until their loop listens, it only notes a SIGTERM for ``loop_listens``."""
    main = os.getpid()

    def on_signal(signum: int, frame: Any) -> None:
        global _stop_asked
        if os.getpid() != main:
            _stop_asked = _stop_asked or signum == signal.SIGTERM
            return
        for stop in STOPS:  # first: a second signal would re-enter the handler (bridge.signals)
            signal.signal(stop, heard)
        granian_handler(signum, frame)

    return on_signal


def in_web_process() -> None:
    """First thing in a web process: the main process's wakeup pipe is not this process's."""
    signal.set_wakeup_fd(-1)


def loop_listens(loop: asyncio.AbstractEventLoop) -> None:
    """In a web process, once granian has given its event loop the stop signals: SIGINT is ignored
    (the main process stops this one in order), and a SIGTERM that came before the loop ran (while
    the app was loading, or since: uvloop reads signals only while it runs) is sent again once it
    runs, so that the loop hears it."""
    with contextlib.suppress(NotImplementedError):  # else granian used signal.signal
        loop.remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop_handler = signal.getsignal(signal.SIGTERM)

    def note(signum: int, frame: Any) -> None:
        global _stop_asked
        _stop_asked = True
        if callable(loop_handler):
            loop_handler(signum, frame)

    def running() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if loop_handler is None else loop_handler)
        if _stop_asked:
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, note)
    loop.call_soon(running)

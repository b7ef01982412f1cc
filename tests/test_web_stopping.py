"""How granian's processes hear the signals that stop them (``bridge.web.stopping``).

Each case runs in a Python process of its own, set up the way granian sets up its main process or
a web process, since signal handlers belong to a whole process. ``serve`` itself is tried in
``test_server.py`` (Ctrl-C right after start).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.processes import ROOT

#: What granian's main process has: a stop handler that sets a flag and a threading.Event, installed
#: for SIGINT and SIGTERM as it starts, and a main thread that waits on that Event with no timeout.
MAIN = """
import os, signal, sys, threading, time
import uvloop
from bridge.web import stopping
from bridge.signals import STOPS

class Server:
    def __init__(self):
        self.calls, self.main_loop_interrupt = [], threading.Event()
    def signal_handler_interrupt(self, signum, frame):
        self.calls.append(signum)
        self.main_loop_interrupt.set()

server = Server()
stopping.hear_stop_signals(server)
for sig in STOPS:  # what granian's set_main_signals does as it starts
    signal.signal(sig, server.signal_handler_interrupt)
"""

#: A web process once granian has given its event loop the stop signals (``set_loop_signals``) and
#: called the app's ``__rsgi_init__``: ``stopped`` gets the signal the loop heard.
WEB_LOOP = """
import asyncio, os, signal
import uvloop
from bridge.web import stopping
from bridge.signals import STOPS

loop = uvloop.new_event_loop()
stopped = loop.create_future()
for sig in STOPS:
    loop.add_signal_handler(sig, lambda s=sig: stopped.done() or stopped.set_result(s))
stopping.loop_listens(loop)
"""


def run(script: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def test_a_stop_signal_that_another_thread_takes_still_wakes_granians_main_thread() -> None:
    """The main thread blocks SIGTERM here, so the kernel must give it to another thread: before,
    no Python handler ran until the main thread's wait ended, which it never did."""
    done = run(MAIN + """
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
os.kill(os.getpid(), signal.SIGTERM)
if not server.main_loop_interrupt.wait(10):
    sys.exit("the main thread was not woken")
print(sorted(set(server.calls)))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[15]"]
    assert "Traceback" not in done.stderr


def test_granians_main_process_acts_on_the_first_stop_signal_only() -> None:
    """Ctrl-C reaches every process of the group, and serve sends SIGTERM after it: the second one
    must not run granian's handler again (inside the first's Event.set it deadlocked), nor print
    CPython's 'ignored due to race condition' error."""
    done = run(MAIN + """
os.kill(os.getpid(), signal.SIGINT)
os.kill(os.getpid(), signal.SIGTERM)
server.main_loop_interrupt.wait(10)
time.sleep(0)  # let a pending handler run
print(server.calls[0], [signal.getsignal(s).__name__ for s in STOPS])
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "['heard',", "'heard']"]
    assert done.stderr == ""


def test_a_web_process_hears_a_sigterm_that_came_while_it_started_and_ignores_sigint() -> None:
    """A web process forked from the main process gets SIGINT (Ctrl-C) and SIGTERM (its main
    process stopping it) while it loads the app, with the handler it inherited: it stops on SIGTERM
    as soon as its loop runs, and the main process hears none of it."""
    done = run(MAIN + """
import asyncio
pid = os.fork()
if pid == 0:
    stopping.in_web_process()  # first thing in web_app()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    loop = uvloop.new_event_loop()
    stopped = loop.create_future()
    for sig in STOPS:  # what granian's set_loop_signals does
        loop.add_signal_handler(sig, lambda s=sig: stopped.done() or stopped.set_result(s))
    stopping.loop_listens(loop)
    try:
        heard = loop.run_until_complete(asyncio.wait_for(stopped, 5))
    except asyncio.TimeoutError:
        heard = None
    os._exit(0 if heard == signal.SIGTERM else 3)
_, status = os.waitpid(pid, 0)
time.sleep(0.2)
print(os.waitstatus_to_exitcode(status), server.calls)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "[]"]


def test_after_loop_listens_sigint_is_ignored_and_sigterm_stops_the_running_loop() -> None:
    done = run(WEB_LOOP + """

async def main():
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.2)
    assert not stopped.done()
    os.kill(os.getpid(), signal.SIGTERM)
    return await asyncio.wait_for(stopped, 5)

print(loop.run_until_complete(main()))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["15"]


def test_a_sigterm_after_the_loop_got_its_signals_but_before_it_runs_is_not_lost() -> None:
    """uvloop reads signals only while it runs: one that came before went unheard."""
    done = run(WEB_LOOP + """
os.kill(os.getpid(), signal.SIGTERM)
try:
    print(loop.run_until_complete(asyncio.wait_for(stopped, 5)))
except asyncio.TimeoutError:
    print("unheard")
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["15"]

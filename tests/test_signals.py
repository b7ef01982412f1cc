"""Stop signals acted on once in a process (``bridge.signals``), in a Python process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.processes import ROOT


def test_a_second_stop_signal_inside_the_first_handler_does_not_run_it_again() -> None:
    """The first handler holds a lock when the second signal comes, as ``Event.set`` does: run
    again, it would wait for that lock for good (a process ``serve`` had to kill after 10 s)."""
    script = textwrap.dedent("""
        import os, signal, threading, time
        from bridge.signals import stopped_by_first

        lock, acted = threading.Lock(), []

        def act(signum):
            with lock:  # what Event.set does
                acted.append(signum)
                os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C, then the supervisor's SIGTERM
                time.sleep(0.1)  # the second handler runs here, in this thread

        previous = stopped_by_first(act)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # a third: nothing either
        time.sleep(0.1)
        print(acted, previous[signal.SIGINT] is signal.default_int_handler)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True, capture_output=True,
                          timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[2]", "True"]
    assert done.stderr == ""

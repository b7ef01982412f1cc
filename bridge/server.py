"""``mailjet-bridge serve``: gunicorn serving the app, with a forwarder thread in every worker.

Each worker process is web + forwarder; leases keep the forwarders' work apart. ``wsgi:app`` under a
plain gunicorn has none of this: there the forwarder runs as ``mailjet-bridge worker``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from . import create_app
from .config import Settings

FORWARDER_JOIN_SECONDS = 10.0


def _graceful_ctrl_c(arbiter: Any) -> None:
    """Ctrl-C stops like SIGTERM: requests in flight get their answer, then workers exit."""
    arbiter.handle_int = arbiter.handle_term


def _start_forwarder(worker: Any) -> None:
    # The terminal sends Ctrl-C to the workers too; let them finish the request in hand.
    signal.signal(signal.SIGINT, worker.handle_exit)
    services = worker.wsgi.extensions["bridge"]
    stop = threading.Event()
    forwarder = services.make_forwarder()
    thread = threading.Thread(
        target=forwarder.run_forever, args=(stop,), name="forwarder", daemon=True
    )
    thread.start()
    worker.bridge_forwarder = (stop, thread)


def _stop_forwarder(server: Any, worker: Any) -> None:
    stop, thread = getattr(worker, "bridge_forwarder", (None, None))
    if stop is not None:
        stop.set()
        thread.join(FORWARDER_JOIN_SECONDS)


class BridgeServer(BaseApplication):
    """gunicorn, configured from Settings rather than its own command line."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", f"{self.settings.host}:{self.settings.port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("worker_class", "sync")
        self.cfg.set("graceful_timeout", 10)
        self.cfg.set("on_starting", _graceful_ctrl_c)
        self.cfg.set("post_worker_init", _start_forwarder)
        self.cfg.set("worker_exit", _stop_forwarder)
        self.cfg.set("proc_name", "mailjet-bridge")

    def load(self) -> Any:
        return create_app(self.settings)

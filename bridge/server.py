"""``mailjet-bridge serve``: gunicorn serving the app, with the delivery loops in every worker.

Each worker process is web + forwarder + contact sync; leases keep the loops' work apart. ``wsgi:app``
under a plain gunicorn has none of this: there the loops run as ``mailjet-bridge worker``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from bridge.app import create_app
from bridge.config import Settings
from bridge.delivery.loop import start_loops
from bridge.metrics import mark_process_dead

LOOP_JOIN_SECONDS = 10.0
#: gunicorn's own lines as JSON too, on the same stderr handler as the bridge's.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "bridge.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}


def _graceful_ctrl_c(arbiter: Any) -> None:
    """Ctrl-C stops like SIGTERM: requests in flight get their answer, then workers exit."""
    arbiter.handle_int = arbiter.handle_term


def _start_loops(worker: Any) -> None:
    # The terminal sends Ctrl-C to the workers too; let them finish the request in hand.
    signal.signal(signal.SIGINT, worker.handle_exit)
    bridge = worker.wsgi.extensions["bridge"]
    stop = threading.Event()
    worker.bridge_loops = (stop, start_loops(bridge.loops(), stop))


def _stop_loops(server: Any, worker: Any) -> None:
    stop, threads = getattr(worker, "bridge_loops", (None, []))
    if stop is not None:
        stop.set()
        for thread in threads:
            thread.join(LOOP_JOIN_SECONDS)


def _forget_worker(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)


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
        self.cfg.set("post_worker_init", _start_loops)
        self.cfg.set("worker_exit", _stop_loops)
        self.cfg.set("child_exit", _forget_worker)
        self.cfg.set("proc_name", "mailjet-bridge")
        self.cfg.set("logconfig_dict", LOGGING)

    def load(self) -> Any:
        return create_app(self.settings)

"""The ``mailjet-bridge`` command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import click

from .config import Settings, load_settings
from .errors import ConfigError, StorageUnavailable


def _settings() -> Settings:
    """Settings from the environment; bad values end the command with one line each."""
    try:
        return load_settings(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"configuration error: {problem}", err=True)
        sys.exit(2)


def _app(settings: Settings) -> Any:
    from . import create_app

    try:
        return create_app(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"configuration error: {problem}", err=True)
        sys.exit(2)
    except StorageUnavailable as exc:
        click.echo(f"storage error: {exc}", err=True)
        sys.exit(3)


@click.group(help="Mailjet email events to Segment, and Segment identifies to Mailjet.")
@click.version_option(package_name="mailjet-segment-bridge")
def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command(help="Serve the webhooks and forward events (gunicorn, what `make run` runs).")
@click.option("--workers", type=click.IntRange(1, 64), help="gunicorn workers [BRIDGE_WORKERS].")
def serve(workers: int | None) -> None:
    from .server import BridgeServer

    settings = _settings()
    app = _app(settings)  # migrate and announce credentials once, before any worker starts
    app.extensions["bridge"].store.close()
    click.echo(f"mailjet-segment-bridge serving on http://{settings.host}:{settings.port}")
    BridgeServer(settings, workers or settings.workers).run()


@main.command(help="Run the delivery loops alone, beside `gunicorn wsgi:app` web processes.")
def worker() -> None:
    from .services import start_loops

    services = _app(_settings()).extensions["bridge"]
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = start_loops(services.make_loops(), stop)
    stop.wait()
    for thread in threads:
        thread.join(10)
    services.store.close()

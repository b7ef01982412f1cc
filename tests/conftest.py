"""Shared fixtures: a scrubbed environment, a fake Segment server, and apps on temporary SQLite files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.config import Settings, load_settings
from bridge.storage import open_store
from bridge.storage.base import Store
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment
from tests.pg_cluster import pg_cluster  # noqa: F401  (fixture)
from tests.processes import make_run, missing, start_make_run  # noqa: F401  (fixtures)

FIXTURES = Path(__file__).parent / "fixtures"
#: The README's screenshots and the benchmark plots: tracked, refreshed only by `make screenshots`
#: and `make bench-docs`, never by a test run.
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"
_DOCS_IMG_KEY = pytest.StashKey[dict[str, str]]()
T0 = 1_800_000_000.0
PREFIXES = ("SEGMENT_", "MAILJET_", "BRIDGE_")


#: Fixtures that start a process, a browser or reach a database server; these modules spawn processes.
SLOW_FIXTURES = {"start_make_run", "make_run", "pg_database", "pg_url", "pg_cluster", "browser"}
SLOW_MODULES = {"test_faults.py", "test_end_to_end.py", "test_browser.py", "test_memory.py"}


def _docs_images() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DOCS_IMG.glob("*"))}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_DOCS_IMG_KEY] = _docs_images()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that wrote into docs/img/ fails, whatever its tests said: tests write screenshots
    and plots to their temporary folders only."""
    before = session.config.stash.get(_DOCS_IMG_KEY, None)
    if before is not None and _docs_images() != before:
        print("\nthe test run changed docs/img/, a tracked folder: write to tmp_path instead")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` what `make test-fast` leaves out, so a new test is fast unless it needs a server.

    A ``postgres`` parameter (fetching pg_url or pg_cluster inside) makes only that case slow.
    """
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (item.path.name in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or "postgres" in [v for v in params.values() if isinstance(v, str)]):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's shell must not leak configuration into the tests, and a test that sets no
    database must not touch the real default one ($XDG_DATA_HOME/mailjet-bridge/bridge.db): the
    data folder is the test's own, in this process and in every process it starts."""
    for name in list(os.environ):
        if name.startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


class Clock:
    """A clock tests move by hand, so backoff and Retry-After are checked without sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_TABLES = ("outbox, quarantine, identities, settings, login_failures, attempts, backfill_checkpoints, "
             "backfill_messages, sent_batches, delivery_ranges")


def _pg_answers() -> str | None:
    """None if the PostgreSQL server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_SERVER, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no server to test against
        return f"no PostgreSQL server answers at {PG_SERVER}: {str(exc).strip()[:120]}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session, migrated once; dropped at the end."""
    reason = _pg_answers()
    if reason:
        missing(reason)
    import psycopg

    name = f"mjbridge_test_{os.getpid()}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
    first = open_store(url)
    first.migrate()
    first.close()
    yield url
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {PG_TABLES} RESTART IDENTITY")
    return pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def store_on_each_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store, once on SQLite and once on PostgreSQL (a database of the test's own)."""
    url = (request.getfixturevalue("pg_url") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'store.db'}")
    s = open_store(url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store on a temporary file."""
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def mailjet_events() -> dict[str, dict[str, Any]]:
    """One sample of each of the seven event types, as in Mailjet's Event API guide."""
    return json.loads((FIXTURES / "mailjet" / "events.json").read_text())


@pytest.fixture
def fake_segment() -> Iterator[FakeSegment]:
    server = FakeSegment().start()
    yield server
    server.stop()


@pytest.fixture
def fake_mailjet() -> Iterator[FakeMailjet]:
    server = FakeMailjet().start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path, fake_segment: FakeSegment) -> dict[str, str]:
    return {
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake_segment.url,
        "SEGMENT_CDN_URL": fake_segment.url,
        "SEGMENT_WEBHOOK_TOKEN": "test-webhook-token",
        # configured, so an app is built without hashing a generated password (scrypt, ~70 ms)
        "BRIDGE_ADMIN_PASSWORD": "test-admin-password",
        "BRIDGE_WEBHOOK_USERNAME": "mailjet",
        "BRIDGE_WEBHOOK_PASSWORD": "s3cret-pass",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    app = create_app(settings, announce=lambda line: None)
    yield app
    app.extensions["bridge"].store.close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def auth() -> dict[str, str]:
    return basic("mailjet", "s3cret-pass")

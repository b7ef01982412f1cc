"""Storage backends behind one contract (``Store``); ``open_store`` picks one from a URL."""

from __future__ import annotations

from bridge.errors import ConfigError
from bridge.storage.base import Store
from bridge.storage.postgres import PostgresStore
from bridge.storage.sqlite import SQLiteStore


def open_store(url: str, *, sqlite_synchronous: str = "full") -> Store:
    """``sqlite:///relative/or/absolute/path`` (``sqlite:////abs`` also works) or ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :] or ":memory:", synchronous=sqlite_synchronous.upper())
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ConfigError([f"BRIDGE_DATABASE_URL={url!r} is not valid: use sqlite:///path or postgresql://…"])

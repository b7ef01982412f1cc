"""Structured logs: one JSON object a line, with secrets scrubbed from every line as a last guard."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> list[str]:
    """The names a record got from ``extra=``, in the order given (one set difference, in C)."""
    names = vars(record)
    extra = names.keys() - _STANDARD
    return [k for k in names if k in extra] if extra else []


class JsonFormatter(logging.Formatter):
    """One JSON object a line. Every request logs a line, so the fixed cost is kept small: one
    encoder for every line, and the time's text up to the second made once per second."""

    _ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        """ISO-8601 UTC to the millisecond, as ``datetime.isoformat(timespec="milliseconds")``."""
        second = int(created)
        micro = round((created - second) * 1e6)  # rounded as datetime.fromtimestamp rounds
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:  # a race here only makes the same text twice
            self._second_text = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{micro // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _extras(record):
            line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self._ENCODER.encode(line)


class RedactSecrets(logging.Filter):
    """Replace any known secret (write key, API secret, passwords) by ``[redacted]``.

    The secrets are re-read at most every ``refresh_seconds`` (they may come from the store), and a
    failure to read them keeps the last known ones: logging must never fail, least of all while the
    database is down and that is what is being logged.
    """

    def __init__(self, secrets: Callable[[], Iterable[str | None]], refresh_seconds: float = 5.0) -> None:
        super().__init__()
        self.secrets = secrets
        self.refresh_seconds = refresh_seconds
        self._known: list[str] = []
        self._read_at = float("-inf")
        self._reading = threading.local()

    def _values(self) -> list[str]:
        now = time.monotonic()
        if now - self._read_at >= self.refresh_seconds and not getattr(self._reading, "busy", False):
            self._reading.busy = True  # reading the store may log; don't recurse
            try:
                self._known = [s for s in self.secrets() if s and len(s) >= 4]
                self._read_at = now
            except Exception:  # keep the last known secrets; try again next time
                self._read_at = now - self.refresh_seconds / 2
            finally:
                self._reading.busy = False
        return self._known

    def filter(self, record: logging.LogRecord) -> bool:
        values = self._values()
        text = record.getMessage()
        for secret in values:
            text = text.replace(secret, "[redacted]")
        record.msg, record.args = text, ()
        for key in _extras(record):
            value = getattr(record, key)
            if isinstance(value, str):
                for secret in values:
                    value = value.replace(secret, "[redacted]")
                setattr(record, key, value)
        return True


def configure(level: int = logging.INFO) -> logging.Handler:
    """JSON lines on stderr for the whole process (the CLI calls this once)."""
    # No line names its source file or thread, so the logging HOWTO's "Optimization" applies:
    # finding the caller's frame was a fifth of an access line's cost (docs/benchmarks.md).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs every request URL at DEBUG, and the settings CDN's URL holds the write key.
    logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))
    return handler


def guard_secrets(secrets: Callable[[], Iterable[str | None]]) -> None:
    """Add the redaction filter to every handler of the root logger (once per process)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets(secrets))

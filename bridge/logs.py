"""Structured logs: one JSON object a line, with secrets scrubbed from every line as a last guard."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

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
        fields = {key: getattr(record, key) for key in _extras(record)}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any]) -> str:
        """The line of a record with these parts (``fields``: its extra fields, in order)."""
        return self._ENCODER.encode({"ts": self._timestamp(created), "level": level.lower(),
                                     "logger": logger, "msg": msg, **fields})


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
        record.msg, record.args = self.redact(record.getMessage()), ()
        for key in _extras(record):
            value = getattr(record, key)
            if isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True

    def redact(self, text: str, secrets: Iterable[str] | None = None) -> str:
        for secret in self._values() if secrets is None else secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def redact_fields(self, msg: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A message and extra fields as ``filter`` leaves them (the secrets read once)."""
        secrets = self._values()
        return self.redact(msg, secrets), {
            k: self.redact(v, secrets) if isinstance(v, str) else v for k, v in fields.items()}


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


def log_line(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra=fields)``, for a line logged on every request.

    Where that line's only way out is the handler ``configure`` installed (with its secret filter),
    the same line is written to that handler's stream directly: the same JSON, the same secrets
    redacted, at about a third of the cost of a record passed through ``logging`` (40 against 21 µs;
    ``serve``: 7 % less CPU a request in its web processes, docs/benchmarks.md). Anywhere else
    (another handler, a filter on the way, pytest's log capture) it goes through ``logging``."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_handler(logger, level)
    if handler is None:
        logger.log(level, msg, extra=fields)
        return
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
    for flt in handler.filters:
        msg, fields = flt.redact_fields(msg, fields)  # type: ignore[union-attr]
    try:
        text = formatter.line(time.time(), logging.getLevelName(level), logger.name, msg, fields)
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(text + handler.terminator)
            handler.flush()
    except Exception:  # as StreamHandler.emit: never raise from logging
        handler.handleError(logging.makeLogRecord({"name": logger.name, "msg": msg, "levelno": level}))


def _sole_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The handler ``configure`` installed, if a record of ``logger`` would reach it and nothing else:
    no handler or filter on the way up, and only secret filters on it."""
    node: logging.Logger | None = logger
    while node is not None and node.parent is not None:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    handlers = node.handlers if node is not None else []
    if len(handlers) != 1 or node is None or node.filters:
        return None
    handler = handlers[0]
    if (type(handler) is not logging.StreamHandler or type(handler.formatter) is not JsonFormatter
            or level < handler.level or not all(type(f) is RedactSecrets for f in handler.filters)):
        return None
    return handler

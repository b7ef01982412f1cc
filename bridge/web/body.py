"""Request bodies read within the size limit, with a 413 the client gets to read.

A server that answers before reading an oversized body and then closes the connection resets it
while the client is still sending, and the client never sees the answer. So an oversized body is
read and thrown away (up to a bound) before the 413 goes out. A chunked body has no length to check
up front: it is read up to the limit, and one byte more means 413, never a silently cut body.

``read_body`` works on the WSGI environ alone: the Mailjet webhook reads its body without Flask
(``bridge.web.mailjet_webhook``), the other routes through the hook registered here. Under
``serve`` every body is read on the event loop instead (``bridge.web.rsgi.read_whole``): at once
when its declared length is within the limit, else with ``read_chunks``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from flask import Flask, abort, request

#: How much of an oversized body is read and discarded so the client can read the 413; beyond
#: this the connection is closed (an attacker's 1 GB upload is not drained).
DRAIN_LIMIT = 64 * 1024 * 1024
CHUNK = 64 * 1024


class TooLarge(Exception):
    """The body is over the limit; what was sent has been drained (within DRAIN_LIMIT)."""


def too_large_message(limit: int) -> str:
    return f"the body is over the {limit:,}-byte limit (BRIDGE_MAX_BODY_BYTES)"


def _drain(stream: Any, remaining: int) -> None:
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def content_length(environ: dict[str, Any]) -> int | None:
    """The declared length, or None when absent or not a number (as werkzeug reads it)."""
    return parse_length(environ.get("CONTENT_LENGTH"))


def parse_length(value: str | None) -> int | None:
    """A Content-Length header's value as a length, or None when absent or not a number."""
    try:
        length = int(value or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def _read_exactly(stream: Any, length: int) -> bytes:
    """``length`` bytes, or fewer if the body ends first: one ``read`` may return less than asked
    (a server's stream, or serve's read-ahead followed by the rest)."""
    chunks, got = [], 0
    while got < length:
        chunk = stream.read(length - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The whole body, or TooLarge (after draining what was sent) when it is over ``limit`` bytes.

    No declared length and no end-of-body marker from the server means no body, as werkzeug has it.
    """
    stream = environ["wsgi.input"]
    length = content_length(environ)
    if length is not None:
        if length > limit:
            if length <= DRAIN_LIMIT:
                _drain(stream, length)
            raise TooLarge
        return _read_exactly(stream, length)
    if not environ.get("wsgi.input_terminated"):
        return b""
    chunks, size = [], 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            _drain(stream, DRAIN_LIMIT)
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_chunks(chunks: AsyncIterable[bytes], length: int | None, limit: int) -> bytes:
    """``read_body`` for a server with an event loop (RSGI): the body from its chunks as they come.
    Over the limit, what was sent is read and thrown away (within DRAIN_LIMIT) before TooLarge."""
    declared_too_large = length is not None and length > limit
    if length is not None and length > max(limit, DRAIN_LIMIT):  # too much to drain
        raise TooLarge
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size <= limit and not declared_too_large:
            parts.append(chunk)
        elif size > DRAIN_LIMIT:  # over the limit, and more than is worth draining
            break
    if declared_too_large or size > limit:
        raise TooLarge
    return b"".join(parts)


def request_body(limit: int) -> bytes:
    """The current Flask request's whole body, or a 413 when it is over ``limit`` bytes."""
    try:
        return read_body(request.environ, limit)
    except TooLarge:
        abort(413)


def register(app: Flask) -> None:
    @app.before_request
    def _refuse_oversized_after_reading_it() -> None:
        """A declared length over the limit: drain the body (within bounds), then 413."""
        length, limit = request.content_length, app.config.get("MAX_CONTENT_LENGTH")
        if length is not None and limit is not None and length > limit:
            if length <= DRAIN_LIMIT:
                _drain(request.environ["wsgi.input"], length)
            abort(413)

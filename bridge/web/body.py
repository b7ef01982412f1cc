"""Request bodies read within the size limit, with a 413 the client gets to read.

A server that answers before reading an oversized body and then closes the connection resets it
while the client is still sending, and the client never sees the answer. So an oversized body is
read and thrown away (up to a bound) before the 413 goes out. A chunked body has no length to check
up front: it is read up to the limit, and one byte more means 413, never a silently cut body.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, request

#: How much of an oversized body is read and discarded so the client can read the 413; beyond
#: this the connection is closed (an attacker's 1 GB upload is not drained).
DRAIN_LIMIT = 64 * 1024 * 1024
CHUNK = 64 * 1024


def _drain(stream: Any, remaining: int) -> None:
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def request_body(limit: int) -> bytes:
    """The whole body, or a 413 (after draining what was sent) when it is over ``limit`` bytes."""
    environ = request.environ
    length = request.content_length
    if length is not None or not environ.get("wsgi.input_terminated"):
        return request.get_data(cache=False)  # a length over the limit was refused before the view
    stream = environ["wsgi.input"]
    chunks, size = [], 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            _drain(stream, DRAIN_LIMIT)
            abort(413)
        chunks.append(chunk)
    return b"".join(chunks)


def register(app: Flask) -> None:
    @app.before_request
    def _refuse_oversized_after_reading_it() -> None:
        """A declared length over the limit: drain the body (within bounds), then 413."""
        length, limit = request.content_length, app.config.get("MAX_CONTENT_LENGTH")
        if length is not None and limit is not None and length > limit:
            if length <= DRAIN_LIMIT:
                _drain(request.environ["wsgi.input"], length)
            abort(413)

"""How a view reaches the bridge's objects: ``current_app.extensions['bridge']``, set by the factory."""

from __future__ import annotations

from flask import current_app

from bridge.wiring import Bridge


def current_bridge() -> Bridge:
    """The bridge's objects, built once per app by ``wiring.build``."""
    return current_app.extensions["bridge"]

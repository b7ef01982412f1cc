"""Who a payload is about. Both directions key people by the same normalised email."""

from __future__ import annotations

from typing import Any


def normalize_email(value: Any) -> str | None:
    """Trim and lower-case an address; anything else (or an empty string) is no email."""
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None

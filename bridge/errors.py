"""Exceptions shared across layers. A leaf module: it imports nothing from the bridge."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of the bridge's own errors."""


class ConfigError(BridgeError):
    """Configuration that cannot work; carries one line per problem, each naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StorageUnavailable(BridgeError):
    """The store could not commit or read; the webhook answers 503 so the sender retries."""

"""Validation of webhook events against the JSON Schemas in ``schemas/mailjet/`` and ``schemas/segment/``.

Schemas are standard Draft 2020-12 files. ``jsonschema`` checks each schema against the meta-schema
once at start-up; events are validated with ``jsonschema-rs`` validators built once, since that is
about 100x cheaper per event here (docs/benchmarks.md) and the accept path runs it for every event.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs

from bridge.errors import ConfigError
from bridge.storage.base import QuarantineEntry


def _json_path(parts: list[Any]) -> str:
    """``["a", 0]`` as ``$.a[0]``, the form admins see in quarantine entries."""
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


@functools.lru_cache(maxsize=128)
def _meta_checked(text: str) -> str:
    """A schema's text once checked against the Draft 2020-12 meta-schema. The check costs about
    8 ms a schema and depends on the text alone, so each text is checked once per process."""
    jsonschema.Draft202012Validator.check_schema(json.loads(text))
    return text


class EventValidator:
    """One compiled validator per event type, chosen by the event's type field."""

    def __init__(
        self, schemas: Mapping[str, Mapping[str, Any]], *, type_field: str = "event",
        unknown_types_valid: bool = False,
    ) -> None:
        self._validators = {
            name: jsonschema_rs.Draft202012Validator(dict(schema)) for name, schema in schemas.items()
        }
        self.event_types: tuple[str, ...] = tuple(sorted(schemas))
        self.type_field = type_field
        self.unknown_types_valid = unknown_types_valid

    @classmethod
    def from_directory(cls, folder: Path, **options: Any) -> EventValidator:
        """Load and meta-check ``<folder>/*.json`` (one per type); a broken schema stops start-up."""
        schemas: dict[str, dict[str, Any]] = {}
        for path in sorted(Path(folder).glob("*.json")):
            try:
                schema = json.loads(_meta_checked(path.read_text(encoding="utf-8")))
            except (ValueError, jsonschema.SchemaError) as exc:
                raise ConfigError([f"schema {path}: {exc}"]) from exc
            schemas[path.stem] = schema
        if not schemas:
            raise ConfigError([f"no event schemas found in {folder}"])
        return cls(schemas, **options)

    @classmethod
    def mailjet(cls, root: Path) -> EventValidator:
        """Mailjet Event API events: ``schemas/mailjet/<event>.json``; an unknown ``event`` is invalid."""
        return cls.from_directory(Path(root) / "mailjet", type_field="event")

    @classmethod
    def segment(cls, root: Path) -> EventValidator:
        """Segment events: ``schemas/segment/<type>.json``; other types need only a ``type``."""
        return cls.from_directory(Path(root) / "segment", type_field="type", unknown_types_valid=True)

    def errors(self, event: Any) -> list[dict[str, str]]:
        """Validation errors for one event as ``{path, message}``; empty when it is valid."""
        if not isinstance(event, dict):
            return [{"path": "$", "message": "an event must be a JSON object"}]
        kind = event.get(self.type_field)
        validator = self._validators.get(kind) if isinstance(kind, str) else None
        if validator is None:
            if isinstance(kind, str) and self.unknown_types_valid:
                return []
            if self.type_field not in event:
                message = f"'{self.type_field}' is a required property"
            elif not isinstance(kind, str) and self.unknown_types_valid:
                message = f"'{self.type_field}' must be a string"
            else:
                message = (
                    f"unknown event type {json.dumps(kind)}; expected one of "
                    + ", ".join(self.event_types)
                )
            return [{"path": f"$.{self.type_field}", "message": message}]
        if validator.is_valid(event):
            return []
        return [
            {"path": _json_path(list(err.instance_path)), "message": err.message}
            for err in validator.iter_errors(event)
        ]


def quarantine_entry(source: str, text: str, errors: list[dict[str, str]]) -> QuarantineEntry:
    """An invalid event as kept for admins: its exact text, its errors, and a fingerprint, so a
    redelivered invalid event is quarantined once."""
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    return QuarantineEntry(source, fingerprint, text, json.dumps(errors))

"""Registering the bridge's callback URL with Mailjet's Event API, for every event type."""

from __future__ import annotations

from bridge.delivery.upstream import UpstreamError
from bridge.inbound.fields import EVENT_TYPES
from bridge.outbound.mailjet import MailjetClient
from bridge.wiring import Bridge


def register_callbacks(bridge: Bridge, url: str, backup_url: str | None = None) -> list[str]:
    """Make every event type post to ``url`` (grouped, Version 2), and to ``backup_url`` as backup.

    Idempotent: a callback that is already right is left alone, one with another URL or version is
    updated (which also revives a suspended one). Raises UpstreamError when Mailjet refuses.
    """
    auth = bridge.current.mailjet_credentials()
    if not auth:
        raise UpstreamError(None, "no Mailjet API key pair is set")
    client = MailjetClient(bridge.current.mailjet_api_url())
    lines: list[str] = []
    try:
        existing = {(c.get("EventType"), bool(c.get("IsBackup"))): c for c in client.event_callbacks(auth)}
        wanted = [(url, False)] + ([(backup_url, True)] if backup_url else [])
        for target, backup in wanted:
            role = "backup" if backup else "primary"
            for event_type in EVENT_TYPES:
                current = existing.get((event_type, backup))
                if current is None:
                    client.create_event_callback({"EventType": event_type, "Url": target, "Version": 2,
                                                  "IsBackup": backup, "Status": "alive"}, auth)
                    lines.append(f"{event_type} ({role}): registered")
                    continue
                if current.get("Status") == "dead":
                    lines.append(f"{event_type} ({role}): Mailjet had marked it dead (suspended)")
                desired = {"Url": target, "Version": 2, "Status": "alive"}
                if any(current.get(k) != v for k, v in desired.items()):
                    client.update_event_callback(int(current["ID"]), desired, auth)
                    lines.append(f"{event_type} ({role}): updated")
                else:
                    lines.append(f"{event_type} ({role}): already registered")
    finally:
        client.close()
    return lines

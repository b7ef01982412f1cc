"""Checks an operator runs: do the Segment write key and the Mailjet key pair work? And a test event."""

from __future__ import annotations

import json
import random
import time

from bridge.delivery.upstream import UpstreamError
from bridge.inbound.intake import sort_events
from bridge.inbound.segment import SegmentClient
from bridge.outbound.mailjet import MailjetClient
from bridge.wiring import Bridge

#: Checks answer quickly or say so: an operator is waiting.
CHECK_TIMEOUT = (5.0, 10.0)


def check_segment(bridge: Bridge) -> tuple[bool, str]:
    """Try the write key with a harmless call: an empty batch."""
    key = bridge.current.write_key()
    url = bridge.current.segment_api_url()
    if not key:
        return False, "Segment: no write key is set (SEGMENT_WRITE_KEY or config set segment.write_key)"
    client = SegmentClient(url, timeout=CHECK_TIMEOUT)
    try:
        client.post_batch(key, [])
    except UpstreamError as exc:
        if exc.status in (401, 403):
            return False, f"Segment: the write key was refused ({exc.status}); check it and the region"
        return False, f"Segment: no good answer from {url}: {exc.describe()}"
    finally:
        client.close()
    return True, f"Segment: the write key works ({url})"


def check_mailjet(bridge: Bridge) -> tuple[bool, str]:
    auth = bridge.current.mailjet_credentials()
    url = bridge.current.mailjet_api_url()
    if not auth:
        return False, "Mailjet: no API key pair is set (MAILJET_API_KEY and MAILJET_API_SECRET)"
    client = MailjetClient(url, timeout=CHECK_TIMEOUT)
    try:
        client.check(auth)
    except UpstreamError as exc:
        if exc.status in (401, 403):
            return False, f"Mailjet: the API key pair was refused ({exc.status})"
        return False, f"Mailjet: no good answer from {url}: {exc}"
    finally:
        client.close()
    return True, f"Mailjet: the API key pair works ({url})"


def send_test_event(bridge: Bridge) -> str:
    """Queue a Mailjet ``sent`` event for test@example.com, as if Mailjet had posted it."""
    event = {"event": "sent", "time": int(time.time()), "MessageID": random.randrange(10**15, 10**16),
             "email": "test@example.com", "customcampaign": "mailjet-segment-bridge test",
             "smtp_reply": "250 OK (test event from mailjet-bridge send-test-event)"}
    text = json.dumps(event)
    intake = sort_events([(event, text)], bridge.mailjet_validator)
    bridge.store.accept(intake.items, [], time.time())
    return f"MessageID {event['MessageID']}"

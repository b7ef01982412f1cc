"""Checks an operator runs: do the Segment write key and the Mailjet key pair work? And a test event."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bridge.delivery.upstream import UpstreamError, Verdict
from bridge.inbound.intake import sort_events
from bridge.inbound.segment import SegmentClient
from bridge.inbound.source import UNVERIFIED, KeyVerifier, hold_for
from bridge.outbound.mailjet import MailjetClient
from bridge.wiring import Bridge

#: Checks answer quickly or say so: an operator is waiting.
CHECK_TIMEOUT = (5.0, 10.0)


def _verdict(upstream: str, credential: str, url: str, call: Callable[[], object],
             refused_hint: str = "") -> tuple[bool, str]:
    """Make one harmless authenticated call and say, in one sentence, what it showed."""
    try:
        call()
    except UpstreamError as exc:
        if exc.verdict is Verdict.AUTH:
            return False, f"{upstream}: the {credential} was refused ({exc.status}){refused_hint}"
        return False, f"{upstream}: no good answer from {url}: {exc.describe()}"
    return True, f"{upstream}: the {credential} works ({url})"


def check_segment(bridge: Bridge) -> tuple[bool, str]:
    """Ask Segment's settings CDN whether it knows the write key (and where its source is), then
    try the tracking API with a harmless empty batch. The CDN's verdict is stored for every process."""
    key = bridge.current.write_key()
    if not key:
        return False, "Segment: no write key is set (SEGMENT_WRITE_KEY or config set segment.write_key)"
    verifier = KeyVerifier(bridge.store, lambda: bridge.settings.segment_cdn_url, clock=time.time)
    try:
        verdict = verifier.ask(key, time.time())
    finally:
        verifier.close()
    hold = hold_for(verdict, bridge.current.segment_region(), bridge.current.explicit_api_url() is not None)
    if hold:
        return False, f"Segment: {hold[1]}"
    url = bridge.current.segment_api_url()
    client = SegmentClient(url, timeout=CHECK_TIMEOUT)
    try:
        ok, sentence = _verdict("Segment", "write key", url, lambda: client.post_batch(key, []),
                                "; check it and the region")
    finally:
        client.close()
    if ok and verdict.verdict == UNVERIFIED:
        sentence += f", but it is not verified: {verdict.detail}"
    elif ok:
        sentence = f"Segment: {verdict.detail}; the tracking API answers ({url})"
    return ok, sentence


def check_mailjet(bridge: Bridge) -> tuple[bool, str]:
    """Try the API key pair with a harmless read of one contact property definition."""
    auth = bridge.current.mailjet_credentials()
    if not auth:
        return False, "Mailjet: no API key pair is set (MAILJET_API_KEY and MAILJET_API_SECRET)"
    url = bridge.current.mailjet_api_url()
    client = MailjetClient(url, timeout=CHECK_TIMEOUT)
    try:
        return _verdict("Mailjet", "API key pair", url, lambda: client.check(auth))
    finally:
        client.close()


def send_test_event(bridge: Bridge) -> str:
    """Queue a Mailjet ``sent`` event for test@example.com, as if Mailjet had posted it."""
    event = {"event": "sent", "time": int(time.time()), "MessageID": random.randrange(10**15, 10**16),
             "email": "test@example.com", "customcampaign": "mailjet-segment-bridge test",
             "smtp_reply": "250 OK (test event from mailjet-bridge send-test-event)"}
    text = json.dumps(event)
    intake = sort_events([(event, text)], bridge.mailjet_validator)
    bridge.store.accept(intake.items, [], time.time())
    return f"MessageID {event['MessageID']}"


#: Hosts whose plain-http callback URL never crosses a network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def startup_warnings(bridge: Bridge) -> list[str]:
    """What an operator should fix before real traffic arrives (shown by serve, worker and check)."""
    warnings = []
    public = urlsplit(bridge.settings.public_url)
    if public.scheme == "http" and public.hostname not in LOOPBACK_HOSTS:
        warnings.append(f"BRIDGE_PUBLIC_URL {bridge.settings.public_url} is plain http: the webhook "
                        "credentials in Mailjet's callback URL would cross the network unencrypted; "
                        "serve it behind HTTPS")
    return warnings

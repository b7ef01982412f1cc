"""The peer the bridge is measured against: what a team would write first.

Flask parses the body, ``jsonschema.validate`` checks each event against the bridge's own schema
files (loaded once, as plain dicts), and analytics-python's ``track`` puts each event on its in-memory
queue, which a thread of each worker sends to Segment. Nothing is stored before the 200: a crash or a
full queue (10,000 calls) loses events. Served by ``gunicorn -w 2`` (sync workers) from the peer's own
virtual environment, which bench/run.py makes (bench/.peer-venv: flask, gunicorn, jsonschema,
segment-analytics-python).

Environment: PEER_SEGMENT_URL (where analytics-python sends, the benchmark's sink), PEER_SCHEMA_DIR
(default: the checkout's schemas/), PEER_AUTH (the expected ``Authorization`` header).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import segment.analytics as analytics
from flask import Flask, abort, request

SCHEMA_DIR = Path(os.environ.get("PEER_SCHEMA_DIR") or Path(__file__).resolve().parent.parent / "schemas")
SCHEMAS = {path.stem: json.loads(path.read_text()) for path in (SCHEMA_DIR / "mailjet").glob("*.json")}
NAMES = {"sent": "Email Delivered", "open": "Email Opened", "click": "Email Link Clicked",
         "bounce": "Email Bounced", "blocked": "Email Blocked", "spam": "Email Marked as Spam",
         "unsub": "Email Unsubscribed"}
AUTH = os.environ.get("PEER_AUTH", "")

analytics.write_key = os.environ.get("PEER_WRITE_KEY", "bench-write-key")
analytics.host = os.environ.get("PEER_SEGMENT_URL", "http://127.0.0.1:9")

app = Flask(__name__)


@app.post("/webhooks/mailjet")
def receive() -> dict[str, Any]:
    if AUTH and request.headers.get("Authorization") != AUTH:
        abort(401)
    body = request.get_json(force=True)
    events = body if isinstance(body, list) else [body]
    for event in events:
        jsonschema.validate(event, SCHEMAS[event["event"]])
        analytics.track(anonymous_id=event.get("email") or str(event.get("MessageID")),
                        event=NAMES[event["event"]], properties=event,
                        timestamp=datetime.fromtimestamp(event["time"], tz=UTC))
    return {"accepted": len(events)}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}

"""Per-event cost of each step of the accept path, in process (no HTTP). Run: make bench-more.

Decides by measurement: which validator runs on the hot path, whether a faster JSON parser is worth a
dependency, and what a durable commit costs for one event and for a grouped body of 100.
"""

from __future__ import annotations

import json
import tempfile
import time
import timeit
from pathlib import Path

import jsonschema

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.inbound.intake import sort_events
from bridge.inbound.track import dedupe_key
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage.sqlite import SQLiteStore

EVENT = {
    "event": "open", "time": 1433103519, "MessageID": 19421777396190490,
    "Message_GUID": "1ab23cd4-e567-8901-2345-6789f0gh1i2j", "email": "api@mailjet.com",
    "mj_campaign_id": 7173, "mj_contact_id": 320, "customcampaign": "", "CustomID": "helloworld",
    "Payload": "", "ip": "127.0.0.1", "geo": "US",
    "agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
}


def per_call(fn, number: int) -> float:
    """Best of 5 runs, microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def events(n: int, start: int = 0) -> list[dict]:
    """Unique events whose time advances, as in real traffic."""
    return [{**EVENT, "MessageID": EVENT["MessageID"] + start + i,
             "time": EVENT["time"] + (start + i) // 200} for i in range(n)]


def main() -> None:
    rows: list[tuple[str, float]] = []
    validator = EventValidator.mailjet(DEFAULT_SCHEMA_DIR)
    schema = json.loads((DEFAULT_SCHEMA_DIR / "mailjet" / "open.json").read_text())
    reference = jsonschema.Draft202012Validator(schema)
    rows.append(("validate 1 event, jsonschema (Draft202012Validator.is_valid)",
                 per_call(lambda: reference.is_valid(EVENT), 2_000)))
    rows.append(("validate 1 event, jsonschema-rs (used)", per_call(lambda: validator.errors(EVENT), 50_000)))
    rows.append(("dedupe key (sha256 of the key fields)", per_call(lambda: dedupe_key(EVENT), 50_000)))
    body = json.dumps(events(100)).encode()
    rows.append(("parse 100-event body, json.loads", per_call(lambda: json.loads(body), 500)))
    rows.append(("parse 100-event body keeping each event's text (used)",
                 per_call(lambda: parse_body(body), 500)))
    try:
        import orjson

        rows.append(("parse 100-event body, orjson.loads (not used)",
                     per_call(lambda: orjson.loads(body), 500)))
    except ImportError:
        pass
    parsed = parse_body(body)
    rows.append(("validate + dedupe key for 100 events (sort_events)",
                 per_call(lambda: sort_events(parsed, validator), 200)))
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("FULL", "NORMAL"):
            store = SQLiteStore(Path(tmp) / f"{sync}.db", synchronous=sync)
            store.migrate()
            counter = [0]

            def commit(n: int, store: SQLiteStore = store, counter: list[int] = counter) -> None:
                counter[0] += n
                body = json.dumps(events(n, counter[0] * 1000)).encode()
                store.accept(sort_events(parse_body(body), validator).items, [], time.time())

            rows.append((f"commit 1 event, SQLite WAL synchronous={sync}", per_call(lambda: commit(1), 200)))
            rows.append((f"commit 100 events in one transaction, synchronous={sync}",
                         per_call(lambda: commit(100), 20)))
            store.close()
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  µs per call")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:10.1f}")


if __name__ == "__main__":
    main()

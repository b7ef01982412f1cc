"""An Engage audience burst: 20,000 identifies posted to /webhooks/segment in signed batches of 1,000
(as Webhooks (Actions) batching sends them), applied to a fake Mailjet by the contact sync.

Reports jobs made, time to accept, and time until every contact is applied. Run: make bench-more.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.app import create_app  # noqa: E402
from bridge.config import load_settings  # noqa: E402
from tests.fakes.mailjet import FakeMailjet  # noqa: E402

TOTAL, BATCH, SECRET = 20_000, 1_000, "bench-secret"


def main() -> None:
    fake = FakeMailjet().start()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(load_settings({
            "BRIDGE_DATABASE_URL": f"sqlite:///{tmp}/burst.db", "SEGMENT_SHARED_SECRET": SECRET,
            "MAILJET_API_KEY": "mj-key", "MAILJET_API_SECRET": "mj-secret", "MAILJET_API_URL": fake.url,
            "BRIDGE_WEBHOOK_USERNAME": "u", "BRIDGE_WEBHOOK_PASSWORD": "p",
        }), announce=lambda _: None)
        bridge = app.extensions["bridge"]
        stop = threading.Event()
        loops = [loop for loop in bridge.loops() if type(loop).__name__ == "ContactSync"]
        threads = [threading.Thread(target=loop.run_forever, args=(stop,)) for loop in loops]
        for thread in threads:
            thread.start()
        client = app.test_client()
        started = time.monotonic()
        for start in range(0, TOTAL, BATCH):
            events = [{"type": "identify", "userId": f"u{n}", "messageId": f"m{n}",
                       "traits": {"email": f"member{n}@example.com", "new_audience": True}}
                      for n in range(start, start + BATCH)]
            body = json.dumps(events, separators=(",", ":"))
            first = json.dumps(events[0], separators=(",", ":"))
            signature = hmac.new(SECRET.encode(), first.encode(), hashlib.sha1).hexdigest()
            response = client.post("/webhooks/segment", data=body, headers={
                "Content-Type": "application/json", "X-Signature": signature})
            assert response.json["accepted"] == BATCH, response.json
        accepted = time.monotonic() - started
        while bridge.store.stats(time.time())["delivered"] < TOTAL:
            if time.monotonic() - started > 300:
                raise SystemExit("not applied within 300 s")
            time.sleep(0.05)
        applied = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(30)
        bridge.store.close()
    fake.stop()
    sizes = [len(job.contacts) for job in fake.jobs.values()]
    print(f"{TOTAL:,} identifies in {TOTAL // BATCH} signed batches: {len(sizes)} jobs {sizes}, "
          f"all accepted after {accepted:.1f} s, all applied after {applied:.1f} s")


if __name__ == "__main__":
    main()

"""A paced load of Mailjet posts: a fixed offered rate of events per second, as Mailjet sends them.

Request ``i`` is due at ``start + i / request_rate``; a few threads, each with a keep-alive session,
send each request at its due time (at once when they are late, so a slow server lowers the achieved
rate instead of the offered one piling up without bound). For each 200 it records when the answer
arrived and the Segment messageIds of the events in the body, computed with the bridge's own rule
(``bridge.inbound.track``), so they can be matched with what the sink received.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field

import requests
from common import AUTH, event, event_text

from bridge.inbound.track import dedupe_key, message_id


@dataclass
class Load:
    """What a paced load sent and what it got back."""

    offered: float
    seconds: float
    per_body: int
    started: float = 0.0
    ended: float = 0.0
    accepted: int = 0
    failed: int = 0
    #: Segment messageId -> when the 200 of its post arrived (time.time()).
    answered: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def achieved(self) -> float:
        """Events answered 200 per second of the load."""
        return self.accepted / max(self.ended - self.started, 1e-9)


def paced_load(url: str, offered: float, seconds: float, *, seed: int, per_body: int | None = None,
               threads: int = 8, stop: threading.Event | None = None) -> Load:
    """Offer ``offered`` events/s to ``url``/webhooks/mailjet for ``seconds``; blocks until done.

    Bodies carry ``per_body`` events (default: enough for 100 posts a second, at least 1).
    """
    per_body = per_body or max(1, round(offered / 100))
    request_rate = offered / per_body
    total = max(1, int(request_rate * seconds))
    load = Load(offered, seconds, per_body)
    bodies: list[tuple[bytes, list[str]]] = []
    for i in range(total):
        events = [event(i * per_body + j, seed) for j in range(per_body)]
        texts = [event_text(e) for e in events]
        body = texts[0] if per_body == 1 else "[" + ",".join(texts) + "]"
        bodies.append((body.encode(), [message_id(dedupe_key(e)) for e in events]))
    counter = itertools.count()
    counter_lock = threading.Lock()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {AUTH}"}
    target = url.rstrip("/") + "/webhooks/mailjet"
    load.started = time.time()
    start = time.monotonic()

    def sender() -> None:
        with requests.Session() as session:
            while stop is None or not stop.is_set():
                with counter_lock:
                    i = next(counter)
                if i >= total:
                    return
                due = start + i / request_rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                body, ids = bodies[i]
                try:
                    response = session.post(target, data=body, headers=headers, timeout=30)
                    ok = response.status_code == 200
                except requests.RequestException:
                    ok = False
                done = time.time()
                with load.lock:
                    if ok:
                        load.accepted += len(ids)
                        for mid in ids:
                            load.answered[mid] = done
                    else:
                        load.failed += len(ids)

    workers = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 120)
    load.ended = time.time()
    return load


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``inf`` counts: a never-delivered event makes a high one infinite)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(pct / 100 * len(ordered))) - 1)]


def latencies(load: Load, arrived: dict[str, float]) -> list[float]:
    """For each event answered 200: seconds from the 200 to its arrival at the sink (inf if never)."""
    return [arrived[mid] - t if mid in arrived else float("inf") for mid, t in load.answered.items()]

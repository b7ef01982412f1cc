"""``GET /healthz``: 200 with detail when the bridge can accept, 503 with the reason when it cannot."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bridge.app import create_app
from bridge.config import Settings, load_settings
from bridge.storage.base import NewItem
from bridge.web import health
from bridge.web.health import COUNT_LIMIT


def test_healthy_bridge_reports_queue_and_delivery_state(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ok" and body["storage"] == "ok"
    assert body["segment"]["state"] == "starting"
    assert set(body["queue"]) >= {"pending", "leased", "delivered", "dead", "quarantined",
                                  "oldest_pending_age_seconds"}
    assert body["queue"]["counted_up_to"] == COUNT_LIMIT


def test_a_probe_stops_counting_a_backlog_and_says_so(client: Any, monkeypatch: Any) -> None:
    """A load balancer's probe costs the same with a backlog of millions: the counts stop at the
    limit (10,000; 3 here), which the answer gives."""
    store = client.application.extensions["bridge"].store
    store.accept([NewItem("segment_track", f"k{n}", "sent", "{}") for n in range(5)], [], time.time())
    monkeypatch.setattr(health, "COUNT_LIMIT", 3)
    queue = client.get("/healthz?scope=accept").json["queue"]
    assert (queue["pending"], queue["counted_up_to"]) == (3, 3)
    assert queue["stuck"] == {"leased_past_lease": 0, "due_unclaimed": 0}
    assert store.stats(time.time())["pending"] == 5  # the admin page, stats and /metrics: exact


def test_missing_write_key_is_reported_but_events_are_still_accepted(env: dict[str, str]) -> None:
    del env["SEGMENT_WRITE_KEY"]
    app = create_app(load_settings(env), announce=lambda _: None)
    assert app.test_client().get("/healthz").json["segment"]["state"] == "starting"
    app.extensions["bridge"].loops()[0].run_once()  # the state is the one the loops store
    body = app.test_client().get("/healthz").json
    assert body["status"] == "degraded"
    assert body["segment"]["state"] == "no_write_key"
    app.extensions["bridge"].store.close()


def test_unavailable_storage_gives_503_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings, announce=lambda _: None)
    store = app.extensions["bridge"].store
    store.close()
    db = Path(settings.database_url.removeprefix("sqlite:///"))
    for leftover in db.parent.glob(db.name + "*"):
        leftover.unlink()
    db.mkdir()  # the database path is now a directory: nothing can be opened
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["storage"] == "unavailable"
    assert response.json["reason"].startswith("cannot open SQLite database"), response.json
    shutil.rmtree(db)


def test_a_stored_no_key_state_gives_way_once_a_key_is_set(env: dict[str, str]) -> None:
    """The state comes from the loops; a key set since the last run makes "no_write_key" stale."""
    without = create_app(load_settings({**env, "SEGMENT_WRITE_KEY": ""}), announce=lambda _: None)
    without.extensions["bridge"].loops()[0].run_once()
    assert without.test_client().get("/healthz").json["segment"]["state"] == "no_write_key"
    without.extensions["bridge"].store.close()
    with_key = create_app(load_settings(env), announce=lambda _: None)
    with_key.extensions["bridge"].loops()[0].run_once()  # nothing queued: no delivery, no "ok" yet
    body = with_key.test_client().get("/healthz").json
    assert body["segment"]["state"] == "starting" and body["status"] == "ok"
    with_key.extensions["bridge"].store.close()


def test_a_probe_never_scans_the_outbox(client: Any, monkeypatch: Any) -> None:
    """What keeps a probe cheap with any backlog, checked by plan rather than by the clock: every
    query /healthz runs finds its rows through an index (SQLite's plan says SEARCH), none reads the
    whole outbox or one of its indexes from end to end (SCAN outbox)."""
    store = client.application.extensions["bridge"].store
    store.accept([NewItem("segment_track", f"k{n}", "sent", "{}") for n in range(5)], [], time.time())
    read, queries = store._read, []

    def recording(sql: str, params: Any = ()) -> Any:
        queries.append((sql, tuple(params)))
        return read(sql, params)

    monkeypatch.setattr(store, "_read", recording)
    assert client.get("/healthz").status_code == 200
    plans = {sql: [row[-1] for row in read(f"EXPLAIN QUERY PLAN {sql}", params)[1]]
             for sql, params in queries if "outbox" in sql}
    assert len(plans) >= 3  # the kinds, the counts, the oldest
    scans = {sql: plan for sql, plan in plans.items() if any(d.startswith("SCAN outbox") for d in plan)}
    assert not scans

"""Metrics, JSON logs and the health states an operator watches."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import create_app
from bridge.config import load_settings
from bridge.logs import JsonFormatter, RedactSecrets, log_line
from tests.fakes.segment import FakeSegment, Scripted


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_events_by_type_and_stage(app: Any, client: Any, auth: dict[str, str],
                                                mailjet_events: dict[str, Any]) -> None:
    body = [mailjet_events["open"], mailjet_events["open"], mailjet_events["click"],
            {"event": "x", "time": 1}]
    client.post("/webhooks/mailjet", json=body, headers=auth)
    bridge = app.extensions["bridge"]
    for loop in bridge.loops()[:1]:
        loop.run_once()
    found = samples(client.get("/metrics").text)
    assert found[("bridge_events_received_total", (("source", "mailjet"), ("type", "open")))] == 2
    assert found[("bridge_events_accepted_total", (("source", "mailjet"), ("type", "open")))] == 1
    assert found[("bridge_events_duplicate_total", (("source", "mailjet"), ("type", "open")))] == 1
    assert found[("bridge_events_quarantined_total", (("source", "mailjet"),))] == 1
    assert found[("bridge_events_delivered_total", (("type", "click"), ("upstream", "segment")))] == 1
    assert found[("bridge_delivery_latency_seconds_count", (("upstream", "segment"),))] == 1
    assert found[("bridge_queue_depth", (("state", "quarantined"),))] == 1
    assert ("bridge_oldest_pending_age_seconds", ()) in found


@pytest.mark.parametrize(("key", "script", "state", "reason"), [
    ("typo-key-123", None, "unknown_write_key", "Segment does not know the write key"),
    ("good-key", 401, "auth_failed", "Segment refused the write key"),
], ids=["unknown-to-the-cdn", "refused-by-the-api"])
def test_healthz_is_503_while_the_key_holds_delivery_but_accept_scope_stays_200(
        env: dict[str, str], fake_segment: FakeSegment, auth: dict[str, str],
        mailjet_events: dict[str, Any], key: str, script: int | None, state: str, reason: str) -> None:
    app = create_app(load_settings({**env, "SEGMENT_WRITE_KEY": key}), announce=lambda _: None)
    client = app.test_client()
    client.post("/webhooks/mailjet", json=mailjet_events["sent"], headers=auth)
    if script:
        fake_segment.then(Scripted(script))
    app.extensions["bridge"].loops()[0].run_once()
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json["reason"] == reason
    assert health.json["segment"]["state"] == state
    assert client.get("/healthz?scope=accept").status_code == 200
    assert client.post("/webhooks/mailjet", json=mailjet_events["open"], headers=auth).status_code == 200
    found = samples(client.get("/metrics").text)
    assert found[("bridge_delivery_state", (("state", state), ("upstream", "segment")))] == 1
    app.extensions["bridge"].store.close()


def test_json_lines_carry_extra_fields_and_never_a_secret() -> None:
    record = logging.LogRecord("bridge.access", logging.INFO, __file__, 1, "key is %s", ("wk-abcdef",), None)
    record.path = "/webhooks/mailjet"
    record.note = "also wk-abcdef here"
    RedactSecrets(lambda: ["wk-abcdef", None, ""]).filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "key is [redacted]" and line["note"] == "also [redacted] here"
    assert line["path"] == "/webhooks/mailjet" and line["level"] == "info"
    assert line["logger"] == "bridge.access" and line["ts"].endswith("+00:00")


@pytest.fixture
def root_handler() -> Any:
    """The root logger as ``configure`` and ``guard_secrets`` leave it, writing to a buffer; the
    logger put back as it was afterwards."""
    import io

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets(lambda: ["wk-abcdef"]))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_line_written_directly_is_the_line_logging_writes(root_handler: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``log_line`` skips ``logging``'s machinery where the line's only way out is our handler:
    the same JSON, fields in the same order, the same secrets redacted, the level honoured."""
    access = logging.getLogger("bridge.access")
    fields = {"method": "POST", "path": "/x/wk-abcdef", "status": 200, "ms": 1.5, "client": None}
    # pytest adds its log capture to the root logger after fixtures are set up: only ours, here
    monkeypatch.setattr(logging.getLogger(), "handlers", [root_handler])

    def no_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        raise AssertionError("the line went through logging")

    with monkeypatch.context() as patched:  # the direct way makes no LogRecord at all
        patched.setattr(access, "makeRecord", no_record)
        log_line(access, logging.INFO, "request wk-abcdef", fields)
    access.info("request wk-abcdef", extra=fields)
    log_line(access, logging.DEBUG, "not written", fields)
    direct, logged = [json.loads(line) for line in root_handler.stream.getvalue().splitlines()]
    assert direct.pop("ts")[:19] == logged.pop("ts")[:19]
    assert list(direct.items()) == list(logged.items())
    assert direct["msg"] == "request [redacted]" and direct["path"] == "/x/[redacted]"
    assert fields["path"] == "/x/wk-abcdef"  # the caller's fields are left as they were


def test_a_line_goes_through_logging_where_something_else_listens(root_handler: Any) -> None:
    """Another handler (pytest's capture, an operator's own) or a filter on the way: logging as usual."""
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    access = logging.getLogger("bridge.access")
    access.addHandler(listener)
    try:
        log_line(access, logging.INFO, "request", {"status": 200})
    finally:
        access.removeHandler(listener)
    assert [r.status for r in seen] == [200]  # type: ignore[attr-defined]
    assert json.loads(root_handler.stream.getvalue())["status"] == 200


def test_one_access_line_per_request_without_credentials(client: Any, auth: dict[str, str],
                                                        caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.access"):
        client.post("/webhooks/mailjet?token=abc", json=[], headers=auth)
    (record,) = [r for r in caplog.records if r.name == "bridge.access"]
    assert (record.method, record.path, record.status) == ("POST", "/webhooks/mailjet", 200)
    assert "s3cret-pass" not in caplog.text and "token=abc" not in caplog.text


def test_redaction_survives_a_failing_secret_source() -> None:
    """While the database is down, reading the secrets fails: logging must still work."""
    calls = {"n": 0}

    def secrets() -> list[str]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("database down")
        return ["wk-abcdef"]

    redact = RedactSecrets(secrets, refresh_seconds=0)
    for _ in range(3):
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key wk-abcdef", (), None)
        assert redact.filter(record) and record.msg == "key [redacted]"
    assert calls["n"] >= 2


def test_a_metrics_token_closes_metrics_and_the_detail_of_healthz(env: dict[str, str]) -> None:
    """With BRIDGE_METRICS_TOKEN set, /metrics needs it and /healthz shows others its status only
    (on the previous main both were open to anyone)."""
    app = create_app(load_settings({**env, "BRIDGE_METRICS_TOKEN": "metrics-token-123"}),
                     announce=lambda _: None)
    client = app.test_client()
    try:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        scrape = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-123"})
        assert scrape.status_code == 200 and "bridge_queue_depth" in scrape.text
        anonymous = client.get("/healthz")
        assert anonymous.status_code == 200 and anonymous.json == {"status": "ok"}
        detailed = client.get("/healthz", headers={"Authorization": "Bearer metrics-token-123"})
        assert "queue" in detailed.json and "segment" in detailed.json
    finally:
        app.extensions["bridge"].store.close()


def test_without_a_metrics_token_both_stay_open(client: Any) -> None:
    assert client.get("/metrics").status_code == 200
    assert "queue" in client.get("/healthz").json


def test_behind_a_proxy_the_webhook_logs_the_real_client(env: dict[str, str], auth: dict[str, str],
                                                         caplog: Any) -> None:
    """The Mailjet webhook is answered in front of Flask (plain WSGI); ProxyFix still goes first."""
    app = create_app(load_settings({**env, "BRIDGE_PROXY_COUNT": "1"}), announce=lambda _: None)
    with caplog.at_level(logging.INFO, logger="bridge.access"):
        answer = app.test_client().post("/webhooks/mailjet", json=[], headers={
            **auth, "X-Forwarded-For": "203.0.113.7"})
    assert answer.status_code == 200 and answer.json == {"accepted": 0, "duplicate": 0, "quarantined": 0}
    (record,) = [r for r in caplog.records if r.name == "bridge.access"]
    assert record.client == "203.0.113.7" and record.bytes_in == 2 and record.ms >= 0
    app.extensions["bridge"].store.close()

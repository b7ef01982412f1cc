"""The fakes themselves, with plain ``requests`` against 127.0.0.1: they must behave as the real
services are published to behave, unfriendly parts included (issue #9, item 9)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment, Scripted

TIMEOUT = 5.0


def basic(user: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def post_batch(fake: FakeSegment, key: str | None, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> requests.Response:
    data = body if body is not None else b'{"batch":[{"type":"track","event":"E","messageId":"m1",' \
                                         b'"userId":"u"}],"sentAt":"2027-01-01T00:00:00.000Z"}'
    return requests.post(f"{fake.url}/v1/batch", data=data, timeout=TIMEOUT,
                         headers={"Content-Type": "application/json",
                                  **(basic(key) if key is not None else {}), **(headers or {})})


def settings(fake: FakeSegment, key: str, timeout: float = TIMEOUT) -> requests.Response:
    return requests.get(f"{fake.url}/v1/projects/{key}/settings", timeout=timeout)


# -- the tracking API -----------------------------------------------------------------------------

def test_a_known_key_is_accepted(fake_segment: FakeSegment) -> None:
    answer = post_batch(fake_segment, "good-key")
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    assert fake_segment.message_ids() == ["m1"]
    (request,) = fake_segment.requests
    assert (request.write_key, request.dropped, request.sent_at) == ("good-key", "",
                                                                      "2027-01-01T00:00:00.000Z")


def test_an_unknown_key_gets_200_and_the_events_are_dropped(fake_segment: FakeSegment) -> None:
    answer = post_batch(fake_segment, "no-such-key-0000")
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    assert fake_segment.accepted == []
    assert [c["messageId"] for c in fake_segment.dropped_unknown_key] == ["m1"]
    assert fake_segment.requests[0].dropped == "unknown_key"


def test_the_write_key_may_be_in_the_body(fake_segment: FakeSegment) -> None:
    body = b'{"batch":[{"type":"track","event":"E","messageId":"m2","userId":"u"}],"writeKey":"good-key"}'
    assert post_batch(fake_segment, None, body).status_code == 200
    assert fake_segment.message_ids() == ["m2"]


@pytest.mark.parametrize("key", ["", None], ids=["empty", "missing"])
def test_an_empty_or_missing_key_is_a_400(fake_segment: FakeSegment, key: str | None) -> None:
    answer = post_batch(fake_segment, key)
    assert answer.status_code == 400
    assert "write key" in answer.json()["message"]
    assert fake_segment.accepted == [] and fake_segment.dropped_unknown_key == []


def test_a_scripted_401_still_happens_for_any_key(fake_segment: FakeSegment) -> None:
    fake_segment.then(Scripted(401))
    assert post_batch(fake_segment, "good-key").status_code == 401
    assert fake_segment.accepted == []


def test_a_scripted_200_for_an_unknown_key_still_drops(fake_segment: FakeSegment) -> None:
    fake_segment.then(Scripted(200, delay=0.05))
    assert post_batch(fake_segment, "no-such-key-0000").status_code == 200
    assert fake_segment.accepted == [] and len(fake_segment.dropped_unknown_key) == 1


def test_the_wrong_region_is_dropped_when_the_endpoint_has_one(fake_segment: FakeSegment) -> None:
    fake_segment.regions["good-key"] = "eu"
    assert post_batch(fake_segment, "good-key").status_code == 200  # no endpoint region: taken
    fake_segment.endpoint_region = "us"
    assert post_batch(fake_segment, "good-key").status_code == 200
    assert len(fake_segment.accepted) == 1 and len(fake_segment.dropped_wrong_region) == 1


@pytest.mark.parametrize("body", [
    pytest.param(b'{"batch":[{"type":"track","event":"E","userId":"u","properties":{"x":NaN}}]}', id="NaN"),
    pytest.param(b'{"batch":[{"type":"track","event":"E","userId":"u","properties":{"x":Infinity}}]}',
                 id="Infinity"),
    pytest.param(b'{"batch":[{"type":"track","event":"E","userId":"u","properties":{"x":-Infinity}}]}',
                 id="-Infinity"),
    pytest.param(b'{"batch":[{"type":"track","event":"\xff\xfe","userId":"u"}]}', id="invalid-utf8"),
    pytest.param(b'{"batch":[{"type":"track","event":"\xed\xa0\x80","userId":"u"}]}', id="utf8-surrogate"),
    pytest.param('{"batch":[]}'.encode("utf-16"), id="utf16"),
    pytest.param(b'{"batch":[', id="truncated"),
])
def test_segment_refuses_json_that_is_not_strict(fake_segment: FakeSegment, body: bytes) -> None:
    answer = post_batch(fake_segment, "good-key", body)
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_json"
    assert fake_segment.accepted == [] and fake_segment.dropped_unknown_key == []


def test_a_body_that_is_not_an_object_is_a_400_not_a_crash(fake_segment: FakeSegment) -> None:
    assert post_batch(fake_segment, "good-key", b"[]").status_code == 400


# -- the settings CDN ---------------------------------------------------------------------------

def test_cdn_404_for_an_unknown_key(fake_segment: FakeSegment) -> None:
    assert settings(fake_segment, "no-such-key-0000").status_code == 404
    assert fake_segment.cdn_counts["no-such-key-0000"] == 1


@pytest.mark.parametrize(("region", "host"), [(None, "api.segment.io/v1"),
                                              ("us", "api.segment.io/v1"),
                                              ("eu", "events.eu1.segmentapis.com/v1")])
def test_cdn_200_names_the_key_and_its_region(fake_segment: FakeSegment, region: str | None,
                                              host: str) -> None:
    if region:
        fake_segment.regions["good-key"] = region
    answer = settings(fake_segment, "good-key")
    assert answer.status_code == 200
    entry: dict[str, Any] = answer.json()["integrations"]["Segment.io"]
    assert (entry["apiKey"], entry["apiHost"]) == ("good-key", host)


def test_cdn_counts_requests_per_key(fake_segment: FakeSegment) -> None:
    for key in ("good-key", "good-key", "other"):
        settings(fake_segment, key)
    assert fake_segment.cdn_counts == {"good-key": 2, "other": 1}
    assert [r.status for r in fake_segment.cdn_requests] == [200, 200, 404]


def test_cdn_reads_a_percent_encoded_key(fake_segment: FakeSegment) -> None:
    fake_segment.write_keys.add("odd/key+1")
    assert settings(fake_segment, requests.utils.quote("odd/key+1", safe="")).status_code == 200
    assert fake_segment.cdn_counts == {"odd/key+1": 1}


def test_cdn_scripted_failures_then_recovery(fake_segment: FakeSegment) -> None:
    fake_segment.cdn_fail(2, status=503)
    assert [settings(fake_segment, "good-key").status_code for _ in range(3)] == [503, 503, 200]
    assert fake_segment.cdn_counts["good-key"] == 3


def test_cdn_hang_is_a_client_timeout(fake_segment: FakeSegment) -> None:
    fake_segment.cdn_fail(1, status=503, delay=1.0)
    with pytest.raises(requests.Timeout):
        settings(fake_segment, "good-key", timeout=0.2)
    assert settings(fake_segment, "good-key").status_code == 200


def test_cdn_outage_and_tracking_are_separate(fake_segment: FakeSegment) -> None:
    fake_segment.cdn_outage(30)
    assert settings(fake_segment, "good-key").status_code == 503
    assert post_batch(fake_segment, "good-key").status_code == 200


# -- Mailjet ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param(b'{"Name":"score","Datatype":"float","x":NaN}', id="NaN"),
    pytest.param(b'{"Name":"score","Datatype":"float","x":Infinity}', id="Infinity"),
    pytest.param(b'{"Name":"score","Datatype":"float","x":-Infinity}', id="-Infinity"),
    pytest.param(b'{"Name":"sc\xffore","Datatype":"float"}', id="invalid-utf8"),
])
def test_mailjet_refuses_json_that_is_not_strict(fake_mailjet: FakeMailjet, body: bytes) -> None:
    answer = requests.post(f"{fake_mailjet.url}/v3/REST/contactmetadata", data=body, timeout=TIMEOUT,
                           headers={"Content-Type": "application/json", **basic("mj-key", "mj-secret")})
    assert answer.status_code == 400
    error = answer.json()
    assert set(error) == {"ErrorInfo", "ErrorMessage", "StatusCode"}
    assert error["StatusCode"] == 400 and error["ErrorMessage"].startswith("Invalid json input")
    assert fake_mailjet.metadata == {}


def test_mailjet_still_takes_strict_json(fake_mailjet: FakeMailjet) -> None:
    answer = requests.post(f"{fake_mailjet.url}/v3/REST/contactmetadata", timeout=TIMEOUT,
                           json={"Name": "Score", "Datatype": "float"}, auth=("mj-key", "mj-secret"))
    assert answer.status_code == 201 and "score" in fake_mailjet.metadata

"""Which setting is in force: ``Effective`` (stored > environment > default), ``shown()`` origins,
and ``check_stored_setting`` validating what an admin stores."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import Effective, check_stored_setting, load_settings
from bridge.errors import ConfigError
from bridge.inbound.fields import EVENT_NAME_PRESETS
from bridge.inbound.source import KNOWN, KeyCheck, key_hash
from bridge.storage.base import Store

US = "https://api.segment.io"
EU = "https://events.eu1.segmentapis.com"
T0 = 1_800_000_000.0


def effective(store: Store, env: dict[str, str], stored: dict[str, str]) -> Effective:
    for key, value in stored.items():
        store.put_setting(key, value, T0)
    return Effective(load_settings(env), store)


def case(env: dict[str, str], stored: dict[str, str], expected: Any, name: str) -> Any:
    return pytest.param(env, stored, expected, id=name)


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, None, "default-none"),
    case({"SEGMENT_WRITE_KEY": "env-key"}, {}, "env-key", "environment"),
    case({}, {"segment.write_key": "stored-key"}, "stored-key", "stored"),
    case({"SEGMENT_WRITE_KEY": "env-key"}, {"segment.write_key": "stored-key"}, "stored-key",
         "stored-beats-environment"),
])
def test_write_key(store: Store, env: dict[str, str], stored: dict[str, str], expected: Any) -> None:
    assert effective(store, env, stored).write_key() == expected


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, US, "default"),
    case({"SEGMENT_REGION": "eu"}, {}, EU, "environment-region"),
    case({"SEGMENT_API_URL": "http://127.0.0.1:9"}, {}, "http://127.0.0.1:9", "environment-url"),
    case({"SEGMENT_API_URL": "http://127.0.0.1:9"}, {"segment.region": "eu"}, "http://127.0.0.1:9",
         "environment-url-beats-stored-region"),
    case({"SEGMENT_REGION": "eu"}, {"segment.region": "us"}, US, "stored-region-beats-environment-region"),
    case({"SEGMENT_API_URL": "http://127.0.0.1:9"},
         {"segment.region": "eu", "segment.api_url": "http://127.0.0.1:7"}, "http://127.0.0.1:7",
         "stored-url-beats-stored-region"),
    case({"SEGMENT_API_URL": "http://127.0.0.1:9"}, {"segment.region": "mars"}, "http://127.0.0.1:9",
         "unknown-stored-region-falls-back"),
])
def test_segment_api_url(store: Store, env: dict[str, str], stored: dict[str, str], expected: Any) -> None:
    assert effective(store, env, stored).segment_api_url() == expected


EU_KEY_CHECK = KeyCheck(key_hash("eu-key"), KNOWN, T0, "known", EU, "eu").to_json()


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({"SEGMENT_WRITE_KEY": "eu-key"}, {"segment.key_check": EU_KEY_CHECK}, EU, "auto-follows-the-key"),
    case({"SEGMENT_WRITE_KEY": "other-key"}, {"segment.key_check": EU_KEY_CHECK}, US,
         "auto-ignores-another-key's-verdict"),
    case({"SEGMENT_WRITE_KEY": "eu-key"}, {}, US, "auto-before-any-verdict-is-us"),
    case({"SEGMENT_WRITE_KEY": "eu-key", "SEGMENT_REGION": "us"}, {"segment.key_check": EU_KEY_CHECK}, US,
         "explicit-region-is-used-as-given"),
    case({"SEGMENT_WRITE_KEY": "eu-key", "SEGMENT_API_URL": "http://127.0.0.1:9"},
         {"segment.key_check": EU_KEY_CHECK}, "http://127.0.0.1:9", "explicit-url-beats-the-key"),
])
def test_auto_region_follows_the_write_key(store: Store, env: dict[str, str], stored: dict[str, str],
                                           expected: Any) -> None:
    assert effective(store, env, stored).segment_api_url() == expected


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, "https://api.mailjet.com", "default"),
    case({"MAILJET_API_URL": "http://127.0.0.1:9/"}, {}, "http://127.0.0.1:9", "environment"),
    case({"MAILJET_API_URL": "http://127.0.0.1:9"}, {"mailjet.api_url": "http://127.0.0.1:7"},
         "http://127.0.0.1:7", "stored-beats-environment"),
])
def test_mailjet_api_url(store: Store, env: dict[str, str], stored: dict[str, str], expected: Any) -> None:
    assert effective(store, env, stored).mailjet_api_url() == expected


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, "mailjet", "default"),
    case({"BRIDGE_EVENT_NAMES": "raw"}, {}, "raw", "environment"),
    case({"BRIDGE_EVENT_NAMES": "raw"}, {"events.names": "segment-spec"}, "segment-spec",
         "stored-beats-environment"),
    case({"BRIDGE_EVENT_NAMES": "raw"}, {"events.names": "bogus"}, "raw", "unknown-stored-falls-back"),
])
def test_event_names(store: Store, env: dict[str, str], stored: dict[str, str], expected: str) -> None:
    assert effective(store, env, stored).event_names() == EVENT_NAME_PRESETS[expected]


KEY, SECRET = {"MAILJET_API_KEY": "env-k"}, {"MAILJET_API_SECRET": "env-s"}


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, None, "none"),
    case(KEY, {}, None, "key-only"),
    case({}, {"mailjet.api_secret": "st-s"}, None, "stored-secret-only"),
    case({**KEY, **SECRET}, {}, ("env-k", "env-s"), "both-environment"),
    case(KEY, {"mailjet.api_secret": "st-s"}, ("env-k", "st-s"), "env-key-stored-secret"),
    case(SECRET, {"mailjet.api_key": "st-k"}, ("st-k", "env-s"), "stored-key-env-secret"),
    case({**KEY, **SECRET}, {"mailjet.api_key": "st-k", "mailjet.api_secret": "st-s"}, ("st-k", "st-s"),
         "stored-beats-environment"),
])
def test_mailjet_credentials(
    store: Store, env: dict[str, str], stored: dict[str, str], expected: Any
) -> None:
    assert effective(store, env, stored).mailjet_credentials() == expected


TARGET_ENV = {"MAILJET_LIST_ID": "7", "MAILJET_ACTION": "addforce"}


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, (1, "addnoforce"), "default"),
    case(TARGET_ENV, {}, (7, "addforce"), "environment"),
    case(TARGET_ENV, {"mailjet.list_id": "42", "mailjet.action": "unsub"}, (42, "unsub"),
         "stored-beats-environment"),
    case(TARGET_ENV, {"mailjet.action": "remove"}, (7, "remove"), "stored-action-only"),
    case(TARGET_ENV, {"mailjet.list_id": "abc"}, (7, "addforce"), "non-numeric-stored-list-falls-back"),
])
def test_mailjet_target(store: Store, env: dict[str, str], stored: dict[str, str], expected: Any) -> None:
    assert effective(store, env, stored).mailjet_target() == expected


@pytest.mark.parametrize(("env", "stored", "expected"), [
    case({}, {}, {"segment.write_key": (None, "default"), "mailjet.list_id": ("1", "default"),
                  "segment.api_url": ("https://api.segment.io", "default: from the write key's source"),
                  "mailjet.api_url": ("https://api.mailjet.com", "default")}, "defaults"),
    case({"SEGMENT_API_URL": "http://127.0.0.1:9"}, {"segment.region": "eu"},
         {"segment.api_url": ("http://127.0.0.1:9", "environment"),
          "segment.region": ("eu", "stored; moot: segment.api_url wins")},
         "an-environment-url-beats-a-stored-region"),
    case({"SEGMENT_REGION": "eu"}, {}, {
        "segment.api_url": ("https://events.eu1.segmentapis.com", "environment: from the region")},
         "url-from-the-region"),
    case({"SEGMENT_WRITE_KEY": "env-key", "MAILJET_LIST_ID": "7"}, {},
         {"segment.write_key": ("env-key", "environment"), "mailjet.list_id": ("7", "environment")},
         "environment"),
    case({"SEGMENT_WRITE_KEY": "env-key"}, {"segment.write_key": "st-key", "events.names": "raw"},
         {"segment.write_key": ("st-key", "stored"), "events.names": ("raw", "stored"),
          "mailjet.action": ("addnoforce", "default")},
         "stored"),
])
def test_shown_origins(store: Store, env: dict[str, str], stored: dict[str, str], expected: Any) -> None:
    shown = effective(store, env, stored).shown()
    assert {key: shown[key] for key in expected} == expected


def test_shown_lists_every_storable_setting_and_the_cdn(store: Store) -> None:
    assert set(effective(store, {}, {}).shown()) == {
        "segment.write_key", "segment.region", "segment.api_url", "mailjet.api_key",
        "mailjet.api_secret", "mailjet.api_url", "mailjet.list_id", "mailjet.action", "events.names",
        "segment.cdn_url",
    }


def test_an_environment_api_url_beats_a_stored_region(store: Store) -> None:
    """More specific beats more general, whatever the sources (SPEC §1)."""
    for region in ("eu", "us"):
        current = effective(store, {"SEGMENT_API_URL": "http://127.0.0.1:9"}, {"segment.region": region})
        assert current.segment_api_url() == "http://127.0.0.1:9"


@pytest.mark.parametrize(("key", "value", "normalised"), [
    pytest.param("segment.region", " EU ", "eu", id="region-lowercased"),
    pytest.param("segment.api_url", "http://127.0.0.1:9/", "http://127.0.0.1:9", id="url-slash-dropped"),
    pytest.param("mailjet.list_id", "42", "42", id="list-id"),
    pytest.param("mailjet.action", "UNSUB", "unsub", id="action"),
    pytest.param("events.names", "raw", "raw", id="event-names"),
    pytest.param("segment.write_key", "  wk-1  ", "wk-1", id="secret-stripped"),
])
def test_check_stored_setting_valid(key: str, value: str, normalised: str) -> None:
    assert check_stored_setting(key, value) == normalised


@pytest.mark.parametrize(("key", "value", "env_name"), [
    pytest.param("mailjet.list_id", "abc", "MAILJET_LIST_ID", id="list-id-not-a-number"),
    pytest.param("mailjet.list_id", "0", "MAILJET_LIST_ID", id="list-id-zero"),
    pytest.param("segment.region", "mars", "SEGMENT_REGION", id="region"),
    pytest.param("mailjet.api_url", "ftp://example.test", "MAILJET_API_URL", id="url-scheme"),
    pytest.param("mailjet.action", "delete", "MAILJET_ACTION", id="action"),
    pytest.param("events.names", "fancy", "BRIDGE_EVENT_NAMES", id="event-names"),
    pytest.param("segment.write_key", "   ", "SEGMENT_WRITE_KEY", id="blank"),
])
def test_check_stored_setting_invalid_names_the_key(key: str, value: str, env_name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_stored_setting(key, value)
    (problem,) = caught.value.problems
    assert problem.startswith(key)
    assert env_name not in problem


def test_check_stored_setting_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'segment\.nope': use one of segment\.write_key"):
        check_stored_setting("segment.nope", "x")

"""Configuration: the defaults of docs/behaviour.md, and one clear line per bad value."""

from __future__ import annotations

import os

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def test_defaults() -> None:
    s = load_settings({})
    assert s.segment_write_key is None
    # auto: the region of the write key's source, as Segment's settings CDN says; no explicit URL
    assert s.segment_region == "auto" and s.segment_api_url is None
    assert s.segment_cdn_url == "https://cdn.segment.com"
    assert s.mailjet_api_url == "https://api.mailjet.com"
    assert s.mailjet_list_id == 1 and s.mailjet_action == "addnoforce"
    assert s.database_url.endswith("/mailjet-bridge/bridge.db")
    assert s.event_names == "mailjet"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.max_body_bytes == 5 * 1024 * 1024
    # a drain helper a core beyond the first, three at most
    assert s.drain_helpers == max(0, min(len(os.sched_getaffinity(0)) - 1, 3))
    assert load_settings({"BRIDGE_DRAIN_HELPERS": "0"}).drain_helpers == 0
    assert s.client_timeout == 30
    # a web process a core beyond the first, one at least, eight at most
    assert s.workers == max(1, min(len(os.sched_getaffinity(0)) - 1, 8))
    assert load_settings({"BRIDGE_WORKERS": "3"}).workers == 3


def test_region_is_read_and_an_api_url_is_kept_as_given() -> None:
    # which URL is used (explicit URL > region > the key's region) is Effective's: tests/test_settings.py
    assert load_settings({"SEGMENT_REGION": "EU"}).segment_region == "eu"
    custom = load_settings({"SEGMENT_REGION": "eu", "SEGMENT_API_URL": "http://127.0.0.1:9/"})
    assert custom.segment_api_url == "http://127.0.0.1:9"


def test_secrets_stay_out_of_repr() -> None:
    s = load_settings({"SEGMENT_WRITE_KEY": "wk-123", "MAILJET_API_SECRET": "mj-456",
                       "BRIDGE_WEBHOOK_USERNAME": "u", "BRIDGE_WEBHOOK_PASSWORD": "pw-789",
                       "BRIDGE_ADMIN_PASSWORD": "adm-000", "SEGMENT_SHARED_SECRET": "ss-111"})
    text = repr(s)
    for secret in ("wk-123", "mj-456", "pw-789", "adm-000", "ss-111"):
        assert secret not in text


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SEGMENT_REGION", "mars", "SEGMENT_REGION='mars' is not valid: use one of auto, us, eu"),
        ("SEGMENT_API_URL", "ftp://x", "SEGMENT_API_URL='ftp://x' is not a valid URL"),
        ("MAILJET_API_URL", "not a url", "MAILJET_API_URL='not a url' is not a valid URL"),
        ("MAILJET_ACTION", "subscribe", "MAILJET_ACTION='subscribe' is not valid: use one of "
         "addnoforce, addforce, unsub, remove"),
        ("MAILJET_LIST_ID", "abc", "MAILJET_LIST_ID='abc' is not valid"),
        ("MAILJET_LIST_ID", "0", "MAILJET_LIST_ID='0' is not valid"),
        ("BRIDGE_EVENT_NAMES", "fancy", "BRIDGE_EVENT_NAMES='fancy' is not valid: use one of "
         "mailjet, segment-spec, raw"),
        ("BRIDGE_DATABASE_URL", "mysql://x", "BRIDGE_DATABASE_URL='mysql://x' is not valid"),
        ("BRIDGE_PORT", "99999", "BRIDGE_PORT='99999' is not valid"),
        ("BRIDGE_DRAIN_HELPERS", "-1", "BRIDGE_DRAIN_HELPERS='-1' is not valid: use a whole number "
         "between 0 and 16"),
        ("BRIDGE_CLIENT_TIMEOUT", "0", "BRIDGE_CLIENT_TIMEOUT='0' is not valid: use a whole number "
         "between 1 and 600"),
        ("BRIDGE_WEBHOOK_USERNAME", "only-user", "must be set together"),
    ],
)
def test_bad_value_gives_one_line_naming_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})
    assert len(caught.value.problems) == 1
    assert expected in caught.value.problems[0]
    assert caught.value.problems[0].startswith(name.split("=")[0][:6])


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"SEGMENT_REGION": "mars", "MAILJET_ACTION": "x", "BRIDGE_PORT": "-1"})
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize(("environ", "url"), [
    pytest.param({"XDG_DATA_HOME": "/data", "HOME": "/home/ada"}, "sqlite:////data/mailjet-bridge/bridge.db",
                 id="xdg-data-home"),
    pytest.param({"HOME": "/home/ada"}, "sqlite:////home/ada/.local/share/mailjet-bridge/bridge.db",
                 id="home"),
    pytest.param({"XDG_DATA_HOME": "relative", "HOME": "/home/ada"},
                 "sqlite:////home/ada/.local/share/mailjet-bridge/bridge.db", id="relative-xdg-ignored"),
    pytest.param({"HOME": "/home/ada", "BRIDGE_DATABASE_URL": "sqlite:///x.db"}, "sqlite:///x.db",
                 id="explicit-url-wins"),
])
def test_default_database_does_not_depend_on_the_current_folder(environ: dict[str, str], url: str) -> None:
    assert load_settings(environ).database_url == url

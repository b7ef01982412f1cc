"""The ``mailjet-bridge`` command line: help texts and start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_bad_configuration_stops_with_one_line_per_problem(command: str) -> None:
    result = CliRunner().invoke(
        main, [command], env={"SEGMENT_REGION": "mars", "MAILJET_ACTION": "subscribe"}
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "configuration error: SEGMENT_REGION='mars' is not valid: use one of auto, us, eu",
        "configuration error: MAILJET_ACTION='subscribe' is not valid: use one of "
        "addnoforce, addforce, unsub, remove",
    ]


def test_unusable_database_is_one_clear_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["worker"], env={"BRIDGE_DATABASE_URL": f"sqlite:///{blocker}/sub/b.db"}
    )
    assert result.exit_code == 3
    assert result.output.startswith("storage error: cannot open SQLite database")


def test_every_command_has_a_one_line_help() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("serve", "worker"):
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0


@pytest.mark.slow  # starts a Python process
def test_python_dash_m_bridge_is_the_same_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0 and "serve" in result.stdout


# -- the operator commands, against the fake Segment and Mailjet servers ---------------------------

@pytest.fixture
def cli_env(env: dict[str, str], fake_mailjet: FakeMailjet) -> dict[str, str]:
    return {**env, "SEGMENT_WRITE_KEY": "good-key-0000001", "MAILJET_API_KEY": "mj-key",
            "MAILJET_API_SECRET": "mj-secret", "MAILJET_API_URL": fake_mailjet.url}


def run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


def test_config_show_masks_secrets_and_names_sources(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "config", "show")
    assert result.exit_code == 0, result.output
    assert "good-key-0000001" not in result.output and "mj-secret" not in result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "••••0001" in lines["segment.write_key"] and lines["segment.write_key"].endswith("environment")
    assert lines["mailjet.list_id"].split()[1:] == ["1", "default"]


def test_config_set_validates_and_wins_over_the_environment(cli_env: dict[str, str],
                                                            fake_segment: FakeSegment) -> None:
    bad = run(cli_env, "config", "set", "segment.region", "mars")
    assert bad.exit_code == 2 and "segment.region='mars' is not valid" in bad.output
    unknown = run(cli_env, "config", "set", "segment.colour", "blue")
    assert unknown.exit_code == 2 and "unknown setting" in unknown.output
    ok = run(cli_env, "config", "set", "segment.write_key", "stored-key-99999")
    assert ok.exit_code == 0 and "stored-key-99999" not in ok.output and "••••9999" in ok.output
    shown = run(cli_env, "config", "show").stdout
    assert next(ln for ln in shown.splitlines() if ln.startswith("segment.write_key")).endswith("stored")


def test_check_names_the_service_that_failed(cli_env: dict[str, str], fake_segment: FakeSegment) -> None:
    fake_segment.write_keys.add("good-key-0000001")
    good = run(cli_env, "check")
    assert good.exit_code == 0, good.output
    assert "ok   Segment: Segment knows this write key" in good.output
    assert "ok   Mailjet: the API key pair works" in good.output
    bad_segment = run({**cli_env, "SEGMENT_WRITE_KEY": "wrong-key-123456"}, "check")
    assert bad_segment.exit_code == 1
    # the tracking API would answer 200 to this key; the settings CDN says Segment does not know it
    assert "FAIL Segment: Segment does not know this write key" in bad_segment.output
    bad_mailjet = run({**cli_env, "MAILJET_API_SECRET": "nope"}, "check")
    assert bad_mailjet.exit_code == 1 and "FAIL Mailjet: the API key pair was refused" in bad_mailjet.output
    assert "nope" not in bad_mailjet.output.replace("FAIL", "")


def test_callback_url_prints_the_url_with_credentials(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "callback-url")
    assert result.stdout.strip() == "http://mailjet:s3cret-pass@127.0.0.1:8000/webhooks/mailjet"


def test_register_callbacks_is_idempotent_and_fixes_dead_ones(cli_env: dict[str, str],
                                                              fake_mailjet: FakeMailjet) -> None:
    url = "https://mailjet:pw@bridge.example.com/webhooks/mailjet"
    first = run(cli_env, "mailjet", "register-callbacks", "--url", url)
    assert first.exit_code == 0, first.output
    assert first.stdout.count(": registered") == 7
    assert {(c["EventType"], c["Url"], c["Version"]) for c in fake_mailjet.callbacks.values()} == {
        (t, url, 2) for t in ("sent", "open", "click", "bounce", "blocked", "spam", "unsub")}
    again = run(cli_env, "mailjet", "register-callbacks", "--url", url)
    assert again.stdout.count("already registered") == 7 and len(fake_mailjet.callbacks) == 7
    fake_mailjet.callbacks[3]["Status"] = "dead"
    new_url = url.replace("bridge.", "bridge2.")
    moved = run(cli_env, "mailjet", "register-callbacks", "--url", new_url,
                "--backup-url", url + "-backup")
    assert moved.stdout.count(": updated") == 7
    assert "Mailjet had marked it dead" in moved.stdout
    assert moved.stdout.count("(backup): registered") == 7
    assert all(c["Status"] == "alive" for c in fake_mailjet.callbacks.values())
    assert len(fake_mailjet.callbacks) == 14


def test_register_callbacks_without_keys_fails_clearly(env: dict[str, str]) -> None:
    result = run(env, "mailjet", "register-callbacks", "--url", "https://x.example/webhooks/mailjet")
    assert result.exit_code == 1 and "no Mailjet API key pair is set" in result.output


def _dead_letter_setup(cli_env: dict[str, str], fake_segment: FakeSegment, n: int) -> list[int]:
    """Queue n events that Segment rejects, and run the forwarder once: n dead letters."""
    from bridge.app import create_app
    from bridge.config import load_settings
    from bridge.inbound.track import dedupe_key, message_id

    app = create_app(load_settings(cli_env), announce=lambda _: None)
    bridge = app.extensions["bridge"]
    events = [{"event": "bounce", "time": 1_700_000_000 + i, "MessageID": 5000 + i,
               "email": f"d{i}@x.com"} for i in range(n)]
    fake_segment.write_keys.add("good-key-0000001")
    fake_segment.reject_message_ids = {message_id(dedupe_key(e)) for e in events}
    client = app.test_client()
    client.post("/webhooks/mailjet", json=events, auth=("mailjet", "s3cret-pass"))
    forwarder = bridge.loops()[0]
    while bridge.store.stats(0)["pending"]:
        forwarder.run_once()
    ids = [row["id"] for row in bridge.store.dead_letters(10_000)]
    bridge.store.close()
    return sorted(ids)


def test_dead_letters_list_show_and_replay(cli_env: dict[str, str], fake_segment: FakeSegment) -> None:
    (item_id,) = _dead_letter_setup(cli_env, fake_segment, 1)
    listed = run(cli_env, "dead-letters", "list")
    assert listed.exit_code == 0
    line = listed.stdout.strip()
    assert line.split()[0] == str(item_id)
    assert "Mailjet → Segment" in line and "MessageID 5000" in line
    assert "Segment rejected the event (400)" in line
    shown = json.loads(run(cli_env, "dead-letters", "show", str(item_id)).stdout)
    assert shown["state"] == "dead" and json.loads(shown["payload"])["MessageID"] == 5000
    assert run(cli_env, "dead-letters", "show", "999999").exit_code == 2
    replayed = run(cli_env, "dead-letters", "replay", str(item_id))
    assert "1 dead letter(s) queued again" in replayed.stdout
    assert run(cli_env, "dead-letters", "list").stdout.strip() == "no dead letters"
    assert run(cli_env, "dead-letters", "replay").exit_code == 2  # ids or --all


def test_replay_all_shows_progress(cli_env: dict[str, str], fake_segment: FakeSegment) -> None:
    ids = _dead_letter_setup(cli_env, fake_segment, 150)
    result = run(cli_env, "dead-letters", "replay", "--all")
    assert result.exit_code == 0
    assert f"{len(ids)} dead letter(s) queued again" in result.stdout
    assert "replaying" in result.stderr


def test_quarantine_list_show_replay(cli_env: dict[str, str]) -> None:
    from bridge.app import create_app
    from bridge.config import load_settings

    app = create_app(load_settings(cli_env), announce=lambda _: None)
    app.test_client().post("/webhooks/mailjet", json=[{"event": "open", "time": "soon"}],
                           auth=("mailjet", "s3cret-pass"))
    app.extensions["bridge"].store.close()
    listed = run(cli_env, "quarantine", "list").stdout.strip()
    entry_id = listed.split()[0]
    assert 'mailjet   $.time: "soon" is not of type "integer"' in listed
    shown = json.loads(run(cli_env, "quarantine", "show", entry_id).stdout)
    assert shown["errors"][0]["path"] == "$.time"
    still = run(cli_env, "quarantine", "replay", entry_id)
    assert "0 event(s) queued" in still.stdout and "still invalid" in still.output


def test_stats_and_send_test_event(cli_env: dict[str, str]) -> None:
    sent = run(cli_env, "send-test-event")
    assert sent.exit_code == 0 and "queued a test 'sent' event" in sent.stdout
    stats = json.loads(run(cli_env, "stats").stdout)
    assert stats["queue"]["pending"] == 1
    assert stats["segment"]["state"] in ("starting", "ok")
    assert stats["mailjet"]["state"] == "starting"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_db_upgrade(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'u.db'}"
    first = run({"BRIDGE_DATABASE_URL": url}, "db", "upgrade")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() in ("schema version 5 (was 0)", "schema version 5, up to date")
    assert run({"BRIDGE_DATABASE_URL": url}, "db", "upgrade").stdout.strip() == "schema version 5, up to date"


def test_segment_webhook_prints_the_url_and_the_header(cli_env: dict[str, str]) -> None:
    result = run(cli_env, "segment-webhook")
    assert result.exit_code == 0
    assert "URL:    http://127.0.0.1:8000/webhooks/segment" in result.stdout
    assert "Header: Authorization: Bearer test-webhook-token" in result.stdout

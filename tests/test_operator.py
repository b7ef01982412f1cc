"""#12 through the real processes: ``make run`` and the installed ``mailjet-bridge`` from another folder,
a port in use, and ``mailjet-bridge demo`` until Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.fakes.segment import FakeSegment
from tests.processes import BIN, Process, callback_auth, free_port, poll, spawn

pytestmark = pytest.mark.slow


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it: with none of the server's settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
    return subprocess.run([str(BIN / "mailjet-bridge"), *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


def test_the_cli_in_another_folder_sees_what_make_run_serves(tmp_path: Path,
                                                             fake_segment: FakeSegment) -> None:
    """No BRIDGE_DATABASE_URL anywhere: `make run` (in the checkout) and the CLI (in an empty folder,
    without the server's write key) meet in the default database under XDG_DATA_HOME."""
    fake_segment.write_keys.add("good-key")
    port = free_port()
    server = spawn(["make", "--no-print-directory", "run"], {
        "BRIDGE_PORT": str(port), "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": fake_segment.url, "SEGMENT_CDN_URL": fake_segment.url,
    })
    try:
        base = f"http://127.0.0.1:{port}"
        poll(lambda: any("serving on" in line for line in server.lines) or server.proc.poll() is not None,
             60, "make run to say it serves")
        serving = next(line for line in server.lines if "serving on" in line)
        # said only once the port accepts
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200, server.output()
        assert f"serving on {base} " in serving
        user, password = callback_auth(server)
        event = {"event": "open", "time": 1_700_000_000, "MessageID": 1, "email": "ada@example.com"}
        assert requests.post(f"{base}/webhooks/mailjet", json=event, auth=(user, password),
                             timeout=10).status_code == 200
        poll(lambda: len(fake_segment.accepted) == 1, 30, "the event to reach Segment")

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        data_home = Path(os.environ["XDG_DATA_HOME"])
        before = files_under(data_home)
        assert data_home / "mailjet-bridge" / "bridge.db" in before

        stats = cli(["stats"], elsewhere)
        assert stats.returncode == 0 and stats.stderr == "", stats.stderr
        shown = json.loads(stats.stdout)
        assert shown["queue"]["delivered"] == 1
        # the state the forwarder stored, not "no_write_key" from the CLI's own environment
        poll(lambda: json.loads(cli(["stats"], elsewhere).stdout)["segment"]["state"] == "ok", 10,
             "the stored Segment state")
        callback = cli(["callback-url"], elsewhere)
        assert callback.stdout.strip() == f"http://{user}:{password}@127.0.0.1:{port}/webhooks/mailjet"
        dead = cli(["dead-letters", "list"], elsewhere)
        assert dead.returncode == 0 and dead.stdout.strip() == "no dead letters"

        assert list(elsewhere.iterdir()) == []
        assert files_under(data_home) == before  # no new database, nothing beside it
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(["serve"], tmp_path, {"BRIDGE_PORT": str(port),
                                           "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"cannot listen on 127.0.0.1:{port}: address already in use; set BRIDGE_PORT "
                             "(or BRIDGE_HOST) to a free address\n")
    assert not (tmp_path / "b.db").exists()


def test_web_only_and_a_worker_of_its_own_as_the_systemd_units_run_them(tmp_path: Path,
                                                                        fake_segment: FakeSegment) -> None:
    """deploy/: `serve --web-only` sends nothing itself; the `worker` beside it delivers."""
    port = free_port()
    env = {"BRIDGE_PORT": str(port), "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
           "SEGMENT_WRITE_KEY": "good-key", "SEGMENT_API_URL": fake_segment.url,
           "SEGMENT_CDN_URL": fake_segment.url, "BRIDGE_WEBHOOK_USERNAME": "mailjet",
           "BRIDGE_WEBHOOK_PASSWORD": "pw", "BRIDGE_ADMIN_PASSWORD": "admin-pw",
           "SEGMENT_WEBHOOK_TOKEN": "token", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    web = spawn([str(BIN / "mailjet-bridge"), "serve", "--web-only"], env)
    worker: Process | None = None
    try:
        poll(lambda: any("serving on" in line for line in web.lines) or web.proc.poll() is not None,
             60, "the web server")
        base = f"http://127.0.0.1:{port}"
        event = {"event": "click", "time": 1_700_000_000, "MessageID": 2, "email": "ada@example.com"}
        assert requests.post(f"{base}/webhooks/mailjet", json=event, auth=("mailjet", "pw"),
                             timeout=10).status_code == 200
        assert "delivery process started" not in web.output()
        assert fake_segment.accepted == []
        worker = spawn([str(BIN / "mailjet-bridge"), "worker"], env)
        poll(lambda: len(fake_segment.accepted) == 1, 30, "the worker to deliver")
    finally:
        if worker is not None:
            assert worker.stop(signal.SIGTERM) == 0, worker.output()
        assert web.stop(signal.SIGTERM) == 0, web.output()


def _admin_session(base: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/admin/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, page
    answer = session.post(f"{base}/admin/login", data={"password": password, "csrf_token": token.group(1)},
                          timeout=10)
    assert answer.status_code == 200 and "Log out" in answer.text
    return session


def test_the_demo_brings_events_to_the_sinks_and_the_debugger_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    demo: Process = spawn([str(BIN / "mailjet-bridge"), "demo"], {"BRIDGE_PORT": str(port)})
    try:
        poll(lambda: any("Ctrl-C stops the demo" in line for line in demo.lines)
             or demo.proc.poll() is not None, 90, "the demo to start")
        output = demo.output()
        assert demo.proc.poll() is None, output
        base = f"http://127.0.0.1:{port}"
        assert output.count("sample") == 8 and ": 200" in output
        assert "posted Mailjet's grouped sample (4 events): 200" in output
        assert "posted a Segment identify for Ada@Example.com: 200" in output
        password = re.search(r"password: (\S+)", output)
        database = re.search(r"database:  (sqlite:///\S+)", output)
        assert password and database
        # 7 single samples + 4 grouped ones reach the Segment sink; the identify reaches Mailjet's
        poll(lambda: any("11 received so far" in line for line in demo.lines), 30, "11 track calls")
        poll(lambda: any("Mailjet sink: contact ada@example.com (Ada Lovelace)" in line
                         for line in demo.lines), 30, "the contact")
        stats = cli(["stats"], tmp_path, {"BRIDGE_DATABASE_URL": database.group(1)})
        assert json.loads(stats.stdout)["queue"]["delivered"] == 12, stats.stdout
        debugger = _admin_session(base, password.group(1)).get(f"{base}/admin/debugger", timeout=10).text
        assert "api@mailjet.com" in debugger and "delivered" in debugger
        folder = Path(database.group(1).removeprefix("sqlite:///")).parent
        assert folder.is_dir()
    finally:
        code = demo.stop(signal.SIGINT, timeout=30)
    assert code == 0, demo.output()
    assert demo.lines[-1] == "demo stopped"
    assert "Traceback" not in demo.output()
    assert not folder.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_the_demo_sinks_answer_as_the_services_do() -> None:
    """The sinks stand in for Segment and Mailjet: unknown keys, bad auth and bad JSON as they answer."""
    from bridge.ops.demo_sinks import MailjetSink, SegmentSink

    lines: list[str] = []
    segment = SegmentSink("wk", lines.append).start()
    mailjet = MailjetSink("k", "s", lines.append).start()
    try:
        assert requests.get(f"{segment.url}/v1/projects/other/settings", timeout=5).status_code == 404
        known = requests.get(f"{segment.url}/v1/projects/wk/settings", timeout=5).json()
        assert known["integrations"]["Segment.io"]["apiHost"] == "api.segment.io/v1"
        bad = requests.post(f"{segment.url}/v1/batch", data=b'{"batch": [NaN]}', timeout=5)
        assert bad.status_code == 400
        ok = requests.post(f"{segment.url}/v1/batch", json={"batch": [{"event": "Email Opened"}]},
                           auth=("any-key", ""), timeout=5)
        assert ok.status_code == 200 and ok.json() == {"success": True}
        refused = requests.get(f"{mailjet.url}/v3/REST/contactmetadata", auth=("k", "wrong"), timeout=5)
        assert refused.status_code == 401 and refused.json()["StatusCode"] == 401
        job = requests.post(f"{mailjet.url}/v3/REST/contactslist/1/managemanycontacts", auth=("k", "s"),
                            json={"Action": "addnoforce", "Contacts": [{"Email": "A@x.com"}]}, timeout=5)
        assert job.status_code == 201
        job_id = job.json()["Data"][0]["JobID"]
        status = requests.get(f"{mailjet.url}/v3/REST/contactslist/1/managemanycontacts/{job_id}",
                              auth=("k", "s"), timeout=5).json()
        assert status["Data"][0]["Status"] == "Completed" and "a@x.com" in mailjet.contacts
    finally:
        segment.stop()
        mailjet.stop()
    assert any("1 received so far" in line for line in lines)


def test_no_test_touches_the_real_default_database() -> None:
    """Every test runs with XDG_DATA_HOME in its own temporary folder (tests/conftest.py)."""
    from bridge.config import load_settings

    assert load_settings(os.environ).database_url.startswith(f"sqlite:///{os.environ['XDG_DATA_HOME']}/")

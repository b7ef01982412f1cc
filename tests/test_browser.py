"""The operator round in a real headless Chromium against ``make run``, and the CLI beside it.

A new user registers the Mailjet callbacks, fixes a wrong write key while events wait, sees the
events delivered in the live debugger, and replays a dead letter. Screenshots of each page go to the
test's temporary folder, never into the repository; ``make screenshots`` runs this module with a
``--basetemp`` of its own and copies them into docs/img/ to refresh the README's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bridge.inbound.track import dedupe_key, message_id
from tests.fakes.mailjet import FakeMailjet
from tests.fakes.segment import FakeSegment
from tests.processes import BIN, ROOT, Process, callback_auth, missing, poll

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Read at import: the autouse fixture in conftest.py clears BRIDGE_* before each test.
WRONG_KEY, GOOD_KEY = "wrong-write-key-0001", "good-write-key-0002"
MJ_SECRET = "mj-secret-browser-01"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        missing(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """The test's temporary folder: a test run leaves the tracked docs/img/ as it was."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def admin_password(process: Process) -> str:
    line = next(ln for ln in process.lines if ln.startswith("Admin password generated"))
    return line.split(": ", 1)[1].split(" ")[0]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MAILJET_", "BRIDGE_"))}
    return subprocess.run([str(BIN / "mailjet-bridge"), *args], env={**full, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_operator_round_in_the_browser(browser: Any, start_make_run: Any, fake_segment: FakeSegment,
                                       fake_mailjet: FakeMailjet, tmp_path: Path, shots: Path) -> None:
    fake_segment.write_keys = {GOOD_KEY}
    fake_mailjet.credentials = {("mj-key", MJ_SECRET)}
    env = {"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "SEGMENT_WRITE_KEY": WRONG_KEY,
           "MAILJET_API_KEY": "mj-key", "MAILJET_API_SECRET": MJ_SECRET, "MAILJET_API_URL": fake_mailjet.url}
    # accept-scope: the wrong key makes /healthz 503 once the worker has checked it, maybe before
    # the first probe
    base, process = start_make_run(env, probe="/healthz?scope=accept")
    password = admin_password(process)
    auth = callback_auth(process)
    secrets = (WRONG_KEY, GOOD_KEY, MJ_SECRET, password, auth[1])

    # 1. register the callbacks with Mailjet, from the CLI
    url = cli(env, "callback-url").stdout.strip()
    registered = cli(env, "mailjet", "register-callbacks", "--url", url)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.count(": registered") == 7 and len(fake_mailjet.callbacks) == 7

    # 2. events arrive while the write key is wrong (Segment does not know it): they wait, none is sent
    events = [{"event": "open", "time": 1_800_000_000 + i, "MessageID": 7000 + i,
               "email": f"reader{i}@example.com"} for i in range(3)]
    assert requests.post(f"{base}/webhooks/mailjet", json=events, auth=auth, timeout=10).status_code == 200
    poll(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 503, 15, "unknown_write_key")
    assert fake_segment.accepted == [] and fake_segment.dropped_unknown_key == []

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/admin/")
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Overview")
    assert "unknown write key" in page.content()
    assert "Segment does not know this write key" in page.content()

    # 3. fix the write key on the settings page
    page.click("nav a:text-is('Settings')")
    page.fill("input[name='segment.write_key']", GOOD_KEY)
    page.click("#save")
    page.wait_for_selector("text=Saved: segment.write_key")
    page.screenshot(path=str(shots / "settings.png"), full_page=True)
    fake_segment.wait_for(lambda f: len(f.accepted) == 3, timeout=90)

    # 4. a new event appears in the live debugger without a reload
    page.click("nav a:text-is('Debugger')")
    page.wait_for_selector("#debugger-rows tr[data-id]")
    fresh = {"event": "click", "time": 1_800_000_100, "MessageID": 7777, "email": "new@example.com",
             "url": "https://example.com/offer"}
    requests.post(f"{base}/webhooks/mailjet", json=fresh, auth=auth, timeout=10)
    page.wait_for_selector("#debugger-rows td.event:has-text('Email Link Clicked')", timeout=15_000)
    page.wait_for_selector("#debugger-rows tr.state-delivered td.event:has-text('Email Link Clicked')",
                           timeout=30_000)
    page.click("#debugger-rows tr.more summary")  # open the newest: journey, as received, as sent, answer
    page.wait_for_selector("text=As sent")
    page.screenshot(path=str(shots / "debugger.png"), full_page=True)

    # 4b. "did reader1's open reach Segment?": search by email, read the event's journey
    page.fill("#q", "Reader1@Example.com")
    page.click("#find")
    page.wait_for_selector("#search-summary")
    found = page.locator("#debugger-rows tr.event")
    assert found.count() == 1
    row = found.first
    more = page.locator(f"#debugger-rows tr.more[data-more='outbox-{row.get_attribute('data-id')}']")
    assert row.locator("td.event").inner_text().startswith("Email Opened")
    assert row.locator("td.recipient").inner_text() == "reader1@example.com"
    assert row.locator("td.message-id").inner_text() == "7001"
    assert row.locator("td.state").inner_text() == "delivered"
    more.locator("summary").click()
    steps = more.locator("table.journey td.step").all_inner_texts()
    assert steps[0] == "received" and steps[-1] == "delivered", steps
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.locator("td.time").first.inner_text())
    assert more.locator("table.journey td.id").last.inner_text().startswith("200")
    assert "Email Opened" in more.locator("pre").nth(1).inner_text()  # as sent
    # a long Segment messageId wraps inside the page instead of widening it
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(shots / "debugger-search.png"), full_page=True)

    # 5. a dead letter, replayed from the dead-letters page
    doomed = {"event": "bounce", "time": 1_800_000_200, "MessageID": 8888, "email": "gone@example.com",
              "error": "user unknown", "hard_bounce": True}
    fake_segment.reject_message_ids = {message_id(dedupe_key(doomed))}
    requests.post(f"{base}/webhooks/mailjet", json=doomed, auth=auth, timeout=10)
    poll(lambda: requests.get(f"{base}/healthz", timeout=2).json()["queue"]["dead"] == 1, 30, "a dead letter")
    fake_segment.reject_message_ids = set()
    page.click("nav a:text-is('Dead letters')")
    page.wait_for_selector("text=Segment rejected the event (400)")
    page.screenshot(path=str(shots / "dead-letters.png"), full_page=True)
    page.click("button.replay")
    page.wait_for_selector("text=1 dead letter(s) queued again.")
    fake_segment.wait_for(lambda f: message_id(dedupe_key(doomed)) in [c["messageId"] for c in f.accepted],
                          timeout=60)

    # 6. the overview and the quarantine, for the README
    requests.post(f"{base}/webhooks/mailjet", json={"event": "open", "time": "yesterday"}, auth=auth,
                  timeout=10)
    page.click("nav a:text-is('Quarantine')")
    page.wait_for_selector("text=is not of type")
    page.screenshot(path=str(shots / "quarantine.png"), full_page=True)
    page.click("nav a:text-is('Overview')")
    page.wait_for_selector("svg[role=img]")
    kept_aside = page.inner_text("#kept-aside")
    assert "Dead letters: 0" in kept_aside and "Quarantined: 1" in kept_aside
    chart, room = page.evaluate("""(() => {
        const card = document.querySelector('.card.chart'), style = getComputedStyle(card);
        return [card.querySelector('svg').getBoundingClientRect().width,
                card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)];
    })()""")
    assert chart >= room - 1, (chart, room)  # the chart fills its card
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # no page, log line or metric shows a secret
    for path in ("/admin/", "/admin/settings", "/admin/debugger", "/admin/dead-letters", "/admin/quarantine"):
        page.goto(base + path)
        html = page.content()
        assert not [s for s in secrets if s in html], path
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert not [s for s in secrets if s in metrics]
    log_lines = [line for line in process.lines if line.startswith("{")]
    assert log_lines and not [s for s in secrets for line in log_lines if s in line]

    # the metrics parse as Prometheus text, and count across both gunicorn workers
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    delivered = sum(s.value for s in families["bridge_events_delivered"].samples
                    if s.name.endswith("_total") and s.labels["upstream"] == "segment")
    assert delivered == 5
    accepted = sum(s.value for s in families["bridge_events_accepted"].samples if s.name.endswith("_total"))
    assert accepted == 5
    assert families["bridge_queue_depth"].samples
    assert "bridge_delivery_latency_seconds" in families

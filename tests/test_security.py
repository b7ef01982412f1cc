"""Hostile input against the real server (#10): each test here failed on the main before it."""

from __future__ import annotations

import re
import threading
from typing import Any

import requests

from tests.fakes.mailjet import FakeMailjet
from tests.processes import callback_auth, poll

ADMIN_PASSWORD = "security-admin-pass-1"


def test_concurrent_wrong_logins_get_at_most_five_password_checks(start_make_run: Any) -> None:
    """60 guesses at once: the attempt is counted before the password is checked, so no more than
    the limit of 5 are checked (the previous main checked 6)."""
    base, _ = start_make_run({"BRIDGE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    sessions = []
    for _ in range(60):
        session = requests.Session()
        page = session.get(f"{base}/admin/login", timeout=10).text
        sessions.append((session, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)))
    start = threading.Barrier(len(sessions))
    statuses: list[int] = []

    def guess(session: requests.Session, token: str) -> None:
        start.wait(10)
        answer = session.post(f"{base}/admin/login", data={"password": "wrong", "csrf_token": token},
                              allow_redirects=False, timeout=30)
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=guess, args=pair) for pair in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 60
    assert statuses.count(401) <= 5, statuses  # a 401 is a checked password
    assert set(statuses) <= {401, 429}


def login(base: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/admin/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    answer = session.post(f"{base}/admin/login", data={"password": ADMIN_PASSWORD, "csrf_token": token},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    return session


def test_the_real_server_closes_what_main_left_open(start_make_run: Any) -> None:
    """Through `make run`: identifies need the generated token, a logged-out cookie opens nothing,
    /metrics needs its token, and no text a client sends in a credential gives a 500."""
    base, process = start_make_run({"BRIDGE_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                    "BRIDGE_METRICS_TOKEN": "metrics-token-777"})
    announced = [line for line in process.lines if "Authorization: Bearer" in line]
    assert len(announced) == 1, process.output()
    token = re.search(r"Authorization: Bearer ([^' ]+)", announced[0]).group(1)

    identify = {"type": "identify", "userId": "u-1", "traits": {"email": "a@example.com"}}
    assert requests.post(f"{base}/webhooks/segment", json=identify, timeout=10).status_code == 401
    signed = requests.post(f"{base}/webhooks/segment", json=identify, timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    assert signed.status_code == 200 and signed.json()["accepted"] == 1
    odd_headers = {"Authorization": "Bearer éé".encode(), "X-Signature": "ÿÿ".encode("latin-1")}
    odd = requests.post(f"{base}/webhooks/segment", json=identify, timeout=10, headers=odd_headers)
    assert odd.status_code == 401

    admin = login(base)
    saved = requests.Session()
    saved.cookies.update(admin.cookies)
    assert saved.get(f"{base}/admin/settings", allow_redirects=False, timeout=10).status_code == 200
    page = admin.get(f"{base}/admin/settings", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    admin.post(f"{base}/admin/logout", data={"csrf_token": csrf}, timeout=10)
    assert saved.get(f"{base}/admin/settings", allow_redirects=False, timeout=10).status_code == 302

    assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{base}/metrics", timeout=10,
                        headers={"Authorization": "Bearer metrics-token-777"}).status_code == 200
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}


def test_an_oversized_body_gets_a_413_the_client_reads(start_make_run: Any) -> None:
    """With a length (25 MB) or chunked (7.4 MB): requests reads the 413. On the previous main the
    first reset the connection and the second was cut at 5 MiB and answered 400."""
    base, process = start_make_run()
    user, password = callback_auth(process)
    url = f"{base}/webhooks/mailjet"
    big = b"[" + b",".join([b'{"event":"open","time":1,"email":"a@b.c"}'] * 620_000) + b"]"
    sized = requests.post(url, data=big, auth=(user, password), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert sized.status_code == 413 and "BRIDGE_MAX_BODY_BYTES" in sized.json()["message"]

    def chunks() -> Any:
        body = big[:7_400_000]
        for start in range(0, len(body), 256 * 1024):
            yield body[start:start + 256 * 1024]

    chunked = requests.post(url, data=chunks(), auth=(user, password), timeout=60,
                            headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert requests.get(f"{base}/healthz?scope=accept", timeout=10).status_code == 200


def test_a_replayed_older_identify_never_rolls_a_contact_back(start_make_run: Any,
                                                             fake_mailjet: FakeMailjet) -> None:
    """Through `make run`: Segment sends the newer identify, then replays an older one (another
    messageId, an earlier timestamp). On the previous main the older one overwrote the contact."""
    base, _ = start_make_run({"SEGMENT_WEBHOOK_TOKEN": "rollback-token", "MAILJET_API_KEY": "mj-key",
                              "MAILJET_API_SECRET": "mj-secret", "MAILJET_API_URL": fake_mailjet.url})
    headers = {"Authorization": "Bearer rollback-token"}

    def send(message_id: str, timestamp: str, plan: str) -> None:
        identify = {"type": "identify", "messageId": message_id, "timestamp": timestamp,
                    "userId": "u-1", "traits": {"email": "ada@example.com", "plan": plan}}
        answer = requests.post(f"{base}/webhooks/segment", json=identify, headers=headers, timeout=10)
        assert answer.status_code == 200 and answer.json()["accepted"] == 1

    send("m-new", "2026-11-02T10:00:00Z", "pro")
    poll(lambda: fake_mailjet.contacts.get("ada@example.com"), 30, "the newer identify applied")
    send("m-old", "2026-11-01T10:00:00Z", "free")
    poll(lambda: requests.get(f"{base}/healthz", timeout=5).json()["queue"]["delivered"] == 2, 30,
         "the older identify settled")
    assert fake_mailjet.contacts["ada@example.com"]["Properties"]["plan"] == "pro"
    assert len(fake_mailjet.jobs) == 1


def test_admin_pages_render_a_quarantined_lone_surrogate(start_make_run: Any) -> None:
    """Through `make run`: an event holding "\\ud800" is quarantined, and the quarantine and
    debugger pages still render (the previous main answered them 500)."""
    base, process = start_make_run({"BRIDGE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    user, password = callback_auth(process)
    body = '[{"event":"open","time":1800000000,"MessageID":5,"email":"a@b.c","CustomID":"\\ud800"},' \
           '{"event":"open","time":1800000000,"MessageID":6,"email":"ok@b.c"}]'
    answer = requests.post(f"{base}/webhooks/mailjet", data=body, auth=(user, password), timeout=10,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json() == {"accepted": 1, "duplicate": 0, "quarantined": 1}
    admin = login(base)
    for page in ("/admin/quarantine", "/admin/debugger", "/admin/"):
        assert admin.get(f"{base}{page}", timeout=10).status_code == 200, page

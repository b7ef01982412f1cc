"""Hostile input against the real server (#10): each test here failed on the main before it."""

from __future__ import annotations

import re
import threading
from typing import Any

import requests

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

"""The few Mailjet API v3 calls the bridge makes, over plain ``requests``.

No SDK: ``mailjet-rest`` retries POSTs on its own and changed its error behaviour in 1.8.0, and the
retry policy must be ours. No retry logic here either: a failed call raises ``UpstreamError`` and the
contact sync's delivery loop decides what happens next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import requests

from bridge import USER_AGENT
from bridge.delivery.upstream import UpstreamError, parse_retry_after, send

#: Largest page Mailjet serves; the default is 10, which hides definitions.
PAGE_LIMIT = 1000
#: Job states that end a managemanycontacts job. Anything else is still running.
JOB_DONE = "Completed"
JOB_FAILED = frozenset({"Error", "Abort"})
#: List actions of Mailjet's managecontact / managemanycontacts.
MAILJET_ACTIONS: tuple[str, ...] = ("addnoforce", "addforce", "unsub", "remove")

Auth = tuple[str, str]


class MailjetClient:
    def __init__(
        self, base_url: str | Callable[[], str], *, session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        #: Read at each call, so a URL changed by an admin applies to the next call.
        self.base_url = base_url if callable(base_url) else (lambda: base_url)
        self.session = session or requests.Session()
        self.timeout = timeout

    def _call(self, method: str, path: str, auth: Auth, *, body: Any = None,
              params: dict[str, Any] | None = None) -> Any:
        """One call; its JSON answer, or UpstreamError with Mailjet's ``ErrorMessage``."""
        response, _latency = send(
            self.session, method, self.base_url().rstrip("/") + path, json=body, params=params,
            auth=auth, headers={"User-Agent": USER_AGENT}, timeout=self.timeout,
        )
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = None
        if response.status_code >= 400:
            message = response.text[:500]
            info = None
            if isinstance(payload, dict):
                message = str(payload.get("ErrorMessage") or message)
                info = payload.get("ErrorInfo")
            raise UpstreamError(response.status_code, message, body=response.text[:1000], info=info,
                                retry_after=parse_retry_after(response.headers, time.time()))
        return payload

    def contact_metadata(self, auth: Auth) -> dict[str, str]:
        """Every contact property definition, name (lower-case) -> datatype, all pages."""
        found: dict[str, str] = {}
        offset = 0
        while True:
            page = self._call("GET", "/v3/REST/contactmetadata", auth,
                              params={"Limit": PAGE_LIMIT, "Offset": offset}) or {}
            data = page.get("Data") or []
            for entry in data:
                found[str(entry.get("Name", "")).lower()] = str(entry.get("Datatype", "str"))
            offset += len(data)
            if len(data) < PAGE_LIMIT or offset >= int(page.get("Total") or 0):
                return found

    def create_metadata(self, name: str, datatype: str, auth: Auth) -> None:
        self._call("POST", "/v3/REST/contactmetadata", auth,
                   body={"Datatype": datatype, "Name": name, "NameSpace": "static"})

    def manage_many_contacts(self, list_id: int, action: str, contacts: Sequence[dict[str, Any]],
                             auth: Auth) -> int:
        """Start an asynchronous upsert job; a 201 only means "job accepted", not "contacts applied"."""
        answer = self._call("POST", f"/v3/REST/contactslist/{list_id}/managemanycontacts", auth,
                            body={"Action": action, "Contacts": list(contacts)})
        try:
            return int(answer["Data"][0]["JobID"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise UpstreamError(201, f"no JobID in Mailjet's answer: {str(answer)[:300]}") from None

    def job(self, list_id: int, job_id: int, auth: Auth) -> dict[str, Any]:
        answer = self._call("GET", f"/v3/REST/contactslist/{list_id}/managemanycontacts/{job_id}", auth)
        try:
            return dict(answer["Data"][0])
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(200, f"no job status in Mailjet's answer: {str(answer)[:300]}") from None

    def job_errors(self, job_id: int, auth: Auth) -> Any:
        """The job's error file. Its format is not documented; the caller reads it leniently."""
        path = f"/v3/DATA/batchjob/{quote(str(job_id))}/JSONError/application:json/LAST"
        return self._call("GET", path, auth)

    def check(self, auth: Auth) -> None:
        """A harmless authenticated read; raises UpstreamError if the key pair is refused."""
        self._call("GET", "/v3/REST/contactmetadata", auth, params={"Limit": 1})

    def event_callbacks(self, auth: Auth) -> list[dict[str, Any]]:
        """Every Event API callback of the account (``Limit`` set: the default page of 10 hides some)."""
        answer = self._call("GET", "/v3/REST/eventcallbackurl", auth, params={"Limit": PAGE_LIMIT}) or {}
        return list(answer.get("Data") or [])

    def create_event_callback(self, callback: dict[str, Any], auth: Auth) -> None:
        self._call("POST", "/v3/REST/eventcallbackurl", auth, body=callback)

    def update_event_callback(self, callback_id: int, changes: dict[str, Any], auth: Auth) -> None:
        self._call("PUT", f"/v3/REST/eventcallbackurl/{callback_id}", auth, body=changes)

    def close(self) -> None:
        self.session.close()

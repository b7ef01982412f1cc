"""Local stand-ins for Segment and Mailjet, for ``mailjet-bridge demo``: real HTTP servers on loopback.

They answer the calls the bridge makes, shaped as the real services answer them, so the demo runs
the bridge's own code end to end with no account:

- Segment: ``GET /v1/projects/{writeKey}/settings`` (the settings CDN: the document for the demo
  key, 404 for any other) and ``POST /v1/batch`` (strict JSON; 200 ``{"success": true}`` as the
  tracking API answers, whatever the key).
- Mailjet API v3: Basic auth with the demo key pair (401 with Mailjet's error body otherwise),
  ``/contactmetadata`` (list, define), ``/contactslist/{id}/managemanycontacts`` (a job, done when
  polled), the job's error file and ``/eventcallbackurl``.

What arrives is kept and reported through ``on_event`` for the demo to print.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, Any]
Report = Callable[[str], None]


def _strict_json(raw: bytes) -> Any:
    """Strict JSON as the real services read it: UTF-8, no NaN or Infinity. Raises ValueError."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def _basic(header: str | None) -> tuple[str, str] | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
    except ValueError:
        return None
    return user, password


class Sink:
    """A threaded HTTP server on 127.0.0.1 whose ``answer`` subclasses implement."""

    name = "sink"

    def __init__(self, report: Report) -> None:
        self.report = report
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                status, payload = sink.answer(self.command, parts.path, parse_qs(parts.query),
                                              dict(self.headers), body)
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints what matters itself

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=self.name, daemon=True)

    def start(self) -> Sink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Answer:
        raise NotImplementedError


class SegmentSink(Sink):
    """Segment's settings CDN and tracking API, for one write key."""

    name = "segment-sink"
    SETTINGS = re.compile(r"/v1/projects/([^/]+)/settings")

    def __init__(self, write_key: str, report: Report) -> None:
        super().__init__(report)
        self.write_key = write_key
        #: Every track call received, in order.
        self.events: list[dict[str, Any]] = []

    def answer(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Answer:
        settings = self.SETTINGS.fullmatch(path)
        if method == "GET" and settings:
            if settings.group(1) != self.write_key:
                return 404, {"message": "not found"}
            return 200, {"integrations": {"Segment.io": {"apiKey": self.write_key,
                                                         "apiHost": "api.segment.io/v1"}}}
        if method == "POST" and path == "/v1/batch":
            try:
                batch = _strict_json(body)["batch"]
            except (ValueError, KeyError, TypeError):
                return 400, {"code": "invalid_request", "message": "Invalid JSON"}
            with self.lock:
                self.events.extend(batch)
                total = len(self.events)
            names = ", ".join(sorted({str(event.get("event")) for event in batch}))
            self.report(f"Segment sink: a batch of {len(batch)} track call(s) ({names}); "
                        f"{total} received so far")
            return 200, {"success": True}
        return 404, {"code": "not_found", "message": "not found"}


class MailjetSink(Sink):
    """The parts of Mailjet's API v3 the bridge calls, for one API key pair."""

    name = "mailjet-sink"
    MANAGE = re.compile(r"/v3/REST/contactslist/(\d+)/managemanycontacts(?:/(\d+))?")
    JOB_ERRORS = re.compile(r"/v3/DATA/batchjob/(\d+)/JSONError/application:json/LAST")

    def __init__(self, api_key: str, api_secret: str, report: Report) -> None:
        super().__init__(report)
        self.auth = (api_key, api_secret)
        self.metadata: dict[str, dict[str, Any]] = {}
        #: Contacts by email: name, properties, and the lists they are on.
        self.contacts: dict[str, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.callbacks: dict[int, dict[str, Any]] = {}

    @staticmethod
    def _ok(data: list[dict[str, Any]], status: int = 200) -> Answer:
        return status, {"Count": len(data), "Data": data, "Total": len(data)}

    @staticmethod
    def _error(status: int, message: str) -> Answer:
        return status, {"ErrorInfo": "", "ErrorMessage": message, "StatusCode": status}

    def answer(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Answer:
        if _basic(headers.get("Authorization")) != self.auth:
            return 401, {"ErrorInfo": "", "ErrorMessage": "API key authentication/authorization failure",
                         "StatusCode": 401}
        payload: Any = None
        if method in ("POST", "PUT"):
            try:
                payload = _strict_json(body or b"null")
            except ValueError as exc:
                return self._error(400, f"Invalid json input: {exc}")
        with self.lock:
            if path == "/v3/REST/contactmetadata":
                return self._metadata(method, query, payload)
            if path.startswith("/v3/REST/eventcallbackurl"):
                return self._callback(method, payload)
            manage = self.MANAGE.fullmatch(path)
            if manage and manage.group(2):
                return self._job(int(manage.group(2)))
            if manage and method == "POST":
                return self._manage(int(manage.group(1)), payload)
            errors = self.JOB_ERRORS.fullmatch(path)
            if errors and int(errors.group(1)) in self.jobs:
                return 200, []
        return self._error(404, "Object not found")

    def _metadata(self, method: str, query: dict[str, list[str]], payload: Any) -> Answer:
        if method == "GET":
            limit = min(int(query.get("Limit", ["10"])[0]), 1000)
            offset = int(query.get("Offset", ["0"])[0])
            return 200, {"Count": len(list(self.metadata.values())[offset:offset + limit]),
                         "Data": list(self.metadata.values())[offset:offset + limit],
                         "Total": len(self.metadata)}
        if not isinstance(payload, dict) or not payload.get("Name"):
            return self._error(400, "Invalid json input: Name is mandatory")
        name = str(payload["Name"]).lower()
        if name in self.metadata:
            return self._error(400, f'MJ18 A ContactMetaData resource with value "{name}" for Name '
                                    "already exists.")
        self.metadata[name] = {"ID": len(self.metadata) + 1, "Name": name,
                               "Datatype": payload.get("Datatype", "str"), "NameSpace": "static"}
        return self._ok([self.metadata[name]], 201)

    def _callback(self, method: str, payload: Any) -> Answer:
        if method == "GET":
            return self._ok(list(self.callbacks.values()))
        if not isinstance(payload, dict):
            return self._error(400, "Invalid json input")
        entry = {"ID": len(self.callbacks) + 1, **payload}
        self.callbacks[entry["ID"]] = entry
        return self._ok([entry], 201)

    def _manage(self, list_id: int, payload: Any) -> Answer:
        if not isinstance(payload, dict) or not isinstance(payload.get("Contacts"), list):
            return self._error(400, "Invalid json input: Contacts must be an array")
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = {"list_id": list_id, "action": payload.get("Action"),
                             "contacts": payload["Contacts"], "done": False}
        return self._ok([{"JobID": job_id}], 201)

    def _job(self, job_id: int) -> Answer:
        """A job is applied when it is first polled, as Mailjet runs jobs after the 201."""
        job = self.jobs.get(job_id)
        if job is None:
            return self._error(404, "Object not found")
        if not job["done"]:
            job["done"] = True
            for contact in job["contacts"]:
                email = str(contact.get("Email", "")).strip().lower()
                record = self.contacts.setdefault(email, {"Name": "", "Properties": {}, "Lists": {}})
                record["Name"] = contact.get("Name") or record["Name"]
                record["Properties"].update(contact.get("Properties") or {})
                record["Lists"][job["list_id"]] = job["action"]
                self.report(f"Mailjet sink: contact {email} ({record['Name'] or 'no name'}) "
                            f"{job['action']} on list {job['list_id']}, properties "
                            f"{json.dumps(record['Properties'], sort_keys=True)}")
        data = {"Count": len(job["contacts"]), "Error": "", "ErrorFile": "", "JobStart": "",
                "JobEnd": "", "Status": "Completed"}
        return self._ok([data])

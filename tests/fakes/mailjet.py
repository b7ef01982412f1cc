"""A fake Mailjet API v3: a real HTTP server on 127.0.0.1, modelled on Mailjet's published API v3 docs.

What it enforces, as Mailjet documents it:
- Basic auth with the API key pair, else 401 with Mailjet's error body
  (``{"ErrorInfo", "ErrorMessage", "StatusCode"}``).
- ``/contactmetadata``: listing pages of ``Limit`` (default 10, at most 1000) from ``Offset``. Names
  are stored lower-case. A second definition of a name is refused with ``MJ18 … already exists``.
- ``/contactslist/{id}/managemanycontacts``: answers 201 with a JobID at once and applies the contacts
  later, as a job. Each property must be defined and typed to match, or that contact fails. Such
  errors are visible only in the job status and its error file, never in the 201.
- ``Properties`` must be an object: the common ``[{Name, Value}]`` mistake is a 400.
- A body that is not strict JSON (not JSON at all, ``NaN``/``Infinity`` literals, invalid UTF-8) is
  a 400 ``"Invalid json input: …"`` in the error body above (reference §"Error body shape"; that
  Mailjet refuses the non-standard literals rather than reading them is an assumption on the safe
  side, see ``tests.fakes.base.strict_json``).

The error file's format is not documented. This fake serves a JSON array of
``{"Email", "Error"}`` (an assumption: the bridge reads it leniently).
Tests script 401, 429 and 5xx answers per path and read back lists, contacts and jobs.
"""

from __future__ import annotations

import base64
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.base import FakeServer, strict_json

DATATYPES = {"str", "int", "float", "bool", "datetime"}
ACTIONS = {"addforce", "addnoforce", "remove", "unsub"}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


@dataclass
class Scripted:
    status: int
    path: str = ""  # applies to the next request whose path contains this
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass
class Job:
    id: int
    list_id: int
    action: str
    contacts: list[dict[str, Any]]
    polls_left: int
    status: str = "Allocated"
    errors: list[dict[str, str]] = field(default_factory=list)


def _error(status: int, message: str, info: Any = "") -> Response:
    body = {"ErrorInfo": info, "ErrorMessage": message, "StatusCode": status}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _ok(data: list[dict[str, Any]], status: int = 200, total: int | None = None) -> Response:
    body = {"Count": len(data), "Data": data, "Total": len(data) if total is None else total}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _matches(datatype: str, value: Any) -> bool:
    if datatype == "str":
        return isinstance(value, str)
    if datatype == "bool":
        return isinstance(value, bool)
    if datatype == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if datatype == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if datatype == "datetime":
        return (isinstance(value, str) and bool(_RFC3339.match(value))) or (
            isinstance(value, int) and not isinstance(value, bool))
    return False


class FakeMailjet(FakeServer):
    name = "fake Mailjet"

    def __init__(self, key: str = "mj-key", secret: str = "mj-secret", polls_per_job: int = 1) -> None:
        super().__init__()
        self.credentials = {(key, secret)}
        self.polls_per_job = polls_per_job
        self.metadata: dict[str, dict[str, Any]] = {}  # name -> {"ID", "Name", "Datatype", "NameSpace"}
        self.contacts: dict[str, dict[str, Any]] = {}  # email -> {"Name", "Properties"}
        self.lists: dict[int, dict[str, str]] = {1: {}}  # list id -> email -> "subscribed" | "unsub"
        self.jobs: dict[int, Job] = {}
        self.callbacks: dict[int, dict[str, Any]] = {}  # Event API callbacks by ID
        self.requests: list[tuple[str, str]] = []
        self.script: deque[Scripted] = deque()

    # -- helpers for tests ------------------------------------------------------------------------

    def define(self, name: str, datatype: str) -> None:
        with self.lock:
            self._define(name, datatype)

    def then(self, *answers: Scripted) -> None:
        with self.lock:
            self.script.extend(answers)

    def calls(self, method: str, fragment: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and fragment in p)

    def describe(self) -> str:
        return f"{len(self.requests)} requests, {len(self.jobs)} jobs"

    # -- the API ----------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            response = self._handle(request)
        return response(environ, start_response)

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (key, secret) in self.credentials

    def _handle(self, request: Request) -> Response:
        path = request.path
        self.requests.append((request.method, path))
        if not self._authorised(request):
            return _error(401, "API key authentication/authorization failure. You may be unauthorized "
                               "to access the API or your API key may be expired.")
        for scripted in list(self.script):
            if scripted.path in path:
                self.script.remove(scripted)
                body = scripted.body or {"ErrorInfo": "", "ErrorMessage": f"scripted {scripted.status}",
                                         "StatusCode": scripted.status}
                return Response(json.dumps(body), status=scripted.status, headers=scripted.headers,
                                mimetype="application/json")
        body: Any = None
        if request.method in ("POST", "PUT"):
            try:
                body = strict_json(request.get_data() or b"null")
            except ValueError as exc:
                return _error(400, f"Invalid json input: {exc}")
        if path == "/v3/REST/contactmetadata":
            return self._metadata(request, body)
        match = re.fullmatch(r"/v3/REST/eventcallbackurl(?:/(\d+))?", path)
        if match:
            return self._callbacks(request, body, int(match.group(1)) if match.group(1) else None)
        match = re.fullmatch(r"/v3/REST/contactslist/(\d+)/managemanycontacts(?:/(\d+))?", path)
        if match:
            list_id = int(match.group(1))
            if list_id not in self.lists:
                return _error(404, "Object not found")
            if match.group(2):
                return self._job_status(int(match.group(2)))
            if request.method == "POST":
                return self._manage_many(list_id, body)
        match = re.fullmatch(r"/v3/DATA/batchjob/(\d+)/JSONError/application:json/LAST", path)
        if match and int(match.group(1)) in self.jobs:
            return Response(json.dumps(self.jobs[int(match.group(1))].errors), mimetype="application/json")
        return _error(404, "Object not found")

    def _define(self, name: str, datatype: str) -> dict[str, Any]:
        entry = {"ID": len(self.metadata) + 1, "Name": name.lower(), "Datatype": datatype,
                 "NameSpace": "static"}
        self.metadata[name.lower()] = entry
        return entry

    def _metadata(self, request: Request, body: Any) -> Response:
        if request.method == "GET":
            limit = min(int(request.args.get("Limit", 10)), 1000)
            offset = int(request.args.get("Offset", 0))
            everything = list(self.metadata.values())
            return _ok(everything[offset : offset + limit], total=len(everything))
        if not isinstance(body, dict) or not body.get("Name"):
            return _error(400, "Invalid json input: Name is mandatory")
        if body.get("Datatype") not in DATATYPES:
            return _error(400, f"Invalid Datatype \"{body.get('Datatype')}\"")
        if str(body["Name"]).lower() in self.metadata:
            return _error(400, f"MJ18 A ContactMetaData resource with value \"{body['Name']}\" for Name "
                               "already exists.")
        return _ok([self._define(str(body["Name"]), body["Datatype"])], status=201)

    def _callbacks(self, request: Request, body: Any, callback_id: int | None) -> Response:
        """``/eventcallbackurl``: one callback per (EventType, IsBackup); GET pages of 10 by default."""
        if request.method == "GET" and callback_id is None:
            limit = min(int(request.args.get("Limit", 10)), 1000)
            everything = list(self.callbacks.values())
            return _ok(everything[:limit], total=len(everything))
        if not isinstance(body, dict):
            return _error(400, "Invalid json input")
        if request.method == "POST":
            if body.get("EventType") not in {"sent", "open", "click", "bounce", "blocked", "spam", "unsub"}:
                return _error(400, f"Invalid EventType \"{body.get('EventType')}\"")
            backup = bool(body.get("IsBackup"))
            if any(c["EventType"] == body["EventType"] and c["IsBackup"] == backup
                   for c in self.callbacks.values()):
                return _error(400, f"MJ18 A EventCallbackUrl resource with value \"{body['EventType']}|"
                                   f"{int(backup)}\" for EventType|Backup already exists.")
            entry = {"ID": len(self.callbacks) + 1, "APIKeyID": 1, "EventType": body["EventType"],
                     "Url": body.get("Url", ""), "IsBackup": backup,
                     "Status": body.get("Status", "alive"), "Version": int(body.get("Version", 1))}
            self.callbacks[entry["ID"]] = entry
            return _ok([entry], status=201)
        if request.method == "PUT" and callback_id in self.callbacks:
            entry = self.callbacks[callback_id]
            entry.update({k: body[k] for k in ("Url", "Version", "Status") if k in body})
            return _ok([entry])
        return _error(404, "Object not found")

    def _manage_many(self, list_id: int, body: Any) -> Response:
        if not isinstance(body, dict) or body.get("Action") not in ACTIONS:
            return _error(400, "Invalid Action")
        contacts = body.get("Contacts")
        if not isinstance(contacts, list):
            return _error(400, "Contacts must be an array")
        for contact in contacts:
            if not isinstance(contact, dict) or not isinstance(contact.get("Properties", {}), dict):
                return _error(400, "Invalid json input: Properties must be an object")
        job = Job(len(self.jobs) + 1, list_id, body["Action"], contacts, self.polls_per_job)
        self.jobs[job.id] = job
        return _ok([{"JobID": job.id}], status=201)

    def _job_status(self, job_id: int) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "Object not found")
        if job.status not in ("Completed", "Error"):
            if job.polls_left > 0:
                job.polls_left -= 1
                job.status = "In Progress"
            else:
                self._run(job)
        data = {"Count": len(job.contacts), "Error": f"{len(job.errors)} contact(s) failed" if job.errors
                else "", "ErrorFile": "", "JobStart": "", "JobEnd": "", "Status": job.status}
        return _ok([data])

    def _run(self, job: Job) -> None:
        """Apply a job's contacts, one by one; a failing contact is left unchanged."""
        for contact in job.contacts:
            email = str(contact.get("Email", "")).strip().lower()
            problem = self._check(email, contact.get("Properties") or {})
            if problem:
                job.errors.append({"Email": email, "Error": problem})
                continue
            record = self.contacts.setdefault(email, {"Name": "", "Properties": {}})
            if contact.get("Name"):
                record["Name"] = contact["Name"]
            for name, value in (contact.get("Properties") or {}).items():
                if value is None:
                    record["Properties"].pop(name.lower(), None)
                else:
                    record["Properties"][name.lower()] = value
            members = self.lists[job.list_id]
            if job.action == "remove":
                members.pop(email, None)
            elif job.action == "unsub":
                members[email] = "unsub"
            elif job.action == "addforce" or email not in members:
                members[email] = "subscribed"
        job.status = "Error" if job.errors else "Completed"

    def _check(self, email: str, properties: dict[str, Any]) -> str | None:
        if "@" not in email:
            return f"Invalid email address \"{email}\""
        for name, value in properties.items():
            definition = self.metadata.get(name.lower())
            if definition is None:
                return f"Property not defined: {name}"
            if value is not None and not _matches(definition["Datatype"], value):
                return f"Property type does not match definition: {name}"
        return None

"""The contact sync: claims queued identifies and upserts them into a Mailjet contact list.

Identifies are grouped into ``managemanycontacts`` jobs of at most ``job_size`` contacts, one entry
per email with traits merged in arrival order. Each job is polled to its end. Nothing leaves the queue
except as applied (delivered) or as a dead letter with its reason: no email, a contact Mailjet refused,
or (as a separate dead letter) one property whose type conflicts with its definition. The shared
delivery loop gives items back after a failure; this module holds how to make a job and read its end.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.delivery.loop import DeliveryLoop, describe, halves, stored_object
from bridge.delivery.pacing import PacingPolicy
from bridge.delivery.upstream import UpstreamError, Verdict
from bridge.metrics import Metrics
from bridge.outbound.intake import CONTACT_KIND, PROPERTY_KIND, identify_email
from bridge.outbound.mailjet import JOB_DONE, JOB_FAILED, Auth, MailjetClient
from bridge.outbound.traits import (
    ContactUpdate,
    PropertyPlan,
    Rejected,
    contact_update,
    plan_properties,
    unsendable,
)
from bridge.storage.base import ClaimedItem, DeadLetter, Outcome, Store


@dataclass(frozen=True)
class ContactSyncPolicy:
    #: Contacts per managemanycontacts job (RudderStack's tested size; 50,000 is known to fail).
    job_size: int = 5000
    #: A partial job waits until no identify arrived for this long, so bursts make few jobs...
    quiet_seconds: float = 1.0
    #: ...but never longer than this.
    max_wait_seconds: float = 10.0
    #: Renewed while a job is polled, so a dead process's identifies come back within a lease.
    lease_seconds: float = 60.0
    poll_first_seconds: float = 0.5
    poll_max_seconds: float = 10.0
    job_timeout_seconds: float = 600.0
    idle_seconds: float = 0.5
    pacing: PacingPolicy = field(default_factory=PacingPolicy)


@dataclass
class _Contact:
    """One entry of a job, and the queue items it stands for."""

    update: ContactUpdate
    items: list[ClaimedItem] = field(default_factory=list)
    #: The newest identify timestamp merged in (replays aside), remembered once the job applied it.
    newest: float | None = None

    def entry(self, properties: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"Email": self.update.email}
        if self.update.name:
            entry["Name"] = self.update.name
        entry["Properties"] = properties
        return entry


#: One readable identify: its item, the contact it describes, and its timestamp (Unix seconds).
_Update = tuple[ClaimedItem, ContactUpdate, float | None]


def identify_time(event: dict[str, Any]) -> float | None:
    """The identify's own ``timestamp`` (ISO 8601), or None when it has none that can be read."""
    value = event.get("timestamp")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass
class _Job:
    """What one managemanycontacts call carries: contacts, their typed properties, and the list."""

    contacts: list[_Contact]
    plan: PropertyPlan = field(default_factory=PropertyPlan)
    list_id: int = 1
    action: str = "addnoforce"

    def entry(self, contact: _Contact) -> dict[str, Any]:
        return contact.entry(self.plan.send.get(contact.update.email, {}))

    def entries(self) -> list[dict[str, Any]]:
        return [self.entry(c) for c in self.contacts]

    def sent(self, contact: _Contact) -> str:
        """The contact's entry as the debugger shows it (lone surrogates escaped, so it stores)."""
        entry = self.entry(contact)
        try:
            return json.dumps(entry, ensure_ascii=False).encode("utf-8").decode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(entry, default=str)


class ContactSync(DeliveryLoop[_Job]):
    """Segment identifies to Mailjet contacts, in jobs."""

    upstream = "mailjet"
    upstream_name = "Mailjet"
    credential_name = "API key pair"
    items_name = "identifies"
    owner_prefix = "mj"
    missing_credential = ("no_api_keys", "no Mailjet API key pair is set; identifies wait")

    def __init__(
        self,
        store: Store,
        client: MailjetClient,
        *,
        credentials: Callable[[], Auth | None],
        target: Callable[[], tuple[int, str]],
        policy: ContactSyncPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
        rng: random.Random | None = None,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy or ContactSyncPolicy()
        super().__init__(store, kind=CONTACT_KIND, claim_limit=self.policy.job_size,
                         lease_seconds=self.policy.lease_seconds, pacing=self.policy.pacing,
                         idle_seconds=self.policy.idle_seconds, clock=clock, rng=rng, owner=owner,
                         metrics=metrics)
        self.client = client
        self.credentials = credentials
        self.target = target
        self.sleep = sleep
        self._definitions: dict[str, str] | None = None
        #: Jobs started, for operators and the burst benchmark.
        self.jobs_started = 0

    # -- the direction's part of the round ----------------------------------------------------------

    def credential(self) -> Auth | None:
        return self.credentials()

    def due(self, now: float) -> bool:
        """A full job goes at once; a partial one waits for the burst to settle (within limits)."""
        due = self.store.due_summary(self.kind, now, up_to=self.policy.job_size)
        if due.count == 0:
            return False
        if due.count < self.policy.job_size and due.oldest_created_at and due.newest_created_at:
            settling = now - due.newest_created_at < self.policy.quiet_seconds
            if settling and now - due.oldest_created_at < self.policy.max_wait_seconds:
                return False
        return True

    def prepare(self, items: list[ClaimedItem]) -> tuple[list[_Job], list[Outcome]]:
        """One entry per email, traits merged in timestamp order (arrival order among equals);
        identifies with no email die here, and so does any identify that cannot be read (each on its
        own). An identify older than the newest already applied to its contact is settled without
        being sent: a redelivered or replayed identify never rolls a contact back."""
        parsed, dead = self.isolate(lambda item, text: (item, stored_object(text)),
                                    ((i, i.payload) for i in items))
        missing = {e.get("userId") for _, e in parsed if not identify_email(e) and e.get("userId")}
        known = self.store.emails_for(missing) if missing else {}

        def contact_of(item: ClaimedItem, event: dict[str, Any]) -> _Update | Outcome:
            email = identify_email(event) or known.get(event.get("userId") or "")
            if not email:
                user = event.get("userId")
                return Outcome(item.id, error=(
                    "no email: the identify has no traits.email or context.traits.email"
                    + (f", and no email is known for userId {user!r}" if user else " and no userId")))
            update = contact_update(email, event.get("traits") or {})
            problem = unsendable(email) or unsendable(update.name)
            if problem:
                return Outcome(item.id, error=(
                    f"the contact cannot be sent to Mailjet: its email or name is {problem}"))
            return item, update, identify_time(event)

        updates, no_email = self.isolate(contact_of, parsed)
        updates = self._drop_superseded(updates)
        contacts: dict[str, _Contact] = {}
        # a replay applies last, whatever its age; so does an identify without a timestamp
        for item, update, ts in sorted(updates, key=lambda u: (u[0].replayed or u[2] is None, u[2] or 0.0,
                                                               u[0].id)):
            if update.email in contacts:
                contacts[update.email].update.merge(update)
            else:
                contacts[update.email] = _Contact(update)
            contact = contacts[update.email]
            contact.items.append(item)
            if ts is not None and not item.replayed:
                contact.newest = max(ts, contact.newest or ts)
        return ([_Job(list(contacts.values()))] if contacts else []), dead + no_email

    def _drop_superseded(self, updates: list[_Update]) -> list[_Update]:
        """Settle, unsent, the identifies older than the newest applied to their contact."""
        newest = self.store.newest_applied({u.email for _, u, _ in updates})
        stale = [item for item, update, ts in updates
                 if ts is not None and not item.replayed and ts < newest.get(update.email, ts)]
        if stale:
            self.store.mark_delivered([Outcome(
                item.id, response="not sent: a newer identify was already applied to this contact",
            ) for item in stale], self.clock())
            self.report("superseded", [], identifies=len(stale))  # settled, nothing to count as sent
        gone = {item.id for item in stale}
        return [u for u in updates if u[0].id not in gone]

    def plan(self, groups: list[_Job], credential: Auth) -> list[_Job]:
        """Type every property against Mailjet's definitions, and choose the list. Bad values were
        refused one property at a time; a contact whose entry still is not strict JSON (a last guard)
        is a dead letter, and the others go on."""
        list_id, action = self.target()
        for job in groups:
            job.plan = self._plan(job.contacts, credential)
            job.list_id, job.action = list_id, action
            self._record_rejected(job.plan.rejected, job.contacts)
            for contact, problem in [(c, _unencodable(job.entry(c))) for c in job.contacts]:
                if problem:
                    job.contacts.remove(contact)
                    self._dead(job, [contact], f"the contact cannot be sent to Mailjet: {problem}")
        return [job for job in groups if job.contacts]

    def send(self, credential: Auth, group: _Job) -> int:
        job_id = self.client.manage_many_contacts(group.list_id, group.action, group.entries(), credential)
        self.jobs_started += 1
        return self._finish_job(job_id, group, credential)

    def reject(self, group: _Job, error: UpstreamError) -> int:
        self._dead(group, group.contacts, f"Mailjet refused the contact ({error.status}): {error.message}")
        return len(self.items(group))

    def items(self, group: _Job) -> list[ClaimedItem]:
        return [i for c in group.contacts for i in c.items]

    def size(self, group: _Job) -> int:
        return len(group.contacts)

    def split(self, group: _Job) -> tuple[_Job, _Job]:
        first, second = halves(group.contacts)
        return (_Job(first, group.plan, group.list_id, group.action),
                _Job(second, group.plan, group.list_id, group.action))

    # -- property definitions -----------------------------------------------------------------------

    def _plan(self, contacts: list[_Contact], auth: Auth) -> PropertyPlan:
        """Type every property; create missing definitions (listing refreshed once on a miss).

        A definition Mailjet refuses makes a dead letter of that property alone; any other failure
        raises UpstreamError, and the delivery loop gives the whole round back.
        """
        updates = [c.update for c in contacts]
        if self._definitions is None:
            self._definitions = self.client.contact_metadata(auth)
        plan = plan_properties(updates, self._definitions)
        if plan.create:
            self._definitions = self.client.contact_metadata(auth)  # a miss: refresh once
            plan = plan_properties(updates, self._definitions)
        failed: list[Rejected] = []
        for name, datatype in plan.create.items():
            try:
                self.client.create_metadata(name, datatype, auth)
                self._definitions[name] = datatype
            except UpstreamError as exc:
                if exc.verdict is not Verdict.REJECTED:
                    raise
                if "already exists" in exc.message:  # made meanwhile by someone else
                    self._definitions = self.client.contact_metadata(auth)
                    continue
                failed.extend(Rejected(c.update.email, name, c.update.properties.get(name),
                                       f"Mailjet refused the property definition: {exc.message}")
                              for c in contacts if name in c.update.properties)
        if plan.create:
            plan = plan_properties(updates, self._definitions)
        for rejected in failed:
            plan.send[rejected.email].pop(rejected.name, None)
        plan.rejected.extend(failed)
        return plan

    def _record_rejected(self, rejected: list[Rejected], contacts: list[_Contact]) -> None:
        if not rejected:
            return
        first_item = {c.update.email: c.items[0].id for c in contacts}
        self.store.add_dead_letters([
            DeadLetter(
                PROPERTY_KIND,
                f"{first_item.get(r.email)}:{r.email}:{r.name}",
                "property",
                json.dumps({"email": r.email, "property": r.name, "value": r.value}, default=str),
                r.reason,
            )
            for r in rejected
        ], self.clock())

    # -- jobs ---------------------------------------------------------------------------------------

    def _finish_job(self, job_id: int, job: _Job, auth: Auth) -> int:
        """Poll the job to its end; per-contact errors become dead letters, the rest delivered."""
        started = self.clock()
        status = self._poll(job, job_id, auth)
        failures: dict[str, str] = {}
        unattributed: list[str] = []
        if status.get("Status") in JOB_FAILED or status.get("Error"):
            failures, unattributed = self._job_errors(job_id, status, auth, job.contacts)
        now = self.clock()
        answer = f"job {job_id}: {status.get('Status')}"
        delivered: list[Outcome] = []
        dead: list[_Contact] = []
        for contact in job.contacts:
            if contact.update.email in failures:
                dead.append(contact)
                continue
            delivered.extend(Outcome(i.id, sent=job.sent(contact), status=201, response=answer)
                             for i in contact.items)
        self.delivered(f"job {job_id} of {len(job.contacts)} contacts ended: {status.get('Status')}")
        if delivered:
            self.store.mark_delivered(delivered, now)
            self.store.record_applied(
                {c.update.email: c.newest for c in job.contacts
                 if c.newest is not None and c.update.email not in failures}, now)
        seconds = self.clock() - started
        if self.metrics:
            self.metrics.observe_latency(self.upstream, seconds * 1000)  # a job, start to end
        self.report("delivered", ["identify"] * len(delivered), job_id=job_id,
                    job_status=status.get("Status"), contacts=len(job.contacts), seconds=round(seconds, 3))
        for contact in dead:
            self._dead(job, [contact], f"Mailjet job {job_id}: {failures[contact.update.email]}")
        if unattributed:
            self.store.add_dead_letters([DeadLetter(
                CONTACT_KIND, f"job:{job_id}", "job",
                json.dumps({"job_id": job_id, "list_id": job.list_id, "status": status}, default=str),
                "Mailjet reported errors it did not tie to a contact: " + "; ".join(unattributed)[:900],
            )], now)
        return len(self.items(job))

    def _poll(self, job: _Job, job_id: int, auth: Auth) -> dict[str, Any]:
        """The job's final status. Refused keys or a job that never ends raise UpstreamError; any
        other hiccup while polling keeps polling the same job (it runs on at Mailjet regardless).

        The job's leases are renewed while it runs, so they can stay short: if this process dies,
        another takes the identifies over within a lease.
        """
        started = self.clock()
        renewed = started
        pause = self.policy.poll_first_seconds
        while True:
            self.sleep(pause)
            if self.clock() - renewed >= self.lease_seconds / 3:
                renewed = self.clock()
                self.store.renew([i.id for i in self.items(job)], self.owner, renewed + self.lease_seconds)
            try:
                status = self.client.job(job.list_id, job_id, auth)
            except UpstreamError as exc:
                if exc.verdict is Verdict.AUTH:
                    raise
                status = {"Status": f"unknown ({exc})"}
            if status.get("Status") == JOB_DONE or status.get("Status") in JOB_FAILED:
                return status
            if self.clock() - started > self.policy.job_timeout_seconds:
                raise UpstreamError(None, f"job {job_id} did not end within "
                                          f"{self.policy.job_timeout_seconds:g} s")
            pause = min(pause * 2, self.policy.poll_max_seconds)

    def _job_errors(self, job_id: int, status: dict[str, Any], auth: Auth,
                    contacts: list[_Contact]) -> tuple[dict[str, str], list[str]]:
        """Per-contact errors from the job's error file, read leniently (its format is undocumented).

        Entries naming an email of this job are tied to that contact; anything else is reported
        as a job-level dead letter, so nothing is hidden.
        """
        try:
            report = self.client.job_errors(job_id, auth)
        except UpstreamError as exc:
            report = None
            fallback = [f"error file unavailable ({exc}); job status: {status.get('Error') or status}"]
        else:
            fallback = []
        emails = {c.update.email for c in contacts}
        failures: dict[str, str] = {}
        unattributed: list[str] = list(fallback)
        entries = report if isinstance(report, list) else ([report] if report else [])
        for entry in entries:
            text = json.dumps(entry, ensure_ascii=False, default=str)
            found = _email_in(entry, emails)
            if found:
                failures[found] = _error_text(entry) or text
            else:
                unattributed.append(text[:300])
        if not entries and not fallback and status.get("Error"):
            unattributed.append(str(status.get("Error")))
        return failures, unattributed

    def _dead(self, job: _Job, contacts: list[_Contact], reason: str) -> None:
        outcomes = [Outcome(i.id, sent=job.sent(c), error=reason, recipient=c.update.email)
                    for c in contacts for i in c.items]
        self.store.mark_dead(outcomes, self.owner, self.clock())
        self.report("dead", ["identify"] * len(outcomes), error=reason)


def _email_in(entry: Any, emails: set[str]) -> str | None:
    """The first string in an error entry that is one of the job's emails."""
    if isinstance(entry, str):
        candidate = entry.strip().lower()
        return candidate if candidate in emails else None
    values = entry.values() if isinstance(entry, dict) else entry if isinstance(entry, list) else []
    for value in values:
        found = _email_in(value, emails)
        if found:
            return found
    return None


def _error_text(entry: Any) -> str | None:
    if isinstance(entry, dict):
        for key in ("Error", "error", "ErrorMessage", "message", "Message"):
            if entry.get(key):
                return str(entry[key])
    return None


def _unencodable(entry: dict[str, Any]) -> str | None:
    """Why an entry is not strict JSON in UTF-8 (the job body must be), or None."""
    try:
        json.dumps(entry, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        return describe(exc)
    return None

"""The contact sync: claims queued identifies and upserts them into a Mailjet list (SPEC §3).

Identifies are grouped into ``managemanycontacts`` jobs of at most ``job_size`` contacts, one entry
per email with traits merged in arrival order. Each job is polled to its end. Nothing leaves the queue
except as applied (delivered) or as a dead letter with its reason: no email, a contact Mailjet refused,
or (as a separate dead letter) one property whose type conflicts with its definition.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .mailjet_client import JOB_DONE, JOB_FAILED, Auth, MailjetClient, MailjetError
from .metrics import Metrics
from .pacing import DeliveryLoop, PacingPolicy
from .retry import Verdict, classify
from .segment_intake import identify_email
from .storage.base import MAILJET_CONTACT, MAILJET_PROPERTY, ClaimedItem, DeadLetter, Outcome, Store
from .traits import ContactUpdate, PropertyPlan, Rejected, contact_update, plan_properties

log = logging.getLogger(__name__)

UPSTREAM = "mailjet"


@dataclass(frozen=True)
class ContactSyncPolicy:
    #: Contacts per managemanycontacts job (RudderStack's tested size; 50,000 is known to fail).
    job_size: int = 5000
    #: A partial job waits until no identify arrived for this long, so bursts make few jobs...
    quiet_seconds: float = 1.0
    #: ...but never longer than this.
    max_wait_seconds: float = 10.0
    #: Jobs take a while; the lease must outlast polling.
    lease_seconds: float = 900.0
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

    def entry(self, properties: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"Email": self.update.email}
        if self.update.name:
            entry["Name"] = self.update.name
        entry["Properties"] = properties
        return entry


class _Stop(Exception):
    """The cycle ends early; its items were released."""


class ContactSync(DeliveryLoop):
    """Segment identifies to Mailjet contacts, in jobs."""

    upstream = UPSTREAM
    owner_prefix = "mj"

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
        super().__init__(store, pacing=self.policy.pacing, idle_seconds=self.policy.idle_seconds,
                         clock=clock, rng=rng, owner=owner, metrics=metrics)
        self.client = client
        self.credentials = credentials
        self.target = target
        self.sleep = sleep
        self._definitions: dict[str, str] | None = None
        #: Jobs started, for operators and the burst benchmark.
        self.jobs_started = 0

    # -- one cycle ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Make at most one job of due identifies. Returns how many identifies were settled."""
        auth = self.credentials()
        if not auth:
            self.pacer.set_status("no_api_keys", "no Mailjet API key pair is set; identifies wait")
            return 0
        if not self.pacer.ready(":".join(auth)):
            return 0
        now = self.clock()
        due = self.store.due_summary(MAILJET_CONTACT, now)
        if due.count == 0:
            return 0
        if due.count < self.policy.job_size and due.oldest_created_at and due.newest_created_at:
            settling = now - due.newest_created_at < self.policy.quiet_seconds
            if settling and now - due.oldest_created_at < self.policy.max_wait_seconds:
                return 0
        items = self.store.claim(
            MAILJET_CONTACT, self.policy.job_size, self.owner, self.policy.lease_seconds, now
        )
        if not items:
            return 0
        try:
            return self._sync(items, auth)
        except _Stop:
            return 0

    def _sync(self, items: list[ClaimedItem], auth: Auth) -> int:
        contacts, dead = self._contacts(items)
        if dead:
            self.store.mark_dead(dead, self.owner, self.clock())
            self._report("dead", len(dead), error=dead[0].error)
        if not contacts:
            return len(dead)
        plan = self._plan(contacts, items, auth)
        self._record_rejected(plan.rejected, contacts)
        list_id, action = self.target()
        settled = len(dead)
        work = deque([contacts])
        while work:
            group = work.popleft()
            try:
                job_id = self.client.manage_many_contacts(
                    list_id, action, [c.entry(plan.send[c.update.email]) for c in group], auth)
            except MailjetError as exc:
                if classify(exc.status) is Verdict.REJECTED:
                    if len(group) > 1:
                        middle = len(group) // 2
                        work.extendleft([group[middle:], group[:middle]])
                        continue
                    self._dead(group, plan, f"Mailjet refused the contact ({exc.status}): {exc.message}")
                    settled += len(group[0].items)
                    continue
                self._give_back(exc, auth, [i for g in [group, *work] for c in g for i in c.items])
                raise _Stop from exc
            self.jobs_started += 1
            settled += self._finish_job(list_id, job_id, group, plan, auth, list(work))
        return settled

    def _contacts(self, items: list[ClaimedItem]) -> tuple[list[_Contact], list[Outcome]]:
        """One entry per email, traits merged in arrival order; identifies with no email die here."""
        events = [json.loads(item.payload) for item in items]
        missing = {e.get("userId") for e in events if not identify_email(e) and e.get("userId")}
        known = self.store.emails_for(missing) if missing else {}
        contacts: dict[str, _Contact] = {}
        dead: list[Outcome] = []
        for item, event in zip(items, events, strict=True):
            email = identify_email(event) or known.get(event.get("userId") or "")
            if not email:
                user = event.get("userId")
                dead.append(Outcome(item.id, error=(
                    "no email: the identify has no traits.email or context.traits.email"
                    + (f", and no email is known for userId {user!r}" if user else " and no userId")
                )))
                continue
            update = contact_update(email, event.get("traits") or {})
            if email in contacts:
                contacts[email].update.merge(update)
            else:
                contacts[email] = _Contact(update)
            contacts[email].items.append(item)
        return list(contacts.values()), dead

    # -- property definitions -----------------------------------------------------------------------

    def _plan(self, contacts: list[_Contact], items: list[ClaimedItem], auth: Auth) -> PropertyPlan:
        """Type every property; create missing definitions (listing refreshed once on a miss)."""
        updates = [c.update for c in contacts]
        try:
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
                except MailjetError as exc:
                    if classify(exc.status) is not Verdict.REJECTED:
                        raise
                    if "already exists" in exc.message:  # made meanwhile by someone else
                        self._definitions = self.client.contact_metadata(auth)
                        continue
                    failed.extend(Rejected(c.update.email, name, c.update.properties.get(name),
                                           f"Mailjet refused the property definition: {exc.message}")
                                  for c in contacts if name in c.update.properties)
            if plan.create:
                plan = plan_properties(updates, self._definitions)
        except MailjetError as exc:
            self._give_back(exc, auth, items)
            raise _Stop from exc
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
                MAILJET_PROPERTY,
                f"{first_item.get(r.email)}:{r.email}:{r.name}",
                "property",
                json.dumps({"email": r.email, "property": r.name, "value": r.value},
                           ensure_ascii=False, default=str),
                r.reason,
            )
            for r in rejected
        ], self.clock())

    # -- jobs ---------------------------------------------------------------------------------------

    def _finish_job(self, list_id: int, job_id: int, group: list[_Contact], plan: PropertyPlan,
                    auth: Auth, untried: list[list[_Contact]]) -> int:
        """Poll the job to its end; per-contact errors become dead letters, the rest delivered."""
        started = self.clock()
        status = self._poll(list_id, job_id, auth, group, untried)
        failures: dict[str, str] = {}
        unattributed: list[str] = []
        if status.get("Status") in JOB_FAILED or status.get("Error"):
            failures, unattributed = self._job_errors(job_id, status, auth, group)
        now = self.clock()
        answer = f"job {job_id}: {status.get('Status')}"
        delivered: list[Outcome] = []
        dead: list[_Contact] = []
        for contact in group:
            if contact.update.email in failures:
                dead.append(contact)
                continue
            sent = json.dumps(contact.entry(plan.send[contact.update.email]), ensure_ascii=False)
            delivered.extend(Outcome(i.id, sent=sent, status=201, response=answer) for i in contact.items)
        self.pacer.succeeded(f"job {job_id} of {len(group)} contacts ended: {status.get('Status')}")
        if delivered:
            self.store.mark_delivered(delivered, now)
        seconds = self.clock() - started
        if self.metrics:
            self.metrics.observe_latency(UPSTREAM, seconds * 1000)  # a job, start to end
        self._report("delivered", len(delivered), job_id=job_id, job_status=status.get("Status"),
                     contacts=len(group), seconds=round(seconds, 3))
        for contact in dead:
            self._dead([contact], plan, f"Mailjet job {job_id}: {failures[contact.update.email]}")
        if unattributed:
            self.store.add_dead_letters([DeadLetter(
                MAILJET_CONTACT, f"job:{job_id}", "job",
                json.dumps({"job_id": job_id, "list_id": list_id, "status": status}, default=str),
                "Mailjet reported errors it did not tie to a contact: " + "; ".join(unattributed)[:900],
            )], now)
        return sum(len(c.items) for c in group)

    def _poll(self, list_id: int, job_id: int, auth: Auth, group: list[_Contact],
              untried: list[list[_Contact]]) -> dict[str, Any]:
        started = self.clock()
        pause = self.policy.poll_first_seconds
        while True:
            self.sleep(pause)
            try:
                status = self.client.job(list_id, job_id, auth)
            except MailjetError as exc:
                if classify(exc.status) is Verdict.AUTH:
                    self._give_back(exc, auth, [i for g in [group, *untried] for c in g for i in c.items])
                    raise _Stop from exc
                status = {"Status": f"unknown ({exc})"}  # a hiccup while polling: keep polling
            if status.get("Status") == JOB_DONE or status.get("Status") in JOB_FAILED:
                return status
            if self.clock() - started > self.policy.job_timeout_seconds:
                error = MailjetError(None, f"job {job_id} did not end within "
                                           f"{self.policy.job_timeout_seconds:g} s")
                self._give_back(error, auth, [i for g in [group, *untried] for c in g for i in c.items])
                raise _Stop
            pause = min(pause * 2, self.policy.poll_max_seconds)

    def _job_errors(self, job_id: int, status: dict[str, Any], auth: Auth,
                    group: list[_Contact]) -> tuple[dict[str, str], list[str]]:
        """Per-contact errors from the job's error file, read leniently (its format is undocumented).

        Entries naming an email of this job are tied to that contact; anything else is reported
        as a job-level dead letter, so nothing is hidden.
        """
        try:
            report = self.client.job_errors(job_id, auth)
        except MailjetError as exc:
            report = None
            fallback = [f"error file unavailable ({exc}); job status: {status.get('Error') or status}"]
        else:
            fallback = []
        emails = {c.update.email for c in group}
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

    def _report(self, outcome: str, count: int, **fields: Any) -> None:
        """One log line per job or failure, and the counters."""
        if self.metrics and count:
            self.metrics.outcome(UPSTREAM, outcome, ["identify"] * count)
        log.log(logging.INFO if outcome == "delivered" else logging.WARNING, "mailjet %s", outcome,
                extra={"upstream": UPSTREAM, "outcome": outcome, "identifies": count, **fields})

    # -- settling -----------------------------------------------------------------------------------

    def _dead(self, group: list[_Contact], plan: PropertyPlan, reason: str) -> None:
        outcomes = []
        for contact in group:
            sent = json.dumps(contact.entry(plan.send.get(contact.update.email, {})), ensure_ascii=False)
            outcomes.extend(Outcome(i.id, sent=sent, error=reason) for i in contact.items)
        self.store.mark_dead(outcomes, self.owner, self.clock())
        self._report("dead", len(outcomes), error=reason)

    def _give_back(self, exc: MailjetError, auth: Auth, items: list[ClaimedItem]) -> None:
        """Release items after a transient failure or refused credentials, and pace the next try."""
        now = self.clock()
        ids = [i.id for i in items]
        if classify(exc.status) is Verdict.AUTH:
            self.pacer.refused(":".join(auth), f"Mailjet refused the API key pair ({exc.status}); "
                                              "identifies wait in the queue until valid keys are set")
            self.store.release(ids, self.owner, now, f"API keys refused ({exc.status})",
                               count_attempt=False, status=exc.status)
            return
        what = f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        self._report("retried", len(ids), status=exc.status, error=what[:300])
        delay = self.pacer.failed(f"Mailjet unavailable: {what}"[:300], exc.retry_after)
        self.store.release(ids, self.owner, now + delay, f"Mailjet unavailable: {what}"[:500],
                           status=exc.status)


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

"""The contact sync against a real fake-Mailjet HTTP server: every rule of docs/behaviour.md,
"Outbound mapping", errors and bursts."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from typing import Any

import pytest

from bridge.config import DEFAULT_SCHEMA_DIR
from bridge.delivery.pacing import PacingPolicy, status_key
from bridge.outbound.contact_sync import ContactSync, ContactSyncPolicy
from bridge.outbound.intake import CONTACT_KIND as MAILJET_CONTACT
from bridge.outbound.intake import sort_segment_events
from bridge.outbound.mailjet import MailjetClient
from bridge.payloads.body import parse_body
from bridge.payloads.schemas import EventValidator
from bridge.storage.base import NewItem, Store
from tests.conftest import Clock
from tests.fakes.mailjet import FakeMailjet, Scripted

VALIDATOR = EventValidator.segment(DEFAULT_SCHEMA_DIR)


class Rig:
    def __init__(self, store: Store, fake: FakeMailjet, **policy: Any) -> None:
        self.store, self.fake, self.clock = store, fake, Clock()
        self.auth: tuple[str, str] | None = ("mj-key", "mj-secret")
        self.target = (1, "addnoforce")
        options = {"quiet_seconds": 0.0, "poll_first_seconds": 0.5,
                   "pacing": PacingPolicy(backoff_base=2.0, auth_retry_seconds=30.0), **policy}
        self.sync = ContactSync(
            store, MailjetClient(fake.url), credentials=lambda: self.auth, target=lambda: self.target,
            policy=ContactSyncPolicy(**options), clock=self.clock, sleep=self.clock.advance,
            rng=random.Random(3),
        )

    def accept(self, *events: dict[str, Any]) -> dict[str, int]:
        intake = sort_segment_events(parse_body(json.dumps(list(events)).encode()), VALIDATOR)
        result = self.store.accept(intake.items, intake.quarantined, self.clock(), intake.identities)
        return {"accepted": result.accepted, "skipped": intake.skipped, "ignored": intake.ignored}

    def run(self) -> int:
        return self.sync.run_once()

    def stats(self) -> dict[str, Any]:
        return self.store.stats(self.clock())

    def status(self) -> dict[str, Any]:
        return json.loads(self.store.get_setting(status_key("mailjet")) or "{}")

    def dead(self) -> list[dict[str, Any]]:
        return self.store.dead_letters()


@pytest.fixture
def rig(store: Store, fake_mailjet: FakeMailjet) -> Rig:
    return Rig(store, fake_mailjet)


def identify(email: str | None = None, user_id: str | None = None, **traits: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify", "traits": dict(traits)}
    if email:
        event["traits"]["email"] = email
    if user_id:
        event["userId"] = user_id
    return event


RICH_TRAITS = {
    "firstName": "Ada", "lastName": "Lovelace", "Order Count": 0, "isVip": False, "nickname": "",
    "ltv": 1234.5, "signupDate": "2024-05-01T10:20:30Z", "tags": ["analyst", "beta"],
    "address": {"city": "London", "postalCode": "NW1"},
    "order_completed_last_30days": True,
}


def test_identify_becomes_a_typed_contact_in_the_list(rig: Rig) -> None:
    rig.accept(identify("Ada@Example.com ", "u-1", **RICH_TRAITS))
    assert rig.run() == 1
    contact = rig.fake.contacts["ada@example.com"]
    assert contact["Name"] == "Ada Lovelace"
    assert contact["Properties"] == {
        "first_name": "Ada", "last_name": "Lovelace", "order_count": 0, "is_vip": False,
        "nickname": "", "ltv": 1234.5, "signup_date": "2024-05-01T10:20:30Z",
        "tags": '["analyst","beta"]', "address_city": "London", "address_postal_code": "NW1",
        "order_completed_last_30days": True,
    }
    types = {name: d["Datatype"] for name, d in rig.fake.metadata.items()}
    assert types == {
        "first_name": "str", "last_name": "str", "order_count": "int", "is_vip": "bool",
        "nickname": "str", "ltv": "float", "signup_date": "datetime", "tags": "str",
        "address_city": "str", "address_postal_code": "str", "order_completed_last_30days": "bool",
    }
    assert rig.fake.lists[1] == {"ada@example.com": "subscribed"}
    assert rig.stats()["delivered"] == 1
    assert rig.status()["state"] == "ok"
    assert rig.sync.jobs_started == 1


def test_identifies_for_one_email_merge_in_arrival_order(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="free", seats=1, name="First"),
               identify("b@x.com", plan="pro"),
               identify("A@X.com", plan="team", seats=None))
    assert rig.run() == 3
    job = rig.fake.jobs[1]
    assert [c["Email"] for c in job.contacts] == ["a@x.com", "b@x.com"]  # one entry per email
    # the later null wins; seats was never defined in Mailjet, so there is nothing to clear
    assert job.contacts[0]["Properties"] == {"name": "First", "plan": "team"}
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"name": "First", "plan": "team"}


def test_null_clears_a_defined_property_and_is_skipped_when_undefined(rig: Rig) -> None:
    rig.fake.define("plan", "str")
    rig.fake.contacts["a@x.com"] = {"Name": "", "Properties": {"plan": "pro"}}
    rig.accept(identify("a@x.com", plan=None, never_defined=None, address={"city": None}))
    rig.run()
    assert rig.fake.contacts["a@x.com"]["Properties"] == {}
    assert "never_defined" not in rig.fake.metadata and "address_city" not in rig.fake.metadata
    assert rig.fake.jobs[1].contacts[0]["Properties"] == {"plan": None}


def test_values_are_converted_to_existing_definitions(rig: Rig) -> None:
    for name, datatype in {"ltv": "float", "age": "int", "note": "str", "born": "datetime"}.items():
        rig.fake.define(name, datatype)
    rig.accept(identify("a@x.com", ltv=10, age="33", note=7, born="1990-05-17"))
    rig.run()
    assert rig.fake.contacts["a@x.com"]["Properties"] == {
        "ltv": 10.0, "age": 33, "note": "7", "born": "1990-05-17T00:00:00Z"}
    assert rig.dead() == []


def test_type_conflict_dead_letters_the_property_and_writes_the_rest(rig: Rig) -> None:
    rig.fake.define("age", "int")
    rig.accept(identify("a@x.com", age="thirty", plan="pro"))
    assert rig.run() == 1
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}
    (dead,) = rig.dead()
    assert dead["kind"] == "mailjet_property"
    assert json.loads(dead["payload"]) == {"email": "a@x.com", "property": "age", "value": "thirty"}
    assert "defined as int" in dead["last_error"]
    assert rig.stats()["delivered"] == 1


def test_identify_without_email_uses_the_email_known_for_its_user_id(rig: Rig) -> None:
    rig.accept(identify("known@x.com", "u-7", plan="free"))
    rig.run()
    rig.accept(identify(None, "u-7", plan="pro"))
    assert rig.run() == 1
    assert rig.fake.contacts["known@x.com"]["Properties"]["plan"] == "pro"
    assert len(rig.fake.contacts) == 1


def test_identify_with_neither_email_nor_known_user_is_a_dead_letter(rig: Rig) -> None:
    rig.accept(identify(None, "stranger", plan="pro"), identify(None, None, plan="x"))
    assert rig.run() == 2
    assert rig.fake.contacts == {} and rig.fake.jobs == {}
    reasons = sorted(d["last_error"] for d in rig.dead())
    assert reasons[0].startswith("no email") and "'stranger'" in reasons[1]


def test_context_traits_email_is_used(rig: Rig) -> None:
    rig.accept({"type": "identify", "userId": "u", "traits": {"plan": "x"},
                "context": {"traits": {"email": "Ctx@X.com"}}})
    rig.run()
    assert "ctx@x.com" in rig.fake.contacts


@pytest.mark.parametrize(("action", "membership"), [("addforce", "subscribed"), ("unsub", "unsub")])
def test_list_and_action_come_from_the_target(rig: Rig, action: str, membership: str) -> None:
    rig.fake.lists[42] = {}
    rig.target = (42, action)
    rig.accept(identify("a@x.com", plan="pro"))
    rig.run()
    assert rig.fake.lists[42] == {"a@x.com": membership}
    assert rig.fake.jobs[1].action == action
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}  # sent with every action


def test_definition_listing_is_cached_and_refreshed_on_a_miss(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="pro"))
    rig.run()
    listings = rig.fake.calls("GET", "contactmetadata")
    rig.accept(identify("b@x.com", plan="team"))
    rig.run()
    assert rig.fake.calls("GET", "contactmetadata") == listings  # all known: no new listing
    rig.fake.define("made_elsewhere", "int")
    rig.accept(identify("c@x.com", made_elsewhere=3))
    rig.run()
    assert rig.fake.calls("GET", "contactmetadata") == listings + 1  # one refresh on the miss
    assert rig.fake.calls("POST", "contactmetadata") == 1  # only "plan" was ever created
    assert rig.fake.contacts["c@x.com"]["Properties"] == {"made_elsewhere": 3}


def test_definitions_on_several_pages_are_all_read(rig: Rig) -> None:
    for n in range(1005):
        rig.fake.define(f"p{n}", "str")
    rig.accept(identify("a@x.com", p1004="last page"))
    rig.run()
    assert rig.fake.calls("POST", "contactmetadata") == 0
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"p1004": "last page"}


def test_definition_made_meanwhile_mj18_is_not_an_error(rig: Rig) -> None:
    rig.fake.define("plan", "str")
    empty = {"Count": 0, "Data": [], "Total": 0}
    rig.fake.then(Scripted(200, path="contactmetadata", body=empty),
                  Scripted(200, path="contactmetadata", body=empty))  # a stale listing, twice
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.run() == 1
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}
    assert rig.dead() == []


def test_per_contact_job_errors_become_dead_letters(rig: Rig) -> None:
    rig.accept(identify("good@x.com", plan="pro"), identify("not-an-email", plan="pro"),
               identify("also-good@x.com", plan="team"))
    assert rig.run() == 3
    assert set(rig.fake.contacts) == {"good@x.com", "also-good@x.com"}
    (dead,) = rig.dead()
    assert "Invalid email address" in dead["last_error"]
    assert json.loads(dead["sent"])["Email"] == "not-an-email"
    assert rig.stats()["delivered"] == 2


def test_refused_api_keys_pause_and_drop_nothing(rig: Rig) -> None:
    rig.auth = ("mj-key", "wrong")
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.run() == 0
    assert rig.status()["state"] == "auth_failed"
    assert "wrong" not in json.dumps(rig.status())
    assert rig.run() == 0  # paused
    rig.auth = ("mj-key", "mj-secret")
    assert rig.run() == 1
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}


def test_429_is_retried_after_retry_after(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="pro"))
    rig.fake.then(Scripted(429, path="managemanycontacts", headers={"Retry-After": "20"}))
    assert rig.run() == 0
    assert rig.status()["state"] == "retrying"
    rig.clock.advance(19)
    assert rig.run() == 0
    rig.clock.advance(1.5)
    assert rig.run() == 1
    assert len(rig.fake.jobs) == 1


def test_5xx_while_polling_keeps_polling_the_same_job(store: Store, fake_mailjet: FakeMailjet) -> None:
    fake_mailjet.polls_per_job = 2
    rig = Rig(store, fake_mailjet)
    rig.accept(identify("a@x.com", plan="pro"))
    rig.fake.then(Scripted(500, path="managemanycontacts/1"))
    assert rig.run() == 1
    assert len(rig.fake.jobs) == 1  # not resubmitted
    assert rig.fake.calls("GET", "managemanycontacts/1") == 4
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}


def test_missing_api_keys_mean_identifies_wait(rig: Rig) -> None:
    rig.auth = None
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.run() == 0
    assert rig.status()["state"] == "no_api_keys"
    assert rig.stats()["pending"] == 1


def test_a_partial_job_waits_for_the_burst_to_settle(store: Store, fake_mailjet: FakeMailjet) -> None:
    rig = Rig(store, fake_mailjet, quiet_seconds=1.0, max_wait_seconds=5.0)
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.run() == 0
    rig.clock.advance(0.5)
    rig.accept(identify("b@x.com", plan="pro"))
    rig.clock.advance(0.6)
    assert rig.run() == 0  # the newest is only 0.6 s old
    rig.clock.advance(0.5)
    assert rig.run() == 2
    assert len(rig.fake.jobs) == 1


def test_engage_burst_of_20000_identifies_makes_at_most_5_jobs(
        store: Store, fake_mailjet: FakeMailjet) -> None:
    """Engage sends an identify per audience member on creation; it arrives in batches of 1,000."""
    sync = ContactSync(store, MailjetClient(fake_mailjet.url),
                       credentials=lambda: ("mj-key", "mj-secret"), target=lambda: (1, "addnoforce"),
                       policy=ContactSyncPolicy(poll_first_seconds=0.05, idle_seconds=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=sync.run_forever, args=(stop,))
    thread.start()
    started = time.monotonic()
    try:
        for batch in range(20):
            events = [{"type": "identify", "userId": f"u{batch}-{n}",
                       "traits": {"email": f"member{batch * 1000 + n}@example.com",
                                  "order_completed_last_30days": True},
                       "context": {"personas": {"computation_class": "audience"}}}
                      for n in range(1000)]
            intake = sort_segment_events(parse_body(json.dumps(events).encode()), VALIDATOR)
            store.accept(intake.items, [], time.time(), intake.identities)
        deadline = time.monotonic() + 120
        while store.stats(time.time())["delivered"] < 20_000 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    elapsed = time.monotonic() - started
    assert store.stats(time.time())["delivered"] == 20_000
    assert len(fake_mailjet.jobs) <= 5
    assert all(len(job.contacts) <= 5000 for job in fake_mailjet.jobs.values())
    assert len(fake_mailjet.contacts) == 20_000
    assert sum(1 for m in fake_mailjet.lists[1].values() if m == "subscribed") == 20_000
    print(f"\n20,000 identifies: {len(fake_mailjet.jobs)} jobs, {elapsed:.1f} s")


def test_claims_only_contact_items(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.store.claim("segment_track", 10, "x", 60, rig.clock()) == []
    assert len(rig.store.claim(MAILJET_CONTACT, 10, "x", 60, rig.clock())) == 1


def test_a_property_dead_letter_replays_once_the_definition_is_fixed(rig: Rig) -> None:
    from bridge.ops import replay

    rig.fake.define("age", "int")
    rig.accept(identify("a@x.com", age="thirty", plan="pro"))
    rig.run()
    (dead,) = rig.dead()
    rig.fake.metadata["age"]["Datatype"] = "str"  # the admin changes the definition in Mailjet
    rig.sync._definitions = None  # as after a restart: the listing is read again

    class Just:  # the replay needs only the store
        store = rig.store

    report = replay.replay_dead_letters(Just, [dead["id"]])  # type: ignore[arg-type]
    assert report.requeued == [dead["id"]]
    assert rig.run() == 1
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro", "age": "thirty"}
    assert rig.dead() == []


# -- poison values, stranded rounds, leases, recovery (issue #9) ------------------------------------


def store_raw(rig: Rig, *texts: str) -> None:
    """Queue identifies as stored text, bypassing intake (rows accepted before intake refused such
    values, or anything intake may miss): the loop must isolate them by itself."""
    rig.store.accept([NewItem(MAILJET_CONTACT, hashlib.sha256(t.encode()).hexdigest(), "identify", t)
                      for t in texts], [], rig.clock())


POISON_TRAITS = {
    "infinite": '{"type":"identify","traits":{"email":"inf@x.com","score":1e400,"plan":"pro"}}',
    "surrogate": '{"type":"identify","traits":{"email":"sur@x.com","nick":"\\ud800","plan":"pro"}}',
    "before year 1": '{"type":"identify","traits":{"email":"old@x.com","since":"0001-01-01T00:00:00+05:00",'
                     '"plan":"pro"}}',
    "5,000 digits": '{"type":"identify","traits":{"email":"big@x.com","age":"' + "9" * 5000
                    + '","plan":"pro"}}',
}


def test_poison_traits_dead_letter_the_property_and_apply_the_rest(rig: Rig) -> None:
    """No trait value can stall the direction: each bad property is a dead letter with its reason;
    its contact and every innocent contact beside it are applied in one job."""
    rig.fake.define("age", "int")
    store_raw(rig, *POISON_TRAITS.values(), json.dumps(identify("fine@x.com", plan="pro")))
    assert rig.run() == 5
    assert len(rig.fake.jobs) == 1
    for email in ("inf@x.com", "sur@x.com", "old@x.com", "big@x.com", "fine@x.com"):
        assert rig.fake.contacts[email]["Properties"]["plan"] == "pro"
    reasons = {json.loads(d["payload"])["property"]: d["last_error"] for d in rig.dead()}
    assert "not a finite number" in reasons["score"]
    assert "lone surrogate" in reasons["nick"]
    assert "defined as int" in reasons["age"]
    # a date before year 1 in UTC is no datetime: it is kept as the text it is
    assert rig.fake.contacts["old@x.com"]["Properties"]["since"] == "0001-01-01T00:00:00+05:00"
    assert rig.stats()["leased"] == 0


def test_an_email_that_cannot_be_encoded_dead_letters_only_that_contact(rig: Rig) -> None:
    store_raw(rig, '{"type":"identify","traits":{"email":"a\\ud800@x.com","plan":"pro"}}',
              json.dumps(identify("fine@x.com", plan="pro")))
    assert rig.run() == 2
    (dead,) = rig.dead()
    assert "cannot be sent to Mailjet" in dead["last_error"] and "lone surrogate" in dead["last_error"]
    assert list(rig.fake.contacts) == ["fine@x.com"]


def test_an_unreadable_stored_identify_is_a_dead_letter_not_a_stall(rig: Rig) -> None:
    store_raw(rig, "[1, 2]", json.dumps(identify("fine@x.com", plan="pro")))
    assert rig.run() == 2
    (dead,) = rig.dead()
    assert dead["last_error"].startswith("could not prepare the item: TypeError")
    assert "fine@x.com" in rig.fake.contacts


def test_an_error_outside_any_item_releases_the_round_with_a_backoff(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="pro"))

    def broken() -> tuple[int, str]:
        raise RuntimeError("a bug in the target")

    rig.sync.target = broken
    assert rig.run() == 0
    stats = rig.stats()
    assert (stats["leased"], stats["pending"]) == (0, 1)  # given back at once, not left to expire
    assert rig.status()["state"] == "retrying" and "RuntimeError" in rig.status()["detail"]
    rig.sync.target = lambda: rig.target
    rig.clock.advance(rig.sync.pacer.hold_until - rig.clock())
    assert rig.run() == 1


def test_expired_leases_come_back_without_new_identifies(rig: Rig) -> None:
    rig.accept(identify("a@x.com", plan="pro"))
    rig.store.claim(MAILJET_CONTACT, 10, "process-killed-mid-job", 60, rig.clock())
    rig.clock.advance(61)
    assert rig.run() == 1  # no new identify arrived: the expired lease alone brings it back
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}


def test_a_long_job_renews_its_leases(store: Store, fake_mailjet: FakeMailjet) -> None:
    fake_mailjet.polls_per_job = 12  # polled for longer than a lease (0.5 s, then 10 s steps)
    rig = Rig(store, fake_mailjet, lease_seconds=30.0)
    rig.accept(identify("a@x.com", plan="pro"))
    assert rig.run() == 1
    assert rig.clock() - 1_800_000_000.0 > 30  # the job outlived one lease and still settled


# -- no rollback (#10) --------------------------------------------------------------------------------


def at(ts: str, event: dict[str, Any], message_id: str) -> dict[str, Any]:
    return {**event, "timestamp": ts, "messageId": message_id}


def test_an_older_identify_never_overwrites_a_newer_one(rig: Rig) -> None:
    """Segment redelivers and replays: an identify older (by its timestamp) than the newest applied
    is settled without being sent. On the previous main it rolled the contact back."""
    rig.accept(at("2026-11-02T10:00:00Z", identify("a@x.com", plan="pro"), "new"))
    assert rig.run() == 1
    rig.accept(at("2026-11-01T10:00:00Z", identify("a@x.com", plan="free"), "old"))
    rig.run()
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro"}
    assert len(rig.fake.jobs) == 1  # nothing sent for the old one
    stats = rig.stats()
    assert (stats["pending"], stats["leased"], stats["dead"], stats["delivered"]) == (0, 0, 0, 2)


def test_within_a_batch_the_newest_timestamp_wins_whatever_the_arrival(rig: Rig) -> None:
    rig.accept(at("2026-11-02T10:00:00Z", identify("a@x.com", plan="pro"), "new"),
               at("2026-11-01T10:00:00+00:00", identify("a@x.com", plan="free", seats=3), "old"))
    assert rig.run() == 2
    assert rig.fake.contacts["a@x.com"]["Properties"] == {"plan": "pro", "seats": 3}


def test_an_operator_replay_still_applies(rig: Rig) -> None:
    """An explicit replay of a dead letter applies even when a newer identify was applied since."""
    from bridge.ops import replay

    rig.fake.define("seats", "int")
    rig.accept(at("2026-11-01T10:00:00Z", identify("a@x.com", seats="three"), "old"))
    rig.run()
    (dead,) = rig.dead()  # the property could not be converted
    rig.accept(at("2026-11-02T10:00:00Z", identify("a@x.com", seats=5), "new"))
    rig.run()
    rig.fake.metadata["seats"]["Datatype"] = "str"
    rig.sync._definitions = None

    class Just:
        store = rig.store

    replay.replay_dead_letters(Just, [dead["id"]])  # type: ignore[arg-type]
    assert rig.run() == 1
    assert rig.fake.contacts["a@x.com"]["Properties"]["seats"] == "three"

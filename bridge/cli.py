"""The ``mailjet-bridge`` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bridge import logs
from bridge.config import Settings, load_settings
from bridge.errors import ConfigError, StorageUnavailable
from bridge.metrics import MULTIPROCESS_ENV

if TYPE_CHECKING:
    from bridge.wiring import Bridge

#: A stopped worker exits within this; loops still busy leave their leases to expire.
SHUTDOWN_SECONDS = 8.0


def _settings() -> Settings:
    """Settings from the environment; bad values end the command with one line each."""
    try:
        return load_settings(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"configuration error: {problem}", err=True)
        sys.exit(2)


def _build(settings: Settings) -> Bridge:
    """The bridge's objects (no app, no loop), or an exit with one line per problem."""
    from bridge.wiring import build

    try:
        return build(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"configuration error: {problem}", err=True)
        sys.exit(2)
    except StorageUnavailable as exc:
        click.echo(f"storage error: {exc}", err=True)
        sys.exit(3)


@click.group(help="Mailjet email events to Segment, and Segment identifies to Mailjet.")
@click.version_option(package_name="mailjet-segment-bridge")
def main() -> None:
    logs.configure(logging.INFO)


@main.command(help="Serve the webhooks and forward events (granian and one delivery process; "
                   "what `make run` runs).")
@click.option("--workers", type=click.IntRange(1, 64), help="Web processes [BRIDGE_WORKERS].")
def serve(workers: int | None) -> None:
    from bridge.server import BridgeServer, address_problem

    settings = _settings()
    problem = address_problem(settings.host, settings.port)
    if problem:
        click.echo(f"cannot listen on {settings.host}:{settings.port}: {problem}", err=True)
        sys.exit(1)
    # Every process counts metrics in files of a shared folder (prometheus-client multiprocess mode);
    # it must be set before the first import of prometheus-client and start empty.
    metrics_dir = os.environ.get(MULTIPROCESS_ENV)
    if not metrics_dir:
        metrics_dir = os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="mailjet-bridge-metrics-")
    for leftover in Path(metrics_dir).glob("*.db"):
        leftover.unlink()
    _build(settings).close()  # migrate and announce credentials once, before any process starts
    click.echo(f"mailjet-segment-bridge serving on http://{settings.host}:{settings.port}")
    sys.exit(BridgeServer(settings, workers or settings.workers).run())


@main.command(help="Run the delivery loops alone, beside `gunicorn wsgi:app` web processes.")
def worker() -> None:
    from bridge.delivery.loop import start_loops

    bridge = _build(_settings())
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = start_loops(bridge.loops(), stop)
    stop.wait()
    # Graceful: each loop finishes its round or gives its leases back; all within the 10 s budget.
    deadline = time.monotonic() + SHUTDOWN_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    bridge.close()


def _bridge() -> Bridge:
    return _build(_settings())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -- configuration ----------------------------------------------------------------------------------


@main.group(help="Show or change the stored settings (they win over the environment).")
def config() -> None:
    pass


@config.command("show", help="Show every setting, where it comes from, with secrets masked.")
def config_show() -> None:
    from bridge.config import STORED_SETTINGS, mask

    for key, (value, origin) in _bridge().current.shown().items():
        shown = mask(value) if STORED_SETTINGS[key].secret else (value or "")
        click.echo(f"{key:<20} {shown or '(not set)':<40} {origin}")


@config.command("set", help="Store a setting; it applies from the next delivery on, no restart.")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    import time

    from bridge.config import STORED_SETTINGS, check_stored_setting, mask

    bridge = _bridge()
    try:
        normalised = check_stored_setting(key, value)
    except ConfigError as exc:
        raise click.UsageError(exc.problems[0]) from None
    bridge.store.put_setting(key, normalised, time.time())
    shown = mask(normalised) if STORED_SETTINGS[key].secret else normalised
    click.echo(f"{key} = {shown} (stored; used from the next delivery on)")


# -- checks and one-offs ----------------------------------------------------------------------------


@main.command(help="Test the Segment write key and the Mailjet key pair; non-zero exit if one fails.")
@click.option("--segment-only", is_flag=True, help="Check Segment only.")
@click.option("--mailjet-only", is_flag=True, help="Check Mailjet only.")
def check(segment_only: bool, mailjet_only: bool) -> None:
    from bridge.ops.checks import check_mailjet, check_segment

    bridge = _bridge()
    checks = []
    if not mailjet_only:
        checks.append(check_segment(bridge))
    if not segment_only:
        checks.append(check_mailjet(bridge))
    for ok, sentence in checks:
        click.echo(("ok   " if ok else "FAIL ") + sentence, err=not ok)
    if not all(ok for ok, _ in checks):
        sys.exit(1)


@main.command("callback-url", help="Print the Mailjet callback URL, with its credentials.")
def callback_url_command() -> None:
    click.echo(_bridge().callback_url())


@main.command("segment-webhook", help="Print the URL and header to set in Segment's Webhooks destination.")
def segment_webhook_command() -> None:
    from bridge.credentials import segment_webhook_url

    bridge = _bridge()
    click.echo(f"URL:    {segment_webhook_url(bridge.settings.public_url)}")
    if bridge.segment_token.value is not None:
        click.echo(f"Header: Authorization: Bearer {bridge.segment_token.value}")
    if bridge.settings.segment_shared_secret:
        click.echo("Shared secret: the one in SEGMENT_SHARED_SECRET (requests must carry X-Signature)")


@main.command(help="Show queue counts and the Segment and Mailjet delivery states.")
def stats() -> None:
    import time

    from bridge.ops.overview import delivery_states

    bridge = _bridge()
    _echo_json({"queue": bridge.store.stats(time.time()), **delivery_states(bridge)})


@main.command("send-test-event", help="Queue a Mailjet 'sent' event for test@example.com.")
def send_test_event() -> None:
    from bridge.ops.checks import send_test_event as send

    click.echo(f"queued a test 'sent' event ({send(_bridge())}); it reaches Segment as "
               "'Email Delivered' within seconds while the bridge runs")


# -- Mailjet ----------------------------------------------------------------------------------------


@main.group(help="Mailjet account tasks.")
def mailjet() -> None:
    pass


@mailjet.command("register-callbacks", help="Register all seven event types (grouped) with Mailjet.")
@click.option("--url", required=True, help="Callback URL, with user:password@ (see callback-url).")
@click.option("--backup-url", help="Backup URL, used while Mailjet suspends the primary.")
def register_callbacks(url: str, backup_url: str | None) -> None:
    from bridge.delivery.upstream import UpstreamError
    from bridge.ops.callbacks import register_callbacks as register

    try:
        lines = register(_bridge(), url, backup_url)
    except UpstreamError as exc:
        click.echo(f"Mailjet refused: {exc}", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(line)


# -- dead letters and quarantine --------------------------------------------------------------------


@main.group("dead-letters", help="List, show and replay dead letters.")
def dead_letters() -> None:
    pass


@dead_letters.command("list", help="One line per dead letter: id, direction, reason, what it concerns.")
@click.option("--limit", default=100, show_default=True, help="How many, newest first.")
def dead_letters_list(limit: int) -> None:
    from bridge.ops.replay import describe

    rows = _bridge().store.dead_letters(limit)
    if not rows:
        click.echo("no dead letters")
    for row in rows:
        d = describe(row)
        click.echo(f"{d['id']:>8}  {d['direction']:<18}  {d['concerns']:<40}  {d['reason']}")


@dead_letters.command("show", help="Everything kept about one dead letter.")
@click.argument("item_id", type=int)
def dead_letters_show(item_id: int) -> None:
    row = _bridge().store.item(item_id)
    if row is None or row["state"] != "dead":
        raise click.UsageError(f"{item_id} is not a dead letter")
    _echo_json(row)


@dead_letters.command("replay", help="Queue dead letters again: the given ids, or --all.")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
def dead_letters_replay(ids: tuple[int, ...], everything: bool) -> None:
    from bridge.ops.replay import ReplayReport, all_dead_ids, replay_dead_letters

    if bool(ids) == everything:
        raise click.UsageError("give dead-letter ids, or --all")
    bridge = _bridge()
    report = ReplayReport()
    wanted = list(all_dead_ids(bridge)) if everything else list(ids)
    with click.progressbar(wanted, label="replaying", file=sys.stderr,
                           hidden=len(wanted) < 100) as bar:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            part = replay_dead_letters(bridge, chunk)
            report.requeued += part.requeued
            report.skipped += part.skipped
            bar.update(len(chunk))
    for item_id, why in report.skipped:
        click.echo(f"{item_id}: skipped: {why}", err=True)
    click.echo(f"{len(report.requeued)} dead letter(s) queued again")


@main.group(help="List and show events that failed validation.")
def quarantine() -> None:
    pass


@quarantine.command("list", help="One line per quarantined event: id, source, first error.")
@click.option("--limit", default=100, show_default=True, help="How many, newest first.")
def quarantine_list(limit: int) -> None:
    entries = _bridge().store.quarantine_entries(limit)
    if not entries:
        click.echo("the quarantine is empty")
    for entry in entries:
        first = (json.loads(entry["errors"]) or [{}])[0]
        click.echo(f"{entry['id']:>8}  {entry['source']:<8}  {first.get('path', '')}: "
                   f"{first.get('message', '')}")


@quarantine.command("show", help="One quarantined event with all its validation errors.")
@click.argument("entry_id", type=int)
def quarantine_show(entry_id: int) -> None:
    entry = _bridge().store.quarantine_entry(entry_id)
    if entry is None:
        raise click.UsageError(f"no quarantine entry {entry_id}")
    _echo_json({**entry, "errors": json.loads(entry["errors"])})


@quarantine.command("replay", help="Validate quarantined events again; valid ones are queued.")
@click.argument("ids", nargs=-1, type=int, required=True)
def quarantine_replay(ids: tuple[int, ...]) -> None:
    from bridge.ops.replay import replay_quarantine

    report = replay_quarantine(_bridge(), ids)
    for entry_id, why in report.skipped:
        click.echo(f"{entry_id}: {why}", err=True)
    click.echo(f"{len(report.requeued)} event(s) queued")


@main.group(help="Database schema tasks.")
def db() -> None:
    pass


@db.command("upgrade", help="Apply pending schema migrations now (start-up also applies them).")
def db_upgrade() -> None:
    from bridge.storage import open_store

    settings = _settings()
    try:
        store = open_store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        before = _schema_version(store)
        store.migrate()
        after = store.schema_version()
        store.close()
    except StorageUnavailable as exc:
        click.echo(f"storage error: {exc}", err=True)
        sys.exit(3)
    click.echo(f"schema version {after}" + (f" (was {before})" if before != after else ", up to date"))


def _schema_version(store: Any) -> int:
    """The applied version, or 0 for a database the bridge has never used."""
    try:
        return store.schema_version()
    except StorageUnavailable:
        return 0


# -- backfill (#13) ---------------------------------------------------------------------------------


def _moment(value: str, option: str) -> int:
    """A date or date-time (UTC unless it says otherwise) as Unix seconds."""
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (2026-01-31) or date-time "
                                 "(2026-01-31T12:00)", param_hint=option) from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


@main.command(help="Queue Mailjet's email history (sent, open, click, bounce, blocked, spam, unsub) "
                   "for Segment, as the live feed would have sent it. Resumable: run it again after "
                   "a stop and it continues; events already held are not sent twice.")
@click.option("--since", required=True, help="First day to read (UTC), e.g. 2026-01-01.")
@click.option("--until", "until_text", help="End (exclusive, UTC). Default: the earliest live event "
                                            "the bridge holds plus an hour, else now.")
@click.option("--dry-run", is_flag=True, help="Print the counts per event type and window; queue nothing.")
@click.option("--max-window-rows", type=click.IntRange(1), default=None, hidden=True)
@click.option("--backoff-seconds", type=click.FloatRange(0.0), default=1.0, hidden=True)
def backfill(since: str, until_text: str | None, dry_run: bool, max_window_rows: int | None,
             backoff_seconds: float) -> None:
    import shutil

    from bridge.backfill import progress as printed
    from bridge.backfill.client import BackfillStopped, HistoryClient, RetryPolicy
    from bridge.backfill.reconcile import reconcile
    from bridge.backfill.resources import MAX_WINDOW_ROWS
    from bridge.backfill.runner import Backfill, Progress, cutoff

    start = _moment(since, "--since")
    until = _moment(until_text, "--until") if until_text else None
    now = time.time()
    if start >= (until if until is not None else now):
        raise click.UsageError("--since must be before --until (and before now)")
    bridge = _bridge()
    credentials = bridge.current.mailjet_credentials()
    if not credentials:
        click.echo("the backfill reads Mailjet's API: set MAILJET_API_KEY and MAILJET_API_SECRET "
                   "(or `config set mailjet.api_key` / `mailjet.api_secret`)", err=True)
        sys.exit(2)
    client = HistoryClient(bridge.current.mailjet_api_url(), credentials,
                           retry=RetryPolicy(base_seconds=backoff_seconds))
    plan = cutoff(bridge.store, start, until, now, dry_run=dry_run)
    if plan.until <= start:
        click.echo(f"nothing to backfill: the live feed starts before --since ({plan.why})")
        return
    terminal = sys.stderr.isatty()

    def show(progress: Progress, line: str) -> None:
        if terminal:  # one line redrawn in place, cut to the terminal's width so it never wraps
            width = shutil.get_terminal_size().columns - 1
            click.echo("\r" + printed.bar(progress, client.counts)[:width].ljust(width), nl=False,
                       err=True)
        elif line:
            click.echo(f"{line} | {printed.status_line(progress, client.counts)}", err=True)

    run = Backfill(bridge.store, client, bridge.mailjet_validator, plan, dry_run=dry_run,
                   max_window_rows=max_window_rows or MAX_WINDOW_ROWS, on_progress=show)
    try:
        result = run.run()
    except BackfillStopped as exc:
        if terminal:
            click.echo("", err=True)
        click.echo(f"backfill stopped: {exc}", err=True)
        for line in printed.summary(plan, run.progress, client.counts):
            click.echo(line)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nbackfill interrupted: run the same command again; it resumes where it stopped",
                   err=True)
        sys.exit(130)
    if terminal:
        click.echo("", err=True)
    if dry_run:
        for line in printed.dry_run_table(plan, result, client.counts):
            click.echo(line)
        return
    for line in printed.summary(plan, result, client.counts):
        click.echo(line)
    for line in printed.reconcile_lines(reconcile(bridge.store, client, plan.since, plan.until)):
        click.echo(line)

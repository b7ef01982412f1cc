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
from urllib.parse import urlsplit, urlunsplit

import click

from bridge import logs
from bridge.config import STORED_SETTINGS, Settings, load_settings
from bridge.errors import ConfigError, StorageUnavailable
from bridge.metrics import MULTIPROCESS_ENV
from bridge.signals import stopped_by_first

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


def _build(settings: Settings, *, create: bool = False) -> Bridge:
    """The bridge's objects (no app, no loop), or an exit with one line per problem.

    Only ``serve`` and ``worker`` pass ``create``: they generate and announce missing credentials.
    """
    from bridge.wiring import build

    try:
        return build(settings, create=create)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"configuration error: {problem}", err=True)
        sys.exit(2)
    except StorageUnavailable as exc:
        click.echo(f"storage error: {exc}", err=True)
        sys.exit(3)


def _shown_database(url: str) -> str:
    """A database URL as it may be printed: a SQLite path, or a PostgreSQL URL without its password."""
    if url.startswith("sqlite:///"):
        return str(Path(url[len("sqlite:///") :]).resolve())
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":••••@", 1))
    return urlunsplit(parts)


def _database_missing(settings: Settings) -> bool:
    """True when there is no bridge database where the settings point (nothing is created to know)."""
    url = settings.database_url
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return path != ":memory:" and not Path(path).is_file()
    from bridge.storage import open_store

    try:
        store = open_store(url)
        missing = _schema_version(store) == 0
        store.close()
    except StorageUnavailable:
        return False  # unreachable is not missing: _build says why, in one line
    return missing


def _bridge() -> Bridge:
    """The server's store and settings for a command that reads: it never creates a database or
    credentials, and says where it looked when there is nothing there."""
    settings = _settings()
    if _database_missing(settings):
        origin = ("from BRIDGE_DATABASE_URL" if os.environ.get("BRIDGE_DATABASE_URL", "").strip()
                  else "the default, as BRIDGE_DATABASE_URL is not set")
        click.echo(f"no bridge database at {_shown_database(settings.database_url)} ({origin}): start "
                   "the bridge once with `mailjet-bridge serve`, or set BRIDGE_DATABASE_URL to the "
                   "database the server uses", err=True)
        sys.exit(3)
    return _build(settings)


def _writing_bridge() -> Bridge:
    """For a command that changes the store (config set, replay...): it may create the database,
    so settings can be stored before the first start, but never credentials."""
    return _build(_settings())


@click.group(help="Mailjet email events to Segment, and Segment identifies to Mailjet.\n\n"
                   "Every command works on the database in BRIDGE_DATABASE_URL (default: "
                   "$XDG_DATA_HOME/mailjet-bridge/bridge.db, else ~/.local/share/mailjet-bridge/bridge.db).")
@click.version_option(package_name="mailjet-segment-bridge")
def main() -> None:
    logs.configure(logging.INFO)


def _cannot_listen(settings: Settings, why: str) -> None:
    click.echo(f"cannot listen on {settings.host}:{settings.port}: {why}; set BRIDGE_PORT (or "
               "BRIDGE_HOST) to a free address", err=True)
    sys.exit(2)


def _warn_at_start(bridge: Bridge) -> None:
    """Start-up warnings: shown by serve and worker (and check), not by every command."""
    from bridge.ops.checks import startup_warnings

    for warning in startup_warnings(bridge):
        logging.getLogger("bridge.start").warning(warning)


@main.command(short_help="Serve the webhooks and forward events.",
              help="Serve the webhooks and forward events: uvicorn web processes and one delivery "
                   "process, on BRIDGE_HOST:BRIDGE_PORT (what `make run` runs).")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Web processes [BRIDGE_WORKERS; default: one a CPU core beyond the first].")
@click.option("--web-only", is_flag=True,
              help="No delivery process: run the loops with `mailjet-bridge worker` (deploy/).")
def serve(workers: int | None, web_only: bool) -> None:
    from bridge.server import BridgeServer, address_problem

    settings = _settings()
    problem = address_problem(settings.host, settings.port)
    if problem:
        _cannot_listen(settings, problem)
    # Every process counts metrics in files of a shared folder (prometheus-client multiprocess mode);
    # it must be set before the first import of prometheus-client and start empty.
    # A folder shared with a worker of another unit (--web-only) keeps the worker's live files.
    metrics_dir = os.environ.get(MULTIPROCESS_ENV)
    if not metrics_dir:
        metrics_dir = os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="mailjet-bridge-metrics-")
    if not web_only:
        for leftover in Path(metrics_dir).glob("*.db"):
            leftover.unlink()
    bridge = _build(settings, create=True)  # migrate and announce credentials once, before any start
    _warn_at_start(bridge)
    bridge.close()

    def listening() -> None:
        """Only now is it true: record the address for the CLI, and say so."""
        recorder = _build(settings)
        recorder.record_serving(settings.host, settings.port, time.time())
        recorder.close()
        click.echo(f"mailjet-segment-bridge serving on http://{settings.host}:{settings.port} "
                   f"(public URL {settings.public_url}, admin at {settings.public_url}/admin; "
                   f"{processes} web process{'es' if processes > 1 else ''})")

    processes = workers or settings.workers
    server = BridgeServer(settings, processes, delivery=not web_only)
    code = server.run(on_listening=listening)
    if code == BridgeServer.NEVER_LISTENED:
        _cannot_listen(settings, "the web server could not bind it (is another server there?)")
    sys.exit(code)


@main.command(short_help="Run the delivery loops alone.",
              help="Run the delivery loops alone (forwarder, contact sync, janitor), beside web "
                   "processes such as `gunicorn wsgi:app`.")
def worker() -> None:
    from bridge.delivery.loop import start_loops
    from bridge.server import HELPER_CHECK_SECONDS, DrainHelpers

    settings = _settings()
    bridge = _build(settings, create=True)
    _warn_at_start(bridge)
    stop = threading.Event()

    stopped_by_first(lambda _signum: stop.set())
    loops = bridge.loops()
    helpers = DrainHelpers(settings.drain_helpers, loops[0].drain_delivering)  # the forwarder's
    threads = start_loops(loops, stop)
    # A timeout: a signal that another thread took runs its handler only once this thread is back
    # in Python; a short one, so that a drain's helpers start soon after its first batch.
    while not stop.wait(HELPER_CHECK_SECONDS):
        helpers.check()
    # Graceful: each loop finishes its round or gives its leases back; all within the 10 s budget.
    deadline = time.monotonic() + SHUTDOWN_SECONDS
    helpers.terminate()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    helpers.wait(deadline)
    bridge.close()


@main.command("drain-helper", hidden=True, short_help="A forwarder that joins a backlog's drain.",
              help="Deliver queued Mailjet events beside the worker's forwarder while it drains a "
                   "backlog, then exit (started by the worker).")
def drain_helper() -> None:
    from bridge.server import HELPER_NICENESS

    parent = os.getppid()
    bridge = _build(_settings())
    os.nice(HELPER_NICENESS)
    stop = threading.Event()
    stopped_by_first(lambda _signum: stop.set(), [signal.SIGTERM])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the worker stops it
    try:
        bridge.forwarder().help_drain(stop, parent)
    finally:
        bridge.close()


@main.command(hidden=True, short_help="The writer process that serve starts.",
              help="Commit the webhook writes of serve's web processes (started by serve).")
def writer() -> None:
    from bridge.server import WRITER_SOCKET_ENV
    from bridge.storage.writer import WriterServer

    path = os.environ.get(WRITER_SOCKET_ENV)
    if not path:
        click.echo(f"{WRITER_SOCKET_ENV} is not set: this process is started by `mailjet-bridge "
                   "serve`", err=True)
        sys.exit(2)
    bridge = _build(_settings())
    stop = threading.Event()
    stopped_by_first(lambda _signum: stop.set(), [signal.SIGTERM])
    # Ctrl-C reaches the whole process group: serve stops the web processes first, then this one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        WriterServer(bridge.store, path).serve(stop, parent=os.getppid())
    finally:
        bridge.close()


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -- configuration ----------------------------------------------------------------------------------


@main.group(short_help="Show, store or remove settings.",
            help="Show the settings in force, or store and remove settings. A stored setting wins over "
                 "the environment, and a more specific setting beats a more general one (an API URL "
                 "beats a region).")
def config() -> None:
    pass


@config.command("show", short_help="Show every setting in force and its source.",
                help="Show every setting in force, where it comes from (stored, environment or "
                     "default), with secrets masked.")
def config_show() -> None:
    from bridge.config import STORED_SETTINGS, mask

    for key, (value, origin) in _bridge().current.shown().items():
        secret = key in STORED_SETTINGS and STORED_SETTINGS[key].secret
        shown = mask(value) if secret else (value or "")
        click.echo(f"{key:<20} {shown or '(not set)':<40} {origin}")


#: Values may begin with "-" (``config set mailjet.list_id -5`` reaches validation), and ``--``
#: still ends the options.
VALUE_ARGUMENTS = {"ignore_unknown_options": True}


@config.command("set", short_help="Store a setting.", context_settings=VALUE_ARGUMENTS,
                help="Store a setting; it applies from the next delivery on, with no restart. "
                     "Keys: " + ", ".join(STORED_SETTINGS) + ".")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    from bridge.config import STORED_SETTINGS, check_stored_setting, mask

    try:
        normalised = check_stored_setting(key, value)
    except ConfigError as exc:
        raise click.UsageError(exc.problems[0]) from None
    bridge = _writing_bridge()
    bridge.store.put_setting(key, normalised, time.time())
    shown = mask(normalised) if STORED_SETTINGS[key].secret else normalised
    click.echo(f"{key} = {shown} (stored; used from the next delivery on)")


@config.command("unset", short_help="Remove a stored setting.",
                help="Remove a stored setting: the environment's value (or the default) applies "
                     "again from the next delivery on.")
@click.argument("key")
def config_unset(key: str) -> None:
    from bridge.config import STORED_SETTINGS, mask

    if key not in STORED_SETTINGS:
        raise click.UsageError(f"unknown setting {key!r}: use one of {', '.join(STORED_SETTINGS)}")
    bridge = _bridge()
    removed = bridge.store.delete_setting(key)
    value, origin = bridge.current.shown()[key]
    shown = (mask(value) if STORED_SETTINGS[key].secret else value) or "(not set)"
    click.echo(f"{key}: {'stored value removed' if removed else 'nothing was stored'}; "
               f"now {shown} ({origin})")


# -- checks and one-offs ----------------------------------------------------------------------------


@main.command(short_help="Test the write key and the Mailjet keys.",
              help="Test the Segment write key and the Mailjet key pair, and show start-up warnings; "
                   "non-zero exit if one fails.")
@click.option("--segment-only", is_flag=True, help="Check Segment only.")
@click.option("--mailjet-only", is_flag=True, help="Check Mailjet only.")
def check(segment_only: bool, mailjet_only: bool) -> None:
    from bridge.ops.checks import check_mailjet, check_segment, startup_warnings
    from bridge.ops.overview import delivery_states

    bridge = _bridge()
    for warning in startup_warnings(bridge):
        click.echo(f"warn {warning}", err=True)
    checks = []
    states = delivery_states(bridge)
    if not mailjet_only:
        checks.append(check_segment(bridge))
    if not segment_only:
        checks.append(check_mailjet(bridge))
    for ok, sentence in checks:
        click.echo(("ok   " if ok else "FAIL ") + sentence, err=not ok)
    for upstream in [name for name, left_out in (("segment", mailjet_only), ("mailjet", segment_only))
                     if not left_out]:
        state = states[upstream]
        click.echo(f"     {upstream} delivery, as the running loops last saw it: {state['state']} "
                   f"({state['detail']})")
    if not all(ok for ok, _ in checks):
        sys.exit(1)


@main.command("callback-url", short_help="Print the callback URL to paste into Mailjet.",
              help="Print the Mailjet callback URL, with its credentials, at the public URL the "
                   "running server recorded.")
def callback_url_command() -> None:
    bridge = _bridge()
    if bridge.credentials.origin == "missing":
        click.echo("no webhook credentials are stored yet: start the bridge once with "
                   "`mailjet-bridge serve` (or set BRIDGE_WEBHOOK_USERNAME and BRIDGE_WEBHOOK_PASSWORD)",
                   err=True)
        sys.exit(1)
    click.echo(bridge.callback_url())


@main.command("segment-webhook", short_help="Print the URL and header for Segment.",
              help="Print the URL and header to set in Segment's Webhooks (Actions) destination.")
def segment_webhook_command() -> None:
    from bridge.credentials import segment_webhook_url

    bridge = _bridge()
    click.echo(f"URL:    {segment_webhook_url(bridge.public_url())}")
    if bridge.segment_token.value is not None:
        click.echo(f"Header: Authorization: Bearer {bridge.segment_token.value}")
    if bridge.settings.segment_shared_secret:
        click.echo("Shared secret: the one in SEGMENT_SHARED_SECRET (requests must carry X-Signature)")


@main.command(short_help="Show queue counts and delivery states.",
              help="Show queue counts, and the Segment and Mailjet delivery states as the running "
                   "delivery loops last stored them.")
def stats() -> None:
    import time

    from bridge.ops.overview import delivery_states

    bridge = _bridge()
    _echo_json({"queue": bridge.store.stats(time.time()), **delivery_states(bridge)})


@main.command("send-test-event", short_help="Queue a test event for test@example.com.",
              help="Queue a Mailjet 'sent' event for test@example.com, as if Mailjet had posted it.")
def send_test_event() -> None:
    from bridge.ops.checks import send_test_event as send

    click.echo(f"queued a test 'sent' event ({send(_writing_bridge())}); it reaches Segment as "
               "'Email Delivered' within seconds while the bridge runs")


@main.command(short_help="Try the bridge locally, with no accounts.",
              help="Try the bridge locally: serve it with built-in Segment and Mailjet sinks on "
                   "loopback and a temporary database, post Mailjet's sample events and one identify, "
                   "and print the admin URL and password. Ctrl-C stops everything. The port is "
                   "BRIDGE_PORT, else 8000, else any free one.")
def demo() -> None:
    from bridge.ops.demo import run

    sys.exit(run(os.environ, lambda line: click.echo(line)))


@main.command(short_help="Find one event and its journey.",
              help="Find every event of one email or message id: delivered, pending, dead or "
                   "quarantined, with its journey.")
@click.argument("term", metavar="EMAIL|ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (each event with its journey).")
def find(term: str, as_json: bool) -> None:
    from bridge.ops.lookup import search

    found = search(_bridge(), term)
    if not found:
        click.echo(f"No event found for {term!r} among delivered, pending, dead and quarantined "
                   "events.", err=True)
        sys.exit(1)
    if as_json:
        _echo_json([{k: v for k, v in record.items() if k != "row"} for record in found])
        return
    for record in found:
        click.echo(f"{record['source']} {record['id']}  {record['status']:<11}  {record['event']}  "
                   f"{record['recipient']}  message {record['message_id'] or '-'}")
        click.echo(f"    event time {record['event_time'] or '-'}  latency {record['latency'] or '-'}  "
                   f"Segment messageId {record['segment_message_id'] or '-'}")
        for step in record["journey"]:
            click.echo(f"    {step['at'] or '-':<20}  {step['step']:<22}  {step['answer']}".rstrip())


# -- Mailjet ----------------------------------------------------------------------------------------


@main.group(short_help="Mailjet account tasks.", help="Mailjet account tasks.")
def mailjet() -> None:
    pass


@mailjet.command("register-callbacks", short_help="Register the callback URL with Mailjet.",
                 help="Register the callback URL with Mailjet for all seven event types (grouped, "
                      "Version 2); running it again changes nothing that is already right.")
@click.option("--url", required=True, help="Callback URL, with user:password@ (see callback-url).")
@click.option("--backup-url", help="Backup URL, used while Mailjet suspends the primary.")
def register_callbacks(url: str, backup_url: str | None) -> None:
    from bridge.delivery.upstream import UpstreamError
    from bridge.ops.callbacks import register_callbacks as register

    bridge = _writing_bridge()
    if not bridge.current.mailjet_credentials():
        click.echo("no Mailjet API key pair is set (MAILJET_API_KEY and MAILJET_API_SECRET, or "
                   "`mailjet-bridge config set mailjet.api_key ...` and mailjet.api_secret); "
                   "nothing was sent to Mailjet", err=True)
        sys.exit(1)
    try:
        lines = register(bridge, url, backup_url)
    except UpstreamError as exc:
        click.echo(f"Mailjet refused: {exc}" if exc.status else f"Mailjet did not answer: {exc}", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(line)


# -- dead letters and quarantine --------------------------------------------------------------------


@main.group("dead-letters", short_help="List, show and replay dead letters.",
            help="List, show and replay dead letters.")
def dead_letters() -> None:
    pass


@dead_letters.command("list", short_help="List dead letters, newest first.",
                      help="One line per dead letter: id, direction, what it concerns, reason.")
@click.option("--limit", default=100, show_default=True, help="How many, newest first.")
def dead_letters_list(limit: int) -> None:
    from bridge.ops.replay import describe

    rows = _bridge().store.dead_letters(limit)
    if not rows:
        click.echo("no dead letters")
    for row in rows:
        d = describe(row)
        click.echo(f"{d['id']:>8}  {d['direction']:<18}  {d['concerns']:<40}  {d['reason']}")


@dead_letters.command("show", short_help="Show everything kept about one dead letter.",
                      help="Show everything kept about one dead letter.")
@click.argument("item_id", type=int)
def dead_letters_show(item_id: int) -> None:
    row = _bridge().store.item(item_id)
    if row is None or row["state"] != "dead":
        raise click.UsageError(f"{item_id} is not a dead letter")
    _echo_json(row)


@dead_letters.command("replay", short_help="Queue dead letters again.",
                      help="Queue dead letters again: the given ids, or --all.")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
def dead_letters_replay(ids: tuple[int, ...], everything: bool) -> None:
    from bridge.ops.replay import ReplayReport, all_dead_ids, replay_dead_letters

    if bool(ids) == everything:
        raise click.UsageError("give dead-letter ids, or --all")
    bridge = _writing_bridge()
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


@main.group(short_help="List, show and replay invalid events.",
            help="List, show and replay the events that failed validation.")
def quarantine() -> None:
    pass


@quarantine.command("list", short_help="List quarantined events, newest first.",
                    help="One line per quarantined event: id, source, first error.")
@click.option("--limit", default=100, show_default=True, help="How many, newest first.")
def quarantine_list(limit: int) -> None:
    entries = _bridge().store.quarantine_entries(limit)
    if not entries:
        click.echo("the quarantine is empty")
    for entry in entries:
        first = (json.loads(entry["errors"]) or [{}])[0]
        click.echo(f"{entry['id']:>8}  {entry['source']:<8}  {first.get('path', '')}: "
                   f"{first.get('message', '')}")


@quarantine.command("show", short_help="Show one event and its validation errors.",
                    help="Show one quarantined event with all its validation errors.")
@click.argument("entry_id", type=int)
def quarantine_show(entry_id: int) -> None:
    entry = _bridge().store.quarantine_entry(entry_id)
    if entry is None:
        raise click.UsageError(f"no quarantine entry {entry_id}")
    from bridge.ops.lookup import iso_utc

    _echo_json({**entry, "received_at": iso_utc(entry["received_at"]),
                "errors": json.loads(entry["errors"])})


@quarantine.command("replay", short_help="Validate events again and queue valid ones.",
                    help="Validate quarantined events again; the valid ones are queued.")
@click.argument("ids", nargs=-1, type=int, required=True)
def quarantine_replay(ids: tuple[int, ...]) -> None:
    from bridge.ops.replay import replay_quarantine

    report = replay_quarantine(_writing_bridge(), ids)
    for entry_id, why in report.skipped:
        click.echo(f"{entry_id}: {why}", err=True)
    click.echo(f"{len(report.requeued)} event(s) queued")


@main.group(short_help="Database schema tasks.", help="Database schema tasks.")
def db() -> None:
    pass


@db.command("upgrade", short_help="Apply pending schema migrations now.",
            help="Apply pending schema migrations now (start-up also applies them).")
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


@main.command(short_help="Queue Mailjet's email history for Segment.",
              help="Queue Mailjet's email history (sent, open, click, bounce, blocked, spam, unsub) "
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
    bridge = _writing_bridge()
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

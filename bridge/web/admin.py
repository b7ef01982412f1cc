"""``/admin``: log in, settings, a live debugger, dead letters, quarantine and an overview.

Server-rendered; one small static script refreshes the debugger and copies the callback URL. Every
form carries a CSRF token, the session cookie is HttpOnly and SameSite=Strict, failed logins are
limited per client, and no page ever shows a secret (they are masked, or fetched on an explicit copy).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from markupsafe import Markup

from bridge.config import MAILJET_ACTIONS, SEGMENT_REGIONS, STORED_SETTINGS, check_stored_setting, mask
from bridge.errors import ConfigError
from bridge.inbound.fields import EVENT_NAME_PRESETS, EVENT_TYPES
from bridge.ops import checks, lookup, replay
from bridge.ops import overview as overviews
from bridge.storage.base import DEAD, DELIVERED, LEASED, PENDING
from bridge.web.chart import events_per_minute
from bridge.web.current import current_bridge


class AdminOnlySessions(SecureCookieSessionInterface):
    """The session cookie belongs to the admin pages: other paths (the webhooks above all) neither
    read nor write it. Opening it cost about 5 % of a webhook request's CPU under load."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path == bp.url_prefix or request.path.startswith(f"{bp.url_prefix}/"):
            return super().open_session(app, request)
        return self.null_session_class()


bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")

#: Failed logins allowed per client in the window before it must wait.
LOGIN_ATTEMPTS, LOGIN_WINDOW = 5, 15 * 60
#: A session ends 12 hours after login, or after 30 minutes without a page view.
SESSION_MAX_AGE, SESSION_IDLE = 12 * 3600, 30 * 60
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; frame-ancestors 'none'; form-action 'self'")


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": _csrf_token}


@bp.app_template_filter("iso")
def _iso(seconds: float | None) -> str:
    """Every time a page shows is ISO-8601 UTC."""
    return lookup.iso_utc(seconds)


@bp.before_request
def _check_csrf() -> None:
    if request.method == "POST":
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        expected = session.get("csrf") or ""
        # bytes, so any text a client sends is compared (str compare_digest refuses non-ASCII)
        if not expected or not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"),
                                                   expected.encode("utf-8")):
            abort(400, description="the form is out of date (CSRF check failed); reload and try again")


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _session_key(sid: str) -> str:
    """Sessions are stored by a hash of their id: the database never holds a usable cookie."""
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def _session_alive() -> bool:
    sid = session.get("sid")
    if not isinstance(sid, str):
        return False
    bridge, now = current_bridge(), time.time()
    return bridge.store.session_alive(_session_key(sid), bridge.admin.credential(bridge.store), now,
                                      created_after=now - SESSION_MAX_AGE, seen_after=now - SESSION_IDLE)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only a live server-side session passes: logged out, too old, idle too long, or opened under
    another admin password means the login page."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not _session_alive():
            session.pop("sid", None)
            return redirect(url_for("admin.login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("admin/login.html")
    bridge = current_bridge()
    client = request.remote_addr or "unknown"
    now = time.time()
    # The attempt is counted before the password is checked, in one transaction: however many
    # guesses arrive at once, at most LOGIN_ATTEMPTS of them are checked.
    if bridge.store.login_failures(client, now - LOGIN_WINDOW, now, record=True) > LOGIN_ATTEMPTS:
        return render_template("admin/login.html",
                               error="Too many failed attempts. Wait 15 minutes and try again."), 429
    if not bridge.admin.matches(request.form.get("password", "")):
        return render_template("admin/login.html", error="Wrong password."), 401
    bridge.store.clear_login_failures(client)
    sid = secrets.token_urlsafe(32)
    bridge.store.open_session(_session_key(sid), bridge.admin.credential(bridge.store), now,
                              older_than=now - SESSION_MAX_AGE)
    session.clear()
    session.permanent = True
    session["sid"] = sid
    target = request.args.get("next", "")
    return redirect(target if target.startswith("/admin") else url_for("admin.overview"))


@bp.post("/logout")
def logout() -> Any:
    """Ends the session on the server: a copy of the cookie opens nothing afterwards."""
    sid = session.get("sid")
    if isinstance(sid, str):
        current_bridge().store.end_session(_session_key(sid))
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
@login_required
def overview() -> Any:
    data = overviews.overview(current_bridge())
    # drawn at about the card's width (the page's max width), so its text keeps its size as it scales
    chart = Markup(events_per_minute(data["timeline"], data["now"], data["window"], width=1160, height=240))
    return render_template("admin/overview.html", data=data, chart=chart)


root = Blueprint("root", __name__)


@root.get("/")
def home() -> Any:
    """Someone opening the bridge's address in a browser wants the admin page."""
    return redirect(url_for("admin.overview"))


# -- settings -------------------------------------------------------------------------------------

#: What the settings form shows and how: (key, label, kind, choices).
FIELDS = [
    ("segment.write_key", "Segment write key", "secret", None),
    ("segment.region", "Segment region", "choice", ["auto", *SEGMENT_REGIONS]),
    ("segment.api_url", "Segment API URL", "text", None),
    ("mailjet.api_key", "Mailjet API key", "secret", None),
    ("mailjet.api_secret", "Mailjet API secret", "secret", None),
    ("mailjet.api_url", "Mailjet API URL", "text", None),
    ("mailjet.list_id", "Mailjet contact list id", "text", None),
    ("mailjet.action", "List action for identifies", "choice", list(MAILJET_ACTIONS)),
    ("events.names", "Event naming preset", "choice", list(EVENT_NAME_PRESETS)),
]
#: Settings in force that no form changes (the environment's), listed under the form.
READ_ONLY = [("segment.cdn_url", "Segment settings CDN (write key checks)")]


def _settings_page(typed: dict[str, str] | None = None, problems: dict[str, str] | None = None) -> Any:
    """The form with every value in force and its source; after a refused save, with what was typed
    and each problem beside its field."""
    bridge = current_bridge()
    effective = bridge.current.shown()
    rows = []
    for key, label, kind, choices in FIELDS:
        value, origin = effective[key]
        shown = mask(value) if STORED_SETTINGS[key].secret else (value or "")
        typed_value = (typed or {}).get(key)
        rows.append({"key": key, "label": label, "kind": kind, "choices": choices, "value": shown,
                     "typed": typed_value if kind != "secret" else None, "origin": origin,
                     "problem": (problems or {}).get(key)})
    fixed = [{"label": label, "value": effective[key][0], "origin": effective[key][1]}
             for key, label in READ_ONLY]
    masked_url = bridge.callback_url().replace(bridge.credentials.password, "••••••••")
    return render_template("admin/settings.html", rows=rows, fixed=fixed, callback_url=masked_url,
                           problems=list((problems or {}).values()))


@bp.get("/settings")
@login_required
def settings_page() -> Any:
    return _settings_page()


@bp.post("/settings")
@login_required
def save_settings() -> Any:
    """All or nothing: with a bad value nothing is stored, and the page comes back (400) with every
    value as typed and the problem named by its label."""
    bridge = current_bridge()
    current = bridge.current.shown()
    checked, problems = {}, {}
    for key, label, kind, _choices in FIELDS:
        value = request.form.get(key, "").strip()
        if not value or (kind != "secret" and value == (current[key][0] or "")):
            continue  # a blank secret field keeps the current one
        try:
            checked[key] = check_stored_setting(key, value, name=label)
        except ConfigError as exc:
            problems[key] = exc.problems[0]
    if problems:
        typed = {key: request.form.get(key, "") for key, *_ in FIELDS}
        return _settings_page(typed, problems), 400
    for key, value in checked.items():
        bridge.store.put_setting(key, value, time.time())
    if checked:
        flash("Saved: " + ", ".join(checked) + ". Used from the next delivery on.", "ok")
    return redirect(url_for("admin.settings_page"))


@bp.post("/settings/test/<service>")
@login_required
def test_connection(service: str) -> Any:
    check = {"segment": checks.check_segment, "mailjet": checks.check_mailjet}.get(service)
    if check is None:
        abort(404)
    ok, sentence = check(current_bridge())
    flash(sentence, "ok" if ok else "error")
    return redirect(url_for("admin.settings_page"))


@bp.post("/settings/callback-url")
@login_required
def reveal_callback_url() -> Any:
    """The full callback URL for the copy button: fetched on demand, never part of a page."""
    return jsonify(url=current_bridge().callback_url())


# -- debugger -------------------------------------------------------------------------------------

STATES = (PENDING, LEASED, DELIVERED, DEAD)


def _pretty(text: str | None) -> str:
    """JSON indented for reading; anything else as it is."""
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


@bp.get("/debugger")
@login_required
def debugger() -> Any:
    """The newest events, or with ``q`` every event of one recipient or message id, each with its
    journey (received, attempts, delivered or dead)."""
    bridge = current_bridge()
    query = (request.args.get("q") or "").strip()[:500]
    event_type = request.args.get("type") or None
    state = request.args.get("state") or None
    if query:
        records = lookup.search(bridge, query)
    else:
        records = lookup.with_journeys(bridge, bridge.store.recent(100, event_type=event_type, state=state))
    for record in records:
        row = record["row"]
        record["payload_pretty"] = _pretty(row.get("payload") or row.get("body"))
        record["sent_pretty"] = _pretty(row.get("sent"))
        record["response_pretty"] = _pretty(row.get("last_response"))
    template = "admin/_debugger_rows.html" if request.args.get("partial") else "admin/debugger.html"
    return render_template(template, rows=records, types=[*EVENT_TYPES, "identify", "property"],
                           states=STATES, chosen_type=event_type or "", chosen_state=state or "",
                           query=query)


# -- dead letters and quarantine ------------------------------------------------------------------


@bp.get("/dead-letters")
@login_required
def dead_letters() -> Any:
    rows = [{**replay.describe(row), "row": row, "when": lookup.iso_utc(row["finished_at"])}
            for row in current_bridge().store.dead_letters(200)]
    return render_template("admin/dead_letters.html", rows=rows)


def _replay(action: Callable[..., replay.ReplayReport], everything: Callable[[Any], Any],
            done: str, page: str) -> Any:
    """Replay the ids of the form (one button per row), or every entry ("Replay all")."""
    bridge = current_bridge()
    if request.form.get("all"):
        ids = list(everything(bridge))
    else:
        ids = [int(i) for i in request.form.getlist("id") if i.isdigit()]
    report = action(bridge, ids)
    flash(done.format(len(report.requeued)), "ok")
    for entry_id, why in report.skipped[:10]:
        flash(f"{entry_id}: {why}", "error")
    return redirect(url_for(page))


@bp.post("/dead-letters/replay")
@login_required
def replay_dead_letters() -> Any:
    return _replay(replay.replay_dead_letters, replay.all_dead_ids,
                   "{} dead letter(s) queued again.", "admin.dead_letters")


@bp.get("/quarantine")
@login_required
def quarantine() -> Any:
    entries = current_bridge().store.quarantine_entries(200)
    for entry in entries:
        entry["errors_list"] = json.loads(entry["errors"])
        entry["body_pretty"] = _pretty(entry["body"])
    return render_template("admin/quarantine.html", entries=entries)


@bp.post("/quarantine/replay")
@login_required
def replay_quarantine() -> Any:
    return _replay(replay.replay_quarantine,
                   lambda bridge: [entry["id"] for entry in bridge.store.quarantine_entries(10_000)],
                   "{} event(s) valid now and queued.", "admin.quarantine")

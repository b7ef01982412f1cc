"""The OpenAPI 3.1 document, schemas/openapi.yaml (issue #10): valid, complete, and true of the app.

- The document is valid OpenAPI 3.1 (Schemathesis' loader checks it against the OAS 3.1 schema), every
  schema in it and in the event schemas it references is valid Draft 2020-12, every ``$ref`` resolves,
  and it references exactly the event schemas in ``schemas/`` (one source of truth).
- Schemathesis runs it against the real Flask app in-process (WSGI) with valid credentials, and probes
  missing and wrong credentials (``ignored_auth``): no 5xx, every status documented, and every
  answer's content type, headers and body conform. ``EXAMPLES`` bounds the fuzzed examples per
  operation; the coverage phase adds its own deterministic cases (boundary values, missing auth,
  wrong types). Under ``CI=true`` the examples are derandomized.
- The answers fuzzing cannot reach (storage down, a body over the limit, a wrong ``X-Signature``, the
  metrics token) are made on purpose and checked against the document the same way.

Nothing is written to the checkout: no Hypothesis example database, and Hypothesis's caches go to a
temporary folder removed at the end.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import checks as st_checks
from schemathesis.config import SchemathesisConfig

import bridge
from bridge.app import create_app
from bridge.config import DEFAULT_SCHEMA_DIR, load_settings
from tests.conftest import basic
from tests.fakes.segment import FakeSegment

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "schemas" / "openapi.yaml"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Fuzzed examples per operation (``OPENAPI_EXAMPLES`` overrides it for a longer local hunt).
EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "100"))

MAILJET_USER, MAILJET_PASSWORD = "mailjet", "s3cret-pass"
SEGMENT_TOKEN = "test-webhook-token"
METRICS_TOKEN = "test-metrics-token"
SHARED_SECRET = "test-shared-secret"

#: What every answer is held to. ``negative_data_rejection`` is left out on purpose: an event that
#: fails its schema is quarantined and the post still gets 200 (docs/behaviour.md, "Webhooks"), so
#: a schema-violating body is not expected to be refused.
CONFORMANCE = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance", "response_headers_conformance"]
FUZZ_CHECKS = [*CONFORMANCE, "ignored_auth", "positive_data_acceptance"]
st_checks.load_all_checks()
CONFORMANCE_CHECKS = [getattr(st_checks, name) for name in CONFORMANCE]


def _load(path: Path) -> Any:
    return load_spec().raw_schema if path == SPEC else json.loads(path.read_text())


def schemathesis_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        # In-process: the WSGI transport sends nothing over the network; the URL only names the app.
        "base-url": "http://localhost",
        "checks": {"enabled": False, **{name: {"enabled": True} for name in FUZZ_CHECKS}},
        "auth": {"openapi": {
            "mailjetBasic": {"username": MAILJET_USER, "password": MAILJET_PASSWORD},
            "segmentBearer": {"bearer": SEGMENT_TOKEN},
            "metricsBearer": {"bearer": METRICS_TOKEN},
        }},
        "generation": {"database": "none", "deterministic": CI},
    })


def load_spec() -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_path(SPEC, config=schemathesis_config())


# -- the document itself ------------------------------------------------------------------------------


def _schema_objects(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every Schema Object of an OpenAPI document: under components/schemas and every ``schema`` key."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if key == "schema" or path == "/components/schemas":
                yield here, value
            else:
                yield from _schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _schema_objects(value, f"{path}/{index}")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = load_spec()
    schema.validate()  # the OAS 3.1 schema; raises on the first violation
    raw = _load(SPEC)
    assert raw["openapi"].startswith("3.1.")
    assert raw["info"]["version"] == bridge.__version__
    operations = {(path, method) for path, item in raw["paths"].items() for method in item}
    assert operations == {("/webhooks/mailjet", "post"), ("/webhooks/segment", "post"),
                          ("/healthz", "get"), ("/metrics", "get")}
    for result in schema.get_all_operations():
        result.ok()  # every operation loads, its references resolved


def test_every_schema_is_draft_2020_12_and_every_ref_resolves() -> None:
    """Each Schema Object of the document and each event schema passes the 2020-12 metaschema, and
    each ``$ref`` of each of them resolves the standard way: against the document's own URI (the
    OpenAPI file), or against its ``$id`` (an event schema's ``#/$defs/id``)."""
    raw = _load(SPEC)
    documents = {SPEC.as_uri(): raw}
    for path in sorted(DEFAULT_SCHEMA_DIR.glob("*/*.json")):
        documents[path.as_uri()] = _load(path)
        jsonschema.Draft202012Validator.check_schema(documents[path.as_uri()])
    for _, subschema in _schema_objects(raw):
        jsonschema.Draft202012Validator.check_schema(subschema)
    registry = referencing.Registry().with_resources(
        (uri, referencing.jsonschema.DRAFT202012.create_resource(document))
        for uri, document in documents.items()
    ).crawl()
    for uri, document in documents.items():
        resolver = registry.resolver(base_uri=document.get("$id", uri))
        refs = list(_refs(document))
        assert refs or uri != SPEC.as_uri()
        for ref in refs:
            resolver.lookup(ref)  # raises Unresolvable


def test_the_document_references_every_event_schema_and_nothing_else() -> None:
    raw = _load(SPEC)
    files = {ref for ref in _refs(raw) if not ref.startswith("#")}
    on_disk = {f"./{path.relative_to(DEFAULT_SCHEMA_DIR).as_posix()}"
               for path in DEFAULT_SCHEMA_DIR.glob("*/*.json")}
    assert files == on_disk


def test_the_readme_links_the_document() -> None:
    endpoints = (ROOT / "README.md").read_text().split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    assert "(schemas/openapi.yaml)" in endpoints


# -- Schemathesis against the app ----------------------------------------------------------------------


def _private_hypothesis_home() -> str:
    """Hypothesis caches constants read from the source in ``.hypothesis/`` of the working directory,
    even without an example database, and Schemathesis draws its coverage-phase cases while pytest
    collects this module: so the cache goes to a temporary folder from import on."""
    home = tempfile.mkdtemp(prefix="bridge-hypothesis-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # if no test of this module runs
    set_hypothesis_home_dir(home)
    return home


HYPOTHESIS_HOME = _private_hypothesis_home()


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home() -> Iterator[None]:
    set_hypothesis_home_dir(HYPOTHESIS_HOME)  # another module may have set its own since
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)
        shutil.rmtree(HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An app as tests/conftest.py makes one (SQLite in a temporary folder, the fake Segment,
    SEGMENT_WEBHOOK_TOKEN and Basic credentials set, /metrics open), shared by the examples."""
    segment = FakeSegment().start()
    folder = tmp_path_factory.mktemp("openapi")
    app = create_app(load_settings({
        "BRIDGE_DATABASE_URL": f"sqlite:///{folder / 'bridge.db'}",
        "SEGMENT_WRITE_KEY": "good-key",
        "SEGMENT_API_URL": segment.url,
        "SEGMENT_CDN_URL": segment.url,
        "SEGMENT_WEBHOOK_TOKEN": SEGMENT_TOKEN,
        "BRIDGE_WEBHOOK_USERNAME": MAILJET_USER,
        "BRIDGE_WEBHOOK_PASSWORD": MAILJET_PASSWORD,
    }), announce=lambda line: None)
    yield app
    app.extensions["bridge"].store.close()
    segment.stop()


#: Loaded at import, as ``@parametrize`` needs it. The app is bound to each case in the test: the
#: lazy ``schemathesis.pytest.from_fixture`` loader would do that, but it fails on pytest 9.2
#: (it sets ``Function._nodeid``, which pytest 9.2 no longer has).
SCHEMA = load_spec()


def _bind(case: schemathesis.Case, app: Any) -> None:
    """Send the case, and the auth probes of ``ignored_auth``, to the app in-process (WSGI)."""
    case.operation.app = app
    case.operation.schema.app = app


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, database=None, derandomize=CI, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_the_app_answers_as_documented(case: schemathesis.Case, fuzz_app: Any) -> None:
    _bind(case, fuzz_app)
    case.call_and_validate()


# -- the answers fuzzing does not reach, made on purpose ------------------------------------------------


def conforms(method: str, path: str, response: Any, status: int) -> None:
    """The status, and that the answer is documented and conforms: content type, headers, body.
    A 503 made on purpose (storage down, delivery held) is not held to ``not_a_server_error``."""
    assert response.status_code == status, response.get_data(as_text=True)
    checks = [c for c in CONFORMANCE_CHECKS if status < 500 or c is not st_checks.not_a_server_error]
    SCHEMA[path][method].Case().validate_response(response, checks=checks)


@pytest.fixture
def clients(env: dict[str, str]) -> Iterator[Any]:
    """Apps on the env of tests/conftest.py with some settings changed; closed at the end."""
    made: list[Any] = []

    def make(**overrides: str) -> Any:
        client = create_app(load_settings({**env, **overrides}), announce=lambda line: None).test_client()
        made.append(client)
        return client

    yield make
    for client in made:
        client.application.extensions["bridge"].store.close()


def test_missing_and_wrong_credentials(clients: Any, mailjet_events: dict[str, Any]) -> None:
    client = clients()
    event = mailjet_events["open"]
    for headers in ({}, basic(MAILJET_USER, "wrong"), basic("someone", MAILJET_PASSWORD),
                    {"Authorization": f"Bearer {MAILJET_PASSWORD}"}, {"Authorization": "Basic !!"}):
        response = client.post("/webhooks/mailjet", json=event, headers=headers)
        conforms("POST", "/webhooks/mailjet", response, 401)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SEGMENT_TOKEN},
                    basic(MAILJET_USER, MAILJET_PASSWORD)):
        response = client.post("/webhooks/segment", json={"type": "identify"}, headers=headers)
        conforms("POST", "/webhooks/segment", response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_wrong_x_signature_is_401_without_a_challenge(clients: Any) -> None:
    client = clients(SEGMENT_SHARED_SECRET=SHARED_SECRET)
    token = {"Authorization": f"Bearer {SEGMENT_TOKEN}"}
    body = json.dumps({"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}})
    signature = hmac.new(SHARED_SECRET.encode(), body.encode(), hashlib.sha1).hexdigest()
    for sent in ({}, {"X-Signature": "0" * 40}, {"X-Signature": signature[::-1]}):
        response = client.post("/webhooks/segment", data=body, headers={**token, **sent},
                               content_type="application/json")
        conforms("POST", "/webhooks/segment", response, 401)
        assert "WWW-Authenticate" not in response.headers
    response = client.post("/webhooks/segment", data=body, content_type="application/json",
                           headers={**token, "X-Signature": signature})
    conforms("POST", "/webhooks/segment", response, 200)
    assert response.get_json()["accepted"] == 1


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,", b'{"event": NaN}', b"42", b'"open"',
                                  b"\xff\xfe[]", b"[" * 100_000])
def test_a_body_that_is_not_a_json_object_or_array_is_400(clients: Any, body: bytes) -> None:
    client = clients()
    response = client.post("/webhooks/mailjet", data=body, headers=basic(MAILJET_USER, MAILJET_PASSWORD),
                           content_type="application/json")
    conforms("POST", "/webhooks/mailjet", response, 400)
    response = client.post("/webhooks/segment", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {SEGMENT_TOKEN}"})
    conforms("POST", "/webhooks/segment", response, 400)


def test_a_body_over_the_limit_is_413(clients: Any) -> None:
    """Declared (``Content-Length``) or chunked; on a webhook or, with a body nobody sends, on a GET."""
    client = clients(BRIDGE_MAX_BODY_BYTES="1024")
    body = json.dumps([{"type": "track", "event": "x" * 100}] * 20).encode()
    credentials = {"/webhooks/mailjet": basic(MAILJET_USER, MAILJET_PASSWORD),
                   "/webhooks/segment": {"Authorization": f"Bearer {SEGMENT_TOKEN}"}}
    for path, headers in credentials.items():
        response = client.post(path, data=body, content_type="application/json", headers=headers)
        conforms("POST", path, response, 413)
        response = client.post(path, input_stream=io.BytesIO(body), content_type="application/json",
                               headers={**headers, "Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
        conforms("POST", path, response, 413)
    for path in ("/healthz", "/metrics"):
        conforms("GET", path, client.get(path, data=body), 413)


def _break_storage(client: Any) -> None:
    """Make the SQLite file unopenable, as tests/test_health.py does: its path becomes a folder."""
    bridge_ = client.application.extensions["bridge"]
    bridge_.store.close()
    db = Path(bridge_.settings.database_url.removeprefix("sqlite:///"))
    for leftover in db.parent.glob(db.name + "*"):
        leftover.unlink()
    db.mkdir()


@pytest.mark.parametrize("metrics_token", [None, METRICS_TOKEN])
def test_storage_unavailable_is_503_everywhere(clients: Any, mailjet_events: dict[str, Any],
                                               metrics_token: str | None) -> None:
    client = clients(**({"BRIDGE_METRICS_TOKEN": metrics_token} if metrics_token else {}))
    _break_storage(client)
    response = client.post("/webhooks/mailjet", json=mailjet_events["open"],
                           headers=basic(MAILJET_USER, MAILJET_PASSWORD))
    conforms("POST", "/webhooks/mailjet", response, 503)
    assert response.headers["Retry-After"] == "30"
    response = client.post("/webhooks/segment", json={"type": "identify", "traits": {"email": "a@b.c"}},
                           headers={"Authorization": f"Bearer {SEGMENT_TOKEN}"})
    conforms("POST", "/webhooks/segment", response, 503)
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    for query in ("", "?scope=accept"):
        response = client.get(f"/healthz{query}", headers=bearer)
        conforms("GET", "/healthz", response, 503)
        assert response.get_json()["storage"] == "unavailable"
        response = client.get(f"/healthz{query}")
        conforms("GET", "/healthz", response, 503)
        assert ("storage" in response.get_json()) is (metrics_token is None)
    conforms("GET", "/metrics", client.get("/metrics", headers=bearer), 503)
    if metrics_token:
        conforms("GET", "/metrics", client.get("/metrics"), 401)


def test_health_while_segment_holds_delivery_and_degraded(clients: Any,
                                                           mailjet_events: dict[str, Any]) -> None:
    """A write key Segment does not know: 503 with the reason, 200 with scope=accept. No write key
    at all: 200 ``degraded``, and no ``write_key`` verdict."""
    client = clients(SEGMENT_WRITE_KEY="typo-key-123")
    client.post("/webhooks/mailjet", json=mailjet_events["sent"],
                headers=basic(MAILJET_USER, MAILJET_PASSWORD))
    client.application.extensions["bridge"].loops()[0].run_once()
    response = client.get("/healthz")
    conforms("GET", "/healthz", response, 503)
    assert response.get_json()["segment"]["state"] == "unknown_write_key"
    assert response.get_json()["segment"]["write_key"]["verdict"] == "unknown"
    conforms("GET", "/healthz", client.get("/healthz?scope=accept"), 200)
    conforms("GET", "/metrics", client.get("/metrics"), 200)

    without_key = clients(SEGMENT_WRITE_KEY="")
    without_key.application.extensions["bridge"].loops()[0].run_once()  # health shows what loops store
    response = without_key.get("/healthz")
    conforms("GET", "/healthz", response, 200)
    assert response.get_json()["status"] == "degraded"
    assert "write_key" not in response.get_json()["segment"]


def test_the_metrics_token_closes_metrics_and_the_health_detail(clients: Any) -> None:
    client = clients(BRIDGE_METRICS_TOKEN=METRICS_TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        response = client.get("/metrics", headers=headers)
        conforms("GET", "/metrics", response, 401)
        response = client.get("/healthz", headers=headers)
        conforms("GET", "/healthz", response, 200)
        assert response.get_json() == {"status": "ok"}
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    response = client.get("/metrics", headers=bearer)
    conforms("GET", "/metrics", response, 200)
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    response = client.get("/healthz", headers=bearer)
    conforms("GET", "/healthz", response, 200)
    assert response.get_json()["queue"]["pending"] == 0

"""The yardstick: a Flask endpoint that reads the body and answers 200, under the same server."""

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/mailjet")
def receive() -> tuple[str, int]:
    request.get_data()
    return '{"accepted": 0}', 200


@app.get("/healthz")
def healthz() -> tuple[str, int]:
    """What bench/slow_clients.py probes."""
    return '{"status": "ok"}', 200

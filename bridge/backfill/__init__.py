"""Backfill (#13): Mailjet's email history, read from its REST API, queued as the live feed would
have sent it. Same mapping, same dedupe key, same ``messageId``: history and live overlap safely."""

-- Outbox: one row per accepted item, Mailjet events to Segment (kind 'segment_track') and Segment
-- identifies to Mailjet. States: pending -> leased -> delivered, or -> dead (a dead letter).
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT             NOT NULL,
    dedupe_key       TEXT             NOT NULL,
    event_time       BIGINT           NOT NULL DEFAULT 0,
    event_type       TEXT,
    payload          TEXT             NOT NULL,
    state            TEXT             NOT NULL DEFAULT 'pending',
    attempts         INTEGER          NOT NULL DEFAULT 0,
    next_attempt_at  DOUBLE PRECISION NOT NULL,
    lease_owner      TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_error       TEXT,
    last_status      INTEGER,
    last_response    TEXT,
    latency_ms       DOUBLE PRECISION,
    sent             TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    finished_at      DOUBLE PRECISION,
    -- event_time leads so that new keys land at the right edge of the index.
    UNIQUE (kind, event_time, dedupe_key)
);
CREATE INDEX outbox_due ON outbox (kind, state, next_attempt_at);
-- Claims look only at the rows still to deliver; the partial index stays small as delivered rows pile up.
CREATE INDEX outbox_open ON outbox (kind, next_attempt_at, id) WHERE state IN ('pending', 'leased');

CREATE TABLE quarantine (
    id          BIGSERIAL PRIMARY KEY,
    source      TEXT             NOT NULL,
    fingerprint TEXT             NOT NULL UNIQUE,
    body        TEXT             NOT NULL,
    errors      TEXT             NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE identities (
    email      TEXT PRIMARY KEY,
    user_id    TEXT             NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX identities_user ON identities (user_id);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT             NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Outbox: one row per accepted item, Mailjet events to Segment (kind 'segment_track') and, later,
-- Segment identifies to Mailjet. States: pending -> leased -> delivered, or -> dead (a dead letter).
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,
    dedupe_key       TEXT    NOT NULL,
    event_time       INTEGER NOT NULL DEFAULT 0,
    event_type       TEXT,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    last_error       TEXT,
    last_status      INTEGER,
    last_response    TEXT,
    latency_ms       REAL,
    sent             TEXT,
    created_at       REAL    NOT NULL,
    finished_at      REAL,
    -- event_time leads so that new keys land at the right edge of the index (events arrive
    -- roughly in time order); random hash keys alone dirty twice the pages per commit.
    UNIQUE (kind, event_time, dedupe_key)
);
CREATE INDEX outbox_due ON outbox (kind, state, next_attempt_at);

-- Events that failed validation, kept with their errors for admins (never forwarded as they are).
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    body        TEXT NOT NULL,
    errors      TEXT NOT NULL,
    received_at REAL NOT NULL
);

-- userId <-> email, learned from identify calls; inbound events look the userId up at send time.
CREATE TABLE identities (
    email      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX identities_user ON identities (user_id);

-- Stored settings (they win over the environment) and small runtime status records.
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);

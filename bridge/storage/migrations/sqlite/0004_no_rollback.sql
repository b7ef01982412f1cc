-- The newest identify applied to each Mailjet contact (by the identify's own timestamp): an older
-- one, redelivered or replayed by Segment, never overwrites it.
CREATE TABLE contact_versions (
    email      TEXT PRIMARY KEY,
    applied_ts REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Set when an operator replays a dead letter: an explicit replay applies even if it is older.
ALTER TABLE outbox ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;

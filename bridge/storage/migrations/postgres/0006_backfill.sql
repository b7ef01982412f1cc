-- Backfill (#13): one checkpoint per (resource, window). A page's events and its checkpoint are
-- written in one transaction, so a run killed at any point resumes at the next unread page.
-- state: 'open' (being paged from next_offset), 'split' (too large, its halves have their own rows),
-- 'done' (every page read; fetched compared with expected, the window's countOnly).
CREATE TABLE backfill_checkpoints (
    resource     TEXT    NOT NULL,
    window_start BIGINT  NOT NULL,
    window_end   BIGINT  NOT NULL,
    state        TEXT    NOT NULL,
    next_offset  INTEGER NOT NULL DEFAULT 0,
    expected     INTEGER,
    fetched      INTEGER NOT NULL DEFAULT 0,
    updated_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (resource, window_start, window_end)
);

-- What /message told about each message (email, GUID, campaign, contact, CustomID) as JSON, so the
-- open, click and bounce logs, which lack most of it, are joined on MessageID, also after a restart.
-- The id is text: MessageIDs exceed 2^53.
CREATE TABLE backfill_messages (
    message_id TEXT PRIMARY KEY,
    record     TEXT NOT NULL
);

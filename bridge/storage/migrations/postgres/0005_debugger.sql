-- The debugger finds one event by its recipient (email, else anonymous id), its Mailjet message id
-- or its Segment messageId ('mailjet-' + dedupe_key). The delivery side writes the two labels when
-- it settles a row, never the intake: a queued row has none (NULL), and the partial indexes leave
-- such rows out, so accepting an event costs no index entry more. Rows not labelled yet (pending,
-- or dead at intake) are found by a scan of the open and dead rows alone.
ALTER TABLE outbox ADD COLUMN recipient TEXT;
ALTER TABLE outbox ADD COLUMN message_ref TEXT;
CREATE INDEX outbox_recipient ON outbox (recipient) WHERE recipient IS NOT NULL;
CREATE INDEX outbox_message_ref ON outbox (message_ref) WHERE message_ref IS NOT NULL;
CREATE INDEX outbox_labelled_key ON outbox (dedupe_key) WHERE recipient IS NOT NULL;

-- Failed attempts, for the debugger's journey of an event: a ring of a few slots per row
-- (slot = attempts so far modulo the ring's size), so a row retried for days keeps only its last
-- ones. The attempt that settles a row is kept on the row itself (last_status, last_response).
CREATE TABLE attempts (
    item_id BIGINT NOT NULL,
    slot    INTEGER NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    status  INTEGER,
    error   TEXT,
    PRIMARY KEY (item_id, slot)
);

-- The debugger finds one event by its recipient (email, else anonymous id), its Mailjet message id
-- or its Segment messageId ('mailjet-' + dedupe_key). Neither the intake nor the delivery writes
-- these labels: their keys are random, so each label costs an index page written (docs/benchmarks.md,
-- R3). The janitor labels delivered rows afterwards, in windows, found by outbox_to_label, whose key
-- is the id (entries come and go in order: cheap); the delivery side labels only the rows it gives
-- up on (dead). Rows not labelled yet are found by a scan of the open and dead rows and of the
-- delivered rows still in outbox_to_label.
ALTER TABLE outbox ADD COLUMN recipient TEXT;
ALTER TABLE outbox ADD COLUMN message_ref TEXT;
CREATE INDEX outbox_recipient ON outbox (recipient) WHERE recipient IS NOT NULL;
CREATE INDEX outbox_message_ref ON outbox (message_ref) WHERE message_ref IS NOT NULL;
CREATE INDEX outbox_labelled_key ON outbox (dedupe_key) WHERE recipient IS NOT NULL;
CREATE INDEX outbox_to_label ON outbox (id) WHERE state = 'delivered' AND recipient IS NULL;

-- Failed attempts, for the debugger's journey of an event: a ring of a few slots per row
-- (slot = attempts so far modulo the ring's size), so a row retried for days keeps only its last
-- ones. The attempt that settles a row is kept on the row itself (last_status, last_response).
CREATE TABLE attempts (
    item_id INTEGER NOT NULL,
    slot    INTEGER NOT NULL,
    at      REAL NOT NULL,
    status  INTEGER,
    error   TEXT,
    PRIMARY KEY (item_id, slot)
);

-- What a batch was sent as, kept once for the whole batch (performance issue #11, R3): the rows of a
-- delivered batch point to it (outbox.sent_batch) instead of each holding its own text in
-- outbox.sent, which cost about 9 us of a 15 us mark per row. body is a JSON array of the rows'
-- texts and item_ids the JSON array of their outbox ids, in the same order; the store reads a row's
-- own text out of it. No foreign key: deleting old batches must not check the outbox (the janitor
-- clears the references of the rows it compacts, and a reader ignores a batch that is gone).
CREATE TABLE sent_batches (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT             NOT NULL,
    item_ids   TEXT             NOT NULL,
    body       TEXT             NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX sent_batches_created ON sent_batches (created_at);
ALTER TABLE outbox ADD COLUMN sent_batch BIGINT;

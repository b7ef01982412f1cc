-- Delivery by range (performance issue #11, R3; docs/range-delivery.md). While the forwarder drains a
-- backlog it claims a round as one row here instead of writing a lease on each outbox row, and
-- records each delivered batch as a row of sent_batches that names its range, instead of marking
-- each outbox row. The rows stay 'pending' on disk; every reader derives their state from the range
-- (leased, or delivered by one of its batches). The janitor settles a finished range later: it
-- writes each row's outcome and labels in one update, and deletes the range. item_ids is the JSON
-- array of the member ids (ascending); first_id and last_id bound them, and claims by row never take
-- a pending row inside a range's bounds (on PostgreSQL a row that committed late may lie there
-- without being a member: it waits for the range to be settled).
CREATE TABLE delivery_ranges (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT    NOT NULL,
    first_id         BIGINT  NOT NULL,
    last_id          BIGINT  NOT NULL,
    item_ids         TEXT    NOT NULL,
    events           INTEGER NOT NULL,
    delivered        INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL,
    owner            TEXT,
    lease_expires_at DOUBLE PRECISION,
    created_at       DOUBLE PRECISION NOT NULL
);
CREATE INDEX delivery_ranges_last ON delivery_ranges (kind, last_id);
ALTER TABLE sent_batches ADD COLUMN range_id BIGINT;
ALTER TABLE sent_batches ADD COLUMN status INTEGER;
ALTER TABLE sent_batches ADD COLUMN response TEXT;
ALTER TABLE sent_batches ADD COLUMN latency_ms DOUBLE PRECISION;
CREATE INDEX sent_batches_range ON sent_batches (range_id) WHERE range_id IS NOT NULL;

-- Failed admin logins, to slow down password guessing across every process.
CREATE TABLE login_failures (
    id     BIGSERIAL PRIMARY KEY,
    client TEXT             NOT NULL,
    at     DOUBLE PRECISION NOT NULL
);
CREATE INDEX login_failures_client ON login_failures (client, at);

-- The debugger and the overview read the newest rows and the last hour.
CREATE INDEX outbox_created ON outbox (created_at);

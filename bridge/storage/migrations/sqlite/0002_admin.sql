-- Failed admin logins, to slow down password guessing across every process.
CREATE TABLE login_failures (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    at     REAL NOT NULL
);
CREATE INDEX login_failures_client ON login_failures (client, at);

-- The debugger and the overview read the newest rows and the last hour.
CREATE INDEX outbox_created ON outbox (created_at);

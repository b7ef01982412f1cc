-- Admin sessions, kept on the server so that logging out (or a new admin password) ends them.
-- The id is a hash of the cookie's session id; the credential a fingerprint of the admin password.
CREATE TABLE admin_sessions (
    id         TEXT PRIMARY KEY,
    credential TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at    REAL NOT NULL
);

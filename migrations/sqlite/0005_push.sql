-- Push to users who are away: as Postgres's 0007 (see there). Times are
-- Unix microseconds; devices_done is a JSON array of device ids.
CREATE TABLE push_devices (
    device_id     TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    provider      TEXT NOT NULL CHECK (provider IN ('web_push', 'fcm', 'apns')),
    address       TEXT NOT NULL,
    p256dh        TEXT,
    auth          TEXT,
    apns_topic    TEXT,
    sandbox       INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX push_devices_user ON push_devices (user_id, registered_at);

CREATE TABLE push_queue (
    message_id   BLOB NOT NULL,
    user_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    event        TEXT NOT NULL,
    push_when    TEXT NOT NULL CHECK (push_when IN ('offline', 'unacked')),
    after_s      INTEGER NOT NULL DEFAULT 0,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    due_at       INTEGER NOT NULL,
    lease_until  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    devices_done TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (message_id, user_id)
) WITHOUT ROWID;
CREATE INDEX push_queue_due ON push_queue (due_at);

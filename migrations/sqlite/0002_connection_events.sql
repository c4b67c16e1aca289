-- The connection lifecycle log: as Postgres's 0004 (see there). Times are
-- microseconds since the epoch; one writer at a time numbers positions.
CREATE TABLE lifecycle_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO lifecycle_head (id, position) VALUES (1, 0);

CREATE TABLE connection_events (
    position      INTEGER PRIMARY KEY,
    connection_id BLOB NOT NULL,
    ordinal       INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    user_id       TEXT NOT NULL,
    bridge_id     TEXT NOT NULL,
    topic         TEXT NOT NULL DEFAULT '',
    close_code    INTEGER NOT NULL DEFAULT 0,
    reason        TEXT NOT NULL DEFAULT '',
    at            INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    UNIQUE (connection_id, ordinal)
);
CREATE INDEX connection_events_recorded_at ON connection_events (recorded_at);

CREATE TABLE bridges (
    bridge_id TEXT PRIMARY KEY,
    seen_at   INTEGER NOT NULL
);

-- The connection lifecycle log (Notify.WatchConnections): every replica
-- records what it hears from every bridge; (connection_id, ordinal) names an
-- event, so the first replica to record it wins and the others' copies are
-- dropped. Positions are gap-free in commit order: every writer takes the
-- one lifecycle_head row first (docs/design.md §6).
CREATE TABLE lifecycle_head (
    id       smallint PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO lifecycle_head (id, position) VALUES (1, 0);

CREATE TABLE connection_events (
    position      bigint PRIMARY KEY,
    connection_id uuid NOT NULL,
    -- 0 connected, 1..: the bridge's count of (un)subscribes, max: disconnected.
    ordinal       bigint NOT NULL,
    kind          smallint NOT NULL,
    user_id       text COLLATE "C" NOT NULL,
    bridge_id     text NOT NULL,
    topic         text NOT NULL DEFAULT '',
    close_code    integer NOT NULL DEFAULT 0,
    reason        text NOT NULL DEFAULT '',
    at            timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connection_id, ordinal)
);
CREATE INDEX connection_events_recorded_at ON connection_events (recorded_at);

-- When some replica last held each bridge's link (database time): a bridge
-- no replica has heard for NOTIFY_BRIDGE_EXPIRY is gone, and its registry
-- rows leave with a disconnected event each.
CREATE TABLE bridges (
    bridge_id text PRIMARY KEY,
    seen_at   timestamptz NOT NULL
);

-- The notify store on SQLite: the same tables and rules as the Postgres
-- migrations 0001–0003, in SQLite's dialect. Applied by notify-store's
-- SQLite runner in one transaction; never edit an applied file, add a new one.
--
-- Times are integer microseconds since the Unix epoch (UTC), except in
-- `fights`, whose timestamps are RFC 3339 text like BetService's JSON.
-- Ids and topic names compare bytewise (SQLite's BINARY collation), so a
-- namespace is a contiguous key range ('ns:' <= topic < 'ns;').
--
-- Gap-free seqs need no row locks here: SQLite admits one writer at a time
-- (every write transaction is BEGIN IMMEDIATE), so a batch that bumps a head
-- and writes its rows is never interleaved with another.

-- Payloads of user-list messages, stored once (see inbox).
CREATE TABLE messages (
    id         BLOB PRIMARY KEY,
    caller     TEXT NOT NULL,
    event      TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX messages_expires_at ON messages (expires_at);

-- One row per recipient; a single-user message carries its payload inline,
-- a user-list row has caller/event/data NULL and its payload in messages.
-- WITHOUT ROWID: the row lives in its key's B-tree, so an insert dirties one
-- page of it instead of a rowid-table page plus a key-index page (WAL
-- frames are whole pages: that halved what a commit writes).
--
-- A user's inbox head (Postgres's inbox_heads) is a row of this table too:
-- seq = 9223372036854775807 (the largest integer), last_seq = the last seq
-- handed out, expires_at likewise never. Its key sorts right after the
-- user's newest entries, so a publish bumps the head and appends its entry
-- on one page instead of two pages of two tables. Every read of entries
-- stops below that seq; every read of the head asks for exactly it.
CREATE TABLE inbox (
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    caller     TEXT,
    event      TEXT,
    data       TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- Only in the head row.
    last_seq   INTEGER,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_expires_at ON inbox (expires_at);

CREATE TABLE inbox_acks (
    user_id   TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE topic_heads (
    topic    TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE topic_log (
    topic      TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    caller     TEXT NOT NULL,
    event      TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE INDEX topic_log_created_at ON topic_log (topic, created_at);

CREATE TABLE idempotency_keys (
    caller     TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id BLOB NOT NULL,
    seq        INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

CREATE TABLE subscriptions (
    user_id    TEXT NOT NULL,
    topic      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, topic)
) WITHOUT ROWID;
CREATE INDEX subscriptions_topic ON subscriptions (topic);

CREATE TABLE connections (
    connection_id BLOB PRIMARY KEY,
    user_id       TEXT NOT NULL,
    bridge_id     TEXT NOT NULL,
    connected_at  INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL
);
CREATE INDEX connections_user_id ON connections (user_id);
CREATE INDEX connections_bridge_id ON connections (bridge_id);

-- ===========================================================================
-- BetService's tables, as BetTracker reads them (DESIGN §8); see the
-- Postgres migration 0003 for why a trigger and why a head row.
-- ===========================================================================

CREATE TABLE fights (
    id              TEXT PRIMARY KEY,
    creator_id      TEXT NOT NULL,
    acceptor_id     TEXT,
    stake           INTEGER NOT NULL CHECK (stake >= 0),
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('open', 'accepted', 'completed', 'cancelled')),
    winner_id       TEXT,
    -- RFC 3339 UTC with milliseconds ('2026-11-23T16:00:00.000Z'): one
    -- format everywhere, so text order is time order.
    accept_deadline TEXT NOT NULL,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX fights_open_by_deadline ON fights (accept_deadline) WHERE status = 'open';

CREATE TABLE fight_outbox_head (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    last_id  INTEGER NOT NULL
);
INSERT INTO fight_outbox_head (only_row, last_id) VALUES (1, 0);

CREATE TABLE fight_outbox (
    id          INTEGER PRIMARY KEY,
    fight_id    TEXT NOT NULL,
    old_status  TEXT,
    new_status  TEXT NOT NULL,
    -- The whole new row as a JSON object (json_object of every column).
    fight       TEXT NOT NULL,
    -- Unix milliseconds.
    recorded_at INTEGER NOT NULL
);

-- SQLite has no INSERT OR UPDATE trigger: two, alike but for old_status.
CREATE TRIGGER fights_insert_to_outbox AFTER INSERT ON fights
BEGIN
    UPDATE fight_outbox_head SET last_id = last_id + 1;
    INSERT INTO fight_outbox (id, fight_id, old_status, new_status, fight, recorded_at)
    SELECT h.last_id, NEW.id, NULL, NEW.status,
           json_object('id', NEW.id, 'creator_id', NEW.creator_id,
                       'acceptor_id', NEW.acceptor_id, 'stake', NEW.stake,
                       'currency', NEW.currency, 'status', NEW.status,
                       'winner_id', NEW.winner_id, 'accept_deadline', NEW.accept_deadline,
                       'created_at', NEW.created_at, 'updated_at', NEW.updated_at),
           CAST(unixepoch('subsec') * 1000 AS INTEGER)
    FROM fight_outbox_head h;
END;

CREATE TRIGGER fights_update_to_outbox AFTER UPDATE ON fights
BEGIN
    UPDATE fight_outbox_head SET last_id = last_id + 1;
    INSERT INTO fight_outbox (id, fight_id, old_status, new_status, fight, recorded_at)
    SELECT h.last_id, NEW.id, OLD.status, NEW.status,
           json_object('id', NEW.id, 'creator_id', NEW.creator_id,
                       'acceptor_id', NEW.acceptor_id, 'stake', NEW.stake,
                       'currency', NEW.currency, 'status', NEW.status,
                       'winner_id', NEW.winner_id, 'accept_deadline', NEW.accept_deadline,
                       'created_at', NEW.created_at, 'updated_at', NEW.updated_at),
           CAST(unixepoch('subsec') * 1000 AS INTEGER)
    FROM fight_outbox_head h;
END;

-- BetTracker's own state. Lease expiry in Unix milliseconds.
CREATE TABLE tracker_cursors (
    name      TEXT PRIMARY KEY,
    outbox_id INTEGER NOT NULL
);

CREATE TABLE tracker_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE tracker_expired (
    fight_id   TEXT PRIMARY KEY,
    emitted_at INTEGER NOT NULL
);

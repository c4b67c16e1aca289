-- The transactional outbox any service can write: as Postgres's 0005 (see
-- there). One writer at a time: the head row makes ids gap-free in commit
-- order. Times in Unix milliseconds.
CREATE TABLE notify_outbox_head (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    last_id  INTEGER NOT NULL
);
INSERT INTO notify_outbox_head (only_row, last_id) VALUES (1, 0);

CREATE TABLE notify_outbox (
    id          INTEGER PRIMARY KEY,
    publish     TEXT NOT NULL CHECK (json_valid(publish) AND json_type(publish) = 'object'),
    recorded_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
);

-- INSERT INTO notify_outbox (publish) VALUES (…): the row takes the next id.
CREATE TRIGGER notify_outbox_numbered AFTER INSERT ON notify_outbox
BEGIN
    UPDATE notify_outbox_head SET last_id = last_id + 1;
    UPDATE notify_outbox SET id = (SELECT last_id FROM notify_outbox_head)
    WHERE rowid = NEW.rowid;
END;

-- notify's transactional outbox, for a service's own Postgres database.
--
-- Apply once (psql -f migrations/notify_outbox.sql). Then write a publish in
-- the same transaction as the business change it announces:
--
--   BEGIN;
--   UPDATE orders SET status = 'shipped' WHERE id = 42;
--   INSERT INTO notify_outbox (publish) VALUES
--     ('{"user_id": "alice", "event": "order_shipped", "data": {"order": 42},
--       "idempotency_key": "order-42-shipped"}');
--   COMMIT;
--
-- The relay publishes each committed row exactly once, in order per target;
-- a rolled-back transaction leaves nothing. The tables below are the same as
-- notify's own migration (migrations/postgres/0005_notify_outbox.sql), plus
-- the relay's cursor and lease (shared with BetTracker's, keyed by name).

CREATE TABLE notify_outbox_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_id  bigint NOT NULL
);
INSERT INTO notify_outbox_head (only_row, last_id) VALUES (true, 0);

CREATE TABLE notify_outbox (
    id          bigint PRIMARY KEY,
    -- {"user_id"|"users"|"topic"|"broadcast"|"connection_id", "event", "data", …}
    publish     jsonb NOT NULL CHECK (jsonb_typeof(publish) = 'object'),
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Numbers each row as it is inserted: INSERT INTO notify_outbox (publish) VALUES (…).
CREATE FUNCTION notify_outbox_number() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE notify_outbox_head SET last_id = last_id + 1 RETURNING last_id INTO NEW.id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER notify_outbox_numbered
    BEFORE INSERT ON notify_outbox
    FOR EACH ROW EXECUTE FUNCTION notify_outbox_number();

-- The relay's position (the last id published) and its lease (one active
-- relay per name; a standby takes over when it expires).
CREATE TABLE IF NOT EXISTS tracker_cursors (
    name      text PRIMARY KEY,
    outbox_id bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS tracker_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

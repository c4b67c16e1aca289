-- The transactional outbox any service can write (README "From your own
-- database"): a service inserts a publish, in the publish JSON shape, in the
-- same transaction as its business change; the outbox relay publishes each
-- row exactly once, in order per target. migrations/notify_outbox.sql is the
-- same for a service's own database.
--
-- Ids come from a locked head row, as fight_outbox's (0003): gap-free and in
-- commit order, so a relay's cursor never passes a row still in flight.
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

-- ===========================================================================
-- BetService's tables, as BetTracker reads them (DESIGN §8).
--
-- The platform does not own `fights`: BetService writes it. These
-- definitions give tests, `notify up` and `bet-tracker simulate` the same
-- shape BetService's own migrations create in production; if BetService's
-- database is a separate one, only the outbox part below matters there.
-- ===========================================================================

CREATE TABLE fights (
    id              text COLLATE "C" PRIMARY KEY,
    creator_id      text NOT NULL,
    acceptor_id     text,
    -- Minor units of `currency`.
    stake           bigint NOT NULL CHECK (stake >= 0),
    currency        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('open', 'accepted', 'completed', 'cancelled')),
    winner_id       text,
    accept_deadline timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The tracker looks for open fights past their deadline.
CREATE INDEX fights_open_by_deadline ON fights (accept_deadline) WHERE status = 'open';

-- Every insert and update of `fights`, with the status before and after and
-- the whole new row.
--
-- Fed by a trigger, not by BetService's code: no code path of BetService can
-- change a fight and forget to tell the tracker, and the outbox row commits
-- (or rolls back) with the change itself.
--
-- Ids come from a locked head row, not a sequence: a sequence hands ids out
-- at insert time, so a reader could see id 7 committed while id 6 is still in
-- flight, move its cursor past 6 and never see it. Taking the head row's lock
-- makes writers of the outbox commit one after the other, so the ids a reader
-- sees are always gap-free and complete up to the highest one. The price is
-- that fight changes serialize on that row for the length of their
-- transaction (well above the thousand changes per second BetTracker is
-- benchmarked at; BetService's fight transactions are short).
CREATE TABLE fight_outbox_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_id  bigint NOT NULL
);
INSERT INTO fight_outbox_head (only_row, last_id) VALUES (true, 0);

CREATE TABLE fight_outbox (
    id          bigint PRIMARY KEY,
    fight_id    text COLLATE "C" NOT NULL,
    -- NULL for the fight's insert.
    old_status  text,
    new_status  text NOT NULL,
    fight       jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION fight_outbox_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    next_id bigint;
BEGIN
    UPDATE fight_outbox_head SET last_id = last_id + 1 RETURNING last_id INTO next_id;
    INSERT INTO fight_outbox (id, fight_id, old_status, new_status, fight)
    VALUES (
        next_id,
        NEW.id,
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
        NEW.status,
        to_jsonb(NEW)
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER fights_to_outbox
    AFTER INSERT OR UPDATE ON fights
    FOR EACH ROW EXECUTE FUNCTION fight_outbox_append();

-- ===========================================================================
-- BetTracker's own state (the platform's).
-- ===========================================================================

-- How far each tracker group has emitted (the outbox id of the last event
-- whose EmitFightEvent succeeded).
CREATE TABLE tracker_cursors (
    name      text PRIMARY KEY,
    outbox_id bigint NOT NULL
);

-- Which tracker is active: the holder renews `expires_at` every few seconds;
-- another takes over once it passes. A row, not an advisory lock: advisory
-- locks pin a connection behind RDS Proxy.
CREATE TABLE tracker_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Open fights whose `fight_expired` was emitted: once each.
CREATE TABLE tracker_expired (
    fight_id   text COLLATE "C" PRIMARY KEY,
    emitted_at timestamptz NOT NULL DEFAULT now()
);

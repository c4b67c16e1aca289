-- The user's side of the inbox (docs/design.md §4.7): state per message,
-- badge counts kept beside the head, mutes, and edits.
--
-- state bits (notify_core::inbox::State): 1 seen, 2 read, 4 archived,
-- 8 muted (the event was muted when committed), 16 retracted. Rows that
-- exist before this migration start seen and read (the stored default of
-- the new column, no table rewrite): badges start at zero on upgrade, and
-- older items stay in history. New rows get their state from the commit.
ALTER TABLE inbox ADD COLUMN state smallint NOT NULL DEFAULT 3;
ALTER TABLE inbox ALTER COLUMN state SET DEFAULT 0;
-- When the producer last edited the message (NULL: never).
ALTER TABLE inbox ADD COLUMN edited_at timestamptz;
-- Edits and retractions name a message by id; a user-list message has one
-- row per recipient. v7 ids grow with time, so inserts land on the index's
-- right edge.
CREATE INDEX inbox_message_id ON inbox (message_id);

-- Counts live in the head row: a publish already updates it under its row
-- lock, so keeping them costs no extra row, and every change (publish,
-- mark, retraction, sweep) adds its exact delta under that same lock, so
-- they never drift. version grows with every change: readers keep the
-- newest copy when two cross on the way.
ALTER TABLE inbox_heads
    ADD COLUMN unseen  bigint NOT NULL DEFAULT 0,
    ADD COLUMN unread  bigint NOT NULL DEFAULT 0,
    ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- What a user muted: kind 'event' (inbox messages of that event are stored
-- muted; topic messages not pushed) or 'namespace' (topic messages of it
-- not pushed).
CREATE TABLE user_mutes (
    user_id text COLLATE "C" NOT NULL,
    kind    text NOT NULL CHECK (kind IN ('event', 'namespace')),
    name    text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, kind, name)
);

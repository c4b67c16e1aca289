-- The user's side of the inbox: as Postgres's 0006 (see there). Rows that
-- exist before it start seen and read; new rows get their state from the
-- commit. The counts live in the head row (seq = the largest integer),
-- which every publish already rewrites.
ALTER TABLE inbox ADD COLUMN state INTEGER NOT NULL DEFAULT 3;
ALTER TABLE inbox ADD COLUMN edited_at INTEGER;
ALTER TABLE inbox ADD COLUMN unseen INTEGER;
ALTER TABLE inbox ADD COLUMN unread INTEGER;
ALTER TABLE inbox ADD COLUMN version INTEGER;
UPDATE inbox SET unseen = 0, unread = 0, version = 0 WHERE seq = 9223372036854775807;
CREATE INDEX inbox_message_id ON inbox (message_id);

CREATE TABLE user_mutes (
    user_id TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('event', 'namespace')),
    name    TEXT NOT NULL,
    PRIMARY KEY (user_id, kind, name)
) WITHOUT ROWID;

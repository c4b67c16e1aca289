-- The notify store: inboxes, topic logs, idempotency keys, subscriptions and the
-- connection registry. Applied by notify-store's migration runner, one
-- transaction per file; never edit an applied file, add a new one.
--
-- Ids and topic names are COLLATE "C": compared bytewise, so a namespace is a
-- contiguous key range ('ns:' <= topic < 'ns;') and comparisons skip locale rules.

-- Per-user inbox head: the last seq handed out. Its row lock serialises the
-- writers of one user, which is what keeps seqs gap-free across replicas.
CREATE TABLE inbox_heads (
    user_id  text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);

-- Payloads of messages to user lists, stored once however many inboxes
-- reference them. data is JSON text checked by notify-svc: text, not jsonb,
-- because Postgres never looks inside and parsing it would cost its CPU.
CREATE TABLE messages (
    id         uuid PRIMARY KEY,
    caller     text NOT NULL,
    event      text NOT NULL,
    data       text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
-- BRIN: rows arrive roughly in expiry order and the sweeper is the only reader,
-- so a tiny index that costs nearly nothing on insert is enough.
CREATE INDEX messages_expires_at ON messages USING brin (expires_at);

-- One row per recipient. A message to one user (the common case) carries its
-- payload inline: one row and one index entry instead of two of each. A row
-- of a user-list message has caller/event/data NULL and its payload in
-- messages.
CREATE TABLE inbox (
    user_id    text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    message_id uuid NOT NULL,
    caller     text,
    event      text,
    data       text,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_expires_at ON inbox USING brin (expires_at);

CREATE TABLE topic_heads (
    topic    text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);

-- A topic's bounded log; the payload lives inline because a topic message is
-- stored once. Trimmed by size at insert and by age by the sweeper.
CREATE TABLE topic_log (
    topic      text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    message_id uuid NOT NULL,
    caller     text NOT NULL,
    event      text NOT NULL,
    data       text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- Idempotency keys per caller. seq is the target's seq (0 for user lists and
-- broadcast), written by the same transaction that stored the message.
CREATE TABLE idempotency_keys (
    caller     text NOT NULL,
    key        text NOT NULL,
    message_id uuid NOT NULL,
    seq        bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

CREATE TABLE subscriptions (
    user_id    text COLLATE "C" NOT NULL,
    topic      text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, topic)
);
CREATE INDEX subscriptions_topic ON subscriptions (topic);

-- Live connections as the bridges report them, so presence survives a
-- notify-svc restart.
CREATE TABLE connections (
    connection_id uuid PRIMARY KEY,
    user_id       text COLLATE "C" NOT NULL,
    bridge_id     text NOT NULL,
    connected_at  timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL
);
CREATE INDEX connections_user_id ON connections (user_id);
CREATE INDEX connections_bridge_id ON connections (bridge_id);

-- Fails the calling statement (and so its group-commit transaction) when fewer
-- idempotency keys were claimed than the batch expected: a key was taken. The
-- committer then retries with those items answered from the stored keys. An
-- error, not a result, because the transaction's COMMIT is already queued
-- behind this statement in the same round trip.
CREATE FUNCTION notify_claim_keys(claimed bigint, expected bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF claimed <> expected THEN
        RAISE EXCEPTION 'idempotency key already taken' USING ERRCODE = 'NTK01';
    END IF;
END
$$;

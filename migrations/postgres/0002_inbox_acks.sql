-- Cumulative inbox acks per user: replay on connect starts after acked_seq.
-- A table of its own, not a column of inbox_heads: acks must never wait on
-- (or deadlock with) the row locks that publishes take on the heads.
CREATE TABLE inbox_acks (
    user_id   text COLLATE "C" PRIMARY KEY,
    acked_seq bigint NOT NULL
);

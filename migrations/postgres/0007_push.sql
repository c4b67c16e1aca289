-- Push to users who are away (docs/design.md §4.8): the devices a user
-- registered, and the durable queue of pushes a commit made due.

-- One row per device: its id is derived from the provider and address
-- (notify_core::push::Destination::device_id), so one address belongs to
-- one user at a time and registering it again is the same device.
CREATE TABLE push_devices (
    device_id     text COLLATE "C" PRIMARY KEY,
    user_id       text COLLATE "C" NOT NULL,
    provider      text NOT NULL CHECK (provider IN ('web_push', 'fcm', 'apns')),
    -- The Web Push endpoint, or the FCM / APNs token.
    address       text NOT NULL,
    -- Web Push: the subscription's keys (base64url).
    p256dh        text,
    auth          text,
    -- APNs: the app's bundle id and whether it is a development build.
    apns_topic    text,
    sandbox       boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL
);
CREATE INDEX push_devices_user ON push_devices (user_id, registered_at);

-- A push a commit made due: one row per (message, user), written in the
-- publish's own transaction, so a crash never loses one. The sender claims
-- due rows with a lease (FOR UPDATE SKIP LOCKED: no session state, safe
-- behind RDS Proxy), decides by the user's acks and presence at due time,
-- sends to each device, and records the devices done, so a retry after a
-- crash resends only what was in flight.
CREATE TABLE push_queue (
    message_id   uuid NOT NULL,
    user_id      text COLLATE "C" NOT NULL,
    seq          bigint NOT NULL,
    event        text NOT NULL,
    -- 'offline': push if the user has no live connection at due time;
    -- 'unacked': push if no device acked the seq by due time.
    push_when    text NOT NULL CHECK (push_when IN ('offline', 'unacked')),
    -- For unacked: the seconds it waited for an ack (shown in metrics).
    after_s      integer NOT NULL DEFAULT 0,
    title        text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    -- A sender holds the row until then; another may take it after.
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    devices_done text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX push_queue_due ON push_queue (due_at);

// The WebSocket protocol of the notify bridge (docs/design.md, "WebSocket protocol"), as types.

/** Sent once the connection is registered; `seq` is the inbox head. */
export interface Welcome {
  type: 'welcome';
  connection_id: string;
  user_id: string;
  seq: number;
  /** False when retention (the inbox TTL) dropped messages after the resume point. */
  recovered: boolean;
  /** The oldest inbox seq still kept (0 if none): where the replay starts. */
  first_seq: number;
  /** The user's badge counts now. */
  counts: Counts;
  /** What the user muted. */
  mutes: Mutes;
}

/**
 * A user's badge numbers, the same on every device: messages not seen yet
 * and not read yet. Archived, muted and retracted messages count in neither.
 */
export interface Counts {
  unseen: number;
  unread: number;
}

/** Muted event types (inbox messages stored muted, topic messages not pushed) and topic namespaces (not pushed). */
export interface Mutes {
  events: string[];
  namespaces: string[];
}

/**
 * Sent whenever the user's counts change: a new message, a mark on any device, a retraction, expiry.
 * With `id` and `events`: the answer to the `counts` action.
 */
export interface CountsFrame extends Counts {
  type: 'counts';
  /** The answer only: event types with anything unseen or unread. */
  events?: Record<string, Counts>;
  id?: string;
}

/** A browser's `PushSubscription.toJSON()`. */
export interface WebPushSubscriptionJson {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

/** Where a push to this device goes: exactly one of the three. */
export type PushDestination =
  | { web_push: WebPushSubscriptionJson }
  | { fcm: { token: string } }
  | { apns: { token: string; topic: string; sandbox?: boolean } };

/** A registered push device. */
export type PushDevice = { device_id: string; registered: number } & Partial<{
  web_push: WebPushSubscriptionJson;
  fcm: { token: string };
  apns: { token: string; topic: string; sandbox: boolean };
}>;

/** The user's push devices: the answer to register_push, push_devices and unregister_push. */
export interface PushDevicesFrame {
  type: 'push_devices';
  devices: PushDevice[];
  /** For `pushManager.subscribe({ applicationServerKey })`; absent without Web Push. */
  vapid_public_key?: string;
  id?: string;
}

/** The counts and their split by event type, read together: the events add up to the totals. */
export interface CountsByEvent extends Counts {
  events: Record<string, Counts>;
}

export type MarkAs = 'seen' | 'read' | 'archived' | 'unseen' | 'unread' | 'unarchived';

/** The answer to `mark`. */
export interface Marked {
  type: 'marked';
  /** Messages whose state changed. */
  changed: number;
  /** Listed seqs not in the inbox (never published, expired or retracted). */
  missing: number[];
  counts: Counts;
  id?: string;
}

/** An inbox message with the user's state of it. */
export interface InboxItem<Data = unknown> {
  id: string;
  seq: number;
  event: string;
  data: Data;
  ts: number;
  seen: boolean;
  read: boolean;
  archived: boolean;
  muted: boolean;
  /** When its producer last edited it, Unix ms. */
  edited?: number;
}

/** The answer to `history`: a page of the inbox, newest first. */
export interface HistoryPage {
  type: 'history';
  items: InboxItem[];
  /** Pass as `before` for the next page; absent when there is no older item. */
  next_before?: number;
  /** The oldest seq still kept (0 if none). */
  first_seq: number;
  /** Older items were removed by retention (their TTL passed). */
  older_expired: boolean;
  counts: Counts;
  id?: string;
}

/** What the user muted: the answer to mute/unmute/preferences, and sent to every device when it changes. */
export interface PreferencesFrame {
  type: 'preferences';
  mutes: Mutes;
  id?: string;
}

/** Its producer edited an inbox message: its current version. */
export interface Updated<Data = unknown> {
  type: 'updated';
  id: string;
  seq: number;
  event: string;
  data: Data;
  ts: number;
}

/** Its producer took an inbox message back. */
export interface Retracted {
  type: 'retracted';
  id: string;
  seq: number;
}

/**
 * Who made or ended a subscription: the client's own `subscribe`, a backend
 * (`Notify.Subscribe`), or the topic policy (a refreshed token no longer holds the topic).
 */
export type SubscriptionSource = 'client' | 'server' | 'policy';

/** A message: an inbox message has no `topic`. `data` is the published JSON value. */
export interface NotifyMessage<Data = unknown> {
  type: 'message';
  id: string;
  seq: number;
  topic?: string;
  event: string;
  data: Data;
  /** Commit time, Unix milliseconds. */
  ts: number;
}

export interface Subscribed {
  type: 'subscribed';
  topic: string;
  /** The topic's head when the subscription took effect. */
  seq: number;
  /** False when the topic log no longer holds everything after the `since` asked for. */
  recovered: boolean;
  /** The oldest seq the topic log still holds (0 if none). */
  first_seq: number;
  source: SubscriptionSource;
  id?: string;
}

export interface Unsubscribed {
  type: 'unsubscribed';
  topic: string;
  source: SubscriptionSource;
  /** Why, when the policy ended it. */
  reason?: string;
  id?: string;
}

export interface Published {
  type: 'published';
  seq: number;
  id?: string;
}

export interface Pong {
  type: 'pong';
  id?: string;
}

export interface Refreshed {
  type: 'refreshed';
  /** The new token's expiry, Unix seconds. */
  exp: number;
  id?: string;
}

/**
 * `unavailable`: not now — the same frame may succeed later.
 * `upstream_error`: a routed action's backend failed (its gRPC code is `status`).
 */
export type ErrorCode =
  | 'bad_request'
  | 'forbidden'
  | 'rate_limited'
  | 'too_large'
  | 'unknown_action'
  | 'unavailable'
  | 'upstream_error';

export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  id?: string;
  /** A routed action's backend status (`NOT_FOUND`, …), when it sent one. */
  status?: string;
}

/** A routed action's answer from its backend (`BRIDGE_ROUTES`). */
export interface Reply {
  type: 'reply';
  action: string;
  data: unknown;
  id?: string;
}

export type ServerFrame =
  | Welcome
  | NotifyMessage
  | Subscribed
  | Unsubscribed
  | Published
  | Pong
  | Refreshed
  | Reply
  | CountsFrame
  | Marked
  | HistoryPage
  | PreferencesFrame
  | Updated
  | Retracted
  | PushDevicesFrame
  | ErrorFrame;

export type ClientAction =
  | { action: 'subscribe'; topic: string; since?: number; id?: string }
  | { action: 'unsubscribe'; topic: string; id?: string }
  | { action: 'ack'; seq: number }
  | { action: 'publish'; topic: string; data: unknown; event?: string; id?: string }
  | { action: 'ping'; id?: string }
  | { action: 'refresh'; token: string; id?: string }
  | { action: 'mark'; as: MarkAs; seqs?: number[]; up_to?: number; id?: string }
  | {
      action: 'history';
      before?: number;
      limit?: number;
      unread_only?: boolean;
      show?: 'inbox' | 'archived' | 'all';
      events?: string[];
      id?: string;
    }
  | { action: 'mute' | 'unmute'; events?: string[]; namespaces?: string[]; id?: string }
  | { action: 'preferences'; id?: string }
  | { action: 'counts'; id?: string }
  | ({ action: 'register_push'; id?: string } & PushDestination)
  | { action: 'push_devices'; id?: string }
  | { action: 'unregister_push'; device_id: string; id?: string }
  /** An action routed to a backend: any other name, with any fields. */
  | { action: string; id?: string; [field: string]: unknown };

/** Close codes the bridge uses. */
export const CloseCode = {
  /** Server restarting: reconnect at once, to another bridge. */
  Restart: 1012,
  /** Disconnected through the API: do not reconnect. */
  Disconnected: 4003,
  /** Slow consumer: reconnect and resume. */
  SlowConsumer: 4008,
  /** Token expired: reconnect with a fresh token. */
  TokenExpired: 4009,
} as const;

/** Parses one text frame; null if it is not a frame of this protocol. */
export function parseFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string') {
    return null;
  }
  return value as ServerFrame;
}

// --- Fight events (docs/design.md §8) -------------------------------------------

export type FightStatus = 'open' | 'accepted' | 'completed' | 'cancelled' | 'expired';

/** A fight as clients read it in `data.fight`. */
export interface Fight {
  fight_id: string;
  creator_id: string;
  acceptor_id: string | null;
  /** Minor units of `currency`. */
  stake: number;
  currency: string;
  status: FightStatus;
  accept_deadline_ms: number;
  created_at_ms: number;
  updated_at_ms: number;
}

export type FightEvent =
  | { kind: 'fight_created'; fight: Fight }
  | { kind: 'fight_accepted'; fight: Fight }
  | { kind: 'fight_completed'; fight: Fight; winner_id: string; payout: number }
  | { kind: 'fight_cancelled'; fight: Fight; reason: string }
  | { kind: 'fight_expired'; fight: Fight }
  | { kind: 'fight_updated'; fight: Fight; previous_status: FightStatus };

export type FightKind = FightEvent['kind'];

const FIGHT_KINDS: ReadonlySet<string> = new Set<FightKind>([
  'fight_created',
  'fight_accepted',
  'fight_completed',
  'fight_cancelled',
  'fight_expired',
  'fight_updated',
]);

/** The fight event a message carries, or null if it carries none. */
export function fightEvent(message: NotifyMessage): FightEvent | null {
  if (!FIGHT_KINDS.has(message.event)) {
    return null;
  }
  const data = message.data as { fight?: Fight } | null;
  if (typeof data !== 'object' || data === null || typeof data.fight !== 'object' || data.fight === null) {
    return null;
  }
  return { kind: message.event, ...data } as FightEvent;
}

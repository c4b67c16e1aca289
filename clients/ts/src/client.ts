// NotifyClient: one logical connection to the notify bridges that survives
// reconnects. It resumes the inbox after the last seq it delivered, restores
// topic subscriptions with their own `since`, acks cumulatively in batches,
// drops duplicates by message id, and follows the bridge's close codes.

import { DEFAULT_BACKOFF, fullJitter, type BackoffOptions } from './backoff.js';
import {
  CloseCode,
  fightEvent,
  parseFrame,
  type ClientAction,
  type Counts,
  type CountsByEvent,
  type CountsFrame,
  type ErrorFrame,
  type FightEvent,
  type HistoryPage,
  type MarkAs,
  type Marked,
  type Mutes,
  type NotifyMessage,
  type PreferencesFrame,
  type PushDestination,
  type PushDevicesFrame,
  type WebPushSubscriptionJson,
  type Reply,
  type Retracted,
  type ServerFrame,
  type Subscribed,
  type SubscriptionSource,
  type Updated,
  type Welcome,
} from './protocol.js';
import { Value, type Observable } from './value.js';

/** What `history` asks for; every field optional. */
export interface HistoryOptions {
  /** Items with seq < before (default: from the newest). */
  before?: number;
  /** Page size (default 20, at most 100). */
  limit?: number;
  unreadOnly?: boolean;
  /** `inbox` (not archived, the default), `archived`, or `all`. */
  show?: 'inbox' | 'archived' | 'all';
  /** Only these events. */
  events?: string[];
}

const sameCounts = (a: Counts, b: Counts): boolean => a.unseen === b.unseen && a.unread === b.unread;
const sameMutes = (a: Mutes, b: Mutes): boolean =>
  JSON.stringify([[...a.events].sort(), [...a.namespaces].sort()]) ===
  JSON.stringify([[...b.events].sort(), [...b.namespaces].sort()]);

/** The part of the WebSocket API the client uses (the browser's, Node's, or a test's). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** Timers, replaceable in tests. */
export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

const realClock: Clock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

/** A token, or a function that fetches a fresh one (called on every connect). */
export type TokenSource = string | (() => string | Promise<string>);

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

/** Why the client is in its state: the close code and reason, when known. */
/**
 * Messages a resume could not recover: retention (inbox TTL, topic log size
 * or age) dropped what came after `after` and before `firstSeq`.
 */
export interface Gap {
  /** `inbox`, or the topic. */
  feed: string;
  /** The resume point asked for. */
  after: number;
  /** The first seq still kept (0 if none): the replay starts there. */
  firstSeq: number;
}

/**
 * A backend subscribed the user to a topic or ended it (`Notify.Subscribe` /
 * `Unsubscribe`), or the policy ended one the refreshed token may not hold.
 */
export interface SubscriptionChange {
  topic: string;
  subscribed: boolean;
  source: SubscriptionSource;
  /** Why, when the policy ended it. */
  reason?: string;
}

export interface StateDetail {
  code?: number;
  reason?: string;
  /** Set once the client has given up for good (4003, or 4009 with a fixed token, or close()). */
  stopped?: boolean;
  /** The delay before the next attempt, ms. */
  retryInMs?: number;
}

export interface ClientOptions {
  /** Bridge WebSocket URLs (`wss://push.example.com/ws`); 1012 moves to the next one. */
  url: string | string[];
  token: TokenSource;
  /** Resume the inbox after this seq (default 0: whatever the server has not seen acked). */
  since?: number;
  /** Acks go out at most this long after a message arrived, ms. */
  ackDelayMs?: number;
  /** …or as soon as this many messages wait for one. */
  ackBatch?: number;
  /** Message ids remembered to drop duplicates. */
  dedupeWindow?: number;
  backoff?: BackoffOptions;
  /** A connect that is not welcomed within this long is abandoned and retried, ms. */
  connectTimeoutMs?: number;
  /** With a token function: send `refresh` this long before the token expires, ms. */
  refreshAheadMs?: number;
  /** Creates sockets (default: the global WebSocket). */
  socket?: (url: string) => SocketLike;
  clock?: Clock;
  random?: () => number;
}

interface Pending {
  resolve: (frame: ServerFrame) => void;
  reject: (error: Error) => void;
}

/** An `error` frame answering a request, or the connection lost before the answer. */
export class NotifyError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** A routed action's backend status (`NOT_FOUND`, …), when it sent one. */
    readonly status?: string,
  ) {
    super(message);
    this.name = 'NotifyError';
  }
}

type Listener<T extends unknown[]> = (...args: T) => void;

class Listeners<T extends unknown[]> {
  private readonly fns = new Set<Listener<T>>();

  add(fn: Listener<T>): () => void {
    this.fns.add(fn);
    return () => this.fns.delete(fn);
  }

  emit(...args: T): void {
    for (const fn of this.fns) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break delivery to the others.
        console.error('notify client listener failed', e);
      }
    }
  }
}

/** `exp` (Unix seconds) of a JWT, if it has one. */
export function tokenExpiry(token: string): number | null {
  const payload = token.split('.')[1];
  if (!payload) {
    return null;
  }
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4))) as { exp?: unknown };
    return typeof json.exp === 'number' ? json.exp : null;
  } catch {
    return null;
  }
}

export class NotifyClient {
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly options: Required<Omit<ClientOptions, 'url' | 'token' | 'since' | 'socket'>>;
  private readonly makeSocket: (url: string) => SocketLike;
  private readonly clock: Clock;

  private socket: SocketLike | null = null;
  private currentState: ConnectionState = 'disconnected';
  private stopped = true;
  private attempt = 0;
  private retryTimer: unknown = null;
  private connectTimer: unknown = null;
  private refreshTimer: unknown = null;
  private ackTimer: unknown = null;

  /** Highest inbox seq delivered to the application. */
  private inboxSeq: number;
  /** Highest inbox seq acked to the server. */
  private acked = 0;
  private unacked = 0;
  /** topic → highest seq delivered. */
  private readonly topics = new Map<string, number>();
  private readonly seenIds = new Set<string>();
  private readonly seenOrder: string[] = [];
  private readonly pending = new Map<string, Pending>();
  private nextRequest = 1;
  private welcome: Welcome | null = null;

  private readonly messageListeners = new Listeners<[NotifyMessage]>();
  private readonly fightListeners = new Listeners<[FightEvent, NotifyMessage]>();
  private readonly stateListeners = new Listeners<[ConnectionState, StateDetail]>();
  private readonly errorListeners = new Listeners<[NotifyError]>();
  private readonly ackListeners = new Listeners<[number]>();
  private readonly gapListeners = new Listeners<[Gap]>();
  private readonly subscriptionListeners = new Listeners<[SubscriptionChange]>();
  private readonly updatedListeners = new Listeners<[Updated]>();
  private readonly retractedListeners = new Listeners<[Retracted]>();
  private readonly countsValue = new Value<Counts>({ unseen: 0, unread: 0 }, sameCounts);
  private readonly mutesValue = new Value<Mutes>({ events: [], namespaces: [] }, sameMutes);

  constructor(private readonly config: ClientOptions) {
    this.urls = Array.isArray(config.url) ? [...config.url] : [config.url];
    if (this.urls.length === 0) {
      throw new Error('at least one bridge URL is needed');
    }
    this.inboxSeq = config.since ?? 0;
    this.options = {
      ackDelayMs: config.ackDelayMs ?? 500,
      ackBatch: config.ackBatch ?? 50,
      dedupeWindow: config.dedupeWindow ?? 2000,
      backoff: config.backoff ?? DEFAULT_BACKOFF,
      connectTimeoutMs: config.connectTimeoutMs ?? 10_000,
      refreshAheadMs: config.refreshAheadMs ?? 60_000,
      clock: config.clock ?? realClock,
      random: config.random ?? Math.random,
    };
    this.clock = this.options.clock;
    this.makeSocket =
      config.socket ?? ((url: string) => new (globalThis as unknown as { WebSocket: new (u: string) => SocketLike }).WebSocket(url));
  }

  // --- Public API ---------------------------------------------------------

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The highest inbox seq delivered to the application. */
  get lastSeq(): number {
    return this.inboxSeq;
  }

  /** The highest inbox seq acked to the server. */
  get ackedSeq(): number {
    return this.acked;
  }

  /** The welcome of the current connection, if connected. */
  get session(): Welcome | null {
    return this.welcome;
  }

  /** Topics followed, with the last seq delivered of each. */
  get subscriptions(): ReadonlyMap<string, number> {
    return this.topics;
  }

  onMessage(fn: (message: NotifyMessage) => void): () => void {
    return this.messageListeners.add(fn);
  }

  onFight(fn: (event: FightEvent, message: NotifyMessage) => void): () => void {
    return this.fightListeners.add(fn);
  }

  onState(fn: (state: ConnectionState, detail: StateDetail) => void): () => void {
    return this.stateListeners.add(fn);
  }

  onError(fn: (error: NotifyError) => void): () => void {
    return this.errorListeners.add(fn);
  }

  /** Told the seq of every ack sent. */
  onAck(fn: (seq: number) => void): () => void {
    return this.ackListeners.add(fn);
  }

  /**
   * Told when a resume could not recover everything it missed (the app may
   * reload what it shows from its own backend). Messages from `firstSeq` on
   * still arrive, each once, in order.
   */
  onGap(fn: (gap: Gap) => void): () => void {
    return this.gapListeners.add(fn);
  }

  /** Told when a backend subscribes the user to a topic or ends it; the client follows. */
  onSubscription(fn: (change: SubscriptionChange) => void): () => void {
    return this.subscriptionListeners.add(fn);
  }

  /**
   * The user's badge numbers, the same on every device: set by the welcome,
   * then by every change the bridge pushes (a new message, a mark on any
   * device, a retraction, expiry).
   */
  get counts(): Observable<Counts> {
    return this.countsValue;
  }

  /** What the user muted, kept current across devices. */
  get mutes(): Observable<Mutes> {
    return this.mutesValue;
  }

  /** Told when a producer edits an inbox message (its current version). */
  onUpdated(fn: (updated: Updated) => void): () => void {
    return this.updatedListeners.add(fn);
  }

  /** Told when a producer retracts an inbox message: take it off the list. */
  onRetracted(fn: (retracted: Retracted) => void): () => void {
    return this.retractedListeners.add(fn);
  }

  /**
   * Marks inbox messages — these seqs, or every one up to `upTo` — seen,
   * read, archived or back. Every device's counts follow.
   */
  async mark(as: MarkAs, which: number[] | { upTo: number }): Promise<Marked> {
    const select = Array.isArray(which) ? { seqs: which } : { up_to: which.upTo };
    return (await this.inboxRequest({ action: 'mark', as, ...select }, 'marked')) as Marked;
  }

  markRead(seqs: number[]): Promise<Marked> {
    return this.mark('read', seqs);
  }

  /** Marks everything up to the inbox's head (as this connection knows it) read. */
  markAllRead(): Promise<Marked> {
    return this.mark('read', { upTo: Math.max(this.inboxSeq, this.welcome?.seq ?? 0, 1) });
  }

  /** A page of older inbox items with their state, newest first. */
  async history(options: HistoryOptions = {}): Promise<HistoryPage> {
    const frame = await this.inboxRequest(
      {
        action: 'history',
        ...(options.before === undefined ? {} : { before: options.before }),
        ...(options.limit === undefined ? {} : { limit: options.limit }),
        ...(options.unreadOnly ? { unread_only: true } : {}),
        ...(options.show === undefined ? {} : { show: options.show }),
        ...(options.events === undefined ? {} : { events: options.events }),
      },
      'history',
    );
    return frame as HistoryPage;
  }

  /**
   * The counts split by event type (e.g. a badge per tab). Read when asked:
   * ask again when `counts` changes to keep a split current.
   */
  async countsByEvent(): Promise<CountsByEvent> {
    const frame = (await this.inboxRequest({ action: 'counts' }, 'counts')) as CountsFrame;
    return { unseen: frame.unseen, unread: frame.unread, events: frame.events ?? {} };
  }

  /**
   * Registers this device for push when the user is away (a browser's
   * `PushSubscription.toJSON()`, an FCM token or an APNs token); answers the
   * user's devices now. Registering the same address again is harmless.
   */
  async registerPush(destination: PushDestination): Promise<PushDevicesFrame> {
    const action = { action: 'register_push' as const, ...destination };
    return (await this.inboxRequest(action, 'push_devices')) as PushDevicesFrame;
  }

  /** The user's push devices, and the VAPID key browsers subscribe with. */
  async pushDevices(): Promise<PushDevicesFrame> {
    return (await this.inboxRequest({ action: 'push_devices' }, 'push_devices')) as PushDevicesFrame;
  }

  async unregisterPush(deviceId: string): Promise<PushDevicesFrame> {
    const action = { action: 'unregister_push' as const, device_id: deviceId };
    return (await this.inboxRequest(action, 'push_devices')) as PushDevicesFrame;
  }

  /**
   * Subscribes a service worker registration to Web Push with the server's
   * VAPID key and registers it. The service worker should show each push
   * with `tag: data.message_id`, so a copy sent twice shows once.
   */
  async subscribeWebPush(registration: {
    pushManager: {
      subscribe(options: { userVisibleOnly: boolean; applicationServerKey: string }): Promise<{
        toJSON(): unknown;
      }>;
    };
  }): Promise<PushDevicesFrame> {
    const { vapid_public_key: key } = await this.pushDevices();
    if (!key) {
      throw new NotifyError('no_web_push', 'the server has no VAPID key: Web Push is not configured');
    }
    const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    return this.registerPush({ web_push: subscription.toJSON() as WebPushSubscriptionJson });
  }

  /** Mutes event types and topic namespaces for the user, on every device. */
  async mute(mutes: Partial<Mutes>): Promise<Mutes> {
    return this.preferencesRequest({ action: 'mute', ...mutes });
  }

  async unmute(mutes: Partial<Mutes>): Promise<Mutes> {
    return this.preferencesRequest({ action: 'unmute', ...mutes });
  }

  /** What the user muted, as stored. */
  async preferences(): Promise<Mutes> {
    return this.preferencesRequest({ action: 'preferences' });
  }

  /** Starts connecting (and reconnecting until close()). */
  connect(): void {
    if (!this.stopped) {
      return;
    }
    this.stopped = false;
    this.attempt = 0;
    void this.open();
  }

  /** Sends the last ack and closes for good. */
  close(): void {
    this.stop({ code: 1000, reason: 'closed by the client' });
  }

  /** Follows `topic`; restored after every reconnect. Resolves with the bridge's answer. */
  subscribe(topic: string, since?: number): Promise<ServerFrame> {
    const from = since ?? this.topics.get(topic) ?? 0;
    this.topics.set(topic, Math.max(this.topics.get(topic) ?? 0, from));
    if (this.currentState !== 'connected') {
      // Sent with the others once connected.
      return Promise.resolve({ type: 'subscribed', topic, seq: from, recovered: true, first_seq: 0, source: 'client' });
    }
    return this.request({ action: 'subscribe', topic, since: from }).catch((e: unknown) => {
      if (e instanceof NotifyError && e.code !== 'connection_lost') {
        // Refused (forbidden, bad topic): not restored after reconnects.
        this.topics.delete(topic);
      }
      throw e;
    });
  }

  unsubscribe(topic: string): Promise<ServerFrame> {
    this.topics.delete(topic);
    if (this.currentState !== 'connected') {
      return Promise.resolve({ type: 'unsubscribed', topic, source: 'client' });
    }
    return this.request({ action: 'unsubscribe', topic });
  }

  /** Publishes to a topic whose namespace allows client publishes. */
  publish(topic: string, data: unknown, event?: string): Promise<ServerFrame> {
    if (this.currentState !== 'connected') {
      return Promise.reject(new NotifyError('not_connected', 'not connected: publish again once connected'));
    }
    return this.request({ action: 'publish', topic, data, ...(event ? { event } : {}) });
  }

  /**
   * Calls an action routed to a backend (the bridge's `BRIDGE_ROUTES`, API
   * Gateway's routes): sends `{action, ...payload}` and resolves with the
   * backend's reply data; rejects with a NotifyError carrying the error
   * frame's code (and the backend's `status`), e.g. `unavailable` for a slow
   * or absent backend (retry).
   */
  async call<T = unknown>(action: string, payload: Record<string, unknown> = {}): Promise<T> {
    if (this.currentState !== 'connected') {
      throw new NotifyError('not_connected', 'not connected: call again once connected');
    }
    const frame = await this.request({ ...payload, action } as ClientAction);
    if (frame.type !== 'reply') {
      throw new NotifyError('bad_reply', `expected a reply, got ${frame.type}`);
    }
    return (frame as Reply).data as T;
  }

  // --- Connection life ----------------------------------------------------

  private setState(state: ConnectionState, detail: StateDetail = {}): void {
    this.currentState = state;
    this.stateListeners.emit(state, detail);
  }

  private async open(): Promise<void> {
    this.clearTimer('retryTimer');
    this.setState('connecting');
    let token: string;
    try {
      token = await this.token();
    } catch (e) {
      this.errorListeners.emit(new NotifyError('token', `could not get a token: ${String(e)}`));
      this.scheduleRetry({ reason: 'no token' });
      return;
    }
    if (this.stopped) {
      return;
    }
    const base = this.urls[this.urlIndex % this.urls.length]!;
    const url = `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}&since=${this.inboxSeq}`;
    let socket: SocketLike;
    try {
      socket = this.makeSocket(url);
    } catch (e) {
      this.errorListeners.emit(new NotifyError('connect', String(e)));
      this.scheduleRetry({ reason: String(e) });
      return;
    }
    this.socket = socket;
    this.welcome = null;
    this.connectTimer = this.clock.setTimeout(() => {
      // Accepted but never welcomed (a bridge that is going away): try again.
      if (this.socket === socket && !this.welcome) {
        this.errorListeners.emit(new NotifyError('timeout', `no welcome within ${this.options.connectTimeoutMs} ms`));
        this.detach(socket);
        socket.close(4000, 'no welcome');
        this.scheduleRetry({ reason: 'no welcome' });
      }
    }, this.options.connectTimeoutMs);
    socket.onmessage = (event) => {
      if (this.socket === socket && typeof event.data === 'string') {
        this.frame(event.data, token);
      }
    };
    socket.onclose = (event) => {
      if (this.socket === socket) {
        this.closed(event.code, event.reason);
      }
    };
    socket.onerror = () => {
      // The close event follows with the code; nothing to do here.
    };
  }

  private async token(): Promise<string> {
    const source = this.config.token;
    return typeof source === 'string' ? source : await source();
  }

  private frame(text: string, token: string): void {
    const frame = parseFrame(text);
    if (!frame) {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this.welcomed(frame, token);
        return;
      case 'message':
        this.message(frame);
        return;
      case 'counts':
        // An answer (with id) may be older than a push already taken; the
        // bridge follows it with a push when it is newer.
        if (!this.answer(frame)) {
          this.countsValue.set({ unseen: frame.unseen, unread: frame.unread });
        }
        return;
      case 'preferences':
        this.mutesValue.set(frame.mutes);
        this.answer(frame);
        return;
      case 'updated':
        this.updatedListeners.emit(frame);
        return;
      case 'retracted':
        // A copy still on its way (a replay racing the retraction) is dropped.
        this.remember(frame.id);
        this.retractedListeners.emit(frame);
        return;
      case 'error':
        this.answer(frame) || this.errorListeners.emit(new NotifyError(frame.code, frame.message));
        return;
      case 'subscribed':
        this.subscribed(frame);
        this.answer(frame);
        return;
      case 'unsubscribed':
        // Not ours to end: not restored after reconnects either.
        if (frame.source !== 'client' && this.topics.delete(frame.topic)) {
          this.subscriptionListeners.emit({
            topic: frame.topic,
            subscribed: false,
            source: frame.source,
            ...(frame.reason === undefined ? {} : { reason: frame.reason }),
          });
        }
        this.answer(frame);
        return;
      default:
        this.answer(frame);
    }
  }

  private subscribed(frame: Subscribed): void {
    const last = this.topics.get(frame.topic);
    if (frame.source === 'server' && last === undefined) {
      // Followed from here; restored with its own since after reconnects.
      this.topics.set(frame.topic, frame.seq);
      this.subscriptionListeners.emit({ topic: frame.topic, subscribed: true, source: 'server' });
    } else if (frame.recovered === false && last !== undefined) {
      this.gapListeners.emit({ feed: frame.topic, after: last, firstSeq: frame.first_seq });
    }
  }

  private welcomed(frame: Welcome, token: string): void {
    this.clearTimer('connectTimer');
    if (frame.recovered === false) {
      this.gapListeners.emit({ feed: 'inbox', after: this.inboxSeq, firstSeq: frame.first_seq });
    }
    this.welcome = frame;
    // A bridge older than the inbox state sends neither.
    if (frame.counts) {
      this.countsValue.set(frame.counts);
    }
    if (frame.mutes) {
      this.mutesValue.set(frame.mutes);
    }
    this.attempt = 0;
    this.setState('connected');
    for (const [topic, since] of this.topics) {
      this.send({ action: 'subscribe', topic, since });
    }
    this.scheduleRefresh(token);
  }

  private message(message: NotifyMessage): void {
    if (this.seenIds.has(message.id)) {
      return;
    }
    if (message.topic === undefined) {
      if (message.seq <= this.inboxSeq) {
        return;
      }
      this.inboxSeq = message.seq;
      this.unacked += 1;
      this.scheduleAck();
    } else {
      const last = this.topics.get(message.topic);
      if (last === undefined) {
        return; // unsubscribed meanwhile
      }
      if (message.seq <= last) {
        return;
      }
      this.topics.set(message.topic, message.seq);
    }
    this.remember(message.id);
    this.messageListeners.emit(message);
    const fight = fightEvent(message);
    if (fight) {
      this.fightListeners.emit(fight, message);
    }
  }

  private remember(id: string): void {
    this.seenIds.add(id);
    this.seenOrder.push(id);
    while (this.seenOrder.length > this.options.dedupeWindow) {
      this.seenIds.delete(this.seenOrder.shift()!);
    }
  }

  private closed(code: number, reason: string): void {
    this.detach(this.socket);
    this.clearTimer('connectTimer');
    this.clearTimer('refreshTimer');
    this.clearTimer('ackTimer');
    this.unacked = 0;
    this.rejectPending(`connection closed (${code}${reason ? `: ${reason}` : ''})`);
    if (this.stopped) {
      return;
    }
    switch (code) {
      case CloseCode.Disconnected:
        this.stop({ code, reason });
        return;
      case CloseCode.TokenExpired:
        if (typeof this.config.token === 'string') {
          // The same token would be refused again.
          this.stop({ code, reason });
          return;
        }
        this.reconnectNow({ code, reason });
        return;
      case CloseCode.Restart:
        this.urlIndex += 1;
        this.reconnectNow({ code, reason });
        return;
      case CloseCode.SlowConsumer:
        this.reconnectNow({ code, reason });
        return;
      default:
        // The next attempt tries the next bridge too.
        this.urlIndex += 1;
        this.scheduleRetry({ code, reason });
    }
  }

  private reconnectNow(detail: StateDetail): void {
    this.setState('disconnected', { ...detail, retryInMs: 0 });
    void this.open();
  }

  private scheduleRetry(detail: StateDetail): void {
    const delay = fullJitter(this.attempt, this.options.backoff, this.options.random);
    this.attempt += 1;
    this.setState('disconnected', { ...detail, retryInMs: delay });
    this.clearTimer('retryTimer');
    this.retryTimer = this.clock.setTimeout(() => void this.open(), delay);
  }

  private stop(detail: StateDetail): void {
    const wasStopped = this.stopped;
    this.stopped = true;
    this.flushAck();
    for (const timer of ['retryTimer', 'connectTimer', 'refreshTimer', 'ackTimer'] as const) {
      this.clearTimer(timer);
    }
    const socket = this.socket;
    this.detach(socket);
    if (socket && socket.readyState <= 1) {
      socket.close(1000, 'bye');
    }
    this.rejectPending('client stopped');
    if (!wasStopped || this.currentState !== 'disconnected') {
      this.setState('disconnected', { ...detail, stopped: true });
    }
  }

  private detach(socket: SocketLike | null): void {
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = null;
    }
    if (this.socket === socket) {
      this.socket = null;
      this.welcome = null;
    }
  }

  private clearTimer(name: 'retryTimer' | 'connectTimer' | 'refreshTimer' | 'ackTimer'): void {
    if (this[name] !== null) {
      this.clock.clearTimeout(this[name]);
      this[name] = null;
    }
  }

  // --- Acks, refresh, requests --------------------------------------------

  private scheduleAck(): void {
    if (this.unacked >= this.options.ackBatch) {
      this.flushAck();
      return;
    }
    if (this.ackTimer === null) {
      this.ackTimer = this.clock.setTimeout(() => {
        this.ackTimer = null;
        this.flushAck();
      }, this.options.ackDelayMs);
    }
  }

  private flushAck(): void {
    this.clearTimer('ackTimer');
    if (this.inboxSeq > this.acked && this.send({ action: 'ack', seq: this.inboxSeq })) {
      this.acked = this.inboxSeq;
      this.unacked = 0;
      this.ackListeners.emit(this.acked);
    }
  }

  private scheduleRefresh(token: string): void {
    this.clearTimer('refreshTimer');
    if (typeof this.config.token === 'string') {
      return;
    }
    const exp = tokenExpiry(token);
    if (exp === null) {
      return;
    }
    const delay = Math.max(0, exp * 1000 - this.clock.now() - this.options.refreshAheadMs);
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh();
    }, delay);
  }

  private async refresh(): Promise<void> {
    try {
      const token = await this.token();
      await this.request({ action: 'refresh', token });
      this.scheduleRefresh(token);
    } catch (e) {
      // 4009 follows if the old token runs out; the reconnect fetches a new one.
      this.errorListeners.emit(e instanceof NotifyError ? e : new NotifyError('refresh', String(e)));
    }
  }

  private send(action: ClientAction): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1 || !this.welcome) {
      return false;
    }
    socket.send(JSON.stringify(action));
    return true;
  }

  private request(action: ClientAction & { id?: string }): Promise<ServerFrame> {
    const id = `r${this.nextRequest++}`;
    return new Promise((resolve, reject) => {
      if (!this.send({ ...action, id } as ClientAction)) {
        reject(new NotifyError('not_connected', 'not connected'));
        return;
      }
      this.pending.set(id, { resolve, reject });
    });
  }

  /** An inbox action, answered by a frame of type `expected`. */
  private async inboxRequest(action: ClientAction, expected: string): Promise<ServerFrame> {
    if (this.currentState !== 'connected') {
      throw new NotifyError('not_connected', 'not connected: ask again once connected');
    }
    const frame = await this.request(action);
    if (frame.type !== expected) {
      throw new NotifyError('bad_reply', `expected ${expected}, got ${frame.type}`);
    }
    return frame;
  }

  private async preferencesRequest(action: ClientAction): Promise<Mutes> {
    const frame = (await this.inboxRequest(action, 'preferences')) as PreferencesFrame;
    return frame.mutes;
  }

  /** Settles the request `frame` answers; false if it answers none. */
  private answer(frame: ServerFrame): boolean {
    const id = (frame as { id?: string }).id;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending || id === undefined) {
      return false;
    }
    this.pending.delete(id);
    if (frame.type === 'error') {
      const error = frame as ErrorFrame;
      pending.reject(new NotifyError(error.code, error.message, error.status));
    } else {
      pending.resolve(frame);
    }
    return true;
  }

  private rejectPending(why: string): void {
    for (const [, pending] of this.pending) {
      pending.reject(new NotifyError('connection_lost', why));
    }
    this.pending.clear();
  }
}

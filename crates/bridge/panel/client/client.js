// NotifyClient: one logical connection to the notify bridges that survives
// reconnects. It resumes the inbox after the last seq it delivered, restores
// topic subscriptions with their own `since`, acks cumulatively in batches,
// drops duplicates by message id, and follows the bridge's close codes.
import { DEFAULT_BACKOFF, fullJitter } from './backoff.js';
import { CloseCode, fightEvent, parseFrame, } from './protocol.js';
import { Value } from './value.js';
const sameCounts = (a, b) => a.unseen === b.unseen && a.unread === b.unread;
const sameMutes = (a, b) => JSON.stringify([[...a.events].sort(), [...a.namespaces].sort()]) ===
    JSON.stringify([[...b.events].sort(), [...b.namespaces].sort()]);
const realClock = {
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (handle) => globalThis.clearTimeout(handle),
    now: () => Date.now(),
};
/** An `error` frame answering a request, or the connection lost before the answer. */
export class NotifyError extends Error {
    code;
    status;
    constructor(code, message, 
    /** A routed action's backend status (`NOT_FOUND`, …), when it sent one. */
    status) {
        super(message);
        this.code = code;
        this.status = status;
        this.name = 'NotifyError';
    }
}
class Listeners {
    fns = new Set();
    add(fn) {
        this.fns.add(fn);
        return () => this.fns.delete(fn);
    }
    emit(...args) {
        for (const fn of this.fns) {
            try {
                fn(...args);
            }
            catch (e) {
                // A listener's bug must not break delivery to the others.
                console.error('notify client listener failed', e);
            }
        }
    }
}
/** `exp` (Unix seconds) of a JWT, if it has one. */
export function tokenExpiry(token) {
    const payload = token.split('.')[1];
    if (!payload) {
        return null;
    }
    try {
        const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
        const json = JSON.parse(atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4)));
        return typeof json.exp === 'number' ? json.exp : null;
    }
    catch {
        return null;
    }
}
export class NotifyClient {
    config;
    urls;
    urlIndex = 0;
    options;
    makeSocket;
    clock;
    socket = null;
    currentState = 'disconnected';
    stopped = true;
    attempt = 0;
    retryTimer = null;
    connectTimer = null;
    refreshTimer = null;
    ackTimer = null;
    /** Highest inbox seq delivered to the application. */
    inboxSeq;
    /** Highest inbox seq acked to the server. */
    acked = 0;
    unacked = 0;
    /** topic → highest seq delivered. */
    topics = new Map();
    seenIds = new Set();
    seenOrder = [];
    pending = new Map();
    nextRequest = 1;
    welcome = null;
    messageListeners = new Listeners();
    fightListeners = new Listeners();
    stateListeners = new Listeners();
    errorListeners = new Listeners();
    ackListeners = new Listeners();
    gapListeners = new Listeners();
    subscriptionListeners = new Listeners();
    updatedListeners = new Listeners();
    retractedListeners = new Listeners();
    countsValue = new Value({ unseen: 0, unread: 0 }, sameCounts);
    mutesValue = new Value({ events: [], namespaces: [] }, sameMutes);
    constructor(config) {
        this.config = config;
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
            config.socket ?? ((url) => new globalThis.WebSocket(url));
    }
    // --- Public API ---------------------------------------------------------
    get state() {
        return this.currentState;
    }
    /** The highest inbox seq delivered to the application. */
    get lastSeq() {
        return this.inboxSeq;
    }
    /** The highest inbox seq acked to the server. */
    get ackedSeq() {
        return this.acked;
    }
    /** The welcome of the current connection, if connected. */
    get session() {
        return this.welcome;
    }
    /** Topics followed, with the last seq delivered of each. */
    get subscriptions() {
        return this.topics;
    }
    onMessage(fn) {
        return this.messageListeners.add(fn);
    }
    onFight(fn) {
        return this.fightListeners.add(fn);
    }
    onState(fn) {
        return this.stateListeners.add(fn);
    }
    onError(fn) {
        return this.errorListeners.add(fn);
    }
    /** Told the seq of every ack sent. */
    onAck(fn) {
        return this.ackListeners.add(fn);
    }
    /**
     * Told when a resume could not recover everything it missed (the app may
     * reload what it shows from its own backend). Messages from `firstSeq` on
     * still arrive, each once, in order.
     */
    onGap(fn) {
        return this.gapListeners.add(fn);
    }
    /** Told when a backend subscribes the user to a topic or ends it; the client follows. */
    onSubscription(fn) {
        return this.subscriptionListeners.add(fn);
    }
    /**
     * The user's badge numbers, the same on every device: set by the welcome,
     * then by every change the bridge pushes (a new message, a mark on any
     * device, a retraction, expiry).
     */
    get counts() {
        return this.countsValue;
    }
    /** What the user muted, kept current across devices. */
    get mutes() {
        return this.mutesValue;
    }
    /** Told when a producer edits an inbox message (its current version). */
    onUpdated(fn) {
        return this.updatedListeners.add(fn);
    }
    /** Told when a producer retracts an inbox message: take it off the list. */
    onRetracted(fn) {
        return this.retractedListeners.add(fn);
    }
    /**
     * Marks inbox messages — these seqs, or every one up to `upTo` — seen,
     * read, archived or back. Every device's counts follow.
     */
    async mark(as, which) {
        const select = Array.isArray(which) ? { seqs: which } : { up_to: which.upTo };
        return (await this.inboxRequest({ action: 'mark', as, ...select }, 'marked'));
    }
    markRead(seqs) {
        return this.mark('read', seqs);
    }
    /** Marks everything up to the inbox's head (as this connection knows it) read. */
    markAllRead() {
        return this.mark('read', { upTo: Math.max(this.inboxSeq, this.welcome?.seq ?? 0, 1) });
    }
    /** A page of older inbox items with their state, newest first. */
    async history(options = {}) {
        const frame = await this.inboxRequest({
            action: 'history',
            ...(options.before === undefined ? {} : { before: options.before }),
            ...(options.limit === undefined ? {} : { limit: options.limit }),
            ...(options.unreadOnly ? { unread_only: true } : {}),
            ...(options.show === undefined ? {} : { show: options.show }),
            ...(options.events === undefined ? {} : { events: options.events }),
        }, 'history');
        return frame;
    }
    /**
     * The counts split by event type (e.g. a badge per tab). Read when asked:
     * ask again when `counts` changes to keep a split current.
     */
    async countsByEvent() {
        const frame = (await this.inboxRequest({ action: 'counts' }, 'counts'));
        return { unseen: frame.unseen, unread: frame.unread, events: frame.events ?? {} };
    }
    /**
     * Registers this device for push when the user is away (a browser's
     * `PushSubscription.toJSON()`, an FCM token or an APNs token); answers the
     * user's devices now. Registering the same address again is harmless.
     */
    async registerPush(destination) {
        const action = { action: 'register_push', ...destination };
        return (await this.inboxRequest(action, 'push_devices'));
    }
    /** The user's push devices, and the VAPID key browsers subscribe with. */
    async pushDevices() {
        return (await this.inboxRequest({ action: 'push_devices' }, 'push_devices'));
    }
    async unregisterPush(deviceId) {
        const action = { action: 'unregister_push', device_id: deviceId };
        return (await this.inboxRequest(action, 'push_devices'));
    }
    /**
     * Subscribes a service worker registration to Web Push with the server's
     * VAPID key and registers it. The service worker should show each push
     * with `tag: data.message_id`, so a copy sent twice shows once.
     */
    async subscribeWebPush(registration) {
        const { vapid_public_key: key } = await this.pushDevices();
        if (!key) {
            throw new NotifyError('no_web_push', 'the server has no VAPID key: Web Push is not configured');
        }
        const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
        return this.registerPush({ web_push: subscription.toJSON() });
    }
    /** Mutes event types and topic namespaces for the user, on every device. */
    async mute(mutes) {
        return this.preferencesRequest({ action: 'mute', ...mutes });
    }
    async unmute(mutes) {
        return this.preferencesRequest({ action: 'unmute', ...mutes });
    }
    /** What the user muted, as stored. */
    async preferences() {
        return this.preferencesRequest({ action: 'preferences' });
    }
    /** Starts connecting (and reconnecting until close()). */
    connect() {
        if (!this.stopped) {
            return;
        }
        this.stopped = false;
        this.attempt = 0;
        void this.open();
    }
    /** Sends the last ack and closes for good. */
    close() {
        this.stop({ code: 1000, reason: 'closed by the client' });
    }
    /** Follows `topic`; restored after every reconnect. Resolves with the bridge's answer. */
    subscribe(topic, since) {
        const from = since ?? this.topics.get(topic) ?? 0;
        this.topics.set(topic, Math.max(this.topics.get(topic) ?? 0, from));
        if (this.currentState !== 'connected') {
            // Sent with the others once connected.
            return Promise.resolve({ type: 'subscribed', topic, seq: from, recovered: true, first_seq: 0, source: 'client' });
        }
        return this.request({ action: 'subscribe', topic, since: from }).catch((e) => {
            if (e instanceof NotifyError && e.code !== 'connection_lost') {
                // Refused (forbidden, bad topic): not restored after reconnects.
                this.topics.delete(topic);
            }
            throw e;
        });
    }
    unsubscribe(topic) {
        this.topics.delete(topic);
        if (this.currentState !== 'connected') {
            return Promise.resolve({ type: 'unsubscribed', topic, source: 'client' });
        }
        return this.request({ action: 'unsubscribe', topic });
    }
    /** Publishes to a topic whose namespace allows client publishes. */
    publish(topic, data, event) {
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
    async call(action, payload = {}) {
        if (this.currentState !== 'connected') {
            throw new NotifyError('not_connected', 'not connected: call again once connected');
        }
        const frame = await this.request({ ...payload, action });
        if (frame.type !== 'reply') {
            throw new NotifyError('bad_reply', `expected a reply, got ${frame.type}`);
        }
        return frame.data;
    }
    // --- Connection life ----------------------------------------------------
    setState(state, detail = {}) {
        this.currentState = state;
        this.stateListeners.emit(state, detail);
    }
    async open() {
        this.clearTimer('retryTimer');
        this.setState('connecting');
        let token;
        try {
            token = await this.token();
        }
        catch (e) {
            this.errorListeners.emit(new NotifyError('token', `could not get a token: ${String(e)}`));
            this.scheduleRetry({ reason: 'no token' });
            return;
        }
        if (this.stopped) {
            return;
        }
        const base = this.urls[this.urlIndex % this.urls.length];
        const url = `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}&since=${this.inboxSeq}`;
        let socket;
        try {
            socket = this.makeSocket(url);
        }
        catch (e) {
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
    async token() {
        const source = this.config.token;
        return typeof source === 'string' ? source : await source();
    }
    frame(text, token) {
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
    subscribed(frame) {
        const last = this.topics.get(frame.topic);
        if (frame.source === 'server' && last === undefined) {
            // Followed from here; restored with its own since after reconnects.
            this.topics.set(frame.topic, frame.seq);
            this.subscriptionListeners.emit({ topic: frame.topic, subscribed: true, source: 'server' });
        }
        else if (frame.recovered === false && last !== undefined) {
            this.gapListeners.emit({ feed: frame.topic, after: last, firstSeq: frame.first_seq });
        }
    }
    welcomed(frame, token) {
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
    message(message) {
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
        }
        else {
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
    remember(id) {
        this.seenIds.add(id);
        this.seenOrder.push(id);
        while (this.seenOrder.length > this.options.dedupeWindow) {
            this.seenIds.delete(this.seenOrder.shift());
        }
    }
    closed(code, reason) {
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
    reconnectNow(detail) {
        this.setState('disconnected', { ...detail, retryInMs: 0 });
        void this.open();
    }
    scheduleRetry(detail) {
        const delay = fullJitter(this.attempt, this.options.backoff, this.options.random);
        this.attempt += 1;
        this.setState('disconnected', { ...detail, retryInMs: delay });
        this.clearTimer('retryTimer');
        this.retryTimer = this.clock.setTimeout(() => void this.open(), delay);
    }
    stop(detail) {
        const wasStopped = this.stopped;
        this.stopped = true;
        this.flushAck();
        for (const timer of ['retryTimer', 'connectTimer', 'refreshTimer', 'ackTimer']) {
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
    detach(socket) {
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
    clearTimer(name) {
        if (this[name] !== null) {
            this.clock.clearTimeout(this[name]);
            this[name] = null;
        }
    }
    // --- Acks, refresh, requests --------------------------------------------
    scheduleAck() {
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
    flushAck() {
        this.clearTimer('ackTimer');
        if (this.inboxSeq > this.acked && this.send({ action: 'ack', seq: this.inboxSeq })) {
            this.acked = this.inboxSeq;
            this.unacked = 0;
            this.ackListeners.emit(this.acked);
        }
    }
    scheduleRefresh(token) {
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
    async refresh() {
        try {
            const token = await this.token();
            await this.request({ action: 'refresh', token });
            this.scheduleRefresh(token);
        }
        catch (e) {
            // 4009 follows if the old token runs out; the reconnect fetches a new one.
            this.errorListeners.emit(e instanceof NotifyError ? e : new NotifyError('refresh', String(e)));
        }
    }
    send(action) {
        const socket = this.socket;
        if (!socket || socket.readyState !== 1 || !this.welcome) {
            return false;
        }
        socket.send(JSON.stringify(action));
        return true;
    }
    request(action) {
        const id = `r${this.nextRequest++}`;
        return new Promise((resolve, reject) => {
            if (!this.send({ ...action, id })) {
                reject(new NotifyError('not_connected', 'not connected'));
                return;
            }
            this.pending.set(id, { resolve, reject });
        });
    }
    /** An inbox action, answered by a frame of type `expected`. */
    async inboxRequest(action, expected) {
        if (this.currentState !== 'connected') {
            throw new NotifyError('not_connected', 'not connected: ask again once connected');
        }
        const frame = await this.request(action);
        if (frame.type !== expected) {
            throw new NotifyError('bad_reply', `expected ${expected}, got ${frame.type}`);
        }
        return frame;
    }
    async preferencesRequest(action) {
        const frame = (await this.inboxRequest(action, 'preferences'));
        return frame.mutes;
    }
    /** Settles the request `frame` answers; false if it answers none. */
    answer(frame) {
        const id = frame.id;
        const pending = id === undefined ? undefined : this.pending.get(id);
        if (!pending || id === undefined) {
            return false;
        }
        this.pending.delete(id);
        if (frame.type === 'error') {
            const error = frame;
            pending.reject(new NotifyError(error.code, error.message, error.status));
        }
        else {
            pending.resolve(frame);
        }
        return true;
    }
    rejectPending(why) {
        for (const [, pending] of this.pending) {
            pending.reject(new NotifyError('connection_lost', why));
        }
        this.pending.clear();
    }
}

// Unit tests of NotifyClient against a scripted socket and a manual clock:
// what a client of the bridge must do, frame by frame.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';

import { NotifyClient, fullJitter, type Clock, type ConnectionState, type SocketLike } from '../src/index.js';

class FakeSocket implements SocketLike {
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  closedWith: number | undefined;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number): void {
    this.closedWith = code;
    this.readyState = 3;
  }

  /** The server's side. */
  serverSends(frame: object): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  serverCloses(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  welcome(seq = 0, extra: object = {}): void {
    this.serverSends({ type: 'welcome', connection_id: 'c1', user_id: 'ann', seq, recovered: true, first_seq: 0, ...extra });
  }

  actions(name: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.action === name);
  }
}

class ManualClock implements Clock {
  time = 1_700_000_000_000;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 1;

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.time + ms, fn, id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((t) => t.id !== handle);
  }

  now(): number {
    return this.time;
  }

  async advance(ms: number): Promise<void> {
    const until = this.time + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers[0];
      if (!next || next.at > until) {
        break;
      }
      this.timers.shift();
      this.time = next.at;
      next.fn();
      await settle();
    }
    this.time = until;
  }
}

/** Lets pending promise callbacks run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await Promise.resolve();
  }
}

function setup(options: Partial<ConstructorParameters<typeof NotifyClient>[0]> = {}) {
  const sockets: FakeSocket[] = [];
  const clock = new ManualClock();
  const states: ConnectionState[] = [];
  const client = new NotifyClient({
    url: ['ws://a/ws', 'ws://b/ws'],
    token: 'tok',
    clock,
    random: () => 0.5,
    socket: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
    ...options,
  });
  client.onState((s) => states.push(s));
  const last = () => sockets[sockets.length - 1]!;
  return { client, sockets, clock, states, last };
}

function message(seq: number, extra: object = {}) {
  return { type: 'message', id: `m${seq}`, seq, event: 'note', data: { n: seq }, ts: 1, ...extra };
}

test('connects with the token, is connected once welcomed', async () => {
  const { client, last, states } = setup({ since: 7 });
  client.connect();
  await settle();
  assert.equal(last().url, 'ws://a/ws?token=tok&since=7');
  assert.equal(client.state, 'connecting');
  last().welcome(9);
  assert.equal(client.state, 'connected');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(client.session?.connection_id, 'c1');
});

test('inbox messages arrive once, in seq order, duplicates dropped by id and seq', async () => {
  const { client, last } = setup();
  const got: number[] = [];
  client.onMessage((m) => got.push(m.seq));
  client.connect();
  await settle();
  last().welcome();
  for (const seq of [1, 2, 2, 3, 1]) {
    last().serverSends(message(seq));
  }
  last().serverSends(message(4, { id: 'm3' }));
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(client.lastSeq, 3);
});

test('acks are cumulative and batched: after the delay, or at once when the batch fills', async () => {
  const { client, last, clock } = setup({ ackBatch: 3, ackDelayMs: 500 });
  const acks: number[] = [];
  client.onAck((seq) => acks.push(seq));
  client.connect();
  await settle();
  last().welcome();
  last().serverSends(message(1));
  last().serverSends(message(2));
  assert.deepEqual(last().actions('ack'), [], 'nothing before the delay');
  await clock.advance(500);
  assert.deepEqual(last().actions('ack'), [{ action: 'ack', seq: 2 }]);
  for (const seq of [3, 4, 5]) {
    last().serverSends(message(seq));
  }
  assert.deepEqual(last().actions('ack').at(-1), { action: 'ack', seq: 5 }, 'a full batch acks at once');
  assert.deepEqual(acks, [2, 5]);
  assert.equal(client.ackedSeq, 5);
});

test('after a lost connection it backs off with full jitter and resumes after its last seq, topics included', async () => {
  const { client, sockets, last, clock } = setup();
  client.connect();
  await settle();
  last().welcome();
  const subscribed = client.subscribe('fights:live');
  last().serverSends({ type: 'subscribed', topic: 'fights:live', seq: 0, id: 'r1' });
  assert.equal((await subscribed).type, 'subscribed');
  last().serverSends(message(1));
  last().serverSends(message(6, { id: 't6', topic: 'fights:live' }));
  last().serverCloses(1006);
  assert.equal(client.state, 'disconnected');
  // attempt 0: a random point below 500 ms (0.5 → 250 ms); the next bridge.
  await clock.advance(249);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.equal(last().url, 'ws://b/ws?token=tok&since=1');
  last().welcome(1);
  assert.deepEqual(last().actions('subscribe'), [{ action: 'subscribe', topic: 'fights:live', since: 6 }]);
});

test('full jitter stays below an exponential ceiling capped at 30 s', () => {
  const options = { baseMs: 500, capMs: 30_000 };
  assert.equal(fullJitter(0, options, () => 0.999), 499);
  assert.equal(fullJitter(3, options, () => 0.999), 3996);
  assert.equal(fullJitter(20, options, () => 0.999), 29_970);
  assert.equal(fullJitter(5, options, () => 0), 0);
});

test('1012 reconnects at once to the next bridge; 4008 at once and resumes', async () => {
  const { client, sockets, last } = setup();
  client.connect();
  await settle();
  last().welcome();
  last().serverSends(message(1));
  last().serverCloses(1012, 'restart');
  await settle();
  assert.equal(sockets.length, 2);
  assert.equal(last().url, 'ws://b/ws?token=tok&since=1');
  last().welcome(1);
  last().serverCloses(4008, 'slow consumer');
  await settle();
  assert.equal(sockets.length, 3);
  assert.match(last().url, /since=1$/);
});

test('4003 stops for good', async () => {
  const { client, sockets, last, clock } = setup();
  const details: unknown[] = [];
  client.onState((_, d) => details.push(d));
  client.connect();
  await settle();
  last().welcome();
  last().serverCloses(4003, 'account locked');
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'disconnected');
  assert.deepEqual(details.at(-1), { code: 4003, reason: 'account locked', stopped: true });
});

test('4009 asks the token function again; with a fixed token it stops', async () => {
  let calls = 0;
  const fresh = setup({ token: async () => `t${++calls}` });
  fresh.client.connect();
  await settle();
  fresh.last().welcome();
  fresh.last().serverCloses(4009, 'token expired');
  await settle();
  assert.equal(fresh.sockets.length, 2);
  assert.match(fresh.last().url, /token=t2/);

  const fixed = setup();
  fixed.client.connect();
  await settle();
  fixed.last().welcome();
  fixed.last().serverCloses(4009, 'token expired');
  await fixed.clock.advance(60_000);
  assert.equal(fixed.sockets.length, 1);
});

test('with a token function it refreshes before the token expires', async () => {
  const clock = new ManualClock();
  const jwt = (exp: number) => `h.${btoa(JSON.stringify({ exp })).replace(/=+$/, '')}.s`;
  const tokens = [jwt(clock.time / 1000 + 120), jwt(clock.time / 1000 + 3600)];
  let i = 0;
  const { client, last } = setup({ clock, token: () => tokens[Math.min(i++, 1)]! });
  client.connect();
  await settle();
  last().welcome();
  await clock.advance(59_000);
  assert.deepEqual(last().actions('refresh'), []);
  await clock.advance(1_000);
  assert.deepEqual(last().actions('refresh'), [{ action: 'refresh', token: tokens[1], id: 'r1' }]);
});

test('fight events come typed', async () => {
  const { client, last } = setup();
  const kinds: string[] = [];
  client.onFight((event) => {
    kinds.push(event.kind);
    if (event.kind === 'fight_completed') {
      assert.equal(event.winner_id, 'ann');
    }
  });
  client.connect();
  await settle();
  last().welcome();
  const fight = { fight_id: 'f1', creator_id: 'ann', acceptor_id: 'bo', stake: 5, currency: 'EUR', status: 'completed' };
  last().serverSends(message(1, { event: 'fight_completed', data: { fight, winner_id: 'ann', payout: 10 } }));
  last().serverSends(message(2, { event: 'note' }));
  assert.deepEqual(kinds, ['fight_completed']);
});

test('a refused subscription rejects and is not restored', async () => {
  const { client, last } = setup();
  client.connect();
  await settle();
  last().welcome();
  const refused = client.subscribe('private:bo:x');
  last().serverSends({ type: 'error', code: 'forbidden', message: 'not yours', id: 'r1' });
  await assert.rejects(refused, { code: 'forbidden' });
  assert.equal(client.subscriptions.has('private:bo:x'), false);
});

test('a session that never says welcome is abandoned and retried', async () => {
  const { client, sockets, last, clock } = setup({ connectTimeoutMs: 10_000 });
  client.connect();
  await settle();
  await clock.advance(10_000);
  assert.equal(last().closedWith, 4000);
  await clock.advance(250);
  assert.equal(sockets.length, 2);
});

test('close() acks what was delivered and never reconnects', async () => {
  const { client, sockets, last, clock, states } = setup();
  client.connect();
  await settle();
  last().welcome();
  last().serverSends(message(1));
  client.close();
  assert.deepEqual(last().actions('ack'), [{ action: 'ack', seq: 1 }]);
  assert.equal(last().closedWith, 1000);
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
  assert.deepEqual(states, ['connecting', 'connected', 'disconnected']);
});

test('publish resolves with the bridge answer', async () => {
  const { client, last } = setup();
  client.connect();
  await settle();
  last().welcome();
  const answer = client.publish('room:lobby', { hi: 1 });
  assert.deepEqual(last().actions('publish'), [{ action: 'publish', topic: 'room:lobby', data: { hi: 1 }, id: 'r1' }]);
  last().serverSends({ type: 'published', seq: 4, id: 'r1' });
  assert.deepEqual(await answer, { type: 'published', seq: 4, id: 'r1' });
});

test('call sends a routed action and resolves with the backend reply, or rejects with its status', async () => {
  const { client, last } = setup();
  client.connect();
  await settle();
  last().welcome();
  const answer = client.call<{ ok: boolean }>('sendMessage', { room: 'lobby', text: 'hi' });
  assert.deepEqual(last().actions('sendMessage'), [{ room: 'lobby', text: 'hi', action: 'sendMessage', id: 'r1' }]);
  last().serverSends({ type: 'reply', action: 'sendMessage', data: { ok: true }, id: 'r1' });
  assert.deepEqual(await answer, { ok: true });
  const refused = client.call('joinRoom', { room: 'nope' });
  last().serverSends({ type: 'error', code: 'bad_request', status: 'NOT_FOUND', message: 'no such room', id: 'r2' });
  await assert.rejects(refused, (e: unknown) => {
    const error = e as { code: string; status?: string; message: string };
    return error.code === 'bad_request' && error.status === 'NOT_FOUND' && error.message === 'no such room';
  });
});

test('a resume that retention cut short is told to the app, and what is kept still arrives', async () => {
  const { client, last } = setup({ since: 4 });
  const gaps: unknown[] = [];
  client.onGap((g) => gaps.push(g));
  const got: number[] = [];
  client.onMessage((m) => got.push(m.seq));
  client.connect();
  await settle();
  last().welcome(12, { recovered: false, first_seq: 9 });
  assert.deepEqual(gaps, [{ feed: 'inbox', after: 4, firstSeq: 9 }]);
  for (const seq of [9, 10]) {
    last().serverSends(message(seq));
  }
  assert.deepEqual(got, [9, 10]);

  // A topic restored from a point its log no longer holds.
  const answer = client.subscribe('room:a', 3);
  const id = last().actions('subscribe')[0]!.id;
  last().serverSends({ type: 'subscribed', topic: 'room:a', seq: 80, recovered: false, first_seq: 31, source: 'client', id });
  assert.equal(((await answer) as { recovered: boolean }).recovered, false);
  assert.deepEqual(gaps[1], { feed: 'room:a', after: 3, firstSeq: 31 });
});

test('a server-side subscription is followed, restored with its own since, and ended by the server', async () => {
  const { client, last } = setup();
  const changes: unknown[] = [];
  client.onSubscription((c) => changes.push(c));
  const got: string[] = [];
  client.onMessage((m) => got.push(`${m.topic}#${m.seq}`));
  client.connect();
  await settle();
  last().welcome();
  last().serverSends({ type: 'subscribed', topic: 'room:s', seq: 5, recovered: true, first_seq: 1, source: 'server' });
  assert.deepEqual(changes, [{ topic: 'room:s', subscribed: true, source: 'server' }]);
  last().serverSends(message(6, { topic: 'room:s' }));
  assert.deepEqual(got, ['room:s#6']);
  assert.equal(client.subscriptions.get('room:s'), 6);

  // After a reconnect it resumes the topic after what it delivered.
  last().serverCloses(1012);
  await settle();
  last().welcome();
  assert.deepEqual(last().actions('subscribe'), [{ action: 'subscribe', topic: 'room:s', since: 6 }]);

  last().serverSends({ type: 'unsubscribed', topic: 'room:s', source: 'server' });
  assert.deepEqual(changes[1], { topic: 'room:s', subscribed: false, source: 'server' });
  assert.equal(client.subscriptions.has('room:s'), false);
  last().serverSends(message(7, { topic: 'room:s' }));
  assert.deepEqual(got, ['room:s#6'], 'nothing after the server ended it');
});

test('counts: the welcome sets them, counts frames change them, listeners hear each change once', async () => {
  const { client, last } = setup();
  const seen: [number, number][] = [];
  client.counts.subscribe((c) => seen.push([c.unseen, c.unread]));
  client.connect();
  await settle();
  last().welcome(3, { counts: { unseen: 2, unread: 3 }, mutes: { events: [], namespaces: ['room'] } });
  last().serverSends({ type: 'counts', unseen: 2, unread: 3 });
  last().serverSends({ type: 'counts', unseen: 0, unread: 1 });
  assert.deepEqual(seen, [
    [0, 0],
    [2, 3],
    [0, 1],
  ]);
  assert.deepEqual(client.mutes.value, { events: [], namespaces: ['room'] });
});

test('inbox actions go out as frames and resolve with their answers', async () => {
  const { client, last } = setup();
  client.connect();
  await settle();
  last().welcome(9);
  const marked = client.markRead([1, 2]);
  const sent = last().actions('mark')[0]!;
  assert.deepEqual({ ...sent, id: undefined }, { action: 'mark', as: 'read', seqs: [1, 2], id: undefined });
  last().serverSends({ type: 'marked', changed: 2, missing: [], counts: { unseen: 1, unread: 1 }, id: sent.id });
  assert.equal((await marked).changed, 2);

  const all = client.markAllRead();
  assert.equal(last().actions('mark')[1]!.up_to, 9, 'up to the head the welcome named');
  last().serverSends({ type: 'error', code: 'unavailable', message: 'retry', id: last().actions('mark')[1]!.id });
  await assert.rejects(all, (e: Error & { code?: string }) => e.code === 'unavailable');

  const page = client.history({ before: 9, limit: 5, unreadOnly: true });
  const asked = last().actions('history')[0]!;
  assert.deepEqual([asked.before, asked.limit, asked.unread_only], [9, 5, true]);
  last().serverSends({ type: 'history', items: [], first_seq: 1, older_expired: false, counts: { unseen: 0, unread: 0 }, id: asked.id });
  assert.deepEqual((await page).items, []);

  const split = client.countsByEvent();
  const ask = last().actions('counts')[0]!;
  const events = { 'fight.accepted': { unseen: 1, unread: 1 } };
  last().serverSends({ type: 'counts', unseen: 1, unread: 1, events, id: ask.id });
  assert.deepEqual(await split, { unseen: 1, unread: 1, events });
  assert.deepEqual(client.counts.value, { unseen: 0, unread: 0 }, 'an answer is not a push');

  const registration = {
    pushManager: {
      subscribe: async (options: { userVisibleOnly: boolean; applicationServerKey: string }) => ({
        toJSON: () => ({ endpoint: `https://push.example/${options.applicationServerKey}`, keys: { p256dh: 'k', auth: 'a' } }),
      }),
    },
  };
  const subscribed = client.subscribeWebPush(registration);
  await settle();
  const listAsk = last().actions('push_devices')[0]!;
  last().serverSends({ type: 'push_devices', devices: [], vapid_public_key: 'VAPIDKEY', id: listAsk.id });
  await settle();
  const register = last().actions('register_push')[0]!;
  assert.deepEqual(register.web_push, { endpoint: 'https://push.example/VAPIDKEY', keys: { p256dh: 'k', auth: 'a' } });
  const device = { device_id: 'd'.repeat(32), registered: 1, web_push: register.web_push };
  last().serverSends({ type: 'push_devices', devices: [device], vapid_public_key: 'VAPIDKEY', id: register.id });
  assert.equal((await subscribed).devices.length, 1);

  const muted = client.mute({ events: ['promo'] });
  const mute = last().actions('mute')[0]!;
  last().serverSends({ type: 'preferences', mutes: { events: ['promo'], namespaces: [] }, id: mute.id });
  assert.deepEqual(await muted, { events: ['promo'], namespaces: [] });
  assert.deepEqual(client.mutes.value.events, ['promo'], 'the observable follows');
});

test('a retracted message is dropped if its copy comes later; edits are told', async () => {
  const { client, last } = setup();
  const got: number[] = [];
  const edits: string[] = [];
  const gone: number[] = [];
  client.onMessage((m) => got.push(m.seq));
  client.onUpdated((u) => edits.push(JSON.stringify(u.data)));
  client.onRetracted((r) => gone.push(r.seq));
  client.connect();
  await settle();
  last().welcome(0);
  last().serverSends(message(1));
  last().serverSends({ type: 'updated', id: 'm1', seq: 1, event: 'note', data: { n: 'edited' }, ts: 2 });
  last().serverSends({ type: 'retracted', id: 'm2', seq: 2 });
  last().serverSends(message(2));
  last().serverSends(message(3));
  assert.deepEqual(got, [1, 3]);
  assert.deepEqual(edits, ['{"n":"edited"}']);
  assert.deepEqual(gone, [2]);
});

test('inbox actions while not connected are refused at once', async () => {
  const { client } = setup();
  await assert.rejects(client.markRead([1]), (e: Error & { code?: string }) => e.code === 'not_connected');
  await assert.rejects(client.history(), (e: Error & { code?: string }) => e.code === 'not_connected');
});

// The client against a real `notify up`: messages arrive, a restart of the
// platform under the client is ridden out (1012, reconnect, resume), and
// nothing arrives twice.
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';

import { NotifyClient, type ConnectionState, type NotifyMessage } from '../src/index.js';
import { Up, eventually } from './platform.js';

const up = new Up();
after(async () => {
  await up.stop();
  up.cleanup();
});

test('a real notify up: messages arrive, a restart is ridden out, nothing twice', async () => {
  await up.start();
  const token = up.token('ivy');
  const client = new NotifyClient({ url: `ws://${up.ws}/ws`, token, backoff: { baseMs: 100, capMs: 1000 } });
  const got: NotifyMessage[] = [];
  const states: ConnectionState[] = [];
  const codes: (number | undefined)[] = [];
  client.onMessage((m) => got.push(m));
  client.onState((s, d) => {
    states.push(s);
    codes.push(d.code);
  });
  client.connect();
  await eventually('connected', 10_000, () => client.state === 'connected' || undefined);

  const first = up.publish('ivy', { n: 1 });
  await eventually('the first message', 10_000, () => got.length === 1 || undefined);
  assert.equal(got[0]!.id, first.message_id);
  assert.deepEqual(got[0]!.data, { n: 1 });

  await up.stop();
  await eventually('told 1012', 10_000, () => codes.includes(1012) || undefined);
  await up.start();
  await eventually('connected again', 20_000, () => client.state === 'connected' || undefined);
  up.publish('ivy', { n: 2 });
  up.publish('ivy', { n: 3 });
  await eventually('all three', 10_000, () => got.length >= 3 || undefined);
  // Give a duplicate the time to show up, if one were coming.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(
    got.map((m) => m.seq),
    [1, 2, 3],
  );
  assert.equal(new Set(got.map((m) => m.id)).size, 3);
  client.close();
  await eventually('the ack of seq 3', 5_000, () => client.ackedSeq === 3 || undefined);
});

test('two clients of one user on a real notify up (SQLite): counts agree, marks and pages, a restart keeps them', async () => {
  const token = up.token('jo');
  const open = (): NotifyClient => {
    const c = new NotifyClient({ url: `ws://${up.ws}/ws`, token, backoff: { baseMs: 100, capMs: 1000 } });
    c.connect();
    return c;
  };
  const phone = open();
  const laptop = open();
  for (const c of [phone, laptop]) {
    await eventually('connected', 10_000, () => c.state === 'connected' || undefined);
  }
  const sent = [1, 2, 3].map((n) => up.publish('jo', { n }));
  for (const c of [phone, laptop]) {
    await eventually('3 unread', 10_000, () => c.counts.value.unread === 3 || undefined);
  }
  const marked = await phone.markRead([sent[0]!.seq, 99]);
  assert.deepEqual([marked.changed, marked.missing], [1, [99]]);
  await eventually("the laptop's badge follows", 10_000, () => laptop.counts.value.unread === 2 || undefined);
  const page = await laptop.history({ limit: 2 });
  assert.deepEqual(
    page.items.map((i) => [i.seq, i.read]),
    [
      [3, false],
      [2, false],
    ],
  );
  const older = await laptop.history({ before: page.next_before! });
  assert.deepEqual(
    older.items.map((i) => [i.seq, i.read]),
    [[1, true]],
  );
  assert.equal(older.next_before, undefined);
  await assert.rejects(laptop.history({ limit: 1000 }), (e: Error & { code?: string }) => e.code === 'bad_request');

  // Stored: a restart of the whole platform keeps the counts.
  await up.stop();
  await up.start();
  await eventually('reconnected', 20_000, () => (laptop.state === 'connected' && laptop.session !== null) || undefined);
  assert.equal(laptop.counts.value.unread, 2);
  await laptop.markAllRead();
  await eventually('both at zero', 10_000, () => (phone.counts.value.unread === 0 && laptop.counts.value.unread === 0) || undefined);
  phone.close();
  laptop.close();
});

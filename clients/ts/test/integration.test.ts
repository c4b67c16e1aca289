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

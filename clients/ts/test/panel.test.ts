// The Dev Panel in headless Chromium (Debian's chromium, driven by
// playwright-core): served by a bridge attached to a real `notify up`,
// signed in with a dev token; a CLI publish shows up in the inbox; an admin
// publish from the page too; the bridge is killed and restarted, and the
// messages published meanwhile appear, each once; a routed action goes to a
// real backend (`notify echo-backend`) and its reply, or its error, shows.
// The bell: two tabs of one user show the same unread count, a click on a
// notification in one marks it read and the other's count follows, older
// notifications load on demand, "mark all read" clears both. Web Push: the
// panel's service worker (the client's push-worker) shows a push once, drops
// a copy the server sends again, and remembers that across the worker.
// The screenshot it takes is the one in the README (docs/panel.png).
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { chromium, type Browser, type Page } from 'playwright-core';

import { Bridge, EchoBackend, Up, eventually } from './platform.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = path.resolve(import.meta.dirname, '..', '..', '..', '..', 'docs', 'panel.png');

const up = new Up(['--simulate']);
const backend = new EchoBackend();
let bridge: Bridge;
let browser: Browser | null = null;

after(async () => {
  await browser?.close();
  await bridge?.kill9();
  await backend.stop();
  await up.stop();
  up.cleanup();
});

async function inboxSeqs(page: Page): Promise<number[]> {
  return await page.$$eval('#inbox tr', (rows) => rows.map((r) => Number((r as HTMLElement).dataset.seq)).sort((a, b) => a - b));
}

test('the Dev Panel: sign in, live inbox, admin publish, a bridge restart ridden out, a routed call', async () => {
  assert.ok(
    fs.existsSync(CHROMIUM),
    `${CHROMIUM} is missing: apt-get install -y chromium chromium-driver (scripts/test does), or set CHROMIUM`,
  );
  await up.start();
  await backend.start();
  bridge = new Bridge(up, { BRIDGE_ROUTES: `echo=http://${backend.addr}` });
  await bridge.start();
  const token = up.token('alice', ['admin']);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root in a sandbox-less container; no background traffic to Google.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`http://${bridge.ws}/panel`);
  await page.fill('[data-testid=token]', token);
  await page.click('[data-testid=sign-in]');
  await page.waitForSelector('[data-testid=state].connected', { timeout: 15_000 });
  assert.match((await page.textContent('#who')) ?? '', /alice · admin/);

  // A CLI publish appears in the inbox, then is acked.
  const first = up.publish('alice', { text: 'hello from the CLI' }, 'cli.hello');
  await page.waitForSelector(`#inbox tr[data-id="${first.message_id}"]`, { timeout: 10_000 });
  await page.waitForFunction(() => document.querySelector('#inbox tr .ack')?.textContent === 'acked', undefined, {
    timeout: 10_000,
  });

  // An admin publishes from the page (to herself).
  await page.fill('[data-testid=publish-data]', '{"text": "sent from the panel"}');
  await page.click('[data-testid=publish]');
  await page.waitForFunction(() => document.querySelector('[data-testid=publish-result]')?.textContent?.startsWith('published'));
  await eventually('the panel publish in the inbox', 10_000, async () => ((await inboxSeqs(page)).length === 2) || undefined);

  // The bridge dies; messages are published meanwhile; it comes back.
  await bridge.kill9();
  await page.waitForSelector('[data-testid=state]:not(.connected)', { timeout: 10_000 });
  const whileDown = [1, 2, 3].map((n) => up.publish('alice', { text: `while the bridge was down (${n})` }, 'cli.offline'));
  await bridge.start();
  await page.waitForSelector('[data-testid=state].connected', { timeout: 30_000 });
  for (const m of whileDown) {
    await page.waitForSelector(`#inbox tr[data-id="${m.message_id}"]`, { timeout: 10_000 });
  }
  await page.waitForTimeout(500);
  assert.deepEqual(await inboxSeqs(page), [1, 2, 3, 4, 5], 'every message once, none twice');
  await page.waitForFunction(() => document.getElementById('acked-seq')?.textContent === '5', undefined, { timeout: 10_000 });

  // A routed action: the backend's error, an action nobody serves, then
  // the backend's reply with alice's verified identity.
  const callResult = async (payload: string, action = 'echo'): Promise<string> => {
    await page.fill('[data-testid=call-action]', action);
    await page.fill('[data-testid=call-payload]', payload);
    await page.$eval('[data-testid=call-result]', (el) => (el.textContent = ''));
    await page.click('[data-testid=call]');
    await page.waitForFunction(() => document.querySelector('[data-testid=call-result]')?.textContent !== '');
    return (await page.textContent('[data-testid=call-result]')) ?? '';
  };
  assert.equal(await callResult('{"fail": true}'), 'bad_request (NOT_FOUND): the echo backend was asked to fail');
  assert.match(await callResult('{}', 'nobodyServesThis'), /^unknown_action: /);
  const reply = JSON.parse(await callResult('{"text": "hello, backend"}')) as {
    route: string;
    frame: { text: string };
    caller: { user_id: string; groups: string[]; bridge_id: string };
  };
  assert.equal(reply.route, 'echo');
  assert.equal(reply.frame.text, 'hello, backend');
  assert.equal(reply.caller.user_id, 'alice');
  assert.deepEqual(reply.caller.groups, ['admin']);
  assert.equal(reply.caller.bridge_id, 'panel-bridge');

  // The simulated fights reach the live board.
  await page.waitForSelector('#fights tr', { timeout: 15_000 });
  // Something to read in the topics card for the screenshot.
  await page.fill('[data-testid=topic]', 'room:lobby');
  await page.press('[data-testid=topic]', 'Enter');
  await page.waitForFunction(() => document.getElementById('subscriptions')?.textContent?.includes('room:lobby'));
  await page.waitForTimeout(1500);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(pageErrors, [], 'no script error on the page');
});

test('the link notify up prints opens the panel signed in, and the token leaves the address bar', async () => {
  assert.ok(browser, 'the first test launched the browser');
  const link = up.panelUrl;
  assert.match(link, new RegExp(`^http://${up.ws}/panel#token=`), 'the token rides in the fragment');
  const page = await browser!.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(link);
  await page.waitForSelector('[data-testid=state].connected', { timeout: 15_000 });
  assert.match((await page.textContent('#who')) ?? '', /alice · admin/);
  assert.equal(new URL(page.url()).hash, '', 'the token is gone from the address bar');
  // The inbox: what alice has, then a new publish, live.
  const fresh = up.publish('alice', { text: 'one click' }, 'cli.link');
  await page.waitForSelector(`#inbox tr[data-id="${fresh.message_id}"]`, { timeout: 10_000 });
  assert.ok((await inboxSeqs(page)).includes(fresh.seq));
  assert.deepEqual(pageErrors, [], 'no script error on the page');
  await page.close();
});

test('the bell: two tabs share the unread count, a click marks read, older items load', async () => {
  assert.ok(browser, 'the first test launched the browser');
  const token = up.token('bea', []);
  const tab = async (): Promise<{ page: Page; errors: string[] }> => {
    const page = await browser!.newPage({ viewport: { width: 1360, height: 900 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://${bridge.ws}/panel#token=${token}`);
    await page.waitForSelector('[data-testid=state].connected', { timeout: 15_000 });
    return { page, errors };
  };
  const unread = async (page: Page): Promise<string> => (await page.textContent('[data-testid=unread]')) ?? '';
  const until = async (page: Page, count: number): Promise<void> => {
    try {
      await page.waitForFunction((n) => document.querySelector('[data-testid=unread]')?.textContent === String(n), count, {
        timeout: 10_000,
      });
    } catch (e) {
      throw new Error(`the bell never showed ${count} unread (it shows ${await unread(page)}): ${String(e)}`);
    }
  };
  const first = await tab();
  const second = await tab();
  const sent = Array.from({ length: 12 }, (_, i) => up.publish('bea', { text: `note ${i + 1}` }, 'cli.bell'));
  await until(first.page, 12);
  await until(second.page, 12);

  // The first tab opens the bell: the newest ten, a click marks one read.
  await first.page.click('[data-testid=bell]');
  await first.page.waitForFunction(() => document.querySelectorAll('[data-testid=bell-item]').length === 10);
  const newest = await first.page.$$eval('[data-testid=bell-item]', (items) => items.map((li) => Number((li as HTMLElement).dataset.seq)));
  assert.deepEqual(newest, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3]);
  await first.page.click(`[data-testid=bell-item][data-seq="${sent[11]!.seq}"]`);
  await until(first.page, 11);
  await until(second.page, 11); // the other tab, through the bridge
  // Older items on demand, and the end of the list said.
  await first.page.click('[data-testid=bell-older]');
  await first.page.waitForFunction(() => document.querySelectorAll('[data-testid=bell-item]').length === 12);
  assert.equal(await first.page.textContent('[data-testid=bell-end]'), 'No older notifications.');

  // "Mark all read" on the second tab clears both.
  await second.page.click('[data-testid=bell]');
  await second.page.click('[data-testid=mark-all]');
  await until(second.page, 0);
  await until(first.page, 0);
  assert.equal(await unread(first.page), '0');
  assert.deepEqual([...first.errors, ...second.errors], [], 'no script error on either tab');
  await first.page.close();
  await second.page.close();
});

test('Web Push: the service worker shows a push once and drops a copy sent again', async () => {
  assert.ok(browser, 'the first test launched the browser');
  const origin = `http://${bridge.ws}`;
  const context = await browser!.newContext();
  await context.grantPermissions(['notifications'], { origin });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // No push service is reachable from here, so the test plays it: Chromium's
  // DevTools deliver a push to the worker as a push service would.
  const cdp = await context.newCDPSession(page);
  const registrations = new Map<string, string>(); // scope -> id
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
    for (const r of e.registrations) if (!r.isDeleted) registrations.set(r.scopeURL, r.registrationId);
  });
  await cdp.send('ServiceWorker.enable');
  await page.goto(`${origin}/panel#token=${up.token('cleo', [])}`);
  await page.waitForSelector('[data-testid=state].connected', { timeout: 15_000 });

  await page.click('[data-testid=push-on]');
  await page.waitForFunction(() => (document.querySelector('[data-testid=push-result]') as HTMLElement)?.dataset.worker === 'active');
  // Subscribing needs the browser's push service: here it fails, and says so.
  await page.waitForFunction(() => document.querySelector('[data-testid=push-result]')?.textContent !== 'turning on…');
  const registrationId = await eventually('the worker registered', 10_000, async () => registrations.get(`${origin}/panel/`));

  // What notify-svc sends (crates/push/src/worker.rs): title, body, message id, seq, event.
  const message = up.publish('cleo', { fight: 'f-1' }, 'fight.accepted');
  const push = (m: { message_id: string; seq: number }, title: string) =>
    cdp.send('ServiceWorker.deliverPushMessage', {
      origin,
      registrationId,
      data: JSON.stringify({ title, body: 'bob accepted your fight', message_id: m.message_id, seq: m.seq, event: 'fight.accepted' }),
    });
  const shown = () =>
    page.evaluate(async () => {
      const registration = await navigator.serviceWorker.getRegistration('/panel/');
      const list = (await registration?.getNotifications()) ?? [];
      return list.map((n) => ({ title: n.title, body: n.body, tag: n.tag, url: (n.data as { url: string }).url }));
    });

  await push(message, 'Fight accepted');
  const first = await eventually('the push shown', 10_000, async () => {
    const list = await shown();
    return list.length > 0 ? list : undefined;
  });
  assert.deepEqual(first, [
    { title: 'Fight accepted', body: 'bob accepted your fight', tag: message.message_id, url: `${origin}/panel#seq=${message.seq}` },
  ]);

  // The same message again (a sender killed before it recorded the send):
  // still one notification, even after the user dismissed the first.
  await push(message, 'Fight accepted');
  await page.waitForTimeout(500);
  assert.equal((await shown()).length, 1, 'a copy replaces nothing and adds nothing');
  await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration('/panel/');
    for (const n of (await registration?.getNotifications()) ?? []) n.close();
  });
  await push(message, 'Fight accepted');
  await page.waitForTimeout(500);
  assert.deepEqual(await shown(), [], 'a dismissed push does not come back within the dedupe window');

  // Another message is shown; a push that is not notify's is left alone.
  const next = up.publish('cleo', { fight: 'f-2' }, 'fight.accepted');
  await cdp.send('ServiceWorker.deliverPushMessage', { origin, registrationId, data: 'not json' });
  await push(next, 'Another fight');
  const second = await eventually('the second push shown', 10_000, async () => {
    const list = await shown();
    return list.length > 0 ? list : undefined;
  });
  assert.deepEqual(
    second.map((n) => n.tag),
    [next.message_id],
  );
  assert.deepEqual(errors, [], 'no script error on the page');
  await context.close();
});

// The Dev Panel's page logic, on @notify/client (served from /panel/client/).
import { NotifyClient, tokenExpiry } from '/panel/client/index.js';

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const STORAGE_KEY = 'notify-panel-token';

let client = null;
let token = null;
const inboxRows = new Map(); // seq → <tr>
const fights = new Map(); // fight_id → <tr>

const time = (ms) =>
  new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const short = (value) => {
  const text = JSON.stringify(value);
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
};

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(text, className) {
  const td = document.createElement('td');
  const span = document.createElement('span');
  span.textContent = text;
  span.className = className;
  td.append(span);
  return td;
}

function log(text, kind = '') {
  const li = document.createElement('li');
  const at = document.createElement('time');
  at.textContent = time(Date.now());
  const span = document.createElement('span');
  span.textContent = text;
  if (kind) span.className = kind;
  li.append(at, span);
  $('log').prepend(li);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

/** The token's claims, for display only (the bridge verifies it). */
function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

function setState(state, detail = {}) {
  const badge = $('state');
  badge.className = `state ${state}`;
  let text = state;
  if (state === 'disconnected' && detail.stopped) text = 'stopped';
  if (state === 'disconnected' && detail.retryInMs !== undefined) text = `reconnecting in ${(detail.retryInMs / 1000).toFixed(1)} s`;
  badge.textContent = text;
  const why = detail.code ? ` (${detail.code}${detail.reason ? `: ${detail.reason}` : ''})` : '';
  log(`${state}${why}`, state === 'connected' ? 'ok' : detail.code && detail.code !== 1000 ? 'error' : '');
}

function updateAcks() {
  $('last-seq').textContent = client.lastSeq;
  $('acked-seq').textContent = client.ackedSeq;
  for (const [seq, row] of inboxRows) {
    const ack = row.querySelector('.ack');
    const acked = seq <= client.ackedSeq;
    ack.textContent = acked ? 'acked' : 'pending';
    ack.className = `ack ${acked ? 'acked' : 'pending'}`;
  }
}

function showInbox(message) {
  const row = document.createElement('tr');
  row.className = 'fresh';
  row.dataset.seq = message.seq;
  row.dataset.id = message.id;
  row.append(
    cell(message.seq, 'num'),
    cell(time(message.ts)),
    cell(message.event),
    cell(short(message.data), 'data'),
    cell('pending', 'ack pending'),
  );
  row.querySelector('.data').title = JSON.stringify(message.data, null, 2);
  $('inbox').prepend(row);
  inboxRows.set(message.seq, row);
  $('inbox-count').textContent = inboxRows.size;
  $('inbox-empty').hidden = true;
  updateAcks();
}

function showTopicMessage(message) {
  const row = document.createElement('tr');
  row.className = 'fresh';
  row.append(cell(message.topic), cell(message.seq, 'num'), cell(time(message.ts)), cell(message.event), cell(short(message.data), 'data'));
  $('topic-messages').prepend(row);
  while ($('topic-messages').children.length > 200) $('topic-messages').lastChild.remove();
  renderSubscriptions();
}

function showFight(event) {
  const f = event.fight;
  let row = fights.get(f.fight_id);
  if (!row) {
    row = document.createElement('tr');
    fights.set(f.fight_id, row);
  }
  row.className = 'fresh';
  row.replaceChildren(
    cell(f.fight_id),
    badge(f.status, `status ${f.status}`),
    cell(f.creator_id),
    cell(f.acceptor_id ?? '—'),
    cell(`${(f.stake / 100).toFixed(2)} ${f.currency}`, 'num'),
    cell(time(f.updated_at_ms || Date.now())),
  );
  $('fights').prepend(row);
  $('fights-empty').hidden = true;
}

function renderSubscriptions() {
  const list = $('subscriptions');
  list.replaceChildren();
  for (const [topic, seq] of client.subscriptions) {
    const li = document.createElement('li');
    li.textContent = `${topic} · seq ${seq}`;
    const drop = document.createElement('button');
    drop.className = 'link';
    drop.textContent = '×';
    drop.title = `unsubscribe from ${topic}`;
    drop.onclick = () => {
      client.unsubscribe(topic).catch((e) => log(`unsubscribe ${topic}: ${e.message}`, 'error'));
      renderSubscriptions();
    };
    li.append(drop);
    list.append(li);
  }
}

function subscribe(topic) {
  client
    .subscribe(topic)
    .then(() => log(`subscribed to ${topic}`, 'ok'))
    .catch((e) => log(`subscribe ${topic}: ${e.code ?? ''} ${e.message}`, 'error'))
    .finally(renderSubscriptions);
  renderSubscriptions();
}

// --- The bell: unread count (the same on every tab and device), the list of
// notifications it opens, a mark on click, older items on demand.
const bellItems = new Map(); // seq → <li>
let bellOlder = undefined; // `before` of the next older page; null: none left

function bellItem(item) {
  const li = document.createElement('li');
  li.dataset.seq = item.seq;
  li.dataset.testid = 'bell-item';
  const what = document.createElement('span');
  what.className = 'what';
  what.textContent = `#${item.seq} ${item.event}`;
  const when = document.createElement('span');
  when.className = 'when';
  when.textContent = time(item.ts);
  const data = document.createElement('span');
  data.className = 'data';
  data.textContent = short(item.data);
  li.append(what, when, data);
  li.classList.toggle('unread', !item.read);
  li.onclick = () => {
    if (!li.classList.contains('unread')) return;
    li.classList.remove('unread');
    client.markRead([item.seq]).catch((e) => {
      li.classList.add('unread');
      log(`mark ${item.seq} read: ${e.code ?? ''} ${e.message}`, 'error');
    });
  };
  return li;
}

/** Adds items (a page, or one new message) in seq order, newest on top. */
function showBellItems(items) {
  for (const item of items) {
    if (bellItems.has(item.seq)) continue;
    const li = bellItem(item);
    const newer = [...bellItems.keys()].filter((s) => s > item.seq).sort((a, b) => a - b)[0];
    if (newer === undefined) $('bell-items').prepend(li);
    else bellItems.get(newer).after(li);
    bellItems.set(item.seq, li);
  }
}

async function loadBell(before) {
  const page = await client.history({ limit: 10, ...(before ? { before } : {}) });
  showBellItems(page.items);
  bellOlder = page.next_before ?? null;
  $('bell-older').hidden = bellOlder === null;
  $('bell-end').textContent =
    bellOlder !== null ? '' : page.older_expired ? 'Older notifications have expired.' : 'No older notifications.';
}

async function toggleBell() {
  const menu = $('bell-menu');
  menu.hidden = !menu.hidden;
  if (menu.hidden) return;
  try {
    if (bellOlder === undefined) await loadBell();
    // Opening the list is seeing it: the unseen count drops, unread stays.
    const head = Math.max(client.lastSeq, client.session?.seq ?? 0);
    if (head > 0) await client.mark('seen', { upTo: head });
  } catch (e) {
    log(`notifications: ${e.code ?? ''} ${e.message}`, 'error');
  }
}

function watchBell() {
  $('bell-wrap').hidden = false;
  client.counts.subscribe((c) => {
    $('unread').textContent = c.unread;
    $('bell').classList.toggle('has-unread', c.unread > 0);
    $('bell').title = `${c.unread} unread, ${c.unseen} unseen`;
  });
  client.onMessage((m) => {
    if (m.topic === undefined && bellOlder !== undefined) showBellItems([{ ...m, read: false }]);
  });
  client.onUpdated((u) => {
    const li = bellItems.get(u.seq);
    if (li) li.querySelector('.data').textContent = short(u.data);
  });
  client.onRetracted((r) => {
    bellItems.get(r.seq)?.remove();
    bellItems.delete(r.seq);
  });
  // A mark on another tab or device: the counts change; the list follows
  // the next time it is opened.
  client.counts.subscribe((c) => {
    if (c.unread === 0) for (const li of bellItems.values()) li.classList.remove('unread');
  });
}

function signIn(value) {
  token = value.trim();
  const c = claims(token);
  if (!c || !c.sub) {
    log('that does not look like a JWT (three base64url parts with a sub)', 'error');
    return;
  }
  const exp = tokenExpiry(token);
  if (exp && exp * 1000 < Date.now()) {
    log(`this token expired at ${new Date(exp * 1000).toLocaleString()}`, 'error');
    return;
  }
  sessionStorage.setItem(STORAGE_KEY, token);
  const groups = c['cognito:groups'] ?? [];
  $('who').textContent = `${c.sub}${groups.length ? ` · ${groups.join(', ')}` : ''}`;
  for (const el of document.querySelectorAll('.me')) el.textContent = c.sub;
  $('sign-in').hidden = true;
  $('signed-in').hidden = false;
  $('sign-out').hidden = false;
  $('admin').hidden = !groups.includes('admin');
  $('publish-target').value = c.sub;

  // A pasted token cannot be renewed: on 4009 (expired) the client stops and says so.
  client = new NotifyClient({ url: wsUrl, token });
  client.onState(setState);
  client.onMessage((m) => (m.topic === undefined ? showInbox(m) : showTopicMessage(m)));
  client.onFight((event, m) => {
    if (m.topic === 'fights:live') showFight(event);
  });
  client.onAck(updateAcks);
  client.onError((e) => log(`${e.code}: ${e.message}`, 'error'));
  client.onGap((g) =>
    log(`${g.feed}: messages after seq ${g.after} are gone (retention); resuming at ${g.firstSeq || 'the head'}`, 'error'),
  );
  client.onSubscription((c) => {
    log(`${c.subscribed ? 'subscribed to' : 'unsubscribed from'} ${c.topic} by a backend`, 'ok');
    renderSubscriptions();
  });
  watchBell();
  client.connect();
  subscribe('fights:live');
}

function signOut() {
  client?.close();
  client = null;
  sessionStorage.removeItem(STORAGE_KEY);
  location.reload();
}

async function publish(event) {
  event.preventDefault();
  const result = $('publish-result');
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch (e) {
    result.textContent = `data is not JSON: ${e.message}`;
    result.className = 'meta error';
    return;
  }
  const body = {
    [$('publish-kind').value]: $('publish-target').value.trim(),
    event: $('publish-event').value.trim(),
    data,
    idempotency_key: crypto.randomUUID(),
  };
  try {
    const answer = await fetch('/panel/api/publish', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const json = await answer.json();
    if (!answer.ok) throw new Error(`${answer.status} ${json.error}: ${json.message}`);
    result.textContent = `published: seq ${json.seq}, id ${json.message_id}`;
    result.className = 'meta ok';
    log(`published ${body.event} (seq ${json.seq})`, 'ok');
  } catch (e) {
    result.textContent = e.message;
    result.className = 'meta error';
    log(`publish failed: ${e.message}`, 'error');
  }
}

/** Sends a routed action and shows the backend's reply, or its error. */
async function call(event) {
  event.preventDefault();
  const result = $('call-result');
  const action = $('call-action').value.trim();
  let payload;
  try {
    payload = JSON.parse($('call-payload').value || '{}');
  } catch (e) {
    result.textContent = `payload is not JSON: ${e.message}`;
    result.className = 'result error';
    return;
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    result.textContent = 'the payload is a JSON object: its fields go into the frame beside "action"';
    result.className = 'result error';
    return;
  }
  try {
    const reply = await client.call(action, payload);
    result.textContent = JSON.stringify(reply, null, 2);
    result.className = 'result ok';
    log(`${action}: replied`, 'ok');
  } catch (e) {
    const status = e.status ? ` (${e.status})` : '';
    result.textContent = `${e.code ?? 'error'}${status}: ${e.message}`;
    result.className = 'result error';
    log(`${action}: ${e.code ?? 'error'}${status}: ${e.message}`, 'error');
  }
}

// Web Push: the panel's service worker (sw.js, on the client's
// push-worker) shows pushes; this subscribes the browser and registers the
// subscription as one of the user's devices.
async function pushOn() {
  const result = $('push-result');
  result.className = 'meta';
  result.textContent = 'turning on…';
  try {
    if (!('serviceWorker' in navigator) || !('PushManager' in window)) {
      throw new Error('this browser has no Web Push (or the page is not on https or localhost)');
    }
    if ((await Notification.requestPermission()) !== 'granted') {
      throw new Error('notifications are not allowed for this page');
    }
    const registration = await navigator.serviceWorker.register('/panel/sw.js', { type: 'module', scope: '/panel/' });
    const worker = registration.installing ?? registration.waiting ?? registration.active;
    if (worker && worker.state !== 'activated') {
      await new Promise((resolve) => {
        worker.addEventListener('statechange', () => worker.state === 'activated' && resolve());
      });
    }
    result.dataset.worker = 'active';
    const answer = await client.subscribeWebPush(registration);
    result.textContent = `on: ${answer.devices.length} push device(s) of yours`;
    log('Web Push on for this browser', 'ok');
  } catch (e) {
    result.textContent = `${e.code ?? 'error'}: ${e.message}`;
    result.className = 'meta error';
    log(`Web Push: ${e.code ?? 'error'}: ${e.message}`, 'error');
  }
}

// A click on a push with a panel already open: say which message it was.
navigator.serviceWorker?.addEventListener('message', (event) => {
  if (event.data?.type === 'notify.push_opened') log(`opened from a push: inbox seq ${event.data.seq}`, 'ok');
});

$('sign-in-form').addEventListener('submit', (e) => {
  e.preventDefault();
  signIn($('token').value);
});
$('sign-out').addEventListener('click', signOut);
$('subscribe-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const topic = $('topic').value.trim();
  if (topic) subscribe(topic);
  $('topic').value = '';
});
$('publish-form').addEventListener('submit', publish);
$('bell').addEventListener('click', () => void toggleBell());
$('bell-older').addEventListener('click', () =>
  loadBell(bellOlder).catch((e) => log(`older notifications: ${e.code ?? ''} ${e.message}`, 'error')),
);
$('mark-all').addEventListener('click', () => {
  client
    .markAllRead()
    .then(() => {
      for (const li of bellItems.values()) li.classList.remove('unread');
    })
    .catch((e) => log(`mark all read: ${e.code ?? ''} ${e.message}`, 'error'));
});
$('call-form').addEventListener('submit', call);
$('push-on').addEventListener('click', () => void pushOn());

// `notify up` prints a link that signs in with its dev token, carried in the
// fragment (browsers never send it, so no server log holds it); it is taken
// out of the address bar and the history at once.
const linked = new URLSearchParams(location.hash.slice(1)).get('token');
if (linked) {
  history.replaceState(null, '', location.pathname + location.search);
  signIn(linked);
} else {
  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) signIn(saved);
}

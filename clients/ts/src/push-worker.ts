// The service worker's half of Web Push: shows each notify push as a
// notification, once per message, and opens the app at that inbox item when
// it is clicked. Import it into your service worker:
//
//   import { handlePushes } from '@notify/client/push-worker';
//   handlePushes(self, { url: (push) => `/inbox#seq=${push.seq}` });
//
// The server sends every push at least once: a sender killed between a
// provider's answer and its record sends that push again after a restart,
// with the same message id as its Web Push `Topic`. The push service
// replaces a copy it still holds; one that already reached the browser is
// dropped here, because the worker remembers the message ids it showed for
// the dedupe window (Cache Storage, so a restarted worker remembers too).

/** What a notify push carries (the JSON the server encrypts). */
export interface NotifyPush {
  title: string;
  body: string;
  message_id: string;
  seq: number;
  event: string;
}

export interface PushWorkerOptions {
  /** The page a click opens, relative to the worker's scope (default: the scope, with `#message_id=…&seq=…`). */
  url?: (push: NotifyPush) => string;
  /** How long a shown message id is remembered (default 24 h: the server's push TTL, so no copy comes later). */
  dedupeMs?: number;
  /** Icon and badge of the notification. */
  icon?: string;
  badge?: string;
  clock?: () => number;
}

/** The parts of a ServiceWorkerGlobalScope this module uses. */
export interface PushWorkerScope {
  registration: {
    scope: string;
    showNotification(title: string, options: { body: string; tag: string; data: unknown; icon?: string; badge?: string }): Promise<void>;
  };
  clients: {
    matchAll(options: { type: 'window'; includeUncontrolled: boolean }): Promise<readonly WindowClientLike[]>;
    openWindow(url: string): Promise<unknown>;
  };
  caches: { open(name: string): Promise<SeenCache> };
  addEventListener(type: 'push', listener: (event: PushEventLike) => void): void;
  addEventListener(type: 'notificationclick', listener: (event: NotificationClickLike) => void): void;
}

interface WindowClientLike {
  url: string;
  focus(): Promise<unknown>;
  postMessage(message: unknown): void;
}

interface SeenCache {
  match(url: string, options: { ignoreSearch: boolean }): Promise<{ text(): Promise<string> } | undefined>;
  put(url: string, response: Response): Promise<void>;
  keys(): Promise<readonly { url: string }[]>;
  delete(url: string): Promise<boolean>;
}

interface PushEventLike {
  data: { json(): unknown } | null;
  waitUntil(work: Promise<unknown>): void;
}

interface NotificationClickLike {
  notification: { data: unknown; close(): void };
  waitUntil(work: Promise<unknown>): void;
}

/** Cache Storage holding one entry per message id shown: its time. */
const SEEN_CACHE = 'notify-push-seen';
const DAY_MS = 24 * 60 * 60 * 1000;

/** The message a click posts to an open window of the app. */
export const PUSH_OPENED = 'notify.push_opened';

/** A push's payload, if it is a notify push (others are left to other handlers). */
export function notifyPush(data: unknown): NotifyPush | null {
  if (typeof data !== 'object' || data === null) {
    return null;
  }
  const p = data as Record<string, unknown>;
  if (typeof p.message_id !== 'string' || typeof p.seq !== 'number') {
    return null;
  }
  return {
    title: typeof p.title === 'string' ? p.title : '',
    body: typeof p.body === 'string' ? p.body : '',
    message_id: p.message_id,
    seq: p.seq,
    event: typeof p.event === 'string' ? p.event : '',
  };
}

/** Installs the `push` and `notificationclick` handlers on the worker. */
export function handlePushes(worker: PushWorkerScope, options: PushWorkerOptions = {}): void {
  const dedupeMs = options.dedupeMs ?? DAY_MS;
  const now = options.clock ?? Date.now;
  // One entry per message id shown, the time in its query: `…/<id>?at=<ms>`.
  const seenUrl = (id: string, at?: number): string => {
    const url = new URL(`__notify/push-seen/${encodeURIComponent(id)}`, worker.registration.scope);
    if (at !== undefined) {
      url.searchParams.set('at', String(at));
    }
    return url.href;
  };
  const openUrl = (push: NotifyPush): string =>
    new URL(
      options.url?.(push) ?? `#message_id=${encodeURIComponent(push.message_id)}&seq=${push.seq}`,
      worker.registration.scope,
    ).href;

  // Shows a push unless its message was shown within the window; forgets
  // ids older than the window on the way.
  const show = async (push: NotifyPush): Promise<void> => {
    const seen = await worker.caches.open(SEEN_CACHE);
    const at = now();
    const earlier = await seen.match(seenUrl(push.message_id), { ignoreSearch: true });
    if (earlier && at - Number(await earlier.text()) < dedupeMs) {
      // A copy of a push shown already. If the user dismissed it, the
      // browser may count this push as silent (Chrome tolerates a few).
      return;
    }
    await seen.put(seenUrl(push.message_id, at), new Response(String(at)));
    await worker.registration.showNotification(push.title || push.event || 'New notification', {
      body: push.body,
      tag: push.message_id, // a second notification of one message replaces the first
      data: { ...push, url: openUrl(push) },
      ...(options.icon ? { icon: options.icon } : {}),
      ...(options.badge ? { badge: options.badge } : {}),
    });
    for (const key of await seen.keys()) {
      const shown = Number(new URL(key.url).searchParams.get('at'));
      if (!(at - shown < dedupeMs)) {
        await seen.delete(key.url);
      }
    }
  };

  worker.addEventListener('push', (event) => {
    let data: unknown = null;
    try {
      data = event.data?.json() ?? null;
    } catch {
      return; // not JSON: not ours
    }
    const push = notifyPush(data);
    if (push) {
      event.waitUntil(show(push));
    }
  });

  worker.addEventListener('notificationclick', (event) => {
    const data = event.notification.data as (NotifyPush & { url?: string }) | null;
    const push = notifyPush(data);
    if (!push || !data?.url) {
      return;
    }
    event.notification.close();
    const url = data.url;
    event.waitUntil(
      (async () => {
        // An open window of the app is focused and told; none: one opens.
        const windows = await worker.clients.matchAll({ type: 'window', includeUncontrolled: true });
        const path = new URL(url).pathname;
        const open = windows.find((w) => new URL(w.url).pathname === path);
        if (open) {
          open.postMessage({ type: PUSH_OPENED, message_id: push.message_id, seq: push.seq, event: push.event });
          await open.focus();
        } else {
          await worker.clients.openWindow(url);
        }
      })(),
    );
  });
}

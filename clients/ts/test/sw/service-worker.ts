// Compiled against the WebWorker lib (tsconfig.sw.json, part of `npm test`):
// a TypeScript app's service worker hands its own `self` to handlePushes.
/// <reference lib="webworker" />
import { handlePushes, type NotifyPush } from '../../src/push-worker.js';

declare const self: ServiceWorkerGlobalScope;

handlePushes(self, { url: (push: NotifyPush) => `/inbox#seq=${push.seq}`, dedupeMs: 60_000 });

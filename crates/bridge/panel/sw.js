// The Dev Panel's service worker: shows notify's Web Pushes (once per
// message) and opens the panel when one is clicked.
import { handlePushes } from '/panel/client/push-worker.js';

handlePushes(self, { url: (push) => `/panel#seq=${push.seq}` });

// @notify/client: the WebSocket client of the notify platform.
export { NotifyClient, NotifyError, tokenExpiry } from './client.js';
export { DEFAULT_BACKOFF, fullJitter } from './backoff.js';
export { CloseCode, fightEvent, parseFrame } from './protocol.js';

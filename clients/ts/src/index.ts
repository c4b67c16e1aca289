// @notify/client: the WebSocket client of the notify platform.
export { NotifyClient, NotifyError, tokenExpiry } from './client.js';
export type {
  ClientOptions,
  Clock,
  ConnectionState,
  Gap,
  SocketLike,
  StateDetail,
  SubscriptionChange,
  TokenSource,
} from './client.js';
export { DEFAULT_BACKOFF, fullJitter } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { CloseCode, fightEvent, parseFrame } from './protocol.js';
export type {
  ClientAction,
  ErrorCode,
  ErrorFrame,
  Fight,
  FightEvent,
  FightKind,
  FightStatus,
  NotifyMessage,
  Published,
  Refreshed,
  Reply,
  ServerFrame,
  Subscribed,
  SubscriptionSource,
  Unsubscribed,
  Welcome,
} from './protocol.js';

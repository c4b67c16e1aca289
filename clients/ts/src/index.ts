// @notify/client: the WebSocket client of the notify platform.
export { NotifyClient, NotifyError, tokenExpiry } from './client.js';
export type {
  ClientOptions,
  Clock,
  ConnectionState,
  Gap,
  HistoryOptions,
  SocketLike,
  StateDetail,
  SubscriptionChange,
  TokenSource,
} from './client.js';
export { DEFAULT_BACKOFF, fullJitter } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { CloseCode, fightEvent, parseFrame } from './protocol.js';
export type { Observable } from './value.js';
export type {
  ClientAction,
  Counts,
  CountsByEvent,
  CountsFrame,
  PushDestination,
  PushDevice,
  PushDevicesFrame,
  WebPushSubscriptionJson,
  ErrorCode,
  ErrorFrame,
  Fight,
  FightEvent,
  FightKind,
  FightStatus,
  HistoryPage,
  InboxItem,
  MarkAs,
  Marked,
  Mutes,
  NotifyMessage,
  PreferencesFrame,
  Published,
  Refreshed,
  Reply,
  Retracted,
  ServerFrame,
  Subscribed,
  SubscriptionSource,
  Unsubscribed,
  Updated,
  Welcome,
} from './protocol.js';

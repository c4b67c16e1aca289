//! WebSocket close codes of the client protocol (docs/design.md §5.4), named
//! once: the bridge closes sockets with them, notify-svc asks for them when
//! it kicks connections.

/// Two pings went unanswered (RFC 6455 "going away"): the peer is gone.
pub const NO_PONG: u16 = 1001;
/// A text frame was not UTF-8 (RFC 6455 "invalid frame payload data").
pub const INVALID_PAYLOAD: u16 = 1007;
/// A frame over the bridge's limit (RFC 6455 "message too big").
pub const TOO_LARGE: u16 = 1009;
/// The server is restarting: reconnect, elsewhere if you can.
pub const RESTARTING: u16 = 1012;
/// The inbox could not be read (notify-svc or its store is away):
/// reconnect with backoff.
pub const TRY_AGAIN: u16 = 1013;
/// Disconnected by the API (`Notify.Disconnect`).
pub const DISCONNECTED: u16 = 4003;
/// Slow consumer: the send queue went over its bound.
pub const SLOW_CONSUMER: u16 = 4008;
/// The token expired without a `refresh`, or was revoked.
pub const TOKEN_EXPIRED: u16 = 4009;

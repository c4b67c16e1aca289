//! Domain types of the notify platform, shared by every service and free of I/O.
//!
//! - [`ids`]: user, message and connection identifiers.
//! - [`feed`]: a user's inbox or a topic's log ([`Feed`]) and where it stands ([`Position`]).
//! - [`inbox`]: the user's side of an inbox: seen/read/archived [`inbox::State`], marks,
//!   badge [`inbox::Counts`], mutes, pages of older items, edits and retractions.
//! - [`push`]: push destinations of a user's devices (Web Push, FCM, APNs) and
//!   their ids.
//! - [`topic`]: topic names (`namespace:rest`) and the per-namespace [`TopicPolicy`]
//!   (who may subscribe, client publish, log retention).
//! - [`publish`]: a validated [`Publish`] (target, event, JSON data, idempotency key,
//!   TTL) and the [`Limits`] it is checked against.
//! - [`close`]: the WebSocket close codes of the client protocol.
//! - [`error`]: [`ValidationError`], what is wrong with an input, said for a human.
//! - [`redact`]: connection URLs without their passwords, for logs and `/info`.
//! - [`setting`]: the flag and environment names of one configuration setting.

pub mod close;
pub mod error;
pub mod feed;
pub mod ids;
pub mod inbox;
pub mod publish;
pub mod push;
pub mod redact;
pub mod setting;
pub mod topic;

pub use error::ValidationError;
pub use feed::{Feed, Position};
pub use ids::{ConnectionId, MessageId, UserId};
pub use publish::{Limits, Publish, Target};
pub use topic::{Forbidden, NamespacePolicy, Subject, SubscribeRule, Topic, TopicPolicy};

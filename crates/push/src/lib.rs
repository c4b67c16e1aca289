//! notify-push: push to users who are away (docs/design.md §4.8).
//!
//! - [`worker`]: claims due pushes from the store's durable queue, decides
//!   by the user's acks and presence at due time, sends to each device and
//!   records what was done, retrying rate limits and provider trouble.
//! - [`web_push`]: Web Push with VAPID and RFC 8291 encryption ([`ece`]);
//!   [`vapid`] its key pair.
//! - [`fcm`]: FCM HTTP v1 with the service account's OAuth2 JWT grant.
//! - [`apns`]: APNs over HTTP/2 with an ES256 provider token.
//! - [`client`]: the HTTPS client the senders share (HTTP/2 where offered).
//! - [`outcome`]: a provider's answer, classified.
//! - [`secret`]: a key from a file or the environment, never shown.

pub mod apns;
pub mod client;
pub mod ece;
pub mod fcm;
pub mod outcome;
pub mod secret;
pub mod vapid;
pub mod web_push;
pub mod worker;

pub use worker::{Presence, Pusher, Senders, Tally};

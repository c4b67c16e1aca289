//! Outbox relays: rows a service committed in its own transactions, sent
//! through the Notify API exactly once and in order per key.
//!
//! - [`engine`]: the loop every outbox shares — lease keeper, fenced cursor,
//!   per-key ordered chains, retries — driven by a [`Feed`].
//! - [`publish`]: the `notify_outbox` feed (publishes in the JSON shape) and
//!   its settings; BetTracker's fights feed is the other one.
//! - [`caller`]: how a relay calls notify-svc.
//! - [`stats`]: the series every relay exports.

pub mod caller;
pub mod engine;
pub mod publish;
pub mod stats;

pub use caller::NotifyCaller;
pub use engine::{Feed, IN_FLIGHT, Pace, Relay, Sent, Stop};
pub use publish::{OutboxArgs, PublishFeed};
pub use stats::RelayStats;

/// `hostname-pid`: a relay's default name in the lease, unique per process
/// on a fleet of hosts.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

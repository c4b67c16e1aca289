//! BetTracker (docs/design.md §8): reads the fights outbox after its cursor and emits
//! every change through `EmitFightEvent`.
//!
//! - [`config`]: its settings ([`TrackerArgs`]) and [`TrackerConfig`].
//! - [`event`]: an outbox row → the typed fight event notify-svc receives.
//! - [`source`]: the outbox, overdue fights, the group's lease and cursor (Postgres or SQLite).
//! - [`tracker`]: the fights feed of the shared relay engine (`notify_relay`).
//! - [`metrics`]: what it did (`tracker_*` series) and its ops HTTP port.
//! - [`simulate`]: fights living their life at a steady rate (demos, benches).

pub mod config;
pub mod event;
pub mod metrics;
pub mod simulate;
pub mod source;
pub mod tracker;

pub use config::{LoopArgs, TrackerArgs, TrackerConfig};
pub use metrics::Stats;
pub use source::Source;
pub use tracker::run;

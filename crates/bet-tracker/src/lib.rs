//! BetTracker (DESIGN §8): reads the fights outbox after its cursor and emits
//! every change through `EmitFightEvent`.
//!
//! - [`event`]: an outbox row → the typed fight event notify-svc receives.

pub mod event;

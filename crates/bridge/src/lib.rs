//! The WebSocket bridge of the notify platform (DESIGN §5, §6).
//!
//! So far: [`protocol`], the client ↔ bridge wire types and the frame parser,
//! free of I/O and tested against DESIGN §5's sample frames; [`rate`], the
//! per-connection inbound rate limit; [`sequencer`], the gap-free seam
//! between replay and live delivery. The server (hyper upgrade,
//! tokio-tungstenite, BridgeLink) is the next step of its issue.

pub mod protocol;
pub mod rate;
pub mod sequencer;

//! Delivery: what happens to a publish once it is valid. The [`pipeline`]
//! group-commits it to the store; the [`router`] (who is where) sends each
//! committed message to the bridges holding its recipients, over
//! [`bounded`] queues; [`watch`] fans it out to `Watch` streams.

pub mod bounded;
pub mod pipeline;
pub mod router;
pub mod watch;

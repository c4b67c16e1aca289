//! notify-ingest: the ways in that producers already use, beside the Notify
//! API — SQS queues (raw messages in the publish JSON shape, or SNS
//! notifications delivered to a queue), each message committed exactly once
//! through the API (its SQS or SNS message id is the idempotency key); and
//! a service's transactional outbox (`notify_outbox`), relayed by the
//! shared engine of `notify_relay`.
//!
//! - [`config`]: the settings ([`SqsArgs`], which `notify up` shares, and
//!   [`IngestArgs`]) → [`IngestConfig`].
//! - [`envelope`]: an SQS message → the publish it asks for, or why not.
//! - [`consumer`]: the pollers, the retries, the deletes, the redrive; the
//!   outbox relay beside them.
//! - [`metrics`]: what it did (`ingest_*` series) and its ops HTTP port.

pub mod config;
pub mod consumer;
pub mod envelope;
pub mod metrics;

pub use config::{IngestArgs, IngestConfig, OutboxSource, SqsArgs};
pub use consumer::{run, sqs_client};
pub use metrics::Stats;

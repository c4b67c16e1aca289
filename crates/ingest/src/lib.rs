//! notify-ingest: the ways in that producers already use, beside the Notify
//! API — SQS queues (raw messages in the publish JSON shape, or SNS
//! notifications delivered to a queue), each message committed exactly once
//! through the API (its SQS or SNS message id is the idempotency key).
//!
//! - [`config`]: the settings ([`SqsArgs`], which `notify up` shares, and
//!   [`IngestArgs`]) → [`IngestConfig`].
//! - [`envelope`]: an SQS message → the publish it asks for, or why not.
//! - [`consumer`]: the pollers, the retries, the deletes, the redrive.
//! - [`metrics`]: what it did (`ingest_*` series) and its ops HTTP port.

pub mod config;
pub mod consumer;
pub mod envelope;
pub mod metrics;

pub use config::{IngestArgs, IngestConfig, SqsArgs};
pub use consumer::{run, sqs_client};
pub use metrics::Stats;

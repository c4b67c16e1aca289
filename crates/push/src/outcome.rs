//! What a provider's answer means for one device: sent, gone (forget the
//! device), try again later, or failed for good. Each provider's statuses
//! map here as its documentation says (see the senders).

use std::time::Duration;

/// A provider's answer to one push, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The address is no longer valid (unsubscribed, app removed): the
    /// device is forgotten.
    Gone,
    /// Rate limited or the provider is unwell: again after `after` (the
    /// provider's Retry-After when it sent one).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Refused for good (a bad request, our credentials): counted, logged,
    /// not retried.
    Failed {
        why: String,
    },
}

impl Outcome {
    /// The label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Gone => "gone",
            Self::Retry { .. } => "retry",
            Self::Failed { .. } => "failed",
        }
    }
}

/// A `Retry-After` header in seconds (the HTTP-date form is rare from push
/// providers and read as absent).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

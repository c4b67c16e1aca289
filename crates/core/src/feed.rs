//! Feeds — a user's inbox or a topic's log, each numbered by its own seq —
//! and where one stands: what the store reports, notify-svc answers a
//! bridge's registration with, and a bridge resumes a client from.

use std::collections::BTreeSet;

use crate::{Topic, UserId, inbox::Counts};

/// A seq-numbered stream: a user's inbox or a topic's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Feed {
    Inbox(UserId),
    Topic(Topic),
}

/// Where a feed stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The last seq handed out (0 if none).
    pub head_seq: u64,
    /// The inbox's cumulative ack (always 0 for a topic).
    pub acked_seq: u64,
    /// The oldest seq still kept (0 if nothing is): a resume from before it
    /// cannot be recovered in full (inbox TTL, topic log size or age).
    pub first_seq: u64,
    /// The user's server-side subscriptions (inbox feeds; empty for topics).
    pub subscriptions: BTreeSet<Topic>,
    /// The user's badge counts (inbox feeds; zero for topics).
    pub counts: Counts,
    /// What the user muted (inbox feeds; empty for topics).
    pub mutes: crate::inbox::Mutes,
}

impl Position {
    /// Whether everything after `after` up to the head is still kept.
    pub fn recovers(&self, after: u64) -> bool {
        after >= self.head_seq || (self.first_seq != 0 && self.first_seq <= after + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_is_recovered_when_nothing_after_it_is_gone() {
        let at = |head_seq, first_seq| Position {
            head_seq,
            first_seq,
            ..Position::default()
        };
        assert!(at(10, 1).recovers(0));
        assert!(at(10, 5).recovers(4));
        assert!(!at(10, 6).recovers(4));
        assert!(at(10, 0).recovers(10), "caught up");
        assert!(!at(10, 0).recovers(3), "nothing kept");
    }
}

//! The connection lifecycle log: what bridges report about their
//! connections (connected, disconnected, subscribed, unsubscribed), kept so
//! that a backend watching it can resume where it stopped.
//!
//! Every notify-svc replica hears every bridge, so each event reaches the
//! store once per replica. An event is named by its connection and an
//! ordinal (0 for connected, the bridge's change count for a subscribe or
//! unsubscribe, [`DISCONNECTED_ORDINAL`] for disconnected): the first copy
//! recorded wins, the others are dropped. Positions are gap-free and in
//! commit order; since each replica records what it heard in the order it
//! heard it, a connection's events are in the order they happened.

use std::{collections::HashSet, time::SystemTime};

use notify_core::{ConnectionId, UserId};

/// Ordinal of a connection's disconnected event (its last).
pub const DISCONNECTED_ORDINAL: u64 = i64::MAX as u64;

/// Close code of a connection whose end no bridge reported (RFC 6455:
/// closed abnormally, no close frame).
pub const CLOSE_ABNORMAL: u16 = 1006;
/// Reason of a disconnect recorded because its bridge was lost.
pub const REASON_BRIDGE_LOST: &str = "bridge_lost";
/// Reason of a disconnect recorded because a bridge re-linked without it:
/// it closed while no replica heard the bridge.
pub const REASON_CLOSED_UNHEARD: &str = "closed_unheard";

/// What happened to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    Connected,
    Disconnected {
        close_code: u16,
        reason: String,
    },
    /// `change` is the bridge's count of (un)subscribes, never 0.
    Subscribed {
        topic: String,
        change: u64,
    },
    Unsubscribed {
        topic: String,
        change: u64,
    },
}

impl Lifecycle {
    /// The stored kind (and the proto enum's value).
    pub fn kind(&self) -> i16 {
        match self {
            Self::Connected => 1,
            Self::Disconnected { .. } => 2,
            Self::Subscribed { .. } => 3,
            Self::Unsubscribed { .. } => 4,
        }
    }

    /// Builds one back from its stored columns; None for an unknown kind.
    pub fn from_columns(kind: i16, topic: String, close_code: u16, reason: String) -> Option<Self> {
        Some(match kind {
            1 => Self::Connected,
            2 => Self::Disconnected { close_code, reason },
            3 => Self::Subscribed { topic, change: 0 },
            4 => Self::Unsubscribed { topic, change: 0 },
            _ => return None,
        })
    }

    pub fn topic(&self) -> &str {
        match self {
            Self::Subscribed { topic, .. } | Self::Unsubscribed { topic, .. } => topic,
            _ => "",
        }
    }

    pub fn close(&self) -> (u16, &str) {
        match self {
            Self::Disconnected { close_code, reason } => (*close_code, reason),
            _ => (0, ""),
        }
    }
}

/// One event as a bridge reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub bridge_id: String,
    /// When the bridge (or, for a lost bridge, the replica) saw it.
    pub at: SystemTime,
    pub what: Lifecycle,
}

impl ConnectionEvent {
    /// With the connection id, the event's name.
    pub fn ordinal(&self) -> u64 {
        match &self.what {
            Lifecycle::Connected => 0,
            Lifecycle::Disconnected { .. } => DISCONNECTED_ORDINAL,
            Lifecycle::Subscribed { change, .. } | Lifecycle::Unsubscribed { change, .. } => {
                (*change).min(DISCONNECTED_ORDINAL - 1)
            }
        }
    }

    /// The disconnect of a registry row nobody reported closing.
    pub fn unreported_close(
        connection_id: ConnectionId,
        user_id: UserId,
        bridge_id: String,
        reason: &str,
    ) -> Self {
        Self {
            connection_id,
            user_id,
            bridge_id,
            at: SystemTime::now(),
            what: Lifecycle::Disconnected {
                close_code: CLOSE_ABNORMAL,
                reason: reason.to_owned(),
            },
        }
    }
}

/// An event with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: u64,
    pub event: ConnectionEvent,
}

/// A page of the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LifecyclePage {
    /// In position order.
    pub events: Vec<RecordedEvent>,
    /// The oldest position still kept (0 when the log is empty).
    pub oldest: u64,
    /// The last position handed out (0 if none).
    pub head: u64,
}

impl LifecyclePage {
    /// Whether events after `after` were removed by retention before this
    /// read: the reader missed them.
    pub fn missed_after(&self, after: u64) -> bool {
        if self.oldest == 0 {
            self.head > after
        } else {
            self.oldest > after + 1
        }
    }
}

/// The first copy of each event of a batch (a replica may hear one twice,
/// e.g. a connection in a Hello and in its own Opened), in batch order.
pub fn first_copies(events: &[ConnectionEvent]) -> Vec<&ConnectionEvent> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert((e.connection_id, e.ordinal())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: ConnectionId, what: Lifecycle) -> ConnectionEvent {
        ConnectionEvent {
            connection_id: id,
            user_id: UserId::parse("user_id", "ann").unwrap(),
            bridge_id: "b1".into(),
            at: SystemTime::now(),
            what,
        }
    }

    #[test]
    fn a_connection_has_one_connected_and_one_disconnected_and_numbered_changes() {
        let id = ConnectionId::new();
        let sub = |change| Lifecycle::Subscribed {
            topic: "room:x".into(),
            change,
        };
        let events = [
            event(id, Lifecycle::Connected),
            event(id, sub(7)),
            event(id, Lifecycle::Connected),
            event(id, sub(7)),
            event(id, sub(9)),
            event(
                id,
                Lifecycle::Disconnected {
                    close_code: 1000,
                    reason: String::new(),
                },
            ),
        ];
        let ordinals: Vec<u64> = first_copies(&events).iter().map(|e| e.ordinal()).collect();
        assert_eq!(ordinals, [0, 7, 9, DISCONNECTED_ORDINAL]);
    }

    #[test]
    fn missed_means_something_after_the_position_is_gone() {
        let page = |oldest, head| LifecyclePage {
            events: Vec::new(),
            oldest,
            head,
        };
        assert!(!page(0, 0).missed_after(0));
        assert!(page(0, 5).missed_after(3), "all swept, 4 and 5 gone");
        assert!(!page(0, 5).missed_after(5));
        assert!(!page(4, 9).missed_after(3));
        assert!(page(5, 9).missed_after(3), "4 is gone");
        assert!(!page(1, 9).missed_after(0));
    }
}

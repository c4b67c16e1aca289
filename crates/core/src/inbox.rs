//! The user's side of an inbox (docs/design.md §4.7): what they have seen,
//! read and archived, the counts their badges show, what they muted, the
//! pages of older items they scroll, and a producer's edits and
//! retractions. Stored with each inbox row as a [`State`] bit set, so it
//! keeps every guarantee the inbox has; a delivery ack stays a transport
//! position and is not part of it.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::{MessageId, ValidationError, ids::bounded_text};

/// Per-message state bits, as stored (`inbox.state`, both stores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct State(pub u16);

impl State {
    pub const SEEN: u16 = 1;
    pub const READ: u16 = 2;
    pub const ARCHIVED: u16 = 4;
    /// The user muted the message's event when it was committed: stored, in
    /// history, never pushed live nor counted.
    pub const MUTED: u16 = 8;
    /// The producer took it back: out of pages, replays and counts.
    pub const RETRACTED: u16 = 16;
    /// Bits that keep a message out of both counts.
    pub const UNCOUNTED: u16 = Self::ARCHIVED | Self::MUTED | Self::RETRACTED;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Whether the message counts as unseen (`unseen` badge).
    pub fn unseen(self) -> bool {
        self.0 & (Self::SEEN | Self::UNCOUNTED) == 0
    }

    /// Whether the message counts as unread.
    pub fn unread(self) -> bool {
        self.0 & (Self::READ | Self::UNCOUNTED) == 0
    }
}

/// What a mark does to the messages it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkKind {
    Seen,
    /// Read implies seen.
    Read,
    Archived,
    /// Unseen implies unread.
    Unseen,
    Unread,
    Unarchived,
}

impl MarkKind {
    pub const ALL: [Self; 6] = [
        Self::Seen,
        Self::Read,
        Self::Archived,
        Self::Unseen,
        Self::Unread,
        Self::Unarchived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Seen => "seen",
            Self::Read => "read",
            Self::Archived => "archived",
            Self::Unseen => "unseen",
            Self::Unread => "unread",
            Self::Unarchived => "unarchived",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ValidationError::BadChoice {
                field: "as",
                value: name.chars().take(64).collect(),
                choices: "seen, read, archived, unseen, unread, unarchived",
            })
    }

    /// The bits it sets and the bits it clears: a state becomes
    /// `(state | set) & !clear`, in Rust and in SQL alike.
    pub fn bits(self) -> (u16, u16) {
        match self {
            Self::Seen => (State::SEEN, 0),
            Self::Read => (State::SEEN | State::READ, 0),
            Self::Archived => (State::ARCHIVED, 0),
            Self::Unseen => (0, State::SEEN | State::READ),
            Self::Unread => (0, State::READ),
            Self::Unarchived => (0, State::ARCHIVED),
        }
    }

    pub fn apply(self, state: State) -> State {
        let (set, clear) = self.bits();
        State((state.0 | set) & !clear)
    }
}

/// Which messages a mark selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These seqs (deduplicated, ascending).
    Seqs(Vec<u64>),
    /// Every message with seq ≤ this ("mark all read").
    UpTo(u64),
}

/// A validated mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub kind: MarkKind,
    pub selection: Selection,
}

/// Most seqs one mark may list: a page or two of a client's list; "all up
/// to" covers the rest in one statement.
pub const MAX_MARK_SEQS: usize = 1_000;

impl Mark {
    /// Checks a mark of `seqs` or `up_to` (exactly one) as `kind`.
    pub fn new(
        kind: MarkKind,
        seqs: Option<&[u64]>,
        up_to: Option<u64>,
    ) -> Result<Self, ValidationError> {
        let selection = match (seqs, up_to) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ValidationError::OneOf {
                    fields: "seqs or up_to",
                });
            }
            (None, Some(0)) => return Err(ValidationError::Empty { field: "up_to" }),
            (None, Some(up_to)) => Selection::UpTo(up_to),
            (Some(seqs), None) => {
                if seqs.is_empty() {
                    return Err(ValidationError::Empty { field: "seqs" });
                }
                if seqs.len() > MAX_MARK_SEQS {
                    return Err(ValidationError::TooMany {
                        field: "seqs",
                        count: seqs.len(),
                        max: MAX_MARK_SEQS,
                    });
                }
                if seqs.contains(&0) {
                    return Err(ValidationError::Empty { field: "seq 0" });
                }
                let unique: BTreeSet<u64> = seqs.iter().copied().collect();
                Selection::Seqs(unique.into_iter().collect())
            }
        };
        Ok(Self { kind, selection })
    }
}

/// The badge numbers of one user. `version` grows with every change, so a
/// reader that sees two copies keeps the newer (two commits' deliveries may
/// cross on their way to a bridge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub unseen: u64,
    pub unread: u64,
    pub version: u64,
}

/// One event type's share of a user's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub event: String,
    pub unseen: u64,
    pub unread: u64,
}

/// A user's counts as kept, and per event type as their rows say, read in
/// one snapshot: the events' numbers add up to the totals. The totals are
/// kept live (every change moves them); the split is derived when asked,
/// so a publish pays nothing for it (docs/design.md §4.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakdown {
    pub counts: Counts,
    /// Events with anything unseen or unread, by name.
    pub events: Vec<EventCounts>,
}

/// What a mark did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// Messages whose state changed.
    pub changed: u64,
    /// Listed seqs that are not (or no longer) in the inbox: never
    /// published, expired or retracted. Nothing was done to them.
    pub missing: Vec<u64>,
    pub counts: Counts,
}

/// What a user muted. Muted events are stored (flagged, so history and a
/// later unmute show them) but never pushed live nor counted; muted
/// namespaces and events are not pushed live from topics either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutes {
    pub events: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
}

/// Most entries (events + namespaces) a user may mute: a settings screen,
/// not a filter language.
pub const MAX_MUTES: usize = 100;

impl Mutes {
    /// Checks lists as a client or service sends them.
    pub fn new(events: &[String], namespaces: &[String]) -> Result<Self, ValidationError> {
        let count = events.len() + namespaces.len();
        if count > MAX_MUTES {
            return Err(ValidationError::TooMany {
                field: "mutes",
                count,
                max: MAX_MUTES,
            });
        }
        for event in events {
            bounded_text("event", event, 128)?;
        }
        for namespace in namespaces {
            bounded_text("namespace", namespace, 64)?;
            if namespace.contains(':') {
                return Err(ValidationError::BadTopic {
                    topic: namespace.clone(),
                    why: "a namespace has no ':'",
                });
            }
        }
        Ok(Self {
            events: events.iter().cloned().collect(),
            namespaces: namespaces.iter().cloned().collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.namespaces.is_empty()
    }

    /// Whether a topic message of `event` on `namespace` is kept from live sockets.
    pub fn silences(&self, namespace: &str, event: &str) -> bool {
        self.namespaces.contains(namespace) || self.events.contains(event)
    }
}

/// Which archived state a page shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shelf {
    /// Not archived (the bell's list).
    #[default]
    Inbox,
    /// Archived only.
    Archived,
    /// Both.
    All,
}

impl Shelf {
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        match name {
            "" | "inbox" => Ok(Self::Inbox),
            "archived" => Ok(Self::Archived),
            "all" => Ok(Self::All),
            other => Err(ValidationError::BadChoice {
                field: "show",
                value: other.chars().take(64).collect(),
                choices: "inbox, archived, all",
            }),
        }
    }
}

/// Page size when none is asked.
pub const DEFAULT_PAGE: u32 = 20;
/// Largest page: a screenful or two; deeper reads page on.
pub const MAX_PAGE: u32 = 100;
/// Most event types one page filter may name.
pub const MAX_PAGE_EVENTS: usize = 20;

/// A request for a page of older items, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Items with seq < before; None: from the newest.
    pub before: Option<u64>,
    pub limit: u32,
    pub unread_only: bool,
    pub shelf: Shelf,
    /// Only these events (empty: all).
    pub events: Vec<String>,
}

impl PageQuery {
    /// Checks a page request; `limit` 0 means [`DEFAULT_PAGE`].
    pub fn new(
        before: Option<u64>,
        limit: u32,
        unread_only: bool,
        shelf: Shelf,
        events: &[String],
    ) -> Result<Self, ValidationError> {
        if limit > MAX_PAGE {
            return Err(ValidationError::TooMany {
                field: "limit",
                count: limit as usize,
                max: MAX_PAGE as usize,
            });
        }
        if events.len() > MAX_PAGE_EVENTS {
            return Err(ValidationError::TooMany {
                field: "events",
                count: events.len(),
                max: MAX_PAGE_EVENTS,
            });
        }
        for event in events {
            bounded_text("events", event, 128)?;
        }
        Ok(Self {
            before: before.filter(|&b| b > 0),
            limit: if limit == 0 { DEFAULT_PAGE } else { limit },
            unread_only,
            shelf,
            events: events.to_vec(),
        })
    }
}

/// One inbox message with its state, as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: u64,
    pub message_id: MessageId,
    pub event: String,
    /// JSON text (the current version after an edit).
    pub data: String,
    pub ts: SystemTime,
    pub state: State,
    /// When the producer last edited it.
    pub edited: Option<SystemTime>,
}

/// A page of the inbox, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// Pass as `before` for the next page; None when there is no older item.
    pub next_before: Option<u64>,
    /// The oldest seq still kept (0 if none). Seqs below it were removed by
    /// retention (TTL), so a page that ends there ends the inbox.
    pub first_seq: u64,
    /// The page reached the oldest kept item and older ones were removed by
    /// retention: say so instead of "no more".
    pub older_expired: bool,
    pub counts: Counts,
}

/// A producer's change to a published inbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// New data (and optionally a new event); readers get this version.
    Update { event: Option<String>, data: String },
    /// Gone from pages, replays and counts; live sockets are told.
    Retract,
}

/// One inbox a revision changed: the user, the message's seq there and the
/// user's counts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revised {
    pub user: crate::UserId,
    pub seq: u64,
    pub counts: Counts,
    /// The message as it is now (None when retracted).
    pub item: Option<Item>,
}

/// What a revision found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionOutcome {
    /// Every inbox holding it, changed.
    Done(Vec<Revised>),
    /// No such inbox message (never published, expired or retracted).
    NotFound,
    /// Published by another caller.
    NotYours { caller: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_implies_seen_and_unseen_implies_unread() {
        let fresh = State::default();
        assert!(fresh.unseen() && fresh.unread());
        let read = MarkKind::Read.apply(fresh);
        assert!(!read.unseen() && !read.unread());
        let unseen = MarkKind::Unseen.apply(read);
        assert!(unseen.unseen() && unseen.unread());
        let unread = MarkKind::Unread.apply(read);
        assert!(!unread.unseen() && unread.unread());
    }

    #[test]
    fn archived_muted_and_retracted_messages_count_nowhere() {
        for bit in [State::ARCHIVED, State::MUTED, State::RETRACTED] {
            let s = State(bit);
            assert!(!s.unseen() && !s.unread(), "bit {bit}");
        }
        let back = MarkKind::Unarchived.apply(MarkKind::Archived.apply(State::default()));
        assert!(back.unseen() && back.unread());
    }

    #[test]
    fn marks_check_their_selection() {
        assert!(Mark::new(MarkKind::Read, None, None).is_err());
        assert!(Mark::new(MarkKind::Read, Some(&[1]), Some(3)).is_err());
        assert!(Mark::new(MarkKind::Read, Some(&[]), None).is_err());
        assert!(Mark::new(MarkKind::Read, Some(&[0]), None).is_err());
        assert!(Mark::new(MarkKind::Read, None, Some(0)).is_err());
        let many = vec![1; MAX_MARK_SEQS + 1];
        assert!(Mark::new(MarkKind::Read, Some(&many), None).is_err());
        let m = Mark::new(MarkKind::Read, Some(&[5, 2, 5]), None).unwrap();
        assert_eq!(m.selection, Selection::Seqs(vec![2, 5]));
        assert!(MarkKind::parse("read").is_ok());
        assert!(MarkKind::parse("reed").is_err());
    }

    #[test]
    fn pages_and_mutes_are_bounded() {
        assert!(PageQuery::new(None, MAX_PAGE + 1, false, Shelf::Inbox, &[]).is_err());
        assert_eq!(
            PageQuery::new(Some(0), 0, false, Shelf::Inbox, &[])
                .unwrap()
                .limit,
            DEFAULT_PAGE
        );
        let many: Vec<String> = (0..=MAX_MUTES).map(|i| format!("e{i}")).collect();
        assert!(Mutes::new(&many, &[]).is_err());
        assert!(Mutes::new(&[], &["fights:live".into()]).is_err());
        let m = Mutes::new(&["fight_updated".into()], &["room".into()]).unwrap();
        assert!(m.silences("room", "x") && m.silences("fights", "fight_updated"));
        assert!(!m.silences("fights", "fight_created"));
    }
}

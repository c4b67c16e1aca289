//! The backend-neutral half of a group commit.
//!
//! A batch is numbered in three steps that every backend shares:
//! 1. [`in_batch_origins`]: an item whose (caller, idempotency key) already
//!    appeared earlier in the same batch is a duplicate of that item.
//! 2. [`SeqDemand`]: how many seqs each user and topic needs for the items that
//!    are really new; the backend reserves them by bumping the heads.
//! 3. [`SeqDemand::assign`]: hands each item its seqs in batch order from the
//!    reserved ranges.
//!
//! What to write then is shared too: [`inbox_rows`] and [`shared_payloads`]
//! for inboxes, [`topic_appends`] for topic logs (rows and trims), and
//! [`results`] for the answers, so both backends store and answer alike.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::SystemTime,
};

use notify_core::{MessageId, Target, UserId, inbox::Counts};

use crate::{Committed, PublishItem, Recipient};

/// Where an item's result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// First of its key in the batch (or no key): stored unless the key is
    /// already in the database.
    Fresh,
    /// Repeats the key of this earlier item of the batch.
    SameAs(usize),
}

/// Marks repeats of a (caller, key) pair within one batch.
pub fn in_batch_origins(items: &[PublishItem]) -> Vec<Origin> {
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match &item.publish.idempotency_key {
            Some(key) => match first.entry((item.caller.as_str(), key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => Origin::SameAs(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    Origin::Fresh
                }
            },
            None => Origin::Fresh,
        })
        .collect()
}

/// An idempotency key found already stored: the original's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub message_id: MessageId,
    /// The target's seq (0 for user lists and broadcast).
    pub seq: u64,
    pub ts: SystemTime,
}

/// The time a batch is stamped with, whole microseconds: what both backends
/// can store, so a publish's answer and its history entry carry one time.
pub fn commit_time() -> SystemTime {
    let now = SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64),
        Err(_) => now,
    }
}

/// Which items are stored: first of their key in the batch and not already
/// in the database.
pub fn new_items(origins: &[Origin], stored: &HashMap<usize, StoredKey>) -> Vec<bool> {
    (0..origins.len())
        .map(|i| origins[i] == Origin::Fresh && !stored.contains_key(&i))
        .collect()
}

/// The keyed items that are stored, sorted by (caller, key): backends write
/// keys in this order so concurrent batches lock them in one order.
pub fn new_keys(items: &[PublishItem], new: &[bool]) -> Vec<usize> {
    let mut keyed: Vec<usize> = (0..items.len())
        .filter(|&i| new[i] && items[i].publish.idempotency_key.is_some())
        .collect();
    keyed.sort_by_key(|&i| key_of(&items[i]));
    keyed
}

/// The caller and key of an item (key empty if it has none).
pub fn key_of(item: &PublishItem) -> (&str, &str) {
    (
        item.caller.as_str(),
        item.publish.idempotency_key.as_deref().unwrap_or_default(),
    )
}

/// The seqs a batch needs, per user and per topic. Sorted maps: backends lock
/// the heads in this order, so concurrent batches never deadlock.
#[derive(Debug, Default)]
pub struct SeqDemand<'a> {
    pub users: BTreeMap<&'a str, u64>,
    pub topics: BTreeMap<&'a str, u64>,
}

/// The seqs given to one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// User or topic seq; 0 for user lists and broadcast.
    pub seq: u64,
    /// For user lists: every user's seq.
    pub inbox_seqs: Vec<(UserId, u64)>,
}

impl<'a> SeqDemand<'a> {
    /// Counts the seqs needed by the items marked `new`.
    pub fn of(items: &'a [PublishItem], new: &[bool]) -> Self {
        let mut demand = Self::default();
        for (item, _) in items.iter().zip(new).filter(|(_, new)| **new) {
            match &item.publish.target {
                Target::User(user) => *demand.users.entry(user.as_str()).or_default() += 1,
                Target::Users(users) => {
                    for user in users {
                        *demand.users.entry(user.as_str()).or_default() += 1;
                    }
                }
                Target::Topic(topic) => *demand.topics.entry(topic.as_str()).or_default() += 1,
                Target::Broadcast => {}
            }
        }
        demand
    }

    /// Hands out seqs in batch order, given each head's new `last_seq` after
    /// the backend added this demand to it. Items not `new` get the default.
    pub fn assign(
        &self,
        items: &[PublishItem],
        new: &[bool],
        user_last: &HashMap<String, u64>,
        topic_last: &HashMap<String, u64>,
    ) -> Vec<Assigned> {
        // Next seq to hand out per head: first of the reserved range.
        let next_of = |demand: &BTreeMap<&'a str, u64>, last: &HashMap<String, u64>| {
            demand
                .iter()
                .map(|(k, n)| (k.to_string(), last.get(*k).copied().unwrap_or(*n) + 1 - n))
                .collect::<HashMap<String, u64>>()
        };
        let mut next_user = next_of(&self.users, user_last);
        let mut next_topic = next_of(&self.topics, topic_last);
        let take = |next: &mut HashMap<String, u64>, key: &str| {
            let slot = next.get_mut(key).expect("demand covers every key");
            *slot += 1;
            *slot - 1
        };
        items
            .iter()
            .zip(new)
            .map(|(item, new)| {
                if !new {
                    return Assigned::default();
                }
                match &item.publish.target {
                    Target::User(user) => Assigned {
                        seq: take(&mut next_user, user.as_str()),
                        inbox_seqs: Vec::new(),
                    },
                    Target::Users(users) => Assigned {
                        seq: 0,
                        inbox_seqs: users
                            .iter()
                            .map(|u| (u.clone(), take(&mut next_user, u.as_str())))
                            .collect(),
                    },
                    Target::Topic(topic) => Assigned {
                        seq: take(&mut next_topic, topic.as_str()),
                        inbox_seqs: Vec::new(),
                    },
                    Target::Broadcast => Assigned::default(),
                }
            })
            .collect()
    }
}

/// One inbox entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow<'a> {
    pub user: &'a str,
    pub seq: u64,
    /// The item it comes from.
    pub item: usize,
    /// A single-user message carries its payload in the row; a user list's
    /// rows point at the payload stored once in `messages`.
    pub inline: bool,
}

/// The inbox entries that queue a push: their item asks for one.
pub fn push_rows<'a>(
    items: &'a [PublishItem],
    new: &[bool],
    assigned: &'a [Assigned],
) -> Vec<InboxRow<'a>> {
    // Most batches ask for no push: no rows built for them.
    if items.iter().all(|i| i.push.is_none()) {
        return Vec::new();
    }
    let pushes = |row: &InboxRow<'_>| {
        items[row.item]
            .push
            .as_ref()
            .is_some_and(|p| p.when != notify_core::push::When::Never)
    };
    inbox_rows(items, new, assigned)
        .into_iter()
        .filter(pushes)
        .collect()
}

/// The inbox entries of the new items, in batch order.
pub fn inbox_rows<'a>(
    items: &'a [PublishItem],
    new: &[bool],
    assigned: &'a [Assigned],
) -> Vec<InboxRow<'a>> {
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate().filter(|(i, _)| new[*i]) {
        match &item.publish.target {
            Target::User(user) => rows.push(InboxRow {
                user: user.as_str(),
                seq: assigned[i].seq,
                item: i,
                inline: true,
            }),
            Target::Users(_) => rows.extend(assigned[i].inbox_seqs.iter().map(|(u, s)| InboxRow {
                user: u.as_str(),
                seq: *s,
                item: i,
                inline: false,
            })),
            Target::Topic(_) | Target::Broadcast => {}
        }
    }
    rows
}

/// The new items whose payload is stored once for many inboxes (user lists).
pub fn shared_payloads(items: &[PublishItem], new: &[bool]) -> Vec<usize> {
    (0..items.len())
        .filter(|&i| new[i] && matches!(items[i].publish.target, Target::Users(_)))
        .collect()
}

/// What a batch appends to topic logs and what it pushes out of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TopicAppends<'a> {
    /// Items to append. Items that the same batch would push out of their
    /// log again are left out.
    pub rows: Vec<usize>,
    /// Per topic, the seqs this batch pushed out of the window: delete
    /// `after < seq <= upto`. Rows below that range are gone already (or,
    /// after a log's limit was lowered, left to the age sweeper).
    pub trims: Vec<Trim<'a>>,
}

/// A range of a topic log to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trim<'a> {
    pub topic: &'a str,
    pub after: u64,
    pub upto: u64,
}

/// Each topic's log length in this batch: its first new item's (at least 1).
pub fn log_lengths<'a>(items: &'a [PublishItem], new: &[bool]) -> BTreeMap<&'a str, u64> {
    let mut lengths = BTreeMap::new();
    for (item, _) in items.iter().zip(new).filter(|(_, new)| **new) {
        if let Target::Topic(topic) = &item.publish.target {
            lengths
                .entry(topic.as_str())
                .or_insert(u64::from(item.log_max_len.max(1)));
        }
    }
    lengths
}

/// The topic log writes of the new items, given each topic's last seq after
/// the bump.
pub fn topic_appends<'a>(
    items: &'a [PublishItem],
    new: &[bool],
    assigned: &[Assigned],
    topic_last: &HashMap<String, u64>,
) -> TopicAppends<'a> {
    let lengths = log_lengths(items, new);
    // Per topic: (floor = highest seq that falls out of the log, new messages).
    let mut windows: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate().filter(|(i, _)| new[*i]) {
        let Target::Topic(topic) = &item.publish.target else {
            continue;
        };
        let last = topic_last.get(topic.as_str()).copied().unwrap_or(0);
        let floor = last.saturating_sub(lengths[topic.as_str()]);
        windows.entry(topic.as_str()).or_insert((floor, 0)).1 += 1;
        if assigned[i].seq > floor {
            rows.push(i);
        }
    }
    let trims = windows
        .into_iter()
        .filter(|(_, (floor, _))| *floor > 0)
        .map(|(topic, (floor, new))| Trim {
            topic,
            after: floor.saturating_sub(new),
            upto: floor,
        })
        .collect();
    TopicAppends { rows, trims }
}

/// What a batch's inbox writes came to for the users: each head's counts
/// after it, and the rows stored muted (user, seq).
#[derive(Debug, Default)]
pub struct InboxSide {
    pub counts: HashMap<String, Counts>,
    pub muted: HashSet<(String, u64)>,
}

impl InboxSide {
    fn recipient(&self, user: &UserId, seq: u64) -> Recipient {
        Recipient {
            user: user.clone(),
            muted: self.muted.contains(&(user.as_str().to_owned(), seq)),
            counts: self.counts.get(user.as_str()).copied().unwrap_or_default(),
        }
    }
}

/// The answers of a committed batch, in item order: new items with their
/// seqs, repeats of a stored key with the original's answer, repeats within
/// the batch with their first item's.
pub fn results(
    items: &[PublishItem],
    origins: &[Origin],
    stored: &HashMap<usize, StoredKey>,
    assigned: &[Assigned],
    side: &InboxSide,
    now: SystemTime,
) -> Vec<Committed> {
    let mut results: Vec<Committed> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let result = match origins[i] {
            Origin::SameAs(first) => Committed {
                duplicate: true,
                inbox_seqs: Vec::new(),
                recipients: Vec::new(),
                ..results[first].clone()
            },
            Origin::Fresh => match stored.get(&i) {
                Some(original) => Committed {
                    message_id: original.message_id,
                    seq: original.seq,
                    duplicate: true,
                    inbox_seqs: Vec::new(),
                    ts: original.ts,
                    recipients: Vec::new(),
                },
                None => Committed {
                    message_id: item.message_id,
                    seq: assigned[i].seq,
                    duplicate: false,
                    inbox_seqs: assigned[i].inbox_seqs.clone(),
                    ts: now,
                    recipients: match &item.publish.target {
                        Target::User(user) => vec![side.recipient(user, assigned[i].seq)],
                        Target::Users(_) => assigned[i]
                            .inbox_seqs
                            .iter()
                            .map(|(user, seq)| side.recipient(user, *seq))
                            .collect(),
                        Target::Topic(_) | Target::Broadcast => Vec::new(),
                    },
                },
            },
        };
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use notify_core::{MessageId, Publish, Topic};

    use super::*;

    fn item(caller: &str, target: Target, key: Option<&str>) -> PublishItem {
        PublishItem {
            caller: caller.into(),
            message_id: MessageId::new(),
            publish: Publish {
                target,
                event: "e".into(),
                data: "{}".into(),
                idempotency_key: key.map(String::from),
                ttl: Duration::from_secs(60),
            },
            log_max_len: 100,
            push: None,
        }
    }

    fn user(name: &str) -> UserId {
        UserId::parse("user", name).unwrap()
    }

    #[test]
    fn repeats_of_a_key_point_at_the_first_per_caller() {
        let items = [
            item("a", Target::Broadcast, Some("k")),
            item("b", Target::Broadcast, Some("k")),
            item("a", Target::Broadcast, Some("k")),
            item("a", Target::Broadcast, None),
        ];
        assert_eq!(
            in_batch_origins(&items),
            [
                Origin::Fresh,
                Origin::Fresh,
                Origin::SameAs(0),
                Origin::Fresh
            ]
        );
    }

    #[test]
    fn seqs_follow_batch_order_from_the_reserved_range() {
        let topic = Topic::parse("room:x").unwrap();
        let items = [
            item("c", Target::User(user("u")), None),
            item("c", Target::Users(vec![user("v"), user("u")]), None),
            item("c", Target::Topic(topic.clone()), None),
            item("c", Target::User(user("u")), None),
        ];
        let new = [true, true, true, false];
        let demand = SeqDemand::of(&items, &new);
        assert_eq!(demand.users.get("u"), Some(&2));
        // Heads after the bump: u had 10 → 12, v is new → 1, topic had 4 → 5.
        let users = HashMap::from([("u".to_string(), 12), ("v".to_string(), 1)]);
        let topics = HashMap::from([("room:x".to_string(), 5)]);
        let got = demand.assign(&items, &new, &users, &topics);
        assert_eq!(got[0].seq, 11);
        assert_eq!(got[1].inbox_seqs, vec![(user("v"), 1), (user("u"), 12)]);
        assert_eq!(got[2].seq, 5);
        assert_eq!(got[3], Assigned::default());
    }

    #[test]
    fn a_batch_longer_than_the_log_writes_only_what_it_keeps() {
        let topic = Topic::parse("room:x").unwrap();
        let mut items: Vec<PublishItem> = (0..5)
            .map(|_| item("c", Target::Topic(topic.clone()), None))
            .collect();
        for i in &mut items {
            i.log_max_len = 3;
        }
        let new = [true; 5];
        // The log was at 4 (seqs 2..=4 kept); the batch takes 5..=9.
        let demand = SeqDemand::of(&items, &new);
        let last = HashMap::from([("room:x".to_string(), 9)]);
        let assigned = demand.assign(&items, &new, &HashMap::new(), &last);
        let appends = topic_appends(&items, &new, &assigned, &last);
        assert_eq!(appends.rows, [2, 3, 4], "seqs 7, 8, 9");
        assert_eq!(
            appends.trims,
            [Trim {
                topic: "room:x",
                after: 1,
                upto: 6
            }]
        );
    }
}

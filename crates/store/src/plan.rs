//! The backend-neutral half of a group commit.
//!
//! A batch is numbered in three steps that every backend shares:
//! 1. [`in_batch_origins`]: an item whose (caller, idempotency key) already
//!    appeared earlier in the same batch is a duplicate of that item.
//! 2. [`SeqDemand`]: how many seqs each user and topic needs for the items that
//!    are really new; the backend reserves them by bumping the heads.
//! 3. [`SeqDemand::assign`]: hands each item its seqs in batch order from the
//!    reserved ranges.

use std::collections::{BTreeMap, HashMap};

use notify_core::{Target, UserId};

use crate::PublishItem;

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
}

//! The router: which bridges hold which users and topics, and the delivery
//! of committed messages to them (docs/design.md §6).
//!
//! Tables are rebuilt from what bridges tell over BridgeLink: their Hello
//! (full state) and every change after. A topic message goes once to each
//! bridge with a subscriber; the bridge fans it out. Critical sections are
//! short and synchronous; sending never waits (a bridge whose queue is full
//! misses the live copy and its clients catch up from the inbox by seq).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use notify_core::{ConnectionId, Target, Topic, UserId};
use notify_proto::convert::counts;
use notify_proto::v1 as pb;
use notify_store::{Committed, PublishItem, Recipient};
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;

use crate::delivery::bounded;

/// A bridge's down stream: deliveries, kicks, answers; bounded in messages
/// and bytes (`NOTIFY_BRIDGE_QUEUE_BYTES`), past which live copies drop.
pub type DownSender = bounded::Sender<pb::BridgeDown>;

/// Deliveries queued per bridge before live copies are dropped.
pub const BRIDGE_QUEUE: usize = 65_536;

/// A down message's size, as the bound counts it.
pub fn down_len(down: &pb::BridgeDown) -> usize {
    down.encoded_len()
}

/// Where one connection lives.
struct Conn {
    bridge: String,
    user: UserId,
    topics: HashSet<Topic>,
}

struct Bridge {
    tx: DownSender,
    /// Distinguishes an attach from the one it replaced.
    generation: u64,
}

#[derive(Default)]
struct Tables {
    bridges: HashMap<String, Bridge>,
    conns: HashMap<ConnectionId, Conn>,
    /// user → bridge → connections of that user there
    users: HashMap<UserId, HashMap<String, u32>>,
    /// topic → bridge → subscribed connections there
    topics: HashMap<Topic, HashMap<String, u32>>,
    next_generation: u64,
}

fn add(map: &mut HashMap<String, u32>, bridge: &str) {
    *map.entry(bridge.to_owned()).or_default() += 1;
}

fn remove<K: std::hash::Hash + Eq + Clone>(
    index: &mut HashMap<K, HashMap<String, u32>>,
    key: &K,
    bridge: &str,
) {
    if let Some(per_bridge) = index.get_mut(key) {
        if let Some(n) = per_bridge.get_mut(bridge) {
            *n -= 1;
            if *n == 0 {
                per_bridge.remove(bridge);
            }
        }
        if per_bridge.is_empty() {
            index.remove(key);
        }
    }
}

impl Tables {
    fn close(&mut self, id: ConnectionId) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        remove(&mut self.users, &conn.user, &conn.bridge);
        for topic in &conn.topics {
            remove(&mut self.topics, topic, &conn.bridge);
        }
        Some(conn)
    }
}

/// Routing tables and bridge senders; cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    tables: Arc<Mutex<Tables>>,
    counts: Arc<RouteCounts>,
}

/// What routing did (`notify_deliveries`, `notify_delivery_drops`).
#[derive(Default)]
pub struct RouteCounts {
    /// Deliveries queued to a bridge link.
    pub sent: Counter,
    /// Live copies dropped because a bridge's queue was full (its clients
    /// catch up from the store).
    pub dropped: Counter,
}

impl Router {
    pub fn counts(&self) -> &RouteCounts {
        &self.counts
    }

    /// Connections each attached bridge reported, by bridge id.
    pub fn connections_by_bridge(&self) -> Vec<(String, u64)> {
        let t = self.tables.lock().expect("router lock");
        let mut by_bridge: HashMap<&str, u64> = t.bridges.keys().map(|b| (b.as_str(), 0)).collect();
        for conn in t.conns.values() {
            *by_bridge.entry(conn.bridge.as_str()).or_default() += 1;
        }
        let mut out: Vec<(String, u64)> = by_bridge
            .into_iter()
            .map(|(b, n)| (b.to_owned(), n))
            .collect();
        out.sort();
        out
    }

    /// Registers a bridge's stream, replacing an older one of the same id and
    /// forgetting the connections that one reported. Returns the generation to
    /// pass to [`detach`](Self::detach).
    pub fn attach(&self, bridge: &str, tx: DownSender) -> u64 {
        let mut t = self.tables.lock().expect("router lock");
        Self::forget_bridge(&mut t, bridge);
        t.next_generation += 1;
        let generation = t.next_generation;
        t.bridges
            .insert(bridge.to_owned(), Bridge { tx, generation });
        generation
    }

    /// Forgets a bridge whose stream ended, unless a newer attach replaced it;
    /// returns whether it did.
    pub fn detach(&self, bridge: &str, generation: u64) -> bool {
        let mut t = self.tables.lock().expect("router lock");
        if t.bridges
            .get(bridge)
            .is_some_and(|b| b.generation == generation)
        {
            t.bridges.remove(bridge);
            Self::forget_bridge(&mut t, bridge);
            true
        } else {
            false
        }
    }

    fn forget_bridge(t: &mut Tables, bridge: &str) {
        let gone: Vec<ConnectionId> = t
            .conns
            .iter()
            .filter(|(_, c)| c.bridge == bridge)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            t.close(id);
        }
    }

    /// A connection opened on `bridge`, with the topics it already follows.
    pub fn open(&self, bridge: &str, id: ConnectionId, user: UserId, topics: Vec<Topic>) {
        let mut t = self.tables.lock().expect("router lock");
        t.close(id);
        add(t.users.entry(user.clone()).or_default(), bridge);
        for topic in &topics {
            add(t.topics.entry(topic.clone()).or_default(), bridge);
        }
        let conn = Conn {
            bridge: bridge.to_owned(),
            user,
            topics: topics.into_iter().collect(),
        };
        t.conns.insert(id, conn);
    }

    /// A connection closed; returns its user if it was known.
    pub fn close(&self, id: ConnectionId) -> Option<UserId> {
        let mut t = self.tables.lock().expect("router lock");
        t.close(id).map(|c| c.user)
    }

    /// Subscribes a connection; returns its user if it is known.
    pub fn subscribe(&self, id: ConnectionId, topic: Topic) -> Option<UserId> {
        let mut t = self.tables.lock().expect("router lock");
        let conn = t.conns.get_mut(&id)?;
        let user = conn.user.clone();
        if conn.topics.insert(topic.clone()) {
            let bridge = conn.bridge.clone();
            add(t.topics.entry(topic).or_default(), &bridge);
        }
        Some(user)
    }

    /// Unsubscribes a connection; returns its user if it is known.
    pub fn unsubscribe(&self, id: ConnectionId, topic: &Topic) -> Option<UserId> {
        let mut t = self.tables.lock().expect("router lock");
        let conn = t.conns.get_mut(&id)?;
        let user = conn.user.clone();
        if conn.topics.remove(topic) {
            let bridge = conn.bridge.clone();
            remove(&mut t.topics, topic, &bridge);
        }
        Some(user)
    }

    /// The bridges attached here now.
    pub fn bridges(&self) -> Vec<String> {
        let t = self.tables.lock().expect("router lock");
        t.bridges.keys().cloned().collect()
    }

    /// Tells every bridge holding connections of `user` that a server-side
    /// subscription to `topic` began (after `after_seq`) or ended; returns
    /// how many of the user's connections were told.
    pub fn server_subscription(
        &self,
        user: &UserId,
        topic: &Topic,
        subscribed: bool,
        after_seq: u64,
    ) -> u32 {
        let t = self.tables.lock().expect("router lock");
        let mut told = 0;
        for (bridge, n) in t.users.get(user).into_iter().flatten() {
            let Some(b) = t.bridges.get(bridge) else {
                continue;
            };
            let change = pb::ServerSubscription {
                user_id: user.to_string(),
                topic: topic.to_string(),
                subscribed,
                after_seq,
            };
            // A bridge this far behind is being replaced; its sockets
            // reconnect and read the stored subscriptions at their welcome.
            if b.tx
                .try_send(down(pb::bridge_down::Msg::Subscription(change)))
                .is_ok()
            {
                told += n;
            }
        }
        told
    }

    /// Live connections following `topic`, on every attached bridge.
    pub fn topic_connections(&self, topic: &Topic) -> u64 {
        let t = self.tables.lock().expect("router lock");
        t.topics.get(topic).map_or(0, |per_bridge| {
            per_bridge.values().map(|n| u64::from(*n)).sum()
        })
    }

    /// The user's live connections known here.
    pub fn connections_of(&self, user: &UserId) -> Vec<ConnectionId> {
        let t = self.tables.lock().expect("router lock");
        t.conns
            .iter()
            .filter(|(_, c)| &c.user == user)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Which of `ids` are live on an attached bridge.
    pub fn connections_of_ids(&self, ids: &[ConnectionId]) -> Vec<ConnectionId> {
        let t = self.tables.lock().expect("router lock");
        ids.iter()
            .copied()
            .filter(|id| t.conns.contains_key(id))
            .collect()
    }

    /// Tells the bridges holding these connections to close them; returns how
    /// many were found on an attached bridge.
    pub fn kick(&self, ids: &[ConnectionId], close_code: u32, reason: &str) -> u32 {
        let t = self.tables.lock().expect("router lock");
        let mut per_bridge: HashMap<&str, Vec<String>> = HashMap::new();
        for id in ids {
            if let Some(conn) = t.conns.get(id) {
                per_bridge
                    .entry(&conn.bridge)
                    .or_default()
                    .push(id.to_string());
            }
        }
        let mut kicked = 0;
        for (bridge, connection_ids) in per_bridge {
            let Some(b) = t.bridges.get(bridge) else {
                continue;
            };
            let n = connection_ids.len() as u32;
            let kick = pb::Kick {
                connection_ids,
                close_code,
                reason: reason.to_owned(),
            };
            if b.tx
                .try_send(down(pb::bridge_down::Msg::Kick(kick)))
                .is_ok()
            {
                kicked += n;
            }
        }
        kicked
    }

    /// Sends `message` to the one connection `id` (not stored: a Publish to
    /// a connection_id); false when no bridge holds it, or its link queue is
    /// full.
    pub fn to_connection(
        &self,
        id: &ConnectionId,
        message: pb::StoredMessage,
        trace_parent: String,
    ) -> bool {
        let t = self.tables.lock().expect("router lock");
        let Some(bridge) = t.conns.get(id).and_then(|c| t.bridges.get(&c.bridge)) else {
            return false;
        };
        let delivery = pb::Delivery {
            message: Some(message),
            exclude_connection_id: String::new(),
            trace_parent,
            connection_id: id.to_string(),
            counts: None,
        };
        let sent = bridge
            .tx
            .try_send(down(pb::bridge_down::Msg::Delivery(delivery)))
            .is_ok();
        if sent {
            self.counts.sent.inc();
        } else {
            self.counts.dropped.inc();
        }
        sent
    }

    /// Tells every bridge holding a connection of `user` of a change to
    /// the user's side of the inbox; returns how many live connections that
    /// reaches. Like a live copy, it is dropped for a bridge whose queue is
    /// full (the next change or a reconnect brings counts up to date).
    pub fn inbox_change(&self, user: &UserId, change: pb::InboxChange) -> u32 {
        let t = self.tables.lock().expect("router lock");
        let mut reached = 0;
        for (bridge, n) in t.users.get(user).into_iter().flatten() {
            let Some(b) = t.bridges.get(bridge) else {
                continue;
            };
            let msg = down(pb::bridge_down::Msg::Inbox(change.clone()));
            if b.tx.try_send(msg).is_ok() {
                reached += n;
            } else {
                self.counts.dropped.inc();
            }
        }
        reached
    }

    /// Sends a committed batch to the bridges that need it; returns, per item,
    /// how many live connections it reached.
    pub fn deliver(
        &self,
        items: &[PublishItem],
        committed: &[Committed],
        exclude: &HashMap<usize, ConnectionId>,
        traces: &HashMap<usize, String>,
    ) -> Vec<u32> {
        let t = self.tables.lock().expect("router lock");
        if t.bridges.is_empty() {
            return vec![0; items.len()];
        }
        let mut reached = Vec::with_capacity(items.len());
        for (i, (item, done)) in items.iter().zip(committed).enumerate() {
            if done.duplicate {
                reached.push(0);
                continue;
            }
            let trace_parent = traces.get(&i).cloned().unwrap_or_default();
            reached.push(self.deliver_one(&t, item, done, exclude.get(&i), trace_parent));
        }
        reached
    }

    /// Sends one committed message (not to `exclude`, its sender's socket)
    /// to every bridge holding a recipient; returns how many live
    /// connections it reached.
    fn deliver_one(
        &self,
        t: &Tables,
        item: &PublishItem,
        done: &Committed,
        exclude: Option<&ConnectionId>,
        trace_parent: String,
    ) -> u32 {
        let excluded = exclude.map(ToString::to_string).unwrap_or_default();
        let message = |user: Option<&UserId>, topic: Option<&Topic>, seq: u64| pb::StoredMessage {
            message_id: done.message_id.to_string(),
            seq,
            topic: topic.map(ToString::to_string).unwrap_or_default(),
            user_id: user.map(ToString::to_string).unwrap_or_default(),
            event: item.publish.event.clone(),
            data: item.publish.data.clone(),
            ts_ms: notify_proto::convert::millis(done.ts),
            muted: false,
            retracted: false,
        };
        let send = |bridge: &str, message: pb::StoredMessage, counts: Option<pb::InboxCounts>| {
            t.bridges.get(bridge).is_some_and(|b| {
                let delivery = pb::Delivery {
                    message: Some(message),
                    exclude_connection_id: excluded.clone(),
                    trace_parent: trace_parent.clone(),
                    connection_id: String::new(),
                    counts,
                };
                let sent =
                    b.tx.try_send(down(pb::bridge_down::Msg::Delivery(delivery)));
                if sent.is_err() {
                    self.counts.dropped.inc();
                    tracing::warn!(bridge, "bridge queue full: live copy dropped");
                } else {
                    self.counts.sent.inc();
                }
                sent.is_ok()
            })
        };
        let mut count = 0;
        // An inbox message goes with the user's counts after it; a muted
        // one still goes (the bridge's sequence moves past it) but is not
        // shown.
        let mut to_user = |user: &UserId, seq: u64, recipient: Option<&Recipient>| {
            for (bridge, n) in t.users.get(user).into_iter().flatten() {
                let mut m = message(Some(user), None, seq);
                m.muted = recipient.is_some_and(|r| r.muted);
                // Version 0: counts are not kept (NOTIFY_INBOX_COUNTS off).
                let counts = recipient
                    .filter(|r| r.counts.version > 0)
                    .map(|r| counts(r.counts));
                if send(bridge, m, counts) && !recipient.is_some_and(|r| r.muted) {
                    count += n;
                }
            }
        };
        match &item.publish.target {
            Target::User(user) => to_user(user, done.seq, done.recipients.first()),
            Target::Users(_) => {
                for (i, (user, seq)) in done.inbox_seqs.iter().enumerate() {
                    to_user(user, *seq, done.recipients.get(i));
                }
            }
            Target::Topic(topic) => {
                for (bridge, n) in t.topics.get(topic).into_iter().flatten() {
                    if send(bridge, message(None, Some(topic), done.seq), None) {
                        count += n;
                    }
                }
                // The sender is not told of its own publish.
                let sender_follows = exclude
                    .and_then(|id| t.conns.get(id))
                    .is_some_and(|c| c.topics.contains(topic));
                if sender_follows {
                    count = count.saturating_sub(1);
                }
            }
            Target::Broadcast => {
                let mut per_bridge: HashMap<&str, u32> = HashMap::new();
                for conn in t.conns.values() {
                    *per_bridge.entry(&conn.bridge).or_default() += 1;
                }
                for (bridge, n) in per_bridge {
                    if send(bridge, message(None, None, 0), None) {
                        count += n;
                    }
                }
            }
        }
        count
    }
}

fn down(msg: pb::bridge_down::Msg) -> pb::BridgeDown {
    pb::BridgeDown { msg: Some(msg) }
}

//! The bridge's local view: its connections, who they belong to and which
//! topics they follow, and the links up to every notify-svc replica.
//!
//! Every change is reported up to every attached link while the hub's lock is
//! held, so a link's Hello snapshot and the changes that follow it never
//! cross. Deliveries coming down are fanned out to the connections' bounded
//! queues; a connection whose queue is full is a slow consumer and is told to
//! close (4008), never waited for.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use notify_core::{ConnectionId, Topic, UserId};
use notify_proto::v1::{self as pb, bridge_up::Msg as Up};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::protocol::ServerFrame;

/// A message ready to send: what ordering needs, and its `message` frame,
/// encoded once and shared by every connection it goes to.
#[derive(Debug)]
pub struct Prepared {
    pub seq: u64,
    /// Set for inbox messages.
    pub user_id: String,
    /// Set for topic messages.
    pub topic: String,
    pub frame: Utf8Bytes,
}

impl Prepared {
    /// Encodes the frame; `None` if the stored data is not JSON (it was
    /// validated on the way in, so this does not happen).
    pub fn new(m: pb::StoredMessage) -> Option<Arc<Self>> {
        let data = RawValue::from_string(m.data).ok()?;
        let frame = ServerFrame::Message {
            id: &m.message_id,
            seq: m.seq,
            topic: (!m.topic.is_empty()).then_some(m.topic.as_str()),
            event: &m.event,
            data: &data,
            ts: m.ts_ms,
        }
        .to_text();
        Some(Arc::new(Self {
            seq: m.seq,
            user_id: m.user_id,
            topic: m.topic,
            frame: frame.into(),
        }))
    }
}

/// What a connection task receives from the hub.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Arc<Prepared>),
    Kick { code: u16, reason: String },
}

struct Entry {
    user: UserId,
    connected_at_ms: i64,
    topics: HashSet<Topic>,
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed: the connection closes with 4008.
    slow: CancellationToken,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnectionId, Entry>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
    by_topic: HashMap<Topic, HashSet<ConnectionId>>,
    /// Up-streams of the attached links, by link index.
    links: HashMap<usize, mpsc::Sender<pb::BridgeUp>>,
    /// Highest ack per user not yet sent up.
    acks: HashMap<UserId, u64>,
}

impl State {
    fn up(&self, msg: Up) {
        for tx in self.links.values() {
            // A full link is about to be replaced; its Hello will carry the state.
            let _ = tx.try_send(pb::BridgeUp {
                msg: Some(msg.clone()),
            });
        }
    }
}

/// The bridge's connections and links; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    bridge_id: Arc<str>,
    state: Arc<Mutex<State>>,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Hub {
    pub fn new(bridge_id: &str) -> Self {
        Self {
            bridge_id: bridge_id.into(),
            state: Arc::default(),
        }
    }

    pub fn bridge_id(&self) -> &str {
        &self.bridge_id
    }

    /// Attaches link `index`: its Hello (full state) goes first on `up`.
    pub fn attach_link(&self, index: usize, up: mpsc::Sender<pb::BridgeUp>) {
        let mut s = self.state.lock().expect("hub lock");
        let connections = s
            .conns
            .iter()
            .map(|(id, e)| pb::LiveConnection {
                connection_id: id.to_string(),
                user_id: e.user.to_string(),
                connected_at_ms: e.connected_at_ms,
                topics: e.topics.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let hello = pb::BridgeHello {
            bridge_id: self.bridge_id.to_string(),
            connections,
        };
        let _ = up.try_send(pb::BridgeUp {
            msg: Some(Up::Hello(hello)),
        });
        s.links.insert(index, up);
    }

    pub fn detach_link(&self, index: usize) {
        self.state.lock().expect("hub lock").links.remove(&index);
    }

    /// A link to send a client publish on (any attached one).
    pub fn any_link(&self) -> Option<mpsc::Sender<pb::BridgeUp>> {
        let s = self.state.lock().expect("hub lock");
        s.links.values().next().cloned()
    }

    /// Registers a connection and reports it up.
    pub fn open(
        &self,
        id: ConnectionId,
        user: UserId,
        tx: mpsc::Sender<Outbound>,
        slow: CancellationToken,
    ) {
        let mut s = self.state.lock().expect("hub lock");
        let connected_at_ms = millis(SystemTime::now());
        s.by_user.entry(user.clone()).or_default().insert(id);
        s.up(Up::Opened(pb::ConnectionOpened {
            connection: Some(pb::LiveConnection {
                connection_id: id.to_string(),
                user_id: user.to_string(),
                connected_at_ms,
                topics: Vec::new(),
            }),
        }));
        s.conns.insert(
            id,
            Entry {
                user,
                connected_at_ms,
                topics: HashSet::new(),
                tx,
                slow,
            },
        );
    }

    /// Forgets a connection and reports it up.
    pub fn close(&self, id: ConnectionId) {
        let mut s = self.state.lock().expect("hub lock");
        let Some(entry) = s.conns.remove(&id) else {
            return;
        };
        if let Some(set) = s.by_user.get_mut(&entry.user) {
            set.remove(&id);
            if set.is_empty() {
                s.by_user.remove(&entry.user);
            }
        }
        for topic in &entry.topics {
            if let Some(set) = s.by_topic.get_mut(topic) {
                set.remove(&id);
                if set.is_empty() {
                    s.by_topic.remove(topic);
                }
            }
        }
        s.up(Up::Closed(pb::ConnectionClosed {
            connection_id: id.to_string(),
        }));
    }

    pub fn subscribe(&self, id: ConnectionId, topic: Topic) {
        let mut s = self.state.lock().expect("hub lock");
        let Some(entry) = s.conns.get_mut(&id) else {
            return;
        };
        if entry.topics.insert(topic.clone()) {
            s.by_topic.entry(topic.clone()).or_default().insert(id);
            s.up(Up::Subscribed(pb::TopicSubscribed {
                connection_id: id.to_string(),
                topic: topic.to_string(),
            }));
        }
    }

    pub fn unsubscribe(&self, id: ConnectionId, topic: &Topic) {
        let mut s = self.state.lock().expect("hub lock");
        let Some(entry) = s.conns.get_mut(&id) else {
            return;
        };
        if entry.topics.remove(topic) {
            if let Some(set) = s.by_topic.get_mut(topic) {
                set.remove(&id);
                if set.is_empty() {
                    s.by_topic.remove(topic);
                }
            }
            s.up(Up::Unsubscribed(pb::TopicUnsubscribed {
                connection_id: id.to_string(),
                topic: topic.to_string(),
            }));
        }
    }

    /// Records a cumulative ack; [`flush_acks`](Self::flush_acks) sends them.
    pub fn ack(&self, user: &UserId, seq: u64) {
        let mut s = self.state.lock().expect("hub lock");
        let slot = s.acks.entry(user.clone()).or_default();
        *slot = (*slot).max(seq);
    }

    /// Sends the pending acks up in one message.
    pub fn flush_acks(&self) {
        let mut s = self.state.lock().expect("hub lock");
        if s.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut s.acks)
            .into_iter()
            .map(|(user, seq)| pb::InboxSeq {
                user_id: user.into_string(),
                seq,
            })
            .collect();
        s.up(Up::Acks(pb::InboxAcks { acks }));
    }

    /// Hands a delivery to the connections it is for.
    pub fn deliver(&self, delivery: pb::Delivery) {
        // Encoded once, outside the lock, for every connection it goes to.
        let Some(message) = delivery.message.and_then(Prepared::new) else {
            return;
        };
        let s = self.state.lock().expect("hub lock");
        let targets: Vec<&ConnectionId> = if !message.user_id.is_empty() {
            UserId::parse("user_id", &message.user_id)
                .ok()
                .and_then(|u| s.by_user.get(&u))
                .map(|set| set.iter().collect())
                .unwrap_or_default()
        } else if !message.topic.is_empty() {
            Topic::parse(&message.topic)
                .ok()
                .and_then(|t| s.by_topic.get(&t))
                .map(|set| set.iter().collect())
                .unwrap_or_default()
        } else {
            s.conns.keys().collect()
        };
        for id in targets {
            if id.to_string() == delivery.exclude_connection_id {
                continue;
            }
            if let Some(entry) = s.conns.get(id)
                && entry
                    .tx
                    .try_send(Outbound::Deliver(Arc::clone(&message)))
                    .is_err()
            {
                entry.slow.cancel();
            }
        }
    }

    /// Tells connections to close.
    pub fn kick(&self, kick: pb::Kick) {
        let s = self.state.lock().expect("hub lock");
        let code = u16::try_from(kick.close_code).unwrap_or(crate::protocol::CLOSE_DISCONNECTED);
        for raw in &kick.connection_ids {
            let Ok(id) = ConnectionId::parse("connection_id", raw) else {
                continue;
            };
            if let Some(entry) = s.conns.get(&id) {
                let out = Outbound::Kick {
                    code,
                    reason: kick.reason.clone(),
                };
                if entry.tx.try_send(out).is_err() {
                    entry.slow.cancel();
                }
            }
        }
    }

    /// Connections of `user` open now.
    pub fn count_user(&self, user: &UserId) -> usize {
        let s = self.state.lock().expect("hub lock");
        s.by_user.get(user).map_or(0, HashSet::len)
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.state.lock().expect("hub lock").conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

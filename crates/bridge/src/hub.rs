//! The bridge's local view: its connections, who they belong to and which
//! topics they follow, and the links up to every notify-svc replica.
//!
//! Every change is reported up to every attached link while the hub's lock is
//! held, so a link's Hello snapshot and the changes that follow it never
//! cross. Deliveries coming down are fanned out to the connections: written
//! straight to the sockets of parked connections that are due them next, else
//! to their bounded queues (see [`crate::queue`]); a connection whose queue is
//! full is a slow consumer and is told to close (4008), never waited for.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use notify_core::{ConnectionId, Position, Topic, UserId};
use notify_proto::{
    convert,
    v1::{self as pb, bridge_up::Msg as Up},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use crate::queue::{CloseOrder, Local, Outbound, Prepared, SendQueue};

/// Resolves when every link answered the ticket (or gave up on it).
pub type Registration = oneshot::Receiver<Result<Position, String>>;

/// A ticket waiting for the links' answers.
struct Waiting {
    conn: ConnectionId,
    links: HashSet<usize>,
    /// The highest positions answered: the latest read covers every
    /// registration (heads and acks only grow).
    best: Option<Position>,
    error: Option<String>,
    tx: oneshot::Sender<Result<Position, String>>,
}

impl Waiting {
    fn finish(self) {
        let result = match (self.error, self.best) {
            (Some(e), _) => Err(e),
            (None, Some(best)) => Ok(best),
            (None, None) => Err("notify-svc detached before answering".into()),
        };
        let _ = self.tx.send(result);
    }
}

struct Entry {
    user: UserId,
    connected_at_ms: i64,
    topics: HashSet<Topic>,
    queue: Arc<SendQueue>,
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
    tickets: HashMap<u64, Waiting>,
    last_ticket: u64,
    /// Subscribes and unsubscribes that changed something, counted: with
    /// the connection id, the name of each lifecycle event, the same on
    /// every replica that hears it.
    last_change: u64,
}

impl State {
    /// A ticket waited on by every link attached now; resolved at once with
    /// an error when there is none.
    fn ticket(&mut self, conn: ConnectionId) -> (u64, Registration) {
        let (tx, rx) = oneshot::channel();
        if self.links.is_empty() {
            let _ = tx.send(Err("no notify-svc attached".into()));
            return (0, rx);
        }
        self.last_ticket += 1;
        let waiting = Waiting {
            conn,
            links: self.links.keys().copied().collect(),
            best: None,
            error: None,
            tx,
        };
        self.tickets.insert(self.last_ticket, waiting);
        (self.last_ticket, rx)
    }

    /// The connections here `ready` is for.
    fn targets<'a>(&'a self, ready: &'a Ready) -> impl Iterator<Item = &'a ConnectionId> + 'a {
        let message = &ready.message;
        let all: Box<dyn Iterator<Item = &ConnectionId>> = if let Some(only) = &ready.only {
            Box::new(std::iter::once(only))
        } else if !message.user_id.is_empty() {
            let set = UserId::parse("user_id", &message.user_id)
                .ok()
                .and_then(|u| self.by_user.get(&u));
            Box::new(set.into_iter().flatten())
        } else if let Some(topic) = &message.topic {
            Box::new(self.by_topic.get(topic).into_iter().flatten())
        } else {
            Box::new(self.conns.keys())
        };
        all.filter(move |id| Some(**id) != ready.exclude)
    }

    fn up(&self, msg: Up) {
        for tx in self.links.values() {
            // A full link is about to be replaced; its Hello will carry the state.
            let _ = tx.try_send(pb::BridgeUp {
                msg: Some(msg.clone()),
            });
        }
    }
}

/// A connection's share of a burst of deliveries: the one delivery (by
/// index; no copy per socket) or several.
enum Share {
    One(usize),
    Many(Vec<Arc<Prepared>>),
}

type Send = (Arc<SendQueue>, ConnectionId, Share);

/// A delivery encoded and addressed, before the hub looks up its sockets.
struct Ready {
    message: Arc<Prepared>,
    /// A Publish to one connection_id (not stored, seq 0).
    only: Option<ConnectionId>,
    exclude: Option<ConnectionId>,
    span: tracing::Span,
}

impl Ready {
    /// None for a delivery that cannot be sent (data that is not JSON, a
    /// malformed connection id).
    fn new(delivery: pb::Delivery) -> Option<Self> {
        // Debug level: free unless traces are exported (their filter keeps it).
        let span = tracing::debug_span!(
            "deliver",
            message_id = tracing::field::Empty,
            sockets = tracing::field::Empty
        );
        if !span.is_disabled() {
            notify_ops::traces::adopt(&span, &delivery.trace_parent);
            if let Some(m) = &delivery.message {
                span.record("message_id", m.message_id.as_str());
            }
        }
        let counts = delivery
            .counts
            .as_ref()
            .map(|c| convert::counts_of(Some(c)));
        let message = delivery
            .message
            .and_then(Prepared::new)?
            .with_counts(counts);
        let exclude =
            ConnectionId::parse("exclude_connection_id", &delivery.exclude_connection_id).ok();
        let only = match delivery.connection_id.as_str() {
            "" => None,
            raw => Some(ConnectionId::parse("connection_id", raw).ok()?),
        };
        Some(Self {
            message,
            only,
            exclude,
            span,
        })
    }
}

/// The bridge's connections and links; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    bridge_id: Arc<str>,
    state: Arc<Mutex<State>>,
    /// Woken whenever a link attaches.
    attached: Arc<tokio::sync::Notify>,
    /// Every message frame sent (`bridge_messages_out`): the fan-out adds
    /// the ones it wrote itself, the connections the ones they write.
    written: Counter,
    /// Of those, the fan-out's own (`bridge_direct_writes`).
    direct: Counter,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Hub {
    /// A hub counting its direct writes into `written` (every frame out) and
    /// `direct` (those alone).
    pub fn new(bridge_id: &str, written: Counter, direct: Counter) -> Self {
        Self {
            bridge_id: bridge_id.into(),
            state: Arc::default(),
            attached: Arc::default(),
            written,
            direct,
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
        drop(s);
        self.attached.notify_waiters();
    }

    /// Resolves once at least one notify-svc link is attached.
    pub async fn linked(&self) {
        loop {
            // Created before the check: a notify in between still wakes it.
            let attached = self.attached.notified();
            if self.links_attached() > 0 {
                return;
            }
            attached.await;
        }
    }

    pub fn detach_link(&self, index: usize) {
        let mut s = self.state.lock().expect("hub lock");
        s.links.remove(&index);
        // Its answers will not come: stop waiting for them.
        let done: Vec<u64> = s
            .tickets
            .iter_mut()
            .filter_map(|(ticket, w)| {
                (w.links.remove(&index) && w.links.is_empty()).then_some(*ticket)
            })
            .collect();
        for ticket in done {
            if let Some(w) = s.tickets.remove(&ticket) {
                w.finish();
            }
        }
    }

    /// Link `index` answered a ticket.
    pub fn registered(&self, index: usize, answer: pb::Registered) {
        let mut s = self.state.lock().expect("hub lock");
        let Some(w) = s.tickets.get_mut(&answer.ticket) else {
            return;
        };
        if !w.links.remove(&index) {
            return;
        }
        if answer.error.is_empty() {
            let best = w.best.get_or_insert_default();
            best.head_seq = best.head_seq.max(answer.head_seq);
            best.acked_seq = best.acked_seq.max(answer.acked_seq);
            best.first_seq = best.first_seq.max(answer.first_seq);
            // Counts: the newest read; mutes: any replica's read (they agree
            // but for a change in flight, which its own message follows).
            let counts = convert::counts_of(answer.counts.as_ref());
            if counts.version >= best.counts.version {
                best.counts = counts;
            }
            if answer.mutes.is_some() {
                best.mutes = convert::mutes_of(answer.mutes.as_ref());
            }
            // Each replica read the stored subscriptions after routing the
            // connection; a subscription any of them saw is the user's.
            best.subscriptions.extend(
                answer
                    .subscriptions
                    .iter()
                    .filter_map(|t| Topic::parse(t).ok()),
            );
        } else {
            w.error = Some(answer.error);
        }
        if w.links.is_empty()
            && let Some(w) = s.tickets.remove(&answer.ticket)
        {
            w.finish();
        }
    }

    /// notify-svc links attached now.
    pub fn links_attached(&self) -> usize {
        self.state.lock().expect("hub lock").links.len()
    }

    /// A link to send a client publish on (any attached one).
    pub fn any_link(&self) -> Option<mpsc::Sender<pb::BridgeUp>> {
        let s = self.state.lock().expect("hub lock");
        s.links.values().next().cloned()
    }

    /// Registers a connection and reports it up; the registration resolves
    /// with the inbox's positions once it is in routing everywhere.
    pub fn open(
        &self,
        id: ConnectionId,
        user: UserId,
        queue: Arc<SendQueue>,
        slow: CancellationToken,
    ) -> Registration {
        let mut s = self.state.lock().expect("hub lock");
        let connected_at_ms = millis(SystemTime::now());
        s.by_user.entry(user.clone()).or_default().insert(id);
        let (ticket, registration) = s.ticket(id);
        s.up(Up::Opened(pb::ConnectionOpened {
            connection: Some(pb::LiveConnection {
                connection_id: id.to_string(),
                user_id: user.to_string(),
                connected_at_ms,
                topics: Vec::new(),
            }),
            ticket,
        }));
        s.conns.insert(
            id,
            Entry {
                user,
                connected_at_ms,
                topics: HashSet::new(),
                queue,
                slow,
            },
        );
        registration
    }

    /// Forgets a connection and reports it up, with how it closed.
    pub fn close(&self, id: ConnectionId, close_code: u16, reason: &str) {
        let mut s = self.state.lock().expect("hub lock");
        let Some(entry) = s.conns.remove(&id) else {
            return;
        };
        // Nobody waits for these answers any more.
        s.tickets.retain(|_, w| w.conn != id);
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
            close_code: u32::from(close_code),
            reason: reason.to_owned(),
            user_id: entry.user.to_string(),
        }));
    }

    /// Subscribes a connection (again, if it was: the registration still
    /// answers with the topic's head).
    pub fn subscribe(&self, id: ConnectionId, topic: Topic) -> Registration {
        let mut s = self.state.lock().expect("hub lock");
        let Some(entry) = s.conns.get_mut(&id) else {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err("connection closed".into()));
            return rx;
        };
        let mut event = 0;
        if entry.topics.insert(topic.clone()) {
            s.by_topic.entry(topic.clone()).or_default().insert(id);
            s.last_change += 1;
            event = s.last_change;
        }
        let (ticket, registration) = s.ticket(id);
        s.up(Up::Subscribed(pb::TopicSubscribed {
            connection_id: id.to_string(),
            topic: topic.to_string(),
            ticket,
            event,
        }));
        registration
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
            s.last_change += 1;
            let event = s.last_change;
            s.up(Up::Unsubscribed(pb::TopicUnsubscribed {
                connection_id: id.to_string(),
                topic: topic.to_string(),
                event,
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

    /// Hands deliveries read off a link together to the connections they
    /// are for. A connection due several of them gets them in one write
    /// (see [`SendQueue::offer_all`]): when commits come in bursts, a burst
    /// costs each socket one syscall.
    pub fn deliver(&self, deliveries: Vec<pb::Delivery>) {
        // Encoded once, outside the lock, for every connection each goes to.
        let prepared: Vec<Ready> = deliveries.into_iter().filter_map(Ready::new).collect();
        let s = self.state.lock().expect("hub lock");
        // Per connection, in the order the link gave them. The writes happen
        // outside the hub's lock: a fan-out to 10,000 sockets takes ~100 ms
        // of writes, which must not hold up connects, closes and acks. A
        // connection that ends meanwhile takes no direct write (its task
        // unparked for good first); what is queued for it is never read.
        let mut sends: Vec<Send> = Vec::new();
        let mut index: HashMap<ConnectionId, usize> = HashMap::new();
        for (i, ready) in prepared.iter().enumerate() {
            let _entered = ready.span.enter();
            let mut sockets = 0;
            for id in s.targets(ready) {
                let Some(entry) = s.conns.get(id) else {
                    continue;
                };
                sockets += 1;
                if prepared.len() == 1 {
                    sends.push((entry.queue.clone(), *id, Share::One(i)));
                    continue;
                }
                let message = Arc::clone(&ready.message);
                match index.entry(*id) {
                    std::collections::hash_map::Entry::Occupied(at) => {
                        if let Share::Many(messages) = &mut sends[*at.get()].2 {
                            messages.push(message);
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(at) => {
                        at.insert(sends.len());
                        sends.push((entry.queue.clone(), *id, Share::Many(vec![message])));
                    }
                }
            }
            ready.span.record("sockets", sockets);
        }
        drop(s);
        let mut direct = 0u64;
        let mut slow = Vec::new();
        for (queue, id, share) in &sends {
            let messages = match share {
                Share::One(i) => std::slice::from_ref(&prepared[*i].message),
                Share::Many(messages) => messages.as_slice(),
            };
            match queue.offer_all(messages) {
                Ok(written) => direct += written as u64,
                Err(_) => slow.push(*id),
            }
            // Inbox messages come with the user's counts after them: the
            // newest goes to the task, which sends it if the socket's badge
            // is older (a direct write does not wait for that).
            let newest = messages
                .iter()
                .filter_map(|m| m.counts)
                .max_by_key(|c| c.version);
            if let Some(counts) = newest {
                queue.push_local(Outbound::Local(Box::new(Local::Counts(counts))));
            }
        }
        if !slow.is_empty() {
            let s = self.state.lock().expect("hub lock");
            for entry in slow.iter().filter_map(|id| s.conns.get(id)) {
                entry.slow.cancel();
            }
        }
        self.written.inc_by(direct);
        self.direct.inc_by(direct);
    }

    /// A server-side subscription of a user began or ended: each of the
    /// user's connections here is told, behind what is queued for it.
    pub fn server_subscription(&self, change: pb::ServerSubscription) {
        let (Ok(user), Ok(topic)) = (
            UserId::parse("user_id", &change.user_id),
            Topic::parse(&change.topic),
        ) else {
            tracing::warn!(user = %change.user_id, topic = %change.topic, "bad server subscription ignored");
            return;
        };
        let s = self.state.lock().expect("hub lock");
        for id in s.by_user.get(&user).into_iter().flatten() {
            if let Some(entry) = s.conns.get(id) {
                let local = if change.subscribed {
                    Local::ServerSubscribe(topic.clone(), change.after_seq)
                } else {
                    Local::ServerUnsubscribe(topic.clone())
                };
                entry.queue.push_local(Outbound::Local(Box::new(local)));
            }
        }
    }

    /// A change of a user's side of the inbox: each of the user's
    /// connections here is told, behind what is queued for it; new mutes
    /// apply to the topic messages offered to them from now on.
    pub fn inbox_change(&self, change: pb::InboxChange) {
        let Ok(user) = UserId::parse("user_id", &change.user_id) else {
            tracing::warn!(user = %change.user_id, "inbox change of a bad user id ignored");
            return;
        };
        let mutes = match &change.change {
            Some(pb::inbox_change::Change::Mutes(m)) => Some(convert::mutes_of(Some(m))),
            _ => None,
        };
        let s = self.state.lock().expect("hub lock");
        for id in s.by_user.get(&user).into_iter().flatten() {
            if let Some(entry) = s.conns.get(id) {
                if let Some(mutes) = &mutes {
                    entry.queue.set_mutes(mutes);
                }
                let local = Local::Inbox(Box::new(change.clone()));
                entry.queue.push_local(Outbound::Local(Box::new(local)));
            }
        }
    }

    /// Has every connection read its feeds from the store again (see
    /// [`Local::CatchUp`](Local::CatchUp)), spread over
    /// time: at most ~2,000 reads a second from one bridge, so 100k sockets
    /// catch up within ~50 s instead of hitting the store at once.
    pub fn catch_up_all(&self) {
        let s = self.state.lock().expect("hub lock");
        let spread_ms = (s.conns.len() as u64 / 2).max(1000);
        for (id, entry) in &s.conns {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(id, &mut h);
            // At least 250 ms: the replica registers our sockets from the
            // Hello before the read, so nothing falls between the two.
            let delay = Duration::from_millis(250 + std::hash::Hasher::finish(&h) % spread_ms);
            let out = Outbound::Local(Box::new(Local::CatchUp(delay)));
            if entry.queue.push(out).is_err() {
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
                let out = Outbound::Close(Box::new(CloseOrder {
                    code,
                    reason: kick.reason.clone(),
                }));
                if entry.queue.push(out).is_err() {
                    entry.slow.cancel();
                }
            }
        }
    }
}

//! A connection's bounded send queue and what goes through it ([`Outbound`]:
//! [`Prepared`] deliveries, close orders, the connection's own [`Local`] results).
//! The hub pushes without ever waiting (a
//! full queue marks a slow consumer); the connection's task pops. It is
//! bounded in frames and in bytes: 1,024 frames of 64 KiB would pin 64 MiB
//! per stalled client, so the byte bound is what holds memory. Lighter
//! than tokio's mpsc for this one-consumer case: nothing is allocated until
//! something is queued, where tokio's channel preallocates a 32-slot block
//! and cache-padded state (~1 KB per idle connection, a fifth of the budget).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use futures::task::AtomicWaker;

use notify_core::{Feed, Topic};
use notify_proto::v1 as pb;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::ServerFrame;

/// Capacity kept after a burst drained; more is given back.
const KEEP_CAPACITY: usize = 16;

/// A message ready to send: what ordering needs, and its `message` frame,
/// encoded once and shared by every connection it goes to.
#[derive(Debug)]
pub struct Prepared {
    pub seq: u64,
    /// Set for inbox messages.
    pub user_id: String,
    /// Set for topic messages (parsed once, not per connection).
    pub topic: Option<Topic>,
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
        let topic = if m.topic.is_empty() {
            None
        } else {
            Some(Topic::parse(&m.topic).ok()?)
        };
        Some(Arc::new(Self {
            seq: m.seq,
            user_id: m.user_id,
            topic,
            frame: frame.into(),
        }))
    }
}

/// What a connection task receives, in one bounded queue: deliveries and
/// close orders from the hub, and the results of its own background work
/// (queued behind deliveries; one queue per connection keeps idle ones small).
#[derive(Debug)]
pub enum Outbound {
    Deliver(Arc<Prepared>),
    Close(Box<CloseOrder>),
    Local(Box<Local>),
}

/// Close the connection with this code and reason.
#[derive(Debug)]
pub struct CloseOrder {
    pub code: u16,
    pub reason: String,
}

/// Results of a connection's own background work, sent to itself.
#[derive(Debug)]
pub enum Local {
    Read(Feed, Result<pb::HistoryResponse, tonic::Status>),
    /// A link to a notify-svc replica came or went: what that replica
    /// committed meanwhile was not delivered live. Read every feed after
    /// what was sent, after this delay (spread over the bridge's sockets).
    CatchUp(Duration),
    /// A reply computed off the loop (client publish results).
    Reply(String),
    /// A routed action's reply or error (one call in flight fewer).
    Routed(String),
    /// A backend subscribed the user to a topic (`Notify.Subscribe`):
    /// follow it from after this seq.
    ServerSubscribe(Topic, u64),
    /// A backend ended the user's subscription to a topic.
    ServerUnsubscribe(Topic),
}

/// The queue is at its bound (the item was not queued).
#[derive(Debug)]
pub struct Full;

/// How much a queue may hold (`BRIDGE_SEND_QUEUE`, `BRIDGE_SEND_QUEUE_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bound {
    pub frames: usize,
    /// Bytes of frames waiting; one frame larger than this still fits into
    /// an empty queue (a message is never undeliverable by its size alone).
    pub bytes: usize,
}

impl Default for Bound {
    /// 1,024 frames: a burst of small messages to a phone on a slow network
    /// is caught up, not closed. 1 MiB: a client that stops reading pins at
    /// most that (plus the socket's write buffer), not 64 MiB of large frames.
    fn default() -> Self {
        Self {
            frames: 1024,
            bytes: 1024 * 1024,
        }
    }
}

#[derive(Default)]
struct Items {
    queue: VecDeque<Outbound>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
}

pub struct SendQueue {
    items: Mutex<Items>,
    waker: AtomicWaker,
    bound: Bound,
}

/// Bytes a queued item holds the connection to.
fn size(item: &Outbound) -> usize {
    match item {
        Outbound::Deliver(m) => m.frame.len(),
        Outbound::Close(_) | Outbound::Local(_) => 0,
    }
}

impl SendQueue {
    pub fn new(bound: Bound) -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::default(),
            waker: AtomicWaker::new(),
            bound: Bound {
                frames: bound.frames.max(1),
                bytes: bound.bytes,
            },
        })
    }

    /// Queues `item` unless the queue is at its bound in frames or bytes.
    pub fn push(&self, item: Outbound) -> Result<(), Full> {
        let len = size(&item);
        {
            let mut items = self.items.lock().expect("queue lock");
            let over_bytes = items.bytes > 0 && items.bytes + len > self.bound.bytes;
            if items.queue.len() >= self.bound.frames || over_bytes {
                return Err(Full);
            }
            items.bytes += len;
            items.queue.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    /// Queues the connection's own results (a store read, a publish answer)
    /// past the bound: there are a few at a time, and dropping one would
    /// stall a feed.
    pub fn push_local(&self, item: Outbound) {
        let mut items = self.items.lock().expect("queue lock");
        items.bytes += size(&item);
        items.queue.push_back(item);
        drop(items);
        self.waker.wake();
    }

    pub fn try_pop(&self) -> Option<Outbound> {
        let mut items = self.items.lock().expect("queue lock");
        let item = items.queue.pop_front()?;
        items.bytes -= size(&item);
        if items.queue.is_empty() && items.queue.capacity() > KEEP_CAPACITY {
            items.queue = VecDeque::new();
        }
        Some(item)
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.try_pop() {
                return Poll::Ready(item);
            }
            self.waker.register(cx.waker());
            // A push between the check and the registration woke nobody.
            match self.try_pop() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Drops everything queued (a connection that is closing).
    pub fn clear(&self) {
        let mut items = self.items.lock().expect("queue lock");
        items.queue = VecDeque::new();
        items.bytes = 0;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.lock().expect("queue lock").queue.len()
    }

    /// Bytes of frames waiting.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.items.lock().expect("queue lock").bytes
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn close(code: u16) -> Outbound {
        Outbound::Close(Box::new(CloseOrder {
            code,
            reason: String::new(),
        }))
    }

    fn frames(n: usize) -> Bound {
        Bound {
            frames: n,
            bytes: usize::MAX,
        }
    }

    fn message(bytes: usize) -> Outbound {
        let stored = notify_proto::v1::StoredMessage {
            message_id: "m".into(),
            seq: 1,
            data: format!("\"{}\"", "x".repeat(bytes)),
            ..Default::default()
        };
        Outbound::Deliver(Prepared::new(stored).unwrap())
    }

    fn code(item: Outbound) -> u16 {
        match item {
            Outbound::Close(order) => order.code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn items_come_out_in_order_and_the_bound_holds() {
        let q = SendQueue::new(frames(2));
        q.push(close(1)).unwrap();
        q.push(close(2)).unwrap();
        assert!(q.push(close(3)).is_err());
        // The connection's own results are not refused.
        q.push_local(close(4));
        assert_eq!(q.len(), 3);
        let popped: Vec<u16> = std::iter::from_fn(|| q.try_pop()).map(code).collect();
        assert_eq!(popped, [1, 2, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let q = SendQueue::new(frames(1000));
        for i in 0..500 {
            q.push(close(i)).unwrap();
        }
        while q.try_pop().is_some() {}
        assert_eq!(q.items.lock().unwrap().queue.capacity(), 0);
    }

    #[test]
    fn the_byte_bound_holds_but_one_large_frame_always_fits() {
        let q = SendQueue::new(Bound {
            frames: 1000,
            bytes: 100_000,
        });
        q.push(message(150_000)).expect("alone it fits");
        assert!(q.push(message(10)).is_err(), "nothing fits beside it");
        q.try_pop().unwrap();
        assert_eq!(q.bytes(), 0);
        for _ in 0..9 {
            q.push(message(10_000)).unwrap();
        }
        assert!(q.push(message(10_000)).is_err(), "the tenth is past 100 KB");
        // Close orders carry no bytes and still fit.
        q.push(close(1)).unwrap();
        assert_eq!(q.len(), 10);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_from_another_task() {
        let q = SendQueue::new(frames(4));
        let pusher = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            pusher.push(close(7)).unwrap();
        });
        let item = tokio::time::timeout(Duration::from_secs(5), q.pop())
            .await
            .expect("woken by the push");
        assert_eq!(code(item), 7);
    }
}

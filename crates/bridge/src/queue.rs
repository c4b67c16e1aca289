//! A connection's bounded send queue and what goes through it ([`Outbound`]:
//! [`Prepared`] deliveries, close orders, the connection's own [`Local`] results).
//! The hub pushes without ever waiting (a
//! full queue marks a slow consumer); the connection's task pops.
//!
//! On a plain TCP connection the queue also holds the socket, shared with the
//! fan-out: while the task is parked with nothing queued or half-written, a
//! delivery the client is due next on its feed is written by the hub itself
//! ([`SendQueue::offer_all`]): one `write`, no task wake, no turn of the
//! connection's loop. Everything else — a would-block or short write, a feed
//! replaying or holding messages back, a busy task — goes through the queue as
//! before, so ordering, the 4008 rule and the byte bound are the queue's. The
//! one lock below decides between the two paths, so they never cross; the
//! bytes tungstenite writes pass through the wire module's `WireIo`, which marks the
//! connection busy first and sends the tail of a short direct write before
//! anything else. The queue is
//! bounded in frames and in bytes: 1,024 frames of 64 KiB would pin 64 MiB
//! per stalled client, so the byte bound is what holds memory. Lighter
//! than tokio's mpsc for this one-consumer case: nothing is allocated until
//! something is queued, where tokio's channel preallocates a 32-slot block
//! and cache-padded state (~1 KB per idle connection, a fifth of the budget).

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::task::AtomicWaker;

use hyper::body::Bytes;
use notify_core::{
    Feed, Topic,
    inbox::{Counts, Mutes},
};
use notify_proto::v1 as pb;
use serde_json::value::RawValue;
use tokio::{io::ReadBuf, net::TcpStream};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    deflate,
    protocol::{self, ServerFrame},
};

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
    /// The frame's payload (for tungstenite).
    pub frame: Utf8Bytes,
    /// The whole WebSocket frame, header included, as it goes on the wire
    /// (server frames are unmasked: the same bytes for every subscriber).
    pub wire: Bytes,
    /// The same frame compressed (permessage-deflate) and where its payload
    /// starts: made when a connection that negotiated deflate is first due
    /// it; None inside if deflate does not shrink it.
    deflated: OnceLock<Option<(Bytes, usize)>>,
    /// Its event: a user's mutes may silence topic messages by event.
    pub event: Box<str>,
    /// Inbox messages: the user's counts after the commit.
    pub counts: Option<Counts>,
}

impl Prepared {
    /// Encodes the frame; `None` if the stored data is not JSON (it was
    /// validated on the way in, so this does not happen).
    pub fn new(m: pb::StoredMessage) -> Option<Arc<Self>> {
        let topic = if m.topic.is_empty() {
            None
        } else {
            Some(Topic::parse(&m.topic).ok()?)
        };
        // Stored but not for the user's eyes: its seq moves the feed on,
        // nothing is written.
        if m.muted || m.retracted {
            return Some(Arc::new(Self::silent(
                m.seq,
                m.user_id,
                topic,
                m.event.into(),
            )));
        }
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
        let (wire, payload_at) = protocol::text_frame(frame.as_bytes());
        let frame = Utf8Bytes::try_from(wire.slice(payload_at..)).ok()?;
        Some(Arc::new(Self {
            seq: m.seq,
            user_id: m.user_id,
            topic,
            frame,
            wire,
            deflated: OnceLock::new(),
            event: m.event.into(),
            counts: None,
        }))
    }

    /// A message that takes its place in its feed and writes nothing.
    fn silent(seq: u64, user_id: String, topic: Option<Topic>, event: Box<str>) -> Self {
        Self {
            seq,
            user_id,
            topic,
            frame: Utf8Bytes::default(),
            wire: Bytes::new(),
            deflated: OnceLock::new(),
            event,
            counts: None,
        }
    }

    /// Whether nothing of it is written (muted or retracted).
    pub fn is_silent(&self) -> bool {
        self.wire.is_empty()
    }

    /// Whether `mutes` keep this topic message from the user's sockets.
    pub fn silenced_by(&self, mutes: &Mutes) -> bool {
        self.topic
            .as_ref()
            .is_some_and(|t| mutes.silences(t.namespace(), &self.event))
    }

    /// This message as a socket whose user muted it gets it: in its place,
    /// nothing written.
    pub fn quieted(&self) -> Arc<Self> {
        Arc::new(Self::silent(
            self.seq,
            self.user_id.clone(),
            self.topic.clone(),
            self.event.clone(),
        ))
    }

    /// With the user's counts after it (an inbox delivery).
    pub fn with_counts(mut self: Arc<Self>, counts: Option<Counts>) -> Arc<Self> {
        if let Some(me) = Arc::get_mut(&mut self) {
            me.counts = counts;
        }
        self
    }

    /// The compressed frame and where its payload starts, for a connection
    /// that may get messages up to `max_compressed` bytes compressed; None:
    /// the plain frame.
    pub fn deflated(&self, max_compressed: usize) -> Option<&(Bytes, usize)> {
        if self.frame.len() > max_compressed || self.is_silent() {
            return None;
        }
        self.deflated
            .get_or_init(|| deflate::compress_text(self.frame.as_bytes(), self.wire.len()))
            .as_ref()
    }

    /// The bytes a connection gets on the wire (`deflate`: what it agreed to).
    pub fn wire_for(&self, deflate: Option<usize>) -> &Bytes {
        deflate
            .and_then(|max| self.deflated(max))
            .map_or(&self.wire, |(frame, _)| frame)
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
    /// A direct write went out in part: flush the rest.
    Flush,
    /// The user's counts after an inbox delivery just handed to the queue.
    Counts(Counts),
    /// A change of the user's side of the inbox (a mark elsewhere, an edit,
    /// a retraction, mutes).
    Inbox(Box<pb::InboxChange>),
    /// The answer to one of the client's inbox actions (one call in flight
    /// fewer), and the counts it carries.
    InboxReply(String, Option<Counts>),
}

/// The queue is at its bound (the item was not queued).
#[derive(Debug, PartialEq, Eq)]
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
    line: Line,
    /// What the connection's user muted, when anything: topic messages
    /// they silence go quiet on the way in.
    mutes: Option<Arc<Mutes>>,
}

/// Who may write to a shared socket now, and where the client's feeds stand.
#[derive(Default)]
struct Line {
    /// The task is parked with nothing queued or half-written: the fan-out
    /// may write.
    idle: bool,
    /// tungstenite wrote since it last completed a flush: its buffer may
    /// hold part of a frame.
    dirty: bool,
    /// The tail of a direct write the socket did not take: it goes out
    /// before anything else.
    leftover: Option<Bytes>,
    /// Last seq sent on the inbox, if it was in sync when the task parked.
    inbox: Option<u64>,
    /// The same for the topics followed in sync.
    topics: Vec<(Topic, u64)>,
    /// Direct writes since the task last looked.
    wrote: bool,
}

pub struct SendQueue {
    items: Mutex<Items>,
    waker: AtomicWaker,
    bound: Bound,
    /// The plain TCP socket, shared with tungstenite's `WireIo`; none over TLS.
    line: Option<TcpStream>,
    /// permessage-deflate was agreed: messages up to this many bytes go
    /// compressed.
    deflate: Option<usize>,
}

/// Writes what is left of a short direct write.
fn drain(
    stream: &TcpStream,
    leftover: &mut Option<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while let Some(rest) = leftover {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(rest) {
            Ok(n) if n == rest.len() => *leftover = None,
            Ok(n) => *rest = rest.slice(n..),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Most deliveries one direct write carries (the link hands bursts of up to
/// this many; `IOV_MAX` is 1,024).
pub const MAX_DIRECT: usize = 64;

/// Writes the leading `messages` that are due next on their feeds in one
/// non-blocking `writev`; returns how many went (0: none was due, or the
/// socket would block — the caller queues them). A short write leaves its
/// tail for the task, woken by a `Flush` queued here.
fn write_due(
    stream: &TcpStream,
    items: &mut Items,
    messages: &[Arc<Prepared>],
    deflate: Option<usize>,
) -> usize {
    let line = &mut items.line;
    let wrote_before = line.wrote;
    let mut slots = [Slot::Unsequenced; MAX_DIRECT];
    let mut due = 0;
    for message in messages.iter().take(MAX_DIRECT) {
        let Some(slot) = line.next_on_feed(message) else {
            break;
        };
        // Moved now, so the next message of the same feed is seen in turn.
        line.sent(slot, message.seq);
        slots[due] = slot;
        due += 1;
    }
    if due == 0 {
        return 0;
    }
    let due_messages = &messages[..due];
    let mut bufs = [io::IoSlice::new(&[]); MAX_DIRECT];
    let mut total = 0;
    for (buf, message) in bufs.iter_mut().zip(due_messages) {
        *buf = io::IoSlice::new(message.wire_for(deflate));
        total += buf.len();
    }
    // Would block (or failed: the task meets the error itself): queue them.
    let Ok(mut written) = stream.try_write_vectored(&bufs[..due]) else {
        for (slot, message) in slots[..due].iter().zip(due_messages).rev() {
            line.unsend(*slot, message.seq);
        }
        line.wrote = wrote_before;
        return 0;
    };
    if written < total {
        let mut tail: Vec<Bytes> = Vec::new();
        for message in due_messages {
            let wire = message.wire_for(deflate);
            let len = wire.len();
            if written >= len {
                written -= len;
            } else {
                tail.push(wire.slice(written..));
                written = 0;
            }
        }
        line.leftover = Some(match tail.len() {
            1 => tail.pop().expect("one tail"),
            _ => tail.concat().into(),
        });
        line.idle = false;
        items
            .queue
            .push_back(Outbound::Local(Box::new(Local::Flush)));
    }
    due
}

/// The feed a direct write moves.
#[derive(Clone, Copy)]
enum Slot {
    Inbox,
    /// Index in [`Line::topics`].
    Topic(usize),
    /// A message on no feed: a broadcast, or one to this connection alone.
    Unsequenced,
}

impl Line {
    /// Where `message` may be written directly: it is the next on a feed in
    /// sync, or on no feed. None: the task must sequence it.
    fn next_on_feed(&self, message: &Prepared) -> Option<Slot> {
        let (slot, last) = if !message.user_id.is_empty() {
            (Slot::Inbox, self.inbox?)
        } else if let Some(topic) = &message.topic {
            let i = self.topics.iter().position(|(t, _)| t == topic)?;
            (Slot::Topic(i), self.topics[i].1)
        } else {
            return Some(Slot::Unsequenced);
        };
        (message.seq == last + 1).then_some(slot)
    }

    /// A direct write of `seq` on `slot` went out.
    fn sent(&mut self, slot: Slot, seq: u64) {
        match slot {
            Slot::Inbox => self.inbox = Some(seq),
            Slot::Topic(i) => self.topics[i].1 = seq,
            Slot::Unsequenced => {}
        }
        self.wrote = true;
    }

    /// Undoes [`sent`](Self::sent) of `seq` (the write would block).
    fn unsend(&mut self, slot: Slot, seq: u64) {
        match slot {
            Slot::Inbox => self.inbox = Some(seq - 1),
            Slot::Topic(i) => self.topics[i].1 = seq - 1,
            Slot::Unsequenced => {}
        }
    }
}

/// Bytes a queued item holds the connection to.
fn size(item: &Outbound) -> usize {
    match item {
        Outbound::Deliver(m) => m.frame.len(),
        Outbound::Close(_) | Outbound::Local(_) => 0,
    }
}

impl SendQueue {
    /// A queue whose socket is not shared, without deflate.
    #[cfg(test)]
    pub fn new(bound: Bound) -> Arc<Self> {
        Self::with_line(bound, None, None)
    }

    /// A queue that owns the connection's plain TCP socket (see the module
    /// doc); tungstenite reaches it through the wire module's `WireIo`.
    pub fn with_line(bound: Bound, line: Option<TcpStream>, deflate: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::default(),
            waker: AtomicWaker::new(),
            bound: Bound {
                frames: bound.frames.max(1),
                bytes: bound.bytes,
            },
            line,
            deflate,
        })
    }

    /// What permessage-deflate allows this connection: messages up to this
    /// many bytes go compressed (None: not agreed).
    pub fn deflate(&self) -> Option<usize> {
        self.deflate
    }

    /// Sets what the connection's user muted (none: nothing).
    pub fn set_mutes(&self, mutes: &Mutes) {
        let mutes = (!mutes.is_empty()).then(|| Arc::new(mutes.clone()));
        self.items.lock().expect("queue lock").mutes = mutes;
    }

    /// What the connection's user muted, if anything.
    pub fn mutes(&self) -> Option<Arc<Mutes>> {
        self.items.lock().expect("queue lock").mutes.clone()
    }

    /// Queues `item` unless the queue is at its bound in frames or bytes.
    pub fn push(&self, item: Outbound) -> Result<(), Full> {
        let items = self.items.lock().expect("queue lock");
        self.push_locked(items, item)
    }

    fn push_locked(
        &self,
        mut items: std::sync::MutexGuard<'_, Items>,
        item: Outbound,
    ) -> Result<(), Full> {
        self.enqueue(&mut items, item)?;
        drop(items);
        self.waker.wake();
        Ok(())
    }

    /// Queues `item` within the bound; the caller wakes the task.
    fn enqueue(&self, items: &mut Items, item: Outbound) -> Result<(), Full> {
        let len = size(&item);
        let over_bytes = items.bytes > 0 && items.bytes + len > self.bound.bytes;
        if items.queue.len() >= self.bound.frames || over_bytes {
            return Err(Full);
        }
        // Whatever is queued goes out before any later direct write.
        items.line.idle = false;
        items.bytes += len;
        items.queue.push_back(item);
        Ok(())
    }

    /// Queues the connection's own results (a store read, a publish answer)
    /// past the bound: there are a few at a time, and dropping one would
    /// stall a feed.
    pub fn push_local(&self, item: Outbound) {
        let mut items = self.items.lock().expect("queue lock");
        items.line.idle = false;
        items.bytes += size(&item);
        items.queue.push_back(item);
        drop(items);
        self.waker.wake();
    }

    /// Hands deliveries over, in order: written to the socket right here
    /// while the task is parked, each message is the next on its feed and
    /// the socket takes them without blocking — all in one `writev`, so a
    /// burst of commits costs a socket one syscall; queued otherwise (as
    /// [`push`](Self::push)). Returns how many were written (the first ones).
    pub fn offer_all(&self, messages: &[Arc<Prepared>]) -> Result<usize, Full> {
        let mut items = self.items.lock().expect("queue lock");
        let quieted: Vec<Arc<Prepared>>;
        let messages = match &items.mutes {
            Some(mutes) if messages.iter().any(|m| m.silenced_by(mutes)) => {
                quieted = messages
                    .iter()
                    .map(|m| {
                        if m.silenced_by(mutes) {
                            m.quieted()
                        } else {
                            Arc::clone(m)
                        }
                    })
                    .collect();
                &quieted[..]
            }
            _ => messages,
        };
        let written = match &self.line {
            Some(stream) if items.line.idle => {
                write_due(stream, &mut items, messages, self.deflate)
            }
            _ => 0,
        };
        let mut woken = !items.line.idle && written > 0;
        let mut outcome = Ok(written);
        for message in &messages[written..] {
            if let Err(full) = self.enqueue(&mut items, Outbound::Deliver(Arc::clone(message))) {
                outcome = Err(full);
                break;
            }
            woken = true;
        }
        drop(items);
        if woken {
            self.waker.wake();
        }
        outcome
    }

    /// The task is about to wait: if nothing is queued or half-written, the
    /// fan-out may write the feeds that are in sync (their last seq given)
    /// until [`unpark`](Self::unpark).
    pub fn park<'a>(
        &self,
        inbox: Option<u64>,
        topics: impl Iterator<Item = (&'a Topic, Option<u64>)> + Clone,
    ) {
        if self.line.is_none() {
            return;
        }
        let mut items = self.items.lock().expect("queue lock");
        let line = &mut items.line;
        if line.dirty || line.leftover.is_some() {
            return;
        }
        line.inbox = inbox;
        // Usually the same topics as last time: updated in place, no clones.
        let in_sync = topics.filter_map(|(t, last)| Some((t, last?)));
        let same = line.topics.len() == in_sync.clone().count()
            && line
                .topics
                .iter()
                .zip(in_sync.clone())
                .all(|(a, b)| a.0 == *b.0);
        if same {
            for (slot, (_, last)) in line.topics.iter_mut().zip(in_sync) {
                slot.1 = last;
            }
        } else {
            line.topics = in_sync.map(|(t, last)| (t.clone(), last)).collect();
        }
        items.line.idle = items.queue.is_empty();
    }

    /// The task woke: no more direct writes until it parks again. `advance`
    /// is told each feed's last seq if direct writes moved it (None: the inbox).
    pub fn unpark(&self, mut advance: impl FnMut(Option<&Topic>, u64)) {
        if self.line.is_none() {
            return;
        }
        let mut items = self.items.lock().expect("queue lock");
        let line = &mut items.line;
        line.idle = false;
        if !std::mem::take(&mut line.wrote) {
            return;
        }
        if let Some(last) = line.inbox {
            advance(None, last);
        }
        for (topic, last) in &line.topics {
            advance(Some(topic), *last);
        }
    }

    /// The shared socket (a queue built by [`with_line`](Self::with_line)).
    fn stream(&self) -> io::Result<&TcpStream> {
        self.line
            .as_ref()
            .ok_or_else(|| io::Error::other("this connection's socket is not shared"))
    }

    /// tungstenite reads.
    pub(crate) fn poll_read_line(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = self.stream()?;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// tungstenite writes: the connection is busy from here on, and the tail
    /// of a short direct write goes first.
    pub(crate) fn poll_write_line(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = self.stream()?;
        {
            let mut items = self.items.lock().expect("queue lock");
            items.line.idle = false;
            items.line.dirty = true;
            ready!(drain(stream, &mut items.line.leftover, cx))?;
        }
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    /// tungstenite flushed: everything it wrote is on the socket (it calls
    /// this only once its own buffer is written).
    pub(crate) fn poll_flush_line(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = self.stream()?;
        let mut items = self.items.lock().expect("queue lock");
        ready!(drain(stream, &mut items.line.leftover, cx))?;
        items.line.dirty = false;
        Poll::Ready(Ok(()))
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

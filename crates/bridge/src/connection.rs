//! One WebSocket connection: a task looping on `select!` over the socket, the
//! hub's deliveries, store reads, pings and the token's expiry.
//!
//! On connect the connection is registered first (live deliveries start),
//! then its inbox is read from the resume point (`?since=`, else the acked
//! seq); the [`Sequencer`] joins the two without gap or duplicate. Topic
//! subscriptions with `since` work the same way.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::{SinkExt, StreamExt};
use notify_auth::{Identity, Verifier};
use notify_core::{
    ConnectionId, Feed, Position, Subject, Topic, TopicPolicy, UserId, inbox::Mutes,
};
use notify_proto::v1::{self as pb, bridge_up::Msg as Up};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{
            CloseFrame,
            frame::{
                Frame,
                coding::{CloseCode, Data, OpCode},
            },
        },
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    hub::{Hub, Registration},
    inbox::{self, Badge},
    link::{Api, Pending},
    protocol::{self, Action, ErrorCode, FrameId, ServerFrame, Source, error_text},
    queue::{Local, Outbound, Prepared, SendQueue},
    rate::TokenBucket,
    refusal::Refusal,
    sequencer::{Outcome, Sequencer},
    wire::WireIo,
};

/// Messages read from the store per History call.
const PAGE: u32 = 500;
/// How long a client publish may wait for its commit.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries written per flush at most.
const FLUSH_BATCH: usize = 64;
/// How long a registration may wait for notify-svc's answers before the
/// client is told to come back (1013).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub hub: Hub,
    pub metrics: crate::metrics::Metrics,
    /// The bridge's and each user's connection limits.
    pub admissions: std::sync::Arc<crate::admission::Admissions>,
    pub api: Api,
    pub pending: Pending,
    pub verifier: Verifier,
    pub revocation: Option<std::sync::Arc<crate::revocation::Revocation>>,
    pub topics: TopicPolicy,
    pub queue: crate::queue::Bound,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub ping_every: Duration,
    pub max_subscriptions: usize,
    /// Connect attempts per client IP.
    pub peers: crate::peers::PeerLimits,
    /// The Dev Panel is served (`BRIDGE_PANEL`).
    pub panel: bool,
    /// Dev Panel publishes per admin.
    pub panel_publishes: crate::peers::PeerLimits<notify_core::UserId>,
    /// Client actions routed to backends.
    pub upstreams: crate::upstream::Upstreams,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Who presents `token` (the user `expected`, if any), or why not:
    /// the same decision at every door ([`crate::refusal`]).
    pub async fn authenticate(
        &self,
        token: &str,
        expected: Option<&UserId>,
    ) -> Result<notify_auth::Identity, Refusal> {
        let mut identity = crate::refusal::authenticate(
            &self.verifier,
            self.revocation.as_deref(),
            token,
            expected,
        )
        .await?;
        if !self.upstreams.in_use() {
            // Only backends read it; every idle socket's bytes count.
            identity.username = None;
        }
        Ok(identity)
    }
}

pub type Socket = WebSocketStream<WireIo>;

/// What woke the connection loop.
enum Event {
    Ping,
    Deliver(Arc<Prepared>),
    Local(Local),
    Frame(String),
    Binary,
    TooLarge,
}

fn slow_consumer() -> End {
    End::Close(protocol::CLOSE_SLOW_CONSUMER, "slow consumer".into())
}

fn restarting() -> End {
    End::Close(protocol::CLOSE_RESTARTING, "server restarting".into())
}

fn token_expired() -> End {
    End::Close(protocol::CLOSE_TOKEN_EXPIRED, "token expired".into())
}

/// What still acts on a connection while its handling waits.
struct Watch {
    slow: CancellationToken,
    shutdown: CancellationToken,
    expires: tokio::time::Instant,
    /// A wait this long leaves two pings unsent and no pong read: gone.
    silent_until: tokio::time::Instant,
    waiting: prometheus_client::metrics::gauge::Gauge,
}

/// Resolves with why the connection ends while its handling still waits
/// (a write to a client that reads nothing); counted meanwhile in
/// `bridge_waiting_connections`.
async fn watch_while_waiting(watch: Watch) -> End {
    let _waiting = Waiting::count(&watch.waiting);
    tokio::select! {
        () = watch.slow.cancelled() => slow_consumer(),
        () = watch.shutdown.cancelled() => restarting(),
        () = tokio::time::sleep_until(watch.expires) => token_expired(),
        () = tokio::time::sleep_until(watch.silent_until) => End::Close(protocol::CLOSE_NO_PONG, "no pong".into()),
    }
}

/// Counts a connection in a gauge while it lives.
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long the closing handshake may take: a peer that does not answer gets
/// its socket dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for a slow consumer: its socket buffers hold up to a few MB
/// still to read before the close frame. It costs only those buffers: its
/// queue is dropped first.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the loop ended, and how to close.
enum End {
    /// We close, with this code and reason.
    Close(u16, String),
    /// The client closed (its code; 1005 when its frame had none).
    ClientClosed(u16, String),
    /// The socket went away (1006).
    Gone,
}

impl End {
    /// The close code and reason, as lifecycle events report them.
    fn close(&self) -> (u16, &str) {
        match self {
            Self::Close(code, reason) | Self::ClientClosed(code, reason) => (*code, reason),
            Self::Gone => (CLOSE_ABNORMAL, "connection lost"),
        }
    }
}

/// RFC 6455: no close frame (reported, never sent).
const CLOSE_ABNORMAL: u16 = 1006;
/// RFC 6455: a close frame without a code (reported, never sent).
const CLOSE_NO_STATUS: u16 = 1005;
/// RFC 6455: the server failed (a connection task panicked).
const CLOSE_INTERNAL_ERROR: u16 = 1011;

struct Conn {
    id: ConnectionId,
    identity: Box<Identity>,
    shared: Arc<Shared>,
    inbox: Sequencer<Arc<Prepared>>,
    topics: HashMap<Topic, Sequencer<Arc<Prepared>>>,
    /// Topics a backend subscribed it to: held by the server, not by the
    /// token, so a refresh's policy check leaves them.
    server_topics: Vec<Topic>,
    /// Its own queue, for [`Local`] results.
    me: Arc<SendQueue>,
    bucket: TokenBucket,
    /// Routed actions' state, made on first use: most sockets never route
    /// a frame, and every idle socket's bytes count (5 KB budget).
    routed: Option<Box<Routed>>,
    /// The counts this socket was last sent.
    badge: Badge,
    /// Inbox actions in flight (at most [`inbox::CALLS_PER_CONNECTION`]).
    inbox_calls: u8,
}

/// A connection's routed actions.
#[derive(Default)]
struct Routed {
    /// Calls in flight.
    calls: u16,
    /// What the connect hook kept with the connection.
    data: Option<Box<str>>,
}

/// A connection's place in the hub, given up by [`leave`](Self::leave),
/// or when dropped (a panic: reported as 1011).
struct Departure {
    id: ConnectionId,
    /// None once left.
    shared: Option<Arc<Shared>>,
}

impl Departure {
    fn leave(mut self, code: u16, reason: &str) {
        if let Some(shared) = self.shared.take() {
            depart(&shared, self.id, code, reason);
        }
    }
}

impl Drop for Departure {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            depart(&shared, self.id, CLOSE_INTERNAL_ERROR, "bridge error");
        }
    }
}

fn depart(shared: &Shared, id: ConnectionId, code: u16, reason: &str) {
    if let Some(revocation) = &shared.revocation {
        revocation.release(id);
    }
    shared.hub.close(id, code, reason);
    shared.hub.flush_acks();
    shared.metrics.connections.dec();
}

/// An upgraded socket as the server hands it over.
pub struct Accepted {
    pub ws: Socket,
    /// Its send queue (holding the socket when it is shared with the fan-out).
    pub queue: Arc<SendQueue>,
    /// The client's resume point (`?since=`), if it gave one.
    pub since: Option<u64>,
    /// The token, kept only when revocation is checked (it is asked about
    /// again every interval).
    pub token: Option<Box<str>>,
    /// Its place under the connection limits, given back as the hub forgets
    /// it (kept here, on the heap, not in the connection's state).
    pub admitted: Option<crate::admission::Admitted>,
    /// What the connect hook gave it (and its id, made before the upgrade
    /// to tell the hook), if a hook is configured.
    pub hooked: Option<Box<crate::upstream::Hooked>>,
}

/// Serves one upgraded connection until it ends.
///
/// Arguments are boxed on purpose: an async fn keeps its arguments and their
/// moved copies side by side in its state for the connection's whole life,
/// and idle connections are what a bridge holds most of.
pub async fn serve(accepted: Box<Accepted>, identity: Box<Identity>, shared: Arc<Shared>) {
    let mut accepted = accepted;
    let id = accepted
        .hooked
        .as_ref()
        .map_or_else(ConnectionId::new, |hooked| hooked.id);
    let queue = accepted.queue.clone();
    let slow = CancellationToken::new();
    let registration = shared
        .hub
        .open(id, identity.user.clone(), queue.clone(), slow.clone());
    shared.metrics.connects.inc();
    shared.metrics.connections.inc();
    // Deregisters however the connection ends, a panic included: a
    // connection the hub still routes to but nobody serves is a ghost.
    let departure = Departure {
        id,
        shared: Some(shared.clone()),
    };
    if let (Some(revocation), Some(token)) = (&shared.revocation, accepted.token.take()) {
        revocation.hold(id, &identity, &token);
    }
    tracing::debug!(conn = %id, user = %identity.user, "connected");

    let opening = Opening {
        id,
        identity,
        since: accepted.since,
        registration,
        me: queue.clone(),
        shared: shared.clone(),
        hooked: accepted.hooked.take(),
    };
    let started = start_boxed(&mut accepted.ws, opening);
    let end = match started.await {
        Ok(mut conn) => conn.run(&mut accepted.ws, &queue, &slow).await,
        Err(end) => end,
    };
    // No more direct writes: what follows is the closing handshake.
    queue.unpark(|_, _| {});
    let (code, reason) = end.close();
    departure.leave(code, reason);
    // A reconnect during the closing handshake finds the place free.
    drop(accepted.admitted.take());
    let mut close_within = CLOSE_TIMEOUT;
    if matches!(end, End::Close(code, _) if code == protocol::CLOSE_SLOW_CONSUMER) {
        shared.metrics.slow_consumers.inc();
        // What it will never be sent goes now; what is written already
        // drains while a merely slow client reads on to learn 4008 (and
        // resume at once instead of backing off from an abrupt close).
        queue.clear();
        close_within = SLOW_CLOSE_TIMEOUT;
    }
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let ws = &mut accepted.ws;
        let closing = async {
            let _ = ws.close(Some(frame)).await;
            // The closing handshake: read (and drop) until the client's own
            // close, so that frames it sends meanwhile (a pong, an ack) do
            // not meet a closed socket, whose reset would destroy our close
            // frame before the client reads it.
            while let Some(Ok(_)) = ws.next().await {}
        };
        tokio::select! {
            _ = tokio::time::timeout(close_within, closing) => {}
            // A bridge going down does not wait out a slow reader.
            () = shared.shutdown.cancelled(), if close_within > CLOSE_TIMEOUT => {}
        }
    }
    tracing::debug!(conn = %id, "disconnected");
}

/// [`start`], boxed by a plain function: a start runs once, and an async
/// caller would keep room for the unboxed future in its own state (rustc
/// keeps such temporaries) for the connection's whole life.
fn start_boxed(
    ws: &mut Socket,
    opening: Opening,
) -> Pin<Box<impl Future<Output = Result<Box<Conn>, End>> + '_>> {
    Box::pin(start(ws, opening))
}

/// What a connection starts from.
struct Opening {
    id: ConnectionId,
    identity: Box<Identity>,
    /// The client's resume point (`?since=`), if it gave one.
    since: Option<u64>,
    registration: Registration,
    /// The connection's own queue.
    me: Arc<SendQueue>,
    shared: Arc<Shared>,
    /// What the connect hook gave it.
    hooked: Option<Box<crate::upstream::Hooked>>,
}

/// Waits for a registration to be in routing on every notify-svc.
async fn registered(registration: Registration) -> Result<Position, String> {
    match tokio::time::timeout(REGISTER_TIMEOUT, registration).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("connection closed".into()),
        Err(_) => Err("notify-svc did not answer in time".into()),
    }
}

/// Welcome, then the replay (if the inbox holds anything after the resume
/// point) once the connection is in routing everywhere.
async fn start(ws: &mut Socket, opening: Opening) -> Result<Box<Conn>, End> {
    let Opening {
        id,
        identity,
        since,
        registration,
        me,
        shared,
        hooked,
    } = opening;
    let asked = Instant::now();
    let position = registered(registration)
        .await
        .map_err(|e| End::Close(protocol::CLOSE_TRY_AGAIN, format!("inbox unavailable: {e}")))?;
    shared
        .metrics
        .registration_wait
        .observe(asked.elapsed().as_secs_f64());
    // A resume point past the head (a client of another database, a forged
    // `since`) is clamped like a topic's: live messages must still arrive,
    // and its acks must not mark undelivered seqs as delivered.
    let after = since.unwrap_or(position.acked_seq).min(position.head_seq);
    let welcome = ServerFrame::Welcome {
        connection_id: &id.to_string(),
        user_id: identity.user.as_str(),
        seq: position.head_seq,
        recovered: position.recovers(after),
        first_seq: position.first_seq,
        counts: inbox::counts_json(position.counts),
        mutes: inbox::mutes_json(&position.mutes),
    };
    send(ws, welcome.to_text()).await?;
    me.set_mutes(&position.mutes);
    let (inbox, _) = Sequencer::resume(after);
    let bucket = TokenBucket::new(shared.rate_per_sec, shared.burst, Instant::now());
    let mut conn = Box::new(Conn {
        id,
        identity,
        shared,
        inbox,
        topics: HashMap::new(),
        server_topics: Vec::new(),
        me,
        bucket,
        routed: None,
        badge: Badge::new(position.counts),
        inbox_calls: 0,
    });
    if position.head_seq > after {
        conn.fetch(conn.inbox_feed(), after, Duration::ZERO);
    } else {
        // Nothing stored after the resume point: live at once.
        let outcome = conn.inbox.stored(Vec::new(), true);
        conn.emit(ws, None, outcome).await?;
    }
    // The user's server-side subscriptions, followed from the welcome on (a
    // client that knows where it stood re-subscribes with its `since`).
    // And the topics the connect hook gave this connection alone.
    let (hook_topics, hook_data) = match hooked {
        Some(hooked) => (hooked.topics, hooked.data),
        None => (Vec::new(), None),
    };
    if let Some(data) = hook_data {
        conn.routed = Some(Box::new(Routed {
            calls: 0,
            data: Some(data),
        }));
    }
    for topic in position.subscriptions.into_iter().chain(hook_topics) {
        // Boxed: most users have none, and the start of every connection
        // would otherwise carry room for a registration wait.
        let text = Box::pin(conn.follow(topic, None, Source::Server, None)).await;
        send(ws, text).await?;
    }
    ws.flush().await.map_err(|_| End::Gone)?;
    Ok(conn)
}

/// A page read from the store, ready to send; topic messages the user
/// muted take their place and write nothing.
fn page(messages: Vec<pb::StoredMessage>, mutes: Option<&Mutes>) -> Vec<(u64, Arc<Prepared>)> {
    messages
        .into_iter()
        .filter_map(Prepared::new)
        .map(|m| match mutes {
            Some(mutes) if m.silenced_by(mutes) => m.quieted(),
            _ => m,
        })
        .map(|m| (m.seq, m))
        .collect()
}

/// Queues a frame; it goes out with the next flush (or once the write
/// buffer is over its size).
async fn send(ws: &mut Socket, text: String) -> Result<(), End> {
    ws.feed(Message::text(text)).await.map_err(|_| End::Gone)
}

impl Conn {
    // One function on purpose (~130 lines): the select, the handling and the
    // watch below share one future, whose size is every idle connection's
    // memory (the bridge's budget is 5 KB a socket, docs/benchmarks.md); the
    // loop is tuned as a whole and measured as a whole.
    async fn run(&mut self, ws: &mut Socket, queue: &SendQueue, slow: &CancellationToken) -> End {
        let mut ping = tokio::time::interval(self.shared.ping_every);
        ping.tick().await;
        let mut unanswered_pings = 0u32;
        // Its own handle: the handling below holds `self` while the token is
        // watched beside it.
        let shutdown = self.shared.shutdown.clone();
        let waiting = self.shared.metrics.waiting.clone();
        loop {
            let expires = tokio::time::Instant::now() + self.expiry();
            self.park(queue);
            let event = tokio::select! {
                () = shutdown.cancelled() => return restarting(),
                () = slow.cancelled() => return slow_consumer(),
                () = tokio::time::sleep_until(expires) => return token_expired(),
                _ = ping.tick() => {
                    // Two pings without a pong: the peer is gone.
                    if unanswered_pings >= 2 {
                        return End::Close(protocol::CLOSE_NO_PONG, "no pong".into());
                    }
                    unanswered_pings += 1;
                    Event::Ping
                }
                out = queue.pop() => match out {
                    Outbound::Deliver(message) => Event::Deliver(message),
                    Outbound::Close(order) => return End::Close(order.code, order.reason),
                    Outbound::Local(local) => Event::Local(*local),
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => Event::Frame(text.as_str().to_owned()),
                    Some(Ok(Message::Binary(_))) => Event::Binary,
                    Some(Ok(Message::Pong(_))) => {
                        unanswered_pings = 0;
                        self.unpark(queue);
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => {
                        self.unpark(queue);
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) => End::ClientClosed(f.code.into(), f.reason.as_str().to_owned()),
                            None => End::ClientClosed(CLOSE_NO_STATUS, String::new()),
                        };
                    }
                    None => return End::Gone,
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => Event::TooLarge,
                    // RFC 6455 §8.1: a text frame that is not UTF-8 fails the
                    // connection with 1007.
                    Some(Err(tokio_tungstenite::tungstenite::Error::Utf8(_))) => {
                        return End::Close(protocol::CLOSE_INVALID_PAYLOAD, "text frames must be UTF-8".into());
                    }
                    Some(Err(_)) => return End::Gone,
                },
            };
            self.unpark(queue);
            // Handling writes to the socket; a client that stops reading must
            // not hold the task: the hub's overflow signal, shutdown, the
            // token's expiry and the ping timer all still act while a write
            // waits. Frames are queued and go out in one flush at the end.
            let handled = async {
                match event {
                    Event::Ping => ws
                        .feed(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|_| End::Gone)?,
                    Event::Deliver(message) => {
                        self.delivered(ws, message).await?;
                        // Deliveries already waiting join the same flush: one
                        // write for many frames when a fan-out runs ahead of
                        // the socket (a loopback send costs more than a frame).
                        for _ in 1..FLUSH_BATCH {
                            match queue.try_pop() {
                                Some(Outbound::Deliver(m)) => self.delivered(ws, m).await?,
                                Some(Outbound::Close(order)) => {
                                    return Err(End::Close(order.code, order.reason));
                                }
                                Some(Outbound::Local(local)) => {
                                    self.local(ws, *local).await?;
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Event::Local(local) => self.local(ws, local).await?,
                    // Boxed: frame handling is rare next to deliveries, and
                    // its future (token checks, registrations) is large.
                    Event::Frame(text) => Box::pin(self.frame(ws, &text)).await?,
                    Event::Binary => {
                        let text = error_text(
                            ErrorCode::BadRequest,
                            "binary frames are not accepted: send JSON text",
                            None,
                        );
                        send(ws, text).await?
                    }
                    Event::TooLarge => {
                        let _ = send(
                            ws,
                            error_text(ErrorCode::TooLarge, "frame over 64 KiB", None),
                        )
                        .await;
                        return Err(End::Close(
                            protocol::CLOSE_TOO_LARGE,
                            "frame too large".into(),
                        ));
                    }
                }
                ws.flush().await.map_err(|_| End::Gone)
            };
            let mut handled = std::pin::pin!(handled);
            // Most events are handled at once. One that waits gets a watch,
            // boxed and made only then: its timers would otherwise take room
            // in every idle connection's state (and one await point keeps
            // the handling's own room shared with the select above).
            let mut watch = None;
            let result = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(result) = handled.as_mut().poll(cx) {
                    return std::task::Poll::Ready(result);
                }
                let watch = watch.get_or_insert_with(|| {
                    Box::pin(watch_while_waiting(Watch {
                        slow: slow.clone(),
                        shutdown: shutdown.clone(),
                        expires,
                        // Two pings' time without reading a pong.
                        silent_until: tokio::time::Instant::now() + 2 * ping.period(),
                        waiting: waiting.clone(),
                    }))
                });
                watch.as_mut().poll(cx).map(Err)
            })
            .await;
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Lets the fan-out write to the socket while the loop waits: the feeds
    /// in sync are told with their last seq ([`SendQueue::park`]).
    fn park(&self, queue: &SendQueue) {
        let topics = self.topics.iter().map(|(t, seq)| (t, seq.in_sync()));
        queue.park(self.inbox.in_sync(), topics);
    }

    /// The loop woke: what the fan-out wrote meanwhile moves the feeds.
    fn unpark(&mut self, queue: &SendQueue) {
        let (inbox, topics) = (&mut self.inbox, &mut self.topics);
        queue.unpark(|topic, last| match topic {
            None => inbox.advance(last),
            Some(topic) => {
                if let Some(seq) = topics.get_mut(topic) {
                    seq.advance(last);
                }
            }
        });
    }

    async fn local(&mut self, ws: &mut Socket, local: Local) -> Result<(), End> {
        match local {
            // The flush at the end of the turn writes the rest.
            Local::Flush => Ok(()),
            Local::Read(feed, read) => Box::pin(self.read(ws, feed, read)).await,
            Local::Reply(text) => send(ws, text).await,
            Local::Routed(text) => {
                if let Some(routed) = &mut self.routed {
                    routed.calls = routed.calls.saturating_sub(1);
                }
                send(ws, text).await
            }
            Local::ServerSubscribe(topic, after) => {
                if self.topics.contains_key(&topic) {
                    return Ok(()); // followed already, from its own position
                }
                // Boxed like frame handling: a registration's future is large,
                // and the loop's state (every idle connection's) holds room
                // for whatever it awaits inline.
                let text = Box::pin(self.follow(topic, Some(after), Source::Server, None)).await;
                send(ws, text).await
            }
            Local::ServerUnsubscribe(topic) => {
                if self.topics.remove(&topic).is_none() {
                    return Ok(());
                }
                self.shared.hub.unsubscribe(self.id, &topic);
                self.forget_server_topic(&topic);
                let text = ServerFrame::Unsubscribed {
                    topic: topic.as_str(),
                    source: Source::Server,
                    reason: None,
                    id: None,
                }
                .to_text();
                send(ws, text).await
            }
            Local::Counts(counts) => match self.badge.update(counts) {
                Some(text) => send(ws, text).await,
                None => Ok(()),
            },
            Local::Inbox(change) => {
                for text in inbox::change_frames(&change, &mut self.badge) {
                    send(ws, text).await?;
                }
                Ok(())
            }
            Local::InboxReply(text, counts) => {
                self.inbox_calls = self.inbox_calls.saturating_sub(1);
                send(ws, text).await?;
                match counts.and_then(|c| self.badge.update(c)) {
                    Some(text) => send(ws, text).await,
                    None => Ok(()),
                }
            }
            Local::CatchUp(delay) => {
                if let Some(after) = self.inbox.catch_up() {
                    self.fetch(self.inbox_feed(), after, delay);
                }
                let topics: Vec<(Topic, u64)> = self
                    .topics
                    .iter_mut()
                    .filter_map(|(t, seq)| Some((t.clone(), seq.catch_up()?)))
                    .collect();
                for (topic, after) in topics {
                    self.fetch(Feed::Topic(topic), after, delay);
                }
                Ok(())
            }
        }
    }

    /// Time left on the token.
    fn expiry(&self) -> Duration {
        self.identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    async fn delivered(&mut self, ws: &mut Socket, message: Arc<Prepared>) -> Result<(), End> {
        if !message.user_id.is_empty() {
            let outcome = self.inbox.live(message.seq, message);
            self.shed_past_bound(None);
            return self.emit(ws, None, outcome).await;
        }
        if let Some(topic) = &message.topic {
            let Some(seq) = self.topics.get_mut(topic) else {
                return Ok(());
            };
            let outcome = seq.live(message.seq, Arc::clone(&message));
            self.shed_past_bound(Some(topic));
            return self.emit(ws, Some(topic), outcome).await;
        }
        self.write_message(ws, &message).await
    }

    /// Live messages held back while a feed waits for a store read (a
    /// replay, a gap fill, a catch-up) are bounded like the send queue. Past
    /// the bound they are shed and the read brings them instead (every live
    /// message is committed): a slow store costs no memory and closes no
    /// client that reads; one that stalls meets the send queue's bound when
    /// the read's pages reach it.
    fn shed_past_bound(&mut self, topic: Option<&Topic>) {
        let bound = self.shared.queue;
        let seq = match topic {
            None => &mut self.inbox,
            Some(topic) => match self.topics.get_mut(topic) {
                Some(seq) => seq,
                None => return,
            },
        };
        let (mut frames, mut bytes) = (0, 0);
        let over = seq.waiting().any(|m| {
            frames += 1;
            bytes += m.frame.len();
            // One frame alone always fits, as in the queue.
            frames > bound.frames || (frames > 1 && bytes > bound.bytes)
        });
        if over {
            seq.shed();
            self.shared.metrics.held_shed.inc();
        }
    }
    async fn read(
        &mut self,
        ws: &mut Socket,
        feed: Feed,
        read: Result<pb::HistoryResponse, tonic::Status>,
    ) -> Result<(), End> {
        let response = match read {
            Ok(r) => r,
            Err(e) => {
                // Try again shortly: the sequencer still waits for this read.
                tracing::warn!(conn = %self.id, error = %e, "store read failed");
                let last = match &feed {
                    Feed::Inbox(_) => self.inbox.last(),
                    Feed::Topic(t) => self.topics.get(t).map_or(0, Sequencer::last),
                };
                self.fetch(feed, last, Duration::from_millis(500));
                return Ok(());
            }
        };
        let complete = !response.has_more;
        let mutes = self.me.mutes();
        self.shared.metrics.replay(response.messages.len());
        let outcome = match &feed {
            Feed::Inbox(_) => self.inbox.stored(page(response.messages, None), complete),
            Feed::Topic(t) => match self.topics.get_mut(t) {
                Some(seq) => seq.stored(page(response.messages, mutes.as_deref()), complete),
                None => return Ok(()), // unsubscribed meanwhile
            },
        };
        let topic = match &feed {
            Feed::Inbox(_) => None,
            Feed::Topic(t) => Some(t),
        };
        self.emit(ws, topic, outcome).await
    }

    /// Sends what the sequencer released from the inbox (`topic` None) or a
    /// topic; the feed to read is built only if a store read is needed (the
    /// common live path allocates nothing).
    async fn emit(
        &mut self,
        ws: &mut Socket,
        topic: Option<&Topic>,
        outcome: Outcome<Arc<Prepared>>,
    ) -> Result<(), End> {
        for message in &outcome.emit {
            self.write_message(ws, message).await?;
        }
        if let Some(after) = outcome.fetch_after {
            let feed = match topic {
                None => self.inbox_feed(),
                Some(topic) => Feed::Topic(topic.clone()),
            };
            self.fetch(feed, after, Duration::ZERO);
        }
        Ok(())
    }

    /// This connection's user's inbox, as a feed to read.
    fn inbox_feed(&self) -> Feed {
        Feed::Inbox(self.identity.user.clone())
    }

    fn fetch(&self, feed: Feed, after: u64, delay: Duration) {
        let (api, me) = (self.shared.api.clone(), self.me.clone());
        let target = match &feed {
            Feed::Inbox(user) => pb::history_request::Target::UserId(user.to_string()),
            Feed::Topic(t) => pb::history_request::Target::Topic(t.to_string()),
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let read = api
                .history(pb::HistoryRequest {
                    target: Some(target),
                    since: after,
                    limit: PAGE,
                    after_acked: false,
                })
                .await;
            me.push_local(Outbound::Local(Box::new(Local::Read(feed, read))));
        });
    }

    async fn write_message(&self, ws: &mut Socket, m: &Prepared) -> Result<(), End> {
        if m.is_silent() {
            return Ok(()); // muted or retracted: its seq moved the feed on
        }
        self.shared.metrics.messages_out.inc();
        // The frame was encoded (and compressed) once for every connection
        // it goes to.
        let message = match self.me.deflate().and_then(|max| m.deflated(max)) {
            Some((frame, payload_at)) => {
                let mut frame =
                    Frame::message(frame.slice(*payload_at..), OpCode::Data(Data::Text), true);
                frame.header_mut().rsv1 = true;
                Message::Frame(frame)
            }
            None => Message::Text(m.frame.clone()),
        };
        ws.feed(message).await.map_err(|_| End::Gone)
    }

    async fn frame(&mut self, ws: &mut Socket, text: &str) -> Result<(), End> {
        self.shared.metrics.frames_in.inc();
        if !self.bucket.allow(Instant::now()) {
            let wait = self.bucket.retry_after().as_millis();
            let message = format!("too many frames; retry in {wait} ms");
            return send(ws, error_text(ErrorCode::RateLimited, &message, None)).await;
        }
        let action = match protocol::parse(text) {
            Ok(action) => action,
            Err(e) => {
                let route = e
                    .action
                    .as_deref()
                    .and_then(|a| self.shared.upstreams.route(a));
                return match route {
                    Some(route) => {
                        let route = Arc::clone(route);
                        let action = e.action.unwrap_or_default();
                        self.route(ws, route, action, text, e.id).await
                    }
                    None => send(ws, error_text(e.code, &e.message, e.id.as_ref())).await,
                };
            }
        };
        let id = action.id().cloned();
        let reply = match action {
            Action::Ping { .. } | Action::ExtendTtl { .. } => {
                Some(ServerFrame::Pong { id: id.as_ref() }.to_text())
            }
            Action::Ack { seq, .. } => {
                let seq = seq.min(self.inbox.last());
                self.shared.hub.ack(&self.identity.user, seq);
                None
            }
            Action::Subscribe { topic, since, .. } => {
                Some(self.subscribe(&topic, since, id.as_ref()).await)
            }
            Action::Unsubscribe { topic, .. } => Some(self.unsubscribe(&topic, id.as_ref())),
            Action::Publish {
                topic, data, event, ..
            } => {
                self.publish(&topic, &data.to_string(), event.as_deref(), id);
                None
            }
            Action::Refresh { token, .. } => return self.refresh(ws, &token, id).await,
            Action::Mark {
                kind, seqs, up_to, ..
            } => {
                let call = inbox::mark(self.identity.user.as_str(), &kind, seqs, up_to);
                self.inbox_call(call, id)
            }
            Action::History {
                before,
                limit,
                unread_only,
                show,
                events,
                ..
            } => {
                let user = self.identity.user.as_str();
                let call =
                    inbox::history(user, before, limit, unread_only, show.as_deref(), events);
                self.inbox_call(call, id)
            }
            Action::Mute {
                events, namespaces, ..
            } => {
                let call = inbox::mutes(self.identity.user.as_str(), true, events, namespaces);
                self.inbox_call(Ok(call), id)
            }
            Action::Unmute {
                events, namespaces, ..
            } => {
                let call = inbox::mutes(self.identity.user.as_str(), false, events, namespaces);
                self.inbox_call(Ok(call), id)
            }
            Action::Preferences { .. } => {
                let call = inbox::preferences(self.identity.user.as_str());
                self.inbox_call(Ok(call), id)
            }
            Action::Counts { .. } => {
                let call = inbox::counts(self.identity.user.as_str());
                self.inbox_call(Ok(call), id)
            }
            Action::RegisterPush {
                web_push,
                fcm,
                apns,
                ..
            } => {
                let call = inbox::register_push(self.identity.user.as_str(), web_push, fcm, apns);
                self.inbox_call(call, id)
            }
            Action::PushDevices { .. } => {
                let call = inbox::push_devices(self.identity.user.as_str());
                self.inbox_call(Ok(call), id)
            }
            Action::UnregisterPush { device_id, .. } => {
                let call = inbox::unregister_push(self.identity.user.as_str(), device_id);
                self.inbox_call(Ok(call), id)
            }
        };
        match reply {
            Some(text) => send(ws, text).await,
            None => Ok(()),
        }
    }

    /// `unsubscribe`: the client stops following a topic.
    fn unsubscribe(&mut self, topic: &str, id: Option<&FrameId>) -> String {
        match Topic::parse(topic) {
            Ok(t) => {
                self.topics.remove(&t);
                self.forget_server_topic(&t);
                self.shared.hub.unsubscribe(self.id, &t);
                ServerFrame::Unsubscribed {
                    topic,
                    source: Source::Client,
                    reason: None,
                    id,
                }
                .to_text()
            }
            Err(e) => error_text(ErrorCode::BadRequest, &e.to_string(), id),
        }
    }

    /// `refresh`: a fresh token for the same user extends the session; a
    /// refused one is answered, and a signed-out one also closes the socket.
    async fn refresh(
        &mut self,
        ws: &mut Socket,
        token: &str,
        id: Option<FrameId>,
    ) -> Result<(), End> {
        let user = self.identity.user.clone();
        match self.shared.authenticate(token, Some(&user)).await {
            Ok(fresh) => {
                *self.identity = fresh;
                if let Some(revocation) = &self.shared.revocation {
                    revocation.hold(self.id, &self.identity, token);
                }
                let exp = self
                    .identity
                    .expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let text = ServerFrame::Refreshed {
                    exp,
                    id: id.as_ref(),
                }
                .to_text();
                send(ws, text).await?;
                self.drop_topics_the_token_may_not_hold(ws).await
            }
            Err(refusal) => {
                send(ws, refusal.frame(id.as_ref())).await?;
                match refusal.closes() {
                    Some(code) => Err(End::Close(code, refusal.reason().into())),
                    None => Ok(()),
                }
            }
        }
    }

    /// After a refresh: the topics the client subscribed to that the new
    /// token's claims may not hold (another realm, no longer an admin) are
    /// dropped, each with a frame saying why. A backend's subscriptions stay.
    async fn drop_topics_the_token_may_not_hold(&mut self, ws: &mut Socket) -> Result<(), End> {
        let refused: Vec<(Topic, String)> = self
            .topics
            .keys()
            .filter(|t| !self.is_server_topic(t))
            .filter_map(|t| {
                let why = self.shared.topics.may_subscribe(self.subject(), t).err()?;
                Some((t.clone(), why.to_string()))
            })
            .collect();
        for (topic, why) in refused {
            self.topics.remove(&topic);
            self.shared.hub.unsubscribe(self.id, &topic);
            let text = ServerFrame::Unsubscribed {
                topic: topic.as_str(),
                source: Source::Policy,
                reason: Some(&why),
                id: None,
            }
            .to_text();
            send(ws, text).await?;
        }
        Ok(())
    }

    fn is_server_topic(&self, topic: &Topic) -> bool {
        self.server_topics.contains(topic)
    }

    fn forget_server_topic(&mut self, topic: &Topic) {
        self.server_topics.retain(|t| t != topic);
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            user: &self.identity.user,
            realm: self.identity.realm.as_deref(),
            admin: self.identity.in_group(notify_core::topic::ADMIN_GROUP),
        }
    }

    async fn subscribe(&mut self, raw: &str, since: Option<u64>, id: Option<&FrameId>) -> String {
        let topic = match Topic::parse(raw) {
            Ok(t) => t,
            Err(e) => return error_text(ErrorCode::BadRequest, &e.to_string(), id),
        };
        if let Err(e) = self.shared.topics.may_subscribe(self.subject(), &topic) {
            return error_text(ErrorCode::Forbidden, &e.to_string(), id);
        }
        self.follow(topic, since, Source::Client, id).await
    }

    /// Follows `topic` from after `since` (else from its head), as the
    /// client asked or a backend did (whose topic policy is its own).
    async fn follow(
        &mut self,
        topic: Topic,
        since: Option<u64>,
        source: Source,
        id: Option<&FrameId>,
    ) -> String {
        // Each topic is a routing entry here and in every notify-svc: a
        // connection may not grow them without bound. Resubscribing is free.
        if !self.topics.contains_key(&topic) && self.topics.len() >= self.shared.max_subscriptions {
            let why = format!(
                "{topic}: at most {} topics per connection: unsubscribe from one first",
                self.shared.max_subscriptions
            );
            return error_text(ErrorCode::Forbidden, &why, id);
        }
        // In routing first, then the head as read after that: nothing
        // committed in between is missed.
        let registration = self.shared.hub.subscribe(self.id, topic.clone());
        let position = match registered(registration).await {
            Ok(position) => position,
            Err(e) => {
                self.shared.hub.unsubscribe(self.id, &topic);
                return error_text(
                    ErrorCode::Unavailable,
                    &format!("topic unavailable: {e}"),
                    id,
                );
            }
        };
        let head = position.head_seq;
        let after = since.unwrap_or(head).min(head);
        let (mut seq, _) = Sequencer::resume(after);
        if after == head {
            // Nothing stored to replay: go live at once.
            seq.stored(Vec::new(), true);
        } else {
            self.fetch(Feed::Topic(topic.clone()), after, Duration::ZERO);
        }
        self.topics.insert(topic.clone(), seq);
        if source == Source::Server && !self.is_server_topic(&topic) {
            self.server_topics.push(topic.clone());
        }
        ServerFrame::Subscribed {
            topic: topic.as_str(),
            seq: head,
            recovered: position.recovers(after),
            first_seq: position.first_seq,
            source,
            id,
        }
        .to_text()
    }

    /// Sends a client publish up; the reply comes back as a [`Local`].
    /// Sends a frame whose action is routed to its backend; the reply (or
    /// the error) comes back as [`Local::Routed`]. Bounded per connection
    /// and per route: past either bound the client is told at once.
    async fn route(
        &mut self,
        ws: &mut Socket,
        route: Arc<crate::upstream::Route>,
        action: String,
        frame: &str,
        id: Option<FrameId>,
    ) -> Result<(), End> {
        let upstreams = &self.shared.upstreams;
        let state = self.routed.get_or_insert_with(Box::default);
        if usize::from(state.calls) >= upstreams.per_connection() {
            let busy = crate::upstream::CallError::ConnectionBusy(upstreams.per_connection());
            return send(ws, busy.frame(id.as_ref())).await;
        }
        let permit = match route.admit() {
            Ok(permit) => permit,
            Err(busy) => return send(ws, busy.frame(id.as_ref())).await,
        };
        state.calls += 1;
        self.shared.metrics.routed.inc();
        let named = action.clone();
        let request = pb::HandleRequest {
            caller: Some(crate::upstream::caller(
                &self.identity,
                &self.id.to_string(),
                self.shared.hub.bridge_id(),
            )),
            route: String::new(),
            action,
            frame: frame.to_owned(),
            connection_data: state.data.as_deref().unwrap_or_default().to_owned(),
        };
        let (me, timeout) = (self.me.clone(), upstreams.timeout());
        tokio::spawn(async move {
            let answer = route.call(request, timeout).await;
            drop(permit);
            let text = match answer {
                Ok(reply) => {
                    let data = serde_json::value::RawValue::from_string(reply)
                        .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
                    ServerFrame::Reply {
                        action: &named,
                        data: &data,
                        id: id.as_ref(),
                    }
                    .to_text()
                }
                Err(e) => e.frame(id.as_ref()),
            };
            me.push_local(Outbound::Local(Box::new(Local::Routed(text))));
        });
        Ok(())
    }

    /// Makes an inbox action's call off the loop; its answer comes back as
    /// [`Local::InboxReply`]. Returns the error to answer at once: a frame
    /// notify-svc need not see, or too many calls in flight.
    fn inbox_call(
        &mut self,
        call: Result<inbox::Call, String>,
        id: Option<FrameId>,
    ) -> Option<String> {
        let call = match call {
            Ok(call) => call,
            Err(why) => return Some(error_text(ErrorCode::BadRequest, &why, id.as_ref())),
        };
        if self.inbox_calls >= inbox::CALLS_PER_CONNECTION {
            let why = format!(
                "{} inbox actions are in flight on this socket; wait for their answers",
                inbox::CALLS_PER_CONNECTION
            );
            return Some(error_text(ErrorCode::RateLimited, &why, id.as_ref()));
        }
        self.inbox_calls += 1;
        let (api, me) = (self.shared.api.clone(), self.me.clone());
        tokio::spawn(async move {
            let (text, counts) = match api.inbox(call).await {
                Ok(answer) => inbox::reply(answer, id.as_ref()),
                Err(status) => (inbox::refused(&status, id.as_ref()), None),
            };
            me.push_local(Outbound::Local(Box::new(Local::InboxReply(text, counts))));
        });
        None
    }

    fn publish(&self, raw: &str, data: &str, event: Option<&str>, id: Option<FrameId>) {
        let me = self.me.clone();
        let reply = move |text: String| {
            let me = me.clone();
            async move {
                me.push_local(Outbound::Local(Box::new(Local::Reply(text))));
            }
        };
        let topic = match Topic::parse(raw) {
            Ok(t) => t,
            Err(e) => {
                tokio::spawn(reply(error_text(
                    ErrorCode::BadRequest,
                    &e.to_string(),
                    id.as_ref(),
                )));
                return;
            }
        };
        if let Err(e) = self
            .shared
            .topics
            .may_client_publish(self.subject(), &topic)
        {
            tokio::spawn(reply(error_text(
                ErrorCode::Forbidden,
                &e.to_string(),
                id.as_ref(),
            )));
            return;
        }
        let Some(link) = self.shared.hub.any_link() else {
            let text = error_text(
                ErrorCode::Unavailable,
                "notify-svc is unreachable; retry",
                id.as_ref(),
            );
            tokio::spawn(reply(text));
            return;
        };
        let pending = self.shared.pending.clone();
        let (request_id, answer) = pending.register();
        let up = pb::ClientPublish {
            request_id,
            connection_id: self.id.to_string(),
            user_id: self.identity.user.to_string(),
            topic: topic.to_string(),
            event: event.unwrap_or_default().to_owned(),
            data: data.to_owned(),
        };
        tokio::spawn(async move {
            let sent = link
                .send(pb::BridgeUp {
                    msg: Some(Up::Publish(up)),
                })
                .await;
            let result = match sent {
                Ok(()) => tokio::time::timeout(PUBLISH_TIMEOUT, answer)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            let text = match result {
                Some(r) if r.code == 0 => ServerFrame::Published {
                    seq: r.seq,
                    id: id.as_ref(),
                }
                .to_text(),
                Some(r) => error_text(refused_publish(r.code), &r.message, id.as_ref()),
                None => {
                    pending.forget(request_id);
                    error_text(
                        ErrorCode::Unavailable,
                        "publish not confirmed; retry",
                        id.as_ref(),
                    )
                }
            };
            reply(text).await;
        });
    }
}

/// The error frame code for a client publish notify-svc refused (its gRPC
/// status code): the caller's fault, the policy's, or "not now".
fn refused_publish(code: i32) -> ErrorCode {
    match tonic::Code::from_i32(code) {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ErrorCode::Forbidden,
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted => ErrorCode::Unavailable,
        _ => ErrorCode::BadRequest,
    }
}

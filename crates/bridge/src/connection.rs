//! One WebSocket connection: a task looping on `select!` over the socket, the
//! hub's deliveries, store reads, pings and the token's expiry.
//!
//! On connect the connection is registered first (live deliveries start),
//! then its inbox is read from the resume point (`?since=`, else the acked
//! seq); the [`Sequencer`] joins the two without gap or duplicate. Topic
//! subscriptions with `since` work the same way.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use notify_auth::{Identity, Verifier};
use notify_core::{ConnectionId, Subject, Topic, TopicPolicy};
use notify_proto::v1::{self as pb, bridge_up::Msg as Up};
use tokio::sync::mpsc;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    hub::{Hub, Outbound, Prepared},
    link::{Api, Pending},
    protocol::{self, Action, ErrorCode, FrameId, ServerFrame},
    rate::TokenBucket,
    sequencer::{Outcome, Sequencer},
};

/// Messages read from the store per History call.
const PAGE: u32 = 500;
/// How long a client publish may wait for its commit.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub hub: Hub,
    pub metrics: crate::metrics::Metrics,
    pub max_per_user: usize,
    pub max_connections: usize,
    pub api: Api,
    pub pending: Pending,
    pub verifier: Verifier,
    pub topics: TopicPolicy,
    pub queue: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub ping_every: Duration,
    pub shutdown: CancellationToken,
}

/// Which feed a store read was for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Feed {
    Inbox,
    Topic(Topic),
}

enum Internal {
    Read(Feed, Result<pb::HistoryResponse, tonic::Status>),
    /// A reply computed off the loop (client publish results).
    Reply(String),
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What woke the connection loop.
enum Event {
    Ping,
    Deliver(Arc<Prepared>),
    Internal(Internal),
    Frame(String),
    Binary,
    TooLarge,
}

fn slow_consumer() -> End {
    End::Close(protocol::CLOSE_SLOW_CONSUMER, "slow consumer".into())
}

/// How long the closing handshake may take: a peer that does not read gets
/// its socket dropped instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the loop ended, and how to close.
enum End {
    Close(u16, String),
    Gone,
}

struct Conn {
    id: ConnectionId,
    identity: Identity,
    shared: Arc<Shared>,
    inbox: Sequencer<Arc<Prepared>>,
    topics: HashMap<Topic, Sequencer<Arc<Prepared>>>,
    internal: mpsc::Sender<Internal>,
    bucket: TokenBucket,
}

/// Serves one upgraded connection until it ends.
pub async fn serve(mut ws: Socket, identity: Identity, since: Option<u64>, shared: Arc<Shared>) {
    let id = ConnectionId::new();
    let (tx, mut rx) = mpsc::channel(shared.queue);
    let slow = CancellationToken::new();
    shared.hub.open(id, identity.user.clone(), tx, slow.clone());
    shared.metrics.connects.inc();
    shared.metrics.connections.inc();
    tracing::debug!(conn = %id, user = %identity.user, "connected");

    let end = match start(&mut ws, id, identity, since, shared.clone()).await {
        Ok((mut conn, mut internal_rx)) => {
            conn.run(&mut ws, &mut rx, &mut internal_rx, &slow).await
        }
        Err(end) => end,
    };
    shared.hub.close(id);
    shared.hub.flush_acks();
    shared.metrics.connections.dec();
    if matches!(end, End::Close(code, _) if code == protocol::CLOSE_SLOW_CONSUMER) {
        shared.metrics.slow_consumers.inc();
    }
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
    }
    tracing::debug!(conn = %id, "disconnected");
}

/// Welcome and the first inbox page; the connection is registered already.
async fn start(
    ws: &mut Socket,
    id: ConnectionId,
    identity: Identity,
    since: Option<u64>,
    shared: Arc<Shared>,
) -> Result<(Conn, mpsc::Receiver<Internal>), End> {
    let first = shared
        .api
        .history(pb::HistoryRequest {
            target: Some(pb::history_request::Target::UserId(
                identity.user.to_string(),
            )),
            since: since.unwrap_or(0),
            limit: PAGE,
            after_acked: since.is_none(),
        })
        .await
        .map_err(|e| End::Close(1011, format!("inbox unavailable: {}", e.message())))?;
    let welcome = ServerFrame::Welcome {
        connection_id: &id.to_string(),
        user_id: identity.user.as_str(),
        seq: first.head_seq,
    };
    send(ws, welcome.to_text()).await?;
    let after = since.unwrap_or(first.acked_seq);
    let (inbox, _) = Sequencer::resume(after);
    let (internal, internal_rx) = mpsc::channel(64);
    let bucket = TokenBucket::new(shared.rate_per_sec, shared.burst, Instant::now());
    let mut conn = Conn {
        id,
        identity,
        shared,
        inbox,
        topics: HashMap::new(),
        internal,
        bucket,
    };
    conn.shared
        .metrics
        .replayed
        .inc_by(first.messages.len() as u64);
    let outcome = conn.inbox.stored(page(first.messages), !first.has_more);
    conn.emit(ws, &Feed::Inbox, outcome).await?;
    Ok((conn, internal_rx))
}

fn page(messages: Vec<pb::StoredMessage>) -> Vec<(u64, Arc<Prepared>)> {
    messages
        .into_iter()
        .filter_map(Prepared::new)
        .map(|m| (m.seq, m))
        .collect()
}

async fn send(ws: &mut Socket, text: String) -> Result<(), End> {
    ws.send(Message::text(text)).await.map_err(|_| End::Gone)
}

fn error_text(code: ErrorCode, message: &str, id: Option<&FrameId>) -> String {
    ServerFrame::Error { code, message, id }.to_text()
}

impl Conn {
    async fn run(
        &mut self,
        ws: &mut Socket,
        rx: &mut mpsc::Receiver<Outbound>,
        internal_rx: &mut mpsc::Receiver<Internal>,
        slow: &CancellationToken,
    ) -> End {
        let mut ping = tokio::time::interval(self.shared.ping_every);
        ping.tick().await;
        let mut unanswered_pings = 0u32;
        loop {
            let expiry = self.expiry();
            let event = tokio::select! {
                () = self.shared.shutdown.cancelled() => {
                    return End::Close(protocol::CLOSE_RESTARTING, "server restarting".into());
                }
                () = slow.cancelled() => return slow_consumer(),
                () = tokio::time::sleep(expiry) => {
                    return End::Close(protocol::CLOSE_TOKEN_EXPIRED, "token expired".into());
                }
                _ = ping.tick() => {
                    // Two pings without a pong: the peer is gone.
                    if unanswered_pings >= 2 {
                        return End::Close(1001, "no pong".into());
                    }
                    unanswered_pings += 1;
                    Event::Ping
                }
                out = rx.recv() => match out {
                    Some(Outbound::Deliver(message)) => Event::Deliver(message),
                    Some(Outbound::Kick { code, reason }) => return End::Close(code, reason),
                    None => return End::Gone,
                },
                internal = internal_rx.recv() => match internal {
                    Some(internal) => Event::Internal(internal),
                    None => continue,
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => Event::Frame(text.as_str().to_owned()),
                    Some(Ok(Message::Binary(_))) => Event::Binary,
                    Some(Ok(Message::Pong(_))) => {
                        unanswered_pings = 0;
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return End::Gone,
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => Event::TooLarge,
                    Some(Err(_)) => return End::Gone,
                },
            };
            // Handling writes to the socket; a client that stops reading must
            // not hold the task: the hub's overflow signal interrupts it.
            let handled = async {
                match event {
                    Event::Ping => ws
                        .send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|_| End::Gone),
                    Event::Deliver(message) => self.delivered(ws, message).await,
                    Event::Internal(Internal::Read(feed, read)) => self.read(ws, feed, read).await,
                    Event::Internal(Internal::Reply(text)) => send(ws, text).await,
                    Event::Frame(text) => self.frame(ws, &text).await,
                    Event::Binary => {
                        let text = error_text(
                            ErrorCode::BadRequest,
                            "binary frames are not accepted: send JSON text",
                            None,
                        );
                        send(ws, text).await
                    }
                    Event::TooLarge => {
                        let _ = send(
                            ws,
                            error_text(ErrorCode::TooLarge, "frame over 64 KiB", None),
                        )
                        .await;
                        Err(End::Close(1009, "frame too large".into()))
                    }
                }
            };
            let result = tokio::select! {
                result = handled => result,
                () = slow.cancelled() => return slow_consumer(),
            };
            if let Err(end) = result {
                return end;
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
            return self.emit(ws, &Feed::Inbox, outcome).await;
        }
        if !message.topic.is_empty() {
            let Ok(topic) = Topic::parse(&message.topic) else {
                return Ok(());
            };
            let Some(seq) = self.topics.get_mut(&topic) else {
                return Ok(());
            };
            let outcome = seq.live(message.seq, message);
            return self.emit(ws, &Feed::Topic(topic), outcome).await;
        }
        self.write_message(ws, &message).await
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
                    Feed::Inbox => self.inbox.last(),
                    Feed::Topic(t) => self.topics.get(t).map_or(0, Sequencer::last),
                };
                self.fetch(feed, last, Duration::from_millis(500));
                return Ok(());
            }
        };
        let complete = !response.has_more;
        self.shared
            .metrics
            .replayed
            .inc_by(response.messages.len() as u64);
        let outcome = match &feed {
            Feed::Inbox => self.inbox.stored(page(response.messages), complete),
            Feed::Topic(t) => match self.topics.get_mut(t) {
                Some(seq) => seq.stored(page(response.messages), complete),
                None => return Ok(()), // unsubscribed meanwhile
            },
        };
        self.emit(ws, &feed, outcome).await
    }

    async fn emit(
        &mut self,
        ws: &mut Socket,
        feed: &Feed,
        outcome: Outcome<Arc<Prepared>>,
    ) -> Result<(), End> {
        for message in &outcome.emit {
            self.write_message(ws, message).await?;
        }
        if let Some(after) = outcome.fetch_after {
            self.fetch(feed.clone(), after, Duration::ZERO);
        }
        Ok(())
    }

    fn fetch(&self, feed: Feed, after: u64, delay: Duration) {
        let (api, internal) = (self.shared.api.clone(), self.internal.clone());
        let target = match &feed {
            Feed::Inbox => pb::history_request::Target::UserId(self.identity.user.to_string()),
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
            let _ = internal.send(Internal::Read(feed, read)).await;
        });
    }

    async fn write_message(&self, ws: &mut Socket, m: &Prepared) -> Result<(), End> {
        self.shared.metrics.messages_out.inc();
        // The frame was encoded once for every connection it goes to.
        ws.send(Message::Text(m.frame.clone()))
            .await
            .map_err(|_| End::Gone)
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
            Err(e) => return send(ws, error_text(e.code, &e.message, e.id.as_ref())).await,
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
            Action::Unsubscribe { topic, .. } => Some(match Topic::parse(&topic) {
                Ok(t) => {
                    self.topics.remove(&t);
                    self.shared.hub.unsubscribe(self.id, &t);
                    ServerFrame::Unsubscribed {
                        topic: &topic,
                        id: id.as_ref(),
                    }
                    .to_text()
                }
                Err(e) => error_text(ErrorCode::BadRequest, &e.to_string(), id.as_ref()),
            }),
            Action::Publish {
                topic, data, event, ..
            } => {
                self.publish(&topic, &data.to_string(), event.as_deref(), id);
                None
            }
            Action::Refresh { token, .. } => {
                Some(match self.shared.verifier.verify(&token).await {
                    Ok(fresh) if fresh.user == self.identity.user => {
                        self.identity = fresh;
                        let exp = self
                            .identity
                            .expires_at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        ServerFrame::Refreshed {
                            exp,
                            id: id.as_ref(),
                        }
                        .to_text()
                    }
                    Ok(_) => error_text(
                        ErrorCode::Forbidden,
                        "the new token names another user",
                        id.as_ref(),
                    ),
                    Err(e) => error_text(
                        ErrorCode::BadRequest,
                        &format!("token refused: {e}"),
                        id.as_ref(),
                    ),
                })
            }
        };
        match reply {
            Some(text) => send(ws, text).await,
            None => Ok(()),
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            user: &self.identity.user,
            realm: self.identity.realm.as_deref(),
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
        // Register first, then read: nothing committed in between is missed.
        self.shared.hub.subscribe(self.id, topic.clone());
        let head = self
            .shared
            .api
            .history(pb::HistoryRequest {
                target: Some(pb::history_request::Target::Topic(topic.to_string())),
                since: u64::MAX >> 1,
                limit: 1,
                after_acked: false,
            })
            .await;
        let head = match head {
            Ok(r) => r.head_seq,
            Err(e) => {
                self.shared.hub.unsubscribe(self.id, &topic);
                return error_text(
                    ErrorCode::BadRequest,
                    &format!("topic unavailable: {}", e.message()),
                    id,
                );
            }
        };
        let after = since.unwrap_or(head).min(head);
        let (mut seq, _) = Sequencer::resume(after);
        if after == head {
            // Nothing stored to replay: go live at once.
            seq.stored(Vec::new(), true);
        } else {
            self.fetch(Feed::Topic(topic.clone()), after, Duration::ZERO);
        }
        self.topics.insert(topic.clone(), seq);
        ServerFrame::Subscribed {
            topic: topic.as_str(),
            seq: head,
            id,
        }
        .to_text()
    }

    /// Sends a client publish up; the reply arrives through `internal`.
    fn publish(&self, raw: &str, data: &str, event: Option<&str>, id: Option<FrameId>) {
        let internal = self.internal.clone();
        let reply = move |text: String| {
            let internal = internal.clone();
            async move {
                let _ = internal.send(Internal::Reply(text)).await;
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
                ErrorCode::BadRequest,
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
                Some(r) => error_text(ErrorCode::BadRequest, &r.message, id.as_ref()),
                None => {
                    pending.forget(request_id);
                    error_text(
                        ErrorCode::BadRequest,
                        "publish not confirmed; retry",
                        id.as_ref(),
                    )
                }
            };
            reply(text).await;
        });
    }
}

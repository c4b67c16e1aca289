//! `BridgeLink.Attach`: the server side of the link every bridge keeps to
//! every notify-svc replica (docs/design.md §6).
//!
//! The first message is the bridge's Hello with its full state: routing and
//! the persisted connection registry are rebuilt from it (a notify-svc that
//! restarted knows every live connection again at once). Changes follow;
//! deliveries, kicks and client-publish results go down. When the stream ends
//! the bridge's connections leave routing, unless the bridge already
//! re-attached; its registry rows stay while any replica still hears the
//! bridge, and go with a disconnected event each once none has for
//! NOTIFY_BRIDGE_EXPIRY ([`expiry`]). Every report is also a lifecycle event
//! for WatchConnections ([`registry`] records it).

mod expiry;
mod registry;
mod tickets;

use std::{
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use notify_core::{ConnectionId, MessageId, Publish, Target, Topic, UserId, publish::RawPublish};
use notify_proto::v1::{self as pb, bridge_up::Msg as Up};
use notify_store::{ConnectionEvent, ConnectionRecord, Feed, Lifecycle, PublishItem};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    caller::Right,
    delivery::bounded,
    delivery::router::{self, DownSender},
    link::registry::{Change, Registry},
    link::tickets::{Ask, Tickets},
    services::Services,
    status,
};

/// Longest bridge id.
const MAX_BRIDGE_ID_BYTES: usize = 128;

/// State shared by every Attach stream.
#[derive(Clone)]
pub struct Link {
    services: Services,
    registry: Registry,
    tickets: Tickets,
    /// Each bridge's down stream.
    queue: bounded::Bound,
}

impl Link {
    /// `bridge_expiry`: how long no replica may hear a bridge before its
    /// connections are taken for closed.
    pub fn new(services: Services, queue: bounded::Bound, bridge_expiry: Duration) -> Self {
        services.tracker.spawn(expiry::run(
            services.clone(),
            bridge_expiry,
            services.shutdown.clone(),
        ));
        Self {
            registry: Registry::start(
                services.store.clone(),
                services.lifecycle.clone(),
                &services.tracker,
                services.shutdown.clone(),
            ),
            tickets: Tickets::start(services.store.clone(), &services.tracker),
            services,
            queue,
        }
    }

    /// Puts a connection in routing, then queues its registry row; returns
    /// its user (for a ticket's inbox read).
    async fn opened(&self, bridge: &str, conn: pb::LiveConnection) -> Option<UserId> {
        let (Ok(id), Ok(user)) = (
            ConnectionId::parse("connection_id", &conn.connection_id),
            UserId::parse("user_id", &conn.user_id),
        ) else {
            tracing::warn!(bridge, "bridge reported a connection with a bad id");
            return None;
        };
        let topics = conn
            .topics
            .iter()
            .filter_map(|t| Topic::parse(t).ok())
            .collect();
        self.services.router.open(bridge, id, user.clone(), topics);
        let at = UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(conn.connected_at_ms).unwrap_or(0));
        let record = ConnectionRecord {
            connection_id: id,
            user_id: user.clone(),
            bridge_id: bridge.to_owned(),
            connected_at: at,
            last_seen: SystemTime::now(),
        };
        self.registry.change(Change::Open(record)).await;
        self.event(bridge, id, user.clone(), at, Lifecycle::Connected)
            .await;
        Some(user)
    }

    /// Queues a lifecycle event heard from `bridge`.
    async fn event(
        &self,
        bridge: &str,
        connection_id: ConnectionId,
        user_id: UserId,
        at: SystemTime,
        what: Lifecycle,
    ) {
        let event = ConnectionEvent {
            connection_id,
            user_id,
            bridge_id: bridge.to_owned(),
            at,
            what,
        };
        self.registry.change(Change::Event(event)).await;
    }

    /// Answers a ticket once its registration is in routing (it is: the
    /// router changed synchronously before this is called).
    async fn answer(&self, ticket: u64, feed: Feed, down: &DownSender) {
        if ticket != 0 {
            let down = down.clone();
            self.tickets.ask(Ask { ticket, feed, down }).await;
        }
    }

    async fn handle(&self, bridge: &str, msg: Up, down: &DownSender) {
        match msg {
            Up::Hello(_) => tracing::warn!(bridge, "second hello ignored"),
            Up::Opened(opened) => {
                if let Some(conn) = opened.connection
                    && let Some(user) = self.opened(bridge, conn).await
                {
                    self.answer(opened.ticket, Feed::Inbox(user), down).await;
                }
            }
            Up::Closed(closed) => self.closed(bridge, closed).await,
            Up::Subscribed(s) => self.subscribed(bridge, s, down).await,
            Up::Unsubscribed(s) => self.unsubscribed(bridge, s).await,
            Up::Acks(acks) => self.acks(bridge, acks),
            Up::Publish(publish) => {
                // Its own task: a commit takes milliseconds, the stream's other
                // messages must not wait for it.
                let (link, bridge, down) = (self.clone(), bridge.to_owned(), down.clone());
                self.services.tracker.spawn(async move {
                    let result = link.client_publish(&bridge, &publish).await;
                    let (seq, code, message) = match result {
                        Ok(seq) => (seq, 0, String::new()),
                        Err(s) => (0, s.code() as i32, s.message().to_owned()),
                    };
                    let answer = pb::ClientPublishResult {
                        request_id: publish.request_id,
                        seq,
                        code,
                        message,
                    };
                    let msg = pb::bridge_down::Msg::PublishResult(answer);
                    let _ = down.send(pb::BridgeDown { msg: Some(msg) }).await;
                });
            }
        }
    }

    /// A socket closed: it leaves routing and the registry, and a
    /// disconnected event carries its close code.
    async fn closed(&self, bridge: &str, closed: pb::ConnectionClosed) {
        let Ok(id) = ConnectionId::parse("connection_id", &closed.connection_id) else {
            return;
        };
        let known = self.services.router.close(id);
        self.registry.change(Change::Close(id)).await;
        let user = UserId::parse("user_id", &closed.user_id).ok().or(known);
        if let Some(user) = user {
            let what = Lifecycle::Disconnected {
                close_code: u16::try_from(closed.close_code).unwrap_or(0),
                reason: closed.reason,
            };
            self.event(bridge, id, user, SystemTime::now(), what).await;
        }
    }

    async fn subscribed(&self, bridge: &str, s: pb::TopicSubscribed, down: &DownSender) {
        let (Ok(id), Ok(topic)) = (
            ConnectionId::parse("connection_id", &s.connection_id),
            Topic::parse(&s.topic),
        ) else {
            return;
        };
        let user = self.services.router.subscribe(id, topic.clone());
        self.answer(s.ticket, Feed::Topic(topic), down).await;
        // event 0: it already followed the topic.
        if let (Some(user), change @ 1..) = (user, s.event) {
            let what = Lifecycle::Subscribed {
                topic: s.topic,
                change,
            };
            self.event(bridge, id, user, SystemTime::now(), what).await;
        }
    }

    async fn unsubscribed(&self, bridge: &str, s: pb::TopicUnsubscribed) {
        let (Ok(id), Ok(topic)) = (
            ConnectionId::parse("connection_id", &s.connection_id),
            Topic::parse(&s.topic),
        ) else {
            return;
        };
        let user = self.services.router.unsubscribe(id, &topic);
        if let (Some(user), change @ 1..) = (user, s.event) {
            let what = Lifecycle::Unsubscribed {
                topic: s.topic,
                change,
            };
            self.event(bridge, id, user, SystemTime::now(), what).await;
        }
    }

    fn acks(&self, bridge: &str, acks: pb::InboxAcks) {
        let acks: Vec<(UserId, u64)> = acks
            .acks
            .into_iter()
            .filter_map(|a| Some((UserId::parse("user_id", &a.user_id).ok()?, a.seq)))
            .collect();
        // Off the stream: acks commute (the highest wins), routing changes
        // must not wait for them.
        let (store, bridge) = (self.services.store.clone(), bridge.to_owned());
        self.services.tracker.spawn(async move {
            if let Err(e) = store.ack(&acks).await {
                tracing::warn!(bridge, error = %e, "persisting acks failed");
            }
        });
    }

    async fn client_publish(&self, bridge: &str, p: &pb::ClientPublish) -> Result<u64, Status> {
        let sender =
            ConnectionId::parse("connection_id", &p.connection_id).map_err(status::invalid)?;
        let event = if p.event.is_empty() {
            "client_publish"
        } else {
            &p.event
        };
        let raw = RawPublish {
            topic: Some(&p.topic),
            event,
            data: &p.data,
            ..Default::default()
        };
        let publish = Publish::validate(raw, &self.services.limits, &self.services.topics)
            .map_err(status::invalid)?;
        let Target::Topic(topic) = &publish.target else {
            return Err(Status::invalid_argument("client publishes go to topics"));
        };
        let log_max_len = self
            .services
            .topics
            .namespace(topic)
            .map_err(status::invalid)?
            .log_max_len;
        let item = PublishItem {
            // Client publishes are accounted to the bridge that carried them.
            caller: format!("bridge:{bridge}"),
            message_id: MessageId::new(),
            publish,
            log_max_len,
            push: None,
        };
        let done = self
            .services
            .publisher
            .publish_from(item, sender)
            .await
            .map_err(status::pipeline)?;
        Ok(done.committed.seq)
    }
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::BridgeDown, Status>> + Send>>;

#[tonic::async_trait]
impl pb::bridge_link_server::BridgeLink for Link {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        req: Request<Streaming<pb::BridgeUp>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        self.services.auth.authorize(&req, Right::Bridge).await?;
        let mut up = req.into_inner();
        let hello = match up.message().await? {
            Some(pb::BridgeUp {
                msg: Some(Up::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of Attach must be hello",
                ));
            }
        };
        let bridge = hello.bridge_id.clone();
        if bridge.is_empty()
            || bridge.len() > MAX_BRIDGE_ID_BYTES
            || bridge.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(
                "bridge_id must be 1 to 128 printable bytes",
            ));
        }
        let (down, rx) = bounded::channel(self.queue, router::down_len);
        let generation = self.services.router.attach(&bridge, down.clone());
        // The Hello is the whole truth about this bridge: replace its rows.
        let live = hello
            .connections
            .iter()
            .filter_map(|c| ConnectionId::parse("connection_id", &c.connection_id).ok())
            .collect();
        self.registry
            .change(Change::Replace {
                bridge: bridge.clone(),
                live,
            })
            .await;
        let count = hello.connections.len();
        for conn in hello.connections {
            self.opened(&bridge, conn).await;
        }
        tracing::info!(bridge, connections = count, "bridge attached");

        let link = self.clone();
        self.services.tracker.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = link.services.shutdown.cancelled() => break,
                    next = up.message() => next,
                };
                match next {
                    Ok(Some(pb::BridgeUp { msg: Some(msg) })) => {
                        link.handle(&bridge, msg, &down).await
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(bridge, error = %e, "bridge stream ended");
                        break;
                    }
                }
            }
            // Its registry rows stay: another replica may still hear it,
            // and if none does, expiry closes them with an event each.
            if link.services.router.detach(&bridge, generation) {
                tracing::info!(bridge, "bridge detached");
            }
        });
        Ok(Response::new(Box::pin(rx.map(Ok))))
    }
}

//! The `notify.v1.Notify` service: validates requests, checks each caller's
//! rights ([`crate::caller`]), and hands publishes to the pipeline.

mod connections;
pub mod fight;
mod inbox;
mod push;

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::FutureExt;

use notify_core::{
    ConnectionId, MessageId, Publish, Target, Topic, UserId, ValidationError, inbox::State,
};
use notify_proto::convert::millis;
use notify_proto::{convert::raw_publish, v1 as pb};
use notify_store::{ConnectionRecord, Feed, PublishItem, StoredMessage};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{
    caller::{Caller, Right},
    delivery::pipeline::Published,
    delivery::watch::{self, WatchHub, WatchKey},
    services::Services,
    status,
    usernames::Usernames,
};

/// Most requests in one `PublishBatch`.
pub const MAX_BATCH_REQUESTS: usize = 1000;
/// Default and largest `History` page.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Most payload bytes in one History page (at least one message goes out
/// whatever its size): well under gRPC's default 4 MiB receive limit, so a
/// page of large messages never fails to decode at a client that kept it.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// A WebSocket close reason is at most 123 bytes.
const MAX_REASON_BYTES: usize = 123;

/// State shared by every request.
#[derive(Clone)]
pub struct NotifyApi {
    services: Services,
    hub: WatchHub,
    usernames: Usernames,
    /// Watch streams open per caller.
    watches: Arc<watch::WatchSlots>,
}

impl NotifyApi {
    /// A place for one more Watch or WatchConnections stream of `caller`.
    fn watch_slot(&self, caller: &Caller) -> Result<watch::WatchSlot, Status> {
        self.watches.take(&caller.name).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "caller {} holds {} Watch streams, the most allowed (NOTIFY_MAX_WATCHES_PER_CALLER): close one first",
                caller.name,
                self.watches.max_per_caller()
            ))
        })
    }

    pub fn new(
        services: Services,
        hub: WatchHub,
        usernames: Usernames,
        watches: Arc<watch::WatchSlots>,
    ) -> Self {
        Self {
            services,
            hub,
            usernames,
            watches,
        }
    }

    /// A valid publish the caller may make, ready for the pipeline.
    fn item(&self, caller: &Caller, req: &pb::PublishRequest) -> Result<PublishItem, Status> {
        if let Some(pb::publish_request::Target::ConnectionId(_)) = req.target {
            return Err(Status::invalid_argument(
                "a connection_id target goes by Publish alone (it is not stored, nor batched)",
            ));
        }
        let publish = Publish::validate(
            raw_publish(req),
            &self.services.limits,
            &self.services.topics,
        )
        .map_err(status::invalid)?;
        caller
            .may_publish_to(&publish.target)
            .map_err(Status::from)?;
        let log_max_len = match &publish.target {
            Target::Topic(topic) => {
                self.services
                    .topics
                    .namespace(topic)
                    .map_err(status::invalid)?
                    .log_max_len
            }
            _ => 0,
        };
        let push = self.push_order(&publish, req.push.as_ref())?;
        Ok(PublishItem {
            caller: caller.name.clone(),
            message_id: MessageId::new(),
            publish,
            log_max_len,
            push,
        })
    }

    fn topic(&self, raw: &str) -> Result<Topic, Status> {
        self.services
            .topics
            .topic(raw)
            .map(|(t, _)| t)
            .map_err(status::invalid)
    }

    fn feed(&self, user: Option<&str>, topic: Option<&str>) -> Result<Feed, Status> {
        match (user, topic) {
            (Some(user), None) => Ok(Feed::Inbox(user_id(user)?)),
            (None, Some(topic)) => Ok(Feed::Topic(self.topic(topic)?)),
            _ => Err(status::invalid(ValidationError::NoTarget)),
        }
    }

    /// Runs one call and records its status code and duration.
    // A wrapper future, not an `async fn`: an async fn keeps its future
    // argument and the awaited copy side by side (rust-lang/rust#62958),
    // which doubled every call's future (11.5 KB for Publish) and its memcpy.
    fn counted<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> impl Future<Output = Result<T, Status>> {
        let started = Instant::now();
        let metrics = &self.services.metrics;
        call.inspect(move |result| {
            let code = result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
            metrics.rpc(method, code, started.elapsed());
        })
    }

    async fn publish_one(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<pb::PublishResponse, Status> {
        let caller = self.services.auth.publisher(&req).await?;
        let mut publish = req.into_inner();
        if let Some(pb::publish_request::Target::ConnectionId(connection)) = &publish.target {
            return self.publish_to_connection(connection, &publish);
        }
        self.usernames
            .resolve(&mut publish)
            .await
            .map_err(Status::from)?;
        let item = self.item(&caller, &publish)?;
        let committed = self
            .services
            .publisher
            .publish(vec![item])
            .await
            .map_err(status::pipeline)?;
        let done = committed
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("commit returned no result"))?;
        let span = tracing::Span::current();
        span.record(
            "message_id",
            tracing::field::display(&done.committed.message_id),
        );
        span.record("seq", done.committed.seq);
        Ok(publish_response(done))
    }

    /// A message to one live connection, not stored (API Gateway's
    /// postToConnection): routed to the bridge holding it, NOT_FOUND when
    /// no bridge does.
    fn publish_to_connection(
        &self,
        connection: &str,
        publish: &pb::PublishRequest,
    ) -> Result<pb::PublishResponse, Status> {
        let id = ConnectionId::parse("connection_id", connection).map_err(status::invalid)?;
        if !publish.idempotency_key.is_empty() || publish.ttl_seconds != 0 {
            return Err(Status::invalid_argument(
                "a connection_id target is not stored: idempotency_key and ttl_seconds do not apply",
            ));
        }
        let event = notify_core::publish::check_content(
            &publish.event,
            &publish.data,
            &self.services.limits,
        )
        .map_err(status::invalid)?;
        let message_id = MessageId::new().to_string();
        let message = pb::StoredMessage {
            message_id: message_id.clone(),
            seq: 0,
            topic: String::new(),
            user_id: String::new(),
            event,
            data: publish.data.clone(),
            ts_ms: millis(std::time::SystemTime::now()),
            ..Default::default()
        };
        let trace_parent = notify_ops::traces::traceparent(&tracing::Span::current());
        if !self
            .services
            .router
            .to_connection(&id, message, trace_parent.unwrap_or_default())
        {
            return Err(Status::not_found(format!(
                "connection {id} is not connected (a connection_id message is not stored)"
            )));
        }
        tracing::Span::current().record("message_id", message_id.as_str());
        Ok(pb::PublishResponse {
            message_id,
            delivered: 1,
            ..Default::default()
        })
    }

    async fn publish_batch(
        &self,
        req: Request<pb::PublishBatchRequest>,
    ) -> Result<pb::PublishBatchResponse, Status> {
        let caller = self.services.auth.authorize(&req, Right::Publish).await?;
        let requests = &req.get_ref().requests;
        tracing::Span::current().record("items", requests.len());
        if requests.len() > MAX_BATCH_REQUESTS {
            return Err(Status::invalid_argument(format!(
                "{} requests in one batch, over the limit of {MAX_BATCH_REQUESTS}",
                requests.len()
            )));
        }
        // Validate each item on its own: a bad item fails alone.
        let mut results: Vec<Option<pb::PublishResult>> = Vec::with_capacity(requests.len());
        let mut items = Vec::new();
        for r in requests {
            let mut r = r.clone();
            if let Err(e) = self.usernames.resolve(&mut r).await {
                results.push(Some(error_result(&Status::from(e))));
                continue;
            }
            match self.item(&caller, &r) {
                Ok(item) => {
                    items.push(item);
                    results.push(None);
                }
                Err(e) => results.push(Some(error_result(&e))),
            }
        }
        let committed = if items.is_empty() {
            Vec::new()
        } else {
            self.services
                .publisher
                .publish(items)
                .await
                .map_err(status::pipeline)?
        };
        let mut committed = committed.into_iter();
        let results = results
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| match committed.next() {
                    Some(done) => pb::PublishResult {
                        result: Some(pb::publish_result::Result::Ok(publish_response(done))),
                    },
                    None => error_result(&Status::internal("commit returned too few results")),
                })
            })
            .collect();
        Ok(pb::PublishBatchResponse { results })
    }

    /// A fight event becomes its messages (see [`fight`]), committed together,
    /// each under `{key}#{n}` so a retry stores only what is missing.
    async fn emit_fight(
        &self,
        req: Request<pb::EmitFightEventRequest>,
    ) -> Result<pb::EmitFightEventResponse, Status> {
        let caller = self.services.auth.authorize(&req, Right::Publish).await?;
        let r = req.get_ref();
        let event = r
            .event
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        let messages = fight::messages(event).map_err(Status::invalid_argument)?;
        let mut items = Vec::with_capacity(messages.len());
        for (n, m) in messages.into_iter().enumerate() {
            let target = match m.to {
                fight::Recipient::Inbox(user) => pb::publish_request::Target::UserId(user),
                fight::Recipient::Topic(topic) => pb::publish_request::Target::Topic(topic),
            };
            let publish = pb::PublishRequest {
                target: Some(target),
                event: m.event.into(),
                data: m.data,
                idempotency_key: if r.idempotency_key.is_empty() {
                    String::new()
                } else {
                    format!("{}#{n}", r.idempotency_key)
                },
                ..Default::default()
            };
            items.push(self.item(&caller, &publish)?);
        }
        let done = self
            .services
            .publisher
            .publish(items)
            .await
            .map_err(status::pipeline)?;
        let duplicate = !done.is_empty() && done.iter().all(|d| d.committed.duplicate);
        Ok(pb::EmitFightEventResponse {
            published: done.into_iter().map(publish_response).collect(),
            duplicate,
        })
    }

    async fn history_page(&self, req: pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> {
        use pb::history_request::Target as T;
        let (user, topic) = match &req.target {
            Some(T::UserId(u)) => (Some(u.as_str()), None),
            Some(T::Topic(t)) => (None, Some(t.as_str())),
            None => (None, None),
        };
        let feed = self.feed(user, topic)?;
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let acked_seq = match &feed {
            Feed::Inbox(user) => {
                self.services
                    .store
                    .inbox_position(user)
                    .await
                    .map_err(status::store)?
                    .0
            }
            Feed::Topic(_) => 0,
        };
        let since = if req.after_acked {
            req.since.max(acked_seq)
        } else {
            req.since
        };
        // One more than asked tells whether another page follows.
        let mut page = self
            .services
            .store
            .history(&feed, since, limit + 1)
            .await
            .map_err(status::store)?;
        let mut has_more = page.messages.len() > limit as usize;
        page.messages.truncate(limit as usize);
        let fits = page_len_within(&page.messages, MAX_PAGE_BYTES);
        if fits < page.messages.len() {
            page.messages.truncate(fits);
            has_more = true;
        }
        let next_since = page.messages.last().map_or(since, |m| m.seq);
        Ok(pb::HistoryResponse {
            messages: page
                .messages
                .into_iter()
                .map(|m| stored_message(&feed_key(&feed), m))
                .collect(),
            next_since,
            has_more,
            head_seq: page.head_seq,
            acked_seq,
        })
    }
}

/// How many of `messages` (at least one) fit in `budget` bytes of payload.
fn page_len_within(messages: &[StoredMessage], budget: usize) -> usize {
    let mut used = 0;
    messages
        .iter()
        .take_while(|m| {
            // Ids, seq, topic and framing: ~100 bytes beside event and data.
            used += m.data.len() + m.event.len() + 100;
            used <= budget
        })
        .count()
        .max(1)
        .min(messages.len())
}

fn user_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse("user_id", raw).map_err(status::invalid)
}

fn publish_response(published: Published) -> pb::PublishResponse {
    let Published {
        committed: done,
        delivered,
    } = published;
    pb::PublishResponse {
        message_id: done.message_id.to_string(),
        seq: done.seq,
        duplicate: done.duplicate,
        delivered,
        inbox_seqs: done
            .inbox_seqs
            .into_iter()
            .map(|(user, seq)| pb::InboxSeq {
                user_id: user.into_string(),
                seq,
            })
            .collect(),
    }
}

fn error_result(status: &Status) -> pb::PublishResult {
    let (code, message) = status::code_and_message(status);
    pb::PublishResult {
        result: Some(pb::publish_result::Result::Error(pb::PublishError {
            code,
            message,
        })),
    }
}

fn feed_key(feed: &Feed) -> WatchKey {
    WatchKey::Feed(feed.clone())
}

fn stored_message(key: &WatchKey, m: StoredMessage) -> pb::StoredMessage {
    let (user_id, topic) = match key {
        WatchKey::Feed(Feed::Inbox(u)) => (u.to_string(), String::new()),
        WatchKey::Feed(Feed::Topic(t)) => (String::new(), t.to_string()),
        WatchKey::Broadcast => (String::new(), String::new()),
    };
    pb::StoredMessage {
        message_id: m.message_id.to_string(),
        seq: m.seq,
        topic,
        user_id,
        event: m.event,
        data: m.data,
        ts_ms: millis(m.ts),
        muted: m.state.has(State::MUTED),
        retracted: m.state.has(State::RETRACTED),
    }
}

fn connection(record: ConnectionRecord) -> pb::Connection {
    pb::Connection {
        connection_id: record.connection_id.to_string(),
        user_id: record.user_id.into_string(),
        bridge_id: record.bridge_id,
        connected_at_ms: millis(record.connected_at),
        last_seen_ms: millis(record.last_seen),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::StoredMessage, Status>> + Send>>;

// === impl Notify ===

#[tonic::async_trait]
impl pb::notify_server::Notify for NotifyApi {
    #[tracing::instrument(name = "Publish", skip_all, fields(message_id, seq))]
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.counted("Publish", self.publish_one(req))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(name = "PublishBatch", skip_all, fields(items))]
    async fn publish_batch(
        &self,
        req: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        self.counted("PublishBatch", NotifyApi::publish_batch(self, req))
            .await
            .map(Response::new)
    }

    async fn emit_fight_event(
        &self,
        req: Request<pb::EmitFightEventRequest>,
    ) -> Result<Response<pb::EmitFightEventResponse>, Status> {
        self.counted("EmitFightEvent", NotifyApi::emit_fight(self, req))
            .await
            .map(Response::new)
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let call = async {
            let caller = self.services.auth.authorize(&req, Right::Publish).await?;
            let req = req.into_inner();
            let user = user_id(&req.user_id)?;
            let topic = self.topic(&req.topic)?;
            caller.may_use_topic(&topic).map_err(Status::from)?;
            let (created, topic_seq) = self
                .services
                .store
                .subscribe(&user, &topic)
                .await
                .map_err(status::store)?;
            // After the commit: a connection opening meanwhile either reads
            // the stored row at its registration or is in routing here now.
            let live_connections = self
                .services
                .router
                .server_subscription(&user, &topic, true, topic_seq);
            Ok(pb::SubscribeResponse {
                created,
                topic_seq,
                live_connections,
            })
        };
        self.counted("Subscribe", call).await.map(Response::new)
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let call = async {
            let caller = self.services.auth.authorize(&req, Right::Publish).await?;
            let req = req.into_inner();
            let user = user_id(&req.user_id)?;
            let topic = self.topic(&req.topic)?;
            caller.may_use_topic(&topic).map_err(Status::from)?;
            let removed = self
                .services
                .store
                .unsubscribe(&user, &topic)
                .await
                .map_err(status::store)?;
            let live_connections = self
                .services
                .router
                .server_subscription(&user, &topic, false, 0);
            Ok(pb::UnsubscribeResponse {
                removed,
                live_connections,
            })
        };
        self.counted("Unsubscribe", call).await.map(Response::new)
    }

    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        use pb::get_presence_request::Target as T;
        let call = async {
            self.services.auth.authorize(&req, Right::Admin).await?;
            match req.into_inner().target {
                Some(T::UserId(user)) => {
                    let records = self
                        .services
                        .store
                        .connections_of(&user_id(&user)?)
                        .await
                        .map_err(status::store)?;
                    Ok(pb::GetPresenceResponse {
                        connections: records.into_iter().map(connection).collect(),
                        ..Default::default()
                    })
                }
                Some(T::Topic(topic)) => {
                    let topic = self.topic(&topic)?;
                    let subscribers = self
                        .services
                        .store
                        .subscriber_count(&topic)
                        .await
                        .map_err(status::store)?;
                    Ok(pb::GetPresenceResponse {
                        connections: Vec::new(),
                        subscribers,
                        live_connections: self.services.router.topic_connections(&topic),
                    })
                }
                None => Err(status::invalid(ValidationError::NoTarget)),
            }
        };
        self.counted("GetPresence", call).await.map(Response::new)
    }

    async fn disconnect(
        &self,
        req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        use pb::disconnect_request::Target as T;
        let call = async {
            self.services.auth.authorize(&req, Right::Admin).await?;
            let req = req.into_inner();
            if req.reason.len() > MAX_REASON_BYTES {
                return Err(status::invalid(ValidationError::TooLong {
                    field: "reason",
                    len: req.reason.len(),
                    max: MAX_REASON_BYTES,
                }));
            }
            let targets: Vec<ConnectionId> = match req.target {
                Some(T::UserId(user)) => self.services.router.connections_of(&user_id(&user)?),
                Some(T::ConnectionId(id)) => {
                    let id = ConnectionId::parse("connection_id", &id).map_err(status::invalid)?;
                    let known = !self.services.router.connections_of_ids(&[id]).is_empty()
                        || self
                            .services
                            .store
                            .connection(id)
                            .await
                            .map_err(status::store)?
                            .is_some();
                    if !known {
                        return Err(Status::not_found(format!(
                            "connection {id} is not registered"
                        )));
                    }
                    vec![id]
                }
                None => return Err(status::invalid(ValidationError::NoTarget)),
            };
            let disconnected = self.services.router.kick(
                &targets,
                u32::from(notify_core::close::DISCONNECTED),
                &req.reason,
            );
            tracing::info!(disconnected, reason = %req.reason, "disconnect requested");
            Ok(pb::DisconnectResponse { disconnected })
        };
        self.counted("Disconnect", call).await.map(Response::new)
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let call = async {
            // Bridges read feeds to replay them to their sockets.
            self.services
                .auth
                .authorize_any(&req, &[Right::Admin, Right::Bridge])
                .await?;
            self.history_page(req.into_inner()).await
        };
        self.counted("History", call).await.map(Response::new)
    }

    async fn mark_inbox(
        &self,
        req: Request<pb::MarkInboxRequest>,
    ) -> Result<Response<pb::MarkInboxResponse>, Status> {
        self.counted("MarkInbox", NotifyApi::mark_inbox(self, req))
            .await
            .map(Response::new)
    }

    async fn get_inbox_counts(
        &self,
        req: Request<pb::GetInboxCountsRequest>,
    ) -> Result<Response<pb::GetInboxCountsResponse>, Status> {
        self.counted("GetInboxCounts", NotifyApi::get_inbox_counts(self, req))
            .await
            .map(Response::new)
    }

    async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        self.counted("RegisterDevice", NotifyApi::register_device(self, req))
            .await
            .map(Response::new)
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        self.counted("ListDevices", NotifyApi::list_devices(self, req))
            .await
            .map(Response::new)
    }

    async fn remove_device(
        &self,
        req: Request<pb::RemoveDeviceRequest>,
    ) -> Result<Response<pb::RemoveDeviceResponse>, Status> {
        self.counted("RemoveDevice", NotifyApi::remove_device(self, req))
            .await
            .map(Response::new)
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        self.counted("ListInbox", NotifyApi::list_inbox(self, req))
            .await
            .map(Response::new)
    }

    async fn get_preferences(
        &self,
        req: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        self.counted("GetPreferences", NotifyApi::get_preferences(self, req))
            .await
            .map(Response::new)
    }

    async fn update_preferences(
        &self,
        req: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        self.counted(
            "UpdatePreferences",
            NotifyApi::update_preferences(self, req),
        )
        .await
        .map(Response::new)
    }

    async fn update_message(
        &self,
        req: Request<pb::UpdateMessageRequest>,
    ) -> Result<Response<pb::UpdateMessageResponse>, Status> {
        self.counted("UpdateMessage", NotifyApi::update_message(self, req))
            .await
            .map(Response::new)
    }

    async fn retract_message(
        &self,
        req: Request<pb::RetractMessageRequest>,
    ) -> Result<Response<pb::RetractMessageResponse>, Status> {
        self.counted("RetractMessage", NotifyApi::retract_message(self, req))
            .await
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        use pb::watch_request::Target as T;
        let caller = self.services.auth.authorize(&req, Right::Admin).await?;
        let slot = self.watch_slot(&caller)?;
        let req = req.into_inner();
        let open = async {
            let key = match req.target {
                Some(T::UserId(user)) => self.feed(Some(&user), None).map(WatchKey::Feed)?,
                Some(T::Topic(topic)) => self.feed(None, Some(&topic)).map(WatchKey::Feed)?,
                Some(T::Broadcast(true)) => WatchKey::Broadcast,
                Some(T::Broadcast(false)) | None => {
                    return Err(status::invalid(ValidationError::NoTarget));
                }
            };
            let since = (req.since > 0).then_some(req.since);
            // Opened before answering: what is committed after the call returns is streamed.
            let watcher =
                watch::Watcher::open(self.services.store.as_ref(), &self.hub, key.clone(), since)
                    .await
                    .map_err(status::store)?;
            Ok((key, watcher))
        };
        let (key, watcher) = self.counted("Watch", open).await?;
        let (tx, rx) = crate::delivery::bounded::channel(watch::STREAM_BOUND, watch::out_len);
        self.services.tracker.spawn(watcher.run(
            self.services.store.clone(),
            tx,
            self.services.shutdown.clone(),
        ));
        // The slot is the stream's: given back when the caller drops it.
        let stream = rx.map(move |item| {
            let _held = &slot;
            match item {
                Ok(m) => Ok(stored_message(&key, m)),
                Err(watch::WatchError::Store(e)) => Err(status::store(e)),
                Err(e @ watch::WatchError::Lagged(_)) => {
                    Err(Status::resource_exhausted(e.to_string()))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchConnectionsStream = ConnectionEventStream;

    async fn watch_connections(
        &self,
        req: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<Self::WatchConnectionsStream>, Status> {
        let caller = self.services.auth.authorize(&req, Right::Admin).await?;
        let slot = self.watch_slot(&caller)?;
        let req = req.into_inner();
        let store = self.services.store.clone();
        let after = self
            .counted("WatchConnections", connections::start(store.as_ref(), &req))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(connections::STREAM_QUEUE);
        self.services.tracker.spawn(connections::run(
            store,
            after,
            self.services.lifecycle.watch(),
            tx,
            self.services.shutdown.clone(),
        ));
        // The slot is the stream's: given back when the caller drops it.
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
            let _held = &slot;
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

type ConnectionEventStream =
    Pin<Box<dyn Stream<Item = Result<pb::ConnectionEvents, Status>> + Send>>;

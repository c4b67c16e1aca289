//! The JSON bodies of the HTTP API beside the publish shape
//! ([`notify_proto::json`]): requests and answers of the other operations,
//! each the JSON twin of its protobuf message, and the error body.

use notify_proto::{json::PublishJson, v1 as pb};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Up to 1,000 publishes; each succeeds or fails on its own.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatchJson {
    pub requests: Vec<PublishJson>,
}

/// One item of a batch: `ok` or `error`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishResultJson {
    Ok(notify_proto::json::PublishedJson),
    Error(ErrorJson),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishBatchResultJson {
    /// In request order.
    pub results: Vec<PublishResultJson>,
}

/// A refusal: the gRPC status name and a message naming the rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorJson {
    /// `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`,
    /// `NOT_FOUND`, `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, …
    pub error: String,
    pub message: String,
}

/// A server-side subscription of a user to a topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionJson {
    pub user_id: String,
    pub topic: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscribedJson {
    /// False when it already existed.
    pub created: bool,
    /// The topic's seq at this call: live connections follow it from here.
    pub topic_seq: u64,
    pub live_connections: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnsubscribedJson {
    pub removed: bool,
    pub live_connections: u32,
}

/// Closes a user's sockets, or one connection, with 4003.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectJson {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub connection_id: Option<String>,
    /// The close reason (at most 123 bytes).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DisconnectedJson {
    pub disconnected: u32,
}

/// Whose presence: a user's connections or a topic's subscribers.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    pub user_id: Option<String>,
    pub topic: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionJson {
    pub connection_id: String,
    pub user_id: String,
    pub bridge_id: String,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceJson {
    /// A user's live connections.
    pub connections: Vec<ConnectionJson>,
    /// A topic's stored subscriptions.
    pub subscribers: u64,
    /// A topic's live subscribed connections.
    pub live_connections: u64,
}

/// A user's inbox or a topic's log after `since`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    pub user_id: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub since: u64,
    /// At most 1,000 (default 100).
    #[serde(default)]
    pub limit: u32,
    /// For a user: start after the inbox's acked seq instead of `since`.
    #[serde(default)]
    pub after_acked: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoredMessageJson {
    pub message_id: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub topic: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    pub event: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub ts_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryJson {
    pub messages: Vec<StoredMessageJson>,
    /// Ask again with this `since` for the next page.
    pub next_since: u64,
    pub has_more: bool,
    pub head_seq: u64,
    pub acked_seq: u64,
}

impl From<pb::DisconnectResponse> for DisconnectedJson {
    fn from(r: pb::DisconnectResponse) -> Self {
        Self {
            disconnected: r.disconnected,
        }
    }
}

impl From<pb::SubscribeResponse> for SubscribedJson {
    fn from(r: pb::SubscribeResponse) -> Self {
        Self {
            created: r.created,
            topic_seq: r.topic_seq,
            live_connections: r.live_connections,
        }
    }
}

impl From<pb::UnsubscribeResponse> for UnsubscribedJson {
    fn from(r: pb::UnsubscribeResponse) -> Self {
        Self {
            removed: r.removed,
            live_connections: r.live_connections,
        }
    }
}

impl From<pb::GetPresenceResponse> for PresenceJson {
    fn from(r: pb::GetPresenceResponse) -> Self {
        Self {
            connections: r
                .connections
                .into_iter()
                .map(|c| ConnectionJson {
                    connection_id: c.connection_id,
                    user_id: c.user_id,
                    bridge_id: c.bridge_id,
                    connected_at_ms: c.connected_at_ms,
                    last_seen_ms: c.last_seen_ms,
                })
                .collect(),
            subscribers: r.subscribers,
            live_connections: r.live_connections,
        }
    }
}

impl From<pb::HistoryResponse> for HistoryJson {
    fn from(r: pb::HistoryResponse) -> Self {
        Self {
            messages: r
                .messages
                .into_iter()
                .map(|m| StoredMessageJson {
                    // Stored data is JSON text, checked on the way in.
                    data: serde_json::from_str(&m.data).unwrap_or(Value::String(m.data)),
                    message_id: m.message_id,
                    seq: m.seq,
                    topic: m.topic,
                    user_id: m.user_id,
                    event: m.event,
                    ts_ms: m.ts_ms,
                })
                .collect(),
            next_since: r.next_since,
            has_more: r.has_more,
            head_seq: r.head_seq,
            acked_seq: r.acked_seq,
        }
    }
}

//! The user's side of the inbox over HTTP/JSON (docs/design.md §4.7): marks,
//! pages with state, preferences, and a producer's edits and retractions —
//! the JSON twins of `MarkInbox`, `ListInbox`, `GetInboxCounts`, `GetPreferences`,
//! `UpdatePreferences`, `UpdateMessage` and `RetractMessage`.

use axum::{
    Json,
    extract::{
        Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::request::Parts,
};
use notify_core::inbox::{MarkKind, Shelf};
use notify_proto::{
    convert,
    v1::{self as pb, notify_server::Notify},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ErrorJson, Http, Refused, bad_body, bad_request};

/// Badge numbers: archived, muted and retracted messages count in neither.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsJson {
    pub unseen: u64,
    pub unread: u64,
}

impl From<Option<pb::InboxCounts>> for CountsJson {
    fn from(c: Option<pb::InboxCounts>) -> Self {
        let c = c.unwrap_or_default();
        Self {
            unseen: c.unseen,
            unread: c.unread,
        }
    }
}

/// Marks these `seqs`, or every message up to `up_to` (exactly one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkJson {
    pub user_id: String,
    /// `seen`, `read`, `archived`, `unseen`, `unread` or `unarchived`.
    #[serde(rename = "as")]
    pub kind: String,
    #[serde(default)]
    pub seqs: Vec<u64>,
    #[serde(default)]
    pub up_to: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MarkedJson {
    pub changed: u64,
    /// Listed seqs not in the inbox (never published, expired, retracted).
    pub missing: Vec<u64>,
    pub counts: CountsJson,
    pub live_connections: u32,
}

/// A page of a user's inbox.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    pub user_id: String,
    /// Messages with seq < before (absent: from the newest).
    #[serde(default)]
    pub before: u64,
    /// 1–100 (default 20).
    #[serde(default)]
    pub limit: u32,
    #[serde(default)]
    pub unread_only: bool,
    /// `inbox` (default), `archived` or `all`.
    pub show: Option<String>,
    /// Only these events, comma separated.
    pub events: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxItemJson {
    pub message_id: String,
    pub seq: u64,
    pub event: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub ts_ms: i64,
    pub seen: bool,
    pub read: bool,
    pub archived: bool,
    pub muted: bool,
    /// When its producer last edited it (0: never).
    pub edited_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxPageJson {
    /// Newest first.
    pub items: Vec<InboxItemJson>,
    /// Pass as `before` for the next page; 0 when there is none.
    pub next_before: u64,
    pub first_seq: u64,
    /// Older messages were removed by retention.
    pub older_expired: bool,
    pub counts: CountsJson,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MutesJson {
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    pub user_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesChangeJson {
    pub user_id: String,
    #[serde(default)]
    pub mute: MutesJson,
    #[serde(default)]
    pub unmute: MutesJson,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreferencesJson {
    pub mutes: MutesJson,
}

/// A published inbox message's new data (and event; absent keeps it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessageJson {
    pub message_id: String,
    #[serde(default)]
    pub event: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetractMessageJson {
    pub message_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxSeqJson {
    pub user_id: String,
    pub seq: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisedJson {
    /// Each inbox it was in, with its seq there (empty: already retracted).
    pub inboxes: Vec<InboxSeqJson>,
}

fn mutes(m: Option<pb::Mutes>) -> MutesJson {
    let m = m.unwrap_or_default();
    MutesJson {
        events: m.events,
        namespaces: m.namespaces,
    }
}

fn inbox_seqs(seqs: Vec<pb::InboxSeq>) -> RevisedJson {
    RevisedJson {
        inboxes: seqs
            .into_iter()
            .map(|s| InboxSeqJson {
                user_id: s.user_id,
                seq: s.seq,
            })
            .collect(),
    }
}

impl From<pb::MarkInboxResponse> for MarkedJson {
    fn from(r: pb::MarkInboxResponse) -> Self {
        Self {
            changed: r.changed,
            missing: r.missing,
            counts: r.counts.into(),
            live_connections: r.live_connections,
        }
    }
}

impl From<pb::ListInboxResponse> for InboxPageJson {
    fn from(r: pb::ListInboxResponse) -> Self {
        Self {
            items: r
                .items
                .into_iter()
                .filter_map(|i| {
                    let m = i.message?;
                    Some(InboxItemJson {
                        data: serde_json::from_str(&m.data).unwrap_or(Value::Null),
                        message_id: m.message_id,
                        seq: m.seq,
                        event: m.event,
                        ts_ms: m.ts_ms,
                        seen: i.seen,
                        read: i.read,
                        archived: i.archived,
                        muted: i.muted,
                        edited_ms: i.edited_ms,
                    })
                })
                .collect(),
            next_before: r.next_before,
            first_seq: r.first_seq,
            older_expired: r.older_expired,
            counts: r.counts.into(),
        }
    }
}

/// The counts, and one entry per event type with anything unseen or unread.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsByEventJson {
    pub unseen: u64,
    pub unread: u64,
    pub events: Vec<EventCountsJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventCountsJson {
    pub event: String,
    pub unseen: u64,
    pub unread: u64,
}

impl From<pb::GetInboxCountsResponse> for CountsByEventJson {
    fn from(r: pb::GetInboxCountsResponse) -> Self {
        let totals = CountsJson::from(r.counts);
        Self {
            unseen: totals.unseen,
            unread: totals.unread,
            events: r
                .events
                .into_iter()
                .map(|e| EventCountsJson {
                    event: e.event,
                    unseen: e.unseen,
                    unread: e.unread,
                })
                .collect(),
        }
    }
}

impl From<pb::Preferences> for PreferencesJson {
    fn from(p: pb::Preferences) -> Self {
        Self {
            mutes: mutes(p.mutes),
        }
    }
}

impl From<pb::UpdateMessageResponse> for RevisedJson {
    fn from(r: pb::UpdateMessageResponse) -> Self {
        inbox_seqs(r.updated)
    }
}

impl From<pb::RetractMessageResponse> for RevisedJson {
    fn from(r: pb::RetractMessageResponse) -> Self {
        inbox_seqs(r.retracted)
    }
}

#[utoipa::path(
    post, path = "/v1/inbox/mark", request_body = MarkJson,
    responses(
        (status = 200, description = "Marked; every live socket of the user got the counts", body = MarkedJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 413, body = ErrorJson),
        (status = 429, description = "Too many marks waiting: retry later", body = ErrorJson),
        (status = 503, body = ErrorJson),
    )
)]
pub async fn mark(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<MarkJson>, JsonRejection>,
) -> Result<Json<MarkedJson>, Refused> {
    let Json(m) = body.map_err(bad_body)?;
    let message = pb::MarkInboxRequest {
        user_id: m.user_id,
        r#as: convert::mark_as(MarkKind::parse(&m.kind).map_err(bad_request)?) as i32,
        seqs: m.seqs,
        up_to: m.up_to,
    };
    http.call(parts, message, |api, req| async move {
        Notify::mark_inbox(&api, req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/inbox", params(InboxQuery),
    responses(
        (status = 200, description = "A page of the inbox with each message's state, newest first", body = InboxPageJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn page(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<InboxPageJson>, Refused> {
    let Query(q) = query.map_err(bad_request)?;
    let shelf = Shelf::parse(q.show.as_deref().unwrap_or_default()).map_err(bad_request)?;
    let events = q
        .events
        .map(|e| e.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let message = pb::ListInboxRequest {
        user_id: q.user_id,
        before: q.before,
        limit: q.limit,
        unread_only: q.unread_only,
        shelf: convert::shelf(shelf) as i32,
        events,
    };
    http.call(parts, message, |api, req| async move {
        Notify::list_inbox(&api, req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/inbox/counts", params(UserQuery),
    responses(
        (status = 200, description = "The user's counts and their split by event type (it adds up to them)", body = CountsByEventJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn counts(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<CountsByEventJson>, Refused> {
    let Query(q) = query.map_err(bad_request)?;
    let message = pb::GetInboxCountsRequest { user_id: q.user_id };
    http.call(parts, message, |api, req| async move {
        Notify::get_inbox_counts(&api, req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/preferences", params(UserQuery),
    responses(
        (status = 200, description = "What the user muted", body = PreferencesJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn preferences(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<PreferencesJson>, Refused> {
    let Query(q) = query.map_err(bad_request)?;
    let message = pb::GetPreferencesRequest { user_id: q.user_id };
    http.call(parts, message, |api, req| async move {
        Notify::get_preferences(&api, req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/preferences", request_body = PreferencesChangeJson,
    responses(
        (status = 200, description = "What the user muted now; every live socket of the user follows", body = PreferencesJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 413, body = ErrorJson),
        (status = 503, body = ErrorJson),
    )
)]
pub async fn change_preferences(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<PreferencesChangeJson>, JsonRejection>,
) -> Result<Json<PreferencesJson>, Refused> {
    let Json(c) = body.map_err(bad_body)?;
    let to_pb = |m: MutesJson| {
        Some(pb::Mutes {
            events: m.events,
            namespaces: m.namespaces,
        })
    };
    let message = pb::UpdatePreferencesRequest {
        user_id: c.user_id,
        mute: to_pb(c.mute),
        unmute: to_pb(c.unmute),
    };
    http.call(parts, message, |api, req| async move {
        Notify::update_preferences(&api, req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/messages/update", request_body = UpdateMessageJson,
    responses(
        (status = 200, description = "Every inbox holding it now has this version; live sockets got `updated`", body = RevisedJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, description = "Another caller's message", body = ErrorJson),
        (status = 404, description = "No such inbox message (expired, retracted)", body = ErrorJson),
        (status = 413, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn update_message(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<UpdateMessageJson>, JsonRejection>,
) -> Result<Json<RevisedJson>, Refused> {
    let Json(u) = body.map_err(bad_body)?;
    let message = pb::UpdateMessageRequest {
        message_id: u.message_id,
        event: u.event,
        data: u.data.to_string(),
    };
    http.call(parts, message, |api, req| async move {
        Notify::update_message(&api, req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/messages/retract", request_body = RetractMessageJson,
    responses(
        (status = 200, description = "Taken back from every inbox; live sockets got `retracted`", body = RevisedJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, description = "Another caller's message", body = ErrorJson),
        (status = 404, description = "No such inbox message", body = ErrorJson),
        (status = 413, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn retract_message(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<RetractMessageJson>, JsonRejection>,
) -> Result<Json<RevisedJson>, Refused> {
    let Json(r) = body.map_err(bad_body)?;
    let message = pb::RetractMessageRequest {
        message_id: r.message_id,
    };
    http.call(parts, message, |api, req| async move {
        Notify::retract_message(&api, req).await
    })
    .await
}

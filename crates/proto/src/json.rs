//! The JSON shape of a publish and of its answer, shared by every way in
//! that is not gRPC: notify-svc's HTTP/JSON API and the SQS/SNS consumer;
//! and of a push device, shared by the HTTP/JSON API and the socket.
//! It mirrors `PublishRequest` with `data` as JSON itself (not JSON text)
//! and one field per target; the Notify API validates what it becomes
//! exactly as it validates a gRPC call.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::v1 as pb;

/// One publish. Exactly one target: `user_id`, `users`, `topic`,
/// `broadcast` or `connection_id`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishJson {
    /// One user's inbox: the token's `sub`, or `username:NAME` when a
    /// Cognito pool is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Several users' inboxes (at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// A topic's log (`namespace:rest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Every live connection (not stored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// One live connection (API Gateway's postToConnection; not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// The event's name.
    pub event: String,
    /// The payload, any JSON value.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Per caller: a repeat within 24 h stores nothing and answers the
    /// original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Inbox retention in seconds (default 7 days, at most 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
    /// Push to the recipients' devices when they are away (inbox targets);
    /// absent: the event's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushJson>,
}

/// When and what to push (see `PushOptions` in notify.proto).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushJson {
    /// `never`, `offline` or `unacked`; absent: the event's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// For `unacked`: seconds to wait for an ack (1..=3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Why a JSON publish could not become a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error(
        "give exactly one target: user_id, users, topic, broadcast: true or connection_id ({0} given)"
    )]
    Targets(usize),
    #[error("push.when {0:?} is not one of: never, offline, unacked")]
    PushWhen(String),
}

impl PublishJson {
    /// The gRPC request it stands for.
    pub fn into_request(self) -> Result<pb::PublishRequest, ShapeError> {
        use pb::publish_request::Target;
        let targets = [
            self.user_id.map(Target::UserId),
            self.users
                .map(|user_ids| Target::Users(pb::UserList { user_ids })),
            self.topic.map(Target::Topic),
            self.broadcast.then_some(Target::Broadcast(true)),
            self.connection_id.map(Target::ConnectionId),
        ];
        let given = targets.iter().flatten().count();
        if given != 1 {
            return Err(ShapeError::Targets(given));
        }
        Ok(pb::PublishRequest {
            target: targets.into_iter().flatten().next(),
            event: self.event,
            data: self.data.to_string(),
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            ttl_seconds: self.ttl_seconds.unwrap_or(0),
            push: self.push.map(PushJson::into_options).transpose()?,
        })
    }
}

impl PushJson {
    /// The request's `PushOptions` (the CLI's `--push` flags build one too).
    pub fn into_options(self) -> Result<pb::PushOptions, ShapeError> {
        let when = match self.when.as_deref() {
            None => pb::PushWhen::Default,
            Some("never") => pb::PushWhen::Never,
            Some("offline") => pb::PushWhen::Offline,
            Some("unacked") => pb::PushWhen::Unacked,
            Some(other) => return Err(ShapeError::PushWhen(other.to_owned())),
        };
        Ok(pb::PushOptions {
            when: when as i32,
            after_seconds: self.after_seconds.unwrap_or(0),
            title: self.title.unwrap_or_default(),
            body: self.body.unwrap_or_default(),
        })
    }
}

/// A committed publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct PublishedJson {
    pub message_id: String,
    /// The inbox's or topic's seq; 0 for a user list, a broadcast or a
    /// connection.
    pub seq: u64,
    /// The idempotency key was seen before: nothing new was stored.
    pub duplicate: bool,
    /// Live connections it was routed to at commit time.
    pub delivered: u32,
    /// For a user list: each user's inbox seq.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox_seqs: Vec<InboxSeqJson>,
}

/// One user's seq of a user-list publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct InboxSeqJson {
    pub user_id: String,
    pub seq: u64,
}

impl From<pb::PublishResponse> for PublishedJson {
    fn from(r: pb::PublishResponse) -> Self {
        Self {
            message_id: r.message_id,
            seq: r.seq,
            duplicate: r.duplicate,
            delivered: r.delivered,
            inbox_seqs: r
                .inbox_seqs
                .into_iter()
                .map(|s| InboxSeqJson {
                    user_id: s.user_id,
                    seq: s.seq,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_makes_a_request_with_the_data_as_json_text() {
        let shape: PublishJson = serde_json::from_str(
            r#"{"users":["ann","bob"],"event":"e","data":{"n":1},"idempotency_key":"k"}"#,
        )
        .unwrap();
        let req = shape.into_request().unwrap();
        assert_eq!(
            req.target,
            Some(pb::publish_request::Target::Users(pb::UserList {
                user_ids: vec!["ann".into(), "bob".into()]
            }))
        );
        assert_eq!(
            (req.data.as_str(), req.idempotency_key.as_str()),
            (r#"{"n":1}"#, "k")
        );
    }

    #[test]
    fn none_or_two_targets_are_refused_and_unknown_fields_too() {
        let none = PublishJson {
            event: "e".into(),
            ..Default::default()
        };
        assert_eq!(none.into_request().unwrap_err(), ShapeError::Targets(0));
        let two = PublishJson {
            user_id: Some("ann".into()),
            broadcast: true,
            ..Default::default()
        };
        assert_eq!(two.into_request().unwrap_err(), ShapeError::Targets(2));
        let typo = serde_json::from_str::<PublishJson>(r#"{"user":"ann","event":"e","data":1}"#);
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("unknown field `user`")
        );
    }
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct WebPushJson {
    pub endpoint: String,
    pub keys: WebPushKeysJson,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct WebPushKeysJson {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct FcmJson {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ApnsJson {
    pub token: String,
    /// The app's bundle id.
    pub topic: String,
    #[serde(default)]
    pub sandbox: bool,
}

/// Where a push goes, as JSON edges take it (a socket's `register_push`,
/// `POST /v1/devices`): exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushDestinationJson {
    pub web_push: Option<WebPushJson>,
    pub fcm: Option<FcmJson>,
    pub apns: Option<ApnsJson>,
}

impl PushDestinationJson {
    pub fn into_destination(self) -> Result<pb::PushDestination, &'static str> {
        use pb::push_destination::Destination as D;
        let destination = match (self.web_push, self.fcm, self.apns) {
            (Some(w), None, None) => D::WebPush(pb::WebPushSubscription {
                endpoint: w.endpoint,
                p256dh: w.keys.p256dh,
                auth: w.keys.auth,
            }),
            (None, Some(f), None) => D::Fcm(pb::FcmToken { token: f.token }),
            (None, None, Some(a)) => D::Apns(pb::ApnsToken {
                token: a.token,
                topic: a.topic,
                sandbox: a.sandbox,
            }),
            _ => return Err("give exactly one of web_push, fcm, apns"),
        };
        Ok(pb::PushDestination {
            destination: Some(destination),
        })
    }
}

/// A registered push device as JSON edges answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PushDeviceJson {
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_push: Option<WebPushJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsJson>,
    /// When it was registered, Unix milliseconds.
    pub registered: i64,
}

impl From<pb::PushDevice> for PushDeviceJson {
    fn from(d: pb::PushDevice) -> Self {
        use pb::push_destination::Destination as D;
        let mut json = Self {
            device_id: d.device_id,
            web_push: None,
            fcm: None,
            apns: None,
            registered: d.registered_ms,
        };
        match d.destination.and_then(|d| d.destination) {
            Some(D::WebPush(w)) => {
                json.web_push = Some(WebPushJson {
                    endpoint: w.endpoint,
                    keys: WebPushKeysJson {
                        p256dh: w.p256dh,
                        auth: w.auth,
                    },
                })
            }
            Some(D::Fcm(f)) => json.fcm = Some(FcmJson { token: f.token }),
            Some(D::Apns(a)) => {
                json.apns = Some(ApnsJson {
                    token: a.token,
                    topic: a.topic,
                    sandbox: a.sandbox,
                })
            }
            None => {}
        }
        json
    }
}

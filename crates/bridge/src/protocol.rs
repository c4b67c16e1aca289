//! The client protocol of docs/design.md §5, as types: what clients send (routed by
//! `action`, API Gateway's `$request.body.action` convention), what the bridge
//! answers (tagged by `type`), error codes and close codes, and the wire
//! form of a server text frame (encoded once per message). No I/O here.

use std::collections::BTreeMap;

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use notify_core::close::{
    DISCONNECTED as CLOSE_DISCONNECTED, INVALID_PAYLOAD as CLOSE_INVALID_PAYLOAD,
    NO_PONG as CLOSE_NO_PONG, RESTARTING as CLOSE_RESTARTING, SLOW_CONSUMER as CLOSE_SLOW_CONSUMER,
    TOKEN_EXPIRED as CLOSE_TOKEN_EXPIRED, TOO_LARGE as CLOSE_TOO_LARGE,
    TRY_AGAIN as CLOSE_TRY_AGAIN,
};

/// The `id` a client may put on a frame; echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FrameId {
    Number(u64),
    Text(String),
}

/// What a client asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Subscribe {
        topic: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    Unsubscribe {
        topic: String,
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// Cumulative inbox ack.
    Ack {
        seq: u64,
        #[serde(default)]
        id: Option<FrameId>,
    },
    Publish {
        topic: String,
        /// The JSON value to publish. A tree, not a `RawValue`: serde cannot
        /// hand raw values through an internally tagged enum; key order is
        /// kept (`preserve_order`), whitespace is not.
        data: serde_json::Value,
        #[serde(default)]
        event: Option<String>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    Ping {
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// API Gateway's keep-alive name for ping.
    ExtendTtl {
        #[serde(default)]
        id: Option<FrameId>,
    },
    Refresh {
        token: String,
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// Marks inbox messages (`seqs`, or every one up to `up_to`) `as`
    /// seen, read, archived, unseen, unread or unarchived.
    Mark {
        #[serde(rename = "as")]
        kind: String,
        #[serde(default)]
        seqs: Option<Vec<u64>>,
        #[serde(default)]
        up_to: Option<u64>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// A page of older inbox items, newest first.
    History {
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        unread_only: bool,
        /// `inbox` (default), `archived` or `all`.
        #[serde(default)]
        show: Option<String>,
        #[serde(default)]
        events: Vec<String>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    Mute {
        #[serde(default)]
        events: Vec<String>,
        #[serde(default)]
        namespaces: Vec<String>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    Unmute {
        #[serde(default)]
        events: Vec<String>,
        #[serde(default)]
        namespaces: Vec<String>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// What the user muted.
    Preferences {
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// The counts now, split by event type.
    Counts {
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// Registers this device for push when the user is away: exactly one of
    /// a browser's `PushSubscription` (its `toJSON()`), an FCM token or an
    /// APNs token.
    RegisterPush {
        #[serde(default)]
        web_push: Option<WebPushJson>,
        #[serde(default)]
        fcm: Option<FcmJson>,
        #[serde(default)]
        apns: Option<ApnsJson>,
        #[serde(default)]
        id: Option<FrameId>,
    },
    /// The user's push devices (and the VAPID key to subscribe with).
    PushDevices {
        #[serde(default)]
        id: Option<FrameId>,
    },
    UnregisterPush {
        device_id: String,
        #[serde(default)]
        id: Option<FrameId>,
    },
}

pub use notify_proto::json::{ApnsJson, FcmJson, PushDeviceJson, WebPushJson};

impl Action {
    pub fn id(&self) -> Option<&FrameId> {
        match self {
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Ack { id, .. }
            | Self::Publish { id, .. }
            | Self::Ping { id }
            | Self::ExtendTtl { id }
            | Self::Refresh { id, .. }
            | Self::Mark { id, .. }
            | Self::History { id, .. }
            | Self::Mute { id, .. }
            | Self::Unmute { id, .. }
            | Self::Preferences { id }
            | Self::Counts { id }
            | Self::RegisterPush { id, .. }
            | Self::PushDevices { id }
            | Self::UnregisterPush { id, .. } => id.as_ref(),
        }
    }
}

/// The error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    RateLimited,
    TooLarge,
    UnknownAction,
    /// Not now: the same frame may succeed later (notify-svc or Cognito
    /// unreachable, a publish not confirmed, a routed action's backend
    /// slow or down).
    Unavailable,
    /// A routed action's backend failed (its gRPC code is the frame's `status`).
    UpstreamError,
}

/// A frame the bridge refuses, with what to answer.
#[derive(Debug, Clone)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `id`, when it could be read.
    pub id: Option<FrameId>,
    /// For `unknown_action`: the action the frame named, which a configured
    /// route may take (the bridge's upstream routes).
    pub action: Option<String>,
}

/// Whether `action` is one of the bridge's own (never routed to a backend).
pub fn is_built_in(action: &str) -> bool {
    ACTIONS.contains(&action)
}

/// The bridge's own actions.
pub const ACTIONS: [&str; 16] = [
    "subscribe",
    "unsubscribe",
    "ack",
    "publish",
    "ping",
    "extend_ttl",
    "refresh",
    "mark",
    "history",
    "mute",
    "unmute",
    "preferences",
    "counts",
    "register_push",
    "push_devices",
    "unregister_push",
];

/// Parses one text frame. An unknown or missing `action` is `unknown_action`
/// (docs/design.md §5's wording); a known action with wrong fields is `bad_request`
/// naming the problem.
pub fn parse(text: &str) -> Result<Action, FrameError> {
    match serde_json::from_str::<Action>(text) {
        Ok(action) => Ok(action),
        Err(e) => {
            // Read what can be read to route the error and echo the id.
            // `id` as any value: an unreadable id must not turn an
            // unknown action into a generic refusal (found by fuzz_frames).
            #[derive(Deserialize)]
            struct Envelope {
                action: Option<serde_json::Value>,
                id: Option<serde_json::Value>,
            }
            let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
                return Err(FrameError {
                    code: ErrorCode::BadRequest,
                    message: "frames are JSON objects with an \"action\"".into(),
                    id: None,
                    action: None,
                });
            };
            let id = envelope
                .id
                .and_then(|id| serde_json::from_value::<FrameId>(id).ok());
            let action = envelope.action.as_ref().and_then(|a| a.as_str());
            Err(if action.is_some_and(is_built_in) {
                FrameError {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                    id,
                    action: None,
                }
            } else {
                FrameError {
                    code: ErrorCode::UnknownAction,
                    message: "That's not a valid action".into(),
                    id,
                    action: action.map(str::to_owned),
                }
            })
        }
    }
}

/// What the bridge sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        connection_id: &'a str,
        user_id: &'a str,
        /// The user's inbox head.
        seq: u64,
        /// False when retention (the inbox TTL) dropped messages after the
        /// resume point: the replay starts at `first_seq`, not right after it.
        recovered: bool,
        /// The oldest inbox seq still kept (0 if none).
        first_seq: u64,
        /// The user's badge counts now.
        counts: CountsJson,
        /// What the user muted.
        mutes: MutesJson<'a>,
    },
    Message {
        id: &'a str,
        seq: u64,
        /// Absent for inbox messages.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        event: &'a str,
        /// The published JSON value itself.
        data: &'a RawValue,
        /// Commit time, Unix milliseconds.
        ts: i64,
    },
    Subscribed {
        topic: &'a str,
        seq: u64,
        /// False when the topic log (its size or age) no longer holds
        /// everything after the `since` asked for.
        recovered: bool,
        /// The oldest seq the topic log still holds (0 if none).
        first_seq: u64,
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    Unsubscribed {
        topic: &'a str,
        source: Source,
        /// Why, when the policy ended it.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    Published {
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    Refreshed {
        /// New expiry, Unix seconds.
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
        /// A routed action's backend status (`NOT_FOUND`, …), when it sent one.
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'a str>,
    },
    /// The user's counts changed (a new message, a mark on any device, a
    /// retraction, expiry); or, with `events` and the frame's `id`, the
    /// answer to `counts`.
    Counts {
        unseen: u64,
        unread: u64,
        /// Event types with anything unseen or unread (the answer only).
        #[serde(skip_serializing_if = "Option::is_none")]
        events: Option<BTreeMap<&'a str, CountsJson>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    /// The answer to `mark`.
    Marked {
        changed: u64,
        /// Listed seqs not in the inbox (never published, expired, retracted).
        missing: &'a [u64],
        counts: CountsJson,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    /// The answer to `history`: newest first.
    History {
        items: &'a [HistoryItem<'a>],
        /// Pass as `before` for the next page; absent when there is none.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_before: Option<u64>,
        /// The oldest seq still kept (0 if none).
        first_seq: u64,
        /// Older messages were removed by retention (their TTL passed).
        older_expired: bool,
        counts: CountsJson,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    /// What the user muted: the answer to mute, unmute and preferences, and
    /// sent to every socket of the user when it changes.
    Preferences {
        mutes: MutesJson<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    /// The answer to `register_push`, `push_devices` and `unregister_push`:
    /// the user's devices now.
    PushDevices {
        devices: &'a [PushDeviceJson],
        /// base64url, for `pushManager.subscribe`; absent without Web Push.
        #[serde(skip_serializing_if = "Option::is_none")]
        vapid_public_key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
    /// Its producer edited an inbox message: this is its current version.
    Updated {
        id: &'a str,
        seq: u64,
        event: &'a str,
        data: &'a RawValue,
        ts: i64,
    },
    /// Its producer took an inbox message back.
    Retracted { id: &'a str, seq: u64 },
    /// A routed action's answer from its backend.
    Reply {
        action: &'a str,
        /// The backend's JSON answer.
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a FrameId>,
    },
}

/// Badge counts in frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CountsJson {
    pub unseen: u64,
    pub unread: u64,
}

/// Mutes in frames.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MutesJson<'a> {
    pub events: Vec<&'a str>,
    pub namespaces: Vec<&'a str>,
}

/// One item of a `history` page.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem<'a> {
    pub id: &'a str,
    pub seq: u64,
    pub event: &'a str,
    pub data: &'a RawValue,
    pub ts: i64,
    pub seen: bool,
    pub read: bool,
    pub archived: bool,
    pub muted: bool,
    /// When its producer last edited it (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited: Option<i64>,
}

/// Who made (or ended) a subscription: the client's own frame, a backend
/// through `Notify.Subscribe` / `Unsubscribe`, or the topic policy (a
/// refreshed token may no longer hold a topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Client,
    Server,
    Policy,
}

impl ServerFrame<'_> {
    /// The frame as JSON text. Serialising these types cannot fail.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An `error` frame's text.
pub fn error_text(code: ErrorCode, message: &str, id: Option<&FrameId>) -> String {
    ServerFrame::Error {
        code,
        message,
        id,
        status: None,
    }
    .to_text()
}

/// Appends the header of a frame whose first byte is `first` (FIN, RSV,
/// opcode) carrying `len` bytes (RFC 6455 §5.2), masked with `mask` if given.
pub fn put_frame_header(out: &mut Vec<u8>, first: u8, len: usize, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    out.push(first);
    if len < 126 {
        out.push(masked | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(masked | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(masked | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// A final, unmasked text frame carrying `payload`, and where the payload
/// starts in it.
pub fn text_frame(payload: &[u8]) -> (Bytes, usize) {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    put_frame_header(&mut frame, 0x81, payload.len(), None); // FIN, text
    let at = frame.len();
    frame.extend_from_slice(payload);
    (Bytes::from(frame), at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };

    #[test]
    fn parses_the_sample_frames_of_the_design() {
        let frame = |text: &str| parse(text).unwrap();
        assert!(matches!(
            frame(r#"{"action":"subscribe","topic":"fights:live","since":12}"#),
            Action::Subscribe { ref topic, since: Some(12), id: None } if topic == "fights:live"
        ));
        assert!(matches!(
            frame(r#"{"action":"unsubscribe","topic":"fights:live","id":"u1"}"#),
            Action::Unsubscribe { id: Some(FrameId::Text(ref i)), .. } if i == "u1"
        ));
        assert!(matches!(
            frame(r#"{"action":"ack","seq":42}"#),
            Action::Ack { seq: 42, id: None }
        ));
        let Action::Publish { topic, data, .. } =
            frame(r#"{"action":"publish","topic":"room:lobby","data":{"text":"hi","n":[1,2]}}"#)
        else {
            panic!("not a publish");
        };
        assert_eq!(
            (topic.as_str(), data.to_string().as_str()),
            ("room:lobby", r#"{"text":"hi","n":[1,2]}"#)
        );
        assert!(matches!(
            frame(r#"{"action":"ping","id":7}"#),
            Action::Ping {
                id: Some(FrameId::Number(7))
            }
        ));
        assert!(matches!(
            frame(r#"{"action":"extend_ttl"}"#),
            Action::ExtendTtl { id: None }
        ));
        assert!(matches!(
            frame(r#"{"action":"refresh","token":"t"}"#),
            Action::Refresh { ref token, id: None } if token == "t"
        ));
        assert!(matches!(
            frame(r#"{"action":"mark","as":"read","seqs":[1,2],"id":1}"#),
            Action::Mark { ref kind, seqs: Some(ref s), up_to: None, .. } if kind == "read" && s == &[1, 2]
        ));
        assert!(matches!(
            frame(r#"{"action":"history","before":40,"limit":10,"unread_only":true}"#),
            Action::History {
                before: Some(40),
                limit: Some(10),
                unread_only: true,
                ..
            }
        ));
        assert!(matches!(
            frame(r#"{"action":"mute","namespaces":["room"]}"#),
            Action::Mute { ref namespaces, .. } if namespaces == &["room"]
        ));
    }

    #[test]
    fn refuses_what_is_not_a_valid_frame() {
        let unknown = parse(r#"{"action":"dance","id":3}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownAction);
        assert_eq!(unknown.message, "That's not a valid action");
        assert_eq!(unknown.id, Some(FrameId::Number(3)));
        assert_eq!(
            parse(r#"{"topic":"x"}"#).unwrap_err().code,
            ErrorCode::UnknownAction
        );
        assert_eq!(
            parse(r#"{"action":5}"#).unwrap_err().code,
            ErrorCode::UnknownAction
        );
        let missing = parse(r#"{"action":"subscribe","id":"s"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadRequest);
        assert!(missing.message.contains("topic"), "{}", missing.message);
        assert_eq!(missing.id, Some(FrameId::Text("s".into())));
        assert_eq!(
            parse(r#"{"action":"ack","seq":-1}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"action":"ping","extra":1}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        for junk in [
            "",
            "null",
            "[1]",
            "\"ping\"",
            "{",
            "{\"action\":\"ping\"} trailing",
        ] {
            assert_eq!(
                parse(junk).unwrap_err().code,
                ErrorCode::BadRequest,
                "{junk:?}"
            );
        }
        let deep = format!(
            "{{\"action\":\"publish\",\"topic\":\"room:a\",\"data\":{}1{}}}",
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(
            parse(&deep).unwrap_err().code,
            ErrorCode::BadRequest,
            "recursion limit, no stack overflow"
        );
    }

    #[test]
    fn server_frames_serialise_as_the_design_shows() {
        let data = RawValue::from_string(r#"{"fight":42}"#.into()).unwrap();
        let message = ServerFrame::Message {
            id: "m1",
            seq: 3,
            topic: None,
            event: "fight_created",
            data: &data,
            ts: 1_700_000_000_000,
        };
        assert_eq!(
            message.to_text(),
            r#"{"type":"message","id":"m1","seq":3,"event":"fight_created","data":{"fight":42},"ts":1700000000000}"#
        );
        let id = FrameId::Text("a".into());
        let error = ServerFrame::Error {
            code: ErrorCode::UnknownAction,
            message: "That's not a valid action",
            id: Some(&id),
            status: None,
        };
        assert_eq!(
            error.to_text(),
            r#"{"type":"error","code":"unknown_action","message":"That's not a valid action","id":"a"}"#
        );
        assert_eq!(
            ServerFrame::Pong { id: None }.to_text(),
            r#"{"type":"pong"}"#
        );
        assert_eq!(
            ServerFrame::Welcome {
                connection_id: "c",
                user_id: "u",
                seq: 9,
                recovered: false,
                first_seq: 4,
                counts: CountsJson {
                    unseen: 2,
                    unread: 3,
                },
                mutes: MutesJson::default(),
            }
            .to_text(),
            r#"{"type":"welcome","connection_id":"c","user_id":"u","seq":9,"recovered":false,"first_seq":4,"counts":{"unseen":2,"unread":3},"mutes":{"events":[],"namespaces":[]}}"#
        );
        assert_eq!(
            ServerFrame::Counts {
                unseen: 1,
                unread: 2,
                events: None,
                id: None,
            }
            .to_text(),
            r#"{"type":"counts","unseen":1,"unread":2}"#
        );
        let id = FrameId::Text("c1".into());
        let events = BTreeMap::from([(
            "fight.accepted",
            CountsJson {
                unseen: 1,
                unread: 2,
            },
        )]);
        assert_eq!(
            ServerFrame::Counts {
                unseen: 1,
                unread: 2,
                events: Some(events),
                id: Some(&id),
            }
            .to_text(),
            r#"{"type":"counts","unseen":1,"unread":2,"events":{"fight.accepted":{"unseen":1,"unread":2}},"id":"c1"}"#
        );
        assert_eq!(
            ServerFrame::Subscribed {
                topic: "room:a",
                seq: 3,
                recovered: true,
                first_seq: 1,
                source: Source::Server,
                id: None,
            }
            .to_text(),
            r#"{"type":"subscribed","topic":"room:a","seq":3,"recovered":true,"first_seq":1,"source":"server"}"#
        );
    }

    #[test]
    fn the_frame_is_what_tungstenite_would_write() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload = "x".repeat(len);
            let (ours, at) = text_frame(payload.as_bytes());
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(&ours[..], &theirs[..], "payload of {len} bytes");
            assert_eq!(&ours[at..], payload.as_bytes());
        }
    }
}

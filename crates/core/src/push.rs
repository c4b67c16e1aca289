//! Push destinations of a user's devices (docs/design.md §4.8): a Web Push
//! subscription, an FCM registration token or an APNs device token, where
//! a notification goes when no socket of the user took the message.
//!
//! A destination is one device's address at its provider, so it belongs to
//! one user at a time: its [`DeviceId`] is derived from the address, a
//! second registration of the same address is the same device, and one
//! made by another user (a phone signed into another account) moves it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{ValidationError, ids::bounded_text};

/// Devices a user may have; registering one more forgets the one
/// registered longest ago (an app reinstalled gets a new token and the old
/// one is seldom removed by its owner).
pub const MAX_DEVICES: usize = 20;

/// Where a push to one device goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A browser's `PushSubscription` (RFC 8030 endpoint, RFC 8291 keys).
    WebPush {
        endpoint: String,
        /// The subscription's P-256 public key, base64url (65 bytes).
        p256dh: String,
        /// The subscription's authentication secret, base64url (16 bytes).
        auth: String,
    },
    /// A Firebase Cloud Messaging registration token.
    Fcm { token: String },
    /// An Apple Push Notification service device token (hex), the app's
    /// bundle id (`apns-topic`) and whether it is a development build.
    Apns {
        token: String,
        topic: String,
        sandbox: bool,
    },
}

/// The provider a destination belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    WebPush,
    Fcm,
    Apns,
}

impl Provider {
    pub const ALL: [Self; 3] = [Self::WebPush, Self::Fcm, Self::Apns];

    /// The name stored and shown (`web_push`, `fcm`, `apns`).
    pub fn name(self) -> &'static str {
        match self {
            Self::WebPush => "web_push",
            Self::Fcm => "fcm",
            Self::Apns => "apns",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ValidationError::BadChoice {
                field: "provider",
                value: name.to_owned(),
                choices: "web_push, fcm, apns",
            })
    }
}

impl Destination {
    /// Checks a destination as a client or service sends it (an APNs token
    /// comes back in lower case: clients send either).
    pub fn check(self) -> Result<Self, ValidationError> {
        match &self {
            Self::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                bounded_text("endpoint", endpoint, 2048)?;
                if !endpoint.starts_with("https://") {
                    return Err(bad("endpoint", endpoint, "an https:// URL"));
                }
                let key = decoded("p256dh", p256dh)?;
                if key.len() != 65 || key[0] != 4 {
                    return Err(bad("p256dh", p256dh, "an uncompressed P-256 point"));
                }
                if decoded("auth", auth)?.len() != 16 {
                    return Err(bad("auth", auth, "16 bytes"));
                }
            }
            Self::Fcm { token } => {
                bounded_text("token", token, 4096)?;
                if token.chars().any(char::is_whitespace) {
                    return Err(bad("token", token, "a token without spaces"));
                }
            }
            Self::Apns {
                token,
                topic,
                sandbox,
            } => {
                bounded_text("token", token, 200)?;
                if token.len() < 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("token", token, "a hex device token"));
                }
                bounded_text("topic", topic, 255)?;
                return Ok(Self::Apns {
                    token: token.to_ascii_lowercase(),
                    topic: topic.clone(),
                    sandbox: *sandbox,
                });
            }
        }
        Ok(self)
    }

    pub fn provider(&self) -> Provider {
        match self {
            Self::WebPush { .. } => Provider::WebPush,
            Self::Fcm { .. } => Provider::Fcm,
            Self::Apns { .. } => Provider::Apns,
        }
    }

    /// The device's address at its provider: what makes it one device.
    pub fn address(&self) -> &str {
        match self {
            Self::WebPush { endpoint, .. } => endpoint,
            Self::Fcm { token } | Self::Apns { token, .. } => token,
        }
    }

    /// The device's id: derived from the provider and address, so the same
    /// registration twice is one device (FNV-1a 128, hex; not a secret,
    /// and the address itself is never shown in logs).
    pub fn device_id(&self) -> DeviceId {
        let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        for byte in self
            .provider()
            .name()
            .bytes()
            .chain([0])
            .chain(self.address().bytes())
        {
            hash ^= u128::from(byte);
            hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
        DeviceId(format!("{hash:032x}"))
    }
}

/// A device's id (32 hex digits), see [`Destination::device_id`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub String);

impl DeviceId {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.len() == 32 && value.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::BadId {
                field: "device_id",
                value: value.chars().take(64).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub destination: Destination,
    /// When it was (last) registered.
    pub registered: std::time::SystemTime,
}

fn decoded(field: &'static str, value: &str) -> Result<Vec<u8>, ValidationError> {
    bounded_text(field, value, 200)?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| bad(field, value, "base64url"))
}

fn bad(field: &'static str, value: &str, expected: &'static str) -> ValidationError {
    ValidationError::BadChoice {
        field,
        value: value.chars().take(64).collect(),
        choices: expected,
    }
}

/// The configured push of one event type: when, and the notification's
/// title and body templates (`{field}` is the message data's top-level
/// field of that name; a missing field leaves the text as written).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPush {
    /// `never`, `offline` or `unacked`.
    pub when: String,
    /// For `unacked`: seconds to wait for an ack.
    #[serde(default)]
    pub after_seconds: u64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
}

/// Push defaults per event type (`NOTIFY_PUSH_EVENTS`, a JSON object of
/// event name to [`EventPush`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushPolicy {
    events: std::collections::BTreeMap<String, (When, EventPush)>,
}

impl PushPolicy {
    /// Reads the JSON object; every entry is checked.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: std::collections::BTreeMap<String, EventPush> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut events = std::collections::BTreeMap::new();
        for (event, push) in raw {
            let when = When::parse(&push.when, push.after_seconds)
                .map_err(|e| format!("event {event:?}: {e}"))?;
            events.insert(event, (when, push));
        }
        Ok(Self { events })
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The configured events and when each pushes (for `/info`).
    pub fn events(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(event, (when, _))| match when {
                When::Unacked(after) => format!("{event}=unacked:{}s", after.as_secs()),
                other => format!("{event}={}", other.name()),
            })
            .collect()
    }

    /// What a publish pushes: the request's choice over the event's
    /// default; the request's title and body over the event's templates
    /// (rendered with `data`); the event name when neither gives a title.
    /// None: nothing is pushed.
    pub fn resolve(
        &self,
        event: &str,
        data: &str,
        asked: Option<When>,
        title: &str,
        body: &str,
    ) -> Result<Option<PushOrder>, ValidationError> {
        let configured = self.events.get(event);
        let when = asked.or(configured.map(|(w, _)| *w)).unwrap_or(When::Never);
        if when == When::Never {
            return Ok(None);
        }
        let fields: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        let pick = |asked: &str, template: Option<&str>| -> String {
            if !asked.is_empty() {
                asked.to_owned()
            } else {
                template.map(|t| render(t, &fields)).unwrap_or_default()
            }
        };
        let mut title = pick(title, configured.map(|(_, p)| p.title.as_str()));
        if title.is_empty() {
            title = event.to_owned();
        }
        let body = pick(body, configured.map(|(_, p)| p.body.as_str()));
        PushOrder::new(when, &title, &body).map(Some)
    }
}

/// `{field}` replaced by the data's top-level field (strings as they are,
/// other values as JSON); a brace pair naming nothing stays as written.
fn render(template: &str, data: &serde_json::Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match data.get(name) {
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(v) if !name.is_empty() => out.push_str(&v.to_string()),
                    _ => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// When a message is pushed to a user's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum When {
    Never,
    /// When the user has no live connection (checked when the push is due:
    /// at once after the commit).
    Offline,
    /// When no device acked the message within this long.
    Unacked(Duration),
}

/// The longest a push may wait for an ack: past that, a push is no longer
/// the fallback for a live session.
pub const MAX_UNACKED_WAIT: Duration = Duration::from_secs(3600);

/// Bounds of what a push shows (the providers' payloads are ~4 KB).
pub const MAX_TITLE_BYTES: usize = 200;
pub const MAX_BODY_BYTES: usize = 1000;

impl When {
    /// `never`, `offline` or `unacked` with `after` seconds (1..=3600).
    pub fn parse(name: &str, after_seconds: u64) -> Result<Self, ValidationError> {
        match name {
            "never" => Ok(Self::Never),
            "offline" => Ok(Self::Offline),
            "unacked" => {
                let after = Duration::from_secs(after_seconds);
                if after_seconds == 0 || after > MAX_UNACKED_WAIT {
                    return Err(ValidationError::BadChoice {
                        field: "push.after_seconds",
                        value: after_seconds.to_string(),
                        choices: "1..=3600 for unacked",
                    });
                }
                Ok(Self::Unacked(after))
            }
            other => Err(ValidationError::BadChoice {
                field: "push.when",
                value: other.chars().take(64).collect(),
                choices: "never, offline, unacked",
            }),
        }
    }

    /// The name stored (`offline`, `unacked`; `never` is never stored).
    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Offline => "offline",
            Self::Unacked(_) => "unacked",
        }
    }

    /// How long after the commit the push is due.
    pub fn delay(self) -> Duration {
        match self {
            Self::Unacked(after) => after,
            Self::Never | Self::Offline => Duration::ZERO,
        }
    }
}

/// What a publish asks to push, resolved (request fields over the event's
/// configured default and template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOrder {
    pub when: When,
    pub title: String,
    pub body: String,
}

impl PushOrder {
    pub fn new(when: When, title: &str, body: &str) -> Result<Self, ValidationError> {
        bounded_text("push.title", title, MAX_TITLE_BYTES)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(ValidationError::TooLong {
                field: "push.body",
                len: body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        Ok(Self {
            when,
            title: title.to_owned(),
            body: body.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(endpoint: &str, p256dh: &str, auth: &str) -> Destination {
        Destination::WebPush {
            endpoint: endpoint.into(),
            p256dh: p256dh.into(),
            auth: auth.into(),
        }
    }

    const KEY: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn destinations_are_checked_as_their_providers_define_them() {
        assert!(web("https://push.example/abc", KEY, AUTH).check().is_ok());
        assert!(web("http://push.example/abc", KEY, AUTH).check().is_err());
        assert!(web("https://push.example/abc", AUTH, AUTH).check().is_err());
        assert!(web("https://push.example/abc", KEY, KEY).check().is_err());
        assert!(
            web("https://push.example/abc", "not base64!", AUTH)
                .check()
                .is_err()
        );
        let fcm = |t: &str| Destination::Fcm { token: t.into() }.check();
        assert!(fcm("dGVzdA:APA91b").is_ok());
        assert!(fcm("").is_err());
        assert!(fcm("a b").is_err());
        let apns = |t: &str| {
            Destination::Apns {
                token: t.into(),
                topic: "com.example.bets".into(),
                sandbox: true,
            }
            .check()
        };
        assert!(apns(&"ab".repeat(32)).is_ok());
        assert!(apns("abc").is_err());
        assert!(apns(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_device_id_is_the_same_for_the_same_address_only() {
        let a = web("https://push.example/abc", KEY, AUTH);
        let again = web("https://push.example/abc", KEY, "AAAAAAAAAAAAAAAAAAAAAA");
        let other = web("https://push.example/abd", KEY, AUTH);
        assert_eq!(a.device_id(), again.device_id(), "new keys, same device");
        assert_ne!(a.device_id(), other.device_id());
        let upper = Destination::Apns {
            token: "AB".repeat(32),
            topic: "t".into(),
            sandbox: false,
        };
        let lower = Destination::Apns {
            token: "ab".repeat(32),
            topic: "t".into(),
            sandbox: false,
        };
        assert_eq!(
            upper.check().unwrap().device_id(),
            lower.check().unwrap().device_id()
        );
        assert!(DeviceId::parse(a.device_id().as_str()).is_ok());
        assert!(DeviceId::parse("x").is_err());
    }

    #[test]
    fn a_publish_pushes_what_it_asks_or_what_its_event_is_configured_to() {
        let policy = PushPolicy::from_json(
            r#"{"fight.accepted": {"when": "offline", "title": "{opponent} took your bet",
                                   "body": "Stake {stake} on {fight}"},
                "fight.challenged": {"when": "unacked", "after_seconds": 30}}"#,
        )
        .unwrap();
        let data = r#"{"opponent": "bea", "stake": 20, "x": {"y": 1}}"#;
        let accepted = policy
            .resolve("fight.accepted", data, None, "", "")
            .unwrap()
            .unwrap();
        assert_eq!(accepted.when, When::Offline);
        assert_eq!(accepted.title, "bea took your bet");
        assert_eq!(
            accepted.body, "Stake 20 on {fight}",
            "a missing field stays as written"
        );
        let challenged = policy
            .resolve("fight.challenged", "{}", None, "", "")
            .unwrap()
            .unwrap();
        assert_eq!(challenged.when, When::Unacked(Duration::from_secs(30)));
        assert_eq!(
            challenged.title, "fight.challenged",
            "no template: the event name"
        );
        assert_eq!(policy.resolve("chat", "{}", None, "", "").unwrap(), None);
        let asked = policy
            .resolve("chat", "{}", Some(When::Offline), "Hi", "there")
            .unwrap()
            .unwrap();
        assert_eq!((asked.title.as_str(), asked.body.as_str()), ("Hi", "there"));
        assert_eq!(
            policy
                .resolve("fight.accepted", data, Some(When::Never), "", "")
                .unwrap(),
            None,
            "the request may turn a default off"
        );
        assert!(PushPolicy::from_json(r#"{"e": {"when": "sometimes"}}"#).is_err());
        assert!(PushPolicy::from_json(r#"{"e": {"when": "unacked"}}"#).is_err());
        assert!(
            policy
                .resolve("chat", "{}", Some(When::Offline), &"t".repeat(201), "")
                .is_err()
        );
    }
}

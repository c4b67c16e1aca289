//! A publish request after validation: every field is known good, so the store
//! and the router never re-check it.

use std::time::Duration;

use crate::{Topic, TopicPolicy, UserId, ValidationError, ids::bounded_text};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One user's inbox.
    User(UserId),
    /// Several inboxes; deduplicated, in first-seen order.
    Users(Vec<UserId>),
    /// A topic's log.
    Topic(Topic),
    /// Every live connection; not stored per user.
    Broadcast,
}

/// The bounds a publish is checked against (configurable per deployment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_data_bytes: usize,
    pub max_users: usize,
    pub max_event_bytes: usize,
    pub max_idempotency_key_bytes: usize,
    /// Deepest JSON nesting accepted in `data`; consumers parse it recursively.
    pub max_json_depth: usize,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_bytes: 64 * 1024,
            max_users: 10_000,
            max_event_bytes: 128,
            max_idempotency_key_bytes: 255,
            // serde_json (and many client parsers) stop at 128; stay well below.
            max_json_depth: 64,
            default_ttl: Duration::from_secs(7 * 24 * 3600),
            // A month: longer retention belongs in the producer's own database.
            max_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A publish before validation, as any edge (gRPC, client frame) receives it.
#[derive(Debug, Clone, Default)]
pub struct RawPublish<'a> {
    pub user_id: Option<&'a str>,
    pub users: Option<&'a [String]>,
    pub topic: Option<&'a str>,
    pub broadcast: bool,
    pub event: &'a str,
    pub data: &'a str,
    pub idempotency_key: &'a str,
    pub ttl_seconds: u32,
}

/// A validated publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub target: Target,
    pub event: String,
    /// JSON text, checked to parse.
    pub data: String,
    pub idempotency_key: Option<String>,
    pub ttl: Duration,
}

impl Publish {
    /// Checks every rule of docs/design.md §3 and docs/limits.md.
    pub fn validate(
        raw: RawPublish<'_>,
        limits: &Limits,
        topics: &TopicPolicy,
    ) -> Result<Self, ValidationError> {
        let target = match (raw.user_id, raw.users, raw.topic, raw.broadcast) {
            (Some(user), None, None, false) => Target::User(UserId::parse("user_id", user)?),
            (None, Some(users), None, false) => Target::Users(parse_users(users, limits)?),
            (None, None, Some(topic), false) => Target::Topic(topics.topic(topic)?.0),
            (None, None, None, true) => Target::Broadcast,
            _ => return Err(ValidationError::NoTarget),
        };
        let event = check_content(raw.event, raw.data, limits)?;
        let idempotency_key = match raw.idempotency_key {
            "" => None,
            key => Some(bounded_text(
                "idempotency_key",
                key,
                limits.max_idempotency_key_bytes,
            )?),
        };
        let ttl = match u64::from(raw.ttl_seconds) {
            0 => limits.default_ttl,
            secs if secs > limits.max_ttl.as_secs() => {
                return Err(ValidationError::TtlTooLong {
                    ttl: secs,
                    max: limits.max_ttl.as_secs(),
                });
            }
            secs => Duration::from_secs(secs),
        };
        Ok(Self {
            target,
            event,
            data: raw.data.to_owned(),
            idempotency_key,
            ttl,
        })
    }
}

/// The event name and the JSON data of a publish, checked against `limits`
/// (size, depth, JSON); the event as owned text. Shared by every target,
/// including those that are not stored (one connection).
pub fn check_content(event: &str, data: &str, limits: &Limits) -> Result<String, ValidationError> {
    let event = bounded_text("event", event, limits.max_event_bytes)?;
    if data.len() > limits.max_data_bytes {
        return Err(ValidationError::DataTooLarge {
            len: data.len(),
            max: limits.max_data_bytes,
        });
    }
    // Depth first: it is a cheap scan, and the parse below never recurses
    // (IgnoredAny), so hostile input cannot exhaust the stack either way.
    let depth = json_depth(data);
    if depth > limits.max_json_depth {
        return Err(ValidationError::TooDeep {
            depth,
            max: limits.max_json_depth,
        });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map_err(|e| ValidationError::InvalidJson(e.to_string()))?;
    Ok(event)
}

fn parse_users(users: &[String], limits: &Limits) -> Result<Vec<UserId>, ValidationError> {
    if users.is_empty() {
        return Err(ValidationError::Empty { field: "users" });
    }
    if users.len() > limits.max_users {
        return Err(ValidationError::TooManyUsers {
            count: users.len(),
            max: limits.max_users,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    let mut out = Vec::with_capacity(users.len());
    for raw in users {
        let user = UserId::parse("users", raw)?;
        if seen.insert(user.clone()) {
            out.push(user);
        }
    }
    Ok(out)
}

/// The deepest nesting of arrays and objects in JSON text, ignoring brackets
/// inside strings. Only meaningful for valid JSON, which is checked after.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: RawPublish<'_>) -> Result<Publish, ValidationError> {
        Publish::validate(raw, &Limits::default(), &TopicPolicy::default())
    }

    fn to_user(data: &str) -> RawPublish<'_> {
        RawPublish {
            user_id: Some("alice"),
            event: "note",
            data,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_user_publish_with_default_ttl() {
        let p = validate(to_user(r#"{"a":1}"#)).unwrap();
        assert_eq!(p.target, Target::User(UserId::parse("u", "alice").unwrap()));
        assert_eq!(p.ttl, Limits::default().default_ttl);
        assert_eq!(p.idempotency_key, None);
    }

    #[test]
    fn refuses_bad_data() {
        assert!(matches!(
            validate(to_user("{")),
            Err(ValidationError::InvalidJson(_))
        ));
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert!(matches!(
            validate(to_user(&deep)),
            Err(ValidationError::TooDeep { depth: 65, .. })
        ));
        let ok = format!(
            r#"{{"s":"[[[[\\\"{{{{","a":{}{}}}"#,
            "[".repeat(63),
            "]".repeat(63)
        );
        assert!(validate(to_user(&ok)).is_ok(), "{ok}");
        let big = format!("\"{}\"", "x".repeat(64 * 1024));
        assert!(matches!(
            validate(to_user(&big)),
            Err(ValidationError::DataTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_missing_or_double_targets() {
        let none = RawPublish {
            event: "e",
            data: "1",
            ..Default::default()
        };
        assert_eq!(validate(none), Err(ValidationError::NoTarget));
        let both = RawPublish {
            topic: Some("room:x"),
            broadcast: true,
            ..to_user("1")
        };
        assert_eq!(validate(both), Err(ValidationError::NoTarget));
    }

    #[test]
    fn dedupes_users_and_bounds_the_list() {
        let users: Vec<String> = ["a", "b", "a"].map(String::from).into();
        let p = validate(RawPublish {
            user_id: None,
            users: Some(&users),
            ..to_user("1")
        })
        .unwrap();
        assert!(matches!(p.target, Target::Users(ref u) if u.len() == 2));
        let many: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
        assert!(matches!(
            validate(RawPublish {
                user_id: None,
                users: Some(&many),
                ..to_user("1")
            }),
            Err(ValidationError::TooManyUsers { count: 10_001, .. })
        ));
    }
}

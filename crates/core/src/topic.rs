//! Topic names and the per-namespace policy of docs/design.md §5.
//!
//! A topic is `namespace:rest`: the namespace is `[a-z0-9_-]+`, the rest is
//! non-empty printable text, the whole at most 255 bytes. Each namespace is
//! configured with who may subscribe, whether clients may publish, and how much
//! of its log is kept.

use std::{collections::BTreeMap, fmt, time::Duration};

use crate::{UserId, ValidationError};

/// Longest topic name in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// A syntactically valid topic name. Whether its namespace exists is the
/// [`TopicPolicy`]'s business.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    name: String,
    colon: usize,
}

impl Topic {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = |why| ValidationError::BadTopic {
            topic: raw.chars().take(64).collect(),
            why,
        };
        if raw.is_empty() {
            return Err(ValidationError::Empty { field: "topic" });
        }
        if raw.len() > MAX_TOPIC_BYTES {
            return Err(ValidationError::TooLong {
                field: "topic",
                len: raw.len(),
                max: MAX_TOPIC_BYTES,
            });
        }
        let colon = raw.find(':').ok_or_else(|| bad("no ':'"))?;
        let (namespace, rest) = (&raw[..colon], &raw[colon + 1..]);
        if namespace.is_empty() {
            return Err(bad("empty namespace"));
        }
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(bad("namespace must be [a-z0-9_-]"));
        }
        if rest.is_empty() {
            return Err(bad("empty name after ':'"));
        }
        if rest.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("name must be printable, without spaces"));
        }
        Ok(Self {
            name: raw.to_owned(),
            colon,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.name[..self.colon]
    }

    /// The part after `namespace:`.
    pub fn rest(&self) -> &str {
        &self.name[self.colon + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Who may subscribe to a namespace's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRule {
    /// Any authenticated user.
    AnyUser,
    /// `ns:{R}:…` only for users whose `custom:realm` claim is `R`.
    Realm,
    /// `ns:{sub}:…` only for the user `sub`.
    Owner,
}

/// The configuration of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub subscribe: SubscribeRule,
    pub client_publish: bool,
    /// Newest messages kept per topic.
    pub log_max_len: u32,
    /// Messages older than this are dropped from the log.
    pub log_max_age: Duration,
}

/// The `cognito:groups` group whose members may subscribe to any topic of
/// a configured namespace (support staff, the dev panel).
pub const ADMIN_GROUP: &str = "admin";

/// Who is asking to subscribe or publish: the parts of a verified token the
/// policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: &'a UserId,
    /// The `custom:realm` claim.
    pub realm: Option<&'a str>,
    /// In [`ADMIN_GROUP`]: realm and owner rules do not apply.
    pub admin: bool,
}

/// Why a subject may not use a topic; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

/// The configured namespaces. Topics outside them are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    namespaces: BTreeMap<String, NamespacePolicy>,
}

impl Default for TopicPolicy {
    /// The namespaces of docs/design.md §5.
    fn default() -> Self {
        const HOUR: Duration = Duration::from_secs(3600);
        let ns = |subscribe, client_publish, log_max_len, log_max_age| NamespacePolicy {
            subscribe,
            client_publish,
            log_max_len,
            log_max_age,
        };
        let mut policy = Self::empty();
        policy.set("fights", ns(SubscribeRule::AnyUser, false, 100, HOUR));
        policy.set("fight", ns(SubscribeRule::AnyUser, false, 100, 24 * HOUR));
        policy.set("room", ns(SubscribeRule::AnyUser, true, 50, HOUR));
        policy.set("realm", ns(SubscribeRule::Realm, false, 100, 24 * HOUR));
        policy.set("private", ns(SubscribeRule::Owner, false, 100, 24 * HOUR));
        policy
    }
}

impl TopicPolicy {
    /// No namespace at all: every topic is refused until one is [`set`](Self::set).
    pub fn empty() -> Self {
        Self {
            namespaces: BTreeMap::new(),
        }
    }

    /// Adds or replaces a namespace.
    pub fn set(&mut self, namespace: &str, policy: NamespacePolicy) {
        self.namespaces.insert(namespace.to_owned(), policy);
    }

    /// Parses `raw` and checks that its namespace is configured.
    pub fn topic(&self, raw: &str) -> Result<(Topic, &NamespacePolicy), ValidationError> {
        let topic = Topic::parse(raw)?;
        let policy = self.namespace(&topic)?;
        Ok((topic, policy))
    }

    /// The policy of a parsed topic's namespace.
    pub fn namespace(&self, topic: &Topic) -> Result<&NamespacePolicy, ValidationError> {
        self.namespaces
            .get(topic.namespace())
            .ok_or_else(|| ValidationError::UnknownNamespace {
                namespace: topic.namespace().to_owned(),
                known: self
                    .namespaces
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Whether `subject` may subscribe to `topic` (docs/design.md §5): any user, only
    /// users of the realm named after the namespace, or only the user named
    /// there; an admin, any of them. Unknown namespaces are refused.
    pub fn may_subscribe(&self, subject: Subject<'_>, topic: &Topic) -> Result<(), Forbidden> {
        let policy = self.namespace(topic).map_err(|_| {
            Forbidden(format!(
                "namespace {:?} is not open to clients",
                topic.namespace()
            ))
        })?;
        // The first segment after the namespace: `realm:{R}:…`, `private:{sub}:…`.
        let owner = topic.rest().split(':').next().unwrap_or_default();
        match policy.subscribe {
            _ if subject.admin => Ok(()),
            SubscribeRule::AnyUser => Ok(()),
            SubscribeRule::Realm if subject.realm == Some(owner) => Ok(()),
            SubscribeRule::Realm => Err(Forbidden(format!(
                "{topic} belongs to realm {owner:?}, not yours"
            ))),
            SubscribeRule::Owner if subject.user.as_str() == owner => Ok(()),
            SubscribeRule::Owner => Err(Forbidden(format!("{topic} belongs to another user"))),
        }
    }

    /// Whether `subject` may publish to `topic` from a client connection: the
    /// namespace must allow it and the subject must be allowed to subscribe.
    pub fn may_client_publish(&self, subject: Subject<'_>, topic: &Topic) -> Result<(), Forbidden> {
        self.may_subscribe(subject, topic)?;
        match self.namespace(topic) {
            Ok(policy) if policy.client_publish => Ok(()),
            _ => Err(Forbidden(format!(
                "clients may not publish to {:?} topics",
                topic.namespace()
            ))),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &NamespacePolicy)> {
        self.namespaces.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_and_rest() {
        let t = Topic::parse("fight:42:odds").unwrap();
        assert_eq!(t.namespace(), "fight");
        assert_eq!(t.rest(), "42:odds");
    }

    #[test]
    fn refuses_malformed_names() {
        for raw in [
            "",
            "nocolon",
            ":x",
            "room:",
            "Room:x",
            "ro om:x",
            "room:a b",
            "room:\u{7}",
        ] {
            assert!(Topic::parse(raw).is_err(), "{raw:?} accepted");
        }
        let long = format!("room:{}", "x".repeat(251));
        assert!(matches!(
            Topic::parse(&long),
            Err(ValidationError::TooLong { .. })
        ));
        assert!(Topic::parse(&format!("room:{}", "x".repeat(250))).is_ok());
    }

    #[test]
    fn unknown_namespace_names_the_known_ones() {
        let err = TopicPolicy::default().topic("chat:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown namespace \"chat\"; configured: fight, fights, private, realm, room"
        );
    }

    #[test]
    fn subscribe_and_publish_rules_follow_the_design() {
        let policy = TopicPolicy::default();
        let alice = UserId::parse("u", "alice").unwrap();
        let in_eu = Subject {
            user: &alice,
            realm: Some("eu"),
            admin: false,
        };
        let nowhere = Subject {
            user: &alice,
            realm: None,
            admin: false,
        };
        let admin = Subject {
            user: &alice,
            realm: None,
            admin: true,
        };
        let t = |raw: &str| Topic::parse(raw).unwrap();
        let sub = |who, raw: &str| policy.may_subscribe(who, &t(raw)).is_ok();
        let publish = |who, raw: &str| policy.may_client_publish(who, &t(raw)).is_ok();
        assert!(sub(nowhere, "fights:live"));
        assert!(sub(in_eu, "realm:eu:odds"));
        assert!(!sub(nowhere, "realm:eu:odds"));
        assert!(!sub(in_eu, "realm:us:odds"));
        assert!(sub(nowhere, "private:alice:inbox"));
        assert!(sub(nowhere, "private:alice"));
        assert!(!sub(nowhere, "private:bob:inbox"));
        assert!(!sub(nowhere, "chat:1"));
        assert!(publish(nowhere, "room:lobby"));
        assert!(!publish(nowhere, "fights:live"));
        assert!(!publish(in_eu, "realm:eu:odds"));
        let err = policy
            .may_subscribe(nowhere, &t("private:bob:x"))
            .unwrap_err();
        assert_eq!(err.to_string(), "private:bob:x belongs to another user");
        // An admin subscribes anywhere in the configured namespaces, and
        // still publishes only where clients may.
        assert!(sub(admin, "private:bob:inbox"));
        assert!(sub(admin, "realm:us:odds"));
        assert!(!sub(admin, "chat:1"));
        assert!(!publish(admin, "fights:live"));
        assert!(publish(admin, "room:lobby"));
    }

    #[test]
    fn defaults_follow_the_design() {
        let policy = TopicPolicy::default();
        let (_, room) = policy.topic("room:lobby").unwrap();
        assert!(room.client_publish);
        assert_eq!(room.log_max_len, 50);
        let (_, private) = policy.topic("private:u1:inbox").unwrap();
        assert_eq!(private.subscribe, SubscribeRule::Owner);
    }
}

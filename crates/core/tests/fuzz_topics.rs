//! Property tests of topic names and the topic policy (stable-Rust stand-in
//! for cargo-fuzz): any text parses or is refused without panicking, a
//! parsed topic is exactly its input split at the first ':', and the policy
//! never lets a non-admin into another user's `private:` or another
//! realm's `realm:` topic, nor into a namespace that is not configured.
//!
//! More cases on demand: `PROPTEST_CASES=200000 cargo nextest run -E 'binary(/^fuzz_/)'`.

use notify_core::{Subject, Topic, TopicPolicy, UserId, topic::MAX_TOPIC_BYTES};
use proptest::prelude::*;

/// Text that looks like topics more often than chance would.
fn topicish() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,300}",
        "[a-z0-9_-]{0,12}:[^\\s]{0,40}",
        "(fights|fight|room|realm|private|other):[a-zA-Z0-9:_-]{0,30}",
        // Multi-byte text around the colon.
        "[é漢🙂a-z]{0,6}:[é漢🙂a-z:]{0,10}",
    ]
}

/// A connected user's id: the verifier refuses subs with ':' (see
/// `notify_auth::verify`), so `private:{sub}:…` has exactly one owner.
fn user() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_@.+-]{1,36}"
}

proptest! {
    #[test]
    fn a_parsed_topic_is_its_input_split_at_the_first_colon(raw in topicish()) {
        if let Ok(topic) = Topic::parse(&raw) {
            prop_assert_eq!(topic.as_str(), raw.as_str());
            prop_assert!(raw.len() <= MAX_TOPIC_BYTES);
            let (namespace, rest) = raw.split_once(':').unwrap();
            prop_assert_eq!(topic.namespace(), namespace);
            prop_assert_eq!(topic.rest(), rest);
            prop_assert!(!namespace.is_empty() && !rest.is_empty());
            prop_assert!(namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
            prop_assert!(!rest.chars().any(|c| c.is_control() || c.is_whitespace()));
        }
    }

    #[test]
    fn nobody_but_an_admin_reads_another_users_or_realms_topics(
        raw in topicish(),
        me in user(),
        realm in prop::option::of("[a-z]{1,6}"),
        admin in any::<bool>(),
    ) {
        let policy = TopicPolicy::default();
        let Ok(topic) = Topic::parse(&raw) else { return Ok(()) };
        let user = UserId::parse("user_id", &me).unwrap();
        let subject = Subject { user: &user, realm: realm.as_deref(), admin };
        let allowed = policy.may_subscribe(subject, &topic).is_ok();
        let owner = topic.rest().split(':').next().unwrap_or_default();
        let configured = policy.namespace(&topic).is_ok();
        if !configured {
            prop_assert!(!allowed, "unconfigured namespace let in: {}", raw);
        } else if admin {
            prop_assert!(allowed, "an admin is refused {}", raw);
        } else {
            match topic.namespace() {
                "private" => prop_assert_eq!(allowed, owner == me, "{}", raw),
                "realm" => prop_assert_eq!(allowed, realm.as_deref() == Some(owner), "{}", raw),
                _ => prop_assert!(allowed, "{}", raw),
            }
        }
        // Publishing from a client never goes beyond subscribing.
        if policy.may_client_publish(subject, &topic).is_ok() {
            prop_assert!(allowed);
            prop_assert_eq!(topic.namespace(), "room");
        }
    }

    #[test]
    fn another_users_private_topic_is_always_refused(me in user(), other in user(), rest in "[a-z0-9:]{0,12}") {
        prop_assume!(me != other);
        let policy = TopicPolicy::default();
        let topic = Topic::parse(&format!("private:{other}{}{rest}", if rest.is_empty() { "" } else { ":" })).unwrap();
        let user = UserId::parse("user_id", &me).unwrap();
        let me_subject = Subject { user: &user, realm: None, admin: false };
        let refused = policy.may_subscribe(me_subject, &topic).is_err();
        prop_assert!(refused);
    }
}

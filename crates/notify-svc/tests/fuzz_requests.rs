//! Property tests of the path a gRPC request takes before anything is
//! stored (stable-Rust stand-in for cargo-fuzz): arbitrary bytes decoded as
//! `PublishRequest`, `PublishBatchRequest` or `EmitFightEventRequest`, and
//! structured requests with hostile fields (control characters, huge or
//! deep `data`, unknown enum numbers), reach validation and the fight
//! mapping without a panic; what validation accepts keeps every limit, and
//! every fight message it produces is valid JSON for a real recipient.
//!
//! More cases on demand: `PROPTEST_CASES=100000 cargo nextest run -E 'binary(/^fuzz_/)'`.

use notify_core::{Limits, Publish, Target, TopicPolicy};
use notify_proto::{
    convert::raw_publish,
    v1::{self as pb, publish_request},
};
use notify_svc::fight;
use proptest::prelude::*;
use prost::Message;

fn check(req: &pb::PublishRequest) -> Result<Publish, notify_core::ValidationError> {
    Publish::validate(
        raw_publish(req),
        &Limits::default(),
        &TopicPolicy::default(),
    )
}

/// Text with the characters that break naive code: controls, NUL,
/// surrogate-free multi-byte, JSON punctuation.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let re = |pattern: String| proptest::string::string_regex(&pattern).expect("a valid pattern");
    prop_oneof![
        re(format!(".{{0,{max}}}")),
        re(format!(
            "[\\x00-\\x1f{{}}\\[\\]\":,\\\\a-z0-9é🙂]{{0,{max}}}"
        )),
    ]
}

fn data() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_text(64),
        (1usize..200).prop_map(|depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth))),
        (0usize..70_000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        Just("{\"text\":\"hi\"}".to_string()),
    ]
}

fn target() -> impl Strategy<Value = Option<publish_request::Target>> {
    prop_oneof![
        Just(None),
        hostile_text(300).prop_map(|u| Some(publish_request::Target::UserId(u))),
        prop::collection::vec(hostile_text(20), 0..40).prop_map(|ids| Some(
            publish_request::Target::Users(pb::UserList { user_ids: ids })
        )),
        hostile_text(40).prop_map(|t| Some(publish_request::Target::Topic(t))),
        "(room|fights|private|realm|nope):[a-z0-9:]{1,12}"
            .prop_map(|t| Some(publish_request::Target::Topic(t))),
        any::<bool>().prop_map(|b| Some(publish_request::Target::Broadcast(b))),
    ]
}

fn request() -> impl Strategy<Value = pb::PublishRequest> {
    (
        target(),
        hostile_text(200),
        data(),
        hostile_text(300),
        any::<u32>(),
        (any::<i32>(), any::<u32>(), hostile_text(300)),
    )
        .prop_map(
            |(target, event, data, idempotency_key, ttl_seconds, (when, after, title))| {
                pb::PublishRequest {
                    target,
                    event,
                    data,
                    idempotency_key,
                    ttl_seconds,
                    // Hostile push options too: any enum value, any wait, any title.
                    push: (when % 3 != 0).then(|| pb::PushOptions {
                        when: when % 6,
                        after_seconds: after,
                        title,
                        body: String::new(),
                    }),
                }
            },
        )
}

fn fight() -> impl Strategy<Value = Option<pb::Fight>> {
    prop::option::weighted(
        0.9,
        (
            hostile_text(40),
            hostile_text(40),
            hostile_text(40),
            any::<i64>(),
            hostile_text(8),
            any::<i32>(),
            any::<i64>(),
        )
            .prop_map(
                |(fight_id, creator_id, acceptor_id, stake, currency, status, t)| pb::Fight {
                    fight_id,
                    creator_id,
                    acceptor_id,
                    stake,
                    currency,
                    status,
                    accept_deadline_ms: t,
                    created_at_ms: t,
                    updated_at_ms: t,
                },
            ),
    )
}

fn fight_event() -> impl Strategy<Value = pb::FightEvent> {
    use pb::fight_event::Kind;
    let kind = prop_oneof![
        fight().prop_map(|fight| Kind::Created(pb::FightCreated { fight })),
        fight().prop_map(|fight| Kind::Accepted(pb::FightAccepted { fight })),
        (fight(), hostile_text(40), any::<i64>()).prop_map(|(fight, winner_id, payout)| {
            Kind::Completed(pb::FightCompleted {
                fight,
                winner_id,
                payout,
            })
        }),
        (fight(), hostile_text(40))
            .prop_map(|(fight, reason)| Kind::Cancelled(pb::FightCancelled { fight, reason })),
        fight().prop_map(|fight| Kind::Expired(pb::FightExpired { fight })),
        (fight(), any::<i32>()).prop_map(|(fight, previous_status)| Kind::Updated(
            pb::FightUpdated {
                fight,
                previous_status
            }
        )),
    ];
    prop::option::weighted(0.95, kind).prop_map(|kind| pb::FightEvent { kind })
}

proptest! {
    #[test]
    fn arbitrary_bytes_decode_or_are_refused_and_validate_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(req) = pb::PublishRequest::decode(bytes.as_slice()) {
            let _ = check(&req);
        }
        if let Ok(batch) = pb::PublishBatchRequest::decode(bytes.as_slice()) {
            for item in &batch.requests {
                let _ = check(item);
            }
        }
        if let Ok(req) = pb::EmitFightEventRequest::decode(bytes.as_slice())
            && let Some(event) = &req.event
        {
            let _ = fight::messages(event);
        }
    }

    #[test]
    fn what_validation_accepts_keeps_every_limit(req in request()) {
        let limits = Limits::default();
        // Encoded and decoded as the server sees it.
        let req = pb::PublishRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        if let Ok(publish) = check(&req) {
            prop_assert!(publish.data.len() <= limits.max_data_bytes);
            prop_assert!(publish.event.len() <= limits.max_event_bytes);
            prop_assert!(serde_json::from_str::<serde_json::Value>(&publish.data).is_ok());
            prop_assert!(publish.ttl <= limits.max_ttl);
            prop_assert!(!publish.event.chars().any(char::is_control));
            match &publish.target {
                Target::User(u) => prop_assert!(!u.as_str().is_empty() && !u.as_str().chars().any(char::is_control)),
                Target::Users(us) => prop_assert!(!us.is_empty()),
                Target::Topic(t) => prop_assert!(TopicPolicy::default().namespace(t).is_ok()),
                Target::Broadcast => prop_assert_eq!(req.target, Some(publish_request::Target::Broadcast(true))),
            }
        }
    }

    #[test]
    fn fight_events_map_to_valid_messages_or_say_why(event in fight_event()) {
        let event = pb::FightEvent::decode(event.encode_to_vec().as_slice()).unwrap();
        match fight::messages(&event) {
            Ok(messages) => {
                prop_assert!(!messages.is_empty());
                for m in &messages {
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&m.data).is_ok(), "{}", m.data);
                    prop_assert!(m.event.starts_with("fight_"));
                }
            }
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }
}

//! Property tests of the client frame parser (cargo-fuzz needs nightly;
//! these run on stable in every `scripts/test`): arbitrary text, arbitrary
//! JSON (deep nesting included) and near-valid frames never panic, every
//! refusal is an `error` frame that serialises to JSON and echoes a
//! readable id, and well-formed frames parse to what they say.
//!
//! More cases on demand: `PROPTEST_CASES=200000 cargo nextest run -E 'binary(/^fuzz_/)'`.

use notify_bridge::protocol::{ACTIONS as KNOWN, Action, ErrorCode, FrameId, ServerFrame, parse};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, nested up to `depth` levels.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Field names a frame may carry, and some it may not.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("action".to_string()),
        Just("topic".to_string()),
        Just("since".to_string()),
        Just("id".to_string()),
        Just("seq".to_string()),
        Just("data".to_string()),
        Just("event".to_string()),
        Just("token".to_string()),
        Just("as".to_string()),
        Just("seqs".to_string()),
        Just("up_to".to_string()),
        Just("before".to_string()),
        Just("limit".to_string()),
        Just("events".to_string()),
        Just("namespaces".to_string()),
        "[a-z]{1,6}",
    ]
}

fn action_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(KNOWN.to_vec())
        .prop_map(Value::from),
        1 => json_value(2),
    ]
}

/// Objects shaped like frames: an action and a handful of fields whose
/// values are anything.
fn near_frame() -> impl Strategy<Value = Value> {
    (
        action_name(),
        prop::collection::vec((field(), json_value(3)), 0..5),
    )
        .prop_map(|(action, fields)| {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
            object.insert("action".into(), action);
            Value::Object(object)
        })
}

/// What the bridge would send back for a refusal must be JSON.
fn refusal_is_an_error_frame(text: &str) {
    if let Err(e) = parse(text) {
        let frame = ServerFrame::Error {
            code: e.code,
            message: &e.message,
            id: e.id.as_ref(),
            status: None,
        };
        let sent: Value = serde_json::from_str(&frame.to_text()).expect("error frames are JSON");
        assert_eq!(sent["type"], "error");
        assert!(!e.message.is_empty());
    }
}

proptest! {
    #[test]
    fn any_text_is_answered_without_panicking(text in ".{0,256}") {
        refusal_is_an_error_frame(&text);
    }

    #[test]
    fn any_json_is_answered_without_panicking(value in json_value(6)) {
        refusal_is_an_error_frame(&value.to_string());
    }

    #[test]
    fn near_frames_parse_or_say_why(frame in near_frame()) {
        let text = frame.to_string();
        refusal_is_an_error_frame(&text);
        match parse(&text) {
            Ok(action) => {
                // Only the known actions parse, with the fields they name.
                let name = frame["action"].as_str().expect("a parsed frame names its action");
                match action {
                    Action::Subscribe { topic, .. } | Action::Unsubscribe { topic, .. } => {
                        prop_assert!(name == "subscribe" || name == "unsubscribe");
                        prop_assert_eq!(Some(topic.as_str()), frame["topic"].as_str());
                    }
                    Action::Ack { seq, .. } => prop_assert_eq!(Some(seq), frame["seq"].as_u64()),
                    Action::Publish { data, .. } => prop_assert_eq!(&data, &frame["data"]),
                    Action::Refresh { token, .. } => prop_assert_eq!(Some(token.as_str()), frame["token"].as_str()),
                    Action::Mark { kind, seqs, up_to, .. } => {
                        prop_assert_eq!(Some(kind.as_str()), frame["as"].as_str());
                        prop_assert_eq!(up_to, frame["up_to"].as_u64());
                        prop_assert_eq!(seqs.is_some(), frame.get("seqs").is_some_and(|s| !s.is_null()));
                    }
                    Action::History { before, limit, .. } => {
                        prop_assert_eq!(before, frame["before"].as_u64());
                        prop_assert_eq!(limit.map(u64::from), frame["limit"].as_u64());
                    }
                    Action::Mute { events, namespaces, .. } | Action::Unmute { events, namespaces, .. } => {
                        prop_assert!(name == "mute" || name == "unmute");
                        prop_assert_eq!(events.len(), frame["events"].as_array().map_or(0, Vec::len));
                        prop_assert_eq!(namespaces.len(), frame["namespaces"].as_array().map_or(0, Vec::len));
                    }
                    Action::UnregisterPush { device_id, .. } => {
                        prop_assert_eq!(Some(device_id.as_str()), frame["device_id"].as_str());
                    }
                    Action::Ping { .. } | Action::ExtendTtl { .. } | Action::Preferences { .. } | Action::Counts { .. }
                    | Action::RegisterPush { .. } | Action::PushDevices { .. } => {}
                }
            }
            Err(e) => {
                let known = frame["action"].as_str().is_some_and(|a| KNOWN.contains(&a));
                let expected = if known { ErrorCode::BadRequest } else { ErrorCode::UnknownAction };
                prop_assert_eq!(e.code, expected, "{}", text);
                // A readable id is echoed so the client can match the answer.
                if let Some(id) = frame.get("id").and_then(|id| serde_json::from_value::<FrameId>(id.clone()).ok()) {
                    prop_assert_eq!(e.id, Some(id));
                }
            }
        }
    }

    #[test]
    fn well_formed_frames_parse_to_what_they_say(
        topic in "[a-z]{1,8}:[a-z0-9-]{1,16}",
        seq in any::<u64>(),
        id in prop_oneof![any::<u64>().prop_map(FrameId::Number), "[a-z0-9]{1,8}".prop_map(FrameId::Text)],
        data in json_value(3),
    ) {
        let id_json = serde_json::to_value(&id).unwrap();
        match parse(&json!({"action": "subscribe", "topic": topic, "id": id_json}).to_string()).unwrap() {
            Action::Subscribe { topic: t, id: Some(i), since: None } => {
                prop_assert_eq!(t, topic.clone());
                prop_assert_eq!(i, id.clone());
            }
            other => prop_assert!(false, "{:?}", other),
        }
        match parse(&json!({"action": "ack", "seq": seq}).to_string()).unwrap() {
            Action::Ack { seq: s, .. } => prop_assert_eq!(s, seq),
            other => prop_assert!(false, "{:?}", other),
        }
        match parse(&json!({"action": "publish", "topic": topic, "data": data}).to_string()).unwrap() {
            Action::Publish { data: d, .. } => prop_assert_eq!(d, data),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn nesting_past_the_json_limit_is_refused_not_overflowed() {
    // serde_json stops at 128 levels; 100,000 would overflow a naive parser.
    for depth in [127, 129, 100_000] {
        let text = format!(
            r#"{{"action":"publish","topic":"room:a","data":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        match parse(&text) {
            Ok(_) => assert!(depth < 128, "depth {depth} parsed"),
            Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "depth {depth}"),
        }
    }
}

#[test]
fn what_these_properties_found_stays_fixed() {
    // An unknown action with an unreadable id is still unknown_action, not
    // a generic "frames are JSON objects" refusal.
    let e = parse(r#"{"id":[],"action":null}"#).unwrap_err();
    assert_eq!((e.code, e.id), (ErrorCode::UnknownAction, None));
    // A float keeps its digits on the way through (serde_json's
    // float_roundtrip): it used to arrive as ...904e-174.
    let Action::Publish { data, .. } =
        parse(r#"{"action":"publish","topic":"room:a","data":{"x":7.627042417257905e-174}}"#)
            .unwrap()
    else {
        panic!("a publish frame");
    };
    assert_eq!(data.to_string(), r#"{"x":7.627042417257905e-174}"#);
}

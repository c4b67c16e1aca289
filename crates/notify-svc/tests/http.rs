//! The HTTP/JSON API as curl or a webhook calls it: over HTTP/1.1 on the
//! gRPC port, every operation against a real notify-svc (real Postgres),
//! every kind of bad input, the callers' tokens and rights, and the
//! OpenAPI document it serves — checked by an independent validator
//! (Python's openapi-spec-validator) and against what the routes answer.

mod common;

use common::Svc;
use serde_json::{Value, json};
use test_support::{TestDb, http_call};

/// Publishes only.
const SHOP: &str = "shop-token-of-16+chars";
/// Admin and publish.
const OPS: &str = "ops-token-of-16+chars!";

async fn start() -> Svc {
    let db = TestDb::create().await;
    let tokens = format!("shop={SHOP},ops:admin+publish={OPS}");
    let cfg = common::config(&db.url, &["--api-tokens", &tokens]);
    Svc::start_config(db, cfg).await
}

/// `method path` with `token` (if any) and `body`: (status, JSON answer).
async fn call(
    svc: &Svc,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    let body = body.map(|b| b.to_string());
    let (status, text) = http_call(
        &svc.grpc.to_string(),
        method,
        path,
        &headers,
        body.as_deref(),
    )
    .await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

async fn ops(svc: &Svc, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(svc, method, path, Some(OPS), body).await
}

#[tokio::test]
async fn every_operation_answers_as_its_grpc_twin() {
    let svc = start().await;
    // Publish to one user; the same key again is the same message.
    let one = json!({"user_id": "ann", "event": "hello", "data": {"text": "hi"}, "idempotency_key": "k1"});
    let (status, first) = ops(&svc, "POST", "/v1/publish", Some(one.clone())).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["seq"].as_u64(), first["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let (_, again) = ops(&svc, "POST", "/v1/publish", Some(one)).await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);
    // A user list, a topic.
    let (_, list) = ops(
        &svc,
        "POST",
        "/v1/publish",
        Some(json!({"users": ["ann", "bob"], "event": "e", "data": 1})),
    )
    .await;
    assert_eq!(
        list["inbox_seqs"],
        json!([{"user_id": "ann", "seq": 2}, {"user_id": "bob", "seq": 1}])
    );
    let (_, topic) = ops(
        &svc,
        "POST",
        "/v1/publish",
        Some(json!({"topic": "room:lobby", "event": "e", "data": "x"})),
    )
    .await;
    assert_eq!(topic["seq"], 1);
    // One connection that is not there: 404, as gRPC's NOT_FOUND.
    let gone =
        json!({"connection_id": "0193a0c4-5b2e-7000-8000-000000000000", "event": "e", "data": 1});
    let (status, answer) = ops(&svc, "POST", "/v1/publish", Some(gone)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("NOT_FOUND")),
        "{answer}"
    );

    // A batch: each item on its own, in order.
    let batch = json!({"requests": [
        {"user_id": "cy", "event": "e", "data": 1},
        {"user_id": "cy", "topic": "room:x", "event": "e", "data": 1},
        {"topic": "nope", "event": "e", "data": 1},
        {"user_id": "cy", "event": "e", "data": 2},
    ]});
    let (status, results) = ops(&svc, "POST", "/v1/publish-batch", Some(batch)).await;
    assert_eq!(status, 200, "{results}");
    let results = results["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"]["seq"], 1);
    assert_eq!(results[1]["error"]["error"], "INVALID_ARGUMENT");
    assert!(
        results[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exactly one target")
    );
    assert_eq!(results[2]["error"]["error"], "INVALID_ARGUMENT");
    assert_eq!(results[3]["ok"]["seq"], 2);

    // Server-side subscriptions, presence, disconnect.
    let sub = json!({"user_id": "ann", "topic": "room:lobby"});
    let (_, created) = ops(&svc, "POST", "/v1/subscribe", Some(sub.clone())).await;
    assert_eq!(
        (created["created"].as_bool(), created["topic_seq"].as_u64()),
        (Some(true), Some(1))
    );
    let (_, present) = ops(&svc, "GET", "/v1/presence?topic=room:lobby", None).await;
    assert_eq!(present["subscribers"], 1);
    let (_, removed) = ops(&svc, "POST", "/v1/unsubscribe", Some(sub)).await;
    assert_eq!(removed["removed"], true);
    let (_, present) = ops(&svc, "GET", "/v1/presence?user_id=ann", None).await;
    assert_eq!(present["connections"], json!([]));
    let (_, kicked) = ops(
        &svc,
        "POST",
        "/v1/disconnect",
        Some(json!({"user_id": "ann", "reason": "bye"})),
    )
    .await;
    assert_eq!(kicked["disconnected"], 0);

    // History: data comes back as JSON, paged.
    let (_, page) = ops(&svc, "GET", "/v1/history?user_id=ann&since=0&limit=1", None).await;
    assert_eq!(page["messages"][0]["data"], json!({"text": "hi"}));
    assert_eq!(
        (page["has_more"].as_bool(), page["next_since"].as_u64()),
        (Some(true), Some(1))
    );
    let (_, rest) = ops(&svc, "GET", "/v1/history?user_id=ann&since=1", None).await;
    assert_eq!(rest["messages"][0]["seq"], 2);
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_status_and_the_rule_it_broke() {
    let svc = start().await;
    let addr = svc.grpc.to_string();
    let bearer = format!("Bearer {OPS}");
    let auth = [("authorization", bearer.as_str())];
    let post = |body: &'static str| {
        let addr = addr.clone();
        async move {
            let (status, text) = http_call(&addr, "POST", "/v1/publish", &auth, Some(body)).await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
            )
        }
    };
    for (body, want, says) in [
        ("{not json", 400, "failed to parse the request body as json"),
        (
            r#"{"user":"ann","event":"e","data":1}"#,
            400,
            "unknown field `user`",
        ),
        (r#"{"user_id":7,"event":"e","data":1}"#, 400, "invalid type"),
        (
            r#"{"user_id":"ann","data":1}"#,
            400,
            "missing field `event`",
        ),
        (r#"{"event":"e","data":1}"#, 400, "exactly one target"),
        (r#"{"topic":"nope","event":"e","data":1}"#, 400, "nope"),
        (
            r#"{"user_id":"ann","event":"e","data":1,"ttl_seconds":99999999}"#,
            400,
            "ttl",
        ),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert_eq!(answer["error"], "INVALID_ARGUMENT", "{body}: {answer}");
        let message = answer["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains(&says.to_lowercase()), "{body}: {message}");
    }
    // Data over the limit (64 KiB): the API's own rule.
    let big = json!({"user_id": "ann", "event": "e", "data": "x".repeat(70 * 1024)});
    let (status, answer) = ops(&svc, "POST", "/v1/publish", Some(big)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{answer}"
    );
    // A body over the request limit (16 MiB, as gRPC) is refused unparsed.
    let huge = json!({"user_id": "ann", "event": "e", "data": "x".repeat(17 << 20)});
    let (status, _) = ops(&svc, "POST", "/v1/publish", Some(huge)).await;
    assert_eq!(status, 413);
    // More than 1,000 items in a batch.
    let many = json!({"requests": vec![json!({"user_id": "ann", "event": "e", "data": 1}); 1001]});
    let (status, answer) = ops(&svc, "POST", "/v1/publish-batch", Some(many)).await;
    assert_eq!(status, 400, "{answer}");
    // Queries: two targets, none, a number that is not one.
    for path in [
        "/v1/presence?user_id=a&topic=room:x",
        "/v1/presence",
        "/v1/history?user_id=a&since=x",
    ] {
        let (status, answer) = ops(&svc, "GET", path, None).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{path}: {answer}"
        );
    }
    let (status, _) = ops(&svc, "POST", "/v1/disconnect", Some(json!({"reason": "x"}))).await;
    assert_eq!(status, 400);
    svc.stop().await;
}

#[tokio::test]
async fn callers_need_a_token_with_the_right() {
    let svc = start().await;
    let note = || Some(json!({"user_id": "ann", "event": "e", "data": 1}));
    let (status, answer) = call(&svc, "POST", "/v1/publish", None, note()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{answer}"
    );
    let (status, _) = call(
        &svc,
        "POST",
        "/v1/publish",
        Some("not-a-known-token!!"),
        note(),
    )
    .await;
    assert_eq!(status, 401);
    // A producer's token publishes; reading someone's inbox needs admin.
    let (status, _) = call(&svc, "POST", "/v1/publish", Some(SHOP), note()).await;
    assert_eq!(status, 200);
    let (status, answer) = call(&svc, "GET", "/v1/history?user_id=ann", Some(SHOP), None).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("notify/admin"),
        "{answer}"
    );
    let (status, _) = call(&svc, "GET", "/v1/history?user_id=ann", Some(OPS), None).await;
    assert_eq!(status, 200);
    // The document is public: it holds no data.
    let (status, _) = call(&svc, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    svc.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_exactly_what_the_routes_answer() {
    let svc = start().await;
    let (status, doc) = call(&svc, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    // An independent validator: OpenAPI 3.1 as the spec defines it.
    let python = std::env::var("NOTIFY_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/notify/moto-venv/bin/python")
    });
    let dir = test_support::TestDir::create("openapi");
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let checked = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e}; scripts/test installs openapi-spec-validator into that venv (or set NOTIFY_PYTHON)")
        });
    assert!(
        checked.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Every documented operation answers, with a documented status, even to
    // an empty call; and these are all the routes there are.
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, ops_of) in paths {
        for (method, op) in ops_of.as_object().unwrap() {
            listed.push(format!("{} {path}", method.to_uppercase()));
            let body = (method == "post").then(|| json!({}));
            let (status, answer) = ops(&svc, &method.to_uppercase(), path, body).await;
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status} ({answer}), documented: {:?}",
                documented.keys().collect::<Vec<_>>()
            );
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        [
            "GET /v1/devices",
            "GET /v1/history",
            "GET /v1/inbox",
            "GET /v1/inbox/counts",
            "GET /v1/preferences",
            "GET /v1/presence",
            "POST /v1/devices",
            "POST /v1/devices/remove",
            "POST /v1/disconnect",
            "POST /v1/inbox/mark",
            "POST /v1/messages/retract",
            "POST /v1/messages/update",
            "POST /v1/preferences",
            "POST /v1/publish",
            "POST /v1/publish-batch",
            "POST /v1/subscribe",
            "POST /v1/unsubscribe",
        ]
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_database_outage_is_503_and_a_retry_with_the_same_key_stores_once() {
    use test_support::{Relay, postgres_addr, via};
    let db = TestDb::create().await;
    let relay = Relay::start(postgres_addr(&db.url)).await;
    let tokens = format!("ops:admin+publish={OPS}");
    let cfg = common::config(
        &via(&db.url, relay.addr),
        &["--api-tokens", &tokens, "--db-timeout-ms", "1500"],
    );
    let svc = Svc::start_config(db, cfg).await;
    let note = json!({"user_id": "jo", "event": "e", "data": 1, "idempotency_key": "retry-me"});
    relay.cut();
    let (status, answer) = ops(&svc, "POST", "/v1/publish", Some(note.clone())).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("retry"),
        "{answer}"
    );
    relay.restore();
    let stored = test_support::eventually(
        "the retry commits",
        std::time::Duration::from_secs(20),
        || {
            let (svc, note) = (&svc, note.clone());
            async move {
                let (status, answer) = ops(svc, "POST", "/v1/publish", Some(note)).await;
                (status == 200).then_some(answer)
            }
        },
    )
    .await;
    assert_eq!(
        stored["seq"], 1,
        "the cut attempt stored nothing, or is this one"
    );
    let (_, page) = ops(&svc, "GET", "/v1/history?user_id=jo", None).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "once");
    svc.stop().await;
}

#[tokio::test]
async fn the_inbox_side_answers_as_its_grpc_twins() {
    let svc = start().await;
    let sent = |n: u64| json!({"user_id": "hal", "event": "note", "data": {"n": n}});
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (status, answer) = ops(&svc, "POST", "/v1/publish", Some(sent(n))).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["message_id"].as_str().unwrap().to_owned());
    }
    let mark = json!({"user_id": "hal", "as": "read", "seqs": [1, 9]});
    let (status, marked) = ops(&svc, "POST", "/v1/inbox/mark", Some(mark)).await;
    assert_eq!(status, 200, "{marked}");
    assert_eq!(
        (marked["changed"].clone(), marked["missing"].clone()),
        (json!(1), json!([9]))
    );
    assert_eq!(marked["counts"], json!({"unseen": 2, "unread": 2}));
    let (status, page) = ops(&svc, "GET", "/v1/inbox?user_id=hal&limit=2", None).await;
    assert_eq!(status, 200, "{page}");
    let seqs: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, page["next_before"].clone()), (vec![3, 2], json!(2)));
    assert_eq!(page["items"][0]["data"], json!({"n": 3}));
    let (status, unread) = ops(
        &svc,
        "GET",
        "/v1/inbox?user_id=hal&unread_only=true&show=all&events=note",
        None,
    )
    .await;
    assert_eq!(
        (status, unread["items"].as_array().unwrap().len()),
        (200, 2)
    );

    let change = json!({"user_id": "hal", "mute": {"events": ["promo"], "namespaces": ["room"]}});
    let (status, prefs) = ops(&svc, "POST", "/v1/preferences", Some(change)).await;
    assert_eq!(status, 200, "{prefs}");
    let (_, now) = ops(&svc, "GET", "/v1/preferences?user_id=hal", None).await;
    assert_eq!(
        now["mutes"],
        json!({"events": ["promo"], "namespaces": ["room"]})
    );

    let update = json!({"message_id": ids[2], "event": "note_edited", "data": {"n": 33}});
    let (status, updated) = ops(&svc, "POST", "/v1/messages/update", Some(update)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["inboxes"], json!([{"user_id": "hal", "seq": 3}]));
    let retract = json!({"message_id": ids[1]});
    let (status, _) = ops(&svc, "POST", "/v1/messages/retract", Some(retract)).await;
    assert_eq!(status, 200);
    let (_, page) = ops(&svc, "GET", "/v1/inbox?user_id=hal", None).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the retracted one is gone: {page}");
    assert_eq!(
        (items[0]["event"].clone(), items[0]["data"].clone()),
        (json!("note_edited"), json!({"n": 33}))
    );
    assert_eq!(page["counts"], json!({"unseen": 1, "unread": 1}));
    let (status, split) = ops(&svc, "GET", "/v1/inbox/counts?user_id=hal", None).await;
    assert_eq!(status, 200, "{split}");
    assert_eq!(
        split,
        json!({"unseen": 1, "unread": 1,
               "events": [{"event": "note_edited", "unseen": 1, "unread": 1}]})
    );

    // Push devices: register, list, remove.
    let phone = json!({"user_id": "hal", "fcm": {"token": "fcm-hal"}});
    let (status, registered) = ops(&svc, "POST", "/v1/devices", Some(phone)).await;
    assert_eq!(status, 200, "{registered}");
    let device_id = registered["device"]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(registered["device"]["fcm"]["token"], "fcm-hal");
    let (_, listed) = ops(&svc, "GET", "/v1/devices?user_id=hal", None).await;
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
    let remove = json!({"user_id": "hal", "device_id": device_id});
    let (status, removed) = ops(&svc, "POST", "/v1/devices/remove", Some(remove)).await;
    assert_eq!((status, removed), (200, json!({"removed": true})));

    // Bad input: 400 naming the rule; an unknown message 404.
    let bad = [
        (
            "POST",
            "/v1/inbox/mark",
            Some(json!({"user_id": "hal", "as": "reed", "seqs": [1]})),
        ),
        (
            "POST",
            "/v1/inbox/mark",
            Some(json!({"user_id": "hal", "as": "read"})),
        ),
        ("GET", "/v1/inbox?user_id=hal&limit=1000", None),
        ("GET", "/v1/inbox?user_id=hal&show=sideways", None),
        ("GET", "/v1/inbox/counts?user_id=", None),
        (
            "POST",
            "/v1/devices",
            Some(
                json!({"user_id": "hal", "fcm": {"token": "a"}, "apns": {"token": "b", "topic": "t"}}),
            ),
        ),
        (
            "POST",
            "/v1/devices",
            Some(json!({"user_id": "hal", "apns": {"token": "zz", "topic": "t"}})),
        ),
        (
            "POST",
            "/v1/preferences",
            Some(json!({"user_id": "hal", "mute": {"namespaces": ["nowhere"]}})),
        ),
        (
            "POST",
            "/v1/messages/update",
            Some(json!({"message_id": "x", "data": {}})),
        ),
    ];
    for (method, path, body) in bad {
        let (status, answer) = ops(&svc, method, path, body).await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "INVALID_ARGUMENT");
    }
    let unknown = json!({"message_id": "01900000-0000-7000-8000-000000000000", "data": {}});
    let (status, _) = ops(&svc, "POST", "/v1/messages/update", Some(unknown)).await;
    assert_eq!(status, 404);
    svc.stop().await;
}

//! Push to users who are away, end to end (docs/design.md §4.8): notify-svc
//! with a VAPID key sends to a local stand-in of a Web Push service that
//! checks the VAPID token with PyJWT and decrypts the payload with http_ece
//! (RFC 8291), independently of our code. Policy: offline -> pushed; a
//! live, acked user -> not; unacked past its wait -> pushed; a gone
//! subscription -> the device removed; 429 -> retried and delivered. FCM
//! (OAuth2 JWT grant checked with PyJWT) and APNs (ES256 provider token,
//! HTTP/2) against the same stand-in.

mod common;
#[path = "common/providers.rs"]
mod providers;

use std::time::Duration;

use common::{Backend, FakeBridge, Svc, to_user};
use notify_proto::v1::{self as pb, bridge_up::Msg as Up};
use providers::Providers;
use serde_json::Value;
use tonic::Code;

on_both_stores!(
    offline_users_get_a_web_push_that_their_browser_can_decrypt,
    fcm_and_apns_devices_get_the_push_with_the_providers_own_auth,
    live_acked_messages_are_never_pushed_and_unacked_ones_are,
    gone_subscriptions_are_removed_and_rate_limits_retried,
);

/// notify-svc with a generated VAPID key, trusting the stand-in.
async fn start(backend: Backend, providers: &Providers) -> Svc {
    let key = notify_push::vapid::Vapid::generate("mailto:ops@example.com").unwrap();
    let key_file = providers.dir.join("vapid.pem");
    std::fs::write(&key_file, key.to_pem()).unwrap();
    let ca = providers.ca_file();
    let events = providers.dir.join("push-events.json");
    std::fs::write(
        &events,
        r#"{"fight.accepted": {"when": "offline", "title": "{opponent} took your bet"}}"#,
    )
    .unwrap();
    let apns: Value =
        serde_json::from_str(&std::fs::read_to_string(providers.dir.join("apns.json")).unwrap())
            .unwrap();
    let (fcm_file, apns_file) = (
        providers.dir.join("fcm.json"),
        providers.dir.join("apns.p8"),
    );
    let origin = providers.origin.clone();
    Svc::start_on_with(backend, move |c| {
        // FCM and APNs keys inline (as from container secrets), VAPID from a file.
        let inline = |path: std::path::PathBuf| {
            Some(notify_push::secret::Secret::Inline(
                std::fs::read_to_string(path).unwrap(),
            ))
        };
        c.push.fcm_service_account = inline(fcm_file);
        c.push.fcm_endpoint = Some(origin.clone());
        c.push.apns_key = inline(apns_file);
        c.push.apns_key_id = apns["key_id"].as_str().unwrap().into();
        c.push.apns_team_id = apns["team_id"].as_str().unwrap().into();
        c.push.apns_endpoint = Some(origin);
        c.push.vapid_key = Some(notify_push::secret::Secret::File(key_file));
        c.push.vapid_subject = "mailto:ops@example.com".into();
        c.push.ca_file = Some(ca);
        c.push.policy =
            notify_core::push::PushPolicy::from_json(&std::fs::read_to_string(events).unwrap())
                .unwrap();
    })
    .await
}

fn web_push(subscription: &Value) -> Option<pb::PushDestination> {
    Some(pb::PushDestination {
        destination: Some(pb::push_destination::Destination::WebPush(
            pb::WebPushSubscription {
                endpoint: subscription["endpoint"].as_str().unwrap().into(),
                p256dh: subscription["keys"]["p256dh"].as_str().unwrap().into(),
                auth: subscription["keys"]["auth"].as_str().unwrap().into(),
            },
        )),
    })
}

async fn register(svc: &Svc, user: &str, subscription: &Value) -> String {
    let mut api = svc.client().await;
    let registered = api
        .register_device(pb::RegisterDeviceRequest {
            user_id: user.into(),
            destination: web_push(subscription),
        })
        .await
        .unwrap()
        .into_inner();
    registered.device.unwrap().device_id
}

fn accepted(user: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        event: "fight.accepted".into(),
        ..to_user(user, r#"{"opponent": "bea", "stake": 20}"#)
    }
}

fn delivered_to<'a>(received: &'a [Value], endpoint: &str) -> Vec<&'a Value> {
    received
        .iter()
        .filter(|r| r["address"] == endpoint && r["status"] == 201)
        .collect()
}

async fn offline_users_get_a_web_push_that_their_browser_can_decrypt(backend: Backend) {
    let providers = Providers::start().await;
    let svc = start(backend, &providers).await;
    let subscription = providers.subscribe().await;
    let endpoint = subscription["endpoint"].as_str().unwrap().to_owned();
    register(&svc, "ann", &subscription).await;
    let mut api = svc.client().await;
    let listed = api
        .list_devices(pb::ListDevicesRequest {
            user_id: "ann".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.devices.len(), 1);
    assert_eq!(listed.vapid_public_key.len(), 87, "65 bytes, base64url");

    // The event's configured default: offline -> pushed, with the template.
    let published = api.publish(accepted("ann")).await.unwrap().into_inner();
    let received = providers
        .wait_for("the push", |r| delivered_to(r, &endpoint).len() == 1)
        .await;
    let push = delivered_to(&received, &endpoint)[0];
    assert_eq!(
        push["payload"],
        serde_json::json!({
            "title": "bea took your bet",
            "body": "",
            "message_id": published.message_id,
            "seq": published.seq,
            "event": "fight.accepted",
        }),
        "decrypted by the stand-in with the subscription's private key"
    );
    assert_eq!(push["vapid_sub"], "mailto:ops@example.com");
    assert_eq!(push["vapid_key"], Value::from(listed.vapid_public_key));
    assert_eq!(
        push["topic"].as_str().unwrap(),
        published.message_id.replace('-', ""),
        "the message id collapses copies"
    );

    // A publish's own options override the event's: never, or a title.
    api.publish(pb::PublishRequest {
        push: Some(pb::PushOptions {
            when: pb::PushWhen::Never as i32,
            ..Default::default()
        }),
        ..accepted("ann")
    })
    .await
    .unwrap();
    api.publish(pb::PublishRequest {
        push: Some(pb::PushOptions {
            when: pb::PushWhen::Offline as i32,
            title: "Your move".into(),
            body: "bea is waiting".into(),
            ..Default::default()
        }),
        ..to_user("ann", "{}")
    })
    .await
    .unwrap();
    let received = providers
        .wait_for("the second push", |r| delivered_to(r, &endpoint).len() == 2)
        .await;
    assert_eq!(
        delivered_to(&received, &endpoint)[1]["payload"]["title"],
        "Your move"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        delivered_to(&providers.received().await, &endpoint).len(),
        2,
        "`never` was not pushed"
    );

    // Bad push options: refused with a reason, nothing stored.
    for bad in [
        pb::PublishRequest {
            push: Some(pb::PushOptions {
                when: pb::PushWhen::Unacked as i32,
                after_seconds: 0,
                ..Default::default()
            }),
            ..to_user("ann", "{}")
        },
        pb::PublishRequest {
            push: Some(pb::PushOptions {
                when: pb::PushWhen::Offline as i32,
                ..Default::default()
            }),
            ..common::to_topic("room:lobby", "{}")
        },
        pb::PublishRequest {
            push: Some(pb::PushOptions {
                when: 42,
                ..Default::default()
            }),
            ..to_user("ann", "{}")
        },
    ] {
        let e = api.publish(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
    let bad_device = api
        .register_device(pb::RegisterDeviceRequest {
            user_id: "ann".into(),
            destination: Some(pb::PushDestination {
                destination: Some(pb::push_destination::Destination::WebPush(
                    pb::WebPushSubscription {
                        endpoint: "http://plain.example/x".into(),
                        p256dh: "x".into(),
                        auth: "y".into(),
                    },
                )),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_device.code(), Code::InvalidArgument);
    svc.stop().await;
}

async fn live_acked_messages_are_never_pushed_and_unacked_ones_are(backend: Backend) {
    let providers = Providers::start().await;
    let svc = start(backend, &providers).await;
    let subscription = providers.subscribe().await;
    let endpoint = subscription["endpoint"].as_str().unwrap().to_owned();
    register(&svc, "cy", &subscription).await;
    // cy is online on a bridge.
    let connection = notify_core::ConnectionId::new().to_string();
    let bridge = FakeBridge::attach(
        &svc,
        "b1",
        vec![pb::LiveConnection {
            connection_id: connection.clone(),
            user_id: "cy".into(),
            ..Default::default()
        }],
    )
    .await;
    let mut api = svc.client().await;
    // Registered (the store's registry is how every replica knows).
    for _ in 0..200 {
        let presence = api
            .get_presence(pb::GetPresenceRequest {
                target: Some(pb::get_presence_request::Target::UserId("cy".into())),
            })
            .await
            .unwrap()
            .into_inner();
        if !presence.connections.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // offline policy while online: not pushed.
    api.publish(accepted("cy")).await.unwrap();
    // unacked within 1 s: the first is acked in time, the second is not.
    let unacked = |data: &str| pb::PublishRequest {
        push: Some(pb::PushOptions {
            when: pb::PushWhen::Unacked as i32,
            after_seconds: 1,
            title: data.into(),
            ..Default::default()
        }),
        ..to_user("cy", "{}")
    };
    api.publish(unacked("acked")).await.unwrap();
    bridge
        .send(Up::Acks(pb::InboxAcks {
            acks: vec![pb::InboxSeq {
                user_id: "cy".into(),
                seq: 2,
            }],
        }))
        .await;
    api.publish(unacked("missed")).await.unwrap();
    let received = providers
        .wait_for("the unacked push", |r| {
            !delivered_to(r, &endpoint).is_empty()
        })
        .await;
    let pushed: Vec<&Value> = delivered_to(&received, &endpoint);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0]["payload"]["title"], "missed");
    assert_eq!(pushed[0]["payload"]["seq"], 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        delivered_to(&providers.received().await, &endpoint).len(),
        1,
        "the acked one and the online one were never pushed"
    );
    drop(bridge);
    svc.stop().await;
}

async fn gone_subscriptions_are_removed_and_rate_limits_retried(backend: Backend) {
    let providers = Providers::start().await;
    let svc = start(backend, &providers).await;
    let busy = providers.subscribe().await;
    let busy_endpoint = busy["endpoint"].as_str().unwrap().to_owned();
    let gone = providers.subscribe().await;
    let gone_endpoint = gone["endpoint"].as_str().unwrap().to_owned();
    register(&svc, "dee", &busy).await;
    register(&svc, "dee", &gone).await;
    providers.script(&busy_endpoint, &[429]).await;
    providers.gone(&gone_endpoint).await;
    let mut api = svc.client().await;
    api.publish(accepted("dee")).await.unwrap();
    // 429 with Retry-After: 1 -> sent again after it, and delivered.
    let received = providers
        .wait_for("the retried push", |r| {
            !delivered_to(r, &busy_endpoint).is_empty()
        })
        .await;
    let to_busy: Vec<i64> = received
        .iter()
        .filter(|r| r["address"] == busy_endpoint)
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(to_busy, [429, 201]);
    let gone_answers = received
        .iter()
        .filter(|r| r["address"] == gone_endpoint)
        .count();
    assert_eq!(gone_answers, 1, "a gone device is not retried");
    let devices = api
        .list_devices(pb::ListDevicesRequest {
            user_id: "dee".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1, "the gone subscription was removed");
    // Every outcome is counted.
    let metrics = test_support::http_get(&svc.http.to_string(), "/metrics")
        .await
        .expect("metrics answer");
    for outcome in ["sent", "gone", "retry"] {
        let line = format!("notify_push_total{{provider=\"web_push\",outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    svc.stop().await;
}

fn fcm(token: &str) -> Option<pb::PushDestination> {
    Some(pb::PushDestination {
        destination: Some(pb::push_destination::Destination::Fcm(pb::FcmToken {
            token: token.into(),
        })),
    })
}

fn apns(token: &str) -> Option<pb::PushDestination> {
    Some(pb::PushDestination {
        destination: Some(pb::push_destination::Destination::Apns(pb::ApnsToken {
            token: token.into(),
            topic: "com.example.bets".into(),
            sandbox: true,
        })),
    })
}

async fn fcm_and_apns_devices_get_the_push_with_the_providers_own_auth(backend: Backend) {
    let providers = Providers::start().await;
    let svc = start(backend, &providers).await;
    let mut api = svc.client().await;
    let (phone, iphone) = ("fcm-token-1", "ab".repeat(32));
    let (old_phone, old_iphone) = ("fcm-token-old", "cd".repeat(32));
    for destination in [fcm(phone), apns(&iphone), fcm(old_phone), apns(&old_iphone)] {
        api.register_device(pb::RegisterDeviceRequest {
            user_id: "eve".into(),
            destination,
        })
        .await
        .unwrap();
    }
    providers.gone(old_phone).await;
    providers.gone(&old_iphone).await;
    providers.script(phone, &[503]).await;
    let published = api.publish(accepted("eve")).await.unwrap().into_inner();
    let received = providers
        .wait_for("FCM and APNs pushes", |r| {
            let ok = |p: &str| {
                r.iter()
                    .any(|x| x["provider"] == p && x["status"].as_i64() == Some(200))
            };
            ok("fcm") && ok("apns")
        })
        .await;
    let refused: Vec<&Value> = received
        .iter()
        .filter(|r| r.get("refused").is_some())
        .collect();
    assert!(refused.is_empty(), "the stand-in refused: {refused:?}");
    let fcm_push = received
        .iter()
        .find(|r| r["provider"] == "fcm" && r["status"] == 200)
        .unwrap();
    assert_eq!(fcm_push["payload"]["token"], phone);
    assert_eq!(
        fcm_push["payload"]["notification"]["title"],
        "bea took your bet"
    );
    assert_eq!(
        fcm_push["payload"]["data"]["message_id"],
        published.message_id.as_str()
    );
    assert_eq!(
        fcm_push["payload"]["data"]["seq"],
        published.seq.to_string()
    );
    // One message collapses to one notification, however often it is sent.
    let collapse = published.message_id.replace('-', "");
    let android = &fcm_push["payload"]["android"];
    assert_eq!(android["collapse_key"], collapse.as_str());
    assert_eq!(android["notification"]["tag"], collapse.as_str());
    assert_eq!(
        fcm_push["payload"]["apns"]["headers"]["apns-collapse-id"],
        collapse.as_str()
    );
    let apns_push = received
        .iter()
        .find(|r| r["provider"] == "apns" && r["status"] == 200)
        .unwrap();
    assert_eq!(apns_push["address"], iphone.as_str());
    assert_eq!(apns_push["http_version"], "2", "APNs is HTTP/2 only");
    assert_eq!(apns_push["topic"], "com.example.bets");
    assert_eq!(apns_push["push_type"], "alert");
    assert_eq!(
        apns_push["payload"]["aps"]["alert"]["title"],
        "bea took your bet"
    );
    assert_eq!(
        apns_push["payload"]["message_id"],
        published.message_id.as_str()
    );
    assert_eq!(
        apns_push["collapse_id"].as_str().unwrap(),
        published.message_id.replace('-', "")
    );
    // The OAuth grant was made once and checked by the stand-in.
    let grants = received
        .iter()
        .filter(|r| r["provider"] == "fcm_oauth")
        .count();
    assert_eq!(grants, 1);
    // FCM's 503 was retried; the gone tokens were each tried once, then removed.
    let to_phone: Vec<i64> = received
        .iter()
        .filter(|r| r["provider"] == "fcm" && r["address"] == phone)
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(to_phone, [503, 200]);
    let left: Vec<String> = api
        .list_devices(pb::ListDevicesRequest {
            user_id: "eve".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .devices
        .into_iter()
        .map(|d| match d.destination.unwrap().destination.unwrap() {
            pb::push_destination::Destination::Fcm(f) => f.token,
            pb::push_destination::Destination::Apns(a) => a.token,
            pb::push_destination::Destination::WebPush(w) => w.endpoint,
        })
        .collect();
    assert_eq!(
        left.len(),
        2,
        "FCM UNREGISTERED and APNs 410 removed theirs: {left:?}"
    );
    assert!(left.contains(&phone.to_owned()) && left.contains(&iphone));
    svc.stop().await;
}

/// kill -9 of notify-svc while it is sending: after a restart every due
/// push is delivered; a push resent because its sender died before
/// recording it is a copy with the same Topic and message id (the push
/// service keeps one copy, the client's push worker shows one), and only
/// pushes in flight at the kill are resent.
#[tokio::test]
async fn a_sender_killed_mid_queue_delivers_every_due_push_after_a_restart() {
    const USERS: usize = 60;
    let providers = Providers::start().await;
    let db = test_support::TestDb::create().await;
    let key = notify_push::vapid::Vapid::generate("mailto:ops@example.com").unwrap();
    let key_file = providers.dir.join("vapid.pem");
    std::fs::write(&key_file, key.to_pem()).unwrap();
    let start = || {
        let (mut command, grpc) = common::binary(&db.url);
        command
            .arg("--vapid-key-file")
            .arg(&key_file)
            .arg("--push-ca-file")
            .arg(providers.ca_file())
            .args(["--push-lease-secs", "2"]);
        (command.spawn().expect("notify-svc starts"), grpc)
    };
    let connect = |grpc: String| async move {
        for _ in 0..300 {
            if let Ok(c) = pb::notify_client::NotifyClient::connect(format!("http://{grpc}")).await
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("notify-svc did not answer on {grpc}");
    };
    let (mut first, grpc) = start();
    let mut api = connect(grpc).await;
    let mut endpoints = Vec::new();
    for n in 0..USERS {
        let subscription = providers.subscribe().await;
        endpoints.push(subscription["endpoint"].as_str().unwrap().to_owned());
        api.register_device(pb::RegisterDeviceRequest {
            user_id: format!("u{n}"),
            destination: web_push(&subscription),
        })
        .await
        .unwrap();
    }
    // A slow push service: the kill lands while sends are in flight.
    providers.call_slow(150).await;
    let requests: Vec<pb::PublishRequest> = (0..USERS)
        .map(|n| pb::PublishRequest {
            push: Some(pb::PushOptions {
                when: pb::PushWhen::Offline as i32,
                title: format!("for u{n}"),
                ..Default::default()
            }),
            ..to_user(&format!("u{n}"), "{}")
        })
        .collect();
    api.publish_batch(pb::PublishBatchRequest { requests })
        .await
        .unwrap();
    providers
        .wait_for("some pushes before the kill", |r| {
            r.iter().filter(|x| x["status"] == 201).count() >= 5
        })
        .await;
    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    let before = providers.received().await.len();
    assert!(before < USERS, "killed mid-queue: {before} of {USERS} sent");

    let (mut second, grpc) = start();
    connect(grpc).await;
    let received = providers
        .wait_for("every due push after the restart", |r| {
            endpoints
                .iter()
                .all(|e| r.iter().any(|x| x["address"] == *e && x["status"] == 201))
        })
        .await;
    let mut resent = 0;
    for endpoint in &endpoints {
        let copies: Vec<&Value> = delivered_to(&received, endpoint);
        assert!(copies.len() <= 2, "{endpoint}: {} copies", copies.len());
        if copies.len() == 2 {
            resent += 1;
            // A copy: the same Topic (the push service keeps one) and the
            // same message id, which the client's push worker shows once
            // (clients/ts/test/panel.test.ts, in Chromium).
            assert_eq!(copies[0]["topic"], copies[1]["topic"], "a resend collapses");
            assert_eq!(
                copies[0]["payload"], copies[1]["payload"],
                "a resend is a copy"
            );
        }
    }
    eprintln!("{resent} of {USERS} resent after the kill");
    // Sends in flight at the kill (32 at once) and answers waiting for the
    // finished pushes' next write (one statement: a few at most).
    assert!(resent <= 40, "{resent} resent");
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}

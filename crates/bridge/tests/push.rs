//! A device registers for push over its socket (docs/design.md §4.8): the
//! registration is the user's, listed with the VAPID key to subscribe with
//! when Web Push is configured, removed again; bad registrations are
//! answered with the reason and change nothing.

mod common;

use common::*;
use serde_json::{Value, json};

async fn reply_to(c: &mut Client, id: &str) -> Value {
    loop {
        let frame = c.next_frame().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_socket_registers_lists_and_removes_its_push_devices() {
    let p = Platform::start().await;
    let mut phone = p.connect("ann", "").await;
    assert_eq!(phone.next_frame().await["type"], "welcome");
    phone
        .send(json!({"action": "register_push", "fcm": {"token": "fcm-1"}, "id": "r1"}))
        .await;
    let listed = reply_to(&mut phone, "r1").await;
    assert_eq!(listed["type"], "push_devices");
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
    assert_eq!(listed["devices"][0]["fcm"]["token"], "fcm-1");
    let device_id = listed["devices"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let iphone = json!({"token": "ab".repeat(32), "topic": "com.example.bets", "sandbox": true});
    phone
        .send(json!({"action": "register_push", "apns": iphone, "id": "r2"}))
        .await;
    assert_eq!(
        reply_to(&mut phone, "r2").await["devices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Another user's socket does not see them.
    let mut other = p.connect("bea", "").await;
    assert_eq!(other.next_frame().await["type"], "welcome");
    other
        .send(json!({"action": "push_devices", "id": "l"}))
        .await;
    assert_eq!(reply_to(&mut other, "l").await["devices"], json!([]));

    // Bad registrations: the reason, nothing stored.
    for (n, bad) in [
        json!({"action": "register_push", "fcm": {"token": "a"}, "apns": iphone}),
        json!({"action": "register_push"}),
        json!({"action": "register_push", "apns": {"token": "zz", "topic": "t"}}),
        json!({"action": "register_push", "web_push": {"endpoint": "http://x", "keys": {"p256dh": "x", "auth": "y"}}}),
        json!({"action": "unregister_push", "device_id": "not-an-id"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad{n}");
        let mut frame = bad;
        frame["id"] = json!(id);
        phone.send(frame.clone()).await;
        let answer = reply_to(&mut phone, &id).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame}: {answer}"
        );
    }
    phone
        .send(json!({"action": "unregister_push", "device_id": device_id, "id": "u"}))
        .await;
    let left = reply_to(&mut phone, "u").await;
    assert_eq!(left["devices"].as_array().unwrap().len(), 1);
    assert_eq!(left["devices"][0]["apns"]["topic"], "com.example.bets");
}

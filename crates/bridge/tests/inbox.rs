//! The user's side of the inbox on real sockets (docs/design.md §4.7,
//! §5.2): two devices of one user share counts, marks, history pages,
//! mutes, edits and retractions; bad inbox frames are answered and a flood
//! of them is bounded; counts are right after notify-svc restarts.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use notify_proto::v1 as pb;
use serde_json::{Value, json};

/// Frames until one of type `ty` (others passed over).
async fn frame_of(c: &mut Client, ty: &str) -> Value {
    loop {
        let frame = c.next_frame().await;
        if frame["type"] == ty {
            return frame;
        }
    }
}

/// Frames until the reply to the frame with this `id`.
async fn reply_to(c: &mut Client, id: impl Into<Value>) -> Value {
    let id = id.into();
    loop {
        let frame = c.next_frame().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

/// The next counts frame as (unseen, unread).
async fn counts(c: &mut Client) -> (u64, u64) {
    let f = frame_of(c, "counts").await;
    (f["unseen"].as_u64().unwrap(), f["unread"].as_u64().unwrap())
}

fn pair(v: &Value) -> (u64, u64) {
    (v["unseen"].as_u64().unwrap(), v["unread"].as_u64().unwrap())
}

#[tokio::test]
async fn two_devices_of_one_user_share_counts_marks_and_history() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    for i in 1..=3 {
        api.publish(to_user("ann", &format!(r#"{{"n":{i}}}"#)))
            .await
            .unwrap();
    }
    let mut phone = p.connect("ann", "?since=3").await;
    let mut laptop = p.connect("ann", "?since=3").await;
    for device in [&mut phone, &mut laptop] {
        let welcome = device.next_frame().await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(pair(&welcome["counts"]), (3, 3));
    }

    // A mark on the phone: its answer, and the laptop's badge follows.
    phone
        .send(json!({"action": "mark", "as": "read", "seqs": [1, 99], "id": 1}))
        .await;
    let marked = frame_of(&mut phone, "marked").await;
    assert_eq!(
        (marked["changed"].as_u64(), marked["id"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(marked["missing"], json!([99]));
    assert_eq!(pair(&marked["counts"]), (2, 2));
    assert_eq!(counts(&mut laptop).await, (2, 2));

    // A new message reaches both, each followed by the counts after it.
    api.publish(to_user("ann", r#"{"n":4}"#)).await.unwrap();
    for device in [&mut phone, &mut laptop] {
        let m = device.next_frame().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("message"), Some(4))
        );
        assert_eq!(counts(device).await, (3, 3));
    }

    // Older items, a page at a time, newest first, with their state.
    laptop
        .send(json!({"action": "history", "limit": 2, "id": "h1"}))
        .await;
    let page = frame_of(&mut laptop, "history").await;
    let seqs = |page: &Value| -> Vec<u64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&page), [4, 3]);
    assert_eq!(page["next_before"], 3);
    assert_eq!(page["items"][0]["data"], json!({"n": 4}));
    laptop
        .send(json!({"action": "history", "before": 3, "limit": 2}))
        .await;
    let page = frame_of(&mut laptop, "history").await;
    assert_eq!(seqs(&page), [2, 1]);
    assert_eq!(page["items"][1]["read"], true);
    assert!(page.get("next_before").is_none());
    assert_eq!(page["older_expired"], false);

    // The split by event type, on request, adds up to the badge.
    laptop.send(json!({"action": "counts", "id": "c1"})).await;
    let split = reply_to(&mut laptop, "c1").await;
    assert_eq!(
        (split["type"].as_str(), pair(&split)),
        (Some("counts"), (3, 3))
    );
    assert_eq!(split["events"], json!({"note": {"unseen": 3, "unread": 3}}));

    // "All read" from the laptop clears both badges.
    laptop
        .send(json!({"action": "mark", "as": "read", "up_to": 4}))
        .await;
    assert_eq!(
        pair(&frame_of(&mut laptop, "marked").await["counts"]),
        (0, 0)
    );
    assert_eq!(counts(&mut phone).await, (0, 0));
}

#[tokio::test]
async fn mutes_apply_on_every_device_to_inbox_and_topics() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let mut phone = p.connect("bo", "").await;
    let mut laptop = p.connect("bo", "").await;
    phone.next().await;
    laptop.next().await;
    phone
        .send(json!({"action": "subscribe", "topic": "room:x"}))
        .await;
    assert_eq!(phone.next().await["type"], "subscribed");

    laptop
        .send(json!({"action": "mute", "namespaces": ["room"], "events": ["promo"], "id": 5}))
        .await;
    // Its own answer (the change every device of bo hears may come first).
    let answer = reply_to(&mut laptop, 5).await;
    assert_eq!(answer["type"], "preferences");
    assert_eq!(
        answer["mutes"],
        json!({"events": ["promo"], "namespaces": ["room"]})
    );
    // The other device hears of it, and its topic falls silent at once.
    let told = frame_of(&mut phone, "preferences").await;
    assert_eq!(told["mutes"], answer["mutes"]);
    publish_to_subscribers(&api, "room:x", "1", 1).await;
    let mut promo = to_user("bo", "{}");
    promo.event = "promo".into();
    api.publish(promo).await.unwrap();
    let note = api.publish(to_user("bo", "2")).await.unwrap().into_inner();
    // The next thing the phone shows is the unmuted inbox message: neither
    // the room's message nor the muted promo came before it.
    let m = phone.next().await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("message"), Some(note.message_id.as_str()))
    );
    assert_eq!(
        m["seq"], 2,
        "the muted promo took seq 1 and was never shown"
    );
    // The muted promo is in history, flagged, and counts nowhere.
    phone.send(json!({"action": "history"})).await;
    let page = frame_of(&mut phone, "history").await;
    assert_eq!(page["items"][1]["muted"], true);
    assert_eq!(pair(&page["counts"]), (1, 1));

    phone
        .send(json!({"action": "unmute", "namespaces": ["room"], "id": 6}))
        .await;
    let now = reply_to(&mut phone, 6).await;
    assert_eq!(now["mutes"], json!({"events": ["promo"], "namespaces": []}));
    publish_to_subscribers(&api, "room:x", "3", 1).await;
    let m = frame_of(&mut phone, "message").await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_u64()),
        (Some("room:x"), Some(3))
    );
    // Preferences survive a reconnect (they are stored).
    let mut again = p.connect("bo", "").await;
    let welcome = again.next().await;
    assert_eq!(
        welcome["mutes"],
        json!({"events": ["promo"], "namespaces": []})
    );
}

#[tokio::test]
async fn edits_and_retractions_reach_live_devices_and_reconnects_see_the_current_version() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let mut phone = p.connect("cy", "").await;
    phone.next().await;
    let sent = api
        .publish(to_user("cy", r#"{"v":1}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phone.next().await["seq"], 1);
    api.update_message(pb::UpdateMessageRequest {
        message_id: sent.message_id.clone(),
        event: "fight_cancelled".into(),
        data: r#"{"v":2}"#.into(),
    })
    .await
    .unwrap();
    let updated = phone.next().await;
    assert_eq!(updated["type"], "updated");
    assert_eq!(
        (
            updated["id"].as_str(),
            updated["seq"].as_u64(),
            updated["event"].as_str()
        ),
        (
            Some(sent.message_id.as_str()),
            Some(1),
            Some("fight_cancelled")
        )
    );
    assert_eq!(updated["data"], json!({"v": 2}));
    api.retract_message(pb::RetractMessageRequest {
        message_id: sent.message_id.clone(),
    })
    .await
    .unwrap();
    let retracted = phone.next().await;
    assert_eq!(
        (retracted["type"].as_str(), retracted["seq"].as_u64()),
        (Some("retracted"), Some(1))
    );
    assert_eq!(counts(&mut phone).await, (0, 0));
    drop(phone);

    // Away: a message comes and is taken back before any device saw it;
    // another is edited. The reconnect replays the current versions only.
    let gone = api
        .publish(to_user("cy", r#"{"v":"gone"}"#))
        .await
        .unwrap()
        .into_inner();
    let kept = api
        .publish(to_user("cy", r#"{"v":"old"}"#))
        .await
        .unwrap()
        .into_inner();
    api.retract_message(pb::RetractMessageRequest {
        message_id: gone.message_id,
    })
    .await
    .unwrap();
    api.update_message(pb::UpdateMessageRequest {
        message_id: kept.message_id.clone(),
        event: String::new(),
        data: r#"{"v":"new"}"#.into(),
    })
    .await
    .unwrap();
    let mut back = p.connect("cy", "?since=1").await;
    let welcome = back.next().await;
    assert_eq!(pair(&welcome["counts"]), (1, 1));
    let m = back.next().await;
    assert_eq!(
        (m["seq"].as_u64(), m["id"].as_str()),
        (Some(3), Some(kept.message_id.as_str()))
    );
    assert_eq!(m["data"], json!({"v": "new"}));
}

#[tokio::test]
async fn bad_inbox_frames_are_answered_and_a_flood_of_marks_is_bounded() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    for _ in 0..5 {
        api.publish(to_user("di", "1")).await.unwrap();
    }
    let mut c = p.connect("di", "?since=5").await;
    c.next().await;
    let refused = [
        json!({"action": "mark", "as": "reed", "seqs": [1], "id": 1}),
        json!({"action": "mark", "as": "read", "seqs": [], "id": 2}),
        json!({"action": "mark", "as": "read", "id": 3}),
        json!({"action": "mark", "as": "read", "seqs": [1], "up_to": 2, "id": 4}),
        json!({"action": "history", "limit": 100000, "id": 5}),
        json!({"action": "history", "show": "sideways", "id": 6}),
        json!({"action": "mute", "namespaces": ["nowhere"], "id": 7}),
        json!({"action": "mark", "as": "read", "seqs": "all", "id": 8}),
    ];
    for (i, frame) in refused.iter().enumerate() {
        c.send(frame.clone()).await;
        let e = frame_of(&mut c, "error").await;
        assert_eq!(e["code"], "bad_request", "{frame}: {e}");
        assert_eq!(e["id"], i + 1, "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    // 200 marks at once: each is answered (a mark or, past the calls a
    // socket may have in flight, rate_limited); the socket stays, and the
    // counts are what the marks that ran made them.
    for i in 0..200u64 {
        let kind = if i % 2 == 0 { "read" } else { "unread" };
        c.send(json!({"action": "mark", "as": kind, "seqs": [1 + i % 5], "id": i}))
            .await;
    }
    let (mut answered, mut limited) = (0, 0);
    while answered + limited < 200 {
        let f = c.next_frame().await;
        match f["type"].as_str() {
            Some("marked") => answered += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(answered >= 4, "{answered} marks ran");
    let page = api
        .list_inbox(pb::ListInboxRequest {
            user_id: "di".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let unread = page.items.iter().filter(|i| !i.read).count() as u64;
    assert_eq!(
        page.counts.unwrap().unread,
        unread,
        "counts agree with the items"
    );
    // The socket stays. The flood used the socket's frame rate (burst 200):
    // a ping refused by it (rate_limited, no id) is sent again a moment later.
    'pong: loop {
        c.send(json!({"action": "ping"})).await;
        loop {
            let f = c.next_frame().await;
            if f["type"] == "pong" {
                break 'pong;
            }
            if f["code"] == "rate_limited" {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'pong;
            }
        }
    }
}

#[tokio::test]
async fn counts_are_right_after_notify_svc_restarts() {
    let mut p = Platform::start().await;
    let mut api = p.api().await;
    for _ in 0..4 {
        api.publish(to_user("ed", "1")).await.unwrap();
    }
    api.mark_inbox(pb::MarkInboxRequest {
        user_id: "ed".into(),
        r#as: pb::MarkAs::Seen as i32,
        seqs: vec![1, 2],
        up_to: 0,
    })
    .await
    .unwrap();
    p.restart_svc().await;
    let mut c = p.connect_when_ready(&p.ws, "ed").await;
    let welcome = c.next().await;
    assert_eq!(pair(&welcome["counts"]), (2, 4));
}

#[tokio::test]
async fn a_thousand_marks_from_two_devices_at_once_leave_both_badges_right() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    for _ in 0..20 {
        api.publish(to_user("fay", "1")).await.unwrap();
    }
    let mut devices = Vec::new();
    for _ in 0..2 {
        let mut c = p.connect("fay", "?since=20").await;
        c.next().await;
        devices.push(c);
    }
    // 500 marks from each device, both at once, each waiting for its answer.
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(d, mut c)| {
            tokio::spawn(async move {
                let mut last = None;
                for i in 0..500u64 {
                    let kind = ["read", "unread", "seen", "unseen", "archived", "unarchived"]
                        [((i * 7 + d as u64 * 3) % 6) as usize];
                    let seq = 1 + (i * 13 + d as u64 * 5) % 20;
                    // Past the socket's frame rate (100/s, burst 200) a frame
                    // is refused before it is read (no id): wait, send again.
                    'answered: loop {
                        c.send(json!({"action": "mark", "as": kind, "seqs": [seq], "id": i}))
                            .await;
                        loop {
                            let f = c.next_frame().await;
                            if f["type"] == "counts" {
                                last = Some(pair(&f));
                            } else if f["code"] == "rate_limited" {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue 'answered;
                            } else if f["id"] == i {
                                assert_eq!(f["type"], "marked", "{f}");
                                break 'answered;
                            }
                        }
                    }
                }
                (c, last)
            })
        })
        .collect();
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await.unwrap());
    }
    // The counts kept equal what the items say, and both badges show them.
    let page = api
        .list_inbox(pb::ListInboxRequest {
            user_id: "fay".into(),
            limit: 100,
            shelf: pb::InboxShelf::All as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kept = page.counts.unwrap();
    let counted = |f: fn(&pb::InboxItem) -> bool| {
        page.items.iter().filter(|i| !i.archived && f(i)).count() as u64
    };
    assert_eq!(
        (kept.unseen, kept.unread),
        (counted(|i| !i.seen), counted(|i| !i.read))
    );
    for (c, last) in &mut devices {
        // The last counts frame each device got is the final one.
        while let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), c.ws.next()).await
        {
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["type"] == "counts" {
                *last = Some(pair(&f));
            }
        }
        assert_eq!(
            *last,
            Some((kept.unseen, kept.unread)),
            "a badge that drifted"
        );
    }
}

//! The user's side of the inbox over the Notify API (docs/design.md §4.7):
//! marks and counts, pages with state, mutes, edits and retractions — with
//! their bad inputs — and what a bridge attached to notify-svc is told:
//! counts with every inbox delivery and with the welcome's registration, a
//! change of counts, mutes, edits and retractions for the user's sockets.

mod common;

use common::{Backend, FakeBridge, Svc, to_user};
use notify_core::ConnectionId;
use notify_proto::v1::{
    self as pb, bridge_down::Msg as Down, bridge_up::Msg as Up, inbox_change::Change,
};
use tonic::{Code, Request};

on_both_stores!(
    marks_move_counts_and_pages_show_each_messages_state,
    counts_split_by_event_on_request_and_add_up_to_the_totals,
    muted_events_are_kept_but_not_counted_and_preferences_are_checked,
    a_producer_edits_and_retracts_its_own_messages,
);

fn mark(user: &str, as_: pb::MarkAs, seqs: &[u64], up_to: u64) -> pb::MarkInboxRequest {
    pb::MarkInboxRequest {
        user_id: user.into(),
        r#as: as_ as i32,
        seqs: seqs.to_vec(),
        up_to,
    }
}

fn list(user: &str, before: u64, limit: u32) -> pb::ListInboxRequest {
    pb::ListInboxRequest {
        user_id: user.into(),
        before,
        limit,
        ..Default::default()
    }
}

fn counts(c: Option<pb::InboxCounts>) -> (u64, u64) {
    let c = c.expect("counts");
    (c.unseen, c.unread)
}

fn mutes(events: &[&str], namespaces: &[&str]) -> Option<pb::Mutes> {
    Some(pb::Mutes {
        events: events.iter().map(|e| e.to_string()).collect(),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
    })
}

async fn marks_move_counts_and_pages_show_each_messages_state(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    for i in 0..3 {
        client
            .publish(to_user("alice", &i.to_string()))
            .await
            .unwrap();
    }
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<u64> = page
        .items
        .iter()
        .map(|i| i.message.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, [3, 2, 1]);
    assert!(page.items.iter().all(|i| !i.seen && !i.read));
    assert_eq!(counts(page.counts), (3, 3));

    let marked = client
        .mark_inbox(mark("alice", pb::MarkAs::Read, &[1, 9], 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((marked.changed, marked.missing.clone()), (1, vec![9]));
    assert_eq!(counts(marked.counts), (2, 2));
    let seen = client
        .mark_inbox(mark("alice", pb::MarkAs::Seen, &[], 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(seen.counts), (0, 2));
    let page = client
        .list_inbox(list("alice", 3, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.items.len(), 1);
    assert!(page.items[0].seen && !page.items[0].read);
    assert_eq!(page.next_before, 2);
    let unread = client
        .list_inbox(pb::ListInboxRequest {
            unread_only: true,
            ..list("alice", 0, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unread.items.len(), 2);

    // Bad input is refused with a reason, and changes nothing.
    let refused = [
        mark("alice", pb::MarkAs::Unspecified, &[1], 0),
        mark("alice", pb::MarkAs::Read, &[1], 2),
        mark("alice", pb::MarkAs::Read, &[], 0),
        mark("alice", pb::MarkAs::Read, &vec![1; 1001], 0),
        mark("", pb::MarkAs::Read, &[1], 0),
    ];
    for bad in refused {
        let e = client.mark_inbox(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
    let e = client.list_inbox(list("alice", 0, 101)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit"), "{}", e.message());
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(page.counts), (0, 2));
}

async fn counts_split_by_event_on_request_and_add_up_to_the_totals(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    type Split = ((u64, u64), Vec<(String, u64, u64)>);
    let split = |r: pb::GetInboxCountsResponse| -> Split {
        let events = r.events.into_iter().map(|e| (e.event, e.unseen, e.unread));
        (counts(r.counts), events.collect())
    };
    let ask = |user: &str| pb::GetInboxCountsRequest {
        user_id: user.into(),
    };
    let empty = client.get_inbox_counts(ask("ann")).await.unwrap();
    assert_eq!(split(empty.into_inner()), ((0, 0), vec![]));
    for event in ["fight.accepted", "fight.accepted", "chat.message"] {
        let mut req = to_user("ann", "{}");
        req.event = event.into();
        client.publish(req).await.unwrap();
    }
    client
        .mark_inbox(mark("ann", pb::MarkAs::Seen, &[1], 0))
        .await
        .unwrap();
    let answer = client.get_inbox_counts(ask("ann")).await.unwrap();
    assert_eq!(
        split(answer.into_inner()),
        (
            (2, 3),
            vec![
                ("chat.message".into(), 1, 1),
                ("fight.accepted".into(), 1, 2)
            ]
        )
    );
    let e = client.get_inbox_counts(ask("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
}

async fn muted_events_are_kept_but_not_counted_and_preferences_are_checked(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let prefs = client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: mutes(&["note"], &["room"]),
            unmute: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prefs.mutes, mutes(&["note"], &["room"]));
    let sent = client
        .publish(to_user("alice", "1"))
        .await
        .unwrap()
        .into_inner();
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(page.items[0].muted, "the muted message is kept, flagged");
    assert_eq!(counts(page.counts), (0, 0));
    assert_eq!(
        page.items[0].message.as_ref().unwrap().message_id,
        sent.message_id
    );

    let bad = [
        (mutes(&[], &["nowhere"]), "unknown namespace"),
        (mutes(&[], &["room:x"]), "namespace"),
        (mutes(&[""], &[]), "event is empty"),
    ];
    for (mute, why) in bad {
        let e = client
            .update_preferences(pb::UpdatePreferencesRequest {
                user_id: "alice".into(),
                mute,
                unmute: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(why), "{}", e.message());
    }
    let e = client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: mutes(&["x"], &[]),
            unmute: mutes(&["x"], &[]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Past the bound, nothing changes.
    let many: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let e = client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: Some(pb::Mutes {
                events: many,
                namespaces: Vec::new(),
            }),
            unmute: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let now = client
        .get_preferences(pb::GetPreferencesRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.mutes, mutes(&["note"], &["room"]));
    // Unmuted: counted again from the next message on.
    client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: None,
            unmute: mutes(&["note"], &[]),
        })
        .await
        .unwrap();
    client.publish(to_user("alice", "2")).await.unwrap();
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(page.counts), (1, 1));
}

async fn a_producer_edits_and_retracts_its_own_messages(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let sent = client
        .publish(to_user("alice", r#"{"v":1}"#))
        .await
        .unwrap()
        .into_inner();
    let updated = client
        .update_message(pb::UpdateMessageRequest {
            message_id: sent.message_id.clone(),
            event: "fight_cancelled".into(),
            data: r#"{"v":2}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.updated[0].seq, 1);
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    let item = &page.items[0];
    let m = item.message.as_ref().unwrap();
    assert_eq!(
        (m.event.as_str(), m.data.as_str()),
        ("fight_cancelled", r#"{"v":2}"#)
    );
    assert!(item.edited_ms > 0);
    for (data, code) in [("{", Code::InvalidArgument), ("", Code::InvalidArgument)] {
        let e = client
            .update_message(pb::UpdateMessageRequest {
                message_id: sent.message_id.clone(),
                event: String::new(),
                data: data.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{data:?}: {}", e.message());
    }
    let retracted = client
        .retract_message(pb::RetractMessageRequest {
            message_id: sent.message_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retracted.retracted.len(), 1);
    let page = client
        .list_inbox(list("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(page.items.is_empty());
    assert_eq!(counts(page.counts), (0, 0));
    // History still lists it, flagged; a retry of the retraction is fine.
    let history = client
        .history(common::history_of_user("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(history.messages[0].retracted);
    let again = client
        .retract_message(pb::RetractMessageRequest {
            message_id: sent.message_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.retracted.is_empty());
    let e = client
        .update_message(pb::UpdateMessageRequest {
            message_id: sent.message_id,
            event: String::new(),
            data: "{}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .retract_message(pb::RetractMessageRequest {
            message_id: "not-an-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn only_the_publisher_or_an_admin_may_revise_a_message() {
    let db = test_support::TestDb::create().await;
    let tokens = "news:publish=news-token-16-chars,games:publish=games-token-16-chars,\
                  ops:admin=ops-token-16-chars-long";
    let cfg = common::config(&db.url, &["--api-tokens", tokens]);
    let svc = Svc::start_config(db, cfg).await;
    let mut client = svc.client().await;
    let sent = client
        .publish(bearer(to_user("alice", "1"), "news-token-16-chars"))
        .await
        .unwrap()
        .into_inner();
    let retract = || pb::RetractMessageRequest {
        message_id: sent.message_id.clone(),
    };
    let e = client
        .retract_message(bearer(retract(), "games-token-16-chars"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    // Reading a user's inbox is not a publisher's right.
    let e = client
        .list_inbox(bearer(list("alice", 0, 0), "news-token-16-chars"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    client
        .retract_message(bearer(retract(), "ops-token-16-chars-long"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bridge_is_told_counts_mutes_edits_and_retractions_for_its_users() {
    let svc = Svc::start().await;
    let mut client = svc.client().await;
    client.publish(to_user("alice", "0")).await.unwrap();
    client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: mutes(&[], &["room"]),
            unmute: None,
        })
        .await
        .unwrap();
    let mut bridge = FakeBridge::attach(&svc, "b1", Vec::new()).await;
    let phone = ConnectionId::new();
    let opened = pb::ConnectionOpened {
        connection: Some(pb::LiveConnection {
            connection_id: phone.to_string(),
            user_id: "alice".into(),
            connected_at_ms: 1,
            topics: Vec::new(),
        }),
        ticket: 7,
    };
    bridge.send(Up::Opened(opened)).await;
    // The registration carries what the welcome needs.
    let Down::Registered(registered) = bridge.next().await else {
        panic!("not a registration");
    };
    assert_eq!(counts(registered.counts), (1, 1));
    assert_eq!(registered.mutes, mutes(&[], &["room"]));

    // Each inbox delivery carries the counts after it.
    let sent = client
        .publish(to_user("alice", "1"))
        .await
        .unwrap()
        .into_inner();
    let Down::Delivery(d) = bridge.next().await else {
        panic!("not a delivery");
    };
    assert_eq!(d.message.as_ref().unwrap().seq, 2);
    let first = d.counts.unwrap();
    assert_eq!((first.unseen, first.unread), (2, 2));

    // A mark from anywhere: the new counts, newer than the last.
    client
        .mark_inbox(mark("alice", pb::MarkAs::Read, &[1], 0))
        .await
        .unwrap();
    let Down::Inbox(change) = bridge.next().await else {
        panic!("not an inbox change");
    };
    let c = change.counts.unwrap();
    assert_eq!((c.unseen, c.unread), (1, 1));
    assert!(c.version > first.version);
    assert_eq!(change.change, Some(Change::CountsOnly(true)));

    // Edits and retractions, each with the counts after it.
    client
        .update_message(pb::UpdateMessageRequest {
            message_id: sent.message_id.clone(),
            event: String::new(),
            data: r#"{"v":2}"#.into(),
        })
        .await
        .unwrap();
    let Down::Inbox(change) = bridge.next().await else {
        panic!("not an inbox change");
    };
    let Some(Change::Updated(m)) = change.change else {
        panic!("not an update: {change:?}");
    };
    assert_eq!((m.seq, m.data.as_str()), (2, r#"{"v":2}"#));
    client
        .retract_message(pb::RetractMessageRequest {
            message_id: sent.message_id.clone(),
        })
        .await
        .unwrap();
    let Down::Inbox(change) = bridge.next().await else {
        panic!("not an inbox change");
    };
    assert_eq!(counts(change.counts), (0, 0));
    let Some(Change::Retracted(r)) = change.change else {
        panic!("not a retraction");
    };
    assert_eq!((r.seq, r.message_id), (2, sent.message_id));

    // Mutes changed on another device apply to this socket at once; a
    // muted message still comes (its seq moves the socket on), flagged.
    client
        .update_preferences(pb::UpdatePreferencesRequest {
            user_id: "alice".into(),
            mute: mutes(&["note"], &[]),
            unmute: None,
        })
        .await
        .unwrap();
    let Down::Inbox(change) = bridge.next().await else {
        panic!("not an inbox change");
    };
    assert_eq!(
        change.change,
        Some(Change::Mutes(mutes(&["note"], &["room"]).unwrap()))
    );
    let muted = client
        .publish(to_user("alice", "3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(muted.delivered, 0, "a muted message reaches no socket");
    let Down::Delivery(d) = bridge.next().await else {
        panic!("not a delivery");
    };
    assert!(d.message.unwrap().muted);
}

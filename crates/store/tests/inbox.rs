//! The user's side of the inbox on both stores (docs/design.md §4.7):
//! marks and the counts they move, mutes, pages of older items, edits and
//! retractions, expiry — and counts that equal a recount from the rows
//! after concurrent marks from two replicas and publishes.

use std::{sync::Arc, time::Duration};

use notify_core::{
    MessageId, Target, UserId,
    inbox::{
        Counts, EventCounts, Mark, MarkKind, Mutes, PageQuery, Revision, RevisionOutcome, Shelf,
        State,
    },
};
use notify_store::{Feed, PublishItem, Store};

mod common;

use common::{Backend, Sql, item, user};

conformance!(
    marks_move_the_counts_by_exactly_what_they_changed,
    counts_split_by_event_add_up_to_the_totals,
    muted_events_are_stored_muted_and_left_out_of_the_counts,
    pages_run_newest_first_with_filters_and_say_when_retention_took_the_rest,
    revisions_change_every_copy_and_the_counts_follow,
    expired_messages_leave_the_counts_when_swept,
    concurrent_marks_from_two_replicas_and_publishes_keep_counts_exact,
    with_counts_off_messages_are_stored_read_and_counts_stay_exact,
    a_batch_of_marks_for_many_users_answers_each_in_order,
);

fn event(target: Target, event: &str) -> PublishItem {
    let mut i = item(target);
    i.publish.event = event.into();
    i
}

async fn publish(s: &dyn Store, who: &str, n: usize) -> Vec<u64> {
    let batch: Vec<PublishItem> = (0..n).map(|_| item(Target::User(user(who)))).collect();
    s.commit(&batch)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect()
}

fn mark(kind: MarkKind, seqs: &[u64]) -> Mark {
    Mark::new(kind, Some(seqs), None).unwrap()
}

fn up_to(kind: MarkKind, seq: u64) -> Mark {
    Mark::new(kind, None, Some(seq)).unwrap()
}

/// (unseen, unread), checked against a recount from the rows.
async fn counts(s: &dyn Store, who: &str) -> (u64, u64) {
    let kept = s.counts(&user(who)).await.unwrap();
    let derived = s.recount(&user(who)).await.unwrap();
    assert_eq!(kept, derived, "kept counts of {who} differ from the rows");
    let split = s.counts_by_event(&user(who)).await.unwrap();
    assert_eq!(split.counts, kept, "the split's totals are the kept ones");
    let sum = |f: fn(&EventCounts) -> u64| split.events.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|e| e.unseen), sum(|e| e.unread)),
        (kept.unseen, kept.unread),
        "the split of {who} adds up to the totals: {split:?}"
    );
    (kept.unseen, kept.unread)
}

/// `(event, unseen, unread)` of each event with anything counted.
async fn split(s: &dyn Store, who: &str) -> Vec<(String, u64, u64)> {
    counts(s, who).await;
    let split = s.counts_by_event(&user(who)).await.unwrap();
    split
        .events
        .into_iter()
        .map(|e| (e.event, e.unseen, e.unread))
        .collect()
}

async fn counts_split_by_event_add_up_to_the_totals(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    let ann = || Target::User(user("ann"));
    assert!(split(s, "ann").await.is_empty(), "no inbox yet");
    s.change_mutes(
        &user("ann"),
        &Mutes::new(&["chat.typing".into()], &[]).unwrap(),
        &Mutes::default(),
    )
    .await
    .unwrap();
    let list = event(
        Target::Users(vec![user("ann"), user("bea")]),
        "fight.challenged",
    );
    let list_id = list.message_id;
    s.commit(&[
        event(ann(), "fight.accepted"), // 1
        event(ann(), "fight.accepted"), // 2
        list,                           // 3 (payload shared with bea)
        event(ann(), "chat.message"),   // 4
        event(ann(), "chat.typing"),    // 5: muted, counted nowhere
    ])
    .await
    .unwrap();
    let at = |e: &str, u: u64, r: u64| (e.to_owned(), u, r);
    assert_eq!(
        split(s, "ann").await,
        [
            at("chat.message", 1, 1),
            at("fight.accepted", 2, 2),
            at("fight.challenged", 1, 1)
        ]
    );
    s.mark(&user("ann"), &mark(MarkKind::Read, &[1]))
        .await
        .unwrap();
    s.mark(&user("ann"), &mark(MarkKind::Seen, &[4]))
        .await
        .unwrap();
    s.mark(&user("ann"), &mark(MarkKind::Archived, &[2]))
        .await
        .unwrap();
    assert_eq!(
        split(s, "ann").await,
        [at("chat.message", 0, 1), at("fight.challenged", 1, 1)],
        "read + archived leave fight.accepted; seen keeps chat.message unread"
    );
    // An edit that changes the event moves the message to the new one's
    // share, for every user holding it.
    let update = Revision::Update {
        event: Some("fight.cancelled".into()),
        data: "{}".into(),
    };
    s.revise(None, list_id, &update).await.unwrap();
    assert_eq!(
        split(s, "ann").await,
        [at("chat.message", 0, 1), at("fight.cancelled", 1, 1)]
    );
    assert_eq!(split(s, "bea").await, [at("fight.cancelled", 1, 1)]);
    s.revise(None, list_id, &Revision::Retract).await.unwrap();
    assert!(split(s, "bea").await.is_empty());
}

async fn marks_move_the_counts_by_exactly_what_they_changed(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    assert_eq!(s.counts(&user("ann")).await.unwrap(), Counts::default());
    publish(s, "ann", 5).await;
    let list = s
        .commit(&[item(Target::Users(vec![user("ann"), user("bea")]))])
        .await
        .unwrap();
    // Every commit answers each recipient's counts after it.
    let after: Vec<(String, u64)> = list[0]
        .recipients
        .iter()
        .map(|r| (r.user.to_string(), r.counts.unread))
        .collect();
    assert_eq!(after, [("ann".into(), 6), ("bea".into(), 1)]);
    assert_eq!(counts(s, "ann").await, (6, 6));

    let seen = s
        .mark(&user("ann"), &mark(MarkKind::Seen, &[1, 2]))
        .await
        .unwrap();
    assert_eq!(
        (seen.changed, seen.counts.unseen, seen.counts.unread),
        (2, 4, 6)
    );
    let version = seen.counts.version;
    // Read implies seen: 1 and 2 only become read, 3 becomes both.
    let read = s
        .mark(&user("ann"), &up_to(MarkKind::Read, 3))
        .await
        .unwrap();
    assert_eq!(
        (read.changed, read.counts.unseen, read.counts.unread),
        (3, 3, 3)
    );
    assert!(read.counts.version > version);
    // A mark that changes nothing leaves counts and version alone; seqs
    // that are not there are named, not invented.
    let again = s
        .mark(&user("ann"), &mark(MarkKind::Read, &[2, 3, 99]))
        .await
        .unwrap();
    assert_eq!((again.changed, again.missing.clone()), (0, vec![99]));
    assert_eq!(again.counts, read.counts);
    // Archived messages count nowhere; unarchiving brings them back.
    s.mark(&user("ann"), &mark(MarkKind::Archived, &[4, 5]))
        .await
        .unwrap();
    assert_eq!(counts(s, "ann").await, (1, 1));
    s.mark(&user("ann"), &mark(MarkKind::Unarchived, &[4]))
        .await
        .unwrap();
    assert_eq!(counts(s, "ann").await, (2, 2));
    // Unseen implies unread.
    s.mark(&user("ann"), &mark(MarkKind::Unseen, &[1]))
        .await
        .unwrap();
    assert_eq!(counts(s, "ann").await, (3, 3));
    s.mark(&user("ann"), &mark(MarkKind::Unread, &[2]))
        .await
        .unwrap();
    assert_eq!(counts(s, "ann").await, (3, 4));
    // Another user's marks are theirs alone; positions carry the counts.
    assert_eq!(counts(s, "bea").await, (1, 1));
    let at = s.positions(&[Feed::Inbox(user("ann"))]).await.unwrap();
    assert_eq!(at[0].counts, s.counts(&user("ann")).await.unwrap());
}

async fn muted_events_are_stored_muted_and_left_out_of_the_counts(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    let mutes = Mutes::new(&["fight_updated".into()], &["room".into()]).unwrap();
    let now = s
        .change_mutes(&user("ann"), &mutes, &Mutes::default())
        .await
        .unwrap();
    assert_eq!(now, mutes);
    let batch = [
        event(Target::User(user("ann")), "fight_updated"),
        event(Target::User(user("ann")), "fight_created"),
        event(
            Target::Users(vec![user("ann"), user("bea")]),
            "fight_updated",
        ),
    ];
    let done = s.commit(&batch).await.unwrap();
    let muted: Vec<Vec<(String, bool)>> = done
        .iter()
        .map(|c| {
            c.recipients
                .iter()
                .map(|r| (r.user.to_string(), r.muted))
                .collect()
        })
        .collect();
    assert_eq!(
        muted,
        [
            vec![("ann".into(), true)],
            vec![("ann".into(), false)],
            vec![("ann".into(), true), ("bea".into(), false)],
        ]
    );
    assert_eq!(counts(s, "ann").await, (1, 1));
    assert_eq!(counts(s, "bea").await, (1, 1));
    // Stored all the same: the page shows them, flagged.
    let page = s
        .page(
            &user("ann"),
            &PageQuery::new(None, 0, false, Shelf::Inbox, &[]).unwrap(),
        )
        .await
        .unwrap();
    let states: Vec<(u64, bool)> = page
        .items
        .iter()
        .map(|i| (i.seq, i.state.has(State::MUTED)))
        .collect();
    assert_eq!(states, [(3, true), (2, false), (1, true)]);
    // Positions tell a bridge what to keep from live sockets.
    let at = s.positions(&[Feed::Inbox(user("ann"))]).await.unwrap();
    assert_eq!(at[0].mutes, mutes);
    // Unmuting applies from then on; what was muted stays as it was.
    let unmute = Mutes::new(&["fight_updated".into()], &[]).unwrap();
    let now = s
        .change_mutes(&user("ann"), &Mutes::default(), &unmute)
        .await
        .unwrap();
    assert_eq!(now, Mutes::new(&[], &["room".into()]).unwrap());
    assert_eq!(s.mutes(&user("ann")).await.unwrap(), now);
    s.commit(&[event(Target::User(user("ann")), "fight_updated")])
        .await
        .unwrap();
    assert_eq!(counts(s, "ann").await, (2, 2));
}

async fn pages_run_newest_first_with_filters_and_say_when_retention_took_the_rest(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    let batch: Vec<PublishItem> = (1..=30)
        .map(|i| {
            event(
                Target::User(user("ann")),
                if i % 3 == 0 { "fight_won" } else { "chat" },
            )
        })
        .collect();
    s.commit(&batch).await.unwrap();
    s.mark(&user("ann"), &up_to(MarkKind::Read, 10))
        .await
        .unwrap();
    s.mark(&user("ann"), &mark(MarkKind::Archived, &[30, 29]))
        .await
        .unwrap();
    let query = |before, limit, unread, shelf, events: &[&str]| {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        PageQuery::new(before, limit, unread, shelf, &events).unwrap()
    };
    let seqs = |p: &notify_core::inbox::Page| p.items.iter().map(|i| i.seq).collect::<Vec<_>>();

    let first = s
        .page(&user("ann"), &query(None, 10, false, Shelf::Inbox, &[]))
        .await
        .unwrap();
    assert_eq!(seqs(&first), (19..=28).rev().collect::<Vec<_>>());
    assert_eq!(first.next_before, Some(19));
    assert!(!first.older_expired);
    assert_eq!(first.counts, s.counts(&user("ann")).await.unwrap());
    let archived = s
        .page(&user("ann"), &query(None, 10, false, Shelf::Archived, &[]))
        .await
        .unwrap();
    assert_eq!(
        (seqs(&archived), archived.next_before),
        (vec![30, 29], None)
    );
    let all = s
        .page(&user("ann"), &query(Some(31), 3, false, Shelf::All, &[]))
        .await
        .unwrap();
    assert_eq!(seqs(&all), [30, 29, 28]);
    let unread_wins = s
        .page(
            &user("ann"),
            &query(Some(16), 100, true, Shelf::Inbox, &["fight_won"]),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&unread_wins), [15, 12]);

    // Retention takes 1..=5; paging to the end says so.
    db.sql(Sql {
        postgres: "UPDATE inbox SET expires_at = now() - interval '1 second' WHERE seq <= 5",
        sqlite: "UPDATE inbox SET expires_at = 0 WHERE seq <= 5",
    })
    .await;
    let last = s
        .page(
            &user("ann"),
            &query(Some(12), 100, false, Shelf::Inbox, &[]),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&last), (6..=11).rev().collect::<Vec<_>>());
    assert_eq!(
        (last.next_before, last.first_seq, last.older_expired),
        (None, 6, true)
    );
    // An inbox that kept everything ends without that note.
    publish(s, "bea", 2).await;
    let bea = s
        .page(&user("bea"), &query(None, 5, false, Shelf::Inbox, &[]))
        .await
        .unwrap();
    assert_eq!((seqs(&bea), bea.older_expired), (vec![2, 1], false));
    let nobody = s
        .page(&user("cid"), &query(None, 5, false, Shelf::Inbox, &[]))
        .await
        .unwrap();
    assert!(nobody.items.is_empty() && !nobody.older_expired);
}

async fn revisions_change_every_copy_and_the_counts_follow(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    publish(s, "ann", 1).await;
    let list = item(Target::Users(vec![user("ann"), user("bea")]));
    let id = list.message_id;
    s.commit(&[list]).await.unwrap();
    s.mark(&user("bea"), &mark(MarkKind::Read, &[1]))
        .await
        .unwrap();

    let update = Revision::Update {
        event: Some("fight_cancelled".into()),
        data: r#"{"v":2}"#.into(),
    };
    let RevisionOutcome::NotYours { caller } = s.revise(Some("other"), id, &update).await.unwrap()
    else {
        panic!("another caller's message was revised");
    };
    assert_eq!(caller, "test");
    let RevisionOutcome::Done(updated) = s.revise(Some("test"), id, &update).await.unwrap() else {
        panic!("update refused");
    };
    let at: Vec<(String, u64)> = updated
        .iter()
        .map(|r| (r.user.to_string(), r.seq))
        .collect();
    assert_eq!(at, [("ann".into(), 2), ("bea".into(), 1)]);
    let page = s
        .page(
            &user("bea"),
            &PageQuery::new(None, 0, false, Shelf::Inbox, &[]).unwrap(),
        )
        .await
        .unwrap();
    let shown = &page.items[0];
    assert_eq!(
        (shown.event.as_str(), shown.data.as_str()),
        ("fight_cancelled", r#"{"v":2}"#)
    );
    assert!(shown.edited.is_some() && shown.state.has(State::READ));
    // Replays read the current version too.
    let replay = s.history(&Feed::Inbox(user("ann")), 1, 10).await.unwrap();
    assert_eq!(replay.messages[0].data, r#"{"v":2}"#);

    // A retraction takes it out of counts where it counted (ann: unread)
    // and out of pages; bea had read it, so her counts stay.
    let RevisionOutcome::Done(gone) = s.revise(None, id, &Revision::Retract).await.unwrap() else {
        panic!("retract refused");
    };
    let after: Vec<(String, Counts)> = gone
        .iter()
        .map(|r| (r.user.to_string(), r.counts))
        .collect();
    assert_eq!((after[0].1.unread, after[1].1.unread), (1, 0));
    assert_eq!(counts(s, "ann").await, (1, 1));
    let page = s
        .page(
            &user("ann"),
            &PageQuery::new(None, 0, false, Shelf::All, &[]).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.items.iter().map(|i| i.seq).collect::<Vec<_>>(), [1]);
    // Again: nothing left to do, and no error for a retry.
    assert_eq!(
        s.revise(None, id, &Revision::Retract).await.unwrap(),
        RevisionOutcome::Done(Vec::new())
    );
    assert_eq!(
        s.revise(None, id, &update).await.unwrap(),
        RevisionOutcome::NotFound
    );
    assert_eq!(
        s.revise(None, MessageId::new(), &Revision::Retract)
            .await
            .unwrap(),
        RevisionOutcome::NotFound
    );
    // Marks skip retracted messages.
    let marked = s
        .mark(&user("ann"), &mark(MarkKind::Read, &[2]))
        .await
        .unwrap();
    assert_eq!(marked.missing, [2]);
}

async fn expired_messages_leave_the_counts_when_swept(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    publish(s, "ann", 3).await;
    s.mark(&user("ann"), &mark(MarkKind::Read, &[1]))
        .await
        .unwrap();
    db.sql(Sql {
        postgres: "UPDATE inbox SET expires_at = now() - interval '1 second' WHERE seq <= 2",
        sqlite: "UPDATE inbox SET expires_at = 0 WHERE seq <= 2",
    })
    .await;
    let swept = s.sweep(&notify_core::TopicPolicy::empty()).await.unwrap();
    assert_eq!(swept.inbox, 2);
    let changed: Vec<(String, u64)> = swept
        .counts
        .iter()
        .map(|(u, c)| (u.to_string(), c.unread))
        .collect();
    assert_eq!(changed, [("ann".into(), 1)]);
    assert_eq!(counts(s, "ann").await, (1, 1));
}

async fn concurrent_marks_from_two_replicas_and_publishes_keep_counts_exact(db: Backend) {
    let replicas: Vec<Arc<dyn Store>> = vec![db.migrated().await, db.store()];
    let users: Vec<UserId> = (0..4).map(|i| user(&format!("u{i}"))).collect();
    for u in &users {
        publish(replicas[0].as_ref(), u.as_str(), 50).await;
    }
    let mut tasks = Vec::new();
    // Two devices per user on different replicas, 1,000 marks in all,
    // while a publisher keeps adding to the same inboxes.
    for (d, store) in replicas.iter().enumerate() {
        for u in users.clone() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = (d as u64 + 1) * 7919 + u.as_str().len() as u64;
                for _ in 0..125 {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let kind = MarkKind::ALL[(rng >> 33) as usize % MarkKind::ALL.len()];
                    let seq = 1 + (rng >> 40) % 60;
                    let m = if rng.is_multiple_of(5) {
                        up_to(kind, seq)
                    } else {
                        mark(kind, &[seq, seq + 1, (seq * 7) % 60 + 1])
                    };
                    store.mark(&u, &m).await.unwrap();
                }
            }));
        }
    }
    let publisher = replicas[1].clone();
    let targets = users.clone();
    tasks.push(tokio::spawn(async move {
        for publishes in 0..20 {
            let kind = ["fight.accepted", "chat.message"][publishes % 2];
            publisher
                .commit(&[event(Target::Users(targets.clone()), kind)])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
    for u in &users {
        counts(replicas[0].as_ref(), u.as_str()).await;
    }
}

/// With counts off, new messages are stored read and counted nowhere, so
/// turning counts back on needs no recount.
async fn with_counts_off_messages_are_stored_read_and_counts_stay_exact(db: Backend) {
    let on = db.migrated().await;
    publish(on.as_ref(), "ann", 2).await;
    let off = match db.database() {
        notify_store::Database::Postgres(mut c) => {
            c.inbox_counts = false;
            notify_store::Database::Postgres(c)
        }
        notify_store::Database::Sqlite(mut c) => {
            c.inbox_counts = false;
            notify_store::Database::Sqlite(c)
        }
    }
    .store()
    .unwrap();
    let done = off
        .commit(&[item(Target::User(user("ann")))])
        .await
        .unwrap();
    assert_eq!(
        done[0].recipients[0].counts,
        Counts::default(),
        "no counts answered"
    );
    assert_eq!(counts(off.as_ref(), "ann").await, (2, 2));
    let page = off
        .page(
            &user("ann"),
            &PageQuery::new(None, 0, false, Shelf::Inbox, &[]).unwrap(),
        )
        .await
        .unwrap();
    assert!(page.items[0].state.has(State::READ), "stored read");
    // Back on: the next message counts; marks stay exact on every row.
    publish(on.as_ref(), "ann", 1).await;
    on.mark(&user("ann"), &mark(MarkKind::Unread, &[3]))
        .await
        .unwrap();
    assert_eq!(
        counts(on.as_ref(), "ann").await,
        (3, 4),
        "seq 3 unread, still seen"
    );
}

async fn a_batch_of_marks_for_many_users_answers_each_in_order(db: Backend) {
    let s = db.migrated().await;
    let s = s.as_ref();
    for who in ["ann", "bea", "cid"] {
        publish(s, who, 3).await;
    }
    let batch = vec![
        (user("cid"), mark(MarkKind::Read, &[1, 7])),
        (user("ann"), up_to(MarkKind::Seen, 2)),
        (user("dee"), mark(MarkKind::Read, &[1])),
        (user("bea"), up_to(MarkKind::Archived, 3)),
    ];
    let answers = s.mark_many(&batch).await.unwrap();
    let got: Vec<(u64, Vec<u64>, u64, u64)> = answers
        .iter()
        .map(|a| {
            (
                a.changed,
                a.missing.clone(),
                a.counts.unseen,
                a.counts.unread,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, vec![7], 2, 2),
            (2, vec![], 1, 3),
            (0, vec![1], 0, 0),
            (3, vec![], 0, 0),
        ]
    );
    for who in ["ann", "bea", "cid"] {
        counts(s, who).await;
    }
    let twice = vec![
        (user("ann"), mark(MarkKind::Read, &[1])),
        (user("ann"), mark(MarkKind::Unread, &[1])),
    ];
    assert!(
        s.mark_many(&twice).await.is_err(),
        "one mark per user per batch"
    );
}

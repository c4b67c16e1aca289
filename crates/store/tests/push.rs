//! Push devices and the durable push queue on both stores (docs/design.md
//! §4.8): a device is one address (registered again: the same device;
//! by another user: moved), at most MAX_DEVICES per user; a commit queues
//! the pushes its inbox rows ask for in its own transaction, never for a
//! muted row; claims carry what the decision and the sends need (acked,
//! live, the user's devices) and hold a lease; finishing records the
//! devices done or removes the push.

use std::time::{Duration, SystemTime};

use notify_core::{
    ConnectionId, Target,
    inbox::Mutes,
    push::{Destination, DeviceId, MAX_DEVICES, PushOrder, When},
};
use notify_store::{
    ConnectionRecord, PublishItem, Store,
    push::{Finish, Finished},
};

mod common;

use common::{Backend, Sql, item, user};

conformance!(
    a_device_is_its_address_moves_between_users_and_is_bounded,
    a_commit_queues_its_pushes_and_claims_tell_acked_and_live,
);

fn fcm(token: &str) -> Destination {
    Destination::Fcm {
        token: token.into(),
    }
}

fn pushed(target: Target, when: When) -> PublishItem {
    let mut i = item(target);
    i.publish.event = "fight.accepted".into();
    i.push = Some(PushOrder::new(when, "Accepted", "bea took your bet").unwrap());
    i
}

async fn a_device_is_its_address_moves_between_users_and_is_bounded(db: Backend) {
    let s = db.migrated().await;
    let first = s
        .register_device(&user("ann"), &fcm("tok-1"))
        .await
        .unwrap();
    assert_eq!((first.moved_from, first.evicted.len()), (None, 0));
    let again = s
        .register_device(&user("ann"), &fcm("tok-1"))
        .await
        .unwrap();
    assert_eq!(
        again.device.id, first.device.id,
        "the same address: one device"
    );
    let web = Destination::WebPush {
        endpoint: "https://push.example/a".into(),
        p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
            .into(),
        auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
    };
    s.register_device(&user("ann"), &web).await.unwrap();
    let listed = s.devices(&user("ann")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].destination, web, "stored as registered, keys too");

    // A phone signed into another account: the token moves.
    let moved = s
        .register_device(&user("bea"), &fcm("tok-1"))
        .await
        .unwrap();
    assert_eq!(moved.moved_from, Some(user("ann")));
    assert_eq!(s.devices(&user("ann")).await.unwrap().len(), 1);

    // Past MAX_DEVICES, the oldest registration goes.
    for n in 0..MAX_DEVICES {
        s.register_device(&user("cy"), &fcm(&format!("cy-{n}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let over = s
        .register_device(&user("cy"), &fcm("cy-new"))
        .await
        .unwrap();
    assert_eq!(over.evicted, [fcm("cy-0").device_id()]);
    assert_eq!(s.devices(&user("cy")).await.unwrap().len(), MAX_DEVICES);

    // Removal: the owner's own, or any (a provider said gone).
    let id = fcm("cy-1").device_id();
    assert!(
        !s.remove_device(Some(&user("ann")), &id).await.unwrap(),
        "not ann's"
    );
    assert!(s.remove_device(Some(&user("cy")), &id).await.unwrap());
    assert!(!s.remove_device(None, &id).await.unwrap(), "already gone");
    assert!(
        s.remove_device(None, &fcm("cy-2").device_id())
            .await
            .unwrap()
    );
    assert!(
        !s.remove_device(None, &DeviceId("0".repeat(32)))
            .await
            .unwrap()
    );
}

async fn a_commit_queues_its_pushes_and_claims_tell_acked_and_live(db: Backend) {
    let s = db.migrated().await;
    let s: &dyn Store = s.as_ref();
    s.change_mutes(
        &user("cy"),
        &Mutes::new(&["fight.accepted".into()], &[]).unwrap(),
        &Mutes::default(),
    )
    .await
    .unwrap();
    let later = When::Unacked(Duration::from_secs(3600));
    let committed = s
        .commit(&[
            pushed(Target::User(user("ann")), When::Offline),
            pushed(Target::Users(vec![user("bea"), user("cy")]), When::Offline),
            item(Target::User(user("ann"))), // asks for no push
            pushed(Target::User(user("dan")), later),
            pushed(Target::User(user("ann")), When::Never),
        ])
        .await
        .unwrap();
    // bea acked it on a socket; ann has a live connection.
    s.ack(&[(user("bea"), 1)]).await.unwrap();
    let now = SystemTime::now();
    s.register_connections(&[ConnectionRecord {
        connection_id: ConnectionId::new(),
        user_id: user("ann"),
        bridge_id: "b1".into(),
        connected_at: now,
        last_seen: now,
    }])
    .await
    .unwrap();
    // ann has two phones, bea none.
    let older = s
        .register_device(&user("ann"), &fcm("ann-1"))
        .await
        .unwrap();
    let newer = s
        .register_device(&user("ann"), &fcm("ann-2"))
        .await
        .unwrap();

    let claimed = s.claim_pushes(10, Duration::from_secs(60)).await.unwrap();
    let seen: Vec<(String, u64, bool, bool)> = claimed
        .iter()
        .map(|p| (p.user.to_string(), p.seq, p.acked, p.live))
        .collect();
    // cy muted the event: nothing queued; dan's is not due for an hour.
    assert_eq!(
        seen,
        [
            ("ann".into(), 1, false, true),
            ("bea".into(), 1, true, false)
        ]
    );
    assert_eq!(claimed[0].message_id, committed[0].message_id);
    assert_eq!(
        (
            claimed[0].title.as_str(),
            claimed[0].body.as_str(),
            claimed[0].event.as_str()
        ),
        ("Accepted", "bea took your bet", "fight.accepted")
    );
    assert_eq!((claimed[0].when, claimed[0].attempts), (When::Offline, 0));
    // The devices come with the claim, oldest registration first.
    assert_eq!(claimed[0].devices, [older.device, newer.device]);
    assert!(claimed[1].devices.is_empty());
    assert!(
        s.claim_pushes(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "claimed ones are held"
    );
    let due = s.next_push_due().await.unwrap().unwrap();
    assert!(
        due > now + Duration::from_secs(50),
        "the next is a lease's end"
    );

    // Finishing, together: one done, one to retry with a device done.
    let (ann, bea) = (&claimed[0], &claimed[1]);
    s.finish_pushes(&[
        Finished {
            message_id: ann.message_id,
            user: ann.user.clone(),
            finish: Finish::Done,
        },
        Finished {
            message_id: bea.message_id,
            user: bea.user.clone(),
            finish: Finish::Retry {
                at: SystemTime::now(),
                devices_done: vec![DeviceId("a".repeat(32))],
            },
        },
    ])
    .await
    .unwrap();
    s.finish_pushes(&[]).await.unwrap();
    let again = s.claim_pushes(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0].user.to_string(),
            again[0].attempts,
            again[0].devices_done.clone()
        ),
        ("bea".into(), 1, vec![DeviceId("a".repeat(32))])
    );

    // A lease that ends gives the push to the next claim (a crashed sender).
    db.sql(Sql {
        postgres: "UPDATE push_queue SET lease_until = now() - interval '1 second',
                                         due_at = now() - interval '1 second'",
        sqlite: "UPDATE push_queue SET lease_until = 0, due_at = 0",
    })
    .await;
    let retaken = s.claim_pushes(10, Duration::from_secs(60)).await.unwrap();
    let mut users: Vec<String> = retaken.iter().map(|p| p.user.to_string()).collect();
    users.sort();
    assert_eq!(users, ["bea", "dan"]);
}

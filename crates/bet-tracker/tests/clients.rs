//! Fight events as clients see them: the creator, the acceptor and a
//! spectator of `fights:live`, each a real WebSocket client of a real
//! bridge, with the tracker and notify-svc in between.

use std::{sync::Arc, time::Duration};

use bet_tracker::{Source, Stats, TrackerConfig};
use futures::SinkExt;
use notify_auth::{DevIssuer, DevToken};
use notify_bridge::BridgeConfig;
use notify_harness::next_json_within;
use notify_store::{Database, PgStoreConfig};
use test_support::TestDb;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Fight events pass through the tracker's poll: more than a bare publish.
const FRAME_WAIT: Duration = Duration::from_secs(20);

/// The next `n` message frames: (event, topic or "inbox", message id, fight id).
async fn messages(ws: &mut Socket, n: usize) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = next_json_within(ws, FRAME_WAIT).await;
        if f["type"] == "message" {
            out.push((
                f["event"].as_str().unwrap().to_owned(),
                f["topic"].as_str().unwrap_or("inbox").to_owned(),
                f["id"].as_str().unwrap().to_owned(),
                f["data"]["fight"]["fight_id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn creator_acceptor_and_spectator_each_see_their_events_once_in_order() {
    let db = TestDb::create().await;
    let stop = CancellationToken::new();
    let svc =
        notify_harness::InProcessSvc::start(notify_svc::Config::for_database(&db.url).unwrap())
            .await;
    let grpc = svc.url();

    let issuer = Arc::new(DevIssuer::generate("http://dev", "app").unwrap());
    let verifier = issuer.verifier();
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}/ws", ws_listener.local_addr().unwrap());
    let bridge = BridgeConfig::new(
        "bridge-fights",
        &notify_bridge::SocketArgs::from_env(),
        verifier,
        vec![grpc.clone()],
    );
    tokio::spawn(notify_bridge::run(bridge, ws_listener, stop.clone()));
    let connect = |user: &str| {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        let token = issuer.mint(&DevToken::access(user)).unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        async move {
            test_support::eventually("the bridge takes clients", Duration::from_secs(20), || {
                let req = req.clone();
                async move {
                    tokio_tungstenite::connect_async(req)
                        .await
                        .ok()
                        .map(|(ws, _)| ws)
                }
            })
            .await
        }
    };
    let (mut cora, mut abe, mut sam) = (
        connect("cora").await,
        connect("abe").await,
        connect("sam").await,
    );
    for ws in [&mut cora, &mut abe, &mut sam] {
        assert_eq!(next_json_within(ws, FRAME_WAIT).await["type"], "welcome");
    }
    sam.send(Message::text(
        r#"{"action":"subscribe","topic":"fights:live"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json_within(&mut sam, FRAME_WAIT).await["type"],
        "subscribed"
    );

    let tracker_stop = CancellationToken::new();
    let source = Source::new(
        &Database::Postgres(PgStoreConfig::new(db.url.clone())),
        "bet-tracker",
    )
    .unwrap();
    tokio::spawn(bet_tracker::run(
        TrackerConfig::new("t-ws", &grpc, &bet_tracker::LoopArgs::from_env()),
        source,
        Arc::new(Stats::default()),
        tracker_stop.clone(),
    ));
    let (sql, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    sql.batch_execute(
        "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
           VALUES ('f9', 'cora', 500, 'EUR', 'open', now() + interval '1 hour');
         UPDATE fights SET status = 'accepted', acceptor_id = 'abe' WHERE id = 'f9';
         UPDATE fights SET status = 'completed', winner_id = 'cora' WHERE id = 'f9';
         INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
           VALUES ('f10', 'cora', 100, 'EUR', 'open', now() + interval '1 hour');
         UPDATE fights SET stake = 200 WHERE id = 'f10';
         UPDATE fights SET status = 'cancelled' WHERE id = 'f10';
         INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
           VALUES ('f11', 'cora', 100, 'EUR', 'open', now() - interval '1 second');",
    )
    .await
    .unwrap();

    let names = |got: &[(String, String, String, String)]| {
        got.iter()
            .filter(|m| m.3 == "f9")
            .map(|(event, feed, ..)| format!("{event}@{feed}"))
            .collect::<Vec<_>>()
    };
    // Fights go concurrently: each fight's events in order, fights apart.
    let cora_got = messages(&mut cora, 7).await;
    let of = |fight: &str| {
        cora_got
            .iter()
            .filter(|m| m.3 == fight)
            .map(|(event, feed, ..)| format!("{event}@{feed}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("f9"),
        [
            "fight_created@inbox",
            "fight_accepted@inbox",
            "fight_completed@inbox"
        ]
    );
    assert_eq!(of("f10"), ["fight_created@inbox", "fight_cancelled@inbox"]);
    assert_eq!(of("f11"), ["fight_created@inbox", "fight_expired@inbox"]);
    let abe_got = messages(&mut abe, 2).await;
    assert_eq!(
        names(&abe_got),
        ["fight_accepted@inbox", "fight_completed@inbox"]
    );
    // The lobby sees every fight: 3 + 3 (an edit is lobby news, not inbox
    // news) + 2 events.
    let sam_got = messages(&mut sam, 8).await;
    let updated: Vec<_> = sam_got
        .iter()
        .filter(|m| m.3 == "f10")
        .map(|m| m.0.as_str())
        .collect();
    assert_eq!(
        updated,
        ["fight_created", "fight_updated", "fight_cancelled"]
    );
    assert_eq!(
        names(&sam_got),
        [
            "fight_created@fights:live",
            "fight_accepted@fights:live",
            "fight_completed@fights:live"
        ]
    );
    for got in [&cora_got, &abe_got, &sam_got] {
        let ids: std::collections::HashSet<&str> = got.iter().map(|m| m.2.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "distinct message ids");
    }
    // Exactly once: nothing else arrives for a while.
    for ws in [&mut cora, &mut abe, &mut sam] {
        let extra = tokio::time::timeout(Duration::from_millis(700), async {
            loop {
                let f = next_json_within(ws, FRAME_WAIT).await;
                if f["type"] == "message" {
                    return f;
                }
            }
        })
        .await;
        assert!(extra.is_err(), "an extra message: {extra:?}");
    }
    tracker_stop.cancel();
    stop.cancel();
}

//! What operators read, from the real binaries — notify-svc, a bridge,
//! bet-tracker and notify-ingest on Postgres, with API tokens as in
//! production: every `/metrics` parses as Prometheus text and the key series
//! move when a message, a fight event and an outbox row flow end to end (and
//! when callers are refused);
//! `/info` tells version, commit and settings without a single secret.

use std::time::Duration;

use futures::SinkExt;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::{
    TestDb, TestDir, eventually, free_port, http_get,
    process::{ServiceProcess, sibling_binary},
    prometheus::{Scrape, parse},
    wait_ready,
};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Holds an `@`, percent-encoded as the driver needs it.
const PASSWORD: &str = "hunter2%40db-secret";
/// Given the other way Postgres URLs take one.
const QUERY_PASSWORD: &str = "query-password-secret";
const BRIDGE_TOKEN: &str = "bridge-token-0123456789abcdef";
const TRACKER_TOKEN: &str = "tracker-token-0123456789abcdef";
const CLI_TOKEN: &str = "cli-token-0123456789abcdefgh";
const INGEST_TOKEN: &str = "ingest-token-0123456789abcdef";

async fn scrape(addr: &str) -> Scrape {
    let answer = http_get(addr, "/metrics").await.unwrap_or_default();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or(("", ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    parse(body).unwrap_or_else(|e| panic!("{addr}/metrics is not Prometheus text: {e}\n{body}"))
}

async fn info(addr: &str) -> (String, Value) {
    let answer = http_get(addr, "/info").await.unwrap_or_default();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{addr}/info: {e}: {body}"));
    (body, json)
}

#[tokio::test]
async fn metrics_move_when_messages_flow_and_info_keeps_secrets() {
    let mut ops = Ops::start().await;
    ops.info_tells_settings_and_no_secret().await;
    let svc_before = scrape(&ops.svc_http).await;
    let bridge_before = scrape(&ops.bridge_http).await;
    // Alice stays online: the gauges below count her socket.
    let _alice = ops.a_message_a_fight_and_refused_callers_flow().await;
    let svc_after = svc_series_moved(&ops, &svc_before).await;
    let bridge_after = bridge_series_moved(&ops, &bridge_before).await;
    let tracker_after = tracker_series_moved(&ops).await;
    let ingest_after = ingest_series_moved(&ops).await;
    every_queried_series_is_exported(&[&svc_after, &bridge_after, &tracker_after, &ingest_after]);
    for p in [
        &mut ops.ingest,
        &mut ops.tracker,
        &mut ops.bridge,
        &mut ops.svc,
    ] {
        p.kill9().await;
    }
}

/// notify-svc, a bridge, bet-tracker and notify-ingest (relaying the
/// database's `notify_outbox`) on Postgres, with API tokens and a database
/// password as in production.
struct Ops {
    db: TestDb,
    data: TestDir,
    grpc: String,
    ws: String,
    svc_http: String,
    bridge_http: String,
    tracker_http: String,
    ingest_http: String,
    svc: ServiceProcess,
    bridge: ServiceProcess,
    tracker: ServiceProcess,
    ingest: ServiceProcess,
}

impl Ops {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let data = TestDir::create("ops");
        let db_url = db.url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{PASSWORD}@"),
            1,
        );
        let separator = if db_url.contains('?') { '&' } else { '?' };
        let db_url = format!("{db_url}{separator}password={QUERY_PASSWORD}");
        assert!(
            db_url.contains(PASSWORD),
            "trust auth ignores the password: {db_url}"
        );
        let exe = env!("CARGO_BIN_EXE_notify");
        let port = || format!("127.0.0.1:{}", free_port());
        let (grpc, svc_http, ws, bridge_http, tracker_http, ingest_http) =
            (port(), port(), port(), port(), port(), port());
        let mut svc = ServiceProcess::new("notify-svc", sibling_binary(exe, "notify-svc"))
            .env("NOTIFY_GRPC_ADDR", &grpc)
            .env("NOTIFY_HTTP_ADDR", &svc_http)
            .env("DATABASE_URL", &db_url)
            .env(
                "NOTIFY_API_TOKENS",
                format!(
                    "bridge:bridge={BRIDGE_TOKEN},tracker:publish@fight|fights={TRACKER_TOKEN},\
                     cli:publish+admin={CLI_TOKEN},ingest:publish={INGEST_TOKEN}"
                ),
            );
        let url = format!("http://{grpc}");
        let mut bridge =
            ServiceProcess::dev_bridge(exe, "bridge", &ws, &bridge_http, &url, &data.path)
                .env("BRIDGE_NOTIFY_TOKEN", BRIDGE_TOKEN)
                .env("BRIDGE_ID", "ops-bridge");
        let mut tracker = ServiceProcess::new("bet-tracker", sibling_binary(exe, "bet-tracker"))
            .env("DATABASE_URL", &db_url)
            .env("TRACKER_NOTIFY_URL", format!("http://{grpc}"))
            .env("TRACKER_NOTIFY_TOKEN", TRACKER_TOKEN)
            .env("TRACKER_HTTP_ADDR", &tracker_http)
            .env("TRACKER_ID", "ops-tracker");
        let mut ingest = ServiceProcess::new("notify-ingest", sibling_binary(exe, "notify-ingest"))
            .env("INGEST_OUTBOX_DATABASE_URL", &db_url)
            .env("INGEST_NOTIFY_URL", format!("http://{grpc}"))
            .env("INGEST_NOTIFY_TOKEN", INGEST_TOKEN)
            .env("INGEST_HTTP_ADDR", &ingest_http)
            .env("INGEST_OUTBOX_RELAY_ID", "ops-ingest");
        svc.start();
        wait_ready(&svc_http).await;
        bridge.start();
        tracker.start();
        ingest.start();
        wait_ready(&bridge_http).await;
        wait_ready(&tracker_http).await;
        wait_ready(&ingest_http).await;
        Self {
            db,
            data,
            grpc,
            ws,
            svc_http,
            bridge_http,
            tracker_http,
            ingest_http,
            svc,
            bridge,
            tracker,
            ingest,
        }
    }

    /// /info: who runs, built from what, configured how; no secret anywhere.
    async fn info_tells_settings_and_no_secret(&self) {
        let (svc_http, bridge_http) = (&self.svc_http, &self.bridge_http);
        for (addr, service) in [
            (svc_http, "notify-svc"),
            (bridge_http, "bridge"),
            (&self.tracker_http, "bet-tracker"),
            (&self.ingest_http, "notify-ingest"),
        ] {
            let (body, json) = info(addr).await;
            assert_eq!(json["service"], service, "{body}");
            assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
            assert!(
                !json["commit"].as_str().unwrap_or_default().is_empty(),
                "{body}"
            );
            assert!(
                json["settings"].as_object().is_some_and(|s| s.len() > 3),
                "{body}"
            );
            for secret in [
                PASSWORD,
                "db-secret",
                QUERY_PASSWORD,
                BRIDGE_TOKEN,
                TRACKER_TOKEN,
                CLI_TOKEN,
                INGEST_TOKEN,
            ] {
                assert!(
                    !body.contains(secret),
                    "{service} /info shows a secret: {body}"
                );
            }
        }
        let (_, svc_info) = info(svc_http).await;
        assert!(
            svc_info["settings"]["api_token_callers"]
                .as_str()
                .is_some_and(|c| c.contains("bridge") && c.contains("cli")),
            "callers by name: {svc_info}"
        );
        let (_, bridge_info) = info(bridge_http).await;
        assert_eq!(bridge_info["settings"]["notify_token"], "<redacted>");
    }

    /// A user online, a message to them, their ack; a fight of theirs
    /// emitted by the tracker; an outbox row relayed by notify-ingest; callers
    /// refused (a wrong API token, a
    /// garbage WebSocket token). Returns alice's open socket.
    async fn a_message_a_fight_and_refused_callers_flow(&self) -> Socket {
        let (ws, grpc) = (&self.ws, &self.grpc);
        let issuer = notify_auth::DevIssuer::load_or_create(
            &self.data.join(notify_auth::DEV_KEY_FILE),
            notify_auth::DEV_ISSUER,
            notify_auth::DEV_CLIENT_ID,
        )
        .unwrap();
        let token = issuer
            .mint(&notify_auth::DevToken::access("alice"))
            .unwrap();
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token={token}"))
                .await
                .unwrap();
        assert_eq!(
            notify_harness::next_json(&mut socket).await["type"],
            "welcome"
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer = |token: &'static str| {
            move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(req)
            }
        };
        let mut cli = NotifyClient::with_interceptor(channel.clone(), bearer(CLI_TOKEN));
        cli.publish(pb::PublishRequest {
            target: Some(pb::publish_request::Target::UserId("alice".into())),
            event: "ops.check".into(),
            data: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let message = notify_harness::next_json(&mut socket).await;
        assert_eq!(message["event"], "ops.check", "{message}");

        // A fight of alice's: BetService writes it, the tracker emits it.
        let (sql, conn) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        sql.batch_execute(
            "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline) \
             VALUES ('ops-f1', 'alice', 500, 'EUR', 'open', now() + interval '1 hour')",
        )
        .await
        .unwrap();
        let fight = notify_harness::next_json(&mut socket).await;
        assert_eq!(fight["event"], "fight_created", "{fight}");

        // A service's outbox row: notify-ingest relays it.
        sql.batch_execute(
            r#"INSERT INTO notify_outbox (publish) VALUES
               ('{"user_id":"alice","event":"order_paid","data":{"order":42}}')"#,
        )
        .await
        .unwrap();
        let paid = notify_harness::next_json(&mut socket).await;
        assert_eq!(paid["event"], "order_paid", "{paid}");
        socket
            .send(Message::text(format!(
                r#"{{"action":"ack","seq":{}}}"#,
                paid["seq"]
            )))
            .await
            .unwrap();

        // Callers refused: a wrong API token, a garbage WebSocket token.
        let mut stranger =
            NotifyClient::with_interceptor(channel, bearer("not-a-token-of-ours-at-all"));
        let refused = stranger
            .publish(pb::PublishRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let upgrade = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token=garbage")).await;
        assert!(upgrade.is_err(), "a garbage token is refused");
        socket
    }
}

async fn svc_series_moved(ops: &Ops, svc_before: &Scrape) -> Scrape {
    let svc_http = &ops.svc_http;
    let svc_after = eventually("svc metrics moved", Duration::from_secs(10), || async {
        let s = scrape(svc_http).await;
        (s.value("notify_deliveries_total", &[]) >= 2.0).then_some(s)
    })
    .await;
    let publish_ok = [("method", "Publish"), ("code", "OK")];
    for (name, labels) in [
        ("notify_rpc_requests_total", &publish_ok[..]),
        ("notify_rpc_seconds_count", &publish_ok[..]),
        ("notify_messages_committed_total", &[][..]),
        ("notify_commit_batch_items_count", &[][..]),
        ("notify_commit_seconds_count", &[][..]),
        ("notify_db_pool_wait_seconds_count", &[][..]),
        ("notify_deliveries_total", &[][..]),
        (
            "notify_auth_failures_total",
            &[("reason", "unknown_token")][..],
        ),
    ] {
        assert!(
            svc_after.value(name, labels) > svc_before.value(name, labels),
            "{name}{labels:?} did not move: {} -> {}",
            svc_before.value(name, labels),
            svc_after.value(name, labels)
        );
    }
    assert_eq!(
        svc_after.get("notify_bridge_connections", &[("bridge", "ops-bridge")]),
        Some(1.0)
    );
    assert_eq!(svc_after.get("notify_bridges_attached", &[]), Some(1.0));
    assert_eq!(svc_after.get("notify_ready", &[]), Some(1.0));
    assert!(svc_after.value("notify_db_pool_connections", &[("state", "open")]) >= 1.0);
    assert_eq!(svc_after.get("notify_delivery_drops_total", &[]), Some(0.0));

    svc_after
}

async fn bridge_series_moved(ops: &Ops, bridge_before: &Scrape) -> Scrape {
    let bridge_http = &ops.bridge_http;
    let frames_before = bridge_before.value("bridge_frames_in_total", &[]);
    let bridge_after = eventually(
        "the ack reached the bridge",
        Duration::from_secs(10),
        || async {
            let s = scrape(bridge_http).await;
            (s.value("bridge_frames_in_total", &[]) > frames_before).then_some(s)
        },
    )
    .await;
    for name in [
        "bridge_connects_total",
        "bridge_messages_out_total",
        "bridge_frames_in_total",
    ] {
        assert!(
            bridge_after.value(name, &[]) > bridge_before.value(name, &[]),
            "{name} did not move"
        );
    }
    assert_eq!(bridge_after.get("bridge_connections", &[]), Some(1.0));
    assert_eq!(bridge_after.get("bridge_links_attached", &[]), Some(1.0));
    assert!(
        bridge_after
            .0
            .iter()
            .any(|s| s.name == "bridge_refused_total" && s.value >= 1.0),
        "the garbage token is counted by reason"
    );
    assert!(
        bridge_after
            .get("bridge_replay_page_messages_count", &[])
            .is_some()
    );
    // Every welcomed connection waited for its registration once.
    assert!(
        bridge_after.value("bridge_registration_wait_seconds_count", &[]) >= 1.0,
        "the registration wait is observed per connect"
    );
    assert!(bridge_after.value("bridge_registration_wait_seconds_sum", &[]) > 0.0);

    bridge_after
}

async fn tracker_series_moved(ops: &Ops) -> Scrape {
    let tracker_http = &ops.tracker_http;
    let tracker_after = eventually("tracker emitted", Duration::from_secs(10), || async {
        let s = scrape(tracker_http).await;
        // The cursor moves just after the emit is answered.
        (s.value("tracker_events_total", &[]) >= 1.0 && s.value("tracker_cursor", &[]) >= 1.0)
            .then_some(s)
    })
    .await;
    assert_eq!(tracker_after.get("tracker_lease_active", &[]), Some(1.0));
    assert_eq!(tracker_after.get("tracker_cursor", &[]), Some(1.0));
    assert_eq!(
        tracker_after.value("tracker_events_by_kind_total", &[("kind", "created")]),
        1.0
    );
    assert!(
        tracker_after
            .get("tracker_outbox_lag_events", &[])
            .is_some()
    );

    tracker_after
}

async fn ingest_series_moved(ops: &Ops) -> Scrape {
    let ingest_http = &ops.ingest_http;
    let ingest_after = eventually("ingest relayed", Duration::from_secs(10), || async {
        let s = scrape(ingest_http).await;
        // The cursor moves just after the publish is answered.
        (s.value("ingest_relay_events_total", &[]) >= 1.0
            && s.value("ingest_relay_cursor", &[]) >= 1.0)
            .then_some(s)
    })
    .await;
    assert_eq!(
        ingest_after.get("ingest_relay_lease_active", &[]),
        Some(1.0)
    );
    assert_eq!(ingest_after.value("ingest_relay_rejected_total", &[]), 0.0);
    assert!(
        ingest_after
            .get("ingest_relay_outbox_lag_seconds", &[])
            .is_some()
    );
    ingest_after
}

/// Every series the Grafana dashboard and the alert rules query exists.
fn every_queried_series_is_exported(scrapes: &[&Scrape]) {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["deploy/grafana/notify.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&text).expect("the dashboard is JSON");
        }
        let referenced = series_named_in(&text);
        assert!(referenced.len() > 10, "{file}: {referenced:?}");
        for series in referenced {
            assert!(
                scrapes.iter().any(|s| s.declares(&series)),
                "{file} queries {series}, which no service exports"
            );
        }
    }
}

/// `notify_…`, `bridge_…`, `tracker_…` and `ingest_…` identifiers in a
/// query file (a table named in prose, such as `notify_outbox`, counts too:
/// say "the outbox table" there instead).
fn series_named_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let is_part = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_part(bytes[i - 1]);
        let rest = &text[i..];
        if starts_word
            && ["notify_", "bridge_", "tracker_", "ingest_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let len = rest.bytes().take_while(|b| is_part(*b)).count();
            found.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    found
}

#[tokio::test]
async fn info_hides_a_password_holding_a_raw_at_sign() {
    // The driver cannot use this URL (it ends the user info at the first
    // `@`), so notify-svc waits for its database; /info already answers.
    let exe = env!("CARGO_BIN_EXE_notify");
    let http = format!("127.0.0.1:{}", free_port());
    let mut svc = ServiceProcess::notify_svc(exe, &format!("127.0.0.1:{}", free_port()), "")
        .env("NOTIFY_HTTP_ADDR", &http)
        .env(
            "DATABASE_URL",
            "postgres://app:s3cr@t-tail@127.0.0.1:1/notify?sslmode=disable&password=q-secret",
        );
    svc.start();
    let body = eventually("/info answers", Duration::from_secs(30), || {
        let http = http.clone();
        async move {
            let answer = http_get(&http, "/info").await?;
            answer
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
        }
    })
    .await;
    for secret in ["s3cr", "t-tail", "q-secret"] {
        assert!(!body.contains(secret), "/info shows {secret:?}: {body}");
    }
    assert!(
        body.contains("postgres://app:***@127.0.0.1:1/notify"),
        "{body}"
    );
}

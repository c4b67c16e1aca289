//! Who may call the Notify API: static tokens with the rights their entries
//! name, Cognito-style client-credentials (M2M) access tokens verified
//! against a JWKS, whose scopes are the rights (notify/publish,
//! notify/admin, notify/bridge, notify/publish:NAMESPACE), and dev mode.
//! Tokens come from the dev issuer, signed with a real RSA key and checked
//! through a real `file:` JWKS, over real gRPC.

mod common;

use common::{Svc, to_user};
use notify_auth::{DevIssuer, DevToken, TokenUse};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::json;
use test_support::{TestDb, TestDir};
use tonic::{Code, Request, transport::Channel};

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_test";
const STATIC: &str = "static-token-of-16+chars";

struct M2m {
    svc: Svc,
    /// Mints tokens for app client `billing` (allowed).
    billing: DevIssuer,
    /// Same key, app client `rogue` (not allowed).
    rogue: DevIssuer,
    _dir: TestDir,
}

impl M2m {
    async fn start() -> Self {
        let dir = TestDir::create("m2m");
        let key = dir.join("key.der");
        let billing = DevIssuer::load_or_create(&key, ISSUER, "billing").unwrap();
        let rogue = DevIssuer::load_or_create(&key, ISSUER, "rogue").unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, billing.jwks()).unwrap();
        let db = TestDb::create().await;
        let jwks_url = format!("file:{}", jwks.display());
        let tokens = format!("ops:publish+admin={STATIC}");
        let cfg = common::config(
            &db.url,
            &[
                "--auth-jwks-url",
                &jwks_url,
                "--auth-issuer",
                ISSUER,
                "--auth-client-ids",
                "billing,tracker",
                "--api-tokens",
                &tokens,
            ],
        );
        Self {
            svc: Svc::start_config(db, cfg).await,
            billing,
            rogue,
            _dir: dir,
        }
    }

    fn token(&self, scopes: &[&str]) -> String {
        self.billing
            .mint(&DevToken {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..DevToken::access("billing")
            })
            .unwrap()
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn presence(user: &str) -> pb::GetPresenceRequest {
    pb::GetPresenceRequest {
        target: Some(pb::get_presence_request::Target::UserId(user.into())),
    }
}

async fn client(svc: &Svc) -> NotifyClient<Channel> {
    svc.client().await
}

#[tokio::test]
async fn scopes_are_rights_and_each_refusal_says_which() {
    let m = M2m::start().await;
    let mut api = client(&m.svc).await;

    // notify/publish publishes, and is refused presence with the scope named.
    let publisher = m.token(&["notify/publish"]);
    let sent = api
        .publish(bearer(to_user("ann", "1"), &publisher))
        .await
        .expect("publish with notify/publish")
        .into_inner();
    assert_eq!(sent.seq, 1);
    let denied = api
        .get_presence(bearer(presence("ann"), &publisher))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("notify/admin") && denied.message().contains("billing"),
        "{}",
        denied.message()
    );

    // notify/admin reads presence and history, and may not publish.
    let admin = m.token(&["notify/admin"]);
    api.get_presence(bearer(presence("ann"), &admin))
        .await
        .expect("presence with notify/admin");
    let page = api
        .history(bearer(
            pb::HistoryRequest {
                target: Some(pb::history_request::Target::UserId("ann".into())),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("history with notify/admin")
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    let denied = api
        .publish(bearer(to_user("ann", "2"), &admin))
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), denied.message().contains("notify/publish")),
        (Code::PermissionDenied, true),
        "{}",
        denied.message()
    );

    // No scope at all: every call is denied.
    let none = m.token(&[]);
    let denied = api
        .publish(bearer(to_user("ann", "3"), &none))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("has none"),
        "{}",
        denied.message()
    );

    // The static token keeps the rights its entry names beside the JWKS.
    api.get_presence(bearer(presence("ann"), STATIC))
        .await
        .expect("static token");
    api.publish(bearer(to_user("ann", "4"), STATIC))
        .await
        .expect("static token");
}

#[tokio::test]
async fn expired_foreign_id_and_unknown_tokens_are_unauthenticated() {
    let m = M2m::start().await;
    let mut api = client(&m.svc).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |iss: &str, exp: u64| {
        json!({
            "sub": "billing", "iss": iss, "exp": exp, "iat": now - 7200,
            "token_use": "access", "client_id": "billing", "scope": "notify/publish",
        })
    };
    let expired = m.billing.sign(&claims(ISSUER, now - 3600)).unwrap();
    let foreign = m
        .billing
        .sign(&claims(
            "https://cognito-idp.us-east-1.amazonaws.com/other",
            now + 3600,
        ))
        .unwrap();
    let id_token = m
        .billing
        .mint(&DevToken {
            token_use: TokenUse::Id,
            scopes: vec!["notify/publish".into()],
            ..DevToken::access("billing")
        })
        .unwrap();
    let rogue = m
        .rogue
        .mint(&DevToken {
            scopes: vec!["notify/publish".into()],
            ..DevToken::access("rogue")
        })
        .unwrap();
    for (token, why) in [
        (expired.as_str(), "expired"),
        (foreign.as_str(), "issuer"),
        (id_token.as_str(), "ID token"),
        (rogue.as_str(), "rogue"),
        ("garbage", "malformed"),
    ] {
        let refused = api
            .publish(bearer(to_user("ann", "1"), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{why}");
        assert!(
            refused.message().contains(why),
            "{why}: {}",
            refused.message()
        );
    }
    let anonymous = api.publish(to_user("ann", "1")).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_notify_bridge_may_attach_a_bridge() {
    let m = M2m::start().await;
    let channel = Channel::from_shared(format!("http://{}", m.svc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut link = pb::bridge_link_client::BridgeLinkClient::new(channel);
    let hello = || {
        tokio_stream::iter(vec![pb::BridgeUp {
            msg: Some(pb::bridge_up::Msg::Hello(pb::BridgeHello {
                bridge_id: "b1".into(),
                connections: Vec::new(),
            })),
        }])
    };
    let denied = link
        .attach(bearer(
            hello(),
            &m.token(&["notify/publish", "notify/admin"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("notify/bridge"),
        "{}",
        denied.message()
    );
    link.attach(bearer(hello(), &m.token(&["notify/bridge"])))
        .await
        .expect("a bridge's token attaches");
}

#[tokio::test]
async fn tokens_of_a_real_user_pool_are_checked_against_its_jwks() {
    // The moto stand-in signs tokens with its own key and serves the JWKS;
    // it has no client-credentials grant, so a pool user's access token
    // stands in: verified through the pool's JWKS, it carries no notify/*
    // scope and is denied with the scope named; the ID token is no caller.
    let pool = test_support::cognito::TestPool::create().await;
    pool.add_user("svc-user", None).await;
    let tokens = pool.sign_in("svc-user").await;
    let db = TestDb::create().await;
    let (jwks, issuer) = (pool.jwks_url(), pool.issuer());
    let cfg = common::config(
        &db.url,
        &[
            "--auth-jwks-url",
            &jwks,
            "--auth-issuer",
            &issuer,
            "--auth-client-ids",
            &pool.client_id,
        ],
    );
    let svc = Svc::start_config(db, cfg).await;
    let mut api = client(&svc).await;

    let denied = api
        .publish(bearer(to_user("ann", "1"), &tokens.access))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "{}",
        denied.message()
    );
    assert!(
        denied.message().contains("notify/publish"),
        "{}",
        denied.message()
    );

    let id = api
        .publish(bearer(to_user("ann", "1"), &tokens.id))
        .await
        .unwrap_err();
    assert_eq!(id.code(), Code::Unauthenticated, "{}", id.message());

    // A token of another pool (another issuer and key) is unauthenticated.
    let other = test_support::cognito::TestPool::create().await;
    other.add_user("svc-user", None).await;
    let foreign = other.sign_in("svc-user").await;
    let refused = api
        .publish(bearer(to_user("ann", "1"), &foreign.access))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "{}",
        refused.message()
    );
    svc.stop().await;
}

const SHOP: &str = "shop-token-publish-only";
const OPS: &str = "ops-token-admin-only-000";
const EDGE: &str = "edge-token-bridge-only-0";
const BETS: &str = "bets-token-fight-spaces-";

/// notify-svc with four static callers, one right (or namespace) each.
async fn with_static_callers() -> Svc {
    let db = TestDb::create().await;
    let tokens =
        format!("shop={SHOP},ops:admin={OPS},edge:bridge={EDGE},bets:publish@fight|fights={BETS}");
    let cfg = common::config(&db.url, &["--api-tokens", &tokens]);
    Svc::start_config(db, cfg).await
}

fn hello(bridge: &str) -> impl tokio_stream::Stream<Item = pb::BridgeUp> + use<> {
    tokio_stream::iter(vec![pb::BridgeUp {
        msg: Some(pb::bridge_up::Msg::Hello(pb::BridgeHello {
            bridge_id: bridge.into(),
            connections: Vec::new(),
        })),
    }])
}

fn watch_user(user: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        target: Some(pb::watch_request::Target::UserId(user.into())),
        ..Default::default()
    }
}

fn history_of(user: &str) -> pb::HistoryRequest {
    pb::HistoryRequest {
        target: Some(pb::history_request::Target::UserId(user.into())),
        ..Default::default()
    }
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, needle: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{what}: {}",
        status.message()
    );
}

#[tokio::test]
async fn a_static_token_has_only_the_rights_its_entry_names_publish_by_default() {
    let svc = with_static_callers().await;
    let mut api = client(&svc).await;
    let channel = Channel::from_shared(format!("http://{}", svc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut link = pb::bridge_link_client::BridgeLinkClient::new(channel);

    // A producer's token publishes, and nothing else.
    api.publish(bearer(to_user("ann", "1"), SHOP))
        .await
        .expect("the default right is publish");
    assert_denied(
        link.attach(bearer(hello("edge-1"), SHOP)).await,
        "notify/bridge",
        "a producer attaching as a bridge",
    );
    assert_denied(
        api.watch(bearer(watch_user("ann"), SHOP)).await,
        "notify/admin",
        "a producer watching a user's inbox",
    );
    assert_denied(
        api.history(bearer(history_of("ann"), SHOP)).await,
        "notify/admin",
        "a producer reading a user's inbox",
    );
    assert_denied(
        api.get_presence(bearer(presence("ann"), SHOP)).await,
        "notify/admin",
        "a producer reading presence",
    );
    assert_denied(
        api.watch_connections(bearer(pb::WatchConnectionsRequest::default(), SHOP))
            .await,
        "notify/admin",
        "a producer watching everyone's connections",
    );

    // The bridge's token attaches and replays feeds, and cannot publish.
    let mut attached = link
        .attach(bearer(hello("edge-1"), EDGE))
        .await
        .expect("a bridge's token attaches")
        .into_inner();
    assert!(attached.message().await.is_ok());
    api.history(bearer(history_of("ann"), EDGE))
        .await
        .expect("a bridge replays feeds");
    assert_denied(
        api.publish(bearer(to_user("ann", "2"), EDGE)).await,
        "notify/publish",
        "a bridge publishing",
    );
    // A producer cannot take a real bridge's id over.
    assert_denied(
        link.attach(bearer(hello("edge-1"), SHOP)).await,
        "notify/bridge",
        "a producer taking over a bridge's id",
    );

    // The admin's token watches and reads, and cannot publish.
    api.watch(bearer(watch_user("ann"), OPS))
        .await
        .expect("an admin watches");
    api.watch_connections(bearer(pb::WatchConnectionsRequest::default(), OPS))
        .await
        .expect("an admin watches connections");
    let page = api
        .history(bearer(history_of("ann"), OPS))
        .await
        .expect("an admin reads history")
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_denied(
        api.publish(bearer(to_user("ann", "3"), OPS)).await,
        "notify/publish",
        "an admin-only token publishing",
    );
}

#[tokio::test]
async fn a_publish_right_limited_to_namespaces_stays_in_them() {
    let svc = with_static_callers().await;
    let mut api = client(&svc).await;
    let topic = |t: &str| pb::PublishRequest {
        target: Some(pb::publish_request::Target::Topic(t.into())),
        event: "e".into(),
        data: "{}".into(),
        ..Default::default()
    };
    api.publish(bearer(topic("fight:42"), BETS))
        .await
        .expect("its own namespace");
    api.publish(bearer(topic("fights:lobby"), BETS))
        .await
        .expect("its other namespace");
    api.publish(bearer(to_user("ann", "1"), BETS))
        .await
        .expect("users' inboxes are open to every publisher");
    assert_denied(
        api.publish(bearer(topic("room:lobby"), BETS)).await,
        "namespaces fight, fights only",
        "another namespace",
    );
    let broadcast = pb::PublishRequest {
        target: Some(pb::publish_request::Target::Broadcast(true)),
        ..topic("x:y")
    };
    assert_denied(
        api.publish(bearer(broadcast, BETS)).await,
        "broadcast",
        "a broadcast",
    );
    let batch = pb::PublishBatchRequest {
        requests: vec![topic("fight:1"), topic("room:1")],
    };
    let results = api
        .publish_batch(bearer(batch, BETS))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(
        results[0].result,
        Some(pb::publish_result::Result::Ok(_))
    ));
    assert!(
        matches!(&results[1].result, Some(pb::publish_result::Result::Error(e)) if e.code == Code::PermissionDenied as i32),
        "{:?}",
        results[1]
    );
    let subscribe = |t: &str| pb::SubscribeRequest {
        user_id: "ann".into(),
        topic: t.into(),
    };
    api.subscribe(bearer(subscribe("fight:42"), BETS))
        .await
        .expect("subscribing users to its namespace");
    assert_denied(
        api.subscribe(bearer(subscribe("room:lobby"), BETS)).await,
        "not \"room\"",
        "subscribing users to another namespace",
    );
}

#[tokio::test]
async fn an_m2m_scope_may_limit_publishing_to_a_namespace() {
    let m = M2m::start().await;
    let mut api = client(&m.svc).await;
    let limited = m.token(&["notify/publish:fight"]);
    let topic = |t: &str| pb::PublishRequest {
        target: Some(pb::publish_request::Target::Topic(t.into())),
        event: "e".into(),
        data: "{}".into(),
        ..Default::default()
    };
    api.publish(bearer(topic("fight:7"), &limited))
        .await
        .expect("notify/publish:fight publishes to fight:*");
    assert_denied(
        api.publish(bearer(topic("room:7"), &limited)).await,
        "namespaces fight only",
        "notify/publish:fight publishing to room:*",
    );
}

/// The notify-svc binary with `args` and no credentials in its environment:
/// its exit code and what it said.
async fn refusal_of(args: &[&str], db_url: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-svc"))
        .args(args)
        .args(["--http-addr", "127.0.0.1:0", "--database-url", db_url])
        .env_remove("NOTIFY_DEV")
        .env_remove("NOTIFY_API_TOKENS")
        .env_remove("NOTIFY_AUTH_JWKS_URL")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), out)
        .await
        .expect("it refuses at once, without serving")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn without_credentials_notify_svc_starts_only_in_dev_mode_and_only_on_loopback() {
    let db = TestDb::create().await;
    let (code, said) = refusal_of(&["--grpc-addr", "127.0.0.1:0"], &db.url).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("no caller credentials") && said.contains("--dev"),
        "{said}"
    );
    let (code, said) = refusal_of(&["--dev", "--grpc-addr", "0.0.0.0:0"], &db.url).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("loopback only"), "{said}");

    // Embedded (as `notify up` runs it): a listener off loopback is refused
    // before anything is served.
    let config = notify_svc::Config::for_database(&db.url).unwrap();
    let grpc = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ran = notify_svc::run(config, grpc, http, Default::default()).await;
    assert!(
        matches!(ran, Err(notify_svc::RunError::DevOffLoopback(_))),
        "{ran:?}"
    );

    // With credentials, any address: the credentials are required.
    let (port, http) = (test_support::free_port(), test_support::free_port());
    let mut serving = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-svc"))
        .args(["--grpc-addr", &format!("0.0.0.0:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--database-url", &db.url])
        .env("NOTIFY_API_TOKENS", format!("shop={SHOP}"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut api = test_support::eventually(
        "notify-svc with credentials serves",
        std::time::Duration::from_secs(20),
        || async move {
            NotifyClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .ok()
        },
    )
    .await;
    let anonymous = api.publish(to_user("ann", "1")).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    api.publish(bearer(to_user("ann", "1"), SHOP))
        .await
        .expect("a token's caller publishes");
    serving.kill().await.unwrap();
}

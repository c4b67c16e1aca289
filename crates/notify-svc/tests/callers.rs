//! Who may call the Notify API: static tokens, and Cognito-style
//! client-credentials (M2M) access tokens verified against a JWKS, whose
//! scopes are the rights (notify/publish, notify/admin, notify/bridge).
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
        let tokens = format!("ops={STATIC}");
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

    // The static token keeps every right beside the JWKS.
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

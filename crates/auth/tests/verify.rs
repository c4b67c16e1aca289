//! Token verification as a bridge uses it: dev tokens accepted, every kind of
//! bad token refused with its reason, JWKS fetched from https://, http://
//! and file:.

use std::time::Duration;

use base64::Engine;
use notify_auth::{
    AuthError, DevIssuer, DevToken, KeySet, KeySource, TokenUse, Verifier, VerifierConfig,
};
use serde_json::json;

const ISSUER: &str = "http://127.0.0.1/dev-pool";
const CLIENT: &str = "notify-dev";

fn config() -> VerifierConfig {
    VerifierConfig {
        issuer: ISSUER.into(),
        client_ids: vec![CLIENT.into()],
        leeway: Duration::from_secs(5),
    }
}

fn setup() -> (DevIssuer, Verifier) {
    let issuer = DevIssuer::generate(ISSUER, CLIENT).unwrap();
    let verifier = Verifier::new(KeySet::new(issuer.key_source()), config());
    (issuer, verifier)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({
        "sub": "alice", "iss": ISSUER, "iat": now(), "exp": now() + 600,
        "token_use": "access", "client_id": CLIENT,
    })
}

#[tokio::test]
async fn dev_tokens_verify_with_their_claims() {
    let (issuer, verifier) = setup();
    let token = issuer
        .mint(&DevToken {
            realm: Some("eu".into()),
            groups: vec!["admin".into()],
            scopes: vec!["notify/publish".into()],
            ..DevToken::access("alice")
        })
        .unwrap();
    let id = verifier.verify(&token).await.unwrap();
    assert_eq!(id.user.as_str(), "alice");
    assert_eq!(id.token_use, TokenUse::Access);
    assert_eq!(id.client_id, CLIENT);
    assert_eq!(id.realm.as_deref(), Some("eu"));
    assert!(id.in_group("admin"));
    assert_eq!(id.scopes, ["notify/publish"]);

    let id_token = issuer
        .mint(&DevToken {
            token_use: TokenUse::Id,
            ..DevToken::access("bob")
        })
        .unwrap();
    let id = verifier.verify(&id_token).await.unwrap();
    assert_eq!((id.user.as_str(), id.token_use), ("bob", TokenUse::Id));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason() {
    let (issuer, verifier) = setup();
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        issuer.sign(&c).unwrap()
    };
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = b64(&claims().to_string());
    let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    // HS256 "signed" with the RSA public key as the secret: the classic confusion.
    let jwks: serde_json::Value = serde_json::from_str(issuer.jwks()).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(issuer.kid().to_owned());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
    )
    .unwrap();
    let good = issuer.sign(&claims()).unwrap();
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    // Someone else's claims under alice's signature.
    let forged_payload = with(json!({"sub": "mallory"}))
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let tampered = format!("{head}.{forged_payload}.{sig}");
    let mut unknown_kid_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    unknown_kid_header.kid = Some("nope".into());
    let unknown_kid = format!(
        "{}.{payload}.{sig}",
        b64(&serde_json::to_string(&unknown_kid_header).unwrap())
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", with(json!({"exp": now() - 60})), "expired"),
        (
            "not yet valid",
            with(json!({"nbf": now() + 600})),
            "not_yet_valid",
        ),
        (
            "foreign issuer",
            with(json!({"iss": "https://evil.example/pool"})),
            "issuer",
        ),
        (
            "wrong client",
            with(json!({"client_id": "other-app"})),
            "client",
        ),
        (
            "a sub that would own others' private topics",
            with(json!({"sub": "alice:inbox"})),
            "claims",
        ),
        (
            "id token for another app",
            with(json!({"token_use": "id", "client_id": null, "aud": "other-app"})),
            "client",
        ),
        (
            "refresh token",
            with(json!({"token_use": "refresh"})),
            "token_use",
        ),
        (
            "no exp",
            issuer
                .sign(
                    &json!({"sub": "a", "iss": ISSUER, "token_use": "access", "client_id": CLIENT}),
                )
                .unwrap(),
            "claims",
        ),
        (
            "no sub",
            issuer
                .sign(&json!({"iss": ISSUER, "exp": now() + 60, "token_use": "access", "client_id": CLIENT}))
                .unwrap(),
            "claims",
        ),
        (
            "no iss",
            issuer
                .sign(&json!({"sub": "a", "exp": now() + 60, "token_use": "access", "client_id": CLIENT}))
                .unwrap(),
            "claims",
        ),
        (
            "signature not base64",
            format!("{head}.{}.!!", good.split('.').nth(1).unwrap()),
            "malformed",
        ),
        (
            // 128 base64 characters: 96 whole bytes, canonical whatever they are.
            "signature cut short",
            format!("{head}.{}.{}", good.split('.').nth(1).unwrap(), &sig[..128]),
            "signature",
        ),
        ("alg none", alg_none, "malformed"),
        ("HS256 with the public key", hs256, "algorithm"),
        ("tampered payload", tampered, "signature"),
        ("unknown kid", unknown_kid, "unknown_kid"),
        ("garbage", "not.a.token".into(), "malformed"),
        ("empty", String::new(), "malformed"),
    ];
    for (name, token, reason) in cases {
        let err = verifier.verify(&token).await.expect_err(name);
        assert_eq!(err.reason(), reason, "{name}: {err}");
    }
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_tolerated() {
    let (issuer, verifier) = setup();
    let mut c = claims();
    c["exp"] = json!(now() - 2);
    c["nbf"] = json!(now() + 2);
    let token = issuer.sign(&c).unwrap();
    assert_eq!(
        verifier.verify(&token).await.unwrap().user.as_str(),
        "alice"
    );
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_gap() {
    let (issuer, verifier) = setup();
    verifier
        .verify(&issuer.sign(&claims()).unwrap())
        .await
        .unwrap();
    assert_eq!(verifier.keys().fetches(), 1);
    let stranger = DevIssuer::generate(ISSUER, CLIENT).unwrap();
    for _ in 0..50 {
        let err = verifier
            .verify(&stranger.sign(&claims()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::UnknownKey(_)), "{err}");
    }
    assert_eq!(
        verifier.keys().fetches(),
        1,
        "an unknown-kid flood fetches nothing within 30 s"
    );
}

#[tokio::test]
async fn jwks_comes_from_http_and_from_a_file() {
    let issuer = DevIssuer::generate(ISSUER, CLIENT).unwrap();
    let token = issuer.mint(&DevToken::access("carol")).unwrap();

    let dir = std::env::temp_dir().join(format!("notify-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, issuer.jwks()).unwrap();
    let source = KeySource::parse(&format!("file:{}", file.display())).unwrap();
    let from_file = Verifier::new(KeySet::new(source), config());
    assert_eq!(
        from_file.verify(&token).await.unwrap().user.as_str(),
        "carol"
    );

    let addr = serve_jwks(issuer.jwks().to_owned(), None).await;
    let source = KeySource::parse(&format!("http://{addr}/pool/.well-known/jwks.json")).unwrap();
    let from_http = Verifier::new(KeySet::new(source), config());
    assert_eq!(
        from_http.verify(&token).await.unwrap().user.as_str(),
        "carol"
    );

    assert!(KeySource::parse("ftp://x").is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_dev_key_survives_restarts() {
    let dir = std::env::temp_dir().join(format!("notify-auth-key-{}", std::process::id()));
    let path = dir.join("dev-key.der");
    let first = DevIssuer::load_or_create(&path, ISSUER, CLIENT).unwrap();
    let token = first.mint(&DevToken::access("dan")).unwrap();
    let again = DevIssuer::load_or_create(&path, ISSUER, CLIENT).unwrap();
    assert_eq!(first.kid(), again.kid());
    let verifier = Verifier::new(KeySet::new(again.key_source()), config());
    assert_eq!(verifier.verify(&token).await.unwrap().user.as_str(), "dan");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn callers_racing_to_create_the_dev_key_all_get_the_same_one() {
    let dir = std::env::temp_dir().join(format!("notify-auth-race-{}", std::process::id()));
    for round in 0..2 {
        let path = dir.join(format!("dev-key-{round}.der"));
        let kids: Vec<String> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| DevIssuer::load_or_create(&path, ISSUER, CLIENT)))
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().unwrap().expect("no racer fails").kid().to_owned())
                .collect()
        });
        assert!(kids.iter().all(|k| k == &kids[0]), "one key won: {kids:?}");
        let again = DevIssuer::load_or_create(&path, ISSUER, CLIENT).unwrap();
        assert_eq!(
            again.kid(),
            kids[0],
            "the key on disk is the one handed out"
        );
    }
    let leftovers = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(leftovers, 2, "nothing written aside is left behind");
    std::fs::remove_dir_all(&dir).ok();
}

/// Serves the JWKS `body` on loopback, over TLS (the platform's own
/// listener TLS) when `tls` is given.
async fn serve_jwks(
    body: String,
    tls: Option<&test_support::tls::CertFiles>,
) -> std::net::SocketAddr {
    let tls = tls.map(|cert| {
        let files = notify_ops::tls::TlsFiles::from_settings(
            Some(cert.cert.clone()),
            Some(cert.key.clone()),
            notify_ops::tls::ClientAuth::Off,
        )
        .unwrap()
        .unwrap();
        notify_ops::tls::ServerTls::load(files, &[b"http/1.1"]).unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (tls, body) = (tls.clone(), body.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(socket) = tls.accept(socket).await {
                            answer(socket, &body).await;
                        }
                    }
                    None => answer(socket, &body).await,
                }
            });
        }
    });
    addr
}

async fn answer(mut socket: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = socket.read(&mut buf).await;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

#[tokio::test]
async fn keys_come_from_an_https_jwks_checked_against_its_ca() {
    let issuer = DevIssuer::generate(ISSUER, CLIENT).unwrap();
    let token = issuer.mint(&DevToken::access("dora")).unwrap();
    let pki = test_support::tls::TestPki::new("jwks");
    let addr = serve_jwks(issuer.jwks().to_owned(), Some(&pki.server("jwks"))).await;
    let url = format!(
        "https://localhost:{}/pool/.well-known/jwks.json",
        addr.port()
    );

    let trusted = KeySource::parse(&url)
        .unwrap()
        .with_ca(Some(pki.ca.clone()))
        .unwrap();
    let verifier = Verifier::new(KeySet::new(trusted), config());
    assert_eq!(verifier.verify(&token).await.unwrap().user.as_str(), "dora");

    // The system's roots do not know the test CA: no keys, no tokens.
    let untrusted = Verifier::new(KeySet::new(KeySource::parse(&url).unwrap()), config());
    let refused = untrusted.verify(&token).await.expect_err("unknown CA");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    // A CA file only makes sense for https.
    assert!(
        KeySource::parse("http://127.0.0.1/jwks.json")
            .unwrap()
            .with_ca(Some(pki.ca.clone()))
            .is_err()
    );
}

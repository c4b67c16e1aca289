//! `notify token`: the real binary mints a token the verifier accepts with the
//! same dev key.

use std::time::Duration;

use notify_auth::{
    DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, KeySet, KeySource, TokenUse, Verifier,
    VerifierConfig,
};

/// `notify token --data-dir DIR ARGS…`: its output, trimmed; it must succeed.
fn notify_token(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["token", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run notify token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn notify_token_mints_what_the_verifier_accepts() {
    let dir = std::env::temp_dir().join(format!("notify-token-{}", std::process::id()));
    let access = notify_token(
        &dir,
        &["--user", "alice", "--realm", "eu", "--groups", "admin,ops"],
    );
    let id = notify_token(&dir, &["--user", "alice", "--id-token"]);

    let issuer =
        DevIssuer::load_or_create(&dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID).unwrap();
    let verifier = Verifier::new(
        KeySet::new(issuer.key_source()),
        VerifierConfig {
            issuer: DEV_ISSUER.into(),
            client_ids: vec![DEV_CLIENT_ID.into()],
            leeway: Duration::from_secs(5),
        },
    );
    let who = verifier.verify(&access).await.unwrap();
    assert_eq!(
        (who.user.as_str(), who.realm.as_deref()),
        ("alice", Some("eu"))
    );
    assert_eq!(who.groups, ["admin", "ops"]);
    assert_eq!(verifier.verify(&id).await.unwrap().token_use, TokenUse::Id);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn notify_token_jwks_lets_a_verifier_trust_dev_tokens_from_a_file() {
    let dir = test_support::TestDir::create("token-jwks");
    let jwks = notify_token(&dir.path, &["--jwks"]);
    let token = notify_token(&dir.path, &["--user", "carol"]);
    let file = dir.join("jwks.json");
    std::fs::write(&file, &jwks).unwrap();
    let verifier = Verifier::new(
        KeySet::new(KeySource::parse(&format!("file:{}", file.display())).unwrap()),
        VerifierConfig {
            issuer: DEV_ISSUER.into(),
            client_ids: vec![DEV_CLIENT_ID.into()],
            leeway: Duration::from_secs(5),
        },
    );
    assert_eq!(
        verifier.verify(token.trim()).await.unwrap().user.as_str(),
        "carol"
    );
    // A JWKS and a user at once is a usage error, not a guess.
    let both = std::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["token", "--jwks", "--user", "x", "--data-dir"])
        .arg(&dir.path)
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
}

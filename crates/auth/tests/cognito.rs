//! crates/auth against a real Cognito API (moto's server mode, started by
//! scripts/test): a user of a pool signs in with USER_PASSWORD_AUTH, its
//! access and ID tokens pass the verifier through the pool's own JWKS; after
//! a global sign-out the access token is revoked; usernames resolve to
//! their `sub`. Each test makes a pool of its own.

use std::time::Duration;

use notify_auth::{Cognito, CognitoConfig, KeySet, KeySource, TokenUse, Verifier, VerifierConfig};
use test_support::cognito::{REGION, TestPool};

fn config(pool: &TestPool) -> CognitoConfig {
    CognitoConfig {
        endpoint_url: Some(pool.endpoint.clone()),
        credentials: Some(("test".into(), "test".into())),
        ..CognitoConfig::new(REGION, &pool.pool_id)
    }
}

/// Verifies against the pool's JWKS; the issuer is the AWS form, which the
/// stand-in's URL is not (both are configured, as in production).
fn verifier(pool: &TestPool) -> Verifier {
    Verifier::new(
        KeySet::new(KeySource::parse(&pool.jwks_url()).unwrap()),
        VerifierConfig {
            issuer: pool.issuer(),
            client_ids: vec![pool.client_id.clone()],
            leeway: Duration::from_secs(5),
        },
    )
}

async fn pool_with_alice() -> (TestPool, Cognito, String) {
    let pool = TestPool::create().await;
    pool.add_user("alice", Some("eu")).await;
    let cognito = Cognito::new(&config(&pool)).await;
    let sub = cognito.sub_of("alice").await.unwrap().expect("alice's sub");
    (pool, cognito, sub)
}

#[tokio::test]
async fn pool_tokens_pass_the_verifier_through_the_pools_jwks() {
    let (pool, _, sub) = pool_with_alice().await;
    let tokens = pool.sign_in("alice").await;
    let verifier = verifier(&pool);
    let access = verifier.verify(&tokens.access).await.expect("access token");
    assert_eq!(
        (
            access.user.as_str(),
            access.token_use,
            access.client_id.as_str()
        ),
        (sub.as_str(), TokenUse::Access, pool.client_id.as_str())
    );
    let id = verifier.verify(&tokens.id).await.expect("ID token");
    assert_eq!(
        (id.user.as_str(), id.token_use, id.realm.as_deref()),
        (sub.as_str(), TokenUse::Id, Some("eu"))
    );
}

#[tokio::test]
async fn a_globally_signed_out_access_token_is_revoked() {
    let (pool, cognito, _) = pool_with_alice().await;
    let tokens = pool.sign_in("alice").await;
    assert!(!cognito.is_revoked(&tokens.access).await.unwrap());
    pool.sign_out("alice").await;
    // The answer is cached for revocation_ttl: this instance still trusts it.
    assert!(!cognito.is_revoked(&tokens.access).await.unwrap());
    let fresh = Cognito::new(&config(&pool)).await;
    assert!(fresh.is_revoked(&tokens.access).await.unwrap());
    // The signature and expiry still look fine: only Cognito knows.
    assert!(verifier(&pool).verify(&tokens.access).await.is_ok());
}

#[tokio::test]
async fn usernames_resolve_to_their_sub() {
    let (pool, cognito, sub) = pool_with_alice().await;
    assert_eq!(cognito.sub_of("alice").await.unwrap(), Some(sub));
    assert_eq!(cognito.sub_of("nobody").await.unwrap(), None);
    let unreachable = Cognito::new(&CognitoConfig {
        endpoint_url: Some(format!("http://127.0.0.1:{}", test_support::free_port())),
        ..config(&pool)
    })
    .await;
    assert!(
        unreachable.sub_of("alice").await.is_err(),
        "no answer is an error, not a missing user"
    );
}

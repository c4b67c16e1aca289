//! crates/auth against a real Cognito API (moto's server mode, started by
//! scripts/test): a user of a pool signs in with USER_PASSWORD_AUTH, its
//! access and ID tokens pass the verifier through the pool's own JWKS; after
//! a global sign-out the access token is revoked; usernames resolve to
//! their `sub`. Each test makes a pool of its own.

use std::time::Duration;

use aws_sdk_cognitoidentityprovider::types::{
    AttributeType, AuthFlowType, ExplicitAuthFlowsType, SchemaAttributeType,
};
use notify_auth::{Cognito, CognitoConfig, KeySet, KeySource, TokenUse, Verifier, VerifierConfig};

const REGION: &str = "eu-west-1";

/// A pool with one app client and user `alice` (realm `eu`), signed in.
struct Pool {
    cognito: Cognito,
    config: CognitoConfig,
    client_id: String,
    access: String,
    id: String,
    sub: String,
}

fn config(pool_id: &str) -> CognitoConfig {
    CognitoConfig {
        endpoint_url: Some(test_support::cognito_endpoint()),
        credentials: Some(("test".into(), "test".into())),
        ..CognitoConfig::new(REGION, pool_id)
    }
}

impl Pool {
    async fn create() -> Self {
        let admin = Cognito::new(&config("none")).await;
        let api = admin.client();
        let pool = api
            .create_user_pool()
            .pool_name(format!("notify-test-{}", std::process::id()))
            .schema(
                SchemaAttributeType::builder()
                    .name("realm")
                    .attribute_data_type("String".into())
                    .mutable(true)
                    .build(),
            )
            .send()
            .await
            .expect("CreateUserPool");
        let pool_id = pool.user_pool().and_then(|p| p.id()).unwrap().to_owned();
        let client = api
            .create_user_pool_client()
            .user_pool_id(&pool_id)
            .client_name("web")
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .expect("CreateUserPoolClient");
        let client_id = client
            .user_pool_client()
            .and_then(|c| c.client_id())
            .unwrap()
            .to_owned();
        api.admin_create_user()
            .user_pool_id(&pool_id)
            .username("alice")
            .user_attributes(
                AttributeType::builder()
                    .name("custom:realm")
                    .value("eu")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("AdminCreateUser");
        api.admin_set_user_password()
            .user_pool_id(&pool_id)
            .username("alice")
            .password("Passw0rd!long")
            .permanent(true)
            .send()
            .await
            .expect("AdminSetUserPassword");
        let auth = api
            .initiate_auth()
            .client_id(&client_id)
            .auth_flow(AuthFlowType::UserPasswordAuth)
            .auth_parameters("USERNAME", "alice")
            .auth_parameters("PASSWORD", "Passw0rd!long")
            .send()
            .await
            .expect("InitiateAuth");
        let tokens = auth.authentication_result().expect("tokens");
        let config = config(&pool_id);
        let cognito = Cognito::new(&config).await;
        let sub = cognito.sub_of("alice").await.unwrap().expect("alice's sub");
        Self {
            cognito,
            config,
            client_id,
            access: tokens.access_token().unwrap().to_owned(),
            id: tokens.id_token().unwrap().to_owned(),
            sub,
        }
    }

    /// Verifies against the pool's JWKS; the issuer is the AWS form, which
    /// the stand-in's URL is not (both are configured, as in production).
    fn verifier(&self) -> Verifier {
        let endpoint = test_support::cognito_endpoint();
        let pool = &self.config.user_pool_id;
        let jwks = format!("{endpoint}/{pool}/.well-known/jwks.json");
        Verifier::new(
            KeySet::new(KeySource::parse(&jwks).unwrap()),
            VerifierConfig {
                issuer: format!("https://cognito-idp.{REGION}.amazonaws.com/{pool}"),
                client_ids: vec![self.client_id.clone()],
                leeway: Duration::from_secs(5),
            },
        )
    }
}

#[tokio::test]
async fn pool_tokens_pass_the_verifier_through_the_pools_jwks() {
    let pool = Pool::create().await;
    let verifier = pool.verifier();
    let access = verifier.verify(&pool.access).await.expect("access token");
    assert_eq!(
        (
            access.user.as_str(),
            access.token_use,
            access.client_id.as_str()
        ),
        (pool.sub.as_str(), TokenUse::Access, pool.client_id.as_str())
    );
    let id = verifier.verify(&pool.id).await.expect("ID token");
    assert_eq!(
        (id.user.as_str(), id.token_use, id.realm.as_deref()),
        (pool.sub.as_str(), TokenUse::Id, Some("eu"))
    );
}

#[tokio::test]
async fn a_globally_signed_out_access_token_is_revoked() {
    let pool = Pool::create().await;
    assert!(!pool.cognito.is_revoked(&pool.access).await.unwrap());
    pool.cognito
        .client()
        .admin_user_global_sign_out()
        .user_pool_id(&pool.config.user_pool_id)
        .username("alice")
        .send()
        .await
        .expect("AdminUserGlobalSignOut");
    // The answer is cached for revocation_ttl: this instance still trusts it.
    assert!(!pool.cognito.is_revoked(&pool.access).await.unwrap());
    let fresh = Cognito::new(&pool.config).await;
    assert!(fresh.is_revoked(&pool.access).await.unwrap());
    // The signature and expiry still look fine: only Cognito knows.
    assert!(pool.verifier().verify(&pool.access).await.is_ok());
}

#[tokio::test]
async fn usernames_resolve_to_their_sub() {
    let pool = Pool::create().await;
    assert_eq!(
        pool.cognito.sub_of("alice").await.unwrap().as_deref(),
        Some(pool.sub.as_str())
    );
    assert_eq!(pool.cognito.sub_of("nobody").await.unwrap(), None);
    let unreachable = Cognito::new(&CognitoConfig {
        endpoint_url: Some(format!("http://127.0.0.1:{}", test_support::free_port())),
        ..pool.config.clone()
    })
    .await;
    assert!(
        unreachable.sub_of("alice").await.is_err(),
        "no answer is an error, not a missing user"
    );
}

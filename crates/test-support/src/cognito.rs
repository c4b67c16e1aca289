//! A user pool of its own per test on the local Cognito stand-in (moto's
//! server mode): an app client allowing USER_PASSWORD_AUTH, users with a
//! `custom:realm`, sign-in and global sign-out, and where its JWKS and
//! issuer are.

use aws_sdk_cognitoidentityprovider::{
    Client,
    types::{AttributeType, AuthFlowType, ExplicitAuthFlowsType, SchemaAttributeType},
};

/// The region pools are made in (any works on the stand-in).
pub const REGION: &str = "eu-west-1";
const PASSWORD: &str = "Passw0rd!long";

/// A fresh pool and app client.
pub struct TestPool {
    pub api: Client,
    pub endpoint: String,
    pub pool_id: String,
    pub client_id: String,
}

/// A signed-in user's tokens.
pub struct SignedIn {
    pub access: String,
    pub id: String,
}

impl TestPool {
    pub async fn create() -> Self {
        let endpoint = crate::cognito_endpoint();
        let config = crate::moto_aws(REGION).await;
        let api = Client::new(&config);
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
        Self {
            api,
            endpoint,
            pool_id,
            client_id,
        }
    }

    /// Creates `username` (in `realm`, if any) with a permanent password.
    pub async fn add_user(&self, username: &str, realm: Option<&str>) {
        let mut create = self
            .api
            .admin_create_user()
            .user_pool_id(&self.pool_id)
            .username(username);
        if let Some(realm) = realm {
            create = create.user_attributes(
                AttributeType::builder()
                    .name("custom:realm")
                    .value(realm)
                    .build()
                    .unwrap(),
            );
        }
        create.send().await.expect("AdminCreateUser");
        self.api
            .admin_set_user_password()
            .user_pool_id(&self.pool_id)
            .username(username)
            .password(PASSWORD)
            .permanent(true)
            .send()
            .await
            .expect("AdminSetUserPassword");
    }

    /// USER_PASSWORD_AUTH: the user's access and ID tokens.
    pub async fn sign_in(&self, username: &str) -> SignedIn {
        let auth = self
            .api
            .initiate_auth()
            .client_id(&self.client_id)
            .auth_flow(AuthFlowType::UserPasswordAuth)
            .auth_parameters("USERNAME", username)
            .auth_parameters("PASSWORD", PASSWORD)
            .send()
            .await
            .expect("InitiateAuth");
        let tokens = auth.authentication_result().expect("tokens");
        SignedIn {
            access: tokens.access_token().unwrap().to_owned(),
            id: tokens.id_token().unwrap().to_owned(),
        }
    }

    /// Revokes every token of the user.
    pub async fn sign_out(&self, username: &str) {
        self.api
            .admin_user_global_sign_out()
            .user_pool_id(&self.pool_id)
            .username(username)
            .send()
            .await
            .expect("AdminUserGlobalSignOut");
    }

    /// Disables `username` (AdminDisableUser): their tokens still verify.
    pub async fn disable(&self, username: &str) {
        self.api
            .admin_disable_user()
            .user_pool_id(&self.pool_id)
            .username(username)
            .send()
            .await
            .expect("AdminDisableUser");
    }

    /// The pool's JWKS on the stand-in.
    pub fn jwks_url(&self) -> String {
        format!("{}/{}/.well-known/jwks.json", self.endpoint, self.pool_id)
    }

    /// The issuer its tokens carry: the AWS form, not the stand-in's URL.
    pub fn issuer(&self) -> String {
        format!(
            "https://cognito-idp.{REGION}.amazonaws.com/{}",
            self.pool_id
        )
    }
}

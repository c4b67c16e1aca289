//! What only Cognito knows, asked through the AWS SDK: whether an access
//! token was revoked (`GetUser`: a globally signed-out token is refused
//! there while its signature and expiry still look fine), and which `sub`
//! a username or email names (`AdminGetUser`, with IAM credentials from the
//! default provider chain). Both answers are cached, so a connect storm or
//! a publish storm does not become an API storm.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use aws_sdk_cognitoidentityprovider::operation::admin_get_user::AdminGetUserOutput;
use aws_sdk_cognitoidentityprovider::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
};

use crate::AuthError;

/// Most answers kept per cache; a full cache is emptied (cheap, and the
/// entries live seconds to minutes anyway).
const CACHE_MAX: usize = 100_000;

/// Where Cognito is and how long its answers are trusted.
#[derive(Debug, Clone)]
pub struct CognitoConfig {
    pub region: String,
    pub user_pool_id: String,
    /// `COGNITO_ENDPOINT_URL`: a local stand-in (tests); None for AWS.
    pub endpoint_url: Option<String>,
    /// Fixed credentials (a local stand-in); None: the default chain.
    pub credentials: Option<(String, String)>,
    /// How long "not revoked" is believed for one token.
    pub revocation_ttl: Duration,
    /// How long a username → sub answer is kept.
    pub username_ttl: Duration,
}

impl CognitoConfig {
    pub fn new(region: &str, user_pool_id: &str) -> Self {
        Self {
            region: region.into(),
            user_pool_id: user_pool_id.into(),
            endpoint_url: None,
            credentials: None,
            revocation_ttl: Duration::from_secs(60),
            username_ttl: Duration::from_secs(300),
        }
    }
}

/// A cache of answers with an age limit.
struct Answers<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> Answers<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (value, Instant::now()));
    }
}

/// The Cognito user pool, asked through the SDK.
pub struct Cognito {
    client: Client,
    pool: String,
    /// By token digest: the token itself is never kept.
    revoked: Answers<bool>,
    /// By username: whether the user is disabled or gone.
    disabled: Answers<bool>,
    subs: Answers<Option<String>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AuthError {
    AuthError::Keys(format!("Cognito {what}: {e}"))
}

impl Cognito {
    pub async fn new(config: &CognitoConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = &config.credentials {
            loader =
                loader.credentials_provider(Credentials::new(id, secret, None, None, "notify"));
        }
        Self {
            client: Client::new(&loader.load().await),
            pool: config.user_pool_id.clone(),
            revoked: Answers::new(config.revocation_ttl),
            disabled: Answers::new(config.revocation_ttl),
            subs: Answers::new(config.username_ttl),
        }
    }

    /// Whether Cognito refuses `access_token` (signed out, or the user
    /// disabled or deleted). `Err` when Cognito cannot be asked.
    pub async fn is_revoked(&self, access_token: &str) -> Result<bool, AuthError> {
        let key = digest(access_token);
        if let Some(revoked) = self.revoked.get(&key) {
            return Ok(revoked);
        }
        let revoked = match self
            .client
            .get_user()
            .access_token(access_token)
            .send()
            .await
        {
            Ok(_) => false,
            Err(e) => match e.as_service_error() {
                Some(s) if s.is_not_authorized_exception() || s.is_user_not_found_exception() => {
                    true
                }
                _ => return Err(unavailable("GetUser", e)),
            },
        };
        self.revoked.put(key, revoked);
        Ok(revoked)
    }

    /// Whether the user `username` is disabled or deleted (AdminGetUser):
    /// what Cognito can tell about an ID token, whose session it cannot be
    /// asked about. `Err` when Cognito cannot be asked.
    pub async fn is_user_disabled(&self, username: &str) -> Result<bool, AuthError> {
        if let Some(disabled) = self.disabled.get(username) {
            return Ok(disabled);
        }
        let disabled = self
            .user(username)
            .await?
            .is_none_or(|user| !user.enabled());
        self.disabled.put(username.to_owned(), disabled);
        Ok(disabled)
    }

    /// The `sub` of the user with this username (or email alias); `None`
    /// if there is no such user.
    pub async fn sub_of(&self, username: &str) -> Result<Option<String>, AuthError> {
        if let Some(sub) = self.subs.get(username) {
            return Ok(sub);
        }
        let sub = self.user(username).await?.and_then(|user| {
            user.user_attributes()
                .iter()
                .find(|a| a.name() == "sub")
                .and_then(|a| a.value().map(String::from))
        });
        self.subs.put(username.to_owned(), sub.clone());
        Ok(sub)
    }

    /// AdminGetUser: the user, `None` if there is none.
    async fn user(&self, username: &str) -> Result<Option<AdminGetUserOutput>, AuthError> {
        match self
            .client
            .admin_get_user()
            .user_pool_id(&self.pool)
            .username(username)
            .send()
            .await
        {
            Ok(user) => Ok(Some(user)),
            Err(e) => match e.as_service_error() {
                Some(s) if s.is_user_not_found_exception() => Ok(None),
                _ => Err(unavailable("AdminGetUser", e)),
            },
        }
    }
}

/// SHA-256 of a token, hex: cache keys that do not keep the token.
fn digest(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

//! Token verification: header, key, signature, time, issuer, token use, client.
//!
//! The signature is checked with the key set's parsed key (see [`KeySet`]),
//! then the claims are checked here; jsonwebtoken reads the header only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::Algorithm;
use notify_core::UserId;
use serde::Deserialize;

use crate::{AuthError, Identity, KeySet, TokenUse};

/// What a token must match.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Expected `iss`, e.g. `https://cognito-idp.{region}.amazonaws.com/{pool}`.
    pub issuer: String,
    /// Allowed app clients (`client_id` of access tokens, `aud` of ID tokens).
    pub client_ids: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Verifies tokens against one issuer's keys; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    config: std::sync::Arc<VerifierConfig>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    // Optional so that missing claims are reported as such by the validation
    // (required_spec_claims), not as malformed JSON.
    sub: Option<String>,
    iss: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    #[serde(rename = "cognito:username")]
    cognito_username: Option<String>,
    username: Option<String>,
    token_use: Option<String>,
    client_id: Option<String>,
    aud: Option<Audience>,
    #[serde(default)]
    scope: String,
    #[serde(rename = "cognito:groups", default)]
    groups: Vec<String>,
    #[serde(rename = "custom:realm")]
    realm: Option<String>,
}

impl Verifier {
    pub fn new(keys: KeySet, config: VerifierConfig) -> Self {
        Self {
            keys,
            config: std::sync::Arc::new(config),
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// What tokens must match (for `/info`).
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// `exp` (required), `nbf`, both with the leeway; `iss` (required) is
    /// the configured issuer; `sub` is required.
    fn check_time_and_issuer(&self, claims: &Claims) -> Result<(), AuthError> {
        let missing = |claim: &str| AuthError::Claims(format!("{claim} is missing"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = self.config.leeway.as_secs();
        let exp = claims.exp.ok_or_else(|| missing("exp"))?;
        if claims.sub.is_none() {
            return Err(missing("sub"));
        }
        let iss = claims.iss.as_deref().ok_or_else(|| missing("iss"))?;
        if exp.saturating_add(leeway) < now {
            return Err(AuthError::Expired);
        }
        // Far past any real token (Cognito's last a day); what a connection
        // does with `exp` (timers, clocks) must not overflow.
        if exp > now.saturating_add(MAX_LIFETIME_SECS) {
            return Err(AuthError::Claims(format!(
                "exp {exp} is more than a century ahead"
            )));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        if iss != self.config.issuer {
            return Err(AuthError::Issuer);
        }
        Ok(())
    }

    /// Checks `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // RS256 only: the algorithm is the key's (all JWKS keys kept are RSA
        // signing keys), so a token naming another one is refused before any
        // key is touched.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        let key = self.keys.key(&kid).await?;
        let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (_, payload) = signed.split_once('.').ok_or(AuthError::Malformed)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signature = b64.decode(signature).map_err(|_| AuthError::Malformed)?;
        if !key.verify(signed.as_bytes(), &signature) {
            return Err(AuthError::Signature);
        }
        let payload = b64.decode(payload).map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        self.check_time_and_issuer(&claims)?;
        let (token_use, client_id) = match claims.token_use.as_deref() {
            Some("access") => {
                let client = claims
                    .client_id
                    .ok_or_else(|| AuthError::Claims("client_id is missing".into()))?;
                (TokenUse::Access, client)
            }
            Some("id") => {
                let audiences = match claims.aud {
                    Some(Audience::One(a)) => vec![a],
                    Some(Audience::Many(a)) => a,
                    None => return Err(AuthError::Claims("aud is missing".into())),
                };
                let client = audiences
                    .iter()
                    .find(|a| self.config.client_ids.contains(a))
                    .or(audiences.first())
                    .cloned()
                    .unwrap_or_default();
                (TokenUse::Id, client)
            }
            _ => return Err(AuthError::TokenUse),
        };
        if !self.config.client_ids.contains(&client_id) {
            return Err(AuthError::Client(client_id.chars().take(64).collect()));
        }
        let user = UserId::parse("sub", claims.sub.as_deref().unwrap_or_default())
            .map_err(|e| AuthError::Claims(e.to_string()))?;
        // `private:{sub}:…` topics are owned by their first segment: a sub
        // with ':' would let user "a" read user "a:b"'s private topics.
        // Cognito subs are UUIDs; only a hand-made token has one.
        if user.as_str().contains(':') {
            return Err(AuthError::Claims("sub must not contain ':'".into()));
        }
        Ok(Identity {
            user,
            token_use,
            client_id,
            groups: claims.groups,
            realm: claims.realm,
            username: claims
                .username
                .or(claims.cognito_username)
                .map(String::into_boxed_str),
            scopes: claims.scope.split_whitespace().map(String::from).collect(),
            // Checked above: within a century of now.
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.unwrap_or_default()),
        })
    }
}

/// The session claims of a token [`Verifier::verify`] accepted: its `iat`
/// (not after its `exp`, else a token could claim a sign-out never reaches
/// it; absent, as early as can be) and its username.
pub fn session_of(token: &str) -> Option<crate::identity::Session> {
    let payload = token.split('.').nth(1)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Claims = serde_json::from_slice(&payload).ok()?;
    // Bounded so that the addition below cannot overflow (year 2106).
    let iat = claims
        .iat
        .unwrap_or(0)
        .min(claims.exp.unwrap_or(0))
        .min(u64::from(u32::MAX));
    Some(crate::identity::Session {
        issued_at: UNIX_EPOCH + Duration::from_secs(iat),
        username: claims.cognito_username.or(claims.username),
    })
}

/// The furthest `exp` accepted, from now: 100 years.
const MAX_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;

/// Seconds since the epoch, for minting.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

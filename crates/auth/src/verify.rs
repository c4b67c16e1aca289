//! Token verification: header, key, signature, time, issuer, token use, client.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
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
    validation: std::sync::Arc<Validation>,
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
    exp: Option<u64>,
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
        // RS256 only: the algorithm is the key's (all JWKS keys kept are RSA
        // signing keys), so a token naming another one is refused before any
        // key is touched.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false; // checked per token use below
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.required_spec_claims = HashSet::from(["exp", "sub", "iss"].map(String::from));
        Self {
            keys,
            config: std::sync::Arc::new(config),
            validation: std::sync::Arc::new(validation),
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Checks `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        let key = self.keys.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            match e.into_kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm("not RS256".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Claims(format!("{claim} is missing"))
                }
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
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
        Ok(Identity {
            user,
            token_use,
            client_id,
            groups: claims.groups,
            realm: claims.realm,
            scopes: claims.scope.split_whitespace().map(String::from).collect(),
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.unwrap_or_default()),
        })
    }
}

/// Seconds since the epoch, for minting.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

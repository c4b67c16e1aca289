//! The dev issuer: a local RSA key that mints Cognito-shaped tokens, and the
//! JWKS that lets the same [`Verifier`](crate::Verifier) accept them.

use std::{path::Path, time::Duration};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::{
    RsaPrivateKey,
    pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey},
    traits::PublicKeyParts,
};
use serde::Serialize;

use crate::{AuthError, KeySource, TokenUse, verify::now_secs};

/// Issuer of dev tokens (`notify token`, `notify up`).
pub const DEV_ISSUER: &str = "http://127.0.0.1/notify-dev";
/// App client of dev tokens.
pub const DEV_CLIENT_ID: &str = "notify-dev";
/// File name of the dev key inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-key.der";

/// RSA size of the dev key; what Cognito uses.
const KEY_BITS: usize = 2048;

/// What a dev token says.
#[derive(Debug, Clone)]
pub struct DevToken {
    pub user: String,
    pub realm: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub token_use: TokenUse,
    pub ttl: Duration,
}

impl DevToken {
    /// An access token for `user`, valid for an hour.
    pub fn access(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            realm: None,
            groups: Vec::new(),
            scopes: Vec::new(),
            token_use: TokenUse::Access,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Mints RS256 tokens with a local key.
pub struct DevIssuer {
    issuer: String,
    client_id: String,
    kid: String,
    encoding: EncodingKey,
    jwks: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    token_use: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: String,
    username: &'a str,
    #[serde(rename = "cognito:groups", skip_serializing_if = "<[_]>::is_empty")]
    groups: &'a [String],
    #[serde(rename = "custom:realm", skip_serializing_if = "Option::is_none")]
    realm: Option<&'a str>,
}

impl DevIssuer {
    /// A fresh key, kept in memory only.
    pub fn generate(issuer: &str, client_id: &str) -> Result<Self, AuthError> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)
            .map_err(|e| AuthError::Keys(format!("generating the dev key: {e}")))?;
        Self::from_key(issuer, client_id, &key)
    }

    /// The key stored at `path` (PKCS#1 DER), created there (mode 0600) if missing,
    /// so tokens survive restarts of `notify up`.
    ///
    /// Safe for concurrent callers (`notify up` starting while `notify token`
    /// runs on the same directory): a new key is written aside and linked
    /// into place, which fails if another caller's key got there first; the
    /// loser then reads the winner's. Nobody ever reads a half-written key.
    pub fn load_or_create(path: &Path, issuer: &str, client_id: &str) -> Result<Self, AuthError> {
        let io = |e: std::io::Error| AuthError::Keys(format!("{}: {e}", path.display()));
        let key = match std::fs::read(path) {
            Ok(der) => parse_key(path, &der)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)
                    .map_err(|e| AuthError::Keys(format!("generating the dev key: {e}")))?;
                let der = key
                    .to_pkcs1_der()
                    .map_err(|e| AuthError::Keys(format!("encoding the dev key: {e}")))?;
                match publish_private(path, der.as_bytes()).map_err(io)? {
                    Published::Ours => key,
                    Published::Theirs => parse_key(path, &std::fs::read(path).map_err(io)?)?,
                }
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_key(issuer, client_id, &key)
    }

    fn from_key(issuer: &str, client_id: &str, key: &RsaPrivateKey) -> Result<Self, AuthError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|e| AuthError::Keys(format!("encoding the dev key: {e}")))?;
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let (n, e) = (b64(key.n().to_bytes_be()), b64(key.e().to_bytes_be()));
        // The kid names the key: a fingerprint of its modulus, stable across restarts.
        let kid = format!("dev-{}", &n[..16]);
        let jwks = serde_json::json!({
            "keys": [{ "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": n, "e": e }]
        })
        .to_string();
        Ok(Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwks,
        })
    }

    /// The JWKS document of the dev key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A key source that serves the dev key to a verifier.
    pub fn key_source(&self) -> KeySource {
        KeySource::Inline(self.jwks.clone())
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A verifier that accepts this issuer's tokens (and only them), through
    /// the same checks as Cognito's, with a 5 s clock leeway.
    pub fn verifier(&self) -> crate::Verifier {
        crate::Verifier::new(
            crate::KeySet::new(self.key_source()),
            crate::VerifierConfig {
                issuer: self.issuer.clone(),
                client_ids: vec![self.client_id.clone()],
                leeway: Duration::from_secs(5),
            },
        )
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Mints a token.
    pub fn mint(&self, token: &DevToken) -> Result<String, AuthError> {
        let now = now_secs();
        let access = token.token_use == TokenUse::Access;
        let claims = Claims {
            sub: &token.user,
            iss: &self.issuer,
            iat: now,
            nbf: now,
            exp: now + token.ttl.as_secs(),
            token_use: if access { "access" } else { "id" },
            client_id: access.then_some(self.client_id.as_str()),
            aud: (!access).then_some(self.client_id.as_str()),
            scope: token.scopes.join(" "),
            username: &token.user,
            groups: &token.groups,
            realm: token.realm.as_deref(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Keys(format!("signing: {e}")))
    }
}

impl DevIssuer {
    /// Signs arbitrary claims with the dev key and kid: for tests that need a
    /// token the verifier must refuse (expired, foreign issuer, …).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthError::Keys(format!("signing: {e}")))
    }

    /// The kid of the dev key.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn parse_key(path: &Path, der: &[u8]) -> Result<RsaPrivateKey, AuthError> {
    RsaPrivateKey::from_pkcs1_der(der)
        .map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))
}

/// Whose key ended up at the path.
enum Published {
    Ours,
    Theirs,
}

/// Puts `bytes` at `path` (mode 0600) unless a file is there: written and
/// synced under a name of its own first, then hard-linked into place, so the
/// path only ever holds a complete key and the first writer wins.
fn publish_private(path: &Path, bytes: &[u8]) -> std::io::Result<Published> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let aside = path.with_extension(format!(
        "new-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&aside, path)
    })();
    let _ = std::fs::remove_file(&aside);
    match written {
        Ok(()) => Ok(Published::Ours),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Published::Theirs),
        Err(e) => Err(e),
    }
}

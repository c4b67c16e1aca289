//! The signing keys: a JWKS fetched from its source, cached by `kid`, and
//! refetched when a token names a key the cache does not hold, at most once
//! per [`REFETCH_GAP`] however many such tokens arrive (an unknown-kid flood
//! must not become a flood of fetches). Keys are kept parsed (aws-lc's
//! Montgomery context included): building it per token was most of an RS256
//! check.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use rsa::{BigUint, RsaPublicKey, pkcs1::EncodeRsaPublicKey};
use serde::Deserialize;

use crate::AuthError;

/// Least time between two fetches caused by unknown kids.
pub const REFETCH_GAP: Duration = Duration::from_secs(30);
/// Limit for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted; Cognito's are about 1 KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `https://…` (Cognito's) or `http://…` (a private network), over TLS
    /// trusting the system's roots or, if set, only the CA file `ca`.
    Url { url: String, ca: Option<PathBuf> },
    /// `file:PATH`.
    File(PathBuf),
    /// A JWKS document given in memory (the dev issuer's).
    Inline(String),
}

impl KeySource {
    /// Parses `AUTH_JWKS_URL`: `https://…`, `http://…` or `file:PATH`.
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        if let Some(path) = raw.strip_prefix("file:") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if raw.starts_with("https://") || raw.starts_with("http://") {
            raw.parse::<hyper::Uri>()
                .map_err(|e| AuthError::Keys(format!("JWKS URL {raw:?}: {e}")))?;
            return Ok(Self::Url {
                url: raw.to_owned(),
                ca: None,
            });
        }
        Err(AuthError::Keys(format!(
            "JWKS source {raw:?}: use https://…, http://… or file:PATH"
        )))
    }

    /// Trusts only `ca` (PEM) for an `https://` source: a JWKS on a private
    /// network behind an internal CA.
    pub fn with_ca(self, ca: Option<PathBuf>) -> Result<Self, AuthError> {
        match (self, ca) {
            (source, None) => Ok(source),
            (Self::Url { url, .. }, Some(ca)) if url.starts_with("https://") => {
                Ok(Self::Url { url, ca: Some(ca) })
            }
            (_, Some(_)) => Err(AuthError::Keys(
                "a JWKS CA file only applies to an https:// JWKS URL".into(),
            )),
        }
    }

    async fn fetch(&self) -> Result<String, AuthError> {
        match self {
            Self::Inline(doc) => Ok(doc.clone()),
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| AuthError::Keys(format!("{}: {e}", path.display()))),
            Self::Url { url, ca } => {
                tokio::time::timeout(FETCH_TIMEOUT, fetch_http(url, ca.as_deref()))
                    .await
                    .map_err(|_| {
                        AuthError::Keys(format!("{url}: no answer within {FETCH_TIMEOUT:?}"))
                    })?
            }
        }
    }
}

/// An error and its sources: hyper-util's own text is only "client error
/// (Connect)", the cause (a refused connection, an unknown CA) is below it.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn fetch_http(url: &str, ca: Option<&std::path::Path>) -> Result<String, AuthError> {
    let err = |e: &dyn std::fmt::Display| AuthError::Keys(format!("{url}: {e}"));
    let uri: hyper::Uri = url.parse().map_err(|e| err(&e))?;
    // Built per fetch: fetches are rare (start, key rotation, at most one
    // per REFETCH_GAP) and a replaced CA file is then read again.
    let connector = match ca {
        Some(ca) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trusting(ca).map_err(|e| err(&e))?),
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| err(&e))?,
    }
    .https_or_http()
    .enable_http1()
    .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let response = client.get(uri).await.map_err(|e| err(&with_causes(&e)))?;
    if !response.status().is_success() {
        return Err(err(&format!("HTTP {}", response.status())));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| err(&e))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| err(&e))
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// An RS256 verification key, parsed once.
pub struct SigningKey(ParsedPublicKey);

impl SigningKey {
    /// From a JWK's base64url `n` and `e`.
    fn from_components(n: &str, e: &str) -> Result<Self, String> {
        let b64 = |v: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|e| format!("bad base64: {e}"))
        };
        let public = RsaPublicKey::new(
            BigUint::from_bytes_be(&b64(n)?),
            BigUint::from_bytes_be(&b64(e)?),
        )
        .map_err(|e| e.to_string())?;
        let der = public.to_pkcs1_der().map_err(|e| e.to_string())?;
        ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der.as_bytes())
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Checks an RS256 (PKCS#1 v1.5, SHA-256) signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.verify_sig(message, signature).is_ok()
    }
}

/// Parses a JWKS, keeping the RSA signing keys usable for RS256.
fn parse_jwks(doc: &str) -> Result<HashMap<String, Arc<SigningKey>>, AuthError> {
    let jwks: Jwks =
        serde_json::from_str(doc).map_err(|e| AuthError::Keys(format!("JWKS: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in jwks.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        if !usable {
            continue;
        }
        match SigningKey::from_components(&n, &e) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWKS key"),
        }
    }
    Ok(keys)
}

struct Cache {
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Option<Instant>,
}

/// Cached signing keys of one source; cheap to clone.
#[derive(Clone)]
pub struct KeySet {
    source: Arc<KeySource>,
    cache: Arc<RwLock<Cache>>,
    // One fetch at a time; others wait for its result.
    fetching: Arc<tokio::sync::Mutex<()>>,
    fetches: Arc<AtomicU64>,
}

impl KeySet {
    pub fn new(source: KeySource) -> Self {
        Self {
            source: Arc::new(source),
            cache: Arc::new(RwLock::new(Cache {
                keys: HashMap::new(),
                fetched_at: None,
            })),
            fetching: Arc::default(),
            fetches: Arc::default(),
        }
    }

    /// How many times the source was read (for metrics and tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key named `kid`, fetching the JWKS first if it was never fetched or
    /// (at most once per [`REFETCH_GAP`]) if the key is unknown.
    pub async fn key(&self, kid: &str) -> Result<Arc<SigningKey>, AuthError> {
        if let Some(key) = self.cached(kid)? {
            return Ok(key);
        }
        let _one_fetch = self.fetching.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(key) = self.cached(kid)? {
            return Ok(key);
        }
        self.fetch().await?;
        self.cached(kid)?
            .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(64).collect()))
    }

    /// Fetches now, whatever the cache holds (start-up, tests).
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        let _one_fetch = self.fetching.lock().await;
        self.fetch().await
    }

    /// `Ok(None)` means: fetch (never fetched, or unknown and the gap passed).
    fn cached(&self, kid: &str) -> Result<Option<Arc<SigningKey>>, AuthError> {
        let cache = self.cache.read().expect("key cache lock");
        if let Some(key) = cache.keys.get(kid) {
            return Ok(Some(key.clone()));
        }
        match cache.fetched_at {
            Some(at) if at.elapsed() < REFETCH_GAP => {
                Err(AuthError::UnknownKey(kid.chars().take(64).collect()))
            }
            _ => Ok(None),
        }
    }

    async fn fetch(&self) -> Result<usize, AuthError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.source.fetch().await.and_then(|doc| parse_jwks(&doc));
        let mut cache = self.cache.write().expect("key cache lock");
        // A failed fetch counts too: an unreachable JWKS is retried after the gap,
        // not by every token.
        cache.fetched_at = Some(Instant::now());
        let keys = result?;
        let count = keys.len();
        cache.keys = keys;
        Ok(count)
    }
}

/// A TLS client config that trusts only the certificates in the PEM file `ca`.
fn trusting(ca: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

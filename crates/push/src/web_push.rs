//! Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload
//! encryption (RFC 8291, [`crate::ece`] on aws-lc-rs); the VAPID token is
//! an ES256 JWT signed with `jsonwebtoken` and cached per push-service
//! origin. Answers as RFC 8030 §5/§8 and the
//! big push services document them: 201 sent; 404 and 410 gone; 429 and
//! 5xx retried (Retry-After honoured); 400, 401, 403 and 413 failed.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::{
    client::Https,
    outcome::{Outcome, retry_after},
    vapid::Vapid,
};

/// How long a push service keeps an undelivered message (the TTL header):
/// a notification a day late is noise.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// A VAPID token's life (RFC 8292 allows up to 24 h); reused until an hour
/// before it ends.
const TOKEN_LIFE: Duration = Duration::from_secs(12 * 3600);
const TOKEN_REUSE: Duration = Duration::from_secs(11 * 3600);

pub struct WebPush {
    vapid: Vapid,
    key: EncodingKey,
    /// Signed tokens by push-service origin, with when they were made.
    tokens: Mutex<HashMap<String, (String, SystemTime)>>,
    https: Https,
}

/// One subscription to push to.
pub struct Subscription<'a> {
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
}

impl WebPush {
    pub fn new(vapid: Vapid, https: Https) -> Result<Self, String> {
        let key = EncodingKey::from_ec_der(vapid.pkcs8());
        Ok(Self {
            vapid,
            key,
            tokens: Mutex::new(HashMap::new()),
            https,
        })
    }

    pub fn public_key(&self) -> String {
        self.vapid.public_key_b64()
    }

    /// Encrypts `payload` for the subscription and posts it. `topic`
    /// (<= 32 base64url chars) lets the push service replace an undelivered
    /// copy: a resend after a crash shows once.
    pub async fn send(&self, to: &Subscription<'_>, payload: &[u8], topic: &str) -> Outcome {
        let request = match self.request(to, payload, topic) {
            Ok(r) => r,
            Err(why) => return Outcome::Failed { why },
        };
        let answer = match self.https.send(request).await {
            Ok(a) => a,
            Err(why) => return Outcome::Retry { after: None, why },
        };
        let why = || {
            format!(
                "push service answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            )
        };
        match answer.status.as_u16() {
            200..=299 => Outcome::Sent,
            404 | 410 => Outcome::Gone,
            429 | 500..=599 => Outcome::Retry {
                after: retry_after(&answer.headers),
                why: why(),
            },
            _ => Outcome::Failed { why: why() },
        }
    }

    fn request(
        &self,
        to: &Subscription<'_>,
        payload: &[u8],
        topic: &str,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let endpoint: http::Uri = to.endpoint.parse().map_err(|e| format!("endpoint: {e}"))?;
        let origin = format!(
            "{}://{}",
            endpoint.scheme_str().unwrap_or("https"),
            endpoint.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let decode = |field: &str, value: &str| {
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|e| format!("{field}: {e}"))
        };
        let body = crate::ece::encrypt(
            payload,
            &decode("p256dh", to.p256dh)?,
            &decode("auth", to.auth)?,
        )?;
        let token = self.token(&origin)?;
        let authorization = format!("vapid t={token}, k={}", self.vapid.public_key_b64());
        http::Request::post(endpoint)
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::CONTENT_ENCODING, "aes128gcm")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header("ttl", TTL.as_secs().to_string())
            .header("topic", topic)
            // A user waiting for an answer to a bet: deliver now, not batched.
            .header("urgency", "high")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))
    }

    /// The VAPID token for a push service, signed at most every 11 hours.
    fn token(&self, origin: &str) -> Result<String, String> {
        let now = SystemTime::now();
        let mut tokens = self.tokens.lock().expect("vapid tokens lock");
        if let Some((token, made)) = tokens.get(origin)
            && now.duration_since(*made).unwrap_or_default() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let exp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(TOKEN_LIFE)
            .as_secs();
        let claims = serde_json::json!({"aud": origin, "exp": exp, "sub": self.vapid.subject()});
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("vapid token: {e}"))?;
        tokens.insert(origin.to_owned(), (token.clone(), now));
        Ok(token)
    }
}

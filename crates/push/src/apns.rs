//! APNs, token-based, over HTTP/2: an ES256 provider token (`kid` = key
//! id, `iss` = team id, signed with the `.p8` key by `jsonwebtoken`),
//! renewed every 50 minutes (Apple refuses one older than an hour and
//! throttles renewals more often than every 20), then `POST
//! /3/device/{token}`. Answers as Apple documents them: 200 sent; 410
//! `Unregistered` and 400 `BadDeviceToken` gone; 403
//! `ExpiredProviderToken` renewed and retried; 429 and 5xx retried; other
//! 4xx failed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Mutex;

use crate::{
    client::Https,
    fcm::Notification,
    outcome::{Outcome, retry_after},
};

pub const PRODUCTION: &str = "https://api.push.apple.com";
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// A provider token is signed again after this long.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);
/// How long APNs keeps trying an offline device.
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);

pub struct Apns {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    /// Overrides both endpoints (tests: the providers' stand-in).
    endpoint: Option<String>,
    https: Https,
    token: Mutex<Option<(String, SystemTime)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Apns {
    /// From the `.p8` key's PEM text.
    pub fn from_pem(
        pem: &str,
        key_id: &str,
        team_id: &str,
        endpoint: Option<&str>,
        https: Https,
    ) -> Result<Self, String> {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| format!("APNs key: {e}"))?;
        if key_id.is_empty() || team_id.is_empty() {
            return Err("APNs needs its key id and team id".into());
        }
        Ok(Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            https,
            token: Mutex::new(None),
        })
    }

    pub async fn send(
        &self,
        device: &str,
        topic: &str,
        sandbox: bool,
        n: &Notification<'_>,
    ) -> Outcome {
        let token = match self.provider_token() {
            Ok(t) => t,
            Err(why) => return Outcome::Failed { why },
        };
        let base = self
            .endpoint
            .as_deref()
            .unwrap_or(if sandbox { SANDBOX } else { PRODUCTION });
        let body = serde_json::json!({
            "aps": {"alert": {"title": n.title, "body": n.body}, "sound": "default"},
            "message_id": n.message_id,
            "seq": n.seq,
            "event": n.event,
        });
        let expiration = (SystemTime::now() + EXPIRATION)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let request = http::Request::post(format!("{base}/3/device/{device}"))
            .version(http::Version::HTTP_2)
            .header(http::header::AUTHORIZATION, format!("bearer {token}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", n.collapse)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Failed { why: e.to_string() },
        };
        let answer = match self.https.send(request).await {
            Ok(a) => a,
            Err(why) => return Outcome::Retry { after: None, why },
        };
        let reason = reason(&answer.body);
        let why = || format!("APNs answered {}: {reason}", answer.status);
        match (answer.status.as_u16(), reason.as_str()) {
            (200, _) => Outcome::Sent,
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::Gone,
            (403, "ExpiredProviderToken") => {
                *self.token.lock().expect("apns token lock") = None;
                Outcome::Retry {
                    after: None,
                    why: why(),
                }
            }
            (429 | 500..=599, _) => Outcome::Retry {
                after: retry_after(&answer.headers),
                why: why(),
            },
            _ => Outcome::Failed { why: why() },
        }
    }

    /// The provider token, signed again every [`TOKEN_LIFE`].
    fn provider_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().expect("apns token lock");
        let now = SystemTime::now();
        if let Some((token, made)) = cached.as_ref()
            && now.duration_since(*made).unwrap_or_default() < TOKEN_LIFE
        {
            return Ok(token.clone());
        }
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = serde_json::json!({"iss": self.team_id, "iat": iat});
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("APNs provider token: {e}"))?;
        *cached = Some((token.clone(), now));
        Ok(token)
    }
}

/// The `reason` of an APNs error body.
fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

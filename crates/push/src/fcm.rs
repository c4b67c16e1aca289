//! FCM HTTP v1: an OAuth2 access token from the service account's JWT
//! grant (RFC 7523: an RS256 assertion signed with `jsonwebtoken`, posted
//! to the account's `token_uri`), cached until five minutes before it
//! ends, then `messages:send`. Answers as Firebase documents them: 200
//! sent; 404 `UNREGISTERED` (or `NOT_FOUND`) gone; 401 the access token
//! went stale (dropped, retried); 429 `QUOTA_EXCEEDED`, 500 and 503
//! retried (Retry-After honoured); other 4xx failed.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::sync::Mutex;

use crate::{
    client::Https,
    outcome::{Outcome, retry_after},
};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Where FCM is (an override for tests: the providers' stand-in).
pub const ENDPOINT: &str = "https://fcm.googleapis.com";
/// An access token is renewed this long before Google says it ends.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The fields of a service account JSON file FCM needs.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

pub struct Fcm {
    project: String,
    client_email: String,
    token_uri: String,
    key: EncodingKey,
    endpoint: String,
    https: Https,
    /// The access token and when it ends.
    token: Mutex<Option<(String, SystemTime)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("project", &self.project)
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// What a push shows, and what the app opens at.
pub struct Notification<'a> {
    pub title: &'a str,
    pub body: &'a str,
    pub message_id: &'a str,
    pub seq: u64,
    pub event: &'a str,
    /// Replaces an undelivered copy of the same push.
    pub collapse: &'a str,
}

impl Fcm {
    /// From a service account's JSON; `endpoint` None: FCM itself.
    pub fn from_json(text: &str, endpoint: Option<&str>, https: Https) -> Result<Self, String> {
        let account: ServiceAccount =
            serde_json::from_str(text).map_err(|e| format!("FCM service account: {e}"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("FCM service account private_key: {e}"))?;
        Ok(Self {
            project: account.project_id,
            client_email: account.client_email,
            token_uri: account.token_uri,
            key,
            endpoint: endpoint
                .unwrap_or(ENDPOINT)
                .trim_end_matches('/')
                .to_owned(),
            https,
            token: Mutex::new(None),
        })
    }

    pub async fn send(&self, token: &str, n: &Notification<'_>) -> Outcome {
        let access = match self.access_token().await {
            Ok(a) => a,
            Err(why) => return Outcome::Retry { after: None, why },
        };
        let body = serde_json::json!({
            "message": {
                "token": token,
                "notification": {"title": n.title, "body": n.body},
                // FCM data values are strings.
                "data": {"message_id": n.message_id, "seq": n.seq.to_string(), "event": n.event},
                // collapse_key: FCM keeps the last of a key while the phone
                // is away; tag: a second notification of one message
                // replaces the first in the drawer (a resend shows once).
                "android": {
                    "collapse_key": n.collapse,
                    "priority": "high",
                    "notification": {"tag": n.collapse},
                },
                "apns": {"headers": {"apns-collapse-id": n.collapse}},
            }
        });
        let request = http::Request::post(format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.project
        ))
        .header(http::header::AUTHORIZATION, format!("Bearer {access}"))
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
        let why = || {
            format!(
                "FCM answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            )
        };
        match answer.status.as_u16() {
            200..=299 => Outcome::Sent,
            404 => Outcome::Gone,
            400 if fcm_error(&answer.body) == Some("UNREGISTERED") => Outcome::Gone,
            401 => {
                // Stale access token: the next attempt gets a new one.
                *self.token.lock().await = None;
                Outcome::Retry {
                    after: None,
                    why: why(),
                }
            }
            429 | 500..=599 => Outcome::Retry {
                after: retry_after(&answer.headers),
                why: why(),
            },
            _ => Outcome::Failed { why: why() },
        }
    }

    /// The cached access token, or a new one from the JWT grant.
    async fn access_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, ends)) = cached.as_ref()
            && SystemTime::now() + RENEW_BEFORE < *ends
        {
            return Ok(token.clone());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| format!("FCM grant assertion: {e}"))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = http::Request::post(&self.token_uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        let answer = self.https.send(request).await?;
        if !answer.status.is_success() {
            return Err(format!(
                "FCM token endpoint answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            ));
        }
        #[derive(serde::Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: u64,
        }
        let granted: Granted =
            serde_json::from_slice(&answer.body).map_err(|e| format!("FCM token answer: {e}"))?;
        let ends = SystemTime::now() + Duration::from_secs(granted.expires_in);
        *cached = Some((granted.access_token.clone(), ends));
        Ok(granted.access_token)
    }
}

/// The `errorCode` of an FCM error's `FcmError` detail.
fn fcm_error(body: &[u8]) -> Option<&'static str> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let details = value["error"]["details"].as_array()?;
    details.iter().find_map(|d| match d["errorCode"].as_str()? {
        "UNREGISTERED" => Some("UNREGISTERED"),
        _ => None,
    })
}

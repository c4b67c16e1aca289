//! Why the bridge turns a client away, decided in one place for every door —
//! the upgrade (`GET /ws`), the Dev Panel's publish and the `refresh` action —
//! and answered the same way at each: [`authenticate`] (token → revocation)
//! and the admission checks yield a [`Refusal`], which maps here to an HTTP
//! status and body, an error frame, and a close code (as `status.rs` does
//! for gRPC in notify-svc).

use std::time::Duration;

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use notify_auth::{AuthError, Identity, Verifier};
use notify_core::{UserId, close};

use crate::{
    protocol::{ErrorCode, FrameId, ServerFrame},
    respond,
    revocation::Revocation,
};

/// Why a client is turned away.
#[derive(Debug)]
pub enum Refusal {
    /// No token was presented.
    NoToken,
    /// The token did not verify (signature, expiry, issuer, app client).
    BadToken(AuthError),
    /// Cognito says the token was signed out.
    Revoked,
    /// Cognito could not be asked whether the token was revoked: retry.
    RevocationUnchecked(String),
    /// A refreshed token names another user than the connection's.
    OtherUser,
    /// Only members of the admin group may do this.
    NotAdmin,
    /// Too many connect attempts from the client's address.
    PeerRate(Duration),
    /// Too many panel publishes from this admin.
    PanelRate(Duration),
    /// The bridge reaches no notify-svc: retry, or another bridge.
    NoNotifySvc,
    /// The bridge holds its most connections: another bridge.
    BridgeFull,
    /// The user holds this many connections on this bridge, the most.
    UserLimit(usize),
    /// The connect hook refused the connection, with this status.
    Hook { code: tonic::Code, message: String },
    /// The connect hook could not be asked (and the bridge fails closed).
    HookUnavailable(String),
}

impl From<crate::upstream::HookRefusal> for Refusal {
    fn from(refusal: crate::upstream::HookRefusal) -> Self {
        match refusal {
            crate::upstream::HookRefusal::Refused { code, message } => Self::Hook { code, message },
            crate::upstream::HookRefusal::Unavailable(why) => Self::HookUnavailable(why),
        }
    }
}

impl Refusal {
    /// The label of `bridge_refused_total` (and of the `reason` field).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::BadToken(e) => e.reason(),
            Self::Revoked => "revoked",
            Self::RevocationUnchecked(_) => "revocation_unchecked",
            Self::OtherUser => "other_user",
            Self::NotAdmin => "not_admin",
            Self::PeerRate(_) => "peer_rate",
            Self::PanelRate(_) => "panel_rate",
            Self::NoNotifySvc => "no_notify_svc",
            Self::BridgeFull => "bridge_full",
            Self::UserLimit(_) => "user_limit",
            Self::Hook { .. } => "hook_refused",
            Self::HookUnavailable(_) => "hook_unavailable",
        }
    }

    /// What a person reads.
    pub fn message(&self) -> String {
        match self {
            Self::NoToken => "a token is required: Authorization: Bearer … or ?token=".into(),
            Self::BadToken(e) => format!("token refused: {e}"),
            Self::Revoked => "the token was revoked (signed out): sign in again".into(),
            Self::RevocationUnchecked(e) => {
                format!("cannot check the token with Cognito now, retry: {e}")
            }
            Self::OtherUser => "the new token names another user".into(),
            Self::NotAdmin => "this is for members of the admin group".into(),
            Self::PeerRate(_) => "too many connects from this address; retry later".into(),
            Self::PanelRate(wait) => {
                format!("too many panel publishes; retry in {} ms", wait.as_millis())
            }
            Self::NoNotifySvc => {
                "this bridge reaches no notify-svc; retry or connect to another".into()
            }
            Self::BridgeFull => "this bridge is full; connect to another".into(),
            Self::UserLimit(max) => format!("at most {max} connections per user"),
            Self::Hook { message, .. } => message.clone(),
            Self::HookUnavailable(why) => {
                format!("the connect hook cannot be asked ({why}); retry")
            }
        }
    }

    /// The HTTP status and `error` code of a refused request.
    fn http(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoToken | Self::BadToken(_) | Self::Revoked => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::OtherUser | Self::NotAdmin => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PeerRate(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::PanelRate(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::UserLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            Self::RevocationUnchecked(_)
            | Self::NoNotifySvc
            | Self::BridgeFull
            | Self::HookUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Hook { code, .. } => {
                let status = respond::status_of(*code);
                let error = match status {
                    StatusCode::FORBIDDEN => "forbidden",
                    StatusCode::UNAUTHORIZED => "unauthorized",
                    StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
                    StatusCode::BAD_REQUEST => "bad_request",
                    _ => "unavailable",
                };
                (status, error)
            }
        }
    }

    /// The answer to a refused HTTP request: JSON `{error, reason,
    /// message}`, with `Retry-After` when waiting helps.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let (status, error) = self.http();
        let body = serde_json::json!({
            "error": error,
            "reason": self.reason(),
            "message": self.message(),
        });
        let response = respond::json(status, &body);
        match self {
            Self::PeerRate(wait) | Self::PanelRate(wait) => respond::retry_after(response, *wait),
            _ => response,
        }
    }

    /// The error frame answering a refused action on an open socket.
    pub fn frame(&self, id: Option<&FrameId>) -> String {
        let code = match self {
            Self::NoToken | Self::BadToken(_) => ErrorCode::BadRequest,
            Self::Revoked | Self::OtherUser | Self::NotAdmin => ErrorCode::Forbidden,
            Self::PeerRate(_) | Self::PanelRate(_) | Self::UserLimit(_) => ErrorCode::RateLimited,
            Self::RevocationUnchecked(_)
            | Self::NoNotifySvc
            | Self::BridgeFull
            | Self::HookUnavailable(_)
            | Self::Hook { .. } => ErrorCode::Unavailable,
        };
        ServerFrame::Error {
            code,
            message: &self.message(),
            id,
            status: None,
        }
        .to_text()
    }

    /// The close code that follows the error frame on an open socket, if the
    /// refusal ends it: a signed-out token may not keep its socket.
    pub fn closes(&self) -> Option<u16> {
        matches!(self, Self::Revoked).then_some(close::TOKEN_EXPIRED)
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &hyper::HeaderMap) -> Option<String> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// Who presents `token`: verified, the user `expected` when one is (a
/// refresh keeps its socket's user), then (with the revocation check) not
/// signed out.
pub async fn authenticate(
    verifier: &Verifier,
    revocation: Option<&Revocation>,
    token: &str,
    expected: Option<&UserId>,
) -> Result<Identity, Refusal> {
    let identity = verifier.verify(token).await.map_err(Refusal::BadToken)?;
    if expected.is_some_and(|user| *user != identity.user) {
        return Err(Refusal::OtherUser);
    }
    match revocation {
        None => Ok(identity),
        Some(revocation) => match revocation.revoked(&identity, token).await {
            Ok(false) => Ok(identity),
            Ok(true) => Err(Refusal::Revoked),
            Err(e) => Err(Refusal::RevocationUnchecked(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fault_gets_one_answer_at_every_door() {
        let unchecked = Refusal::RevocationUnchecked("timeout".into());
        assert_eq!(
            unchecked.response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(unchecked.frame(None).contains("\"code\":\"unavailable\""));
        assert_eq!(unchecked.closes(), None);
        let revoked = Refusal::Revoked;
        assert_eq!(revoked.response().status(), StatusCode::UNAUTHORIZED);
        assert!(revoked.frame(None).contains("\"code\":\"forbidden\""));
        assert_eq!(revoked.closes(), Some(close::TOKEN_EXPIRED));
        let peers = Refusal::PeerRate(Duration::from_millis(300)).response();
        assert_eq!(peers.headers()[hyper::header::RETRY_AFTER], "1");
    }
}
